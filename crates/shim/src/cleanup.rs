//! `delete`: containerd's way to free a task whose shim died (killed, or
//! crashed): it runs the binary with the task's bundle and reads a
//! `DeleteResponse` from its stdout.
//!
//! The sandbox's VM died with the shim (`SandboxLifetime::DiesWithOwner`);
//! what is left on the host (its state, cgroups, mounts, taps, helper
//! processes) is freed by `virtcontainers::reclaim` from the sandbox's
//! persisted state. A pod's other containers get their own `delete`,
//! which finds the sandbox gone. Then the task's rootfs is unmounted from
//! the bundle and the dead shim's socket file removed. If the shim still
//! answers (containerd lost its connection, not the shim), the sandbox is
//! left alone.

use std::path::Path;
use std::time::SystemTime;

use slog::{Logger, info, warn};

use crate::bundle::BundleRecord;
use crate::error::{Error, Result};
use crate::protocol::shim::DeleteResponse;
use crate::rootfs;
use crate::socket;

/// What a task killed by its shim's death exited with (SIGKILL).
pub const KILLED_STATUS: u32 = 128 + 9;

/// Frees what is left of the task of `bundle`; returns containerd's
/// answer.
pub async fn delete(bundle: &Path, logger: &Logger) -> Result<DeleteResponse> {
    let record = BundleRecord::read(bundle)?;
    let mut errors = Vec::new();
    if let Some(record) = &record {
        if socket::is_served(&record.socket) {
            warn!(logger, "the shim still answers: its sandbox is left to it";
                "socket" => %record.socket.display());
        } else {
            match virtcontainers::reclaim(&record.paths, &record.sandbox, logger.clone()).await {
                Ok(()) => info!(logger, "sandbox reclaimed"; "sandbox" => %record.sandbox),
                // Reclaimed already, by another task of the pod.
                Err(virtcontainers::Error::NotFound { .. }) => {}
                Err(e) => errors.push(Error::sandbox("reclaim the sandbox")(e)),
            }
            if let Err(e) = socket::retire(&record.socket) {
                errors.push(e);
            }
        }
    }
    if let Err(e) = rootfs::unmount_all(&bundle.join("rootfs")) {
        errors.push(e);
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let mut response = DeleteResponse::new();
    response.pid = record.map_or(0, |r| r.pid);
    response.exit_status = KILLED_STATUS;
    response.exited_at = Some(crate::events::timestamp(SystemTime::now())).into();
    Ok(response)
}
