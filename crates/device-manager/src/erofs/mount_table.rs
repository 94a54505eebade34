//! The mount table the discovery reads: `/proc/<pid>/mountinfo` or
//! `/proc/mounts`, parsed by `vc-mountinfo`, and the lookup of the mount
//! a path is on.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Which mount table file to read, and in which format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", content = "path", rename_all = "snake_case")]
pub enum MountTableFile {
    /// `/proc/<pid>/mountinfo`: preferred, as it also says which
    /// directory of a filesystem a mount shows (bind mounts).
    MountInfo(PathBuf),
    /// `/proc/mounts`: no bind-mount roots, so a bind mount of a
    /// subdirectory of a layer looks like the whole layer.
    Mounts(PathBuf),
}

impl Default for MountTableFile {
    fn default() -> Self {
        Self::MountInfo(PathBuf::from(vc_mountinfo::PROC_SELF_MOUNTINFO))
    }
}

/// One mount, from either format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The mount source (`/dev/loop0`, `overlay`, a file for file-backed EROFS).
    pub source: PathBuf,
    /// The filesystem type.
    pub fs_type: String,
    /// The directory of the filesystem the mount shows (`/` unless it is
    /// a bind mount of a subdirectory); `None` when the table does not
    /// say (`/proc/mounts`).
    pub root: Option<PathBuf>,
    /// The filesystem's options (mountinfo's super options; all options
    /// for `/proc/mounts`), unescaped.
    pub options: Vec<String>,
}

impl Mount {
    /// The value of a `key=value` option.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// A mount table, in the kernel's order (parents before the mounts on top).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    mounts: Vec<Mount>,
}

impl MountTable {
    /// Reads and parses `file`.
    pub fn read(file: &MountTableFile) -> Result<Self> {
        Ok(match file {
            MountTableFile::MountInfo(path) => {
                Self::from_mountinfo(vc_mountinfo::read_mountinfo(path)?)
            }
            MountTableFile::Mounts(path) => Self::from_mounts(vc_mountinfo::read_mounts(path)?),
        })
    }

    /// Parses mountinfo text.
    pub fn parse_mountinfo(text: &str) -> Result<Self> {
        Ok(Self::from_mountinfo(vc_mountinfo::parse_mountinfo(text)?))
    }

    /// Parses `/proc/mounts` text.
    pub fn parse_mounts(text: &str) -> Result<Self> {
        Ok(Self::from_mounts(vc_mountinfo::parse_mounts(text)?))
    }

    /// From parsed mountinfo lines.
    pub fn from_mountinfo(lines: Vec<vc_mountinfo::MountInfo>) -> Self {
        Self {
            mounts: lines
                .into_iter()
                .map(|m| Mount {
                    mount_point: m.mount_point,
                    source: m.source,
                    fs_type: m.fs_type,
                    root: Some(m.root),
                    options: m.super_options,
                })
                .collect(),
        }
    }

    /// From parsed `/proc/mounts` lines.
    pub fn from_mounts(lines: Vec<vc_mountinfo::MountEntry>) -> Self {
        Self {
            mounts: lines
                .into_iter()
                .map(|m| Mount {
                    mount_point: m.mount_point,
                    source: m.source,
                    fs_type: m.fs_type,
                    root: None,
                    options: m.options,
                })
                .collect(),
        }
    }

    /// The mounts, in table order.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The mount `path` is on: the last mount in table order whose mount
    /// point is `path` or one of its ancestors. (A later mount on an
    /// ancestor hides earlier mounts below it, and a mount stacked on the
    /// same point hides the one under it.) `path` must be normalized
    /// (see [`normalize`]).
    pub fn mount_of(&self, path: &Path) -> Option<&Mount> {
        self.mounts
            .iter()
            .rev()
            .find(|m| path.starts_with(&m.mount_point))
    }
}

/// `path` without `.` components, repeated or trailing slashes; `None`
/// if it is relative or has `..` (which only the filesystem can resolve).
pub fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
30 22 0:40 / /mnt/a rw - tmpfs tmpfs rw
31 30 7:0 / /mnt/a/b ro - erofs /dev/loop0 ro
32 22 0:41 / /mnt rw - tmpfs tmpfs rw
33 22 7:1 /sub /srv/x ro - erofs /dev/loop1 ro
34 33 0:42 / /srv/x rw - tmpfs tmpfs rw
";

    #[test]
    fn the_last_covering_mount_wins() {
        let table = MountTable::parse_mountinfo(MOUNTINFO).unwrap();
        let of = |p: &str| table.mount_of(Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(of("/etc"), Path::new("/"));
        // /mnt (mount 32) was mounted over /mnt/a and /mnt/a/b: they are hidden.
        assert_eq!(of("/mnt/a/b/c"), Path::new("/mnt"));
        // Stacked on the same point: the top one.
        let top = table.mount_of(Path::new("/srv/x/y")).unwrap();
        assert_eq!(top.fs_type, "tmpfs");
        // Component-wise: /srvx is not under /srv.
        assert_eq!(of("/mnt2"), Path::new("/"));
        assert_eq!(table.mounts()[4].root.as_deref(), Some(Path::new("/sub")));
    }

    #[test]
    fn proc_mounts_has_no_roots() {
        let table =
            MountTable::parse_mounts("/dev/loop0 /a\\040b erofs ro,relatime 0 0\n").unwrap();
        let m = table.mount_of(Path::new("/a b/c")).unwrap();
        assert_eq!(m.root, None);
        assert_eq!(m.source, Path::new("/dev/loop0"));
        assert_eq!(m.option("ro"), None);
        assert!(table.mount_of(Path::new("/elsewhere")).is_none());
    }

    #[test]
    fn normalizes_lexically_only() {
        assert_eq!(
            normalize(Path::new("/a//b/./c/")).unwrap(),
            Path::new("/a/b/c")
        );
        assert_eq!(normalize(Path::new("/")).unwrap(), Path::new("/"));
        assert_eq!(normalize(Path::new("a/b")), None);
        assert_eq!(normalize(Path::new("/a/../b")), None);
    }
}
