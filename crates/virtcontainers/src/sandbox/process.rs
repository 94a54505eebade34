//! A sandbox's processes: a container's own process (start, wait, signal,
//! stop) and the extra processes run in it (exec), with their stdio.

use std::time::Duration;

use oci_spec::runtime::Process;
use slog::{debug, warn};
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::protocol::convert;
use vc_agent_client::{OutputStream, ProcessOutput};
use vc_types::{ContainerId, ExecId, Signal};

use super::Sandbox;
use super::container::wrong_state;
use crate::error::Error;
use crate::persist::LockMode;
use crate::state::{ContainerPhase, SandboxPhase};

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

/// The agent's name of a process: the container's own process goes by
/// the container id (Kata's convention), an extra one by its exec id.
fn exec_name<'a>(id: &'a ContainerId, exec: Option<&'a ExecId>) -> &'a str {
    exec.map_or(id.as_str(), ExecId::as_str)
}

impl Sandbox {
    /// The output streams of a process of container `id`: its own
    /// process (`exec` is `None`) or the extra process `exec`.
    pub fn process_io(&self, id: &ContainerId, exec: Option<&ExecId>) -> ProcessIo {
        let name = exec_name(id, exec);
        ProcessIo {
            stdout: ProcessOutput::new(self.agent.clone(), id, name, OutputStream::Stdout),
            stderr: ProcessOutput::new(self.agent.clone(), id, name, OutputStream::Stderr),
        }
    }

    /// Starts a created container's process and returns its output streams.
    pub async fn start_container(&self, id: &ContainerId) -> Result<ProcessIo, Error> {
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
        let record = self.container(&state, id)?;
        self.run_poststart_hooks(&record.spec, id, &record.bundle)
            .await;
        Ok(self.process_io(id, None))
    }

    /// Runs an extra process in a running container, as `exec`.
    pub async fn exec(
        &self,
        id: &ContainerId,
        exec: &ExecId,
        process: &Process,
    ) -> Result<ProcessIo, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        let phase = self.container(&state, id)?.phase;
        if phase != ContainerPhase::Running {
            return Err(wrong_state("exec in", id, phase));
        }
        let process = convert::process_to_proto(process).map_err(|e| Error::InvalidSpec {
            container: id.clone(),
            reason: e.to_string(),
        })?;
        let request = pb::ExecProcessRequest {
            container_id: id.to_string(),
            exec_id: exec.to_string(),
            process: Some(process).into(),
            ..Default::default()
        };
        self.agent
            .exec_process(request)
            .await
            .map_err(Error::agent("ExecProcess"))?;
        Ok(self.process_io(id, Some(exec)))
    }

    /// Writes to a process's stdin; returns the bytes taken.
    pub async fn write_stdin(
        &self,
        id: &ContainerId,
        exec: Option<&ExecId>,
        data: &[u8],
    ) -> Result<usize, Error> {
        let n = self
            .agent
            .write_stdin(id, exec_name(id, exec), data)
            .await
            .map_err(Error::agent("WriteStdin"))?;
        Ok(n as usize)
    }

    /// Sets the window size of a process's terminal (`process.terminal`):
    /// what a terminal's `SIGWINCH` asks for.
    pub async fn resize_terminal(
        &self,
        id: &ContainerId,
        exec: Option<&ExecId>,
        rows: u32,
        columns: u32,
    ) -> Result<(), Error> {
        let request = pb::TtyWinResizeRequest {
            container_id: id.to_string(),
            exec_id: exec_name(id, exec).to_owned(),
            row: rows,
            column: columns,
            ..Default::default()
        };
        self.agent
            .tty_win_resize(request)
            .await
            .map_err(Error::agent("TtyWinResize"))
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &ContainerId, exec: Option<&ExecId>) -> Result<(), Error> {
        self.agent
            .close_stdin(id, exec_name(id, exec))
            .await
            .map_err(Error::agent("CloseStdin"))
    }

    /// Waits for a process to exit and returns its exit code (128 + the
    /// signal when killed). For the container's own process (`exec` is
    /// `None`), records it stopped. No lock is held while waiting.
    pub async fn wait_process(
        &self,
        id: &ContainerId,
        exec: Option<&ExecId>,
    ) -> Result<i32, Error> {
        let code = self
            .agent
            .wait_process(id, exec_name(id, exec))
            .await
            .map_err(Error::agent("WaitProcess"))?;
        if exec.is_none() {
            self.record_exit(id, code).await?;
        }
        Ok(code)
    }

    /// Waits for the container's own process.
    pub async fn wait_container(&self, id: &ContainerId) -> Result<i32, Error> {
        self.wait_process(id, None).await
    }

    pub(crate) async fn record_exit(&self, id: &ContainerId, code: i32) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if let Some(c) = state.containers.get_mut(id) {
            c.phase = ContainerPhase::Stopped;
            c.exit_code = Some(code);
            store.write(&state)?;
            // A stopped container no longer counts towards the cgroups.
            if let Err(e) = self.update_cgroups(&state).await {
                warn!(self.logger, "host cgroups not updated after exit"; "container" => %id, "error" => crate::error::chain(&e));
            }
        }
        Ok(())
    }

    /// Waits for the next out-of-memory kill in one of the sandbox's
    /// containers and returns that container (Kata's `GetOOMEvent`; a
    /// shim turns each into containerd's `TaskOOM`). It waits as long as it
    /// takes: call it in a loop from a task of its own. An id the guest
    /// reports that is not a valid container id is an error, never passed
    /// on.
    pub async fn next_oom_event(&self) -> Result<ContainerId, Error> {
        let id = self
            .agent
            .get_oom_event()
            .await
            .map_err(Error::agent("GetOOMEvent"))?;
        Ok(id.parse()?)
    }

    /// Sends `signal` to a process of container `id`: its own process
    /// (`exec` is `None`) or the extra process `exec`.
    pub async fn signal_process(
        &self,
        id: &ContainerId,
        exec: Option<&ExecId>,
        signal: Signal,
    ) -> Result<(), Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        self.container(&state, id)?;
        self.agent
            .signal_process(id, exec_name(id, exec), signal)
            .await
            .map_err(Error::agent("SignalProcess"))
    }

    /// Sends `signal` to the container's own process, or with `all` to
    /// every process in the container (containerd's `kill --all`).
    pub async fn kill_container(
        &self,
        id: &ContainerId,
        signal: Signal,
        all: bool,
    ) -> Result<(), Error> {
        if !all {
            return self.signal_process(id, None, signal).await;
        }
        let (_store, state) = self.lock(LockMode::Shared).await?;
        self.container(&state, id)?;
        // The agent reads an empty exec id as "every process".
        self.agent
            .signal_process(id, "", signal)
            .await
            .map_err(Error::agent("SignalProcess"))
    }

    /// Stops a running container: SIGTERM, then SIGKILL to every process
    /// in it when it has not exited after `timeout`. Returns its exit code.
    pub async fn stop_container(&self, id: &ContainerId, timeout: Duration) -> Result<i32, Error> {
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
            .signal_process(id, id, Signal::TERM)
            .await
            .map_err(Error::agent("SignalProcess"))?;
        match tokio::time::timeout(timeout, self.agent.wait_process(id, id)).await {
            Ok(code) => {
                let code = code.map_err(Error::agent("WaitProcess"))?;
                self.record_exit(id, code).await?;
                return Ok(code);
            }
            Err(_) => debug!(self.logger, "container ignored SIGTERM; killing"; "container" => %id),
        }
        self.agent
            .signal_process(id, "", Signal::KILL)
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
}
