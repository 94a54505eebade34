//! The error types of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::hypervisor::VmExit;
use crate::qemu::QemuOptionsError;

/// A configuration that cannot start a VM. Returned by
/// [`HypervisorConfig::validate`](crate::HypervisorConfig::validate) before
/// anything is created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An agent port count of 0 or above the maximum.
    #[error("agent_ports is {ports}: must be between 1 and {max}")]
    AgentPorts {
        /// The count given.
        ports: u32,
        /// The most accepted.
        max: u32,
    },

    /// The kernel file does not exist or is not a file.
    #[error("kernel {path} is not a file")]
    KernelNotFound {
        /// The configured kernel.
        path: PathBuf,
    },
    /// The initrd file does not exist or is not a file.
    #[error("initrd {path} is not a file")]
    InitrdNotFound {
        /// The configured initrd.
        path: PathBuf,
    },
    /// The root disk image does not exist or is not a file.
    #[error("root image {path} is not a file")]
    ImageNotFound {
        /// The configured image.
        path: PathBuf,
    },
    /// Neither an initrd nor a root image: the kernel has nothing to run.
    #[error("no initrd and no root image: the guest has nothing to boot")]
    NoBootMedia,
    /// Zero boot vCPUs.
    #[error("a VM needs at least one vCPU")]
    ZeroVcpus,
    /// More vCPUs than the machine supports, or max below boot.
    #[error("invalid vCPU counts: boot {boot}, max {max} (need 1 <= boot <= max <= {limit})")]
    InvalidVcpus {
        /// Boot vCPUs.
        boot: u32,
        /// Max vCPUs.
        max: u32,
        /// The machine's limit.
        limit: u32,
    },
    /// Boot memory below what the guest kernel needs.
    #[error("memory {mib} MiB is below the guest minimum of {min} MiB")]
    MemoryTooSmall {
        /// Configured boot memory.
        mib: u64,
        /// The minimum.
        min: u64,
    },
    /// Max memory below boot memory.
    #[error("max memory {max} MiB is below boot memory {boot} MiB")]
    MaxMemoryBelowBoot {
        /// Boot memory.
        boot: u64,
        /// Max memory.
        max: u64,
    },
    /// The runtime dir is not an absolute path.
    #[error("runtime dir {path} must be an absolute path")]
    RuntimeDirNotAbsolute {
        /// The configured dir.
        path: PathBuf,
    },
    /// A unix socket path does not fit in `sockaddr_un.sun_path`.
    #[error("socket path {path} is {len} bytes, longer than the {max} that fit in sun_path")]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name (VM name, device id, port name, tag) is empty, too long or
    /// has characters QEMU would misread.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The value.
        value: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// Two devices share an id.
    #[error("device id {id} is used twice")]
    DuplicateDeviceId {
        /// The id.
        id: String,
    },
    /// A device's host path is missing.
    #[error("device {id}: {path} does not exist")]
    DevicePathNotFound {
        /// The device id.
        id: String,
        /// The missing path.
        path: PathBuf,
    },
    /// More cold-plugged PCI devices than the backend's bus has slots.
    #[error("{requested} {what} exceed the {limit} PCI slots available")]
    TooManyPciDevices {
        /// What was counted (`cold-plugged PCI devices`).
        what: &'static str,
        /// How many were configured.
        requested: usize,
        /// The limit.
        limit: usize,
    },
    /// virtio-fs needs guest memory shared with the daemon.
    #[error("device {id}: virtio-fs needs shared memory (set memory.shared)")]
    VirtioFsNeedsSharedMemory {
        /// The device id.
        id: String,
    },
    /// A path that QEMU's command line cannot carry (not UTF-8).
    #[error("path {path:?} is not valid UTF-8")]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// A kernel parameter string could not be parsed.
    #[error("invalid kernel parameters {input:?}: {reason}")]
    InvalidKernelParams {
        /// The input.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvmUnusable {
    /// `/dev/kvm` is missing or cannot be opened.
    #[error("/dev/kvm cannot be opened")]
    DeviceUnavailable(#[source] io::Error),
    /// The KVM API version is not the stable one (12).
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    /// A VM cannot be created.
    #[error("KVM cannot create a VM")]
    CreateVm(#[source] io::Error),
    /// The host runs the PVM flavour of KVM, which cannot run a stock guest kernel.
    #[error("the host KVM is PVM (/sys/module/kvm_pvm exists): stock guest kernels fail under it")]
    Pvm,
}

/// Everything the hypervisor layer can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; nothing was started.
    #[error("invalid hypervisor config")]
    InvalidConfig(#[from] ConfigError),

    /// KVM was asked for explicitly and cannot be used.
    #[error("accelerator kvm requested but unusable")]
    KvmUnusable(#[source] KvmUnusable),

    /// The backend's own options are invalid; nothing was started.
    #[error("invalid QEMU options")]
    InvalidQemuOptions(#[from] QemuOptionsError),

    /// The request needs something this host or backend lacks.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),

    /// The operation is not valid in the VM's current state.
    #[error("cannot {op} a VM that is {state}")]
    InvalidState {
        /// The operation.
        op: &'static str,
        /// The state it is in.
        state: &'static str,
    },

    /// The runtime dir cannot be prepared.
    #[error("runtime dir {path}")]
    RuntimeDir {
        /// The dir or file in it.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Another live VMM answers on this runtime dir's QMP socket.
    #[error("runtime dir {path} is in use by a running VMM")]
    RuntimeDirInUse {
        /// The runtime dir.
        path: PathBuf,
    },

    /// The VMM process could not be spawned.
    #[error("spawning {binary}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The VMM exited (or was killed) while starting or running.
    #[error("the VMM exited ({exit}){}", stderr_suffix(stderr))]
    VmmExited {
        /// How it exited.
        exit: VmExit,
        /// The end of its stderr, for diagnosis.
        stderr: String,
    },

    /// Starting took longer than allowed.
    #[error(
        "the VMM did not become ready within {timeout:?}{}",
        stderr_suffix(stderr)
    )]
    StartTimeout {
        /// The limit.
        timeout: Duration,
        /// The end of its stderr, for diagnosis.
        stderr: String,
    },

    /// Connecting to the QMP socket failed.
    #[error("connecting to QMP at {path}")]
    QmpConnect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// QEMU rejected a QMP command.
    #[error("QMP {command} failed ({}): {desc}", class_name(class))]
    QmpCommand {
        /// The command.
        command: &'static str,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, ...).
        class: qapi::ErrorClass,
        /// QEMU's description.
        desc: String,
    },

    /// QEMU reported a vCPU of another target than the one it runs.
    #[error("query-cpus-fast reported a vCPU of target {target:?}")]
    UnexpectedVcpuTarget {
        /// The target QEMU named.
        target: qapi::qmp::SysEmuTarget,
    },

    /// The QMP connection broke while a command was in flight.
    #[error("QMP {command}: connection lost")]
    QmpIo {
        /// The command.
        command: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A QMP command got no answer in time.
    #[error("QMP {command} timed out after {timeout:?}")]
    QmpTimeout {
        /// The command.
        command: &'static str,
        /// The limit.
        timeout: Duration,
    },

    /// A NIC's tap could not be opened (in its network namespace, as the
    /// device says).
    #[error("device {id}: cannot open tap {tap}")]
    TapOpen {
        /// The device id.
        id: String,
        /// The tap's name.
        tap: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// No device with this id is attached.
    #[error("no device {id} is attached")]
    DeviceNotFound {
        /// The id.
        id: String,
    },

    /// A device with this id is already attached.
    #[error("a device {id} is already attached")]
    DeviceExists {
        /// The id.
        id: String,
    },

    /// Every hot-plug port is taken.
    #[error("no free hot-plug port ({ports} configured)")]
    NoFreeHotplugPort {
        /// How many the VM has.
        ports: u32,
    },

    /// The guest did not release a device in time.
    #[error("device {id} was not released by the guest within {timeout:?}")]
    UnplugTimeout {
        /// The device.
        id: String,
        /// The limit.
        timeout: Duration,
    },

    /// A vCPU count above what the VM can hold (its `maxcpus`).
    #[error("{requested} vCPUs asked for: the VM holds at most {max}")]
    VcpusAboveMax {
        /// The count asked for.
        requested: u32,
        /// The VM's maximum.
        max: u32,
    },

    /// A memory size above what the VM can hold (its `maxmem`), after
    /// rounding up to whole guest memory blocks.
    #[error("{requested_mib} MiB of memory asked for: the VM holds at most {max_mib} MiB")]
    MemoryAboveMax {
        /// The size it would reach, MiB.
        requested_mib: u64,
        /// The VM's maximum, MiB.
        max_mib: u64,
    },

    /// Every memory hot-plug slot is taken.
    #[error("no free memory slot ({slots} configured)")]
    NoFreeMemorySlot {
        /// How many the VM has.
        slots: u32,
    },

    /// A guest memory block size that is zero or not a power of two.
    #[error("invalid guest memory block size {block_mib} MiB (a power of two is needed)")]
    InvalidMemoryBlock {
        /// The size given.
        block_mib: u64,
    },

    /// The VMM process of a saved state is gone.
    #[error("VMM process {pid} is not running")]
    VmmNotRunning {
        /// Its pid.
        pid: u32,
    },

    /// The pid of a saved state now belongs to another process.
    #[error("pid {pid} now belongs to another process (start time {found}, expected {expected})")]
    PidReused {
        /// The pid.
        pid: u32,
        /// Start time recorded in the state (clock ticks since boot).
        expected: u64,
        /// Start time of the process that has the pid now.
        found: u64,
    },

    /// Signalling or waiting for the VMM failed.
    #[error("{op} VMM process {pid}")]
    Process {
        /// `kill`, `wait`, `open pidfd`, ...
        op: &'static str,
        /// The pid.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A process of a ledger is gone or a zombie.
    #[error("{program} (pid {pid}) is not running")]
    ProcessNotRunning {
        /// Its program.
        program: PathBuf,
        /// Its pid.
        pid: u32,
    },

    /// The process ledger cannot be read or written.
    #[error("process ledger {path}")]
    Ledger {
        /// The ledger (or exit status) file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A saved state belongs to another backend.
    #[error("saved state of backend {found:?} handed to backend {expected:?}")]
    WrongBackend {
        /// The backend asked to take it.
        expected: String,
        /// The backend that saved it.
        found: String,
    },

    /// A saved state's format version is not the one this build reads.
    #[error("saved {backend} state has version {found}, this build reads version {supported}")]
    StateVersion {
        /// The backend.
        backend: String,
        /// The version saved.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// A saved state's data does not decode.
    #[error("saved {backend} state is malformed")]
    InvalidSavedState {
        /// The backend.
        backend: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A state cannot be encoded for saving.
    #[error("encoding the {backend} state")]
    SaveState {
        /// The backend.
        backend: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },

    /// A failure injected on request. Only the mock backend (feature
    /// `testing`) produces it; the variant exists in every build so that
    /// the enum has one shape.
    #[error("injected failure in {method}")]
    Injected {
        /// The method that failed.
        method: &'static str,
    },
}

/// QEMU's name of an error class, as it sends it.
fn class_name(class: &qapi::ErrorClass) -> &'static str {
    match class {
        qapi::ErrorClass::GenericError => "GenericError",
        qapi::ErrorClass::CommandNotFound => "CommandNotFound",
        qapi::ErrorClass::DeviceNotActive => "DeviceNotActive",
        qapi::ErrorClass::DeviceNotFound => "DeviceNotFound",
        qapi::ErrorClass::KVMMissingCap => "KVMMissingCap",
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", stderr.trim())
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
