//! What a sandbox is made of: [`SandboxConfig`] and [`ContainerConfig`].
//! They are plain data; [`crate::plan_sandbox`] checks them and turns them
//! into what the steps of `create_sandbox` carry out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use vc_cgroups_host::CgroupRoots;
use vc_cgroups_host::plan::{CgroupDriver, CgroupVersion, Overhead};
use vc_hypervisor::Accelerator;
use vc_types::{ContainerId, SandboxId};

use crate::boot::BootAdmission;
use crate::error::Error;

/// Where the SDK keeps its files on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paths {
    /// Sandbox state (`<state_root>/<id>/state.json` and its lock).
    pub state_root: PathBuf,
    /// Per-VM runtime directories (QMP, agent and console sockets, logs).
    pub runtime_root: PathBuf,
    /// The host side of each sandbox's filesystem share.
    pub shared_root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state_root: "/run/vc/sbs".into(),
            runtime_root: "/run/vc/vm".into(),
            shared_root: "/run/vc/shared".into(),
        }
    }
}

impl Paths {
    /// All three roots under one directory (`<dir>/sbs`, `<dir>/vm`,
    /// `<dir>/shared`), e.g. a test's temporary directory.
    pub fn under(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Paths {
            state_root: dir.join("sbs"),
            runtime_root: dir.join("vm"),
            shared_root: dir.join("shared"),
        }
    }
}

/// The VM: guest image, sizing, accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Uncompressed guest kernel (`vmlinux`, PVH boot).
    pub kernel: PathBuf,
    /// Initramfs whose `/init` is the guest agent.
    pub initrd: PathBuf,
    /// Accelerator (KVM when usable, else TCG, by default).
    pub accelerator: Accelerator,
    /// vCPUs for the guest itself, added to what the containers ask for.
    pub default_vcpus: u32,
    /// Memory (MiB) for the guest itself, added to the containers' limits.
    pub default_memory_mib: u64,
    /// Upper bound on vCPUs: the VM can grow to this many with vCPU
    /// hot-plug as containers come (QEMU's `-smp maxcpus`; the guest
    /// kernel gets `nr_cpus=` this).
    pub max_vcpus: u32,
    /// Upper bound on memory (MiB): the VM can grow to this with memory
    /// hot-plug (QEMU's `-m maxmem`). Leave room in whole guest memory
    /// blocks (128 MiB on x86-64) above the default.
    #[serde(default = "default_max_memory_mib")]
    pub max_memory_mib: u64,
    /// How long growing the VM may take (hot-plug, and the guest bringing
    /// the new vCPUs and memory online) before it is undone.
    #[serde(default = "default_resize_timeout")]
    pub resize_timeout: Duration,
    /// Extra kernel parameters (`key=value` or `flag`), overriding defaults
    /// by key. Under TCG the defaults include `init_on_free=1` (faster
    /// container starts in a VM that ran containers before, at the cost of
    /// a fully resident guest RAM); `init_on_free=0` here opts out.
    pub kernel_params: Vec<String>,
    /// Guest agent log level and console kept after stop.
    pub debug: bool,
    /// The longest wall time the VM may take to start and its agent to
    /// answer, however busy the host. Normally the guest's progress
    /// decides first: see [`VmConfig::boot_cpu_budget`].
    pub start_timeout: Duration,
    /// The VMM CPU time the guest may use to boot before its agent
    /// answers. A boot on a busy host gets the CPU later but needs no
    /// more of it, so this, not the wall clock, tells a stuck guest from
    /// a slow one.
    #[serde(default = "default_boot_cpu_budget")]
    pub boot_cpu_budget: Duration,
    /// How many VMs may boot at once on this host, across the processes
    /// sharing [`Paths::runtime_root`] (and a network namespace); a boot
    /// beyond the limit waits for a slot.
    #[serde(default)]
    pub boot_admission: BootAdmission,
    /// How long a boot may wait for a slot.
    #[serde(default = "default_admission_timeout")]
    pub admission_timeout: Duration,
    /// How long a graceful VM stop may take before it is killed.
    pub stop_timeout: Duration,
}

impl VmConfig {
    /// A VM booting `kernel` and `initrd` with the defaults: 1 vCPU and
    /// 256 MiB for the guest, growing up to the host's CPUs and memory (as
    /// Kata's `default_maxvcpus` and `default_maxmemory` do), KVM when
    /// usable. The VMM binary and its options are the VM factory's
    /// (`QemuFactory::new`).
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: initrd.into(),
            accelerator: Accelerator::Auto,
            default_vcpus: 1,
            default_memory_mib: DEFAULT_MEMORY_MIB,
            max_vcpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .max(1),
            max_memory_mib: default_max_memory_mib(),
            resize_timeout: default_resize_timeout(),
            kernel_params: Vec::new(),
            debug: false,
            start_timeout: Duration::from_secs(600),
            boot_cpu_budget: default_boot_cpu_budget(),
            boot_admission: BootAdmission::Auto,
            admission_timeout: default_admission_timeout(),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// Guest memory of a VM before any container counts, MiB.
const DEFAULT_MEMORY_MIB: u64 = 256;

/// The host's memory, as Kata's `default_maxmemory` is.
fn default_max_memory_mib() -> u64 {
    host_memory_mib()
        .unwrap_or(DEFAULT_MEMORY_MIB)
        .max(DEFAULT_MEMORY_MIB)
}

fn default_resize_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The host's memory (`MemTotal`), MiB.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn default_boot_cpu_budget() -> Duration {
    Duration::from_secs(60)
}

fn default_admission_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Where the cgroup hierarchies are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupHierarchy {
    /// This process's cgroup mounts (from `/proc/self/mountinfo`), v2 when
    /// the host is unified, else v1.
    #[default]
    Discover,
    /// These mounts, written as this version (e.g. a test's fixture, or a
    /// host with unusual mounts).
    At {
        /// The mounts.
        roots: CgroupRoots,
        /// The version to write.
        version: CgroupVersion,
    },
}

/// Host cgroups of the sandbox (see `vc-cgroups-host`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupsConfig {
    /// cgroupfs (v1 or v2, detected) or systemd (planned only).
    pub driver: CgroupDriver,
    /// The sandbox's OCI `linux.cgroupsPath` (the pod sandbox container's);
    /// `None` puts the sandbox under `/virtcontainers`.
    pub cgroups_path: Option<String>,
    /// Put everything, this process included, in the sandbox cgroup.
    pub sandbox_cgroup_only: bool,
    /// Charge the VM's memory (guest RAM) to the pod's cgroup while the
    /// VMM's threads other than the vCPUs stay in the overhead cgroup.
    ///
    /// A process's memory is charged to its own memory cgroup (that of
    /// its thread group leader), never to where the threads touching it
    /// are: so by default, on cgroup v1, guest RAM is overhead and the
    /// pod's memory limit does not bind its VM ([`crate::Sandbox::overhead`]
    /// shows it). With this, on cgroup v1 (whose memory controller has a
    /// hierarchy of its own) the VMM is started in the sandbox's memory
    /// cgroup and stays there, and the pod's memory limit, when every
    /// container has one, gets the guest's own `default_memory_mib` added.
    /// On cgroup v2 and with `sandbox_cgroup_only` the VMM is in the
    /// sandbox cgroup anyway.
    #[serde(default)]
    pub charge_guest_memory_to_pod: bool,
    /// Headroom added to the summed memory and pids limits.
    pub overhead: Overhead,
    /// Where the hierarchies are.
    pub hierarchy: CgroupHierarchy,
    /// Where the VMM's device nodes are looked up for the device allowlist
    /// (`/dev`).
    pub dev_dir: PathBuf,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        CgroupsConfig {
            driver: CgroupDriver::Cgroupfs,
            cgroups_path: None,
            sandbox_cgroup_only: false,
            charge_guest_memory_to_pod: false,
            overhead: Overhead::default(),
            hierarchy: CgroupHierarchy::Discover,
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

/// Which filesystem share carries container rootfs and volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsShareKind {
    /// virtio-fs when `virtiofsd` is installed, else virtio-9p.
    #[default]
    Auto,
    /// virtio-9p, built into QEMU.
    NineP,
    /// virtio-fs, served by `virtiofsd`.
    VirtioFs,
}

/// The filesystem share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsShareConfig {
    /// Which share.
    pub kind: FsShareKind,
    /// The `virtiofsd` binary; `None` searches `PATH`, `/usr/libexec`,
    /// `/usr/local/bin` and `~/.cargo/bin`.
    pub virtiofsd: Option<PathBuf>,
}

impl Default for FsShareConfig {
    fn default() -> Self {
        FsShareConfig {
            kind: FsShareKind::Auto,
            virtiofsd: None,
        }
    }
}

/// Talking to the guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Limit for each agent call (except waits for processes).
    pub call_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// A container rootfs on a disk image or block device, hot-plugged into the
/// VM as a virtio-blk disk (it must not be mounted on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRootfs {
    /// The image file or block device.
    pub image: PathBuf,
    /// Its filesystem (`ext4`, `xfs`, `erofs`, ...).
    pub fs_type: String,
}

/// One container: an OCI bundle.
///
/// Its rootfs reaches the guest in one of three ways: a
/// [`BlockRootfs`] hot-plugged as a disk; an overlay over EROFS layers
/// (containerd's erofs snapshotter: `root.path` is an overlay whose lower
/// dirs are loop-mounted `layer.erofs` images), whose layers are
/// hot-plugged read-only and stacked again in the guest under a guest-local
/// upper dir; otherwise the directory, through the filesystem share.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// The container id, unique in its sandbox.
    pub id: ContainerId,
    /// The bundle directory (its `root.path` is relative to it).
    pub bundle: PathBuf,
    /// The OCI runtime spec.
    pub spec: Spec,
    /// A rootfs on a disk image instead of the `root.path` directory.
    pub rootfs_block: Option<BlockRootfs>,
}

impl ContainerConfig {
    /// Loads `<bundle>/config.json`. A file that does not parse is
    /// [`Error::BundleConfig`], whose cause names the line and column.
    pub fn from_bundle(id: ContainerId, bundle: impl Into<PathBuf>) -> Result<Self, Error> {
        let bundle = bundle.into();
        check_bundle_dir(&id, &bundle)?;
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| Error::InvalidBundle {
            container: id.clone(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let spec: Spec = serde_json::from_slice(&text).map_err(|source| Error::BundleConfig {
            container: id.clone(),
            path,
            source,
        })?;
        Ok(ContainerConfig {
            id,
            bundle,
            spec,
            rootfs_block: None,
        })
    }

    /// The container's rootfs on the host: `root.path`, relative to the
    /// bundle unless absolute.
    pub fn rootfs(&self) -> Result<PathBuf, Error> {
        let root = self
            .spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::InvalidSpec {
                container: self.id.clone(),
                reason: "no root".into(),
            })?;
        let path = root.path();
        Ok(if path.is_absolute() {
            path.clone()
        } else {
            self.bundle.join(path)
        })
    }

    /// Checks the bundle, the rootfs and the process.
    pub fn validate(&self) -> Result<(), Error> {
        check_bundle_dir(&self.id, &self.bundle)?;
        let rootfs = self.rootfs()?;
        match &self.rootfs_block {
            Some(b) if !b.image.exists() => {
                return Err(Error::InvalidBundle {
                    container: self.id.clone(),
                    path: b.image.clone(),
                    reason: "the rootfs image does not exist".into(),
                });
            }
            Some(_) => {}
            None if !rootfs.is_dir() => {
                return Err(Error::InvalidBundle {
                    container: self.id.clone(),
                    path: rootfs,
                    reason: "the rootfs (root.path) is not a directory".into(),
                });
            }
            None => {}
        }
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::InvalidSpec {
                container: self.id.clone(),
                reason: "no process".into(),
            })?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::InvalidSpec {
                container: self.id.clone(),
                reason: "process.args is empty".into(),
            });
        }
        Ok(())
    }
}

fn check_bundle_dir(id: &ContainerId, bundle: &Path) -> Result<(), Error> {
    let reason = match std::fs::metadata(bundle) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "not a directory".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(e) => e.to_string(),
    };
    Err(Error::InvalidBundle {
        container: id.clone(),
        path: bundle.to_owned(),
        reason,
    })
}

/// How long a sandbox's VM and helper processes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxLifetime {
    /// They die with the process that created the sandbox, whatever the
    /// way it ends (kill -9 included), as a containerd shim's VM dies with
    /// the shim; dropping the creating [`crate::Sandbox`] handle without
    /// stopping it kills them too. What is left on the host afterwards is
    /// freed by [`crate::reclaim_stale`].
    #[default]
    DiesWithOwner,
    /// They live on after their creator exits, until the sandbox is
    /// deleted: a CLI-style runtime creates in one process and starts,
    /// execs and deletes from later ones (`runc create/start/delete`, Kata
    /// 1.x). Dropping a handle never stops them.
    UntilDeleted,
}

/// Everything [`crate::create_sandbox`] needs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The sandbox id.
    pub id: SandboxId,
    /// Where the SDK keeps its files.
    pub paths: Paths,
    /// The VM.
    pub vm: VmConfig,
    /// Host cgroups; `None` leaves cgroups to the embedder.
    pub cgroups: Option<CgroupsConfig>,
    /// The filesystem share.
    pub fs_share: FsShareConfig,
    /// The agent.
    pub agent: AgentSettings,
    /// The guest's hostname (default: the sandbox id).
    pub hostname: Option<String>,
    /// Containers created with the sandbox.
    pub containers: Vec<ContainerConfig>,
    /// How long an operation waits for the sandbox's lock.
    pub lock_timeout: Duration,
    /// How long the VM and helpers live.
    pub lifetime: SandboxLifetime,
    /// The network: the pod's namespace (or one the SDK makes, or none)
    /// and DNS.
    pub network: crate::network::NetworkConfig,
}

impl SandboxConfig {
    /// A sandbox with default paths, host cgroups, share and timeouts.
    pub fn new(id: SandboxId, vm: VmConfig) -> Self {
        SandboxConfig {
            id,
            paths: Paths::default(),
            vm,
            cgroups: Some(CgroupsConfig::default()),
            fs_share: FsShareConfig::default(),
            agent: AgentSettings::default(),
            hostname: None,
            containers: Vec::new(),
            lock_timeout: Duration::from_secs(10),
            lifetime: SandboxLifetime::DiesWithOwner,
            network: crate::network::NetworkConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_config_json_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": {\"args\": [\"sh\",]}\n}\n",
        )
        .unwrap();
        let err = ContainerConfig::from_bundle("app".parse().unwrap(), dir.path()).unwrap_err();
        let Error::BundleConfig { source, path, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &dir.path().join("config.json"));
        assert_eq!((source.line(), source.column()), (3, 29), "{source}");
        let chain = format!("{err}: {source}");
        assert!(chain.contains("line 3 column 29"), "{chain}");
    }
}
