//! Bind mounts on the host, into the sandbox's shared directory.

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::Error;

/// Bind-mounts `source` (a directory or a file) on `target`, creating
/// `target` (and its parents) first; read-only when asked. On failure
/// nothing stays mounted.
pub(crate) fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), Error> {
    let meta = std::fs::metadata(source).map_err(Error::host_io("read", source))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(Error::host_io("create directory", parent))?;
    }
    if meta.is_dir() {
        match std::fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::host_io("create directory", target)(e)),
        }
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map_err(Error::host_io("create file", target))?;
    }
    let fail = |operation| {
        move |errno: nix::errno::Errno| Error::HostMount {
            operation,
            target: target.to_owned(),
            source: errno.into(),
        }
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail("bind-mount onto"))?;
    // Keep the mount out of the host's peer groups: what is mounted under
    // it later must not propagate back to the source.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        fail("make slave")(e)
    })?;
    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            fail("remount read-only")(e)
        })?;
    }
    Ok(())
}

/// Unmounts `target` (lazily: a QEMU or virtiofsd holding it open does not
/// block the teardown), keeping the mount point. A target that is not
/// mounted or does not exist is fine.
pub(crate) fn unmount(target: &Path) -> Result<(), Error> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::HostMount {
            operation: "unmount",
            target: target.to_owned(),
            source: e.into(),
        }),
    }
}

/// Unmounts `target` and removes the mount point.
pub(crate) fn unbind(target: &Path) -> Result<(), Error> {
    unmount(target)?;
    let removed = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(Error::host_io("remove mount point", target))
}

/// This process's mount table, in mount order.
pub(crate) fn mount_table() -> Result<Vec<vc_mountinfo::MountInfo>, Error> {
    vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO)).map_err(|e| {
        Error::HostIo {
            operation: "read the mount table",
            path: vc_mountinfo::PROC_SELF_MOUNTINFO.into(),
            source: std::io::Error::other(e),
        }
    })
}

/// Whether `path` is a mount point in this process's mount namespace.
#[cfg(test)]
pub(crate) fn is_mounted(path: &Path) -> bool {
    mount_table()
        .map(|table| table.iter().any(|m| m.mount_point == path))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use vc_test_support::require_root;

    #[test]
    fn binds_read_only_and_unbinds() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "hello").unwrap();
        let target = dir.path().join("share/c1/rootfs");
        bind(&src, &target, true).unwrap();
        assert!(is_mounted(&target));
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "hello");
        let write = std::fs::write(target.join("g"), "x").unwrap_err();
        assert_eq!(write.raw_os_error(), Some(libc::EROFS));
        unbind(&target).unwrap();
        assert!(!is_mounted(&target));
        assert!(!target.exists());
        assert!(src.join("f").exists(), "the source is untouched");
        unbind(&target).unwrap();
    }

    #[test]
    fn binds_a_file() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("hosts");
        std::fs::write(&src, "127.0.0.1 localhost\n").unwrap();
        let target = dir.path().join("share/c1/mounts/0-hosts");
        bind(&src, &target, false).unwrap();
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "127.0.0.1 localhost\n"
        );
        unbind(&target).unwrap();
        assert!(!target.exists());
    }

    #[test]
    fn a_missing_source_is_an_error_and_mounts_nothing() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        assert!(matches!(
            bind(&dir.path().join("missing"), &target, false),
            Err(Error::HostIo { .. })
        ));
        assert!(!is_mounted(&target));
    }
}
