//! Discovery of the VMM's device nodes on this host.

use std::path::Path;

use nix::sys::stat::{SFlag, major, minor, stat};

use crate::plan::{DeviceKind, HostDevice};

/// Device nodes a VMM may open, relative to `/dev`: KVM, TUN/TAP, and the
/// vhost devices (whichever this host has).
pub const VMM_DEVICE_NODES: [&str; 5] =
    ["kvm", "net/tun", "vhost-net", "vhost-vsock", "vhost-scsi"];

/// The VMM's device nodes present under `dev_dir` (normally `/dev`), with
/// their numbers as the kernel reports them. Missing nodes are skipped:
/// a host without vhost-vsock simply does not get a rule for it.
pub fn discover_vmm_devices(dev_dir: &Path) -> Vec<HostDevice> {
    VMM_DEVICE_NODES
        .iter()
        .filter_map(|name| {
            let path = dev_dir.join(name);
            let st = stat(&path).ok()?;
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            let kind = if kind == SFlag::S_IFCHR {
                DeviceKind::Char
            } else if kind == SFlag::S_IFBLK {
                DeviceKind::Block
            } else {
                return None;
            };
            Some(HostDevice {
                path,
                kind,
                major: u32::try_from(major(st.st_rdev)).ok()?,
                minor: u32::try_from(minor(st.st_rdev)).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hosts_tun_device_and_skips_plain_files() {
        // /dev/net/tun is 10:200 on every Linux host that has it.
        let found = discover_vmm_devices(Path::new("/dev"));
        let tun = found
            .iter()
            .find(|d| d.path == Path::new("/dev/net/tun"))
            .expect("this host has /dev/net/tun");
        assert_eq!(
            (tun.kind, tun.major, tun.minor),
            (DeviceKind::Char, 10, 200)
        );

        let fake = tempfile::tempdir().unwrap();
        std::fs::write(fake.path().join("kvm"), b"not a device").unwrap();
        assert!(discover_vmm_devices(fake.path()).is_empty());
    }
}
