//! Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`,
//! and the checks that a mount is a writable cgroupfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use nix::sys::statvfs::{FsFlags, statvfs};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The usual place of `/proc/self/mountinfo`.
pub const PROC_SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of `/proc/<pid>/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem (field 4).
    pub root: PathBuf,
    /// Mount point (field 5), octal escapes decoded.
    pub mount_point: PathBuf,
    /// Filesystem type (after the ` - ` separator).
    pub fs_type: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options (`rw,cpu,cpuacct`).
    pub super_options: Vec<String>,
}

/// Decodes the octal escapes (`\040` for a space) that the kernel uses in
/// mountinfo and mounts paths.
pub fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text. Malformed lines are skipped: the file is written
/// by the kernel, and one odd line must not hide the cgroup mounts.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            if fields.len() < 6 {
                return None;
            }
            let mut tail = after.split(' ');
            let fs_type = tail.next()?.to_owned();
            let source = unescape_mount_field(tail.next()?);
            let super_options = tail
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_owned)
                .collect();
            Some(MountInfo {
                root: PathBuf::from(unescape_mount_field(fields[3])),
                mount_point: PathBuf::from(unescape_mount_field(fields[4])),
                fs_type,
                source,
                super_options,
            })
        })
        .collect()
}

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
    pub fn from_mountinfo(text: &str) -> Self {
        let mut mounts = BTreeMap::new();
        for m in parse_mountinfo(text) {
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
        Self::discover_from(Path::new(PROC_SELF_MOUNTINFO))
    }

    /// The v1 mounts listed in a mountinfo file.
    pub fn discover_from(mountinfo: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(mountinfo).map_err(|source| Error::ReadCgroupFile {
            path: mountinfo.to_owned(),
            source,
        })?;
        Ok(Self::from_mountinfo(&text))
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

/// The first cgroup2 mount point in mountinfo text.
pub fn cgroup2_mount_from_mountinfo(text: &str) -> Option<PathBuf> {
    parse_mountinfo(text)
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
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
garbage line
";

    #[test]
    fn finds_v1_controllers_and_cgroup2() {
        let m = V1Mounts::from_mountinfo(FIXTURE);
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
            cgroup2_mount_from_mountinfo(FIXTURE),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn decodes_escapes_and_optional_fields() {
        let all = parse_mountinfo(FIXTURE);
        assert_eq!(all.len(), 9, "the garbage line is skipped");
        let spaced = all
            .iter()
            .find(|m| m.mount_point.ends_with("my pids"))
            .unwrap();
        assert_eq!(spaced.mount_point, Path::new("/mnt/my pids"));
        let shared = &all[1];
        assert_eq!(shared.fs_type, "cgroup");
        assert_eq!(shared.super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(unescape_mount_field("a\\011b\\134c"), "a\tb\\c");
        assert_eq!(unescape_mount_field("trailing\\04"), "trailing\\04");
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
