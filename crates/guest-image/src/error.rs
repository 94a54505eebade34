//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while finding the kernel, resolving modules
/// or writing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No installed kernel package was found under the boot and modules dirs.
    #[error(
        "no installed kernel found (looked for vmlinuz-* in {boot_dir} with a matching dir in {modules_root}); install linux-image-amd64"
    )]
    KernelNotFound {
        /// Where `vmlinuz-<version>` was looked for.
        boot_dir: PathBuf,
        /// Where `<version>/` module dirs were looked for.
        modules_root: PathBuf,
    },

    /// The requested kernel version is not installed.
    #[error("kernel version {version} is not installed (no {missing})")]
    KernelVersionNotFound {
        /// The version asked for.
        version: String,
        /// The file or dir that is missing.
        missing: PathBuf,
    },

    /// Installing the kernel package with apt-get failed.
    #[error("installing {package} with apt-get failed: {reason}")]
    KernelInstall {
        /// The Debian package.
        package: String,
        /// What apt-get said, or why it could not run.
        reason: String,
    },

    /// The kernel file is not a bzImage this crate can unpack.
    #[error("{path} is not an x86 bzImage: {reason}")]
    NotBzImage {
        /// The kernel file.
        path: PathBuf,
        /// What was wrong with its header.
        reason: String,
    },

    /// The bzImage payload uses a compression this crate does not decode.
    #[error("{path}: kernel payload compressed with {format}, only xz is supported")]
    UnsupportedKernelCompression {
        /// The kernel file.
        path: PathBuf,
        /// The compression recognised from the payload's magic bytes.
        format: &'static str,
    },

    /// Decompressing the kernel payload failed.
    #[error("decompressing the kernel payload of {path} failed")]
    KernelDecompress {
        /// The kernel file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },

    /// The unpacked kernel is not an ELF with a PVH entry point.
    #[error("the vmlinux unpacked from {path} cannot be PVH-booted: {reason}")]
    NotPvhBootable {
        /// The kernel file it came from.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A requested module (or a dependency of one) is neither a `.ko` file
    /// nor built into the kernel.
    #[error("kernel module {name} not found in {modules_dir} (needed by {needed_by})")]
    ModuleNotFound {
        /// The module name.
        name: String,
        /// The kernel's modules dir.
        modules_dir: PathBuf,
        /// `requested` or the module that depends on it.
        needed_by: String,
    },

    /// The modules' `depends=` fields form a cycle.
    #[error("kernel module dependency cycle through {name}")]
    ModuleDependencyCycle {
        /// A module on the cycle.
        name: String,
    },

    /// A module file could not be read as an ELF object with `.modinfo`.
    #[error("cannot read module info of {path}: {reason}")]
    ModuleInfo {
        /// The `.ko` file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// A path inside the image is not absolute, has `..`, or repeats.
    #[error("invalid path in image {path:?}: {reason}")]
    InvalidImagePath {
        /// The path as given.
        path: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// A file is too large for the cpio newc format (4 GiB).
    #[error("{path} is too large for a cpio newc archive")]
    FileTooLarge {
        /// The path in the image.
        path: String,
    },

    /// An I/O operation on a file failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was being done (`read`, `write`, `create`, ...).
        op: &'static str,
        /// The file or dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] for `op` on `path`, for `map_err`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
