//! The device registry of a sandbox: [`DeviceManager`] (the interface the
//! sandbox programs against) and [`DeviceRegistry`] (its implementation
//! over a hypervisor's [`DeviceHotplug`](vc_hypervisor::DeviceHotplug)).

mod record;
mod registry;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use vc_hypervisor::{AttachedDevice, Device};

use crate::error::Result;
use crate::guest::GuestDevice;
use crate::info::{DeviceInfo, HostDevice};

pub use record::{Attachment, PlugKind};
pub use registry::DeviceRegistry;
pub use state::{DeviceManagerState, DeviceRecord, STATE_VERSION};

/// A sandbox's devices: registered once per host device, attached to the
/// VM when the first container needs them and detached when the last one
/// lets go.
///
/// Object-safe (`Arc<dyn DeviceManager>`); every method takes `&self` and
/// may be called from several tasks at once. Two containers attaching the
/// same device at the same time get one hot-plug between them; a detach
/// racing an attach of the same device is serialized after it.
#[async_trait]
pub trait DeviceManager: Send + Sync + fmt::Debug {
    /// Registers a device and returns its id; the same host device
    /// registered again with the same settings returns the same id.
    /// Inspects the host (the file, or sysfs for VFIO) but attaches nothing.
    fn register(&self, info: DeviceInfo) -> Result<String>;

    /// Forgets a device that no container holds and that is not attached.
    fn unregister(&self, id: &str) -> Result<()>;

    /// A device by id.
    fn device(&self, id: &str) -> Option<DeviceStatus>;

    /// A device by the host path it was registered with (or another name
    /// of the same file).
    fn find_by_host_path(&self, host_path: &Path) -> Option<DeviceStatus>;

    /// All devices, by id.
    fn devices(&self) -> Vec<DeviceStatus>;

    /// Takes a reference to device `id` for `container_id`, hot-plugging
    /// it first if no container holds it; returns where the guest finds
    /// it. A failed hot-plug leaves the registry as it was. A caller that
    /// stops waiting does not stop the hot-plug: it completes and the
    /// reference is taken, for the caller's undo to [`detach`](Self::detach)
    /// (or [`release_container`](Self::release_container)).
    async fn attach(&self, id: &str, container_id: &str) -> Result<GuestDevice>;

    /// Drops one reference of `container_id` to device `id`, unplugging
    /// the device when it was the last. A failed unplug leaves the
    /// device attached and the reference held.
    async fn detach(&self, id: &str, container_id: &str) -> Result<DetachOutcome>;

    /// Attaches `ids` in order for `container_id`; if one fails, the ones
    /// attached by this call are detached again and the error returned.
    async fn attach_all(&self, ids: &[String], container_id: &str) -> Result<Vec<GuestDevice>> {
        let mut done: Vec<&str> = Vec::with_capacity(ids.len());
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.attach(id, container_id).await {
                Ok(guest) => {
                    done.push(id);
                    out.push(guest);
                }
                Err(e) => {
                    for attached in done.iter().rev() {
                        // The original error is the one to report; an
                        // undo failure keeps the reference (see detach).
                        let _ = self.detach(attached, container_id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Drops every reference `container_id` holds (for a container that
    /// is deleted or died). Carries on past failures; returns the ids
    /// released.
    async fn release_container(&self, container_id: &str) -> Result<Vec<String>>;

    /// The hypervisor devices to cold-plug (put in the VM's config before
    /// it starts) for registered devices `ids`. After the VM started,
    /// [`reconcile`](Self::reconcile) with its device list marks them
    /// attached; containers then [`attach`](Self::attach) them as usual.
    fn coldplug_devices(&self, ids: &[String]) -> Result<Vec<Device>>;

    /// Makes the registry agree with the devices the VM has
    /// (`Hypervisor::devices()`): registered devices the VM has are
    /// attached (with the VM's addresses), those it lacks are detached,
    /// and leftovers of interrupted transitions are unplugged. For
    /// cold-plug and for a registry restored in another process; call it
    /// before the registry is shared.
    async fn reconcile(&self, vm_devices: &[AttachedDevice]) -> Result<ReconcileReport>;

    /// The state to persist, for [`DeviceRegistry::restore`] in another
    /// process.
    fn save_state(&self) -> DeviceManagerState;
}

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
    pub users: BTreeMap<String, u32>,
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

/// Settings of a [`DeviceRegistry`].
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
