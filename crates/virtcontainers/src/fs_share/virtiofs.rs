//! virtio-fs: `virtiofsd` serves the directory over vhost-user; QEMU's
//! guest memory is a shared memfd so the daemon can reach it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::mount::{MsFlags, mount};
use slog::{Logger, debug};
use vc_agent_client::protocol::agent::Storage;
use vc_hypervisor::{Device, ShareBackend, SharedDir};

use super::{FsShare, GUEST_SHARED_DIR, SHARE_MOUNT_TAG, ShareKind};
use crate::error::Error;
use crate::process;
use crate::state::HelperRecord;

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
    child: Option<tokio::process::Child>,
    record: Option<HelperRecord>,
}

impl VirtioFsShare {
    /// A share of `host_dir` with its vhost-user socket at `socket`.
    pub fn new(virtiofsd: PathBuf, host_dir: PathBuf, socket: PathBuf, logger: Logger) -> Self {
        VirtioFsShare {
            virtiofsd,
            host_dir,
            socket,
            logger,
            child: None,
            record: None,
        }
    }

    /// The share of a sandbox started elsewhere, to stop its daemon.
    pub fn from_record(
        virtiofsd: PathBuf,
        host_dir: PathBuf,
        socket: PathBuf,
        record: Option<HelperRecord>,
        logger: Logger,
    ) -> Self {
        VirtioFsShare {
            record,
            ..Self::new(virtiofsd, host_dir, socket, logger)
        }
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

    async fn start(&mut self) -> Result<Vec<HelperRecord>, Error> {
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
        let mut command = tokio::process::Command::new(&self.virtiofsd);
        command
            .arg(format!("--socket-path={}", self.socket.display()))
            .arg(format!("--shared-dir={}", self.host_dir.display()))
            .args([
                "--cache=auto",
                "--sandbox=namespace",
                "--announce-submounts",
            ])
            .args(["--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| self.helper_error(format!("cannot start: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let record = HelperRecord {
            program: self.virtiofsd.clone(),
            pid,
            start_time: process::start_time(pid).unwrap_or(0),
        };
        self.record = Some(record.clone());
        let deadline = Instant::now() + SOCKET_WAIT;
        while !self.socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(self.helper_error(format!("exited with {status}: {}", log.trim())));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(self.helper_error(format!(
                    "no socket at {} after {SOCKET_WAIT:?}",
                    self.socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        debug!(self.logger, "virtiofsd started"; "pid" => pid, "socket" => %self.socket.display());
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
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
        }
        if let Some(record) = self.record.take() {
            let stopped = tokio::task::spawn_blocking(move || {
                process::terminate(record.pid, record.start_time, STOP_GRACE)
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
