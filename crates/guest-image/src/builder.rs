//! Assembling a guest image (vmlinux + initramfs) from a kernel package,
//! an init binary, a module list and extra files.

use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::cache::ImageCache;
use crate::error::{Error, Result, io_err};
use crate::initramfs::{EntryKind, FileSource, Initramfs};
use crate::kernel::KernelPackage;
use crate::modules::{DEFAULT_MODULES, ModuleIndex};
use crate::{INIT_PATH, LOAD_ORDER_PATH, MODULES_DIR};

/// File name of the kernel in an image dir.
pub const VMLINUX_FILE: &str = "vmlinux";
/// File name of the initramfs in an image dir.
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
/// File name of the manifest in an image dir (written last).
pub const MANIFEST_FILE: &str = "manifest.json";

/// Bumped whenever the builder's output changes for the same inputs, so
/// cached images from an older builder are not reused.
const BUILDER_FORMAT: &str = concat!("vc-guest-image/", env!("CARGO_PKG_VERSION"), "/format-1");

/// A file to add to the image besides `/init` and the modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// Absolute path inside the image (`/bin/busybox`).
    pub image_path: String,
    /// Where its content comes from.
    pub source: FileSource,
    /// Permission bits (`0o755`).
    pub mode: u32,
}

/// What was built, recorded in the image dir as `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The builder format that wrote it.
    pub format: String,
    /// The cache key of the inputs.
    pub key: String,
    /// Kernel release the image boots.
    pub kernel_version: String,
    /// The bzImage `vmlinux` was unpacked from.
    pub vmlinuz: PathBuf,
    /// Module files bundled, in load order (as in `load-order`).
    pub modules: Vec<String>,
    /// Paths of the extra files.
    pub extra_files: Vec<String>,
}

/// A built image: a dir with the kernel, the initramfs and the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The dir holding the files.
    pub dir: PathBuf,
    /// The uncompressed kernel (ELF with a PVH entry), for `-kernel`.
    pub vmlinux: PathBuf,
    /// The cpio newc initramfs, for `-initrd`.
    pub initramfs: PathBuf,
    /// What the image holds.
    pub manifest: Manifest,
}

impl GuestImage {
    /// Opens an image dir written by a builder (its manifest must exist).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&path).map_err(io_err("read", &path))?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| Error::Io {
            op: "parse",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            vmlinux: dir.join(VMLINUX_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            manifest,
        })
    }

    /// Puts the image's files into `out` (hard links where possible, else
    /// copies), each file replaced atomically.
    pub fn copy_to(&self, out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(io_err("create dir", out))?;
        for name in [VMLINUX_FILE, INITRAMFS_FILE, MANIFEST_FILE] {
            let from = self.dir.join(name);
            let to = out.join(name);
            let tmp = out.join(format!(".{name}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&from, &tmp).is_err() {
                std::fs::copy(&from, &tmp).map_err(io_err("copy", &from))?;
            }
            std::fs::rename(&tmp, &to).map_err(io_err("rename", &to))?;
        }
        Self::open(out)
    }
}

/// Builds guest images; see the crate docs for the layout it writes.
#[derive(Debug, Clone)]
pub struct GuestImageBuilder {
    kernel: KernelPackage,
    init: FileSource,
    modules: Vec<String>,
    extra_files: Vec<ExtraFile>,
}

impl GuestImageBuilder {
    /// A builder for `kernel` with `init` as `/init` and the
    /// [`DEFAULT_MODULES`].
    pub fn new(kernel: KernelPackage, init: impl Into<FileSource>) -> Self {
        Self {
            kernel,
            init: init.into(),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            extra_files: Vec::new(),
        }
    }

    /// Replaces the module set (dependencies are still added).
    pub fn modules<I, S>(mut self, modules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.modules = modules.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a file at `image_path` (absolute) with `mode`.
    pub fn extra_file(
        mut self,
        image_path: impl Into<String>,
        source: impl Into<FileSource>,
        mode: u32,
    ) -> Self {
        self.extra_files.push(ExtraFile {
            image_path: image_path.into(),
            source: source.into(),
            mode,
        });
        self
    }

    /// The kernel this builder uses.
    pub fn kernel(&self) -> &KernelPackage {
        &self.kernel
    }

    /// The cache key of the inputs: kernel identity (release, size and
    /// mtime of `vmlinuz` and `modules.builtin`), the module list, the init
    /// and extra files' contents and modes, and the builder format.
    pub fn cache_key(&self) -> Result<String> {
        let mut hasher = twox_hash::xxhash3_128::Hasher::new();
        let mut field = |bytes: &[u8]| {
            hasher.write(&(bytes.len() as u64).to_le_bytes());
            hasher.write(bytes);
        };
        field(BUILDER_FORMAT.as_bytes());
        field(self.kernel.version.as_bytes());
        for path in [
            &self.kernel.vmlinuz,
            &self.kernel.modules_dir.join("modules.builtin"),
        ] {
            field(path.as_os_str().as_encoded_bytes());
            field(file_identity(path)?.as_bytes());
        }
        for module in &self.modules {
            field(module.as_bytes());
        }
        field(&self.init.read()?);
        for extra in &self.extra_files {
            field(extra.image_path.as_bytes());
            field(&extra.mode.to_le_bytes());
            field(&extra.source.read()?);
        }
        let hash = hasher.finish_128();
        Ok(format!("{}-{:032x}", self.kernel.version, hash))
    }

    /// The image for these inputs from `cache`, building it first when the
    /// cache does not hold it. Safe to call from many processes at once.
    pub fn build_cached(&self, cache: &ImageCache) -> Result<GuestImage> {
        let key = self.cache_key()?;
        cache.get_or_build(&key, |dir| self.write_image(dir, &key))
    }

    /// Builds into `dir` (created if needed), bypassing the cache.
    pub fn build_into(&self, dir: &Path) -> Result<GuestImage> {
        let key = self.cache_key()?;
        std::fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
        self.write_image(dir, &key)?;
        GuestImage::open(dir)
    }

    /// The initramfs these inputs describe, and the module load order.
    pub fn initramfs(&self) -> Result<(Initramfs, Vec<String>)> {
        let index = ModuleIndex::scan(&self.kernel.modules_dir)?;
        let order = index.resolve(&self.modules)?;
        let mut fs = Initramfs::new();
        for dir in ["/dev", "/proc", "/sys", "/run", "/lib/modules"] {
            fs.dir(dir, 0o755)?;
        }
        fs.dir("/tmp", 0o1777)?;
        // The kernel opens /dev/console for init's stdio before anything
        // is mounted, so the node must be in the archive itself.
        fs.add(
            "/dev/console",
            EntryKind::CharDevice { major: 5, minor: 1 },
            0o600,
        )?;
        fs.file(INIT_PATH, self.init.clone(), 0o755)?;
        fs.dir(MODULES_DIR, 0o755)?;
        let mut load_order = String::new();
        let mut files = Vec::with_capacity(order.len());
        for name in &order {
            let file = format!("{name}.ko");
            fs.file(
                &format!("{MODULES_DIR}/{file}"),
                index.read_object(name)?,
                0o644,
            )?;
            load_order.push_str(&file);
            load_order.push('\n');
            files.push(file);
        }
        fs.file(LOAD_ORDER_PATH, load_order.into_bytes(), 0o644)?;
        for extra in &self.extra_files {
            fs.file(&extra.image_path, extra.source.clone(), extra.mode)?;
        }
        Ok((fs, files))
    }

    fn write_image(&self, dir: &Path, key: &str) -> Result<()> {
        let (fs, modules) = self.initramfs()?;
        let initramfs = dir.join(INITRAMFS_FILE);
        write_atomically(&initramfs, |file| {
            fs.write_to(BufWriter::new(file))?
                .flush()
                .map_err(io_err("write", &initramfs))
        })?;
        let vmlinux = dir.join(VMLINUX_FILE);
        let tmp = dir.join(format!(".{VMLINUX_FILE}.tmp"));
        crate::vmlinux::extract_vmlinux(&self.kernel.vmlinuz, &tmp)?;
        std::fs::rename(&tmp, &vmlinux).map_err(io_err("rename", &vmlinux))?;
        let manifest = Manifest {
            format: BUILDER_FORMAT.to_owned(),
            key: key.to_owned(),
            kernel_version: self.kernel.version.clone(),
            vmlinuz: self.kernel.vmlinuz.clone(),
            modules,
            extra_files: self
                .extra_files
                .iter()
                .map(|e| e.image_path.clone())
                .collect(),
        };
        let path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Io {
            op: "serialize",
            path: path.clone(),
            source: e.into(),
        })?;
        write_atomically(&path, |file| {
            file.write_all(&json).map_err(io_err("write", &path))
        })
    }
}

/// `len:mtime_ns` of a file: changes whenever a package reinstalls it.
fn file_identity(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}:{mtime}", meta.len()))
}

/// Writes `path` through a temp file in the same dir, renamed into place.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_err("create temp file in", dir))?;
    write(tmp.as_file_mut())?;
    // Readable by a VMM running as another user; temp files start as 0600.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("chmod", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path)
        .map_err(|e| io_err("rename", path)(e.error))?;
    Ok(())
}
