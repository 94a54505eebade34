//! The registry's persisted state.

use std::collections::BTreeMap;
use vc_types::ContainerId;

use serde::{Deserialize, Serialize};

use super::record::{Attachment, Record, Slot};
use crate::info::{DeviceInfo, HostDevice};

/// The version of [`DeviceManagerState`] this crate writes and reads.
pub const STATE_VERSION: u32 = 1;

/// Everything needed to rebuild a registry in another process
/// (serialize it with serde; the SDK uses JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceManagerState {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// The next number for a device id.
    pub next_index: u64,
    /// The registered devices.
    pub devices: Vec<DeviceRecord>,
}

/// One registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its id.
    pub id: String,
    /// How it was registered.
    pub info: DeviceInfo,
    /// What the host inspection found.
    pub host: HostDevice,
    /// References per container.
    pub users: BTreeMap<ContainerId, u32>,
    /// Its attachment, when attached.
    pub attachment: Option<Attachment>,
    /// A hot-plug or unplug was in flight when the state was saved; the
    /// restoring process asks the VM what came of it.
    #[serde(default)]
    pub in_flight: bool,
}

impl DeviceRecord {
    pub(crate) fn from_record(record: &Record) -> Self {
        let (attachment, in_flight) = match &record.slot {
            Slot::Detached => (None, false),
            Slot::Busy(_) => (None, true),
            Slot::Attached(a) => (Some(a.clone()), false),
        };
        Self {
            id: record.id.clone(),
            info: record.info.clone(),
            host: record.host.clone(),
            users: record.users.clone(),
            attachment,
            in_flight,
        }
    }
}
