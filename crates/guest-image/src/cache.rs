//! The image cache: one dir per input key, published atomically.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::builder::{GuestImage, MANIFEST_FILE};
use crate::error::{Error, Result, io_err};

/// Name of the cache dir inside a cargo target dir.
pub const CACHE_DIR_NAME: &str = "vc-guest-image";

/// A dir of built images, `<root>/<key>/{vmlinux,initramfs.cpio,manifest.json}`.
///
/// An image is built in a temp dir under the root and renamed to its key,
/// so no reader ever sees half an image; builders of one key take a file
/// lock, so concurrent builds of the same inputs happen once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    /// A cache rooted at `root` (created on first build).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache in the cargo target dir: `$CARGO_TARGET_DIR` when set,
    /// else the target dir holding the running executable (found by
    /// cargo's `CACHEDIR.TAG`), else `./target`.
    pub fn in_target_dir() -> Self {
        Self::new(cargo_target_dir().join(CACHE_DIR_NAME))
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dir an image with `key` lives in.
    pub fn image_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Returns the image for `key`, calling `build` to write it into a
    /// fresh dir first when it is not cached. `build` must write
    /// `manifest.json` last.
    pub fn get_or_build(
        &self,
        key: &str,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<GuestImage> {
        let dir = self.image_dir(key);
        if dir.join(MANIFEST_FILE).is_file() {
            return GuestImage::open(&dir);
        }
        std::fs::create_dir_all(&self.root).map_err(io_err("create dir", &self.root))?;
        let lock_path = self.root.join(format!(".{key}.lock"));
        let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
        // Another builder may have finished while we waited for the lock.
        if dir.join(MANIFEST_FILE).is_file() {
            return GuestImage::open(&dir);
        }
        let prefix = format!(".build-{key}-");
        self.remove_stale_builds(&prefix)?;
        if dir.exists() {
            // A dir without a manifest was not written by a builder: replace it.
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&self.root)
            .map_err(io_err("create temp dir in", &self.root))?;
        build(tmp.path())?;
        if !tmp.path().join(MANIFEST_FILE).is_file() {
            return Err(Error::Io {
                op: "build (no manifest written)",
                path: tmp.path().to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        // Temp dirs start as 0700; images are for any user's VMM to read.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", tmp.path()))?;
        std::fs::rename(tmp.path(), &dir).map_err(io_err("rename", &dir))?;
        // The rename moved the dir: nothing is left for TempDir to delete.
        let _ = tmp.keep();
        drop(lock);
        GuestImage::open(&dir)
    }

    /// Removes temp dirs left by builds that were killed (we hold the lock,
    /// so no live build of this key owns them).
    fn remove_stale_builds(&self, prefix: &str) -> Result<()> {
        let entries = std::fs::read_dir(&self.root).map_err(io_err("read dir", &self.root))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix))
            {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }
}

/// The cargo target dir this process belongs to.
/// The cargo target dir: `$CARGO_TARGET_DIR` when set (relative to the
/// current dir), else the target dir holding the running executable
/// (found by cargo's `CACHEDIR.TAG`: right for tests, benches and `cargo
/// run`), else `./target`. [`ImageCache::in_target_dir`] and the test
/// fixtures find `make guest-image`'s output through it.
pub fn cargo_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir().unwrap_or_default().join(dir)
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            if dir.join("CACHEDIR.TAG").is_file() {
                return dir.to_owned();
            }
        }
    }
    std::env::current_dir().unwrap_or_default().join("target")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Manifest;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fake_build(dir: &Path, key: &str) -> Result<()> {
        std::fs::write(dir.join("vmlinux"), b"k").unwrap();
        std::fs::write(dir.join("initramfs.cpio"), b"i").unwrap();
        let manifest = Manifest {
            format: "test".into(),
            key: key.into(),
            kernel_version: "v".into(),
            vmlinuz: "/boot/x".into(),
            modules: vec![],
            extra_files: vec![],
        };
        std::fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        Ok(())
    }

    #[test]
    fn builds_once_then_hits() {
        let root = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(root.path().join("cache"));
        let builds = AtomicUsize::new(0);
        for _ in 0..3 {
            let image = cache
                .get_or_build("k1", |dir| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    fake_build(dir, "k1")
                })
                .unwrap();
            assert_eq!(image.dir, cache.image_dir("k1"));
            assert_eq!(image.manifest.key, "k1");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn concurrent_builders_build_once_and_leave_no_temp_dirs() {
        let root = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(root.path());
        let builds = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    cache
                        .get_or_build("k", |dir| {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            fake_build(dir, "k")
                        })
                        .unwrap()
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".build-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn failed_build_publishes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(root.path());
        let err = cache
            .get_or_build("k", |dir| {
                std::fs::write(dir.join("vmlinux"), b"half").unwrap();
                Err(Error::ModuleDependencyCycle { name: "x".into() })
            })
            .unwrap_err();
        assert!(matches!(err, Error::ModuleDependencyCycle { .. }));
        assert!(!cache.image_dir("k").exists());
        // A build that forgets its manifest is not published either.
        assert!(cache.get_or_build("k", |_| Ok(())).is_err());
        assert!(!cache.image_dir("k").exists());
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [".k.lock"]);
    }
}
