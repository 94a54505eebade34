//! One registered device: its facts, its users and its attachment, and
//! the pure mappings to hypervisor devices and guest locations.

use std::collections::BTreeMap;
use vc_types::ContainerId;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vc_hypervisor::{AttachedDevice, BlockDevice, Device, GuestAddress, PciPath, VfioDevice};

use super::{DeviceState, DeviceStatus};
use crate::error::{Error, Result, Unsupported};
use crate::guest::{GuestDevice, GuestLocation, GuestVfioFunction};
use crate::info::{DeviceInfo, DeviceType, HostDevice};
use crate::vfio::VfioNode;

/// How an attached device got into the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlugKind {
    /// Hot-plugged by this registry; unplugged with its last user.
    Hot,
    /// Cold-plugged at VM start; stays until the VM stops.
    Cold,
    /// Nothing to plug (character devices, the VFIO control device).
    Local,
}

/// A device in the VM: the hypervisor's devices that carry it and where
/// the guest finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The hypervisor devices (one disk; one per VFIO function; none for
    /// local devices).
    pub devices: Vec<AttachedDevice>,
    /// How they got there.
    pub plug: PlugKind,
    /// What the guest is told.
    pub location: GuestLocation,
}

/// The attachment state of a record.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Detached,
    /// A transition is in flight; the receiver reports (by closing) when
    /// it is over.
    Busy(watch::Receiver<()>),
    Attached(Attachment),
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub id: String,
    pub info: DeviceInfo,
    pub host: HostDevice,
    pub users: BTreeMap<ContainerId, u32>,
    pub slot: Slot,
}

impl Record {
    pub fn ref_count(&self) -> u32 {
        self.users.values().sum()
    }

    pub fn add_user(&mut self, container_id: &ContainerId) {
        *self.users.entry(container_id.to_owned()).or_default() += 1;
    }

    /// Drops one reference of `container_id`; false if it held none.
    pub fn remove_user(&mut self, container_id: &ContainerId) -> bool {
        match self.users.get_mut(container_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.users.remove(container_id);
                true
            }
            None => false,
        }
    }

    pub fn guest_device(&self, attachment: &Attachment) -> GuestDevice {
        GuestDevice {
            id: self.id.clone(),
            host_path: self.info.host_path.clone(),
            device_type: self.info.device_type,
            read_only: self.info.read_only,
            location: attachment.location.clone(),
            options: self.info.driver_options.guest.clone(),
        }
    }

    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            id: self.id.clone(),
            info: self.info.clone(),
            host: self.host.clone(),
            users: self.users.clone(),
            state: match &self.slot {
                Slot::Detached => DeviceState::Detached,
                Slot::Busy(_) => DeviceState::Busy,
                Slot::Attached(a) => DeviceState::Attached {
                    guest: self.guest_device(a),
                    plug: a.plug,
                },
            },
        }
    }
}

/// The id prefix of each device type.
pub(crate) fn id_prefix(device_type: DeviceType) -> &'static str {
    match device_type {
        DeviceType::Block => "dm-blk",
        DeviceType::Vfio => "dm-vfio",
        DeviceType::Char => "dm-chr",
    }
}

/// The hypervisor id of the `index`-th function of VFIO device `id`.
pub(crate) fn vfio_function_id(id: &str, index: usize) -> String {
    format!("{id}-f{index}")
}

/// The hypervisor devices that carry a registered device (empty: nothing
/// to plug).
pub(crate) fn hypervisor_devices(
    id: &str,
    info: &DeviceInfo,
    host: &HostDevice,
) -> Result<Vec<Device>> {
    Ok(match host {
        HostDevice::Block { canonical_path, .. } => {
            let mut disk = BlockDevice::new(id, canonical_path);
            disk.read_only = info.read_only;
            disk.format = info.driver_options.format;
            disk.direct_io = info.driver_options.direct_io;
            disk.serial = Some(id.to_owned());
            vec![Device::Block(disk)]
        }
        HostDevice::Char { .. } => Vec::new(),
        HostDevice::Vfio(vfio) => vfio
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let host_bdf = f.address.to_qemu_host().ok_or_else(|| {
                    Unsupported::new(
                        format!("passing through {}", f.address),
                        "PCI domains above ffff (VMD) do not fit the hypervisor's host address",
                    )
                })?;
                Ok(Device::Vfio(VfioDevice {
                    id: vfio_function_id(id, i),
                    host_bdf,
                }))
            })
            .collect::<Result<_>>()?,
    })
}

fn pci_path(id: &str, attached: &AttachedDevice) -> Result<PciPath> {
    match &attached.address {
        GuestAddress::Pci { path } => Ok(path.clone()),
        other => Err(Unsupported::new(
            format!("device {id} at guest address {other:?}"),
            "disks and VFIO functions are found by PCI path",
        )
        .into()),
    }
}

/// Where the guest finds the device, from the hypervisor's answers.
/// VFIO functions missing from `attached` are left out.
pub(crate) fn location_of(
    id: &str,
    host: &HostDevice,
    attached: &[AttachedDevice],
) -> Result<GuestLocation> {
    match host {
        HostDevice::Block { .. } => {
            let disk = attached
                .iter()
                .find(|a| a.device.id() == id)
                .ok_or_else(|| Error::InvalidSavedState {
                    reason: format!("no hypervisor device for disk {id}"),
                })?;
            Ok(GuestLocation::VirtioBlk {
                pci_path: pci_path(id, disk)?,
                serial: match &disk.device {
                    Device::Block(b) => b.serial.clone().unwrap_or_else(|| id.to_owned()),
                    _ => id.to_owned(),
                },
            })
        }
        HostDevice::Char { major, minor } => Ok(GuestLocation::Char {
            major: *major,
            minor: *minor,
        }),
        HostDevice::Vfio(vfio) => {
            if vfio.node == VfioNode::Control {
                return Ok(GuestLocation::VfioControl);
            }
            let mut functions = Vec::new();
            for (i, f) in vfio.functions.iter().enumerate() {
                let fid = vfio_function_id(id, i);
                if let Some(a) = attached.iter().find(|a| a.device.id() == fid) {
                    functions.push(GuestVfioFunction {
                        host_address: f.address,
                        pci_path: pci_path(&fid, a)?,
                        siblings: f.siblings.clone(),
                    });
                }
            }
            Ok(GuestLocation::Vfio {
                iommu_group: vfio.iommu_group.unwrap_or_default(),
                functions,
            })
        }
    }
}
