//! The QEMU backend: `qemu-system-x86_64` as a supervised process, driven
//! over QMP.
//!
//! QEMU is spawned through [`crate::process`]: it is in the runtime dir's
//! process ledger before it runs, it dies with its creator or outlives it
//! as the config's [`lifetime`](crate::HypervisorConfig::lifetime) says,
//! and its exit status is readable by every process that attaches to it.

pub mod cmdline;
mod commands;
mod files;
mod hotplug;
mod options;
mod qmp;
mod resize;
mod run;
pub mod slots;
mod state;
mod trait_impl;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use vc_types::Unsupported;

pub use self::options::{
    DEFAULT_QEMU_BINARY, Firmware, MachineType, QBOOT_FIRMWARE, QemuOptions, QemuOptionsError,
};
use self::qmp::Qmp;
pub use self::resize::{HotpluggedDimm, HotpluggedVcpu, MEMORY_SLOTS};
use self::slots::HotplugPorts;
pub use self::state::{BACKEND, QemuState, STATE_VERSION};
use crate::accel::{self, AcceleratorChoice};
use crate::config::{AgentChannel, HypervisorConfig, check_socket_path};
use crate::device::{AttachedDevice, Device, DeviceKind, GuestAddress, PciPath};
use crate::error::{ConfigError, Error, Result};
use crate::hypervisor::{HypervisorState, VmExit};
use crate::process::{ProcessHandle, ProcessLedger, ProcessLifetime};

/// What this host offers beyond QEMU itself.
#[derive(Debug, Clone, Copy)]
struct HostFeatures {
    vhost_vsock: bool,
    vfio: bool,
}

impl HostFeatures {
    fn probe() -> Self {
        Self {
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            vfio: Path::new("/dev/vfio/vfio").exists(),
        }
    }
}

/// A running (or exited) QEMU process.
struct Vm {
    process: Arc<ProcessHandle>,
    /// Whether this handle started it (and, when it dies with its owner,
    /// kills it on drop).
    owned: bool,
    /// Set once a stop began, so the exit is not reported as a crash.
    stopping: Arc<AtomicBool>,
    supervisor: JoinHandle<()>,
    devices: Mutex<DeviceTable>,
}

impl Vm {
    fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Hot-plugged devices and the ports they use.
#[derive(Debug, Clone, Default)]
struct DeviceTable {
    ports: HotplugPorts,
    hotplugged: BTreeMap<String, AttachedDevice>,
    /// Ids being hot-plugged right now.
    pending: BTreeSet<String>,
    /// Hot-plugged vCPUs, oldest first.
    vcpus: Vec<HotpluggedVcpu>,
    /// Hot-plugged DIMMs, oldest first.
    dimms: Vec<HotpluggedDimm>,
}

enum Phase {
    Prepared,
    /// The process, once spawned, is kept here so that a cancelled start
    /// or a drop still ends it.
    Starting(Option<Arc<Vm>>),
    Running(Arc<Vm>),
    Stopping,
    Stopped,
    Detached,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Self::Prepared => "not started",
            Self::Starting(_) => "starting",
            Self::Running(_) => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Detached => "detached",
        }
    }
}

/// A QEMU VM: prepared by [`Qemu::new`], started by
/// [`Hypervisor::start`](crate::Hypervisor::start), ended by
/// [`Hypervisor::stop`](crate::Hypervisor::stop).
///
/// The handle that started QEMU owns it: it notices and reports its death
/// ([`Hypervisor::exit_watch`](crate::Hypervisor::exit_watch)). What a
/// drop of that handle does depends on the config's
/// [`lifetime`](HypervisorConfig::lifetime):
/// - [`ProcessLifetime::DiesWithOwner`]: QEMU is a child of this process;
///   dropping the owning handle kills and reaps it and removes its files,
///   and it dies with this process in any case.
/// - [`ProcessLifetime::OutlivesOwner`]: QEMU runs under a keeper process
///   and survives both the drop of the owning handle and the exit of this
///   process; only [`Hypervisor::stop`](crate::Hypervisor::stop) (from
///   any process, through [`Qemu::attach`]) ends it.
///
/// A handle from [`Qemu::attach`] (another process, later) drives the same
/// VM over QMP and can stop it, but does not kill it on drop.
pub struct Qemu {
    config: HypervisorConfig,
    options: QemuOptions,
    accel: AcceleratorChoice,
    firmware: Option<PathBuf>,
    host: HostFeatures,
    logger: slog::Logger,
    qmp: Qmp,
    ledger: ProcessLedger,
    phase: Mutex<Phase>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    created_runtime_dir: AtomicBool,
    /// One vCPU or memory resize at a time (each picks free slots).
    resize_lock: tokio::sync::Mutex<()>,
    /// QEMU's version (major, minor), asked once.
    version: std::sync::OnceLock<(u64, u64)>,
}

impl std::fmt::Debug for Qemu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qemu")
            .field("name", &self.config.name)
            .field("accelerator", &self.accel.accelerator)
            .field("phase", &self.lock_phase().name())
            .finish_non_exhaustive()
    }
}

impl Qemu {
    /// Prepares a VM: validates the config and the QEMU options, checks
    /// that this host has what the config needs, and chooses the
    /// accelerator (logging which and why). Starts nothing.
    pub fn new(
        config: HypervisorConfig,
        options: QemuOptions,
        logger: slog::Logger,
    ) -> Result<Self> {
        config.validate()?;
        options.validate()?;
        check_layout(&config)?;
        let host = HostFeatures::probe();
        check_host_supports(&config, host)?;
        let accel = accel::choose(config.accelerator, accel::probe_kvm())?;
        let logger = logger.new(slog::o!("vm" => config.name.clone(), "vmm" => "qemu"));
        slog::info!(logger, "accelerator chosen"; "accelerator" => ?accel.accelerator, "reason" => &accel.reason);
        let firmware = options.firmware_path();
        Ok(Self::with_parts(
            config, options, accel, firmware, host, logger,
        ))
    }

    fn with_parts(
        config: HypervisorConfig,
        options: QemuOptions,
        accel: AcceleratorChoice,
        firmware: Option<PathBuf>,
        host: HostFeatures,
        logger: slog::Logger,
    ) -> Self {
        let qmp = Qmp::new(
            &files::qmp_socket(&config),
            config.control_timeout,
            logger.clone(),
        );
        let ledger = ProcessLedger::open(&config.runtime_dir);
        let (exit_tx, _) = watch::channel(None);
        Self {
            config,
            options,
            accel,
            firmware,
            host,
            logger,
            qmp,
            ledger,
            phase: Mutex::new(Phase::Prepared),
            exit_tx: Arc::new(exit_tx),
            created_runtime_dir: AtomicBool::new(false),
            resize_lock: tokio::sync::Mutex::new(()),
            version: std::sync::OnceLock::new(),
        }
    }

    /// Takes over a VM started elsewhere (another process) from its saved
    /// state: checks that the state is QEMU's
    /// ([`Error::WrongBackend`], [`Error::StateVersion`]), that the
    /// process is the one recorded and alive (a reused pid is
    /// [`Error::PidReused`]; a VMM that is gone or a zombie is
    /// [`Error::VmmNotRunning`]), then connects to its QMP socket. The new
    /// handle can do everything but does not kill QEMU on drop; its
    /// [`exit_watch`](crate::Hypervisor::exit_watch) fires when QEMU dies,
    /// with the exit status its reaper recorded.
    pub async fn attach(state: HypervisorState, logger: slog::Logger) -> Result<Self> {
        let state = QemuState::from_hypervisor_state(&state)?;
        let ledger = ProcessLedger::open(&state.config.runtime_dir);
        let process = match ProcessHandle::attach(&ledger, state.process()) {
            Ok(process) => process,
            Err(Error::ProcessNotRunning { pid, .. }) => return Err(Error::VmmNotRunning { pid }),
            Err(e) => return Err(e),
        };
        let logger = logger.new(slog::o!("vm" => state.config.name.clone(), "vmm" => "qemu"));
        let accel = AcceleratorChoice {
            accelerator: state.accelerator,
            reason: "attached to a running VM".into(),
        };
        let qemu = Self::with_parts(
            state.config,
            state.options,
            accel,
            state.firmware,
            HostFeatures::probe(),
            logger,
        );
        qemu.created_runtime_dir
            .store(state.created_runtime_dir, Ordering::Relaxed);
        let table = DeviceTable {
            ports: state.ports,
            hotplugged: state.hotplugged,
            pending: Default::default(),
            vcpus: state.vcpus,
            dimms: state.dimms,
        };
        let pid = process.pid();
        let vm = qemu.supervise(process, false, table);
        *qemu.lock_phase() = Phase::Running(vm);
        if let Err(e) = qemu.qmp.connect().await {
            // Not ours to kill: just let go of it.
            qemu.detach_now();
            return Err(e);
        }
        slog::info!(qemu.logger, "attached to running QEMU"; "pid" => pid);
        Ok(qemu)
    }

    /// Lets go of the VM without stopping it and returns its state, for
    /// [`Qemu::attach`] elsewhere. For the VM to outlive this process,
    /// start it with [`ProcessLifetime::OutlivesOwner`].
    pub fn detach(self) -> Result<QemuState> {
        let state = self.qemu_state()?;
        self.detach_now();
        Ok(state)
    }

    fn detach_now(&self) {
        let previous = std::mem::replace(&mut *self.lock_phase(), Phase::Detached);
        if let Phase::Running(vm) = previous {
            vm.supervisor.abort();
        }
        self.qmp.disconnect();
    }

    /// The saved state of the running VM.
    pub fn qemu_state(&self) -> Result<QemuState> {
        let vm = self.running_vm("save the state of")?;
        let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(QemuState {
            config: self.config.clone(),
            options: self.options.clone(),
            accelerator: self.accel.accelerator,
            firmware: self.firmware.clone(),
            pid: vm.pid(),
            start_time: vm.process.record().start_time,
            ports: table.ports,
            hotplugged: table.hotplugged,
            vcpus: table.vcpus,
            dimms: table.dimms,
            created_runtime_dir: self.created_runtime_dir.load(Ordering::Relaxed),
        })
    }

    /// The QEMU options.
    pub fn options(&self) -> &QemuOptions {
        &self.options
    }

    /// The process ledger in the runtime dir, where QEMU is recorded
    /// before it runs.
    pub fn ledger(&self) -> &ProcessLedger {
        &self.ledger
    }

    /// The accelerator in use and why it was chosen.
    pub fn accelerator(&self) -> &AcceleratorChoice {
        &self.accel
    }

    /// The QEMU arguments this VM starts with (without the binary).
    pub fn command_line(&self) -> Result<Vec<String>> {
        Ok(cmdline::build(
            &self.config,
            &self.options,
            self.accel.accelerator,
            self.firmware.as_deref(),
        )?)
    }

    fn lock_phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_vm(&self, op: &'static str) -> Result<Arc<Vm>> {
        match &*self.lock_phase() {
            Phase::Running(vm) => Ok(vm.clone()),
            other => Err(Error::InvalidState {
                op,
                state: other.name(),
            }),
        }
    }

    /// A running VM whose process is alive, else the exit as an error.
    fn live_vm(&self, op: &'static str) -> Result<Arc<Vm>> {
        let vm = self.running_vm(op)?;
        if let Some(exit) = self.exit_tx.borrow().as_ref() {
            return Err(self.exited_error(*exit));
        }
        Ok(vm)
    }

    fn exited_error(&self, exit: VmExit) -> Error {
        Error::VmmExited {
            exit,
            stderr: files::tail(&files::qemu_log(&self.config)),
        }
    }

    /// Sockets of hot-plugged serial ports (QEMU created them).
    fn hotplugged_sockets(vm: &Vm) -> Vec<PathBuf> {
        let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
        table
            .hotplugged
            .values()
            .filter_map(|d| match &d.device {
                Device::Serial(port) => Some(port.socket.clone()),
                _ => None,
            })
            .collect()
    }

    fn cold_devices(&self) -> Vec<AttachedDevice> {
        cmdline::cold_layout(&self.config)
            .into_iter()
            .map(|(device, slot)| {
                let address = match (&device, slot) {
                    (Device::Serial(port), _) => GuestAddress::SerialPort {
                        name: port.name.clone(),
                    },
                    (_, slot) => GuestAddress::Pci {
                        path: PciPath(vec![slot.unwrap_or(0)]),
                    },
                };
                AttachedDevice {
                    device,
                    address,
                    hotplugged: false,
                }
            })
            .collect()
    }

    /// Whether dropping the owning handle must end QEMU.
    fn dies_with_owner(&self) -> bool {
        self.config.lifetime == ProcessLifetime::DiesWithOwner
    }
}

/// Refuses what QEMU's machine cannot hold: more cold-plugged PCI devices
/// than root-bus slots, a QMP socket path too long for `sun_path`.
fn check_layout(config: &HypervisorConfig) -> Result<(), ConfigError> {
    check_socket_path(&files::qmp_socket(config))?;
    let cold_pci = cmdline::cold_layout(config)
        .iter()
        .filter(|(_, slot)| slot.is_some())
        .count();
    let nics = cmdline::cold_nics(config).len();
    if nics > crate::process::MAX_PASSED_FDS {
        return Err(ConfigError::TooManyPciDevices {
            what: "cold-plugged NICs",
            requested: nics,
            limit: crate::process::MAX_PASSED_FDS,
        });
    }
    if cold_pci > slots::COLD_PLUG_SLOTS {
        return Err(ConfigError::TooManyPciDevices {
            what: "cold-plugged PCI devices",
            requested: cold_pci,
            limit: slots::COLD_PLUG_SLOTS,
        });
    }
    Ok(())
}

/// Refuses configs that need host features this host lacks.
fn check_host_supports(config: &HypervisorConfig, host: HostFeatures) -> Result<()> {
    let vsock = matches!(config.agent_channel, AgentChannel::Vsock { .. })
        || config.devices.iter().any(|d| d.kind() == DeviceKind::Vsock);
    if vsock && !host.vhost_vsock {
        return Err(no_vhost_vsock().into());
    }
    if config.devices.iter().any(|d| d.kind() == DeviceKind::Vfio) && !host.vfio {
        return Err(no_vfio().into());
    }
    Ok(())
}

fn no_vhost_vsock() -> Unsupported {
    Unsupported::new(
        "vsock",
        "this host has no /dev/vhost-vsock (load vhost_vsock)",
    )
}

fn no_vfio() -> Unsupported {
    Unsupported::new("VFIO passthrough", "this host has no /dev/vfio/vfio")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::BlockDevice;

    #[test]
    fn the_machine_layout_is_checked_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"d").unwrap();
        let mut config = HypervisorConfig::new("vm", "/k", dir.path().join("run"));
        for i in 0..slots::COLD_PLUG_SLOTS {
            let id = format!("d{i}");
            config
                .devices
                .push(Device::Block(BlockDevice::new(id, &disk)));
        }
        check_layout(&config).unwrap();
        config
            .devices
            .push(Device::Block(BlockDevice::new("one-too-many", &disk)));
        assert!(matches!(
            check_layout(&config),
            Err(ConfigError::TooManyPciDevices { requested, .. }) if requested == slots::COLD_PLUG_SLOTS + 1
        ));
    }
}
