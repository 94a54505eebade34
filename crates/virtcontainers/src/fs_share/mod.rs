//! Filesystem sharing between host and guest: the [`FsShare`] trait and
//! its two implementations, virtio-9p ([`NinePShare`]) and virtio-fs
//! ([`VirtioFsShare`]).
//!
//! One share per sandbox exports a host directory, `<shared_root>/<id>`,
//! which the agent mounts at [`GUEST_SHARED_DIR`]. Container rootfs and
//! bind-mount volumes are bind-mounted into that directory on the host and
//! reach the guest through it.

mod ninep;
mod virtiofs;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use slog::Logger;
use vc_agent_client::protocol::agent::Storage;
use vc_hypervisor::Device;

pub use ninep::NinePShare;
pub use virtiofs::VirtioFsShare;

use crate::config::{FsShareConfig, FsShareKind};
use crate::error::Error;
use crate::state::ProcessRecord;

/// The mount tag of the sandbox share.
pub const SHARE_MOUNT_TAG: &str = "vcShared";
/// Where the guest mounts the sandbox share.
pub const GUEST_SHARED_DIR: &str = "/run/vc/shared";

/// The share in use (after [`FsShareKind::Auto`] is resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShareKind {
    /// virtio-9p.
    NineP,
    /// virtio-fs with this `virtiofsd`.
    VirtioFs {
        /// The daemon binary.
        virtiofsd: PathBuf,
    },
}

/// A host directory shared with the guest.
#[async_trait]
pub trait FsShare: Send + Sync + std::fmt::Debug {
    /// Which share this is.
    fn kind(&self) -> ShareKind;

    /// The host directory the guest sees at [`GUEST_SHARED_DIR`].
    fn host_dir(&self) -> &Path;

    /// Starts what serves the share before the VM boots; returns the helper
    /// processes started (none for 9p), for the caller to record and place
    /// in the overhead cgroup.
    async fn start(&mut self) -> Result<Vec<ProcessRecord>, Error>;

    /// The device the VM boots with.
    fn device(&self) -> Device;

    /// Whether guest memory must be shared with the host (vhost-user).
    fn needs_shared_memory(&self) -> bool;

    /// The storage the agent mounts at [`GUEST_SHARED_DIR`].
    fn guest_storage(&self) -> Storage;

    /// Stops the helpers. Idempotent.
    async fn stop(&mut self) -> Result<(), Error>;
}

/// The directories searched for `virtiofsd` when no path is configured.
pub const VIRTIOFSD_SEARCH: [&str; 4] = [
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/local/bin/virtiofsd",
    "/root/.cargo/bin/virtiofsd",
];

fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("virtiofsd");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    VIRTIOFSD_SEARCH
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The share a sandbox uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareChoice {
    /// The share.
    pub kind: ShareKind,
    /// Why it was chosen (for the log).
    pub reason: &'static str,
}

/// Resolves the configured share: `Auto` is virtio-fs when `virtiofsd` is
/// found, else 9p. Asking for virtio-fs without a `virtiofsd` is
/// [`Error::VirtiofsdNotFound`].
pub fn resolve(config: &FsShareConfig) -> Result<ShareChoice, Error> {
    let virtiofsd = config
        .virtiofsd
        .clone()
        .filter(|p| p.is_file())
        .or_else(find_virtiofsd);
    let kind = match (config.kind, virtiofsd) {
        (FsShareKind::NineP, _) => ShareKind::NineP,
        (FsShareKind::VirtioFs, Some(virtiofsd)) | (FsShareKind::Auto, Some(virtiofsd)) => {
            ShareKind::VirtioFs { virtiofsd }
        }
        (FsShareKind::VirtioFs, None) => {
            return Err(Error::VirtiofsdNotFound {
                configured: config.virtiofsd.clone(),
                searched: VIRTIOFSD_SEARCH.iter().map(PathBuf::from).collect(),
            });
        }
        (FsShareKind::Auto, None) => ShareKind::NineP,
    };
    let reason = match (config.kind, &kind) {
        (FsShareKind::Auto, ShareKind::NineP) => "auto: no virtiofsd found",
        (FsShareKind::Auto, ShareKind::VirtioFs { .. }) => "auto: virtiofsd found",
        _ => "configured",
    };
    Ok(ShareChoice { kind, reason })
}

/// The share of `kind` exporting `host_dir`; virtio-fs puts its socket in
/// `runtime_dir` and runs `virtiofsd` with `lifetime` (the VM's), recorded
/// in that dir's process ledger.
pub fn new_share(
    kind: &ShareKind,
    host_dir: PathBuf,
    runtime_dir: &Path,
    lifetime: vc_hypervisor::ProcessLifetime,
    logger: Logger,
) -> Box<dyn FsShare> {
    match kind {
        ShareKind::NineP => Box::new(NinePShare::new(host_dir)),
        ShareKind::VirtioFs { virtiofsd } => Box::new(
            VirtioFsShare::new(
                virtiofsd.clone(),
                host_dir,
                runtime_dir.join("virtiofsd.sock"),
                logger,
            )
            .with_lifetime(lifetime),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choices_are_honoured() {
        let nine = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        assert_eq!(resolve(&nine).unwrap().kind, ShareKind::NineP);
        let missing = FsShareConfig {
            kind: FsShareKind::VirtioFs,
            virtiofsd: Some("/nonexistent/virtiofsd".into()),
        };
        if find_virtiofsd().is_none() {
            assert!(matches!(
                resolve(&missing),
                Err(Error::VirtiofsdNotFound { .. })
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("virtiofsd");
        std::fs::write(&fake, "").unwrap();
        let given = FsShareConfig {
            kind: FsShareKind::Auto,
            virtiofsd: Some(fake.clone()),
        };
        assert_eq!(
            resolve(&given).unwrap().kind,
            ShareKind::VirtioFs { virtiofsd: fake }
        );
    }
}
