//! Storages the host asks for (Kata's `Storage`): a 9p or virtio-fs share
//! by mount tag, a block device by path, a tmpfs. Mounted before the
//! container is created, unmounted when it is removed.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use vc_agent_protocol::agent::Storage;

use crate::container::mount_options;
use crate::error::{Error, Result};

/// A mounted storage: its mount point and the directories made for it.
#[derive(Debug)]
pub struct MountedStorage {
    /// The mount point.
    pub target: PathBuf,
    /// The directories created for it, outermost first (removed again by
    /// [`unmount_storage`]).
    created: Vec<PathBuf>,
}

/// Creates `dir` and its missing ancestors; returns those it created,
/// outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    let mut created = Vec::new();
    for d in missing {
        match fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(Error::io("creating storage mount point", &d)(e));
            }
        }
    }
    Ok(created)
}

/// Removes the directories `created` (innermost first) while they are empty.
fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// Mounts `s` at its mount point, creating it if needed. On failure
/// nothing is left: no mount, no directory it made.
pub fn mount_storage(container_id: &str, s: &Storage) -> Result<MountedStorage> {
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
    let created = create_dirs(&target)?;
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
    .map_err(|e| {
        remove_dirs(&created);
        Error::Io {
            operation: "mounting storage",
            path: target.clone(),
            source: std::io::Error::from(e),
        }
    })?;
    Ok(MountedStorage { target, created })
}

/// Detaches a storage mount (lazily: a process still holding it does not
/// keep the container from being removed), then removes the directories
/// made for it.
pub fn unmount_storage(m: &MountedStorage) -> Result<()> {
    umount2(&m.target, MntFlags::MNT_DETACH).map_err(|e| Error::Io {
        operation: "unmounting storage",
        path: m.target.clone(),
        source: std::io::Error::from(e),
    })?;
    remove_dirs(&m.created);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs_storage(mount_point: &Path) -> Storage {
        let mut s = Storage::new();
        s.driver = "ephemeral".into();
        s.mount_point = mount_point.display().to_string();
        s
    }

    /// Needs root (mount).
    #[test]
    fn mount_and_unmount_leave_nothing_behind() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "this test needs root (mount)");
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vc/c1/rootfs");
        let m = mount_storage("c1", &tmpfs_storage(&target)).unwrap();
        std::fs::write(target.join("on-tmpfs"), "x").unwrap();
        unmount_storage(&m).unwrap();
        assert!(!dir.path().join("vc").exists(), "mount point left behind");

        // A failed mount removes the directories it made.
        let mut bad = tmpfs_storage(&target);
        bad.driver = "9p".into();
        bad.source = "no-such-tag".into();
        bad.fstype = "no-such-fs".into();
        let err = mount_storage("c1", &bad).unwrap_err();
        assert!(err.to_string().contains("mounting storage"), "{err}");
        assert!(!dir.path().join("vc").exists(), "mount point left behind");

        // An existing mount point is kept.
        std::fs::create_dir_all(&target).unwrap();
        let m = mount_storage("c1", &tmpfs_storage(&target)).unwrap();
        unmount_storage(&m).unwrap();
        assert!(target.is_dir());
    }
}
