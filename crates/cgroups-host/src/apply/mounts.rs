//! Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`,
//! and the checks that a mount is a writable cgroupfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use nix::sys::statvfs::{FsFlags, statvfs};
use serde::{Deserialize, Serialize};
use vc_mountinfo::{MountInfo, parse_mountinfo};

use crate::error::Error;

/// The cgroup v1 controllers this crate uses.
pub const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "devices"];

/// Where each cgroup v1 controller is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct V1Mounts {
    mounts: BTreeMap<String, PathBuf>,
}

impl V1Mounts {
    /// The v1 mounts listed in mountinfo text (the first mount of each
    /// controller wins, as in the kernel's own lookup order).
    pub fn from_mountinfo(text: &str) -> Result<Self, Error> {
        Ok(Self::from_mounts(&parse_mountinfo(text)?))
    }

    /// The v1 mounts among parsed mountinfo entries.
    pub fn from_mounts(table: &[MountInfo]) -> Self {
        let mut mounts = BTreeMap::new();
        for m in table {
            if m.fs_type != "cgroup" {
                continue;
            }
            for controller in V1_CONTROLLERS {
                if m.super_options.iter().any(|o| o == controller) {
                    mounts
                        .entry(controller.to_owned())
                        .or_insert_with(|| m.mount_point.clone());
                }
            }
        }
        V1Mounts { mounts }
    }

    /// The v1 mounts of this process (`/proc/self/mountinfo`).
    pub fn discover() -> Result<Self, Error> {
        Self::discover_from(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
    }

    /// The v1 mounts listed in a mountinfo file.
    pub fn discover_from(mountinfo: &Path) -> Result<Self, Error> {
        Ok(Self::from_mounts(&vc_mountinfo::read_mountinfo(mountinfo)?))
    }

    /// Explicit mount points, e.g. `[("cpu", "/sys/fs/cgroup/cpu"), ...]`.
    pub fn from_pairs<I, S, P>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, P)>,
        S: Into<String>,
        P: Into<PathBuf>,
    {
        V1Mounts {
            mounts: pairs
                .into_iter()
                .map(|(c, p)| (c.into(), p.into()))
                .collect(),
        }
    }

    /// The mount point of `controller`, if mounted.
    pub fn get(&self, controller: &str) -> Option<&Path> {
        self.mounts.get(controller).map(PathBuf::as_path)
    }

    /// Every controller and its mount point.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.mounts.iter().map(|(c, p)| (c.as_str(), p.as_path()))
    }
}

/// The first cgroup2 mount point among parsed mountinfo entries.
pub fn cgroup2_mount(table: &[MountInfo]) -> Option<PathBuf> {
    table
        .iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point.clone())
}

/// Checks that `path` is a writable mount of the given cgroup version.
pub(crate) fn check_cgroupfs(path: &Path, v2: bool) -> Result<(), Error> {
    let fs = statfs(path).map_err(|errno| Error::CgroupfsMissing {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    let (magic, expected) = if v2 {
        (CGROUP2_SUPER_MAGIC, "cgroup2")
    } else {
        (CGROUP_SUPER_MAGIC, "cgroup")
    };
    if fs.filesystem_type() != magic {
        return Err(Error::NotACgroupfs {
            path: path.to_owned(),
            expected,
        });
    }
    let vfs = statvfs(path).map_err(|errno| Error::CgroupfsMissing {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    if vfs.flags().contains(FsFlags::ST_RDONLY) {
        return Err(Error::CgroupfsReadOnly {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 31 0:36 / /mnt/my\\040pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn finds_v1_controllers_and_cgroup2() {
        let m = V1Mounts::from_mountinfo(FIXTURE).unwrap();
        assert_eq!(m.get("cpu"), Some(Path::new("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(
            m.get("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(m.get("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        // The first mount of a controller wins.
        assert_eq!(m.get("pids"), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(m.get("freezer"), None);
        assert_eq!(
            cgroup2_mount(&parse_mountinfo(FIXTURE).unwrap()),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn controller_mounts_with_spaces_are_found() {
        let m = V1Mounts::from_mountinfo(
            "99 31 0:36 / /mnt/my\\040pids rw,relatime - cgroup cgroup rw,pids\n",
        )
        .unwrap();
        assert_eq!(m.get("pids"), Some(Path::new("/mnt/my pids")));
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroupfs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_cgroupfs(dir.path(), false),
            Err(Error::NotACgroupfs {
                expected: "cgroup",
                ..
            })
        ));
        assert!(matches!(
            check_cgroupfs(&dir.path().join("missing"), true),
            Err(Error::CgroupfsMissing { .. })
        ));
    }
}
