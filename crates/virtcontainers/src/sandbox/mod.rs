//! The [`Sandbox`] handle and its operations.
//!
//! Every operation locks the sandbox's state file (shared for reads,
//! exclusive for changes), re-reads the state, acts, and writes the state
//! back before unlocking: two processes (or two tasks) driving one sandbox
//! never act on a stale view. No lock is held while waiting for a
//! container's process to exit.

mod cgroups;
mod cleanup;
mod container;
mod create;
mod fetch;
mod hooks;
mod lifecycle;
mod network;
mod overhead;
mod process;
mod reclaim;
mod resize;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slog::Logger;
use vc_agent_client::Agent;
use vc_device_manager::{DeviceManager, RegistryConfig};
use vc_hypervisor::Hypervisor;
use vc_types::{ContainerId, SandboxId};

pub use cgroups::CgroupsRecord;
pub use cleanup::{CleanupOutcome, cleanup_container};
pub use container::ContainerStatus;
pub(crate) use container::{create_from_layout, unbind_all};
pub use create::create_sandbox;
pub use fetch::fetch_sandbox;
pub use lifecycle::SandboxStatus;
pub use overhead::{CgroupUsage, ChargedTo, OverheadReport, ProcessUsage, Usage};
pub use process::ProcessIo;
pub use reclaim::{ReclaimReport, reclaim, reclaim_stale};

use self::cgroups::SandboxCgroups;
use crate::error::Error;
use crate::fs_share::FsShare;
use crate::persist::{LockMode, SandboxStore, Store};
use crate::plan::container_resources;
use crate::state::{ContainerRecord, PersistedSettings, SandboxState};

/// A running sandbox: one VM, its agent, and its containers.
///
/// From [`create_sandbox`] (this process started the VM and owns it:
/// dropping the handle without [`stop`](Self::stop) kills the VM, as a shim
/// exiting would) or [`fetch_sandbox`] (another process's sandbox: the
/// handle drives it, dropping it changes nothing).
pub struct Sandbox {
    id: SandboxId,
    store: Store,
    settings: PersistedSettings,
    vm: Arc<dyn Hypervisor>,
    agent: Arc<dyn Agent>,
    /// The sandbox's hot-plugged disks and who holds them.
    devices: Arc<DeviceManager>,
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
    pub fn id(&self) -> &SandboxId {
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
    pub fn devices(&self) -> &Arc<DeviceManager> {
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
        id: &ContainerId,
    ) -> Result<&'a ContainerRecord, Error> {
        state
            .containers
            .get(id)
            .ok_or_else(|| Error::ContainerNotFound {
                sandbox: self.id.clone(),
                container: id.clone(),
            })
    }

    fn container_mut<'a>(
        &self,
        state: &'a mut SandboxState,
        id: &ContainerId,
    ) -> Result<&'a mut ContainerRecord, Error> {
        state
            .containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound {
                sandbox: self.id.clone(),
                container: id.clone(),
            })
    }

    /// Re-plans the host cgroups (when managed) for the containers now in
    /// `state` and places the VMM's threads again, vCPU threads read
    /// afresh. The caller holds the state's exclusive lock.
    async fn update_cgroups(&self, state: &SandboxState) -> Result<(), Error> {
        let Some(mut cgroups) = SandboxCgroups::load(&self.state_dir(), &self.logger)? else {
            return Ok(());
        };
        cgroups
            .update(
                &container_resources(state),
                self.vm.as_ref(),
                &state.resources.helpers,
            )
            .await
    }
}

/// A new device registry over `vm`.
pub(crate) fn new_device_registry(vm: &Arc<dyn Hypervisor>, logger: &Logger) -> Arc<DeviceManager> {
    Arc::new(DeviceManager::new(
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
    use std::io::ErrorKind;
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        // A parent that is not a directory: the path was never made.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(()),
        Err(e) => Err(Error::host_io("remove directory", path)(e)),
    }
}
