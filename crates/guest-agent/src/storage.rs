//! Storages the host asks for (Kata's `Storage`): a 9p or virtio-fs share
//! by mount tag, a block device by path, a tmpfs. Mounted before the
//! container is created, unmounted when it is removed.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use vc_agent_protocol::agent::Storage;

use crate::container::mount_options;
use crate::error::{Error, Result};

/// Mounts `s` at its mount point; returns the mount point.
pub fn mount_storage(container_id: &str, s: &Storage) -> Result<PathBuf> {
    let invalid = |reason: String| Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason,
    };
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() || s.mount_point.contains("..") {
        return Err(invalid(format!(
            "storage mount point {:?} is not a clean absolute path",
            s.mount_point
        )));
    }
    let fstype = match (s.driver.as_str(), s.fstype.as_str()) {
        (_, t) if !t.is_empty() => t.to_owned(),
        ("9p", _) => "9p".to_owned(),
        ("virtio-fs", _) => "virtiofs".to_owned(),
        ("ephemeral", _) | ("local", _) => "tmpfs".to_owned(),
        (d, _) => return Err(invalid(format!("storage driver {d:?} without fstype"))),
    };
    let mut options = s.options.clone();
    if fstype == "9p" && !options.iter().any(|o| o.starts_with("trans=")) {
        options.push("trans=virtio".into());
    }
    let opts = mount_options::parse(&options);
    fs::create_dir_all(&target).map_err(Error::io("creating storage mount point", &target))?;
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let source = if s.source.is_empty() {
        fstype.clone()
    } else {
        s.source.clone()
    };
    mount(
        Some(source.as_str()),
        &target,
        Some(fstype.as_str()),
        MsFlags::from_bits_truncate(opts.flags),
        data,
    )
    .map_err(|e| Error::Io {
        operation: "mounting storage",
        path: target.clone(),
        source: std::io::Error::from(e),
    })?;
    Ok(target)
}

/// Detaches a storage mount (lazily: a process still holding it does not
/// keep the container from being removed).
pub fn unmount_storage(target: &Path) -> Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(|e| Error::Io {
        operation: "unmounting storage",
        path: target.to_owned(),
        source: std::io::Error::from(e),
    })
}
