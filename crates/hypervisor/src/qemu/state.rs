//! What another process needs to take over a running QEMU.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::accel::ResolvedAccelerator;
use crate::config::HypervisorConfig;
use crate::device::AttachedDevice;
use crate::qemu::slots::HotplugPorts;

/// Version of [`QemuState`]'s format.
pub const STATE_VERSION: u32 = 1;

/// The runtime state of a QEMU VM: its config, the process (pid and start
/// time, which together identify it even after pid reuse), and the
/// hot-plugged devices. Sockets live at the config's fixed paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuState {
    /// [`STATE_VERSION`] when written.
    pub version: u32,
    /// The config the VM was started with.
    pub config: HypervisorConfig,
    /// The accelerator it runs with.
    pub accelerator: ResolvedAccelerator,
    /// The firmware it booted.
    pub firmware: Option<PathBuf>,
    /// QEMU's pid.
    pub pid: u32,
    /// QEMU's start time, clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Hot-plug port use.
    pub ports: HotplugPorts,
    /// Hot-plugged devices by id.
    pub hotplugged: BTreeMap<String, AttachedDevice>,
    /// Whether the runtime dir was created by the backend (and is removed
    /// with the VM).
    pub created_runtime_dir: bool,
}
