//! The [`Sandbox`] handle and its operations.
//!
//! Every operation locks the sandbox's state file (shared for reads,
//! exclusive for changes), re-reads the state, acts, and writes the state
//! back before unlocking: two processes (or two tasks) driving one sandbox
//! never act on a stale view. No lock is held while waiting for a
//! container's process to exit.

mod container;
mod create;
mod lifecycle;
mod teardown;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slog::Logger;
use vc_agent_client::Agent;
use vc_cgroups_host::plan::{ContainerResources, ContainerState};
use vc_cgroups_host::{CgroupManager, HostCgroups, SandboxTasks};
use vc_device_manager::{DeviceRegistry, RegistryConfig};
use vc_hypervisor::Hypervisor;

pub use container::{ContainerStatus, ProcessIo};
pub use create::create_sandbox;
pub use lifecycle::SandboxStatus;
pub use teardown::{CleanupOutcome, cleanup_container, fetch_sandbox, reclaim};

use crate::error::Error;
use crate::fs_share::FsShare;
use crate::persist::{LockMode, SandboxStore, Store};
use crate::state::{
    CgroupsRecord, ContainerPhase, ContainerRecord, PersistedSettings, SandboxState,
};

/// A running sandbox: one VM, its agent, and its containers.
///
/// From [`create_sandbox`] (this process started the VM and owns it:
/// dropping the handle without [`stop`](Self::stop) kills the VM, as a shim
/// exiting would) or [`fetch_sandbox`] (another process's sandbox: the
/// handle drives it, dropping it changes nothing).
pub struct Sandbox {
    id: String,
    store: Store,
    settings: PersistedSettings,
    vm: Arc<dyn Hypervisor>,
    agent: Arc<dyn Agent>,
    /// The sandbox's hot-plugged disks and who holds them.
    devices: Arc<DeviceRegistry>,
    /// The share started by this process (to stop its daemon); `None` for a
    /// fetched sandbox, whose daemon is stopped from the state's records.
    share: Mutex<Option<Box<dyn FsShare>>>,
    logger: Logger,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VM, for what this API does not wrap (capabilities, devices).
    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.vm
    }

    /// The guest agent, for what this API does not wrap.
    pub fn agent(&self) -> &Arc<dyn Agent> {
        &self.agent
    }

    /// The device manager: the disks hot-plugged for the containers.
    pub fn devices(&self) -> &Arc<DeviceRegistry> {
        &self.devices
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.store.sandbox_dir(&self.id)
    }

    async fn lock(&self, mode: LockMode) -> Result<(SandboxStore, SandboxState), Error> {
        let store = self
            .store
            .open(&self.id, mode, self.settings.lock_timeout)
            .await?;
        let state = store.read()?;
        Ok((store, state))
    }

    fn container<'a>(
        &self,
        state: &'a SandboxState,
        id: &str,
    ) -> Result<&'a ContainerRecord, Error> {
        state
            .containers
            .get(id)
            .ok_or_else(|| Error::ContainerNotFound {
                sandbox: self.id.clone(),
                container: id.to_owned(),
            })
    }

    fn container_mut<'a>(
        &self,
        state: &'a mut SandboxState,
        id: &str,
    ) -> Result<&'a mut ContainerRecord, Error> {
        state
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound {
                sandbox: self.id.clone(),
                container: id.to_owned(),
            })
    }

    /// Re-plans the host cgroups for the containers now in `state` and
    /// re-places the VMM's threads.
    async fn update_cgroups(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
    ) -> Result<(), Error> {
        update_cgroups(self.vm.as_ref(), &self.logger, store, state).await
    }
}

/// Re-plans the host cgroups for the containers in `state` and re-places
/// the VMM's threads (vCPU thread ids read afresh: vCPUs can change).
pub(crate) async fn update_cgroups(
    vm: &dyn Hypervisor,
    logger: &Logger,
    store: &SandboxStore,
    state: &mut SandboxState,
) -> Result<(), Error> {
    let Some(record) = state.resources.cgroups.clone() else {
        return Ok(());
    };
    let plan = vc_cgroups_host::plan(&record.config, &container_resources(state))
        .map_err(Error::cgroups("plan"))?;
    let vcpus = vm
        .vcpu_threads()
        .await
        .map_err(Error::hypervisor("list vCPU threads"))?;
    let tasks = SandboxTasks {
        runtime: record.config.sandbox_cgroup_only.then(std::process::id),
        vmm: vm.vmm_pids().first().copied(),
        vcpu_threads: vcpus.iter().map(|v| v.tid).collect(),
        helpers: state
            .resources
            .helpers
            .iter()
            .filter(|h| crate::process::start_time(h.pid) == Some(h.start_time))
            .flat_map(|h| crate::process::with_descendants(h.pid))
            .collect(),
    };
    let mut manager = cgroups_manager(&record, logger)?;
    let result = manager.update(&plan, &tasks);
    if let Some(r) = state.resources.cgroups.as_mut() {
        r.state = manager.state().clone();
    }
    store.write(state)?;
    result.map_err(Error::cgroups("update"))
}

/// The containers' resources as the cgroup planner and VM sizing see them.
pub(crate) fn container_resources(state: &SandboxState) -> Vec<ContainerResources> {
    state
        .containers
        .values()
        .map(|c| resources_of(&c.id, &c.spec, c.phase == ContainerPhase::Stopped))
        .collect()
}

/// One container's resources and devices from its spec.
pub(crate) fn resources_of(
    id: &str,
    spec: &oci_spec::runtime::Spec,
    stopped: bool,
) -> ContainerResources {
    let linux = spec.linux().clone().unwrap_or_default();
    ContainerResources {
        id: id.to_owned(),
        resources: linux.resources().clone().unwrap_or_default(),
        devices: linux.devices().clone().unwrap_or_default(),
        state: if stopped {
            ContainerState::Stopped
        } else {
            ContainerState::Active
        },
    }
}

/// The cgroup manager of a recorded sandbox.
pub(crate) fn cgroups_manager(
    record: &CgroupsRecord,
    logger: &Logger,
) -> Result<HostCgroups, Error> {
    HostCgroups::from_state(
        record.config.driver,
        record.version,
        &record.roots,
        logger.clone(),
        record.state.clone(),
    )
    .map_err(Error::cgroups("load the sandbox's cgroups"))
}

/// A new device registry over `vm`.
pub(crate) fn new_device_registry(
    vm: &Arc<dyn Hypervisor>,
    logger: &Logger,
) -> Arc<DeviceRegistry> {
    Arc::new(DeviceRegistry::new(
        vm.clone(),
        RegistryConfig::default(),
        logger.clone(),
    ))
}

/// Removes a VM runtime directory and what is in it: only the VMM's and
/// helpers' sockets and logs live there, never a mount.
pub(crate) fn remove_runtime_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host_io("remove", dir)(e)),
    }
}

/// Removes a directory the SDK created, only if empty: never recursively,
/// since a stale bind mount under it would expose a container's files.
pub(crate) fn remove_empty_dir(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host_io("remove directory", path)(e)),
    }
}
