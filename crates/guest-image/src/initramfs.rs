//! The initramfs as a list of entries, written as a cpio `newc` archive.
//!
//! Entries are kept in memory or streamed from host files; parent
//! directories are added automatically, and every entry is owned by root
//! with mtime 0 so the same inputs give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io_err};

/// Where the content of a regular file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on the host, read when the archive is written.
    Host(PathBuf),
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

impl FileSource {
    /// The content (reads host files).
    pub fn read(&self) -> Result<Vec<u8>> {
        match self {
            Self::Host(path) => std::fs::read(path).map_err(io_err("read", path)),
            Self::Bytes(bytes) => Ok(bytes.clone()),
        }
    }
}

impl From<PathBuf> for FileSource {
    fn from(path: PathBuf) -> Self {
        Self::Host(path)
    }
}

impl From<&Path> for FileSource {
    fn from(path: &Path) -> Self {
        Self::Host(path.to_owned())
    }
}

impl From<Vec<u8>> for FileSource {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes)
    }
}

/// The kind of an archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    File(FileSource),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One entry: its kind and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o755`), without the file-type bits.
    pub mode: u32,
}

/// An initramfs being assembled: absolute paths to entries.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// Checks an absolute in-image path and returns it without the leading `/`.
pub fn normalize_image_path(path: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidImagePath {
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(invalid("not absolute"));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(invalid("contains `.` or `..`"));
    }
    if parts.is_empty() {
        return Err(invalid("is the root"));
    }
    Ok(parts.join("/"))
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry at `path` (absolute), with its parent directories.
    /// A path may be added once; directories may repeat.
    pub fn add(&mut self, path: &str, kind: EntryKind, mode: u32) -> Result<()> {
        let name = normalize_image_path(path)?;
        let mut parent = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                Some(Entry {
                    kind: EntryKind::Directory,
                    ..
                }) => {}
                Some(_) => {
                    return Err(Error::InvalidImagePath {
                        path: path.to_owned(),
                        reason: "a parent is not a directory",
                    });
                }
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            kind: EntryKind::Directory,
                            mode: 0o755,
                        },
                    );
                }
            }
        }
        let entry = Entry {
            kind,
            mode: mode & 0o7777,
        };
        match self.entries.get(&name) {
            None => {}
            Some(existing)
                if existing.kind == EntryKind::Directory && entry.kind == EntryKind::Directory => {}
            Some(_) => {
                return Err(Error::InvalidImagePath {
                    path: path.to_owned(),
                    reason: "added twice",
                });
            }
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.add(path, EntryKind::Directory, mode)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, source: impl Into<FileSource>, mode: u32) -> Result<()> {
        self.add(path, EntryKind::File(source.into()), mode)
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize_image_path(path)
            .ok()
            .and_then(|p| self.entries.get(&p))
    }

    /// All entries, parents before children.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Writes the archive (cpio newc, entries sorted, parents first).
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<W> {
        let write_err = |name: &str| {
            let path = PathBuf::from(format!("/{name}"));
            move |source: io::Error| Error::Io {
                op: "write initramfs entry",
                path,
                source,
            }
        };
        for (index, (name, entry)) in self.entries.iter().enumerate() {
            // Inode 0 is reserved for the trailer by some readers.
            let ino =
                u32::try_from(index + 1).map_err(|_| Error::FileTooLarge { path: name.clone() })?;
            let builder = cpio::newc::Builder::new(name)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (builder, content): (_, Vec<u8>) = match &entry.kind {
                EntryKind::Directory => (builder.mode(0o040000 | entry.mode).nlink(2), Vec::new()),
                EntryKind::File(source) => (builder.mode(0o100000 | entry.mode), source.read()?),
                EntryKind::Symlink(target) => {
                    (builder.mode(0o120000 | 0o777), target.clone().into_bytes())
                }
                EntryKind::CharDevice { major, minor } => (
                    builder
                        .mode(0o020000 | entry.mode)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    Vec::new(),
                ),
            };
            let size = u32::try_from(content.len())
                .map_err(|_| Error::FileTooLarge { path: name.clone() })?;
            let mut writer = builder.write(out, size);
            writer.write_all(&content).map_err(write_err(name))?;
            out = writer.finish().map_err(write_err(name))?;
        }
        cpio::newc::trailer(out).map_err(write_err("TRAILER!!!"))
    }
}

/// One entry read back from an archive (for tests and inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedEntry {
    /// Path without the leading `/`.
    pub name: String,
    /// Full mode, file-type bits included.
    pub mode: u32,
    /// `(major, minor)` of a device node.
    pub rdev: (u32, u32),
    /// The content.
    pub data: Vec<u8>,
}

/// Reads every entry of a cpio newc archive.
pub fn read_archive(mut input: impl Read) -> io::Result<Vec<ArchivedEntry>> {
    let mut entries = Vec::new();
    loop {
        let mut reader = cpio::newc::Reader::new(input)?;
        if reader.entry().is_trailer() {
            return Ok(entries);
        }
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        let e = reader.entry();
        entries.push(ArchivedEntry {
            name: e.name().to_owned(),
            mode: e.mode(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data,
        });
        input = reader.finish()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_clean() {
        assert_eq!(normalize_image_path("/a//b/").unwrap(), "a/b");
        for bad in ["a/b", "/a/../b", "/", "/./a"] {
            assert!(
                matches!(
                    normalize_image_path(bad),
                    Err(Error::InvalidImagePath { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn parents_are_created_and_duplicates_rejected() {
        let mut fs = Initramfs::new();
        fs.file("/lib/modules/vc/x.ko", b"ko".to_vec(), 0o644)
            .unwrap();
        assert_eq!(fs.get("/lib").unwrap().kind, EntryKind::Directory);
        assert_eq!(
            fs.get("/lib/modules/vc").unwrap().kind,
            EntryKind::Directory
        );
        fs.dir("/lib/modules", 0o755).unwrap();
        let err = fs
            .file("/lib/modules/vc/x.ko", b"again".to_vec(), 0o644)
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidImagePath {
                reason: "added twice",
                ..
            }
        ));
        let err = fs
            .file("/lib/modules/vc/x.ko/y", b"".to_vec(), 0o644)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidImagePath { .. }));
    }

    #[test]
    fn archive_round_trips_with_modes_and_devices() {
        let mut fs = Initramfs::new();
        fs.file("/init", b"#!/bin/sh\n".to_vec(), 0o755).unwrap();
        fs.add(
            "/dev/console",
            EntryKind::CharDevice { major: 5, minor: 1 },
            0o600,
        )
        .unwrap();
        fs.add("/bin/sh", EntryKind::Symlink("busybox".into()), 0o777)
            .unwrap();
        fs.file("/etc/odd", vec![1, 2, 3], 0o640).unwrap();
        let bytes = fs.write_to(Vec::new()).unwrap();
        let entries = read_archive(&bytes[..]).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/odd",
                "init"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("init").data, b"#!/bin/sh\n");
        assert_eq!(get("dev/console").mode, 0o020600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("bin/sh").mode, 0o120777);
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("etc").mode, 0o040755);
        assert_eq!(get("etc/odd").data, [1, 2, 3]);
        // Deterministic: the same entries give the same bytes.
        assert_eq!(fs.write_to(Vec::new()).unwrap(), bytes);
    }
}
