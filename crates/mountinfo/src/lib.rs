//! Parsers for the kernel's mount tables: `/proc/<pid>/mountinfo` and
//! `/proc/mounts` (`/proc/<pid>/mounts`).
//!
//! Pure functions over text, so callers test them on fixture files; two
//! small readers for the real files. The kernel escapes space, tab,
//! newline and backslash in paths as octal (`\040`, `\011`, `\012`,
//! `\134`); every path here is unescaped, and kept as raw bytes
//! (`PathBuf`), since Linux paths need not be UTF-8. (The `procfs` crate
//! leaves `\040` escaped in `/proc/mounts` and everything escaped in
//! mountinfo, which is why this crate exists.)
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//!
//! let text = "36 25 0:32 / /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/vdb rw\n";
//! let mounts = vc_mountinfo::parse_mountinfo(text)?;
//! assert_eq!(mounts[0].mount_point, Path::new("/mnt/my disk"));
//! assert_eq!(mounts[0].fs_type, "ext4");
//! assert_eq!(mounts[0].source, Path::new("/dev/vdb"));
//! # Ok::<(), vc_mountinfo::Error>(())
//! ```

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The usual place of this process's mountinfo.
pub const PROC_SELF_MOUNTINFO: &str = "/proc/self/mountinfo";
/// The usual place of this process's mount table.
pub const PROC_MOUNTS: &str = "/proc/mounts";

/// What can go wrong reading a mount table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A line does not have the fields of its format.
    #[error("malformed line {line_number} of the mount table: {line:?}")]
    MalformedLine {
        /// 1-based line number.
        line_number: usize,
        /// The line.
        line: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One line of `/proc/<pid>/mountinfo` (see `proc(5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique id of the mount.
    pub mount_id: u32,
    /// Id of the parent mount.
    pub parent_id: u32,
    /// Device major number (`st_dev`).
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Root of the mount within its filesystem (a bind mount of a
    /// subdirectory shows that subdirectory).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Optional fields (`shared:1`, `master:2`, ...).
    pub optional_fields: Vec<String>,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source (a device path, or e.g. `overlay`, `tmpfs`).
    pub source: PathBuf,
    /// Per-superblock options (`lowerdir=...` for overlay).
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// The value of a `key=value` superblock option.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        option_value(&self.super_options, key)
    }
}

/// One line of `/proc/mounts` (see `fstab(5)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount source.
    pub source: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount options, superblock ones included (`lowerdir=...`).
    pub options: Vec<String>,
}

impl MountEntry {
    /// The value of a `key=value` option.
    pub fn option(&self, key: &str) -> Option<&str> {
        option_value(&self.options, key)
    }
}

fn option_value<'a>(options: &'a [String], key: &str) -> Option<&'a str> {
    options
        .iter()
        .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Decodes the kernel's octal escapes (`\040` and friends) into raw bytes.
/// A backslash not followed by three octal digits stays as it is.
pub fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = u32::from(digits[0] - b'0') * 64
                + u32::from(digits[1] - b'0') * 8
                + u32::from(digits[2] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn split_options(field: &str) -> Vec<String> {
    if field.is_empty() {
        return Vec::new();
    }
    field.split(',').map(unescape_string).collect()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            parse_mountinfo_line(line).ok_or_else(|| Error::MalformedLine {
                line_number: i + 1,
                line: line.to_owned(),
            })
        })
        .collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let root = unescape_path(fields.next()?);
    let mount_point = unescape_path(fields.next()?);
    let mount_options = split_options(fields.next()?);
    let optional_fields = fields
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let mut tail = after.split(' ');
    let fs_type = unescape_string(tail.next()?);
    let source = unescape_path(tail.next()?);
    let super_options = split_options(tail.next().unwrap_or(""));
    Some(MountInfo {
        mount_id,
        parent_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

/// Parses `/proc/mounts` text.
pub fn parse_mounts(text: &str) -> Result<Vec<MountEntry>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let mut f = line.split(' ');
            let parsed = (|| {
                Some(MountEntry {
                    source: unescape_path(f.next()?),
                    mount_point: unescape_path(f.next()?),
                    fs_type: unescape_string(f.next()?),
                    options: split_options(f.next()?),
                })
            })();
            parsed.ok_or_else(|| Error::MalformedLine {
                line_number: i + 1,
                line: line.to_owned(),
            })
        })
        .collect()
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads and parses a mountinfo file (e.g. [`PROC_SELF_MOUNTINFO`]).
pub fn read_mountinfo(path: &Path) -> Result<Vec<MountInfo>, Error> {
    parse_mountinfo(&read(path)?)
}

/// Reads and parses a mounts file (e.g. [`PROC_MOUNTS`]).
pub fn read_mounts(path: &Path) -> Result<Vec<MountEntry>, Error> {
    parse_mounts(&read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 master:3 - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 25 0:50 / /run/containerd/x/rootfs rw - overlay overlay rw,lowerdir=/var/lib/a/1/fs:/var/lib/a/2/fs,upperdir=/u,workdir=/w
100 25 7:3 /sub\\040dir /mnt/with\\040space\\011tab ro - erofs /dev/loop3 ro
";

    #[test]
    fn parses_mountinfo_fields() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].mount_id, 32);
        assert_eq!(m[1].parent_id, 31);
        assert_eq!((m[1].major, m[1].minor), (0, 29));
        assert_eq!(m[1].optional_fields, ["shared:9", "master:3"]);
        assert_eq!(m[1].super_options, ["rw", "cpu", "cpuacct"]);
        assert_eq!(m[2].fs_type, "cgroup2");
        assert_eq!(
            m[3].super_option("lowerdir"),
            Some("/var/lib/a/1/fs:/var/lib/a/2/fs")
        );
        assert_eq!(m[3].super_option("upper"), None);
    }

    #[test]
    fn unescapes_paths() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m[4].root, Path::new("/sub dir"));
        assert_eq!(m[4].mount_point, Path::new("/mnt/with space\ttab"));
        assert_eq!(m[4].source, Path::new("/dev/loop3"));
        assert_eq!(unescape("a\\134b"), b"a\\b");
        assert_eq!(unescape("back\\slash"), b"back\\slash");
        assert_eq!(unescape("end\\04"), b"end\\04");
        assert_eq!(unescape("end\\"), b"end\\");
        assert_eq!(unescape("\\377"), [0xff]);
        assert_eq!(unescape("\\400"), b"\\400");
    }

    #[test]
    fn parses_proc_mounts() {
        let text = "overlay /run/c/rootfs overlay rw,lowerdir=/l\\0401:/l2,upperdir=/u 0 0\n\
                    /dev/loop0 /mnt/layer\\040one erofs ro,relatime 0 0\n";
        let m = parse_mounts(text).unwrap();
        assert_eq!(m[0].option("lowerdir"), Some("/l 1:/l2"));
        assert_eq!(m[1].mount_point, Path::new("/mnt/layer one"));
        assert_eq!(m[1].fs_type, "erofs");
        assert_eq!(m[1].options, ["ro", "relatime"]);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let err = parse_mountinfo("31 23 0:28 / /x rw - tmpfs tmpfs rw\ngarbage\n").unwrap_err();
        assert!(
            matches!(err, Error::MalformedLine { line_number: 2, .. }),
            "{err}"
        );
        assert!(matches!(
            parse_mounts("only two\n"),
            Err(Error::MalformedLine { line_number: 1, .. })
        ));
        assert!(matches!(
            read_mounts(Path::new("/nonexistent/mounts")),
            Err(Error::Read { .. })
        ));
    }

    #[test]
    fn reads_this_process_tables() {
        let info = read_mountinfo(Path::new(PROC_SELF_MOUNTINFO)).unwrap();
        assert!(info.iter().any(|m| m.mount_point == Path::new("/")));
        let mounts = read_mounts(Path::new(PROC_MOUNTS)).unwrap();
        assert!(mounts.iter().any(|m| m.fs_type == "proc"));
    }
}
