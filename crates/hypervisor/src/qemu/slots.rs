//! Where devices go on the q35 root bus (pure).
//!
//! Slot 0 is the host bridge and 0x1f the ICH9 LPC bridge. The agent's
//! virtio-serial controller takes slot 2, cold-plugged PCI devices take
//! 3..=0xf in config order, and the hot-plug PCIe root ports take
//! 0x10..=0x1e. A hot-plugged device sits in slot 0 behind its port, so
//! its guest PCI path is `<port slot>/00`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::PciPath;

/// Slot of the virtio-serial controller (agent channel, serial ports).
pub const VIRTIO_SERIAL_SLOT: u8 = 0x02;
/// First slot for cold-plugged devices.
pub const FIRST_COLD_SLOT: u8 = 0x03;
/// How many cold-plugged PCI devices fit.
pub const COLD_PLUG_SLOTS: usize = 13;
/// First slot for hot-plug root ports.
pub const FIRST_PORT_SLOT: u8 = 0x10;
/// How many hot-plug root ports fit.
pub const HOTPLUG_PORT_SLOTS: usize = 15;

/// The QEMU id of hot-plug root port `index`.
pub fn port_id(index: u32) -> String {
    format!("hp{index}")
}

/// The root-bus slot of hot-plug root port `index`.
pub fn port_slot(index: u32) -> u8 {
    FIRST_PORT_SLOT + index as u8
}

/// The root-bus slot of the `nth` cold-plugged PCI device.
pub fn cold_slot(nth: usize) -> u8 {
    FIRST_COLD_SLOT + nth as u8
}

/// Guest PCI path of a device behind hot-plug port `index`.
pub fn hotplug_path(index: u32) -> PciPath {
    PciPath(vec![port_slot(index), 0])
}

/// Which hot-plug ports hold which device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugPorts {
    ports: u32,
    /// Device id -> port (keyed by id so it serializes as a JSON object).
    used: BTreeMap<String, u32>,
}

impl HotplugPorts {
    /// `ports` free ports.
    pub fn new(ports: u32) -> Self {
        Self {
            ports,
            used: BTreeMap::new(),
        }
    }

    /// How many ports there are.
    pub fn len(&self) -> u32 {
        self.ports
    }

    /// Whether there are no ports.
    pub fn is_empty(&self) -> bool {
        self.ports == 0
    }

    /// Takes the lowest free port for `device_id`.
    pub fn take(&mut self, device_id: &str) -> Option<u32> {
        let free = (0..self.ports).find(|i| !self.used.values().any(|p| p == i))?;
        self.used.insert(device_id.to_owned(), free);
        Some(free)
    }

    /// Frees the port of `device_id`; returns it.
    pub fn release(&mut self, device_id: &str) -> Option<u32> {
        self.used.remove(device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_taken_lowest_first_and_reused() {
        let mut ports = HotplugPorts::new(2);
        assert_eq!(ports.take("a"), Some(0));
        assert_eq!(ports.take("b"), Some(1));
        assert_eq!(ports.take("c"), None);
        assert_eq!(ports.release("a"), Some(0));
        assert_eq!(ports.release("a"), None);
        assert_eq!(ports.take("c"), Some(0));
        // Survives the JSON round trip of a saved state, even inside the
        // opaque state's JSON value (where map keys must be strings).
        let qemu = crate::QemuState {
            config: crate::HypervisorConfig::new("vm", "/k", "/run/vm"),
            options: crate::QemuOptions::default(),
            accelerator: crate::accel::ResolvedAccelerator::Tcg,
            firmware: None,
            pid: 1,
            start_time: 2,
            ports: ports.clone(),
            hotplugged: Default::default(),
            vcpus: Vec::new(),
            dimms: Vec::new(),
            created_runtime_dir: true,
        };
        let state = qemu.to_hypervisor_state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let back = serde_json::from_str::<crate::HypervisorState>(&json).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            crate::QemuState::from_hypervisor_state(&back).unwrap(),
            qemu
        );
        assert_eq!(hotplug_path(0).to_string(), "10/00");
        assert_eq!(hotplug_path(14).to_string(), "1e/00");
        assert_eq!(port_slot(HOTPLUG_PORT_SLOTS as u32 - 1), 0x1e);
        assert_eq!(cold_slot(COLD_PLUG_SLOTS - 1), 0x0f);
    }
}
