//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A step of [`crate::create_sandbox`], named in its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateStep {
    /// Planning: the configuration checked and turned into a plan
    /// ([`crate::plan_sandbox`]); nothing on the host touched yet.
    Plan,
    /// Creating the state directory and taking its lock.
    State,
    /// Setting up the network: the namespace (when the SDK makes it), a
    /// tap and tc redirects for each of its interfaces.
    Network,
    /// Creating the host cgroups.
    Cgroups,
    /// Preparing the host side of the filesystem share.
    FsShare,
    /// Waiting for a boot slot ([`crate::BootAdmission`]).
    BootSlot,
    /// Starting the VM.
    StartVm,
    /// Moving the VMM's threads into the cgroups.
    ConstrainVm,
    /// Connecting to the guest agent.
    ConnectAgent,
    /// Reading the guest's details.
    GuestDetails,
    /// Configuring the guest's interfaces, routes and neighbours.
    GuestNetwork,
    /// Setting up the sandbox in the guest (the share's mount, hostname).
    GuestSandbox,
    /// Creating the sandbox's containers.
    Containers,
}

/// Everything that can go wrong in the Sandbox/Container API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An id broke the rule of [`vc_types::validate_id`].
    #[error(transparent)]
    InvalidId(#[from] vc_types::IdError),

    /// The VM part of the configuration cannot start a VM (0 vCPUs, a
    /// missing kernel, a bad kernel parameter, a socket path too long, ...).
    #[error("invalid VM configuration")]
    InvalidVmConfig {
        /// The hypervisor layer's verdict.
        #[source]
        source: vc_hypervisor::ConfigError,
    },

    /// The host cgroups part of the configuration cannot be planned (a bad
    /// `cgroupsPath`, bad container resources, ...).
    #[error("invalid host cgroups configuration")]
    InvalidCgroupsConfig {
        /// The cgroup planner's verdict.
        #[source]
        source: vc_cgroups_host::Error,
    },

    /// The containers need more vCPUs or memory than the VM can grow to
    /// (`VmConfig::max_vcpus`, `VmConfig::max_memory_mib`); nothing was
    /// changed.
    #[error("the containers need {requested} {resource}: the VM can have at most {max}")]
    ResourcesAboveMax {
        /// `vCPUs` or `MiB of memory`.
        resource: &'static str,
        /// What the containers with the default need.
        requested: u64,
        /// The most the VM can have.
        max: u64,
    },

    /// A guest hostname the kernel would refuse.
    #[error("hostname {hostname:?} is not a valid host name (1 to 64 bytes, no '/', NUL or space)")]
    InvalidHostname {
        /// The hostname given.
        hostname: String,
    },

    /// A network namespace path that is not one (missing, not nsfs, not a
    /// network namespace).
    #[error("{path} is not a usable network namespace: {reason}")]
    InvalidNetns {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A DNS line that cannot go into `resolv.conf` (empty, or with a
    /// line break).
    #[error("DNS line {line:?} is not one resolv.conf line")]
    InvalidDns {
        /// The line given.
        line: String,
    },

    /// An interface of the network namespace the SDK cannot carry into
    /// the VM without touching what is not its own (a tap name taken, an
    /// ingress qdisc there already), or what it made there could not be
    /// removed.
    #[error("network interface {link} (netns {netns:?}): {reason}")]
    NetworkConflict {
        /// The interface.
        link: String,
        /// Its namespace.
        netns: Option<PathBuf>,
        /// What is in the way.
        reason: String,
    },

    /// A netlink request in the sandbox's network namespace failed.
    #[error("netlink: cannot {operation} {target} (netns {netns:?})")]
    Netlink {
        /// What was attempted.
        operation: &'static str,
        /// On what.
        target: String,
        /// The namespace.
        netns: Option<PathBuf>,
        /// The kernel's answer.
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// A tap could not be made.
    #[error("cannot create tap {tap} (netns {netns:?})")]
    Tap {
        /// The tap's name.
        tap: String,
        /// Its namespace.
        netns: Option<PathBuf>,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An OCI hook exited with a failure.
    #[error("{stage} hook {path} failed: {status}")]
    HookFailed {
        /// `prestart`, `createRuntime`, `poststart`, `poststop`.
        stage: &'static str,
        /// The hook's program.
        path: PathBuf,
        /// How it ended.
        status: std::process::ExitStatus,
    },

    /// An OCI hook did not finish within its timeout (it was killed).
    #[error("{stage} hook {path} timed out after {timeout:?}")]
    HookTimeout {
        /// The stage.
        stage: &'static str,
        /// The hook's program.
        path: PathBuf,
        /// Its timeout.
        timeout: Duration,
    },

    /// An OCI hook could not be run.
    #[error("{stage} hook {path} could not run")]
    HookSpawn {
        /// The stage.
        stage: &'static str,
        /// The hook's program.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// virtio-fs was asked for and no `virtiofsd` was found.
    #[error(
        "fs_share is virtio-fs but no virtiofsd was found (configured: {configured:?}; searched PATH and {searched:?})"
    )]
    VirtiofsdNotFound {
        /// The configured path, if any.
        configured: Option<PathBuf>,
        /// The places searched besides `PATH`.
        searched: Vec<PathBuf>,
    },

    /// The request needs something this host, backend or driver lacks.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),

    /// A container bundle that is missing, not a directory, or unreadable.
    #[error("container \"{container}\": invalid bundle {path}: {reason}")]
    InvalidBundle {
        /// The container id.
        container: vc_types::ContainerId,
        /// The bundle (or file in it) at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A bundle's `config.json` that does not parse as an OCI runtime spec.
    #[error("container \"{container}\": {path} is not a valid OCI runtime spec")]
    BundleConfig {
        /// The container id.
        container: vc_types::ContainerId,
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },

    /// An OCI spec the SDK cannot run.
    #[error("container \"{container}\": invalid spec: {reason}")]
    InvalidSpec {
        /// The container id.
        container: vc_types::ContainerId,
        /// What is wrong.
        reason: String,
    },

    /// A sandbox with this id exists already (alive, or left over by a
    /// crash: [`crate::reclaim`] frees a dead one).
    #[error("sandbox \"{id}\" already exists")]
    AlreadyExists {
        /// The sandbox id.
        id: vc_types::SandboxId,
    },

    /// The sandbox's VM died without being stopped (its VMM exited or was
    /// killed): it can only be cleaned up ([`crate::cleanup_container`]).
    #[error("the VM of sandbox \"{id}\" is gone (pid {pid}): only its cleanup remains")]
    VmDied {
        /// The sandbox id.
        id: vc_types::SandboxId,
        /// The VMM's pid.
        pid: u32,
    },

    /// No boot slot became free in time ([`crate::BootAdmission`]).
    #[error("sandbox \"{id}\" waited for a boot slot in vain")]
    BootAdmission {
        /// The sandbox id.
        id: vc_types::SandboxId,
        /// How long and for how many slots.
        #[source]
        source: crate::boot::AdmissionError,
    },

    /// The guest's agent did not answer before its boot was given up (see
    /// [`crate::VmConfig::boot_cpu_budget`]).
    #[error("the guest of sandbox \"{id}\" did not get ready")]
    GuestNotReady {
        /// The sandbox id.
        id: vc_types::SandboxId,
        /// Why the wait ended: its CPU budget spent, the wall-clock limit.
        #[source]
        source: crate::boot::BootVerdict,
    },

    /// No sandbox with this id.
    #[error("sandbox \"{id}\" not found")]
    NotFound {
        /// The sandbox id.
        id: vc_types::SandboxId,
    },

    /// A container with this id exists already in the sandbox.
    #[error("container \"{container}\" already exists in sandbox \"{sandbox}\"")]
    ContainerExists {
        /// The sandbox id.
        sandbox: vc_types::SandboxId,
        /// The container id.
        container: vc_types::ContainerId,
    },

    /// No container with this id in the sandbox.
    #[error("container \"{container}\" not found in sandbox \"{sandbox}\"")]
    ContainerNotFound {
        /// The sandbox id.
        sandbox: vc_types::SandboxId,
        /// The container id.
        container: vc_types::ContainerId,
    },

    /// The operation does not apply in the current state.
    #[error("cannot {operation} {subject}: it is {state}")]
    WrongState {
        /// What was asked.
        operation: &'static str,
        /// `sandbox "x"` or `container "y"`.
        subject: String,
        /// Its current state.
        state: String,
    },

    /// Reading or writing the persisted state failed.
    #[error("state I/O on {path}")]
    StateIo {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A state file that does not parse.
    #[error("corrupt state file {path}")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// A state file written by an incompatible version of the SDK.
    #[error("state file {path} has version {found}; this build reads version {supported}")]
    UnsupportedStateVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },

    /// Another process held the sandbox's lock for too long.
    #[error("sandbox \"{id}\" is locked by another operation ({path}); gave up after {timeout:?}")]
    LockTimeout {
        /// The sandbox id.
        id: vc_types::SandboxId,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },

    /// A hypervisor operation failed.
    #[error("hypervisor: cannot {operation}")]
    Hypervisor {
        /// What was attempted.
        operation: &'static str,
        /// The hypervisor's error.
        #[source]
        source: vc_hypervisor::Error,
    },

    /// An agent call failed.
    #[error("agent: {operation} failed")]
    Agent {
        /// The call.
        operation: &'static str,
        /// The agent's error.
        #[source]
        source: vc_agent_client::AgentError,
    },

    /// A host cgroups operation failed.
    #[error("host cgroups: cannot {operation}")]
    Cgroups {
        /// What was attempted.
        operation: &'static str,
        /// The cgroups error.
        #[source]
        source: vc_cgroups_host::Error,
    },

    /// A device manager operation failed.
    #[error("devices: cannot {operation}")]
    Devices {
        /// What was attempted.
        operation: &'static str,
        /// The device manager's error.
        #[source]
        source: vc_device_manager::Error,
    },

    /// A host mount or unmount failed.
    #[error("cannot {operation} {target}")]
    HostMount {
        /// `mount`, `unmount`, ...
        operation: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A host file or directory operation failed.
    #[error("cannot {operation} {path}")]
    HostIo {
        /// What was attempted.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A helper process (virtiofsd, ...) failed to start or died.
    #[error("helper {program}: {reason}")]
    Helper {
        /// The program.
        program: PathBuf,
        /// What happened.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("{operation} timed out after {timeout:?}")]
    Timeout {
        /// What was waited for.
        operation: &'static str,
        /// The limit.
        timeout: Duration,
    },

    /// Creating the sandbox failed at `step`; everything done before it
    /// was undone (what an undo could not do is in `unwind_errors`, and
    /// what it left recorded is freed by [`crate::reclaim`]).
    #[error(
        "creating sandbox \"{sandbox}\" failed at step {step:?}{}",
        unwind_suffix(unwind_errors)
    )]
    Create {
        /// The sandbox id.
        sandbox: vc_types::SandboxId,
        /// The step that failed.
        step: CreateStep,
        /// Why.
        #[source]
        source: Box<Error>,
        /// The undo steps that failed while unwinding, with why.
        unwind_errors: Vec<(&'static str, Error)>,
    },

    /// A forced cleanup freed what it could; these are what it could not.
    /// The message names each error with its causes.
    #[error("cleanup of sandbox \"{sandbox}\" left {} error(s): {}", errors.len(), errors.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
    Cleanup {
        /// The sandbox id.
        sandbox: vc_types::SandboxId,
        /// Every error met, in order.
        errors: Vec<Error>,
    },
}

fn unwind_suffix(errors: &[(&'static str, Error)]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let each: Vec<String> = errors
        .iter()
        .map(|(step, e)| format!("{step}: {}", chain(e)))
        .collect();
    format!(" (and undoing left: {})", each.join("; "))
}

/// An error and its causes, on one line (for logs and messages).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Error {
    pub(crate) fn hypervisor(
        operation: &'static str,
    ) -> impl FnOnce(vc_hypervisor::Error) -> Error {
        move |source| Error::Hypervisor { operation, source }
    }

    pub(crate) fn agent(
        operation: &'static str,
    ) -> impl FnOnce(vc_agent_client::AgentError) -> Error {
        move |source| Error::Agent { operation, source }
    }

    pub(crate) fn cgroups(operation: &'static str) -> impl FnOnce(vc_cgroups_host::Error) -> Error {
        move |source| Error::Cgroups { operation, source }
    }

    pub(crate) fn host_io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::HostIo {
            operation,
            path,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleanup_error_names_every_error_with_its_causes() {
        let e = Error::Cleanup {
            sandbox: "sb1".parse().unwrap(),
            errors: vec![
                Error::Hypervisor {
                    operation: "attach to the running VM",
                    source: vc_hypervisor::Error::VmmNotRunning { pid: 42 },
                },
                Error::host_io("remove", "/run/x")(std::io::ErrorKind::PermissionDenied.into()),
            ],
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cleanup of sandbox \"sb1\" left 2 error(s): "),
            "{text}"
        );
        assert!(
            text.contains("cannot attach to the running VM: VMM process 42 is not running"),
            "{text}"
        );
        assert!(
            text.contains("cannot remove /run/x: permission denied"),
            "{text}"
        );
    }
}
