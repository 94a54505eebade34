//! The crate's error type.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while planning or applying host cgroups.
///
/// Validation errors (`Invalid*`) come from the planner and mean nothing was
/// touched. The other variants come from the applier, which unwinds what it
/// did before returning them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A cgroupfs path (parent or OCI `cgroupsPath`) that is unsafe or malformed.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidCgroupPath {
        /// The rejected path, as given.
        path: String,
        /// Which rule it broke.
        reason: PathError,
    },

    /// A systemd `slice:prefix:name` cgroup path that does not parse.
    #[error("invalid systemd cgroup path {path:?}: {reason}")]
    InvalidSystemdPath {
        /// The rejected path, as given.
        path: String,
        /// Which rule it broke.
        reason: SystemdPathError,
    },

    /// A CPU or memory-node list that is not in the Linux list syntax.
    #[error("invalid cpu list {list:?}: {reason}")]
    InvalidCpuList {
        /// The rejected list.
        list: String,
        /// What is wrong with it.
        reason: CpuListError,
    },

    /// A container whose CPU quota is below -1.
    #[error("container {container:?}: invalid cpu quota {quota} (must be -1, 0 or positive)")]
    InvalidCpuQuota {
        /// The container's id.
        container: String,
        /// The rejected quota, in microseconds.
        quota: i64,
    },

    /// A container whose CPU period is 0 or outside the kernel's range.
    #[error(
        "container {container:?}: invalid cpu period {period}us (must be between {}us and {}us)",
        crate::plan::MIN_CPU_PERIOD_US,
        crate::plan::MAX_CPU_PERIOD_US
    )]
    InvalidCpuPeriod {
        /// The container's id.
        container: String,
        /// The rejected period, in microseconds.
        period: u64,
    },

    /// A container whose memory limit is below -1.
    #[error("container {container:?}: invalid memory limit {limit} (must be -1, 0 or positive)")]
    InvalidMemoryLimit {
        /// The container's id.
        container: String,
        /// The rejected limit, in bytes.
        limit: i64,
    },

    /// A container device with a negative major or minor number.
    #[error("container {container:?}: invalid device {path:?} ({major}:{minor})")]
    InvalidDevice {
        /// The container's id.
        container: String,
        /// The device node path from the spec.
        path: PathBuf,
        /// Its major number.
        major: i64,
        /// Its minor number.
        minor: i64,
    },

    /// A plan passed to `update` whose cgroup paths differ from the applied one.
    #[error("plan for sandbox {sandbox:?} does not match the applied cgroups: {what}")]
    PlanMismatch {
        /// The sandbox id.
        sandbox: vc_types::SandboxId,
        /// What differs.
        what: &'static str,
    },

    /// A process or thread id that does not exist (or no longer exists).
    #[error("no such process or thread: {pid}")]
    NoSuchTask {
        /// The missing pid or tid.
        pid: u32,
    },

    /// A thread id given as a vCPU thread that is not a thread of the VMM.
    #[error("thread {tid} is not a thread of the VMM process {pid}")]
    NotAThreadOf {
        /// The thread id.
        tid: u32,
        /// The VMM's pid.
        pid: u32,
    },

    /// vCPU threads given without the VMM process they belong to.
    #[error("vCPU threads given without the VMM pid")]
    VcpuThreadsWithoutVmm,

    /// The cgroup mount point does not exist or cannot be inspected.
    #[error("cgroup filesystem at {path} is missing")]
    CgroupfsMissing {
        /// The expected mount point.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The directory given as a cgroup mount is some other filesystem.
    #[error("{path} is not a {expected} mount")]
    NotACgroupfs {
        /// The directory.
        path: PathBuf,
        /// `cgroup` (v1) or `cgroup2`.
        expected: &'static str,
    },

    /// The cgroup filesystem is mounted read-only.
    #[error("cgroup filesystem at {path} is read-only")]
    CgroupfsReadOnly {
        /// The mount point.
        path: PathBuf,
    },

    /// A controller the plan needs is not mounted (v1) or not available (v2).
    #[error("cgroup controller {controller:?} is not available under {root}")]
    ControllerMissing {
        /// The controller name (`cpu`, `memory`, ...).
        controller: &'static str,
        /// The hierarchy root searched.
        root: PathBuf,
    },

    /// A path would resolve outside the cgroup mount.
    #[error("cgroup {path} resolves outside the cgroup mount {root}")]
    PathEscapesRoot {
        /// The resolved path.
        path: PathBuf,
        /// The mount it must stay under.
        root: PathBuf,
    },

    /// Creating a cgroup directory failed.
    #[error("cannot create cgroup {path}")]
    CreateCgroup {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Writing a constraint through cgroups-rs failed.
    #[error("cannot write {file} = {value:?} in cgroup {path}")]
    WriteSetting {
        /// The cgroup directory.
        path: PathBuf,
        /// The control file.
        file: &'static str,
        /// The value written.
        value: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The mount table could not be read or parsed.
    #[error("cannot read the mount table")]
    MountTable(#[from] vc_mountinfo::Error),

    /// Reading a cgroup control file failed.
    #[error("cannot read {path}")]
    ReadCgroupFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Moving a process or thread into a cgroup failed.
    #[error("cannot move {kind} {pid} into cgroup {path}")]
    MoveTask {
        /// `process` or `thread`.
        kind: &'static str,
        /// The pid or tid.
        pid: u32,
        /// The destination cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A cgroup v2 directory could not be made threaded, so one process's
    /// threads cannot be split between cgroups.
    #[error(
        "cannot make {path} a threaded cgroup (the hierarchy does not allow splitting a \
         process's threads here; use sandbox_cgroup_only)"
    )]
    ThreadedModeUnavailable {
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Removing a cgroup directory failed.
    #[error("cannot remove cgroup {path}")]
    DeleteCgroup {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The kernel refused to load the cgroup v2 device program generated
    /// from the plan's device rules (`bpf(BPF_PROG_LOAD)`).
    #[error(
        "cannot load the device program for cgroup {path}{}",
        verifier_log(log)
    )]
    LoadDeviceProgram {
        /// The cgroup directory it was meant for.
        path: PathBuf,
        /// The verifier's log; empty when the kernel gave none.
        log: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Attaching a device program to a cgroup v2 directory failed, or
    /// listing the programs it has (`BPF_PROG_ATTACH`, `BPF_PROG_QUERY`).
    #[error("cannot attach the device program to cgroup {path}")]
    AttachDeviceProgram {
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Detaching a device program from a cgroup v2 directory failed
    /// (`BPF_PROG_DETACH`).
    #[error("cannot detach device program {program} from cgroup {path}")]
    DetachDeviceProgram {
        /// The cgroup directory.
        path: PathBuf,
        /// The program's kernel id.
        program: u32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The operation is not supported by this backend or host.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),

    /// The journal refused to record the manager's state before a change
    /// (see [`crate::Journal`]); the change was not made.
    #[error("recording the cgroups state of sandbox {sandbox} before changing the host")]
    Journal {
        /// The sandbox.
        sandbox: vc_types::SandboxId,
        /// The journal's error.
        #[source]
        source: crate::apply::JournalError,
    },
}

fn verifier_log(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!(" (verifier: {})", log.trim())
    }
}

/// Why a cgroupfs path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("empty")]
    Empty,
    /// The path contains a NUL byte.
    #[error("contains a NUL byte")]
    NulByte,
    /// The path contains a `..` component, which could escape the root.
    #[error("contains a '..' component")]
    ParentComponent,
    /// The path contains a control character (newline, tab, ...).
    #[error("contains a control character")]
    ControlCharacter,
    /// A component is longer than the kernel's `NAME_MAX` (255 bytes).
    #[error("a component is longer than 255 bytes")]
    ComponentTooLong,
    /// The path names the hierarchy root, which cannot be a sandbox cgroup.
    #[error("names the cgroup root")]
    IsRoot,
    /// The path is a filesystem path into a cgroup mount (`/sys/fs/cgroup/...`)
    /// rather than a path inside the cgroup hierarchy.
    #[error("is a filesystem path into the cgroup mount, not a cgroup path")]
    MountPath,
}

/// Why a systemd `slice:prefix:name` path was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SystemdPathError {
    /// Not exactly three `:`-separated parts.
    #[error("expected slice:prefix:name")]
    NotThreeParts,
    /// The slice does not end in `.slice`.
    #[error("slice must end in .slice")]
    NotASlice,
    /// The slice name has an empty dash-separated component or a `/`.
    #[error("malformed slice name")]
    MalformedSlice,
    /// The unit name is empty.
    #[error("empty unit name")]
    EmptyName,
    /// A part contains a character systemd does not allow in unit names.
    #[error("character not allowed in a unit name")]
    BadCharacter,
}

/// What is wrong with a CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpuListError {
    /// An empty item between commas or around a dash.
    #[error("empty item")]
    EmptyItem,
    /// An item that is not a decimal number.
    #[error("{0:?} is not a number")]
    NotANumber(String),
    /// A number above [`crate::plan::MAX_CPU_INDEX`].
    #[error("{0} is above the largest CPU number {max}", max = crate::plan::MAX_CPU_INDEX)]
    TooLarge(String),
    /// A range whose end is below its start.
    #[error("range {first}-{last} is descending")]
    DescendingRange {
        /// Start of the range.
        first: u32,
        /// End of the range.
        last: u32,
    },
}
