//! Devices a VM can be given, cold-plugged at start or hot-plugged later,
//! and the guest addresses they end up at.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A device for the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Device {
    /// A virtio-blk disk backed by a host file or block device.
    Block(BlockDevice),
    /// A host directory shared with the guest (9p or virtio-fs).
    SharedDir(SharedDir),
    /// A virtio-serial port backed by a unix socket QEMU listens on.
    Serial(SerialPort),
    /// A virtio-net interface backed by a host tap device.
    Network(NetworkDevice),
    /// A host PCI device passed through with VFIO.
    Vfio(VfioDevice),
    /// A vhost-vsock device.
    Vsock(VsockDevice),
}

impl Device {
    /// The device's id (unique within a VM; also its QEMU id).
    pub fn id(&self) -> &str {
        match self {
            Self::Block(d) => &d.id,
            Self::SharedDir(d) => &d.id,
            Self::Serial(d) => &d.id,
            Self::Network(d) => &d.id,
            Self::Vfio(d) => &d.id,
            Self::Vsock(d) => &d.id,
        }
    }

    /// What kind of device it is.
    pub fn kind(&self) -> DeviceKind {
        match self {
            Self::Block(_) => DeviceKind::Block,
            Self::SharedDir(SharedDir {
                backend: ShareBackend::NineP { .. },
                ..
            }) => DeviceKind::Share9p,
            Self::SharedDir(SharedDir {
                backend: ShareBackend::VirtioFs { .. },
                ..
            }) => DeviceKind::ShareVirtioFs,
            Self::Serial(_) => DeviceKind::Serial,
            Self::Network(_) => DeviceKind::Network,
            Self::Vfio(_) => DeviceKind::Vfio,
            Self::Vsock(_) => DeviceKind::Vsock,
        }
    }

    /// Whether the device takes a PCI slot (all but serial ports, which sit
    /// on the virtio-serial bus).
    pub fn is_pci(&self) -> bool {
        !matches!(self, Self::Serial(_))
    }
}

/// The kinds of [`Device`], for capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// [`Device::Block`].
    Block,
    /// [`Device::SharedDir`] with [`ShareBackend::NineP`].
    Share9p,
    /// [`Device::SharedDir`] with [`ShareBackend::VirtioFs`].
    ShareVirtioFs,
    /// [`Device::Serial`].
    Serial,
    /// [`Device::Network`].
    Network,
    /// [`Device::Vfio`].
    Vfio,
    /// [`Device::Vsock`].
    Vsock,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Block => "block",
            Self::Share9p => "9p share",
            Self::ShareVirtioFs => "virtio-fs share",
            Self::Serial => "serial port",
            Self::Network => "network",
            Self::Vfio => "VFIO",
            Self::Vsock => "vsock",
        })
    }
}

/// A disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Device id.
    pub id: String,
    /// Host file or block device.
    pub path: PathBuf,
    /// Image format.
    #[serde(default)]
    pub format: BlockFormat,
    /// Read-only for the guest.
    #[serde(default)]
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    #[serde(default)]
    pub direct_io: bool,
    /// Serial number the guest sees (`/sys/block/vdX/serial`); default: the id.
    #[serde(default)]
    pub serial: Option<String>,
}

impl BlockDevice {
    /// A writable raw disk.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            path: path.into(),
            format: BlockFormat::Raw,
            read_only: false,
            direct_io: false,
            serial: None,
        }
    }
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockFormat {
    /// Raw bytes (files, block devices, EROFS images).
    #[default]
    Raw,
    /// qcow2.
    Qcow2,
}

/// A shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDir {
    /// Device id.
    pub id: String,
    /// The tag the guest mounts (`mount -t 9p <tag>` / `mount -t virtiofs <tag>`).
    pub mount_tag: String,
    /// How it is shared.
    pub backend: ShareBackend,
}

/// How a directory is shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShareBackend {
    /// QEMU's built-in virtio-9p server.
    NineP {
        /// The host directory.
        host_path: PathBuf,
        /// Read-only for the guest.
        #[serde(default)]
        read_only: bool,
    },
    /// A vhost-user-fs daemon (virtiofsd) serving on `socket`; needs the
    /// VM's memory to be shared ([`MemoryConfig::shared`](crate::MemoryConfig::shared)).
    VirtioFs {
        /// The daemon's vhost-user socket.
        socket: PathBuf,
        /// Virtqueue size (virtiofsd supports up to 1024).
        #[serde(default = "default_queue_size")]
        queue_size: u16,
    },
}

fn default_queue_size() -> u16 {
    1024
}

/// A virtio-serial port; QEMU listens on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPort {
    /// Device id.
    pub id: String,
    /// Port name the guest sees in `/sys/class/virtio-ports/*/name`.
    pub name: String,
    /// Unix socket QEMU listens on (removed when the VM stops).
    pub socket: PathBuf,
}

/// A network interface: a virtio-net NIC backed by a host tap.
///
/// The hypervisor opens the tap itself, in `netns` ([`crate::tap::open`]),
/// and hands the VMM the open file (QEMU's `-netdev tap,fd=N,vhost=off`,
/// or `getfd` over QMP when hot-plugged), so the VMM never enters the
/// namespace. A tap that does not exist is created, and goes with the VM
/// (needs `CAP_NET_ADMIN`); a persistent one made beforehand stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDevice {
    /// Device id.
    pub id: String,
    /// Host tap interface name.
    pub tap: String,
    /// Guest MAC address.
    pub mac: MacAddress,
    /// The network namespace the tap is in (a bind-mounted nsfs file, as
    /// CNI gives); `None`: the hypervisor's own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// A PCI device passed through with VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioDevice {
    /// Device id.
    pub id: String,
    /// Host PCI address, `0000:3b:00.0`; the device must be bound to `vfio-pci`.
    pub host_bdf: String,
}

/// A vhost-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockDevice {
    /// Device id.
    pub id: String,
    /// The guest's context id (>= 3, unique on the host).
    pub guest_cid: u32,
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?}: expected 6 bytes"))?;
            if part.len() != 2 {
                return Err(format!("{s:?}: each byte is two hex digits"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?}: not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?}: expected 6 bytes"));
        }
        Ok(Self(out))
    }
}

impl Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where a PCI device sits in the guest: the slot number at each level,
/// from the root bus down, written as two-digit hex joined by `/` (the
/// format of Kata's agent protocol).
///
/// `10/00` is slot 0 on the bus behind the bridge (here, a PCIe root port)
/// in slot 0x10 of the root bus. The guest resolves it by walking sysfs:
/// `/sys/bus/pci/devices/0000:00:10.0/` holds one child `0000:BB:00.0` (the
/// secondary bus number `BB` is assigned by the guest), whose `virtio*/`
/// subdir has `block/vdX` for a disk or `net/ethN` for a NIC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PciPath(pub Vec<u8>);

impl fmt::Display for PciPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, slot) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{slot:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for PciPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let slots = s
            .split('/')
            .map(|part| match u8::from_str_radix(part, 16) {
                Ok(slot) if part.len() == 2 && slot < 32 => Ok(slot),
                _ => Err(format!("{s:?}: each level is a slot 00..1f")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(slots))
    }
}

impl Serialize for PciPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where an attached device can be found in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "bus", rename_all = "snake_case")]
pub enum GuestAddress {
    /// A PCI device.
    Pci {
        /// Its path from the root bus.
        path: PciPath,
    },
    /// A virtio-serial port, found by name in `/sys/class/virtio-ports/*/name`.
    SerialPort {
        /// The port name.
        name: String,
    },
}

/// A device attached to a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedDevice {
    /// The device as configured.
    pub device: Device,
    /// Where the guest finds it.
    pub address: GuestAddress,
    /// Whether it was hot-plugged (and can be unplugged).
    pub hotplugged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_path_round_trips() {
        let path: PciPath = "10/00".parse().unwrap();
        assert_eq!(path, PciPath(vec![0x10, 0]));
        assert_eq!(path.to_string(), "10/00");
        assert_eq!("1f".parse::<PciPath>().unwrap().to_string(), "1f");
        for bad in ["", "1", "20/00", "10//00", "zz", "100"] {
            assert!(bad.parse::<PciPath>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trips() {
        let mac: MacAddress = "52:54:00:12:34:5A".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:12:34:5a");
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            "\"52:54:00:12:34:5a\""
        );
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_kinds_and_serde() {
        let d = Device::SharedDir(SharedDir {
            id: "fs0".into(),
            mount_tag: "rootfs".into(),
            backend: ShareBackend::NineP {
                host_path: "/srv".into(),
                read_only: true,
            },
        });
        assert_eq!(d.kind(), DeviceKind::Share9p);
        assert_eq!(d.id(), "fs0");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Device>(&json).unwrap(), d);
        assert!(
            !Device::Serial(SerialPort {
                id: "s".into(),
                name: "n".into(),
                socket: "/s".into()
            })
            .is_pci()
        );
    }
}
