//! Creating a task (and, for the first one, the sandbox's VM) and
//! destroying the sandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use slog::{info, warn};
use virtcontainers::{
    ContainerConfig, ContainerId, NetnsConfig, Sandbox, SandboxId, create_sandbox,
};

use super::{Pod, Proc, Service, Task, container_id};
use crate::bundle::BundleRecord;
use crate::config::{self, Loaded};
use crate::error::{Error, Result};
use crate::events::{Publisher, topic};
use crate::netns::{self, Holder};
use crate::pod::ContainerKind;
use crate::protocol::events::{TaskCreate, TaskIO, TaskOOM};
use crate::protocol::mount::Mount;
use crate::protocol::runtimeoptions::Options;
use crate::protocol::shim as api;
use crate::rootfs::{self, RootfsMount};
use crate::stdio::StdioPaths;

/// The type URL of containerd's runtime options for non-runc shims.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// How long the sandbox handle may stay shared after the VM stopped
/// (requests in flight, process waiters ending) before it is deleted.
const HANDLE_RELEASE: Duration = Duration::from_secs(10);

impl Service {
    pub(super) async fn do_create(
        &self,
        r: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        let id = container_id(&r.id)?;
        let stdio = StdioPaths {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
        };
        stdio.check()?;
        if !r.checkpoint.is_empty() {
            return Err(virtcontainers::vc_types::Unsupported::new(
                "restore from a checkpoint",
                "containerd-shim-vc-v2 cannot checkpoint or restore",
            )
            .into());
        }
        let _guard = self.lifecycle.lock().await;
        if self.tables().tasks.contains_key(&id) {
            return Err(Error::AlreadyExists {
                what: format!("task {id:?}"),
            });
        }
        let bundle = Path::new(&r.bundle);
        let mounts: Vec<RootfsMount> = r.rootfs.iter().map(rootfs_mount).collect();
        rootfs::mount_all(&mounts, &bundle.join("rootfs"))?;
        let created = self.create_container(&id, bundle, &r).await;
        let kind = match created {
            Ok(kind) => kind,
            Err(e) => {
                if !mounts.is_empty()
                    && let Err(undo) = rootfs::unmount_all(&bundle.join("rootfs"))
                {
                    warn!(self.logger, "rootfs not unmounted"; "error" => crate::error::chain(&undo));
                }
                return Err(e);
            }
        };
        let pid = {
            let mut tables = self.tables();
            let pid = tables.pid();
            tables.tasks.insert(
                id.clone(),
                Task {
                    bundle: bundle.to_owned(),
                    kind,
                    rootfs_mounted: !mounts.is_empty(),
                    init: Proc::new(stdio, None),
                    execs: Default::default(),
                },
            );
            pid
        };
        self.publish_create(&r, pid);
        let mut response = api::CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    /// The container in its sandbox: a new sandbox for a lone container or
    /// a pod's sandbox container, the pod's VM for a pod's container.
    async fn create_container(
        &self,
        id: &ContainerId,
        bundle: &Path,
        r: &api::CreateTaskRequest,
    ) -> Result<ContainerKind> {
        let container = ContainerConfig::from_bundle(id.clone(), bundle)
            .map_err(Error::sandbox(format!("read the bundle of {id}")))?;
        let annotations = container.spec.annotations().clone().unwrap_or_default();
        let kind = ContainerKind::from_annotations(&annotations)?;
        let sandbox_id = kind.sandbox_id(id.as_str())?;
        let existing = self
            .tables()
            .pod
            .as_ref()
            .map(|p| (p.id.clone(), p.sandbox.clone()));
        let (sandbox, config) = match (&kind, existing) {
            (ContainerKind::PodContainer { .. }, Some((pod, sandbox))) if pod == sandbox_id => {
                sandbox
                    .create_container(container)
                    .await
                    .map_err(Error::sandbox(format!(
                        "create container {id} in sandbox {pod}"
                    )))?;
                let config = self.pod_config()?;
                (sandbox_id, config)
            }
            (ContainerKind::PodContainer { sandbox }, _) => {
                return Err(Error::NotFound {
                    what: format!("sandbox {sandbox:?} (this shim does not serve it)"),
                });
            }
            (_, Some((pod, _))) => {
                return Err(Error::AlreadyExists {
                    what: format!("a sandbox in this shim ({pod})"),
                });
            }
            (_, None) => {
                let config = config::load(config_path(r)?.as_deref())?;
                self.create_pod(&kind, sandbox_id.clone(), container, config.clone())
                    .await?;
                (sandbox_id, config)
            }
        };
        let record = BundleRecord {
            sandbox,
            paths: config.config.paths(),
            pid: self.tables().pid(),
            socket: self.socket.clone(),
        };
        if let Err(e) = record.write(bundle) {
            warn!(self.logger, "bundle record not written: a dead shim's delete will not reclaim the sandbox";
                "error" => crate::error::chain(&e));
        }
        Ok(kind)
    }

    fn pod_config(&self) -> Result<Loaded> {
        self.tables()
            .pod
            .as_ref()
            .map(|p| p.config.clone())
            .ok_or_else(|| Error::NotFound {
                what: "sandbox".into(),
            })
    }

    /// Boots the sandbox's VM, with `container` in it unless it is a pod's
    /// sandbox container (which runs nothing).
    async fn create_pod(
        &self,
        kind: &ContainerKind,
        id: virtcontainers::SandboxId,
        container: ContainerConfig,
        config: Loaded,
    ) -> Result<()> {
        let cgroups_path = container
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string());
        let netns = netns::requested(&container.spec);
        let containers = match kind.runs_in_guest() {
            true => vec![container],
            false => Vec::new(),
        };
        let sandbox_config = config
            .config
            .sandbox(id.clone(), containers, cgroups_path, netns)?;
        let rescan = sandbox_config.network.netns == NetnsConfig::Create;
        info!(self.logger, "creating the sandbox"; "sandbox" => %id,
            "config" => config.path.as_ref().map(|p| p.display().to_string()),
            "netns" => ?sandbox_config.network.netns);
        let sandbox = create_sandbox(sandbox_config, config.config.factory(), self.logger.clone())
            .await
            .map_err(Error::sandbox(format!("create sandbox {id}")))?;
        let holder = match self.hold_netns(&sandbox, &id) {
            Ok(h) => h,
            Err(e) => {
                self.unwind_sandbox(sandbox, &config).await;
                return Err(e);
            }
        };
        let sandbox = Arc::new(sandbox);
        let pid = match &holder {
            Some(h) => h.pid(),
            None => match sandbox.status().await {
                Ok(s) => s.vmm_pid.unwrap_or_else(std::process::id),
                Err(_) => std::process::id(),
            },
        };
        let oom = tokio::spawn(forward_oom(
            sandbox.clone(),
            self.publisher.clone(),
            self.logger.clone(),
        ));
        self.tables().pod = Some(Pod {
            id,
            sandbox,
            config,
            pid,
            holder,
            rescan,
            oom,
        });
        Ok(())
    }

    /// A holder in the sandbox's network namespace, when it has one.
    fn hold_netns(&self, sandbox: &Sandbox, id: &SandboxId) -> Result<Option<Holder>> {
        let path = sandbox
            .netns()
            .map_err(Error::sandbox(format!("find the netns of sandbox {id}")))?;
        path.map(|p| Holder::spawn(&p, id.as_str())).transpose()
    }

    /// Stops and deletes a sandbox whose creation failed after the SDK
    /// made it.
    async fn unwind_sandbox(&self, sandbox: Sandbox, config: &Loaded) {
        if let Err(e) = sandbox.stop(config.config.stop_timeout()).await {
            warn!(self.logger, "unwinding: sandbox did not stop cleanly"; "error" => crate::error::chain(&e));
        }
        if let Err(e) = sandbox.delete().await {
            warn!(self.logger, "unwinding: sandbox not deleted"; "error" => crate::error::chain(&e));
        }
    }

    /// Stops the sandbox's VM and deletes the sandbox; what cannot be
    /// deleted through the handle is reclaimed from its state.
    pub(super) async fn destroy_pod(&self, pod: Pod) {
        let Pod {
            id,
            sandbox,
            config,
            holder,
            oom,
            ..
        } = pod;
        oom.abort();
        let _ = oom.await;
        if let Err(e) = sandbox.stop(config.config.stop_timeout()).await {
            warn!(self.logger, "sandbox did not stop cleanly"; "error" => crate::error::chain(&e));
        }
        let deadline = tokio::time::Instant::now() + HANDLE_RELEASE;
        let mut sandbox = sandbox;
        let deleted = loop {
            match Arc::try_unwrap(sandbox) {
                Ok(s) => break Some(s.delete().await),
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    sandbox = shared;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => break None,
            }
        };
        let reclaim = match deleted {
            Some(Ok(())) => false,
            Some(Err(e)) => {
                warn!(self.logger, "sandbox not deleted; reclaiming it"; "error" => crate::error::chain(&e));
                true
            }
            None => {
                warn!(
                    self.logger,
                    "sandbox handle still in use; reclaiming the sandbox"
                );
                true
            }
        };
        if reclaim
            && let Err(e) =
                virtcontainers::reclaim(&config.config.paths(), &id, self.logger.clone()).await
        {
            warn!(self.logger, "sandbox not reclaimed"; "error" => crate::error::chain(&e));
        }
        // Last: while it lives, the namespace (CNI's veth in it) does.
        if let Some(holder) = holder {
            let _ = tokio::task::spawn_blocking(move || holder.stop()).await;
        }
        info!(self.logger, "sandbox removed"; "sandbox" => %id);
    }

    fn publish_create(&self, r: &api::CreateTaskRequest, pid: u32) {
        let mut io = TaskIO::new();
        io.stdin = r.stdin.clone();
        io.stdout = r.stdout.clone();
        io.stderr = r.stderr.clone();
        io.terminal = r.terminal;
        let mut event = TaskCreate::new();
        event.container_id = r.id.clone();
        event.bundle = r.bundle.clone();
        event.rootfs = r.rootfs.clone();
        event.io = Some(io).into();
        event.checkpoint = r.checkpoint.clone();
        event.pid = pid;
        self.publisher.publish(topic::CREATE, &event);
    }
}

fn rootfs_mount(m: &Mount) -> RootfsMount {
    RootfsMount {
        fs_type: m.type_.clone(),
        source: m.source.clone(),
        options: m.options.clone(),
    }
}

/// The configuration file the runtime options name, if any.
fn config_path(r: &api::CreateTaskRequest) -> Result<Option<std::path::PathBuf>> {
    let Some(any) = r.options.as_ref() else {
        return Ok(None);
    };
    if any.type_url.trim_start_matches("type.googleapis.com/") != RUNTIME_OPTIONS {
        // Another runtime's options (runc's): nothing for this shim.
        return Ok(None);
    }
    let options =
        <Options as protobuf::Message>::parse_from_bytes(&any.value).map_err(|source| {
            Error::Protobuf {
                what: "runtime options",
                source,
            }
        })?;
    Ok((!options.config_path.is_empty()).then(|| options.config_path.into()))
}

/// Publishes `TaskOOM` for each OOM kill the guest reports, until aborted.
async fn forward_oom(sandbox: Arc<Sandbox>, publisher: Arc<Publisher>, logger: slog::Logger) {
    loop {
        match sandbox.next_oom_event().await {
            Ok(id) => {
                let mut event = TaskOOM::new();
                event.container_id = id.to_string();
                publisher.publish(topic::OOM, &event);
            }
            Err(e) => {
                slog::debug!(logger, "no OOM event"; "error" => crate::error::chain(&e));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
