//! Host devices a container asked for in `linux.devices` that the runtime
//! hot-plugged into the VM (Kata's `CreateContainerRequest.devices`): the
//! guest finds each one, and the container's spec is rewritten to the
//! guest's device numbers, which are not the host's.
//!
//! Kata's device types are read as its agent reads them; this agent knows
//! `blk` (a virtio-blk disk, `id` its PCI path, as the runtime's
//! `virtio-blk-pci` driver sends it). Another type is a clear error.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxDeviceType, Spec};
use vc_agent_protocol::agent as pb;

use crate::error::{Error, Result};
use crate::storage::find_pci_disk;

/// Kata's type of a virtio-blk disk found by PCI path.
pub const DRIVER_BLK_PCI: &str = "blk";

/// Where the guest found a hot-plugged device, and its numbers there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNode {
    /// Its node in the guest's `/dev`.
    pub path: PathBuf,
    /// Its major number in the guest.
    pub major: i64,
    /// Its minor number in the guest.
    pub minor: i64,
}

/// Finds each device of `devices` in the guest (waiting up to `wait` for
/// a hot-plugged one to appear) and rewrites `spec`: the `linux.devices`
/// entry at each device's `container_path` gets the guest's numbers, and
/// the device cgroup rules naming the entry's old numbers follow.
pub fn apply(
    container_id: &str,
    devices: &[pb::Device],
    spec: &mut Spec,
    sys: &Path,
    dev: &Path,
    wait: Duration,
) -> Result<()> {
    for d in devices {
        let node = find(container_id, d, sys, dev, wait)?;
        rewrite(container_id, spec, &d.container_path, &node)?;
    }
    Ok(())
}

/// The guest node of one device.
pub fn find(
    container_id: &str,
    device: &pb::Device,
    sys: &Path,
    dev: &Path,
    wait: Duration,
) -> Result<GuestNode> {
    if device.type_ != DRIVER_BLK_PCI {
        return Err(vc_types::Unsupported::new(
            format!("device type {:?} (device {})", device.type_, device.id),
            format!("this agent passes only {DRIVER_BLK_PCI:?} devices, found by PCI path"),
        )
        .into());
    }
    let path = find_pci_disk(sys, dev, &device.id, wait)?;
    let meta = std::fs::metadata(&path).map_err(Error::io("inspecting the device", &path))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::InvalidRequest {
            container_id: container_id.to_owned(),
            reason: format!("{} is not a block device", path.display()),
        });
    }
    let rdev = meta.rdev();
    Ok(GuestNode {
        path,
        major: i64::from(nix::sys::stat::major(rdev) as u32),
        minor: i64::from(nix::sys::stat::minor(rdev) as u32),
    })
}

/// Points the spec's `linux.devices` entry at `container_path` to `node`
/// and moves the cgroup rules that named its old numbers.
fn rewrite(
    container_id: &str,
    spec: &mut Spec,
    container_path: &str,
    node: &GuestNode,
) -> Result<()> {
    let missing = || Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason: format!("no linux.devices entry at {container_path} for a hot-plugged device"),
    };
    let mut linux = spec.linux().clone().ok_or_else(missing)?;
    let mut devices = linux.devices().clone().unwrap_or_default();
    let entry = devices
        .iter_mut()
        .find(|d| d.path() == Path::new(container_path))
        .ok_or_else(missing)?;
    let (old_major, old_minor) = (entry.major(), entry.minor());
    entry.set_typ(LinuxDeviceType::B);
    entry.set_major(node.major);
    entry.set_minor(node.minor);
    linux.set_devices(Some(devices));
    if let Some(mut resources) = linux.resources().clone() {
        if let Some(mut rules) = resources.devices().clone() {
            for rule in &mut rules {
                if rule.major() == Some(old_major) && rule.minor() == Some(old_minor) {
                    rule.set_major(Some(node.major));
                    rule.set_minor(Some(node.minor));
                }
            }
            resources.set_devices(Some(rules));
        }
        linux.set_resources(Some(resources));
    }
    spec.set_linux(Some(linux));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder,
    };

    /// A sysfs and /dev fixture with one virtio-blk disk at PCI path
    /// `10/00` whose node has the numbers of the host's /dev/loop0 (7:0).
    fn fixture() -> (tempfile::TempDir, tempfile::TempDir) {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let disk = sys
            .path()
            .join("bus/pci/devices/0000:00:10.0/0000:01:00.0/virtio3/block/vdb");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::write(disk.join("size"), "2048\n").unwrap();
        nix::sys::stat::mknod(
            &dev.path().join("vdb"),
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(7, 0),
        )
        .unwrap();
        (sys, dev)
    }

    fn spec() -> Spec {
        let device = LinuxDeviceBuilder::default()
            .path("/dev/xvda")
            .typ(LinuxDeviceType::B)
            .major(8)
            .minor(16)
            .build()
            .unwrap();
        let rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(8)
            .minor(16)
            .access("rwm")
            .build()
            .unwrap();
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .devices(vec![device])
                .resources(
                    LinuxResourcesBuilder::default()
                        .devices(vec![rule])
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        ));
        spec
    }

    fn blk(pci_path: &str, container_path: &str) -> pb::Device {
        pb::Device {
            id: pci_path.into(),
            type_: DRIVER_BLK_PCI.into(),
            container_path: container_path.into(),
            ..Default::default()
        }
    }

    /// Needs root (mknod).
    #[test]
    fn a_hot_plugged_disk_gets_the_guests_numbers_in_the_spec() {
        vc_test_support::require_root();
        let (sys, dev) = fixture();
        let mut spec = spec();
        let wait = Duration::from_millis(50);
        apply(
            "c1",
            &[blk("10/00", "/dev/xvda")],
            &mut spec,
            sys.path(),
            dev.path(),
            wait,
        )
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let d = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((d.major(), d.minor()), (7, 0));
        let rule = &linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0];
        assert_eq!((rule.major(), rule.minor()), (Some(7), Some(0)));
    }

    /// Needs root (mknod).
    #[test]
    fn unknown_types_missing_entries_and_disks_are_clear_errors() {
        vc_test_support::require_root();
        let (sys, dev) = fixture();
        let wait = Duration::from_millis(50);
        let mut scsi = blk("10/00", "/dev/xvda");
        scsi.type_ = "scsi".into();
        assert!(matches!(
            apply("c1", &[scsi], &mut spec(), sys.path(), dev.path(), wait),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            apply(
                "c1",
                &[blk("10/00", "/dev/other")],
                &mut spec(),
                sys.path(),
                dev.path(),
                wait
            ),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(matches!(
            apply(
                "c1",
                &[blk("11/00", "/dev/xvda")],
                &mut spec(),
                sys.path(),
                dev.path(),
                wait
            ),
            Err(Error::Io { .. })
        ));
    }
}
