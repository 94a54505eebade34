//! The traits a VMM backend implements, and the types they exchange.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::HypervisorConfig;
use crate::device::{AttachedDevice, Device, DeviceKind};
use crate::error::{Error, Result};
use crate::process::ProcessRecord;

/// A VMM running one VM.
///
/// A backend is created from a [`HypervisorConfig`] (the "prepare" step:
/// validation, accelerator choice; no process yet), then
/// [`start`](Self::start)ed and eventually [`stop`](Self::stop)ped. All
/// methods take `&self`, so one handle can be shared (`Arc<dyn
/// Hypervisor>`) between the code that drives the VM and a task that
/// watches it. Every method that waits has a bound: an explicit timeout,
/// or the config's `control_timeout`.
#[async_trait]
pub trait Hypervisor: DeviceHotplug + Send + Sync + fmt::Debug {
    /// The config the VM was prepared from.
    fn config(&self) -> &HypervisorConfig;

    /// What this backend can do on this host.
    fn capabilities(&self) -> Capabilities;

    /// Starts the VMM and returns once it is running and answering
    /// (not when the guest has booted: the agent tells that). On failure
    /// nothing is left: no process, no socket.
    async fn start(&self, timeout: Duration) -> Result<()>;

    /// Stops the VM: asks the VMM to quit, waits up to `timeout`, then
    /// kills it; removes its sockets (and logs unless kept). Works on a VM
    /// whose VMM already died. Idempotent.
    async fn stop(&self, timeout: Duration) -> Result<()>;

    /// Pauses the vCPUs.
    async fn pause(&self) -> Result<()>;

    /// Resumes paused vCPUs.
    async fn resume(&self) -> Result<()>;

    /// Health check: asks the VMM for the run state. An error means the
    /// VMM does not answer or is gone.
    async fn check(&self) -> Result<VmStatus>;

    /// The host thread of each vCPU, queried now (vCPUs can be hot-plugged,
    /// so callers must not cache this).
    async fn vcpu_threads(&self) -> Result<Vec<VcpuThread>>;

    /// The host processes of this VM (the VMM; helpers it owns). Empty when
    /// not running.
    fn vmm_pids(&self) -> Vec<u32>;

    /// The same processes as [`vmm_pids`](Self::vmm_pids), each with its
    /// program and start time (what an upper layer records to end them
    /// later without ever signalling a reused pid).
    fn vmm_processes(&self) -> Vec<ProcessRecord>;

    /// How the host reaches the guest agent.
    fn agent_endpoint(&self) -> AgentEndpoint;

    /// Devices attached now (cold- and hot-plugged), with guest addresses.
    fn devices(&self) -> Vec<AttachedDevice>;

    /// A watch that resolves when the VMM process exits, for whatever
    /// reason (stop, guest power-off, crash, kill -9).
    fn exit_watch(&self) -> ExitWatch;

    /// The state another process needs to attach to this running VM
    /// (through the backend's own attach entry point). Persist it after
    /// every change (start, hot-plug, resize).
    fn save_state(&self) -> Result<HypervisorState>;

    /// The vCPUs and memory the VM has now (boot plus hot-plugged) and the
    /// most it can grow to, as this handle knows them: its own resizes
    /// keep it current, and a resize first reads the VMM afresh (another
    /// process may have resized the VM meanwhile). A backend that cannot
    /// resize reports its boot size.
    fn resources(&self) -> VmResources {
        let config = self.config();
        VmResources {
            vcpus: config.vcpus.boot,
            max_vcpus: config.vcpus.boot,
            memory_mib: config.memory.boot_mib,
            max_memory_mib: config.memory.boot_mib,
        }
    }

    /// Hot-plugs or unplugs vCPUs until the VM has `vcpus`, and returns
    /// what it has then. The guest must still bring new vCPUs online (the
    /// agent's `OnlineCPUMem`).
    ///
    /// - More than [`VmResources::max_vcpus`] is
    ///   [`Error::VcpusAboveMax`](crate::Error::VcpusAboveMax), before
    ///   anything changes.
    /// - Growing plugs one vCPU after the other; when one fails, those
    ///   this call plugged are unplugged again (where the backend cannot
    ///   unplug, they stay, offline in the guest, and
    ///   [`resources`](Self::resources) says so) and the error is returned.
    /// - Shrinking unplugs hot-plugged vCPUs, newest first, each released
    ///   by the guest within `timeout`; vCPUs present at boot stay, so the
    ///   result may be above `vcpus`. A backend or host that cannot unplug
    ///   vCPUs safely says [`Unsupported`](crate::Unsupported), before
    ///   anything changes.
    ///
    /// The default (a backend that cannot resize) accepts only the size
    /// the VM has.
    async fn resize_vcpus(&self, vcpus: u32, timeout: Duration) -> Result<VmResources> {
        let _ = timeout;
        let now = self.resources();
        if vcpus == now.vcpus {
            return Ok(now);
        }
        Err(
            crate::Unsupported::new("vCPU hot-plug", "this backend cannot resize a running VM")
                .into(),
        )
    }

    /// Hot-plugs memory until the VM has at least `memory_mib`, in whole
    /// guest memory blocks of `block_mib` (the guest reports its block
    /// size: Kata's `GetGuestDetails.mem_block_size_bytes`), and returns
    /// what it has then. The guest must still bring the new memory online.
    ///
    /// - Growing past [`VmResources::max_memory_mib`] (after rounding up
    ///   to whole blocks) is
    ///   [`Error::MemoryAboveMax`](crate::Error::MemoryAboveMax), before
    ///   anything changes.
    /// - Asking for less than the VM has removes hot-plugged memory,
    ///   newest first, as long as what remains is at least `memory_mib`;
    ///   the guest must release each piece within `timeout` (it can only
    ///   when the memory is offline or unused). The SDK does this only to
    ///   undo a grow that failed: memory given to a sandbox stays, as in
    ///   Kata.
    ///
    /// The default (a backend that cannot resize) accepts only the size
    /// the VM has.
    async fn resize_memory(
        &self,
        memory_mib: u64,
        block_mib: u64,
        timeout: Duration,
    ) -> Result<VmResources> {
        let _ = (block_mib, timeout);
        let now = self.resources();
        if memory_mib == now.memory_mib {
            return Ok(now);
        }
        Err(
            crate::Unsupported::new("memory hot-plug", "this backend cannot resize a running VM")
                .into(),
        )
    }
}

/// Adding and removing devices of a running VM. The device manager needs
/// only this part of a [`Hypervisor`].
#[async_trait]
pub trait DeviceHotplug: Send + Sync {
    /// Hot-plugs `device` and returns where the guest finds it. On
    /// failure, what was half-added is removed again. A kind the backend
    /// or host cannot hot-plug is an [`Unsupported`](crate::Unsupported) error.
    async fn hotplug(&self, device: Device) -> Result<AttachedDevice>;

    /// Unplugs the hot-plugged device `id`, waiting up to `timeout` for the
    /// guest to release it.
    async fn unplug(&self, id: &str, timeout: Duration) -> Result<()>;
}

/// Which kinds of device and features a backend supports on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Kinds that can be present at boot.
    pub coldplug: Vec<DeviceKind>,
    /// Kinds that can be hot-plugged (and unplugged).
    pub hotplug: Vec<DeviceKind>,
    /// vsock works (the host has `/dev/vhost-vsock`).
    pub vsock: bool,
    /// Pause and resume work.
    pub pause: bool,
}

impl Capabilities {
    /// Whether `kind` can be hot-plugged.
    pub fn can_hotplug(&self, kind: DeviceKind) -> bool {
        self.hotplug.contains(&kind)
    }

    /// Whether `kind` can be present at boot.
    pub fn can_coldplug(&self, kind: DeviceKind) -> bool {
        self.coldplug.contains(&kind)
    }
}

/// The VM's run state, from the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    /// vCPUs run.
    Running,
    /// Paused by [`Hypervisor::pause`].
    Paused,
    /// Created but not started, or in another VMM-specific state.
    Other(String),
}

/// The vCPUs and memory of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResources {
    /// vCPUs present (boot plus hot-plugged).
    pub vcpus: u32,
    /// The most vCPUs hot-plug can reach.
    pub max_vcpus: u32,
    /// Memory present (boot plus hot-plugged), MiB.
    pub memory_mib: u64,
    /// The most memory hot-plug can reach, MiB.
    pub max_memory_mib: u64,
}

/// A vCPU and its host thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuThread {
    /// vCPU index.
    pub cpu: u32,
    /// Host thread id (a task of the VMM process).
    pub tid: u32,
}

/// How the host connects to the agent in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEndpoint {
    /// A unix socket the VMM listens on, carrying a virtio-serial port's bytes.
    VirtioSerial {
        /// The socket of port 0.
        socket: PathBuf,
        /// The port name the guest sees.
        port_name: String,
        /// The sockets of the other agent ports (`agent.channel.1`, ...):
        /// a QEMU socket serves one client at a time, so each concurrent
        /// host process takes a port of its own.
        #[serde(default)]
        extra_sockets: Vec<PathBuf>,
    },
    /// vsock: connect to `(guest_cid, port)`.
    Vsock {
        /// Guest CID.
        guest_cid: u32,
        /// Agent port.
        port: u32,
    },
    /// Hybrid vsock: connect to `socket`, send `CONNECT <port>\n`.
    HybridVsock {
        /// The VMM's unix socket.
        socket: PathBuf,
        /// Agent port.
        port: u32,
    },
}

/// How the VMM process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// Its pid.
    pub pid: u32,
    /// Exit code or signal.
    pub status: ExitStatus,
}

/// An exit code or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Not known: not our child, and its reaper recorded no status (yet).
    Unknown,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            ExitStatus::Code(code) => write!(f, "pid {} exited with code {code}", self.pid),
            ExitStatus::Signal(sig) => write!(f, "pid {} killed by signal {sig}", self.pid),
            ExitStatus::Unknown => write!(f, "pid {} exited", self.pid),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => write!(f, "signal {sig}"),
            ExitStatus::Unknown => f.write_str("an unknown status"),
        }
    }
}

/// Resolves when the VMM exits; cheap to clone and move into a task.
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<VmExit>>);

impl ExitWatch {
    /// Wraps a watch channel the backend publishes the exit on.
    pub fn new(rx: watch::Receiver<Option<VmExit>>) -> Self {
        Self(rx)
    }

    /// The exit, if it happened.
    pub fn exited(&self) -> Option<VmExit> {
        *self.0.borrow()
    }

    /// Waits for the exit. Returns `None` if the backend was dropped
    /// without the VMM exiting (it was detached, or never started).
    pub async fn wait(&mut self) -> Option<VmExit> {
        if let Ok(exit) = self.0.wait_for(Option::is_some).await {
            return *exit;
        }
        *self.0.borrow()
    }
}

/// The saved state of a running VM, for its backend to attach to it from
/// another process. Opaque to the trait: the backend that saved it names
/// itself and its format version, and alone reads `data`
/// ([`decode`](Self::decode)). Serialize it with serde (JSON is what the
/// SDK uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HypervisorState {
    /// The backend that saved it (`"qemu"`, ...).
    pub backend: String,
    /// The version of the backend's format.
    pub version: u32,
    /// The backend's own state.
    pub data: serde_json::Value,
}

impl HypervisorState {
    /// Wraps a backend's state.
    pub fn encode<T: Serialize>(backend: &str, version: u32, data: &T) -> Result<Self> {
        let data = serde_json::to_value(data).map_err(|source| Error::SaveState {
            backend: backend.to_owned(),
            source,
        })?;
        Ok(Self {
            backend: backend.to_owned(),
            version,
            data,
        })
    }

    /// The backend's state, if `backend` saved it in `version`:
    /// [`Error::WrongBackend`], [`Error::StateVersion`] or
    /// [`Error::InvalidSavedState`] otherwise.
    pub fn decode<T: DeserializeOwned>(&self, backend: &str, version: u32) -> Result<T> {
        if self.backend != backend {
            return Err(Error::WrongBackend {
                expected: backend.to_owned(),
                found: self.backend.clone(),
            });
        }
        if self.version != version {
            return Err(Error::StateVersion {
                backend: backend.to_owned(),
                found: self.version,
                supported: version,
            });
        }
        T::deserialize(&self.data).map_err(|source| Error::InvalidSavedState {
            backend: backend.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Saved {
        pid: u32,
    }

    #[test]
    fn states_decode_only_for_their_backend_and_version() {
        let state = HypervisorState::encode("fake", 3, &Saved { pid: 42 }).unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let back: HypervisorState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.decode::<Saved>("fake", 3).unwrap(), Saved { pid: 42 });
        assert!(matches!(
            back.decode::<Saved>("other", 3),
            Err(Error::WrongBackend { expected, found }) if expected == "other" && found == "fake"
        ));
        assert!(matches!(
            back.decode::<Saved>("fake", 4),
            Err(Error::StateVersion {
                found: 3,
                supported: 4,
                ..
            })
        ));
        let mut garbled = back.clone();
        garbled.data = serde_json::json!({ "pid": "x" });
        assert!(matches!(
            garbled.decode::<Saved>("fake", 3),
            Err(Error::InvalidSavedState { .. })
        ));
    }
}
