//! Container operations of a [`Sandbox`].

use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use slog::{debug, warn};
use vc_agent_client::Agent;
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::protocol::convert;
use vc_types::ContainerId;

use super::Sandbox;
use crate::config::ContainerConfig;
use crate::container_spec::layout;
use crate::error::Error;
use crate::host_mounts;
use crate::persist::{LockMode, SandboxStore};
use crate::plan::container_resources;
use crate::state::{ContainerPhase, ContainerRecord, SandboxPhase, SandboxState};

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Its id.
    pub id: ContainerId,
    /// Its phase.
    pub phase: ContainerPhase,
    /// Its exit code once stopped.
    pub exit_code: Option<i32>,
    /// Its bundle.
    pub bundle: PathBuf,
}

impl From<&ContainerRecord> for ContainerStatus {
    fn from(r: &ContainerRecord) -> Self {
        ContainerStatus {
            id: r.id.clone(),
            phase: r.phase,
            exit_code: r.exit_code,
            bundle: r.bundle.clone(),
        }
    }
}

/// How long a check for "has this process exited" may wait.
const EXIT_PROBE: Duration = Duration::from_millis(200);

/// Removes container `id` from the guest (its storages are unmounted by
/// the agent).
pub(crate) async fn remove_in_guest(agent: &dyn Agent, id: &ContainerId) -> Result<(), Error> {
    let request = pb::RemoveContainerRequest {
        container_id: id.to_string(),
        timeout: 10,
        ..Default::default()
    };
    agent
        .remove_container(request)
        .await
        .map_err(Error::agent("RemoveContainer"))
}

/// Container `id` laid out as `layout`: its host binds made (the caller
/// undoes them on error), then created in the guest.
pub(crate) async fn create_from_layout(
    agent: &dyn Agent,
    id: &ContainerId,
    layout: &crate::container_spec::ContainerLayout,
) -> Result<(), Error> {
    for b in &layout.binds {
        host_mounts::bind(&b.source, &b.target, b.read_only)?;
    }
    let spec = convert::spec_to_proto(&layout.spec).map_err(|e| Error::InvalidSpec {
        container: id.clone(),
        reason: e.to_string(),
    })?;
    let request = pb::CreateContainerRequest {
        container_id: id.to_string(),
        exec_id: id.to_string(),
        storages: layout.storages.clone(),
        devices: layout.devices.clone(),
        OCI: Some(spec).into(),
        ..Default::default()
    };
    agent
        .create_container(request)
        .await
        .map_err(Error::agent("CreateContainer"))
}

/// Unmounts the host bind mounts of a container (last first) and removes
/// the directories that held them. Carries on past errors; returns the first.
pub(crate) fn unbind_all(mounts: &[PathBuf]) -> Result<(), Error> {
    let mut first = None;
    for target in mounts.iter().rev() {
        if let Err(e) = host_mounts::unbind(target) {
            first.get_or_insert(e);
        }
    }
    // <shared>/<cid>/mounts and <shared>/<cid>, when now empty; never
    // <shared> itself, which the VM's share still exports (a directory
    // made again in its place would not be the one the guest sees).
    for target in mounts {
        let Some(parent) = target.parent() else {
            continue;
        };
        let container_dir = match parent.file_name() {
            Some(name) if name == "mounts" => {
                let _ = std::fs::remove_dir(parent);
                parent.parent()
            }
            _ => Some(parent),
        };
        if let Some(dir) = container_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
    first.map_or(Ok(()), Err)
}

pub(crate) fn wrong_state(
    operation: &'static str,
    id: &ContainerId,
    phase: ContainerPhase,
) -> Error {
    Error::WrongState {
        operation,
        subject: format!("container \"{id}\""),
        state: format!("{phase:?}").to_lowercase(),
    }
}

impl Sandbox {
    /// Creates a container from its bundle: grows the VM when the
    /// containers now need more vCPUs or memory than it has (hot-plug,
    /// online in the guest; more than the maxima is
    /// [`Error::ResourcesAboveMax`]), shares its rootfs and bind mounts
    /// into the guest, creates it in the guest (not started), and
    /// re-aggregates the host cgroups over the VM's vCPU threads as they
    /// are now. On failure nothing of it remains, the VM's growth included
    /// (see [`Sandbox::vm_resources`] for what a hypervisor cannot undo).
    pub async fn create_container(&self, config: ContainerConfig) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if !matches!(state.phase, SandboxPhase::Ready | SandboxPhase::Running) {
            return Err(Error::WrongState {
                operation: "create a container in",
                subject: format!("sandbox {:?}", self.id),
                state: format!("{:?}", state.phase).to_lowercase(),
            });
        }
        let planned = crate::plan::plan_container(&config)?;
        if state.containers.contains_key(&config.id) {
            return Err(Error::ContainerExists {
                sandbox: self.id.clone(),
                container: config.id.clone(),
            });
        }
        let mut needed = container_resources(&state);
        needed.push(planned.resources);
        let growth = self.grow_for(&store, &mut state, &needed).await?;
        if let Err(e) = self
            .create_container_locked(&store, &mut state, &config)
            .await
        {
            if let Some(growth) = growth {
                self.undo_growth(&store, &mut state, growth).await;
            }
            return Err(e);
        }
        if let Err(e) = self.update_cgroups(&state).await {
            warn!(self.logger, "host cgroups not updated for the new container"; "container" => %config.id, "error" => crate::error::chain(&e));
        }
        Ok(())
    }

    /// Creates a container with the state already locked.
    pub(crate) async fn create_container_locked(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        config: &ContainerConfig,
    ) -> Result<(), Error> {
        crate::plan::plan_container(config)?;
        if state.containers.contains_key(&config.id) {
            return Err(Error::ContainerExists {
                sandbox: self.id.clone(),
                container: config.id.clone(),
            });
        }
        let shared_dir = state.resources.shared_dir.clone().unwrap_or_default();
        let host_mounts_table = host_mounts::mount_table()?;
        // Write-ahead: the container is on disk before its first device or
        // mount.
        state.containers.insert(
            config.id.clone(),
            ContainerRecord {
                id: config.id.clone(),
                bundle: config.bundle.clone(),
                spec: config.spec.clone(),
                phase: ContainerPhase::Created,
                exit_code: None,
                mounts: Vec::new(),
                devices: Vec::new(),
            },
        );
        store.write(state)?;
        let result = self
            .create_parts(store, state, config, &shared_dir, &host_mounts_table)
            .await;
        if let Err(e) = result {
            let mounts = state
                .containers
                .remove(&config.id)
                .map(|r| r.mounts)
                .unwrap_or_default();
            if let Err(undo) = unbind_all(&mounts) {
                warn!(self.logger, "could not undo a container's mounts"; "error" => crate::error::chain(&undo));
            }
            if let Err(undo) = self.devices.release_container(&config.id).await {
                warn!(self.logger, "could not undo a container's devices"; "error" => crate::error::chain(&undo));
            }
            state.devices = Some(self.devices.save_state());
            store.write(state)?;
            return Err(e);
        }
        debug!(self.logger, "container created"; "container" => %config.id);
        Ok(())
    }

    /// The devices, the mounts and the guest side of a container whose
    /// record is written; the caller undoes on error.
    async fn create_parts(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        config: &ContainerConfig,
        shared_dir: &std::path::Path,
        host_mounts_table: &[vc_mountinfo::MountInfo],
    ) -> Result<(), Error> {
        let id = &config.id;
        let devices = crate::devices::attach(self.devices.as_ref(), config, &self.logger, |ids| {
            if let Some(r) = state.containers.get_mut(id) {
                r.devices = ids.to_vec();
            }
            store.write(state)
        })
        .await?;
        state.devices = Some(self.devices.save_state());
        store.write(state)?;
        let layout = layout(config, shared_dir, host_mounts_table, &devices)?;
        if let Some(r) = state.containers.get_mut(id) {
            r.mounts = layout.binds.iter().map(|b| b.target.clone()).collect();
        }
        store.write(state)?;
        self.create_in_guest(config, &layout).await?;
        let hooked = self
            .run_create_hooks(&config.spec, id, &config.bundle)
            .await;
        if let Err(e) = hooked {
            // The guest side is ours to undo; the caller undoes the rest.
            if let Err(undo) = remove_in_guest(self.agent.as_ref(), id).await {
                warn!(self.logger, "could not undo a container in the guest"; "error" => %undo);
            }
            return Err(e);
        }
        Ok(())
    }

    async fn create_in_guest(
        &self,
        config: &ContainerConfig,
        layout: &crate::container_spec::ContainerLayout,
    ) -> Result<(), Error> {
        create_from_layout(self.agent.as_ref(), &config.id, layout).await
    }

    /// Freezes a running container.
    pub async fn pause_container(&self, id: &ContainerId) -> Result<(), Error> {
        self.set_frozen(id, true).await
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, id: &ContainerId) -> Result<(), Error> {
        self.set_frozen(id, false).await
    }

    async fn set_frozen(&self, id: &ContainerId, frozen: bool) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        let phase = self.container(&state, id)?.phase;
        let (from, to, op) = if frozen {
            (ContainerPhase::Running, ContainerPhase::Paused, "pause")
        } else {
            (ContainerPhase::Paused, ContainerPhase::Running, "resume")
        };
        if phase != from {
            return Err(wrong_state(op, id, phase));
        }
        let result = if frozen {
            self.agent
                .pause_container(id)
                .await
                .map_err(Error::agent("PauseContainer"))
        } else {
            self.agent
                .resume_container(id)
                .await
                .map_err(Error::agent("ResumeContainer"))
        };
        result?;
        self.container_mut(&mut state, id)?.phase = to;
        store.write(&state)
    }

    /// Changes a container's resources: grows the VM first when the
    /// containers then need more than it has (undone if the guest refuses
    /// the update), unplugs vCPUs they no longer need, and re-aggregates
    /// the host cgroups over the VM's vCPU threads as they are now.
    pub async fn update_container(
        &self,
        id: &ContainerId,
        resources: &LinuxResources,
    ) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        let mut spec = self.container(&state, id)?.spec.clone();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(resources.clone()));
        spec.set_linux(Some(linux));
        let mut updated = state.clone();
        self.container_mut(&mut updated, id)?.spec = spec.clone();
        let growth = self
            .grow_for(&store, &mut state, &container_resources(&updated))
            .await?;
        let request = pb::UpdateContainerRequest {
            container_id: id.to_string(),
            resources: Some(convert::resources_to_proto(resources)).into(),
            ..Default::default()
        };
        if let Err(e) = self.agent.update_container(request).await {
            if let Some(growth) = growth {
                self.undo_growth(&store, &mut state, growth).await;
            }
            return Err(Error::agent("UpdateContainer")(e));
        }
        self.container_mut(&mut state, id)?.spec = spec;
        store.write(&state)?;
        self.shrink_to_containers(&store, &mut state).await;
        self.update_cgroups(&state).await
    }

    /// The container's resource usage, from the guest.
    pub async fn stats_container(
        &self,
        id: &ContainerId,
    ) -> Result<pb::StatsContainerResponse, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        self.container(&state, id)?;
        self.agent
            .stats_container(id)
            .await
            .map_err(Error::agent("StatsContainer"))
    }

    /// Deletes a container that is created or stopped (a running one
    /// whose process has exited counts as stopped): removes it from the
    /// guest, unmounts its share mounts, unplugs the vCPUs the others do
    /// not need (where the hypervisor can; memory stays), re-aggregates
    /// the host cgroups.
    pub async fn delete_container(&self, id: &ContainerId) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        let phase = self.container(&state, id)?.phase;
        if phase == ContainerPhase::Running {
            // Its process may have exited without anyone waiting for it.
            match tokio::time::timeout(EXIT_PROBE, self.agent.wait_process(id, id)).await {
                Ok(Ok(code)) => {
                    let c = self.container_mut(&mut state, id)?;
                    c.phase = ContainerPhase::Stopped;
                    c.exit_code = Some(code);
                }
                _ => return Err(wrong_state("delete", id, phase)),
            }
        } else if phase == ContainerPhase::Paused {
            return Err(wrong_state("delete", id, phase));
        }
        self.delete_container_locked(&store, &mut state, id).await?;
        self.shrink_to_containers(&store, &mut state).await;
        if let Err(e) = self.update_cgroups(&state).await {
            warn!(self.logger, "host cgroups not updated after delete"; "container" => %id, "error" => crate::error::chain(&e));
        }
        Ok(())
    }

    pub(crate) async fn delete_container_locked(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        id: &ContainerId,
    ) -> Result<(), Error> {
        // The guest first: while it may still use the container's mounts
        // and disks, they stay, and so does the record, for a retry. (A
        // forced cleanup frees them from the record regardless.)
        remove_in_guest(self.agent.as_ref(), id).await?;
        let record = self.container(state, id)?;
        let (spec, bundle) = (record.spec.clone(), record.bundle.clone());
        let mounts = record.mounts.clone();
        let unbound = unbind_all(&mounts);
        let released = self
            .devices
            .release_container(id)
            .await
            .map(drop)
            .map_err(|source| Error::Devices {
                operation: "release the container's devices",
                source,
            });
        state.devices = Some(self.devices.save_state());
        // Forget it only once its mounts are gone: a failure leaves the
        // record, so a later cleanup still knows what to unmount.
        if unbound.is_ok() {
            state.containers.remove(id);
            store.write(state)?;
        }
        self.run_poststop_hooks(&spec, id, &bundle).await;
        released?;
        unbound
    }

    /// A container's status.
    pub async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        Ok(self.container(&state, id)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vc_test_support::require_root;

    /// A container's binds go with their directories, down to its own
    /// directory; the share's directory stays, whatever the container had.
    #[test]
    fn unbinding_a_container_keeps_the_share_directory() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("rootfs");
        std::fs::create_dir(&source).unwrap();
        let shared = dir.path().join("shared");
        // Only a rootfs; then a rootfs and a volume.
        for (cid, volumes) in [("c1", 0), ("c2", 1)] {
            let mut targets = vec![shared.join(cid).join("rootfs")];
            targets.extend((0..volumes).map(|i| shared.join(cid).join(format!("mounts/{i}"))));
            for t in &targets {
                host_mounts::bind(&source, t, false).unwrap();
            }
            unbind_all(&targets).unwrap();
            assert!(!shared.join(cid).exists(), "{cid}'s directory stays");
            assert!(shared.is_dir(), "the share's directory went with {cid}");
        }
        assert!(source.is_dir());
    }
}
