//! The device manager of a sandbox: [`DeviceManager`], a registry of
//! devices with reference counts over a hypervisor's
//! [`DeviceHotplug`](vc_hypervisor::DeviceHotplug), which is the seam tests
//! fake (`MockHypervisor`).

mod record;
mod registry;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use vc_types::ContainerId;

use serde::{Deserialize, Serialize};

use crate::guest::GuestDevice;
use crate::info::{DeviceInfo, HostDevice};

pub use record::{Attachment, PlugKind};
pub use registry::DeviceManager;
pub use state::{DeviceManagerState, DeviceRecord, STATE_VERSION};

/// A registered device, as seen now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Its id.
    pub id: String,
    /// How it was registered.
    pub info: DeviceInfo,
    /// What the host inspection found.
    pub host: HostDevice,
    /// References per container.
    pub users: BTreeMap<ContainerId, u32>,
    /// Attachment state.
    pub state: DeviceState,
}

impl DeviceStatus {
    /// Total references.
    pub fn ref_count(&self) -> u32 {
        self.users.values().sum()
    }
}

/// Where a device is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeviceState {
    /// Registered, not in the VM.
    Detached,
    /// A hot-plug or unplug is in flight.
    Busy,
    /// In the VM.
    Attached {
        /// Where the guest finds it.
        guest: GuestDevice,
        /// How it got there.
        plug: PlugKind,
    },
}

/// What a detach did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetachOutcome {
    /// Other references remain; the device stays attached.
    StillInUse {
        /// References left.
        ref_count: u32,
    },
    /// The last reference went and the device was unplugged.
    Unplugged,
    /// The last reference went; the device stays in the VM because it was
    /// cold-plugged (devices on the root bus cannot be unplugged), or has
    /// nothing to unplug (character devices, the VFIO control device).
    Released,
}

/// What [`DeviceManager::reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Devices now attached that were not (cold-plugged, or a transition
    /// that completed before the process died).
    pub adopted: Vec<String>,
    /// Devices recorded as attached that the VM does not have; their
    /// references were dropped.
    pub lost: Vec<String>,
    /// Devices partly in the VM, or in it with no container holding them
    /// (interrupted transitions): what was there was unplugged.
    pub cleaned: Vec<String>,
}

/// Settings of a [`DeviceManager`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryConfig {
    /// Where sysfs is mounted, for VFIO resolution (`/sys`).
    pub sys_root: PathBuf,
    /// How long an unplug waits for the guest to release a device.
    pub unplug_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            sys_root: PathBuf::from("/sys"),
            unplug_timeout: Duration::from_secs(30),
        }
    }
}
