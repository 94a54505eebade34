//! Running processes: start, exec, kill, wait, and deleting what ended.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use slog::warn;
use virtcontainers::oci_spec::runtime::Process;
use virtcontainers::vc_types::Signal;
use virtcontainers::{ContainerId, ExecId};

use super::{Exit, Phase, Proc, Service, container_id, exec_id};
use crate::error::{Error, Result};
use crate::events::{timestamp, topic};
use crate::pod::ContainerKind;
use crate::protocol::events::{TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart};
use crate::protocol::shim as api;
use crate::rootfs;
use crate::stdio::{self, ProcessRef, StdioPaths};

/// How long a process's output may keep coming after it exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The exit status of a process whose wait failed (the VM died).
const LOST_STATUS: u32 = 255;

fn wrong_state(operation: &'static str, what: String, phase: Phase) -> Error {
    Error::WrongState {
        operation,
        what,
        state: format!("{phase:?}").to_lowercase(),
    }
}

impl Service {
    pub(super) async fn do_start(&self, id: &str, exec: &str) -> Result<api::StartResponse> {
        let (id, exec) = (container_id(id)?, exec_id(exec)?);
        let service = self.self_arc()?;
        let (kind, stdio, spec, pid) = {
            let tables = self.tables();
            let task = tables.task(&id)?;
            let process = tables.process(&id, exec.as_ref())?;
            if process.phase != Phase::Created {
                return Err(wrong_state(
                    "start",
                    describe(&id, exec.as_ref()),
                    process.phase,
                ));
            }
            (
                task.kind.clone(),
                process.stdio.clone(),
                process.spec.clone(),
                tables.pid(),
            )
        };
        if exec.is_none() && !matches!(kind, ContainerKind::PodContainer { .. }) {
            self.bring_in_network().await?;
        }
        if kind == ContainerKind::PodSandbox {
            self.set_running(&id, None, None)?;
            self.publish_start(&id, None, pid);
            return self.started(pid);
        }
        let sandbox = self.sandbox()?;
        let outputs = stdio::open(&stdio).await?;
        let io = match (&exec, &spec) {
            (None, _) => sandbox.start_container(&id).await,
            (Some(e), Some(process)) => sandbox.exec(&id, e, process).await,
            (Some(_), None) => {
                return Err(Error::InvalidRequest {
                    reason: "an exec process without its spec".into(),
                });
            }
        }
        .map_err(Error::sandbox(format!(
            "start {}",
            describe(&id, exec.as_ref())
        )))?;
        let target = ProcessRef {
            container: id.clone(),
            exec: exec.clone(),
        };
        let pumps = stdio::pump(sandbox.clone(), target, io, outputs, &self.logger);
        self.set_running(&id, exec.as_ref(), Some(pumps.close_stdin.clone()))?;
        // Before the waiter exists: TaskStart always precedes TaskExit.
        self.publish_start(&id, exec.as_ref(), pid);
        tokio::spawn(async move {
            let status = match sandbox.wait_process(&id, exec.as_ref()).await {
                Ok(code) => code as u32,
                Err(e) => {
                    warn!(service.logger, "lost a process"; "error" => crate::error::chain(&e));
                    LOST_STATUS
                }
            };
            pumps.finish(OUTPUT_DRAIN).await;
            service.exited(&id, exec.as_ref(), status);
        });
        self.started(pid)
    }

    /// Brings what CNI added to the namespace the shim asked for, between
    /// Create and Start (`ctr run --cni`), into the VM before the
    /// sandbox's first process runs. Once: later interfaces are CNI's
    /// business with the CRI, which hands over a finished namespace.
    async fn bring_in_network(&self) -> Result<()> {
        let sandbox = {
            let mut tables = self.tables();
            let Some(pod) = tables.pod.as_mut().filter(|p| p.rescan) else {
                return Ok(());
            };
            pod.rescan = false;
            pod.sandbox.clone()
        };
        let added = sandbox
            .rescan_network()
            .await
            .map_err(Error::sandbox("bring the pod's network into the VM"))?;
        for nic in &added {
            slog::info!(self.logger, "interface brought into the VM"; "name" => &nic.name, "mac" => %nic.mac);
        }
        Ok(())
    }

    fn started(&self, pid: u32) -> Result<api::StartResponse> {
        let mut response = api::StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn set_running(
        &self,
        id: &ContainerId,
        exec: Option<&ExecId>,
        close_stdin: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<()> {
        let mut tables = self.tables();
        let process = tables.process_mut(id, exec)?;
        process.phase = Phase::Running;
        process.close_stdin = close_stdin;
        Ok(())
    }

    fn publish_start(&self, id: &ContainerId, exec: Option<&ExecId>, pid: u32) {
        match exec {
            None => {
                let mut event = TaskStart::new();
                event.container_id = id.to_string();
                event.pid = pid;
                self.publisher.publish(topic::START, &event);
            }
            Some(e) => {
                let mut event = TaskExecStarted::new();
                event.container_id = id.to_string();
                event.exec_id = e.to_string();
                event.pid = pid;
                self.publisher.publish(topic::EXEC_STARTED, &event);
            }
        }
    }

    /// Records that a process exited, wakes its waiters, publishes
    /// `TaskExit`.
    pub(super) fn exited(&self, id: &ContainerId, exec: Option<&ExecId>, status: u32) {
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        let pid = {
            let mut tables = self.tables();
            let pid = tables.pid();
            let Ok(process) = tables.process_mut(id, exec) else {
                return;
            };
            if process.exited().is_some() {
                return;
            }
            process.phase = Phase::Stopped;
            process.close_stdin = None;
            process.exit.send_replace(Some(exit));
            pid
        };
        let mut event = TaskExit::new();
        event.container_id = id.to_string();
        event.id = exec.map_or_else(|| id.to_string(), ExecId::to_string);
        event.pid = pid;
        event.exit_status = status;
        event.exited_at = Some(timestamp(exit.at)).into();
        self.publisher.publish(topic::EXIT, &event);
    }

    pub(super) fn do_exec(
        &self,
        r: api::ExecProcessRequest,
    ) -> Result<protobuf::well_known_types::empty::Empty> {
        let id = container_id(&r.id)?;
        let Some(exec) = exec_id(&r.exec_id)? else {
            return Err(Error::InvalidRequest {
                reason: "an exec process needs an exec id".into(),
            });
        };
        let stdio = StdioPaths {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
        };
        stdio.check()?;
        let spec = r.spec.as_ref().ok_or_else(|| Error::InvalidRequest {
            reason: "an exec process without its spec".into(),
        })?;
        let process: Process =
            serde_json::from_slice(&spec.value).map_err(|source| Error::Json {
                what: format!("the OCI process of exec {exec}"),
                source,
            })?;
        let mut tables = self.tables();
        let task = tables
            .tasks
            .get_mut(&id)
            .ok_or_else(|| super::not_found(&id, None))?;
        if task.init.phase != Phase::Running {
            return Err(wrong_state("exec in", describe(&id, None), task.init.phase));
        }
        if !task.kind.runs_in_guest() {
            return Err(virtcontainers::vc_types::Unsupported::new(
                "exec in a pod's sandbox container",
                "it runs no process in the VM",
            )
            .into());
        }
        if task.execs.contains_key(&exec) {
            return Err(Error::AlreadyExists {
                what: describe(&id, Some(&exec)),
            });
        }
        task.execs
            .insert(exec.clone(), Proc::new(stdio, Some(process)));
        drop(tables);
        let mut event = TaskExecAdded::new();
        event.container_id = id.to_string();
        event.exec_id = exec.to_string();
        self.publisher.publish(topic::EXEC_ADDED, &event);
        Ok(protobuf::well_known_types::empty::Empty::new())
    }

    pub(super) async fn do_kill(
        &self,
        r: &api::KillRequest,
    ) -> Result<protobuf::well_known_types::empty::Empty> {
        let (id, exec) = (container_id(&r.id)?, exec_id(&r.exec_id)?);
        let signal = Signal::try_from(r.signal).map_err(|e| Error::InvalidRequest {
            reason: e.to_string(),
        })?;
        let (kind, phase) = {
            let tables = self.tables();
            (
                tables.task(&id)?.kind.clone(),
                tables.process(&id, exec.as_ref())?.phase,
            )
        };
        let empty = protobuf::well_known_types::empty::Empty::new();
        match phase {
            Phase::Stopped => Err(Error::NotFound {
                what: format!(
                    "{}: the process already finished",
                    describe(&id, exec.as_ref())
                ),
            }),
            // Nothing runs yet (or ever, for a pod's sandbox container): the
            // signal ends it, as it would end the process waiting to start.
            _ if phase == Phase::Created || kind == ContainerKind::PodSandbox => {
                if stops(signal) {
                    self.exited(&id, exec.as_ref(), 128 + signal.number() as u32);
                }
                Ok(empty)
            }
            _ => {
                let sandbox = self.sandbox()?;
                let sent = match &exec {
                    None => sandbox.kill_container(&id, signal, r.all).await,
                    Some(e) => sandbox.signal_process(&id, Some(e), signal).await,
                };
                sent.map_err(Error::sandbox(format!(
                    "signal {}",
                    describe(&id, exec.as_ref())
                )))?;
                Ok(empty)
            }
        }
    }

    pub(super) async fn do_wait(&self, id: &str, exec: &str) -> Result<api::WaitResponse> {
        let (id, exec) = (container_id(id)?, exec_id(exec)?);
        let mut rx = self.tables().process(&id, exec.as_ref())?.exit.subscribe();
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| super::not_found(&id, exec.as_ref()))?
            .unwrap_or(Exit {
                status: LOST_STATUS,
                at: SystemTime::now(),
            });
        let mut response = api::WaitResponse::new();
        response.exit_status = exit.status;
        response.exited_at = Some(timestamp(exit.at)).into();
        Ok(response)
    }

    pub(super) async fn do_delete(&self, id: &str, exec: &str) -> Result<api::DeleteResponse> {
        let (id, exec) = (container_id(id)?, exec_id(exec)?);
        let _guard = self.lifecycle.lock().await;
        let (phase, exit, pid) = {
            let tables = self.tables();
            let process = tables.process(&id, exec.as_ref())?;
            (process.phase, process.exited(), tables.pid())
        };
        if matches!(phase, Phase::Running | Phase::Paused) {
            return Err(wrong_state("delete", describe(&id, exec.as_ref()), phase));
        }
        match &exec {
            Some(e) => {
                if let Some(task) = self.tables().tasks.get_mut(&id) {
                    task.execs.remove(e);
                }
            }
            None => self.delete_task(&id).await?,
        }
        let exit = exit.unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        let mut event = TaskDelete::new();
        event.container_id = id.to_string();
        event.pid = pid;
        event.exit_status = exit.status;
        event.exited_at = Some(timestamp(exit.at)).into();
        event.id = exec
            .as_ref()
            .map_or_else(|| id.to_string(), ExecId::to_string);
        self.publisher.publish(topic::DELETE, &event);
        let mut response = api::DeleteResponse::new();
        response.pid = pid;
        response.exit_status = exit.status;
        response.exited_at = Some(timestamp(exit.at)).into();
        Ok(response)
    }

    /// Removes a task's container from the sandbox (the whole sandbox for
    /// a lone container or the pod's sandbox container) and unmounts its
    /// rootfs.
    async fn delete_task(&self, id: &ContainerId) -> Result<()> {
        let (kind, bundle, mounted) = {
            let tables = self.tables();
            let task = tables.task(id)?;
            (task.kind.clone(), task.bundle.clone(), task.rootfs_mounted)
        };
        match kind {
            ContainerKind::PodContainer { .. } => {
                let sandbox = self.sandbox()?;
                sandbox
                    .delete_container(id)
                    .await
                    .map_err(Error::sandbox(format!("delete container {id}")))?;
            }
            ContainerKind::Standalone | ContainerKind::PodSandbox => {
                let pod = self.tables().pod.take();
                if let Some(pod) = pod {
                    self.destroy_pod(pod).await;
                }
                self.orphan_remaining(id);
            }
        }
        if mounted {
            rootfs::unmount_all(&bundle.join("rootfs"))?;
        }
        self.tables().tasks.remove(id);
        Ok(())
    }

    /// After the sandbox went: every other task's processes are gone too.
    fn orphan_remaining(&self, deleted: &ContainerId) {
        let running: Vec<(ContainerId, Option<ExecId>)> = {
            let tables = self.tables();
            tables
                .tasks
                .iter()
                .filter(|(id, _)| *id != deleted)
                .flat_map(|(id, t)| {
                    let execs = t.execs.keys().map(|e| (id.clone(), Some(e.clone())));
                    std::iter::once((id.clone(), None)).chain(execs.collect::<Vec<_>>())
                })
                .collect()
        };
        for (id, exec) in running {
            self.exited(&id, exec.as_ref(), 128 + 9);
        }
    }

    /// This service as an `Arc`, for the tasks it spawns.
    fn self_arc(&self) -> Result<Arc<Service>> {
        self.me.upgrade().ok_or_else(|| Error::NotFound {
            what: "the task service (shutting down)".into(),
        })
    }
}

/// Whether `signal` ends a process that does not handle it (the pause
/// process handles only these).
fn stops(signal: Signal) -> bool {
    [
        Signal::KILL,
        Signal::TERM,
        Signal::INT,
        Signal::HUP,
        Signal::QUIT,
    ]
    .contains(&signal)
}

/// A process, named for messages.
fn describe(id: &ContainerId, exec: Option<&ExecId>) -> String {
    match exec {
        Some(e) => format!("exec process {e:?} of task {id:?}"),
        None => format!("task {id:?}"),
    }
}
