//! What the guest does with the attached layers: mount each disk as EROFS
//! and stack them, in the host overlay's order, under a writable upper dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vc_hypervisor::PciPath;

use super::discovery::ErofsRootfs;
use crate::error::{Error, Result};
use crate::guest::{GuestDevice, GuestLocation};

/// One layer disk as the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLayerDisk {
    /// The device manager's id of the disk.
    pub device_id: String,
    /// Where the disk is on the guest's PCI bus.
    pub pci_path: PciPath,
    /// Its virtio-blk serial.
    pub serial: String,
    /// Where the guest mounts it (`mount -t erofs -o ro /dev/vdX <mount_point>`).
    pub mount_point: PathBuf,
}

/// How the guest rebuilds the container's rootfs from the layer disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOverlayPlan {
    /// The disks to mount first, one per distinct layer image.
    pub disks: Vec<GuestLayerDisk>,
    /// The overlay's lower dirs in the guest, topmost first.
    pub lowerdirs: Vec<PathBuf>,
    /// Overlay options carried over from the host mount (`redirect_dir=`, ...).
    pub features: Vec<String>,
}

impl GuestOverlayPlan {
    /// Pairs the rootfs's layers with their attached disks. `devices` are
    /// the disks of [`ErofsRootfs::images`], in that order (what
    /// `attach_all` returns for the ids registered in that order); each
    /// disk is mounted under `layers_dir/<device id>`.
    pub fn new(rootfs: &ErofsRootfs, devices: &[GuestDevice], layers_dir: &Path) -> Result<Self> {
        let images = rootfs.images();
        if images.len() != devices.len() {
            return Err(Error::InvalidDeviceInfo {
                path: rootfs.rootfs.clone(),
                reason: format!(
                    "{} layer images but {} attached disks",
                    images.len(),
                    devices.len()
                ),
            });
        }
        let mut disks = Vec::with_capacity(devices.len());
        for (image, device) in images.iter().zip(devices) {
            let GuestLocation::VirtioBlk { pci_path, serial } = &device.location else {
                return Err(Error::InvalidDeviceInfo {
                    path: image.to_path_buf(),
                    reason: format!("device {} is not a virtio-blk disk", device.id),
                });
            };
            if !device.read_only {
                return Err(Error::InvalidDeviceInfo {
                    path: image.to_path_buf(),
                    reason: format!("layer disk {} is attached writable", device.id),
                });
            }
            disks.push(GuestLayerDisk {
                device_id: device.id.clone(),
                pci_path: pci_path.clone(),
                serial: serial.clone(),
                mount_point: layers_dir.join(&device.id),
            });
        }
        let lowerdirs = rootfs
            .layers
            .iter()
            .map(|layer| {
                let at = images
                    .iter()
                    .position(|i| *i == layer.image)
                    .expect("images() lists every layer's image");
                let mount_point = &disks[at].mount_point;
                if layer.subdir.as_os_str().is_empty() {
                    mount_point.clone()
                } else {
                    mount_point.join(&layer.subdir)
                }
            })
            .collect();
        Ok(Self {
            disks,
            lowerdirs,
            features: rootfs.overlay_features.clone(),
        })
    }

    /// The `lowerdir=` option for mounting the overlay, with overlayfs's
    /// escapes (`\` before `:`, `,` and `\` inside a path).
    pub fn lowerdir_option(&self) -> String {
        let dirs: Vec<String> = self
            .lowerdirs
            .iter()
            .map(|d| escape(&d.to_string_lossy()))
            .collect();
        format!("lowerdir={}", dirs.join(":"))
    }
}

fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erofs::ErofsLayer;
    use crate::info::DeviceType;

    fn layer(lower: &str, image: &str, subdir: &str) -> ErofsLayer {
        ErofsLayer {
            lowerdir: lower.into(),
            image: image.into(),
            loop_device: None,
            subdir: subdir.into(),
        }
    }

    fn disk(id: &str, image: &str, slot: u8) -> GuestDevice {
        GuestDevice {
            id: id.into(),
            host_path: image.into(),
            device_type: DeviceType::Block,
            read_only: true,
            location: GuestLocation::VirtioBlk {
                pci_path: PciPath(vec![slot, 0]),
                serial: id.into(),
            },
            options: Default::default(),
        }
    }

    fn rootfs() -> ErofsRootfs {
        ErofsRootfs {
            rootfs: "/r".into(),
            layers: vec![
                layer("/l/3", "/s/3/layer.erofs", ""),
                layer("/l/2", "/s/2/layer.erofs", "usr"),
                layer("/l/1", "/s/3/layer.erofs", "a:b"),
            ],
            upperdir: Some("/u".into()),
            workdir: Some("/w".into()),
            overlay_features: vec!["redirect_dir=on".into()],
        }
    }

    #[test]
    fn maps_layers_to_disk_mounts_in_overlay_order() {
        let rootfs = rootfs();
        assert_eq!(
            rootfs.images(),
            [Path::new("/s/3/layer.erofs"), Path::new("/s/2/layer.erofs")]
        );
        let devices = [
            disk("dm-blk-0", "/s/3/layer.erofs", 0x10),
            disk("dm-blk-1", "/s/2/layer.erofs", 0x11),
        ];
        let plan = GuestOverlayPlan::new(&rootfs, &devices, Path::new("/run/layers")).unwrap();
        assert_eq!(plan.disks.len(), 2);
        assert_eq!(plan.disks[1].pci_path.to_string(), "11/00");
        assert_eq!(plan.disks[1].serial, "dm-blk-1");
        assert_eq!(plan.disks[0].mount_point, Path::new("/run/layers/dm-blk-0"));
        assert_eq!(
            plan.lowerdirs,
            [
                Path::new("/run/layers/dm-blk-0"),
                Path::new("/run/layers/dm-blk-1/usr"),
                Path::new("/run/layers/dm-blk-0/a:b"),
            ]
        );
        assert_eq!(
            plan.lowerdir_option(),
            "lowerdir=/run/layers/dm-blk-0:/run/layers/dm-blk-1/usr:/run/layers/dm-blk-0/a\\:b"
        );
        assert_eq!(plan.features, ["redirect_dir=on"]);
    }

    #[test]
    fn refuses_mismatched_or_writable_disks() {
        let rootfs = rootfs();
        let one = [disk("dm-blk-0", "/s/3/layer.erofs", 0x10)];
        assert!(GuestOverlayPlan::new(&rootfs, &one, Path::new("/l")).is_err());
        let mut writable = disk("dm-blk-1", "/s/2/layer.erofs", 0x11);
        writable.read_only = false;
        let devices = [disk("dm-blk-0", "/s/3/layer.erofs", 0x10), writable];
        assert!(GuestOverlayPlan::new(&rootfs, &devices, Path::new("/l")).is_err());
    }
}
