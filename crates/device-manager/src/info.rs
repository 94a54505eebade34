//! What a caller says about a device ([`DeviceInfo`]) and what the host
//! says about it once inspected ([`HostDevice`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vc_hypervisor::BlockFormat;

use crate::error::{Error, Result};
use crate::vfio::{VfioAttachment, VfioNode, VfioRequest, VfioSysfs};

/// The kinds of device the manager handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    /// A disk: a host block device or an image file (raw, ext4, EROFS,
    /// qcow2), attached as virtio-blk.
    Block,
    /// A VFIO node (`/dev/vfio/<group>`, `/dev/vfio/devices/vfioN`, or the
    /// control device `/dev/vfio/vfio`); its PCI functions are passed through.
    Vfio,
    /// A generic character device (`/dev/fuse`, `/dev/net/tun`, ...): the
    /// guest kernel provides its own, so nothing is plugged; the guest
    /// creates the node with the same major and minor.
    Char,
}

/// Options for the driver that carries the device to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverOptions {
    /// Image format of a block device.
    #[serde(default)]
    pub format: BlockFormat,
    /// Bypass the host page cache (`O_DIRECT`) for a block device.
    #[serde(default)]
    pub direct_io: bool,
    /// Opaque key/values handed to the guest with the device (Kata's
    /// `Device.options`, e.g. `fstype=ext4`); not interpreted here.
    #[serde(default)]
    pub guest: BTreeMap<String, String>,
}

/// A device a container asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The host path: an image file or `/dev/...` node.
    pub host_path: PathBuf,
    /// What it is.
    pub device_type: DeviceType,
    /// Read-only for the guest (block); read-only access in the
    /// container's device rules (char).
    #[serde(default)]
    pub read_only: bool,
    /// Driver options.
    #[serde(default)]
    pub driver_options: DriverOptions,
}

impl DeviceInfo {
    /// A writable raw disk.
    pub fn block(host_path: impl Into<PathBuf>) -> Self {
        Self {
            host_path: host_path.into(),
            device_type: DeviceType::Block,
            read_only: false,
            driver_options: DriverOptions::default(),
        }
    }

    /// A VFIO node.
    pub fn vfio(host_path: impl Into<PathBuf>) -> Self {
        Self {
            host_path: host_path.into(),
            device_type: DeviceType::Vfio,
            read_only: false,
            driver_options: DriverOptions::default(),
        }
    }

    /// A generic character device.
    pub fn char(host_path: impl Into<PathBuf>) -> Self {
        Self {
            host_path: host_path.into(),
            device_type: DeviceType::Char,
            read_only: false,
            driver_options: DriverOptions::default(),
        }
    }

    /// The same, read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Checks the fields against each other (no I/O).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: &str| Error::InvalidDeviceInfo {
            path: self.host_path.clone(),
            reason: reason.to_owned(),
        };
        if !self.host_path.is_absolute() {
            return Err(invalid("the host path must be absolute"));
        }
        let block_options =
            self.driver_options.format != BlockFormat::Raw || self.driver_options.direct_io;
        if block_options && self.device_type != DeviceType::Block {
            return Err(invalid("format and direct_io apply to block devices only"));
        }
        if self.read_only && self.device_type == DeviceType::Vfio {
            return Err(invalid("a VFIO device cannot be passed through read-only"));
        }
        Ok(())
    }
}

/// What inspecting the host found: the facts attaching needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostDevice {
    /// A disk.
    Block {
        /// The host path with symlinks resolved (two names of one file
        /// are one device).
        canonical_path: PathBuf,
        /// A block device (else a regular file).
        is_block_device: bool,
    },
    /// A character device.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A VFIO node and the functions it passes through.
    Vfio(VfioAttachment),
}

impl HostDevice {
    /// Inspects the host for `info` (`stat` for block and char devices;
    /// sysfs under `sys_root` for VFIO).
    pub fn inspect(info: &DeviceInfo, sys_root: &Path) -> Result<Self> {
        info.validate()?;
        let path = &info.host_path;
        let host_err = |source| Error::HostDevice {
            path: path.clone(),
            source,
        };
        let wrong = |expected: &str, found: &str| Error::InvalidDeviceInfo {
            path: path.clone(),
            reason: format!("expected {expected}, found {found}"),
        };
        match info.device_type {
            DeviceType::Block => {
                let meta = fs::metadata(path).map_err(host_err)?;
                let kind = meta.file_type();
                if !kind.is_file() && !kind.is_block_device() {
                    return Err(wrong("a regular file or block device", describe(&meta)));
                }
                Ok(Self::Block {
                    canonical_path: fs::canonicalize(path).map_err(host_err)?,
                    is_block_device: kind.is_block_device(),
                })
            }
            DeviceType::Char => {
                let meta = fs::metadata(path).map_err(host_err)?;
                if !meta.file_type().is_char_device() {
                    return Err(wrong("a character device", describe(&meta)));
                }
                let rdev = meta.rdev();
                Ok(Self::Char {
                    major: libc::major(rdev),
                    minor: libc::minor(rdev),
                })
            }
            DeviceType::Vfio => {
                // Classify first, so a bad path is reported as such even
                // where sysfs has no VFIO at all.
                VfioNode::from_path(path)?;
                let request = VfioRequest::hotplug(path.clone());
                Ok(Self::Vfio(VfioSysfs::new(sys_root).resolve(&request)?))
            }
        }
    }

    /// The key two registrations of one device share.
    pub(crate) fn identity(&self, info: &DeviceInfo) -> PathBuf {
        match self {
            Self::Block { canonical_path, .. } => canonical_path.clone(),
            Self::Char { .. } | Self::Vfio(_) => info.host_path.clone(),
        }
    }
}

fn describe(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "another kind of file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_contradictions() {
        assert!(DeviceInfo::block("/img").validate().is_ok());
        assert!(matches!(
            DeviceInfo::block("img").validate(),
            Err(Error::InvalidDeviceInfo { .. })
        ));
        let mut char_dev = DeviceInfo::char("/dev/fuse");
        char_dev.driver_options.direct_io = true;
        assert!(matches!(
            char_dev.validate(),
            Err(Error::InvalidDeviceInfo { .. })
        ));
        assert!(matches!(
            DeviceInfo::vfio("/dev/vfio/1").read_only().validate(),
            Err(Error::InvalidDeviceInfo { .. })
        ));
    }

    #[test]
    fn inspects_files_and_char_devices() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        fs::write(&img, b"x").unwrap();
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let host = HostDevice::inspect(&DeviceInfo::block(&link), Path::new("/sys")).unwrap();
        assert_eq!(
            host,
            HostDevice::Block {
                canonical_path: fs::canonicalize(&img).unwrap(),
                is_block_device: false
            }
        );
        assert_eq!(
            HostDevice::inspect(&DeviceInfo::char("/dev/null"), Path::new("/sys")).unwrap(),
            HostDevice::Char { major: 1, minor: 3 }
        );
        let err = HostDevice::inspect(&DeviceInfo::block(dir.path()), Path::new("/sys"));
        assert!(
            matches!(&err, Err(Error::InvalidDeviceInfo { reason, .. }) if reason.contains("a directory")),
            "{err:?}"
        );
        assert!(matches!(
            HostDevice::inspect(&DeviceInfo::char(&img), Path::new("/sys")),
            Err(Error::InvalidDeviceInfo { .. })
        ));
        assert!(matches!(
            HostDevice::inspect(
                &DeviceInfo::block(dir.path().join("missing")),
                Path::new("/sys")
            ),
            Err(Error::HostDevice { .. })
        ));
        assert!(matches!(
            HostDevice::inspect(&DeviceInfo::vfio("/dev/sda"), Path::new("/sys")),
            Err(Error::InvalidVfioPath { .. })
        ));
    }
}
