//! Finding (and, on request, installing) the distribution's kernel package.
//!
//! Debian's `linux-image-<version>-amd64` installs `/boot/vmlinuz-<version>`
//! (an xz-compressed bzImage) and `/lib/modules/<version>/` (the `.ko`
//! modules and `modules.builtin`). That pair is all an image needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, io_err};

/// Where Debian installs kernels.
pub const DEFAULT_BOOT_DIR: &str = "/boot";
/// Where Debian installs kernel modules.
pub const DEFAULT_MODULES_ROOT: &str = "/lib/modules";
/// The Debian meta-package that pulls in the current kernel.
pub const KERNEL_PACKAGE: &str = "linux-image-amd64";

/// One installed kernel: its compressed image and its modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// The kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The bzImage, e.g. `/boot/vmlinuz-6.1.0-56-amd64`.
    pub vmlinuz: PathBuf,
    /// The modules dir, e.g. `/lib/modules/6.1.0-56-amd64`.
    pub modules_dir: PathBuf,
}

impl KernelPackage {
    /// The newest kernel installed in the default locations.
    pub fn find_installed() -> Result<Self> {
        Self::find_in(Path::new(DEFAULT_BOOT_DIR), Path::new(DEFAULT_MODULES_ROOT))
    }

    /// The newest kernel in `boot_dir` that also has a modules dir under
    /// `modules_root` (newest by version order, so `6.1.0-56` beats `6.1.0-9`).
    pub fn find_in(boot_dir: &Path, modules_root: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(boot_dir).map_err(io_err("read dir", boot_dir))?;
        let mut versions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read dir", boot_dir))?;
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
                continue;
            };
            if modules_root.join(version).is_dir() {
                versions.push(version.to_owned());
            }
        }
        versions.sort_by(|a, b| compare_versions(a, b));
        let version = versions.pop().ok_or_else(|| Error::KernelNotFound {
            boot_dir: boot_dir.to_owned(),
            modules_root: modules_root.to_owned(),
        })?;
        Ok(Self {
            vmlinuz: boot_dir.join(format!("vmlinuz-{version}")),
            modules_dir: modules_root.join(&version),
            version,
        })
    }

    /// A given kernel release in the default locations.
    pub fn with_version(version: &str) -> Result<Self> {
        let vmlinuz = Path::new(DEFAULT_BOOT_DIR).join(format!("vmlinuz-{version}"));
        let modules_dir = Path::new(DEFAULT_MODULES_ROOT).join(version);
        for path in [&vmlinuz, &modules_dir] {
            if !path.exists() {
                return Err(Error::KernelVersionNotFound {
                    version: version.to_owned(),
                    missing: path.clone(),
                });
            }
        }
        Ok(Self {
            version: version.to_owned(),
            vmlinuz,
            modules_dir,
        })
    }

    /// Installs [`KERNEL_PACKAGE`] with `apt-get` (needs root), then finds it.
    ///
    /// This changes the host: call it only where the embedder asked for it
    /// (the CLI does so when no kernel is installed, unless `--no-install`).
    pub fn install_with_apt() -> Result<Self> {
        let install_err = |reason: String| Error::KernelInstall {
            package: KERNEL_PACKAGE.to_owned(),
            reason,
        };
        for args in [
            &["update", "-q"][..],
            &[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                KERNEL_PACKAGE,
            ][..],
        ] {
            let output = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .map_err(|e| install_err(format!("cannot run apt-get: {e}")))?;
            if !output.status.success() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(install_err(format!(
                    "apt-get {} exited with {}: {}",
                    args[0],
                    output.status,
                    stderr.trim()
                )));
            }
        }
        Self::find_installed()
    }
}

/// Orders kernel releases by their numeric parts, so `6.1.0-10` > `6.1.0-9`.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(v: &str) -> Vec<Result<u64, &str>> {
        v.split(['.', '-', '+', '~'])
            .map(|p| p.parse::<u64>().map_err(|_| p))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64").is_gt());
        assert!(compare_versions("6.12.0-1-amd64", "6.1.0-56-amd64").is_gt());
        assert!(compare_versions("6.1.0-9-amd64", "6.1.0-9-amd64").is_eq());
    }

    #[test]
    fn finds_newest_kernel_with_modules() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let modules = dir.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), b"x").unwrap();
        }
        // The newest has no modules dir: it is not a usable kernel.
        for v in ["6.1.0-9-amd64", "6.1.0-10-amd64"] {
            std::fs::create_dir_all(modules.join(v)).unwrap();
        }
        let k = KernelPackage::find_in(&boot, &modules).unwrap();
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.vmlinuz, boot.join("vmlinuz-6.1.0-10-amd64"));
        assert_eq!(k.modules_dir, modules.join("6.1.0-10-amd64"));
    }

    #[test]
    fn no_kernel_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KernelPackage::find_in(dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, Error::KernelNotFound { .. }), "{err}");
    }

    #[test]
    fn missing_version_is_a_typed_error() {
        let err = KernelPackage::with_version("0.0.0-no-such-kernel").unwrap_err();
        assert!(
            matches!(&err, Error::KernelVersionNotFound { version, .. } if version == "0.0.0-no-such-kernel"),
            "{err}"
        );
    }
}
