//! The persisted state of a sandbox: what `fetch_sandbox` in another
//! process needs, and every host resource, recorded before it is created
//! (write-ahead), so that `reclaim` can free a sandbox whose creator died.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use vc_hypervisor::HypervisorState;
use vc_types::{ContainerId, SandboxId};

use crate::config::{AgentSettings, CgroupsConfig, Paths};
use crate::fs_share::ShareKind;
use crate::plan::VmBaseSize;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPhase {
    /// `create_sandbox` is running, or died while running.
    Creating,
    /// Created: the VM runs, containers are created but not started.
    Ready,
    /// Started.
    Running,
    /// The VM's vCPUs are paused.
    Paused,
    /// The VM is stopped; only deletion remains.
    Stopped,
    /// The VM died without being stopped (its VMM exited or was killed),
    /// and every container with it; only the teardown remains, which
    /// [`crate::cleanup_container`] does without `force`. Seen by every
    /// process, from the recorded VMM's pid and start time.
    VmDied,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    /// Created in the guest, process not started.
    Created,
    /// Its process runs.
    Running,
    /// Frozen.
    Paused,
    /// Its process exited.
    Stopped,
}

/// A process the sandbox started (the VMM, virtiofsd, ...) or its owner,
/// identified for good by pid and start time.
pub use vc_hypervisor::process::ProcessRecord;

/// Every host resource of the sandbox but its cgroups (whose owner keeps
/// its own record, `cgroups.json`). Each is recorded before it is created
/// (or, for a process, right after it is spawned).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostResources {
    /// The VM's runtime directory.
    pub runtime_dir: Option<PathBuf>,
    /// The host side of the filesystem share.
    pub shared_dir: Option<PathBuf>,
    /// The running VM, for re-attaching.
    pub vm: Option<HypervisorState>,
    /// The VMM process, for ending it without the VMM's help.
    pub vmm: Option<ProcessRecord>,
    /// Helper processes.
    pub helpers: Vec<ProcessRecord>,
    /// Host mount points the sandbox made (bind mounts into the share), in
    /// the order they were made.
    pub mounts: Vec<PathBuf>,
}

/// Settings another process needs to drive the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedSettings {
    /// Paths.
    pub paths: Paths,
    /// The agent.
    pub agent: AgentSettings,
    /// The share in use.
    pub share: ShareKind,
    /// Host cgroups, if managed.
    pub cgroups: Option<CgroupsConfig>,
    /// The VM's base size, for re-sizing when containers change.
    pub vm_base: VmBaseSize,
    /// Graceful VM stop limit.
    pub stop_timeout: std::time::Duration,
    /// How long growing the VM may take (hot-plug and guest onlining).
    #[serde(default = "default_resize_timeout")]
    pub resize_timeout: std::time::Duration,
    /// Lock wait limit.
    pub lock_timeout: std::time::Duration,
    /// How long the VM and helpers live.
    #[serde(default)]
    pub lifetime: crate::config::SandboxLifetime,
}

fn default_resize_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// What the guest agent reported at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The agent's version.
    pub agent_version: String,
    /// Memory hot-plug block size, bytes.
    pub mem_block_size_bytes: u64,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its id.
    pub id: ContainerId,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Its spec as given.
    pub spec: Spec,
    /// Where it is.
    pub phase: ContainerPhase,
    /// The exit code, once stopped.
    pub exit_code: Option<i32>,
    /// Host mount points made for it (rootfs and volumes in the share).
    pub mounts: Vec<PathBuf>,
    /// Ids of the devices it holds in the sandbox's device manager
    /// (recorded before they are attached).
    #[serde(default)]
    pub devices: Vec<String>,
}

impl SandboxState {
    /// The phase, with a VM that should run but whose VMM is gone (exited,
    /// killed, or a zombie nobody reaps) seen as [`SandboxPhase::VmDied`].
    pub fn effective_phase(&self) -> SandboxPhase {
        let should_run = matches!(
            self.phase,
            SandboxPhase::Ready | SandboxPhase::Running | SandboxPhase::Paused
        );
        let vmm_gone = self
            .resources
            .vmm
            .as_ref()
            .is_some_and(|v| !crate::process::is_alive(v.pid, v.start_time));
        if should_run && vmm_gone {
            SandboxPhase::VmDied
        } else {
            self.phase
        }
    }
}

/// The whole persisted state of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    /// The sandbox id.
    pub id: SandboxId,
    /// Where it is.
    pub phase: SandboxPhase,
    /// The process that created it (pid and start time): with the VM, what
    /// [`crate::reclaim_stale`] checks for life.
    #[serde(default)]
    pub owner: Option<ProcessRecord>,
    /// How to drive it.
    pub settings: PersistedSettings,
    /// What it holds on the host.
    pub resources: HostResources,
    /// What the guest reported.
    pub guest: Option<GuestInfo>,
    /// Its containers.
    pub containers: BTreeMap<ContainerId, ContainerRecord>,
    /// The device manager's registry (hot-plugged disks and who holds them).
    #[serde(default)]
    pub devices: Option<vc_device_manager::DeviceManagerState>,
}
