//! containerd's task service (`containerd.task.v2.Task`) over one sandbox.
//!
//! One shim serves one sandbox ([`Pod`]): a pod's VM, or a lone
//! container's. Its tasks are the sandbox's containers; each has its own
//! process and the exec processes added to it ([`Proc`]). The tables are
//! behind a plain mutex held only between awaits; the SDK's calls run
//! without it. Creating and deleting tasks (which may boot or stop the
//! VM) is serialised by a second, async lock.
//!
//! Events follow containerd's rules: `TaskCreate` after a create,
//! `TaskStart` before the start answers (so before any `TaskExit` of the
//! process), `TaskExit` once the process exited and its output was
//! copied, `TaskDelete` after a delete.

mod create;
mod info;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use slog::{Logger, debug};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use ttrpc::r#async::TtrpcContext;
use virtcontainers::oci_spec::runtime::Process;
use virtcontainers::{ContainerId, ExecId, Sandbox, SandboxId};

use crate::config::Loaded;
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::pod::ContainerKind;
use crate::protocol::shim as api;
use crate::protocol::shim_ttrpc;
use crate::stdio::StdioPaths;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Exited.
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit status (128 + the signal when killed).
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

/// A process: a container's own, or an exec process.
#[derive(Debug)]
pub struct Proc {
    /// Its stdio.
    pub stdio: StdioPaths,
    /// Where it is.
    pub phase: Phase,
    /// Its exit, once it exited; `Wait` subscribes.
    pub exit: watch::Sender<Option<Exit>>,
    /// Ends its stdin copy (`CloseIO`), while it runs.
    pub close_stdin: Option<Arc<Notify>>,
    /// The OCI process of an exec process.
    pub spec: Option<Process>,
}

impl Proc {
    fn new(stdio: StdioPaths, spec: Option<Process>) -> Proc {
        Proc {
            stdio,
            phase: Phase::Created,
            exit: watch::channel(None).0,
            close_stdin: None,
            spec,
        }
    }

    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }
}

/// A task: one container of the sandbox.
#[derive(Debug)]
pub struct Task {
    /// Its bundle.
    pub bundle: PathBuf,
    /// What it is to the sandbox.
    pub kind: ContainerKind,
    /// Whether the shim mounted containerd's rootfs on `<bundle>/rootfs`.
    pub rootfs_mounted: bool,
    /// Its own process.
    pub init: Proc,
    /// Its exec processes.
    pub execs: BTreeMap<ExecId, Proc>,
}

/// The sandbox this shim serves.
pub struct Pod {
    /// Its id.
    pub id: SandboxId,
    /// The SDK's handle; this shim created it, its VM dies with the shim.
    pub sandbox: Arc<Sandbox>,
    /// The configuration it was made with.
    pub config: Loaded,
    /// The pid containerd is given for every task of the pod: the
    /// holder's when the pod has a network namespace, else the VMM's.
    pub pid: u32,
    /// The process parked in the pod's network namespace.
    pub holder: Option<crate::netns::Holder>,
    /// Whether the shim asked for a new namespace, so that CNI may still
    /// add interfaces to it before Start (`ctr run --cni`).
    pub rescan: bool,
    /// The task turning the guest's OOM kills into `TaskOOM` events.
    oom: JoinHandle<()>,
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Tables {
    pod: Option<Pod>,
    tasks: BTreeMap<ContainerId, Task>,
}

/// The task service.
pub struct Service {
    tables: Mutex<Tables>,
    /// Serialises task creation and deletion (booting, stopping the VM).
    lifecycle: tokio::sync::Mutex<()>,
    publisher: Arc<Publisher>,
    /// Told when the shim should exit (`Shutdown` with no task left).
    exit: Arc<Notify>,
    /// The socket containerd reaches this shim on.
    socket: PathBuf,
    logger: Logger,
    /// Itself, for the tasks it spawns (process waiters).
    me: std::sync::Weak<Service>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service with no task yet, publishing through `publisher`; `exit`
    /// is notified when containerd shuts the shim down.
    pub fn new(
        publisher: Arc<Publisher>,
        exit: Arc<Notify>,
        socket: PathBuf,
        logger: Logger,
    ) -> Arc<Service> {
        Arc::new_cyclic(|me| Service {
            tables: Mutex::new(Tables::default()),
            lifecycle: tokio::sync::Mutex::new(()),
            publisher,
            exit,
            socket,
            logger,
            me: me.clone(),
        })
    }

    /// The ttrpc service table.
    pub fn services(
        self: &Arc<Self>,
    ) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        shim_ttrpc::create_task(self.clone())
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic elsewhere must not take the whole task API down.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any task is left.
    pub fn has_tasks(&self) -> bool {
        !self.tables().tasks.is_empty()
    }

    /// Stops and deletes the sandbox, if any (the shim is going away).
    pub async fn teardown(&self) {
        let _guard = self.lifecycle.lock().await;
        let pod = self.tables().pod.take();
        if let Some(pod) = pod {
            self.destroy_pod(pod).await;
        }
    }

    /// The sandbox handle, for an operation on task `id`'s container.
    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.tables()
            .pod
            .as_ref()
            .map(|p| p.sandbox.clone())
            .ok_or_else(|| Error::NotFound {
                what: "sandbox".into(),
            })
    }
}

/// A request's task id, checked.
fn container_id(id: &str) -> Result<ContainerId> {
    id.parse().map_err(|source| Error::InvalidId {
        id: id.to_owned(),
        source,
    })
}

/// A request's exec id: empty is the task's own process.
fn exec_id(id: &str) -> Result<Option<ExecId>> {
    if id.is_empty() {
        return Ok(None);
    }
    id.parse().map(Some).map_err(|source| Error::InvalidId {
        id: id.to_owned(),
        source,
    })
}

fn not_found(id: &ContainerId, exec: Option<&ExecId>) -> Error {
    Error::NotFound {
        what: match exec {
            Some(e) => format!("exec process {e:?} of task {id:?}"),
            None => format!("task {id:?}"),
        },
    }
}

impl Tables {
    fn task(&self, id: &ContainerId) -> Result<&Task> {
        self.tasks.get(id).ok_or_else(|| not_found(id, None))
    }

    fn process(&self, id: &ContainerId, exec: Option<&ExecId>) -> Result<&Proc> {
        let task = self.task(id)?;
        match exec {
            None => Ok(&task.init),
            Some(e) => task.execs.get(e).ok_or_else(|| not_found(id, exec)),
        }
    }

    fn process_mut(&mut self, id: &ContainerId, exec: Option<&ExecId>) -> Result<&mut Proc> {
        let task = self.tasks.get_mut(id).ok_or_else(|| not_found(id, None))?;
        match exec {
            None => Ok(&mut task.init),
            Some(e) => task.execs.get_mut(e).ok_or_else(|| not_found(id, exec)),
        }
    }

    fn pid(&self) -> u32 {
        self.pod.as_ref().map_or(0, |p| p.pid)
    }
}

type R<T> = ttrpc::Result<T>;

impl Service {
    /// Logs a failed request and turns it into containerd's status.
    fn answer<T>(&self, method: &str, r: Result<T>) -> R<T> {
        r.map_err(|e| {
            slog::warn!(self.logger, "request failed"; "method" => method, "error" => crate::error::chain(&e));
            e.into()
        })
    }
}

#[async_trait]
impl shim_ttrpc::Task for Service {
    async fn state(&self, _: &TtrpcContext, r: api::StateRequest) -> R<api::StateResponse> {
        self.answer("State", self.do_state(&r))
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        r: api::CreateTaskRequest,
    ) -> R<api::CreateTaskResponse> {
        debug!(self.logger, "create"; "id" => &r.id, "bundle" => &r.bundle);
        self.answer("Create", self.do_create(r).await)
    }

    async fn start(&self, _: &TtrpcContext, r: api::StartRequest) -> R<api::StartResponse> {
        debug!(self.logger, "start"; "id" => &r.id, "exec" => &r.exec_id);
        self.answer("Start", self.do_start(&r.id, &r.exec_id).await)
    }

    async fn delete(&self, _: &TtrpcContext, r: api::DeleteRequest) -> R<api::DeleteResponse> {
        debug!(self.logger, "delete"; "id" => &r.id, "exec" => &r.exec_id);
        self.answer("Delete", self.do_delete(&r.id, &r.exec_id).await)
    }

    async fn pids(&self, _: &TtrpcContext, r: api::PidsRequest) -> R<api::PidsResponse> {
        self.answer("Pids", self.do_pids(&r.id))
    }

    async fn pause(&self, _: &TtrpcContext, r: api::PauseRequest) -> R<Empty> {
        self.answer("Pause", self.do_freeze(&r.id, true).await)
    }

    async fn resume(&self, _: &TtrpcContext, r: api::ResumeRequest) -> R<Empty> {
        self.answer("Resume", self.do_freeze(&r.id, false).await)
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> R<Empty> {
        let e = virtcontainers::vc_types::Unsupported::new(
            "checkpoint",
            "containerd-shim-vc-v2 cannot checkpoint a container running in a VM",
        );
        self.answer("Checkpoint", Err(e.into()))
    }

    async fn kill(&self, _: &TtrpcContext, r: api::KillRequest) -> R<Empty> {
        debug!(self.logger, "kill"; "id" => &r.id, "exec" => &r.exec_id, "signal" => r.signal, "all" => r.all);
        self.answer("Kill", self.do_kill(&r).await)
    }

    async fn exec(&self, _: &TtrpcContext, r: api::ExecProcessRequest) -> R<Empty> {
        debug!(self.logger, "exec"; "id" => &r.id, "exec" => &r.exec_id);
        self.answer("Exec", self.do_exec(r))
    }

    async fn resize_pty(&self, _: &TtrpcContext, r: api::ResizePtyRequest) -> R<Empty> {
        self.answer("ResizePty", self.do_resize(&r).await)
    }

    async fn close_io(&self, _: &TtrpcContext, r: api::CloseIORequest) -> R<Empty> {
        self.answer("CloseIO", self.do_close_io(&r))
    }

    async fn update(&self, _: &TtrpcContext, r: api::UpdateTaskRequest) -> R<Empty> {
        self.answer("Update", self.do_update(&r).await)
    }

    async fn wait(&self, _: &TtrpcContext, r: api::WaitRequest) -> R<api::WaitResponse> {
        self.answer("Wait", self.do_wait(&r.id, &r.exec_id).await)
    }

    async fn stats(&self, _: &TtrpcContext, r: api::StatsRequest) -> R<api::StatsResponse> {
        self.answer("Stats", self.do_stats(&r.id).await)
    }

    async fn connect(&self, _: &TtrpcContext, r: api::ConnectRequest) -> R<api::ConnectResponse> {
        self.answer("Connect", self.do_connect(&r.id))
    }

    async fn shutdown(&self, _: &TtrpcContext, r: api::ShutdownRequest) -> R<Empty> {
        debug!(self.logger, "shutdown"; "id" => &r.id, "now" => r.now);
        if r.now || !self.has_tasks() {
            self.exit.notify_one();
        }
        Ok(Empty::new())
    }
}
