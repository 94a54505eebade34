//! What the guest is told about an attached device, so it finds the
//! right one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vc_hypervisor::PciPath;

use crate::info::DeviceType;
use crate::pci::PciAddress;

/// An attached device as the guest (the agent) needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDevice {
    /// The manager's id of the device.
    pub id: String,
    /// The host path it was registered with.
    pub host_path: PathBuf,
    /// What it is.
    pub device_type: DeviceType,
    /// Read-only.
    pub read_only: bool,
    /// Where the guest finds it.
    pub location: GuestLocation,
    /// The caller's opaque options for the guest
    /// ([`DriverOptions::guest`](crate::DriverOptions::guest)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// Where the guest finds a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestLocation {
    /// A virtio-blk disk. The guest resolves `pci_path` through sysfs
    /// (`/sys/bus/pci/devices/0000:00:<slot>.0/0000:*:<slot>.0/virtio*/block/vdX`
    /// for a two-level path) and can check `/sys/block/vdX/serial`.
    VirtioBlk {
        /// The PCI path (slots from the root bus, e.g. `10/00`).
        pci_path: PciPath,
        /// The disk's serial number (at most 20 bytes, virtio-blk's limit).
        serial: String,
    },
    /// PCI functions passed through with VFIO.
    Vfio {
        /// The host IOMMU group.
        iommu_group: u32,
        /// The functions, in host address order.
        functions: Vec<GuestVfioFunction>,
    },
    /// The VFIO control device: nothing in the guest.
    VfioControl,
    /// A character device the guest kernel provides itself.
    Char {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// One passed-through PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestVfioFunction {
    /// Its host address.
    pub host_address: PciAddress,
    /// Where the guest finds it.
    pub pci_path: PciPath,
    /// The other devices of its host IOMMU group.
    pub siblings: Vec<PciAddress>,
}
