//! Container operations of a [`Sandbox`].

use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process};
use slog::{debug, warn};
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::protocol::convert;
use vc_agent_client::{Agent, OutputStream, ProcessOutput};
use vc_device_manager::DeviceManager;

use super::Sandbox;
use crate::config::ContainerConfig;
use crate::container_spec::layout;
use crate::error::Error;
use crate::host_mounts;
use crate::id::{IdKind, validate_id};
use crate::persist::{LockMode, SandboxStore};
use crate::state::{ContainerPhase, ContainerRecord, SandboxPhase, SandboxState};

/// A process's output streams, as async readers.
pub struct ProcessIo {
    /// Its stdout; EOF when the process closed it.
    pub stdout: ProcessOutput,
    /// Its stderr.
    pub stderr: ProcessOutput,
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo").finish_non_exhaustive()
    }
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Its id.
    pub id: String,
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
pub(crate) async fn remove_in_guest(agent: &dyn Agent, id: &str) -> Result<(), Error> {
    let request = pb::RemoveContainerRequest {
        container_id: id.to_owned(),
        timeout: 10,
        ..Default::default()
    };
    agent
        .remove_container(request)
        .await
        .map_err(Error::agent("RemoveContainer"))
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
    // <shared>/<cid>/mounts and <shared>/<cid>, when now empty.
    for target in mounts {
        for parent in target.ancestors().skip(1).take(2) {
            let _ = std::fs::remove_dir(parent);
        }
    }
    first.map_or(Ok(()), Err)
}

fn wrong_state(operation: &'static str, id: &str, phase: ContainerPhase) -> Error {
    Error::WrongState {
        operation,
        subject: format!("container {id:?}"),
        state: format!("{phase:?}").to_lowercase(),
    }
}

impl Sandbox {
    /// Creates a container from its bundle: shares its rootfs and bind
    /// mounts into the guest, creates it in the guest (not started), and
    /// re-aggregates the host cgroups. On failure nothing of it remains.
    pub async fn create_container(&self, config: ContainerConfig) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if !matches!(state.phase, SandboxPhase::Ready | SandboxPhase::Running) {
            return Err(Error::WrongState {
                operation: "create a container in",
                subject: format!("sandbox {:?}", self.id),
                state: format!("{:?}", state.phase).to_lowercase(),
            });
        }
        self.create_container_locked(&store, &mut state, &config)
            .await?;
        if let Err(e) = self.update_cgroups(&store, &mut state).await {
            warn!(self.logger, "host cgroups not updated for the new container"; "container" => &config.id, "error" => %e);
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
        config.validate()?;
        if state.containers.contains_key(&config.id) {
            return Err(Error::ContainerExists {
                sandbox: self.id.clone(),
                container: config.id.clone(),
            });
        }
        let shared_dir = state.resources.shared_dir.clone().unwrap_or_default();
        let host_mounts_table =
            vc_mountinfo::read_mountinfo(std::path::Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
                .map_err(|e| Error::HostIo {
                operation: "read the mount table",
                path: vc_mountinfo::PROC_SELF_MOUNTINFO.into(),
                source: std::io::Error::other(e),
            })?;
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
                warn!(self.logger, "could not undo a container's mounts"; "error" => %undo);
            }
            if let Err(undo) = self.devices.release_container(&config.id).await {
                warn!(self.logger, "could not undo a container's devices"; "error" => %undo);
            }
            state.devices = Some(self.devices.save_state());
            store.write(state)?;
            return Err(e);
        }
        debug!(self.logger, "container created"; "container" => &config.id);
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
        let id = config.id.clone();
        let devices = crate::devices::attach(self.devices.as_ref(), config, &self.logger, |ids| {
            if let Some(r) = state.containers.get_mut(&id) {
                r.devices = ids.to_vec();
            }
            store.write(state)
        })
        .await?;
        state.devices = Some(self.devices.save_state());
        store.write(state)?;
        let layout = layout(config, shared_dir, host_mounts_table, &devices)?;
        if let Some(r) = state.containers.get_mut(&id) {
            r.mounts = layout.binds.iter().map(|b| b.target.clone()).collect();
        }
        store.write(state)?;
        self.create_in_guest(config, &layout).await
    }

    async fn create_in_guest(
        &self,
        config: &ContainerConfig,
        layout: &crate::container_spec::ContainerLayout,
    ) -> Result<(), Error> {
        for b in &layout.binds {
            host_mounts::bind(&b.source, &b.target, b.read_only)?;
        }
        let spec = convert::spec_to_proto(&layout.spec).map_err(|e| Error::InvalidSpec {
            container: config.id.clone(),
            reason: e.to_string(),
        })?;
        let request = pb::CreateContainerRequest {
            container_id: config.id.clone(),
            exec_id: config.id.clone(),
            storages: layout.storages.clone(),
            OCI: Some(spec).into(),
            ..Default::default()
        };
        self.agent
            .create_container(request)
            .await
            .map_err(Error::agent("CreateContainer"))
    }

    /// The output streams of process `exec_id` of container `id` (the
    /// container's own process has `exec_id == id`).
    pub fn process_io(&self, id: &str, exec_id: &str) -> ProcessIo {
        ProcessIo {
            stdout: ProcessOutput::new(self.agent.clone(), id, exec_id, OutputStream::Stdout),
            stderr: ProcessOutput::new(self.agent.clone(), id, exec_id, OutputStream::Stderr),
        }
    }

    /// Starts a created container's process and returns its output streams.
    pub async fn start_container(&self, id: &str) -> Result<ProcessIo, Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        let phase = self.container(&state, id)?.phase;
        if phase != ContainerPhase::Created {
            return Err(wrong_state("start", id, phase));
        }
        self.agent
            .start_container(id)
            .await
            .map_err(Error::agent("StartContainer"))?;
        self.container_mut(&mut state, id)?.phase = ContainerPhase::Running;
        if state.phase == SandboxPhase::Ready {
            state.phase = SandboxPhase::Running;
        }
        store.write(&state)?;
        Ok(self.process_io(id, id))
    }

    /// Runs an extra process in a running container, with id `exec_id`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Process,
    ) -> Result<ProcessIo, Error> {
        validate_id(IdKind::Exec, exec_id)?;
        let (_store, state) = self.lock(LockMode::Shared).await?;
        let phase = self.container(&state, id)?.phase;
        if phase != ContainerPhase::Running {
            return Err(wrong_state("exec in", id, phase));
        }
        let process = convert::process_to_proto(process).map_err(|e| Error::InvalidSpec {
            container: id.to_owned(),
            reason: e.to_string(),
        })?;
        let request = pb::ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process: Some(process).into(),
            ..Default::default()
        };
        self.agent
            .exec_process(request)
            .await
            .map_err(Error::agent("ExecProcess"))?;
        Ok(self.process_io(id, exec_id))
    }

    /// Writes to a process's stdin; returns the bytes taken.
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize, Error> {
        let n = self
            .agent
            .write_stdin(id, exec_id, data)
            .await
            .map_err(Error::agent("WriteStdin"))?;
        Ok(n as usize)
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), Error> {
        self.agent
            .close_stdin(id, exec_id)
            .await
            .map_err(Error::agent("CloseStdin"))
    }

    /// Waits for a process to exit and returns its exit code (128 + the
    /// signal when killed). For the container's own process, records it
    /// stopped. No lock is held while waiting.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32, Error> {
        let code = self
            .agent
            .wait_process(id, exec_id)
            .await
            .map_err(Error::agent("WaitProcess"))?;
        if exec_id == id {
            self.record_exit(id, code).await?;
        }
        Ok(code)
    }

    /// Waits for the container's own process.
    pub async fn wait_container(&self, id: &str) -> Result<i32, Error> {
        self.wait_process(id, id).await
    }

    async fn record_exit(&self, id: &str, code: i32) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if let Some(c) = state.containers.get_mut(id) {
            c.phase = ContainerPhase::Stopped;
            c.exit_code = Some(code);
            store.write(&state)?;
            // A stopped container no longer counts towards the cgroups.
            if let Err(e) = self.update_cgroups(&store, &mut state).await {
                warn!(self.logger, "host cgroups not updated after exit"; "container" => id, "error" => %e);
            }
        }
        Ok(())
    }

    /// Sends `signal` to process `exec_id` of container `id` (empty
    /// `exec_id`: every process of the container).
    pub async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: vc_agent_client::Signal,
    ) -> Result<(), Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        self.container(&state, id)?;
        self.agent
            .signal_process(id, exec_id, signal)
            .await
            .map_err(Error::agent("SignalProcess"))
    }

    /// Sends `signal` to the container's process.
    pub async fn kill_container(
        &self,
        id: &str,
        signal: vc_agent_client::Signal,
    ) -> Result<(), Error> {
        self.signal_process(id, id, signal).await
    }

    /// Stops a running container: SIGTERM, then SIGKILL when it has not
    /// exited after `timeout`. Returns its exit code.
    pub async fn stop_container(&self, id: &str, timeout: Duration) -> Result<i32, Error> {
        {
            let (_store, state) = self.lock(LockMode::Shared).await?;
            let c = self.container(&state, id)?;
            match c.phase {
                ContainerPhase::Stopped => return Ok(c.exit_code.unwrap_or_default()),
                ContainerPhase::Created => return Err(wrong_state("stop", id, c.phase)),
                ContainerPhase::Running | ContainerPhase::Paused => {}
            }
        }
        self.agent
            .signal_process(id, id, vc_agent_client::Signal::TERM)
            .await
            .map_err(Error::agent("SignalProcess"))?;
        match tokio::time::timeout(timeout, self.agent.wait_process(id, id)).await {
            Ok(code) => {
                let code = code.map_err(Error::agent("WaitProcess"))?;
                self.record_exit(id, code).await?;
                return Ok(code);
            }
            Err(_) => debug!(self.logger, "container ignored SIGTERM; killing"; "container" => id),
        }
        self.agent
            .signal_process(id, "", vc_agent_client::Signal::KILL)
            .await
            .map_err(Error::agent("SignalProcess"))?;
        let code = tokio::time::timeout(
            timeout.max(Duration::from_secs(5)),
            self.agent.wait_process(id, id),
        )
        .await
        .map_err(|_| Error::Timeout {
            operation: "waiting for a killed container",
            timeout,
        })?
        .map_err(Error::agent("WaitProcess"))?;
        self.record_exit(id, code).await?;
        Ok(code)
    }

    /// Freezes a running container.
    pub async fn pause_container(&self, id: &str) -> Result<(), Error> {
        self.set_frozen(id, true).await
    }

    /// Thaws a paused container.
    pub async fn resume_container(&self, id: &str) -> Result<(), Error> {
        self.set_frozen(id, false).await
    }

    async fn set_frozen(&self, id: &str, frozen: bool) -> Result<(), Error> {
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

    /// Changes a container's resources, in the guest and in the host
    /// cgroups (re-aggregated over the sandbox's containers).
    pub async fn update_container(
        &self,
        id: &str,
        resources: &LinuxResources,
    ) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        self.container(&state, id)?;
        let request = pb::UpdateContainerRequest {
            container_id: id.to_owned(),
            resources: Some(convert::resources_to_proto(resources)).into(),
            ..Default::default()
        };
        self.agent
            .update_container(request)
            .await
            .map_err(Error::agent("UpdateContainer"))?;
        let record = self.container_mut(&mut state, id)?;
        let mut linux = record.spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(resources.clone()));
        record.spec.set_linux(Some(linux));
        store.write(&state)?;
        self.update_cgroups(&store, &mut state).await
    }

    /// The container's resource usage, from the guest.
    pub async fn stats_container(&self, id: &str) -> Result<pb::StatsContainerResponse, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        self.container(&state, id)?;
        self.agent
            .stats_container(id)
            .await
            .map_err(Error::agent("StatsContainer"))
    }

    /// Deletes a container that is created or stopped (a running one
    /// whose process has exited counts as stopped): removes it from the
    /// guest, unmounts its share mounts, re-aggregates the host cgroups.
    pub async fn delete_container(&self, id: &str) -> Result<(), Error> {
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
        if let Err(e) = self.update_cgroups(&store, &mut state).await {
            warn!(self.logger, "host cgroups not updated after delete"; "container" => id, "error" => %e);
        }
        Ok(())
    }

    pub(crate) async fn delete_container_locked(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        id: &str,
    ) -> Result<(), Error> {
        // The guest first: while it may still use the container's mounts
        // and disks, they stay, and so does the record, for a retry. (A
        // forced cleanup frees them from the record regardless.)
        remove_in_guest(self.agent.as_ref(), id).await?;
        let mounts = self.container(state, id)?.mounts.clone();
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
        released?;
        unbound
    }

    /// A container's status.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        Ok(self.container(&state, id)?.into())
    }
}
