//! What containerd asks about tasks, and the small changes it makes to
//! them: state, pids, stats, connect, pause/resume, update, terminal size,
//! closing stdin.

use protobuf::well_known_types::empty::Empty;
use virtcontainers::oci_spec::runtime::LinuxResources;

use super::{Phase, Service, container_id, exec_id};
use crate::error::{Error, Result};
use crate::events::{pack, timestamp, topic};
use crate::metrics;
use crate::pod::ContainerKind;
use crate::protocol::events::{TaskPaused, TaskResumed};
use crate::protocol::shim as api;
use crate::protocol::task_types::{ProcessInfo, Status};

fn status_of(phase: Phase) -> Status {
    match phase {
        Phase::Created => Status::CREATED,
        Phase::Running => Status::RUNNING,
        Phase::Paused => Status::PAUSED,
        Phase::Stopped => Status::STOPPED,
    }
}

impl Service {
    pub(super) fn do_state(&self, r: &api::StateRequest) -> Result<api::StateResponse> {
        let (id, exec) = (container_id(&r.id)?, exec_id(&r.exec_id)?);
        let tables = self.tables();
        let task = tables.task(&id)?;
        let process = tables.process(&id, exec.as_ref())?;
        let mut state = api::StateResponse::new();
        state.id = r.id.clone();
        state.exec_id = r.exec_id.clone();
        state.bundle = task.bundle.display().to_string();
        state.pid = tables.pid();
        state.status = status_of(process.phase).into();
        state.stdin = process.stdio.stdin.clone();
        state.stdout = process.stdio.stdout.clone();
        state.stderr = process.stdio.stderr.clone();
        state.terminal = process.stdio.terminal;
        if let Some(exit) = process.exited() {
            state.exit_status = exit.status;
            state.exited_at = Some(timestamp(exit.at)).into();
        }
        Ok(state)
    }

    /// The task's processes as the host sees them: its pid (the
    /// processes themselves run in the guest).
    pub(super) fn do_pids(&self, id: &str) -> Result<api::PidsResponse> {
        let id = container_id(id)?;
        let tables = self.tables();
        tables.task(&id)?;
        let mut info = ProcessInfo::new();
        info.pid = tables.pid();
        let mut response = api::PidsResponse::new();
        response.processes.push(info);
        Ok(response)
    }

    pub(super) async fn do_freeze(&self, id: &str, freeze: bool) -> Result<Empty> {
        let id = container_id(id)?;
        let (from, to, operation) = match freeze {
            true => (Phase::Running, Phase::Paused, "pause"),
            false => (Phase::Paused, Phase::Running, "resume"),
        };
        let kind = {
            let tables = self.tables();
            let task = tables.task(&id)?;
            if task.init.phase != from {
                return Err(Error::WrongState {
                    operation,
                    what: format!("task {id:?}"),
                    state: format!("{:?}", task.init.phase).to_lowercase(),
                });
            }
            task.kind.clone()
        };
        if kind != ContainerKind::PodSandbox {
            let sandbox = self.sandbox()?;
            let done = match freeze {
                true => sandbox.pause_container(&id).await,
                false => sandbox.resume_container(&id).await,
            };
            done.map_err(Error::sandbox(format!("{operation} task {id}")))?;
        }
        if let Ok(process) = self.tables().process_mut(&id, None) {
            process.phase = to;
        }
        match freeze {
            true => {
                let mut event = TaskPaused::new();
                event.container_id = id.to_string();
                self.publisher.publish(topic::PAUSED, &event);
            }
            false => {
                let mut event = TaskResumed::new();
                event.container_id = id.to_string();
                self.publisher.publish(topic::RESUMED, &event);
            }
        }
        Ok(Empty::new())
    }

    pub(super) async fn do_resize(&self, r: &api::ResizePtyRequest) -> Result<Empty> {
        let (id, exec) = (container_id(&r.id)?, exec_id(&r.exec_id)?);
        let (kind, terminal) = {
            let tables = self.tables();
            let kind = tables.task(&id)?.kind.clone();
            (kind, tables.process(&id, exec.as_ref())?.stdio.terminal)
        };
        if !terminal || kind == ContainerKind::PodSandbox {
            return Err(Error::InvalidRequest {
                reason: format!("task {id:?} has no terminal to resize"),
            });
        }
        self.sandbox()?
            .resize_terminal(&id, exec.as_ref(), r.height, r.width)
            .await
            .map_err(Error::sandbox(format!("resize the terminal of task {id}")))?;
        Ok(Empty::new())
    }

    pub(super) fn do_close_io(&self, r: &api::CloseIORequest) -> Result<Empty> {
        let (id, exec) = (container_id(&r.id)?, exec_id(&r.exec_id)?);
        let tables = self.tables();
        let process = tables.process(&id, exec.as_ref())?;
        if r.stdin
            && let Some(close) = &process.close_stdin
        {
            close.notify_one();
        }
        Ok(Empty::new())
    }

    pub(super) async fn do_update(&self, r: &api::UpdateTaskRequest) -> Result<Empty> {
        let id = container_id(&r.id)?;
        let kind = self.tables().task(&id)?.kind.clone();
        let Some(any) = r.resources.as_ref() else {
            return Ok(Empty::new());
        };
        let resources: LinuxResources =
            serde_json::from_slice(&any.value).map_err(|source| Error::Json {
                what: format!("the resources of task {id}"),
                source,
            })?;
        if kind == ContainerKind::PodSandbox {
            // Nothing runs there; the pod's containers carry its limits.
            return Ok(Empty::new());
        }
        self.sandbox()?
            .update_container(&id, &resources)
            .await
            .map_err(Error::sandbox(format!("update task {id}")))?;
        Ok(Empty::new())
    }

    pub(super) async fn do_stats(&self, id: &str) -> Result<api::StatsResponse> {
        let id = container_id(id)?;
        let kind = self.tables().task(&id)?.kind.clone();
        let metrics = match kind {
            ContainerKind::PodSandbox => metrics::empty(),
            _ => {
                let stats = self
                    .sandbox()?
                    .stats_container(&id)
                    .await
                    .map_err(Error::sandbox(format!("read the stats of task {id}")))?;
                metrics::from_agent(&stats)
            }
        };
        let mut response = api::StatsResponse::new();
        response.stats = Some(pack(&metrics)).into();
        Ok(response)
    }

    pub(super) fn do_connect(&self, id: &str) -> Result<api::ConnectResponse> {
        let id = container_id(id)?;
        let tables = self.tables();
        tables.task(&id)?;
        let mut response = api::ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = tables.pid();
        response.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(response)
    }
}
