//! A complete fake of [`Hypervisor`] for the upper layers' unit tests:
//! it keeps a VM state machine, records every call, and fails any method
//! on request. It runs no VM; a user never runs it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{AGENT_CHANNEL_NAME, AgentChannel, HypervisorConfig};
use crate::device::{AttachedDevice, Device, DeviceKind, GuestAddress, PciPath};
use crate::error::{Error, Result};
use crate::hypervisor::{
    AgentEndpoint, Capabilities, DeviceHotplug, ExitStatus, ExitWatch, Hypervisor, HypervisorState,
    VcpuThread, VmExit, VmResources, VmStatus,
};
use crate::process::ProcessRecord;

/// The methods of [`Hypervisor`] and [`DeviceHotplug`] that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// [`Hypervisor::start`].
    Start,
    /// [`Hypervisor::stop`].
    Stop,
    /// [`Hypervisor::pause`].
    Pause,
    /// [`Hypervisor::resume`].
    Resume,
    /// [`Hypervisor::check`].
    Check,
    /// [`Hypervisor::vcpu_threads`].
    VcpuThreads,
    /// [`Hypervisor::save_state`].
    SaveState,
    /// [`DeviceHotplug::hotplug`].
    Hotplug,
    /// [`DeviceHotplug::unplug`].
    Unplug,
    /// [`Hypervisor::resize_vcpus`].
    ResizeVcpus,
    /// [`Hypervisor::resize_memory`].
    ResizeMemory,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Check => "check",
            Self::VcpuThreads => "vcpu_threads",
            Self::SaveState => "save_state",
            Self::Hotplug => "hotplug",
            Self::Unplug => "unplug",
            Self::ResizeVcpus => "resize_vcpus",
            Self::ResizeMemory => "resize_memory",
        }
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `start(timeout)`.
    Start(Duration),
    /// `stop(timeout)`.
    Stop(Duration),
    /// `pause()`.
    Pause,
    /// `resume()`.
    Resume,
    /// `check()`.
    Check,
    /// `vcpu_threads()`.
    VcpuThreads,
    /// `save_state()`.
    SaveState,
    /// `hotplug(device)`.
    Hotplug(Device),
    /// `unplug(id, timeout)`.
    Unplug(String, Duration),
    /// `resize_vcpus(vcpus, _)`.
    ResizeVcpus(u32),
    /// `resize_memory(memory_mib, block_mib, _)`.
    ResizeMemory(u64, u64),
}

impl Call {
    /// The method called.
    pub fn method(&self) -> Method {
        match self {
            Self::Start(_) => Method::Start,
            Self::Stop(_) => Method::Stop,
            Self::Pause => Method::Pause,
            Self::Resume => Method::Resume,
            Self::Check => Method::Check,
            Self::VcpuThreads => Method::VcpuThreads,
            Self::SaveState => Method::SaveState,
            Self::Hotplug(_) => Method::Hotplug,
            Self::Unplug(..) => Method::Unplug,
            Self::ResizeVcpus(_) => Method::ResizeVcpus,
            Self::ResizeMemory(..) => Method::ResizeMemory,
        }
    }
}

/// The mock's VM, as saved by `save_state` (inside a [`HypervisorState`]
/// of backend [`MockHypervisor::BACKEND`]) and restored by
/// [`MockHypervisor::from_state`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MockState {
    /// The config.
    pub config: HypervisorConfig,
    /// Running (started, not stopped, not exited).
    pub running: bool,
    /// Paused.
    pub paused: bool,
    /// The VMM pid it reports.
    pub vmm_pid: u32,
    /// The vCPU thread ids it reports.
    pub vcpu_tids: Vec<u32>,
    /// Hot-plugged devices.
    pub hotplugged: BTreeMap<String, AttachedDevice>,
    /// Next hot-plug slot.
    pub next_slot: u8,
    /// vCPUs hot-plugged (the config's `vcpus.boot` are there from start).
    #[serde(default)]
    pub hotplugged_vcpus: u32,
    /// Memory hot-plugged, MiB.
    #[serde(default)]
    pub hotplugged_memory_mib: u64,
    /// Whether vCPUs can be unplugged (QEMU under TCG before 8.0 cannot).
    #[serde(default = "yes")]
    pub vcpu_unplug: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
struct Inner {
    state: MockState,
    calls: Vec<Call>,
    /// Method -> the call numbers (1-based, per method) that fail.
    failures: HashMap<Method, Vec<usize>>,
    counts: HashMap<Method, usize>,
}

/// A fake hypervisor. Cloning gives another handle to the same fake, so a
/// test can keep one while the code under test owns the other.
#[derive(Debug, Clone)]
pub struct MockHypervisor {
    config: HypervisorConfig,
    inner: Arc<Mutex<Inner>>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
}

impl MockHypervisor {
    /// The backend name in the states the mock saves.
    pub const BACKEND: &'static str = "mock";
    /// The version of [`MockState`]'s format.
    pub const STATE_VERSION: u32 = 1;

    /// A fake VM for `config` (not validated: tests use made-up paths).
    /// It reports this process as the VMM and its main thread as the only
    /// vCPU, unless [`with_processes`](Self::with_processes) says otherwise.
    pub fn new(config: HypervisorConfig) -> Self {
        let pid = std::process::id();
        Self::from_mock_state(MockState {
            config,
            running: false,
            paused: false,
            vmm_pid: pid,
            vcpu_tids: vec![pid],
            hotplugged: BTreeMap::new(),
            next_slot: 0x10,
            hotplugged_vcpus: 0,
            hotplugged_memory_mib: 0,
            vcpu_unplug: true,
        })
    }

    /// Makes vCPU unplug [`Unsupported`](crate::Unsupported), as on QEMU
    /// before 8.0 under TCG.
    pub fn without_vcpu_unplug(self) -> Self {
        self.lock().state.vcpu_unplug = false;
        self
    }

    /// The fake VM a mock saved (what attaching to it from another
    /// process does); a state of another backend or version is a typed
    /// error ([`Error::WrongBackend`], [`Error::StateVersion`]).
    pub fn from_state(state: &HypervisorState) -> Result<Self> {
        Ok(Self::from_mock_state(
            state.decode(Self::BACKEND, Self::STATE_VERSION)?,
        ))
    }

    /// A fake VM in the given mock state.
    pub fn from_mock_state(state: MockState) -> Self {
        let (exit_tx, _) = watch::channel(None);
        Self {
            config: state.config.clone(),
            inner: Arc::new(Mutex::new(Inner {
                state,
                calls: Vec::new(),
                failures: HashMap::new(),
                counts: HashMap::new(),
            })),
            exit_tx: Arc::new(exit_tx),
        }
    }

    /// Sets the pid and vCPU thread ids the fake reports.
    pub fn with_processes(self, vmm_pid: u32, vcpu_tids: Vec<u32>) -> Self {
        {
            let mut inner = self.lock();
            inner.state.vmm_pid = vmm_pid;
            inner.state.vcpu_tids = vcpu_tids;
        }
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next call of `method` fail with [`Error::Injected`].
    pub fn fail_next(&self, method: Method) {
        self.fail_nth(method, 1);
    }

    /// Makes the `n`-th call of `method` from now (1 = the next) fail.
    pub fn fail_nth(&self, method: Method, n: usize) {
        let mut inner = self.lock();
        let done = inner.counts.get(&method).copied().unwrap_or(0);
        inner.failures.entry(method).or_default().push(done + n);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many times `method` was called.
    pub fn count(&self, method: Method) -> usize {
        self.lock().counts.get(&method).copied().unwrap_or(0)
    }

    /// Whether the fake VM runs.
    pub fn is_running(&self) -> bool {
        self.lock().state.running
    }

    /// Simulates the VMM dying (as with `kill -9`).
    pub fn simulate_exit(&self, status: ExitStatus) {
        let pid = {
            let mut inner = self.lock();
            inner.state.running = false;
            inner.state.vmm_pid
        };
        self.exit_tx.send_replace(Some(VmExit { pid, status }));
    }

    /// Records the call and returns the injected failure, if any.
    fn enter(&self, call: Call) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let method = call.method();
        let mut inner = self.lock();
        inner.calls.push(call);
        let count = {
            let c = inner.counts.entry(method).or_insert(0);
            *c += 1;
            *c
        };
        let injected = inner.failures.get_mut(&method).and_then(|list| {
            let at = list.iter().position(|n| *n == count)?;
            Some(list.remove(at))
        });
        if injected.is_some() {
            return Err(Error::Injected {
                method: method.name(),
            });
        }
        Ok(inner)
    }

    fn require_running(inner: &Inner, op: &'static str, exited: bool) -> Result<()> {
        if exited {
            return Err(Error::VmmExited {
                exit: VmExit {
                    pid: inner.state.vmm_pid,
                    status: ExitStatus::Unknown,
                },
                stderr: String::new(),
            });
        }
        if !inner.state.running {
            return Err(Error::InvalidState {
                op,
                state: "not running",
            });
        }
        Ok(())
    }

    fn exited(&self) -> bool {
        self.exit_tx.borrow().is_some()
    }
}

#[async_trait]
impl Hypervisor for MockHypervisor {
    fn config(&self) -> &HypervisorConfig {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            coldplug: vec![DeviceKind::Block, DeviceKind::Share9p, DeviceKind::Serial],
            hotplug: vec![DeviceKind::Block, DeviceKind::Serial],
            vsock: false,
            pause: true,
        }
    }

    async fn start(&self, timeout: Duration) -> Result<()> {
        let mut inner = self.enter(Call::Start(timeout))?;
        if inner.state.running {
            return Err(Error::InvalidState {
                op: "start",
                state: "running",
            });
        }
        inner.state.running = true;
        inner.state.paused = false;
        drop(inner);
        self.exit_tx.send_replace(None);
        Ok(())
    }

    async fn stop(&self, timeout: Duration) -> Result<()> {
        let mut inner = self.enter(Call::Stop(timeout))?;
        let was_running = inner.state.running;
        inner.state.running = false;
        inner.state.hotplugged.clear();
        let pid = inner.state.vmm_pid;
        drop(inner);
        if was_running {
            self.exit_tx.send_replace(Some(VmExit {
                pid,
                status: ExitStatus::Code(0),
            }));
        }
        Ok(())
    }

    async fn pause(&self) -> Result<()> {
        let exited = self.exited();
        let mut inner = self.enter(Call::Pause)?;
        Self::require_running(&inner, "pause", exited)?;
        inner.state.paused = true;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        let exited = self.exited();
        let mut inner = self.enter(Call::Resume)?;
        Self::require_running(&inner, "resume", exited)?;
        inner.state.paused = false;
        Ok(())
    }

    async fn check(&self) -> Result<VmStatus> {
        let exited = self.exited();
        let inner = self.enter(Call::Check)?;
        Self::require_running(&inner, "check", exited)?;
        Ok(if inner.state.paused {
            VmStatus::Paused
        } else {
            VmStatus::Running
        })
    }

    async fn vcpu_threads(&self) -> Result<Vec<VcpuThread>> {
        let exited = self.exited();
        let inner = self.enter(Call::VcpuThreads)?;
        Self::require_running(&inner, "list the vCPUs of", exited)?;
        Ok(inner
            .state
            .vcpu_tids
            .iter()
            .enumerate()
            .map(|(cpu, tid)| VcpuThread {
                cpu: cpu as u32,
                tid: *tid,
            })
            .collect())
    }

    fn vmm_pids(&self) -> Vec<u32> {
        let inner = self.lock();
        if inner.state.running {
            vec![inner.state.vmm_pid]
        } else {
            Vec::new()
        }
    }

    /// The pid it reports, with that process's real start time (so that an
    /// upper layer's records name a real process); none if it is gone.
    fn vmm_processes(&self) -> Vec<ProcessRecord> {
        self.vmm_pids()
            .into_iter()
            .filter_map(|pid| {
                Some(ProcessRecord {
                    program: "mock-vmm".into(),
                    pid,
                    start_time: crate::process::start_time(pid).ok()?,
                })
            })
            .collect()
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        match self.config.agent_channel {
            AgentChannel::VirtioSerial => AgentEndpoint::VirtioSerial {
                socket: self.config.agent_socket(),
                port_name: AGENT_CHANNEL_NAME.into(),
                extra_sockets: self.config.agent_sockets().into_iter().skip(1).collect(),
            },
            AgentChannel::Vsock { guest_cid, port } => AgentEndpoint::Vsock { guest_cid, port },
        }
    }

    fn devices(&self) -> Vec<AttachedDevice> {
        let inner = self.lock();
        let cold = self
            .config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| AttachedDevice {
                device: d.clone(),
                address: GuestAddress::Pci {
                    path: PciPath(vec![3 + i as u8]),
                },
                hotplugged: false,
            });
        cold.chain(inner.state.hotplugged.values().cloned())
            .collect()
    }

    fn exit_watch(&self) -> ExitWatch {
        ExitWatch::new(self.exit_tx.subscribe())
    }

    fn save_state(&self) -> Result<HypervisorState> {
        let inner = self.enter(Call::SaveState)?;
        HypervisorState::encode(Self::BACKEND, Self::STATE_VERSION, &inner.state)
    }

    fn resources(&self) -> VmResources {
        let inner = self.lock();
        Self::sized(&self.config, &inner.state)
    }

    /// Grows or shrinks the count it reports (no vCPU below the config's
    /// boot count goes); above the config's `vcpus.max` is
    /// [`Error::VcpusAboveMax`], a shrink [`without_vcpu_unplug`](Self::without_vcpu_unplug)
    /// is [`Unsupported`](crate::Unsupported).
    async fn resize_vcpus(&self, vcpus: u32, _timeout: Duration) -> Result<VmResources> {
        let exited = self.exited();
        let mut inner = self.enter(Call::ResizeVcpus(vcpus))?;
        Self::require_running(&inner, "resize the vCPUs of", exited)?;
        let now = Self::sized(&self.config, &inner.state);
        if vcpus > now.max_vcpus {
            return Err(Error::VcpusAboveMax {
                requested: vcpus,
                max: now.max_vcpus,
            });
        }
        if vcpus < now.vcpus && inner.state.hotplugged_vcpus > 0 && !inner.state.vcpu_unplug {
            return Err(
                crate::Unsupported::new("vCPU hot-unplug", "the mock was told it cannot").into(),
            );
        }
        inner.state.hotplugged_vcpus = vcpus.saturating_sub(self.config.vcpus.boot);
        Ok(Self::sized(&self.config, &inner.state))
    }

    /// Grows the memory it reports in whole blocks, or drops hot-plugged
    /// memory down to no less than `memory_mib`; above the config's
    /// `memory.max_mib` is [`Error::MemoryAboveMax`].
    async fn resize_memory(
        &self,
        memory_mib: u64,
        block_mib: u64,
        _timeout: Duration,
    ) -> Result<VmResources> {
        let exited = self.exited();
        let mut inner = self.enter(Call::ResizeMemory(memory_mib, block_mib))?;
        Self::require_running(&inner, "resize the memory of", exited)?;
        if block_mib == 0 || !block_mib.is_power_of_two() {
            return Err(Error::InvalidMemoryBlock { block_mib });
        }
        let now = Self::sized(&self.config, &inner.state);
        let boot = self.config.memory.boot_mib;
        if memory_mib > now.memory_mib {
            let after =
                now.memory_mib + (memory_mib - now.memory_mib).div_ceil(block_mib) * block_mib;
            if after > now.max_memory_mib {
                return Err(Error::MemoryAboveMax {
                    requested_mib: after,
                    max_mib: now.max_memory_mib,
                });
            }
            inner.state.hotplugged_memory_mib = after - boot;
        } else {
            inner.state.hotplugged_memory_mib = memory_mib
                .saturating_sub(boot)
                .min(inner.state.hotplugged_memory_mib);
        }
        Ok(Self::sized(&self.config, &inner.state))
    }
}

impl MockHypervisor {
    fn sized(config: &HypervisorConfig, state: &MockState) -> VmResources {
        VmResources {
            vcpus: config.vcpus.boot + state.hotplugged_vcpus,
            max_vcpus: config.vcpus.max,
            memory_mib: config.memory.boot_mib + state.hotplugged_memory_mib,
            max_memory_mib: config.memory.max_mib,
        }
    }
}

#[async_trait]
impl DeviceHotplug for MockHypervisor {
    async fn hotplug(&self, device: Device) -> Result<AttachedDevice> {
        let exited = self.exited();
        let mut inner = self.enter(Call::Hotplug(device.clone()))?;
        Self::require_running(&inner, "hot-plug a device into", exited)?;
        let id = device.id().to_owned();
        if inner.state.hotplugged.contains_key(&id)
            || self.config.devices.iter().any(|d| d.id() == id)
        {
            return Err(Error::DeviceExists { id });
        }
        let address = match &device {
            Device::Serial(port) => GuestAddress::SerialPort {
                name: port.name.clone(),
            },
            _ => {
                let slot = inner.state.next_slot;
                inner.state.next_slot += 1;
                GuestAddress::Pci {
                    path: PciPath(vec![slot, 0]),
                }
            }
        };
        let attached = AttachedDevice {
            device,
            address,
            hotplugged: true,
        };
        inner.state.hotplugged.insert(id, attached.clone());
        Ok(attached)
    }

    async fn unplug(&self, id: &str, timeout: Duration) -> Result<()> {
        let exited = self.exited();
        let mut inner = self.enter(Call::Unplug(id.to_owned(), timeout))?;
        Self::require_running(&inner, "unplug a device from", exited)?;
        inner
            .state
            .hotplugged
            .remove(id)
            .map(drop)
            .ok_or_else(|| Error::DeviceNotFound { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;

    fn mock() -> MockHypervisor {
        MockHypervisor::new(HypervisorConfig::new("vm", "/k", "/run/vm"))
    }

    const T: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn records_calls_and_follows_the_lifecycle() {
        let hv = mock();
        assert!(matches!(hv.pause().await, Err(Error::InvalidState { .. })));
        hv.start(T).await.unwrap();
        assert!(matches!(hv.start(T).await, Err(Error::InvalidState { .. })));
        hv.pause().await.unwrap();
        assert_eq!(hv.check().await.unwrap(), VmStatus::Paused);
        hv.resume().await.unwrap();
        let disk = Device::Block(BlockDevice::new("d1", "/img"));
        let attached = hv.hotplug(disk.clone()).await.unwrap();
        assert_eq!(
            attached.address,
            GuestAddress::Pci {
                path: "10/00".parse().unwrap()
            }
        );
        assert!(matches!(
            hv.hotplug(disk.clone()).await,
            Err(Error::DeviceExists { .. })
        ));
        hv.unplug("d1", T).await.unwrap();
        assert!(matches!(
            hv.unplug("d1", T).await,
            Err(Error::DeviceNotFound { .. })
        ));
        assert_eq!(hv.vmm_pids(), [std::process::id()]);
        hv.stop(T).await.unwrap();
        assert!(hv.vmm_pids().is_empty());
        assert_eq!(hv.count(Method::Hotplug), 2);
        assert_eq!(hv.calls()[0], Call::Pause);
        assert_eq!(hv.calls().last(), Some(&Call::Stop(T)));
    }

    #[tokio::test]
    async fn injected_failures_hit_the_chosen_call_only() {
        let hv = mock();
        hv.fail_next(Method::Start);
        assert!(matches!(
            hv.start(T).await,
            Err(Error::Injected { method: "start" })
        ));
        assert!(!hv.is_running());
        hv.start(T).await.unwrap();
        hv.fail_nth(Method::Check, 2);
        hv.check().await.unwrap();
        assert!(hv.check().await.is_err());
        hv.check().await.unwrap();
    }

    #[tokio::test]
    async fn simulated_death_is_reported_and_stop_still_works() {
        let hv = mock();
        hv.start(T).await.unwrap();
        let mut watch = hv.exit_watch();
        hv.simulate_exit(ExitStatus::Signal(9));
        assert_eq!(watch.wait().await.unwrap().status, ExitStatus::Signal(9));
        assert!(matches!(hv.check().await, Err(Error::VmmExited { .. })));
        hv.stop(T).await.unwrap();
    }

    #[tokio::test]
    async fn resizes_within_the_maxima_and_refuses_what_it_is_told_to() {
        let mut config = HypervisorConfig::new("vm", "/k", "/run/vm");
        config.vcpus.max = 4;
        config.memory.max_mib = 1024;
        let hv = MockHypervisor::new(config).without_vcpu_unplug();
        hv.start(T).await.unwrap();
        assert_eq!(hv.resize_vcpus(3, T).await.unwrap().vcpus, 3);
        assert!(matches!(
            hv.resize_vcpus(5, T).await,
            Err(Error::VcpusAboveMax {
                requested: 5,
                max: 4
            })
        ));
        assert!(matches!(
            hv.resize_vcpus(1, T).await,
            Err(Error::Unsupported(_))
        ));
        assert_eq!(
            hv.resize_memory(600, 128, T).await.unwrap().memory_mib,
            512 + 128
        );
        assert!(matches!(
            hv.resize_memory(1025, 128, T).await,
            Err(Error::MemoryAboveMax {
                requested_mib: 1152,
                max_mib: 1024
            })
        ));
        assert_eq!(hv.resize_memory(512, 128, T).await.unwrap().memory_mib, 512);
        hv.fail_next(Method::ResizeVcpus);
        assert!(hv.resize_vcpus(4, T).await.is_err());
        assert_eq!(hv.resources().vcpus, 3, "a failed resize changes nothing");
    }

    #[tokio::test]
    async fn state_round_trips_through_attach() {
        let hv = mock().with_processes(42, vec![43, 44]);
        hv.start(T).await.unwrap();
        let state = hv.save_state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let other = MockHypervisor::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(other.vmm_pids(), [42]);
        assert_eq!(other.vcpu_threads().await.unwrap().len(), 2);
        // A state of another backend is refused, typed.
        let mut foreign = state.clone();
        foreign.backend = "qemu".into();
        assert!(matches!(
            MockHypervisor::from_state(&foreign),
            Err(Error::WrongBackend { .. })
        ));
    }
}
