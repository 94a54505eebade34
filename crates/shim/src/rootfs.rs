//! containerd's rootfs mounts (from its snapshotter: an overlay, a bind,
//! ...) mounted on `<bundle>/rootfs`, where the SDK shares them into the
//! VM from, and unmounted when the task goes (or by `delete` after a
//! shim died).

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::{Error, Result};

/// One mount as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    /// `overlay`, `bind`, `ext4`, ...
    pub fs_type: String,
    /// What is mounted.
    pub source: String,
    /// fstab-style options.
    pub options: Vec<String>,
}

/// A mount's flags and the options left for the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    flags: MsFlags,
    /// Set after a bind mount by a remount (a bind ignores them).
    remount_flags: MsFlags,
    data: String,
}

fn parse(m: &RootfsMount) -> Parsed {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in &m.options {
        let (set, clear) = match option.as_str() {
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    if m.fs_type == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    let remount_flags = if flags.contains(MsFlags::MS_BIND) {
        flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)
    } else {
        MsFlags::empty()
    };
    Parsed {
        flags,
        remount_flags,
        data: data.join(","),
    }
}

/// Mounts `mounts` in order on `target` (created if missing). On a
/// failure, what was mounted is unmounted again.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(Error::io("create directory", target))?;
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..done {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &RootfsMount, target: &Path) -> Result<()> {
    let parsed = parse(m);
    let fail = |source| Error::Mount {
        operation: "mount the rootfs on",
        target: target.to_owned(),
        source,
    };
    let data = (!parsed.data.is_empty()).then_some(parsed.data.as_str());
    mount(
        Some(m.source.as_str()),
        target,
        Some(m.fs_type.as_str()),
        parsed.flags,
        data,
    )
    .map_err(fail)?;
    if !parsed.remount_flags.is_empty() {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | parsed.remount_flags;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(fail(e));
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target`, top first, until nothing is;
/// a target that does not exist or has nothing mounted is fine.
pub fn unmount_all(target: &Path) -> Result<()> {
    // Bounded: a mount that keeps coming back is an error, not a hang.
    for _ in 0..64 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(()),
            Err(nix::Error::EBUSY) => {
                // A user (a process with its cwd there) keeps it: detach,
                // the kernel frees it when the user goes.
                umount2(target, MntFlags::MNT_DETACH).map_err(|source| Error::Mount {
                    operation: "unmount the rootfs at",
                    target: target.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Error::Mount {
                    operation: "unmount the rootfs at",
                    target: target.to_owned(),
                    source,
                });
            }
        }
    }
    Err(Error::Mount {
        operation: "unmount the rootfs at",
        target: target.to_owned(),
        source: nix::Error::EBUSY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(fs_type: &str, options: &[&str]) -> RootfsMount {
        RootfsMount {
            fs_type: fs_type.into(),
            source: "src".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn an_overlays_options_are_its_data_and_flags_are_flags() {
        let p = parse(&m(
            "overlay",
            &[
                "index=off",
                "nosuid",
                "lowerdir=/l1:/l2",
                "upperdir=/u",
                "workdir=/w",
            ],
        ));
        assert_eq!(p.flags, MsFlags::MS_NOSUID);
        assert_eq!(p.remount_flags, MsFlags::empty());
        assert_eq!(p.data, "index=off,lowerdir=/l1:/l2,upperdir=/u,workdir=/w");
    }

    #[test]
    fn a_read_only_bind_is_remounted_read_only() {
        let p = parse(&m("bind", &["rbind", "ro"]));
        assert!(p.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(p.remount_flags, MsFlags::MS_RDONLY);
        assert_eq!(p.data, "");
        let rw = parse(&m("none", &["bind", "ro", "rw"]));
        assert_eq!(rw.flags, MsFlags::MS_BIND);
        assert_eq!(rw.remount_flags, MsFlags::empty());
    }

    #[test]
    fn a_bind_mount_is_mounted_read_only_and_unmounted() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test mounts: run it as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, target) = (dir.path().join("src"), dir.path().join("rootfs"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let bind = RootfsMount {
            fs_type: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        };
        mount_all(&[bind], &target).unwrap();
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "x");
        assert!(
            std::fs::write(target.join("g"), "y").is_err(),
            "must be read-only"
        );
        unmount_all(&target).unwrap();
        assert!(!target.join("f").exists());
        unmount_all(&target).unwrap();
        unmount_all(&dir.path().join("never")).unwrap();
        // A failed mount leaves nothing mounted.
        let bad = RootfsMount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/nonexistent-vc-lower".into()],
        };
        assert!(matches!(
            mount_all(&[bad], &target),
            Err(Error::Mount { .. })
        ));
        assert!(std::fs::read_dir(&target).unwrap().next().is_none());
    }
}
