//! What another process needs to take over a running QEMU.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::accel::ResolvedAccelerator;
use crate::config::HypervisorConfig;
use crate::device::AttachedDevice;
use crate::error::Result;
use crate::hypervisor::HypervisorState;
use crate::process::ProcessRecord;
use crate::qemu::QemuOptions;
use crate::qemu::resize::{HotpluggedDimm, HotpluggedVcpu};
use crate::qemu::slots::HotplugPorts;

/// The backend name in a [`HypervisorState`] saved by QEMU.
pub const BACKEND: &str = "qemu";
/// Version of [`QemuState`]'s format.
pub const STATE_VERSION: u32 = 2;

/// The runtime state of a QEMU VM: its config and options, the process
/// (pid and start time, which together identify it even after pid
/// reuse), and the hot-plugged devices, vCPUs and memory. Sockets live at the config's fixed
/// paths, the process ledger in its runtime dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuState {
    /// The config the VM was started with.
    pub config: HypervisorConfig,
    /// The QEMU options it was started with.
    pub options: QemuOptions,
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
    /// Hot-plugged vCPUs, oldest first.
    #[serde(default)]
    pub vcpus: Vec<HotpluggedVcpu>,
    /// Hot-plugged memory, oldest first.
    #[serde(default)]
    pub dimms: Vec<HotpluggedDimm>,
    /// Whether the runtime dir was created by the backend (and is removed
    /// with the VM).
    pub created_runtime_dir: bool,
}

impl QemuState {
    /// This state as the trait's opaque [`HypervisorState`] (backend
    /// [`BACKEND`], version [`STATE_VERSION`]).
    pub fn to_hypervisor_state(&self) -> Result<HypervisorState> {
        HypervisorState::encode(BACKEND, STATE_VERSION, self)
    }

    /// The QEMU state inside `state`; a state of another backend or
    /// version is a typed error ([`Error::WrongBackend`](crate::Error::WrongBackend),
    /// [`Error::StateVersion`](crate::Error::StateVersion)).
    pub fn from_hypervisor_state(state: &HypervisorState) -> Result<Self> {
        state.decode(BACKEND, STATE_VERSION)
    }

    /// The QEMU process, as its ledger records it.
    pub fn process(&self) -> ProcessRecord {
        ProcessRecord {
            program: self.options.binary.clone(),
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}
