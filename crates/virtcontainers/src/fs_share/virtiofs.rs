//! virtio-fs: `virtiofsd` serves the directory over vhost-user; QEMU's
//! guest memory is a shared memfd so the daemon can reach it.
//!
//! `virtiofsd` is spawned through `vc_hypervisor::process`, recorded in
//! the process ledger of the VM's runtime dir (where its socket lives)
//! before it runs, with the lifetime the share is given (the VM's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::mount::{MsFlags, mount};
use slog::{Logger, debug};
use vc_agent_client::protocol::agent::Storage;
use vc_hypervisor::process::{self as vmm_process, ProcessHandle, ProcessLedger, ProcessSpec};
use vc_hypervisor::{Device, ProcessLifetime, ShareBackend, SharedDir};

use super::{FsShare, GUEST_SHARED_DIR, SHARE_MOUNT_TAG, ShareKind};
use crate::error::Error;
use crate::state::ProcessRecord;

/// How long virtiofsd may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// Grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A virtio-fs share served by a supervised `virtiofsd`.
///
/// virtiofsd runs in a mount namespace of its own (its `namespace`
/// sandbox), a slave of the host's. The shared directory is made a shared
/// mount of itself first, so that rootfs and volumes bind-mounted into it
/// after the daemon started still reach the guest.
#[derive(Debug)]
pub struct VirtioFsShare {
    virtiofsd: PathBuf,
    host_dir: PathBuf,
    socket: PathBuf,
    logger: Logger,
    lifetime: ProcessLifetime,
    child: Option<Arc<ProcessHandle>>,
    record: Option<ProcessRecord>,
}

impl VirtioFsShare {
    /// A share of `host_dir` with its vhost-user socket at `socket` (in
    /// the VM's runtime dir, whose process ledger records `virtiofsd`).
    /// `virtiofsd` dies with this process unless
    /// [`with_lifetime`](Self::with_lifetime) says otherwise.
    pub fn new(virtiofsd: PathBuf, host_dir: PathBuf, socket: PathBuf, logger: Logger) -> Self {
        VirtioFsShare {
            virtiofsd,
            host_dir,
            socket,
            logger,
            lifetime: ProcessLifetime::DiesWithOwner,
            child: None,
            record: None,
        }
    }

    /// Gives `virtiofsd` this lifetime (the VM's).
    pub fn with_lifetime(mut self, lifetime: ProcessLifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The ledger `virtiofsd` is recorded in: the one of the runtime dir
    /// that holds its socket.
    fn ledger(&self) -> ProcessLedger {
        ProcessLedger::open(self.socket.parent().unwrap_or(Path::new("/")))
    }

    /// Ends a `virtiofsd` that failed to start and drops its record.
    async fn discard(&self, child: Arc<ProcessHandle>) {
        let ledger = self.ledger();
        let _ = tokio::task::spawn_blocking(move || {
            if child.terminate(STOP_GRACE) {
                let _ = ledger.remove(child.record());
            }
        })
        .await;
    }

    /// The share of a sandbox started elsewhere, to stop its daemon.
    pub fn from_record(
        virtiofsd: PathBuf,
        host_dir: PathBuf,
        socket: PathBuf,
        record: Option<ProcessRecord>,
        logger: Logger,
    ) -> Self {
        let mut share = Self::new(virtiofsd, host_dir, socket, logger);
        share.record = record;
        share
    }

    fn helper_error(&self, reason: String) -> Error {
        Error::Helper {
            program: self.virtiofsd.clone(),
            reason,
        }
    }
}

#[async_trait]
impl FsShare for VirtioFsShare {
    fn kind(&self) -> ShareKind {
        ShareKind::VirtioFs {
            virtiofsd: self.virtiofsd.clone(),
        }
    }

    fn host_dir(&self) -> &Path {
        &self.host_dir
    }

    async fn start(&mut self) -> Result<Vec<ProcessRecord>, Error> {
        // The self-bind that makes the directory a shared mount; the caller
        // recorded it as a host mount of the sandbox (host_dir) beforehand.
        let dir = &self.host_dir;
        let mount_err = |operation| {
            move |e: nix::errno::Errno| Error::HostMount {
                operation,
                target: dir.clone(),
                source: e.into(),
            }
        };
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(mount_err("bind-mount onto itself"))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(mount_err("make shared"))?;

        let log_path = self.socket.with_file_name("virtiofsd.log");
        let log = std::fs::File::create(&log_path).map_err(Error::host_io("create", &log_path))?;
        let spec = ProcessSpec::new(&self.virtiofsd)
            .arg(format!("--socket-path={}", self.socket.display()))
            .arg(format!("--shared-dir={}", self.host_dir.display()))
            .args([
                "--cache=auto",
                "--sandbox=namespace",
                "--announce-submounts",
            ])
            .args(["--log-level=warn"])
            .stderr(log);
        // In the ledger before it runs, whenever this process dies.
        let child = vmm_process::spawn(spec, self.lifetime, &self.ledger())
            .await
            .map(Arc::new)
            .map_err(Error::hypervisor("start virtiofsd"))?;
        let record = child.record().clone();
        self.record = Some(record.clone());
        let deadline = Instant::now() + SOCKET_WAIT;
        while !self.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                self.discard(child).await;
                self.record = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(self.helper_error(format!("exited with {status}: {}", log.trim())));
            }
            if Instant::now() > deadline {
                self.discard(child).await;
                self.record = None;
                return Err(self.helper_error(format!(
                    "no socket at {} after {SOCKET_WAIT:?}",
                    self.socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        debug!(self.logger, "virtiofsd started"; "pid" => record.pid, "socket" => %self.socket.display());
        self.child = Some(child);
        Ok(vec![record])
    }

    fn device(&self) -> Device {
        Device::SharedDir(SharedDir {
            id: "share0".into(),
            mount_tag: SHARE_MOUNT_TAG.into(),
            backend: ShareBackend::VirtioFs {
                socket: self.socket.clone(),
                queue_size: 1024,
            },
        })
    }

    fn needs_shared_memory(&self) -> bool {
        true
    }

    fn guest_storage(&self) -> Storage {
        let mut s = Storage::new();
        s.driver = "virtio-fs".into();
        s.source = SHARE_MOUNT_TAG.into();
        s.fstype = "virtiofs".into();
        s.mount_point = GUEST_SHARED_DIR.into();
        s
    }

    async fn stop(&mut self) -> Result<(), Error> {
        if let Some(record) = self.record.take() {
            let child = self.child.take();
            let ledger = self.ledger();
            let stopped = tokio::task::spawn_blocking(move || {
                // Our own handle reaps our child; a record alone (a
                // sandbox started elsewhere) is ended by pid and start time.
                let gone = match child {
                    Some(child) => child.terminate(STOP_GRACE),
                    None => vmm_process::terminate(&record, STOP_GRACE),
                };
                if gone {
                    let _ = ledger.remove(&record);
                }
                gone
            })
            .await
            .unwrap_or(false);
            if !stopped {
                return Err(self.helper_error("did not exit after SIGKILL".into()));
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }
}

impl Drop for VirtioFsShare {
    /// A `virtiofsd` that dies with its owner is not left running by a
    /// share dropped unstopped (an outliving one is, by design).
    fn drop(&mut self) {
        if let Some(child) = self.child.take()
            && self.lifetime == ProcessLifetime::DiesWithOwner
            && child.terminate(Duration::ZERO)
        {
            let _ = self.ledger().remove(child.record());
        }
    }
}
