//! The QEMU backend: `qemu-system-x86_64` as a supervised process, driven
//! over QMP.

pub mod cmdline;
mod commands;
mod files;
mod hotplug;
pub mod process;
mod qmp;
pub mod slots;
mod state;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::qmp::Qmp;
use self::slots::HotplugPorts;
pub use self::state::{QemuState, STATE_VERSION};
use crate::accel::{self, AcceleratorChoice};
use crate::config::{AGENT_CHANNEL_NAME, AgentChannel, Firmware, HypervisorConfig, QBOOT_FIRMWARE};
use crate::device::{AttachedDevice, Device, DeviceKind, GuestAddress, PciPath};
use crate::error::{Error, Result, Unsupported};
use crate::hypervisor::{
    AgentEndpoint, Capabilities, ExitStatus, ExitWatch, Hypervisor, HypervisorState, VcpuThread,
    VmExit, VmStatus,
};

/// How long to wait for QEMU to die after SIGKILL before reporting an error.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to connect to a QMP socket QEMU has not created yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

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
    pid: u32,
    start_time: u64,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    /// Whether this handle started it (and kills it on drop).
    owned: bool,
    /// Set once a stop began, so the exit is not reported as a crash.
    stopping: Arc<AtomicBool>,
    supervisor: JoinHandle<()>,
    devices: Mutex<DeviceTable>,
}

/// Hot-plugged devices and the ports they use.
#[derive(Debug, Clone, Default)]
struct DeviceTable {
    ports: HotplugPorts,
    hotplugged: BTreeMap<String, AttachedDevice>,
    /// Ids being hot-plugged right now.
    pending: std::collections::BTreeSet<String>,
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
/// [`Hypervisor::start`], ended by [`Hypervisor::stop`] or by dropping the
/// handle that started it.
///
/// The handle that started QEMU owns the process: it reaps it, notices and
/// reports its death ([`Hypervisor::exit_watch`]), and kills it on drop. A
/// handle from [`Qemu::attach`] (another process, later) drives the same VM
/// over QMP and can stop it, but does not kill it on drop.
pub struct Qemu {
    config: HypervisorConfig,
    accel: AcceleratorChoice,
    firmware: Option<PathBuf>,
    host: HostFeatures,
    logger: slog::Logger,
    qmp: Qmp,
    phase: Mutex<Phase>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    created_runtime_dir: AtomicBool,
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
    /// Prepares a VM: validates the config, checks that this host has what
    /// the config needs, and chooses the accelerator (logging which and
    /// why). Starts nothing.
    pub fn new(config: HypervisorConfig, logger: slog::Logger) -> Result<Self> {
        config.validate()?;
        let host = HostFeatures::probe();
        check_host_supports(&config, host)?;
        let accel = accel::choose(config.accelerator, accel::probe_kvm())?;
        let logger = logger.new(slog::o!("vm" => config.name.clone(), "vmm" => "qemu"));
        slog::info!(logger, "accelerator chosen"; "accelerator" => ?accel.accelerator, "reason" => &accel.reason);
        let firmware = match &config.firmware {
            Firmware::Auto => Some(PathBuf::from(QBOOT_FIRMWARE)).filter(|p| p.is_file()),
            Firmware::QemuDefault => None,
            Firmware::Path(path) => Some(path.clone()),
        };
        Ok(Self::with_parts(
            config,
            accel,
            firmware,
            host,
            logger,
            Phase::Prepared,
        ))
    }

    fn with_parts(
        config: HypervisorConfig,
        accel: AcceleratorChoice,
        firmware: Option<PathBuf>,
        host: HostFeatures,
        logger: slog::Logger,
        phase: Phase,
    ) -> Self {
        let qmp = Qmp::new(&config.qmp_socket(), config.qmp_timeout, logger.clone());
        let (exit_tx, _) = watch::channel(None);
        Self {
            config,
            accel,
            firmware,
            host,
            logger,
            qmp,
            phase: Mutex::new(phase),
            exit_tx: Arc::new(exit_tx),
            created_runtime_dir: AtomicBool::new(false),
        }
    }

    /// Takes over a VM started elsewhere (another process) from its saved
    /// state: checks that the process is the one recorded (pid and start
    /// time, so a reused pid is refused), then connects to its QMP socket.
    /// The new handle can do everything but does not kill QEMU on drop.
    pub async fn attach(state: QemuState, logger: slog::Logger) -> Result<Self> {
        if state.version != STATE_VERSION {
            return Err(Error::InvalidSavedState {
                reason: format!(
                    "version {} (this build reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        let pid = state.pid;
        let pidfd = process::pidfd_open(pid).map_err(|_| Error::VmmNotRunning { pid })?;
        let found = process::start_time(pid).map_err(|_| Error::VmmNotRunning { pid })?;
        if found != state.start_time {
            return Err(Error::PidReused {
                pid,
                expected: state.start_time,
                found,
            });
        }
        let logger = logger.new(slog::o!("vm" => state.config.name.clone(), "vmm" => "qemu"));
        let accel = AcceleratorChoice {
            accelerator: state.accelerator,
            reason: "attached to a running VM".into(),
        };
        let qemu = Self::with_parts(
            state.config,
            accel,
            state.firmware,
            HostFeatures::probe(),
            logger,
            Phase::Prepared,
        );
        qemu.created_runtime_dir
            .store(state.created_runtime_dir, Ordering::Relaxed);
        let table = DeviceTable {
            ports: state.ports,
            hotplugged: state.hotplugged,
            pending: Default::default(),
        };
        let vm = qemu.supervise(pid, state.start_time, pidfd, false, table)?;
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
    /// [`Qemu::attach`] elsewhere. For the VM to outlive this process, start
    /// it with `kill_on_parent_exit` off.
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
            version: STATE_VERSION,
            config: self.config.clone(),
            accelerator: self.accel.accelerator,
            firmware: self.firmware.clone(),
            pid: vm.pid,
            start_time: vm.start_time,
            ports: table.ports,
            hotplugged: table.hotplugged,
            created_runtime_dir: self.created_runtime_dir.load(Ordering::Relaxed),
        })
    }

    /// The accelerator in use and why it was chosen.
    pub fn accelerator(&self) -> &AcceleratorChoice {
        &self.accel
    }

    /// The QEMU arguments this VM starts with (without the binary).
    pub fn command_line(&self) -> Result<Vec<String>> {
        Ok(cmdline::build(
            &self.config,
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
            stderr: files::tail(&self.config.qemu_log()),
        }
    }

    /// Starts watching the process: the returned VM's supervisor task
    /// reaps it (when it is our child) and publishes the exit.
    fn supervise(
        &self,
        pid: u32,
        start_time: u64,
        pidfd: OwnedFd,
        owned: bool,
        table: DeviceTable,
    ) -> Result<Arc<Vm>> {
        let pidfd = Arc::new(process::watch(pidfd).map_err(|source| Error::Process {
            op: "watch",
            pid,
            source,
        })?);
        let stopping = Arc::new(AtomicBool::new(false));
        let supervisor = tokio::spawn(supervise(
            pid,
            pidfd.clone(),
            self.exit_tx.clone(),
            stopping.clone(),
            self.logger.clone(),
            self.config.qemu_log(),
            self.config.console_log(),
        ));
        Ok(Arc::new(Vm {
            pid,
            start_time,
            pidfd,
            owned,
            stopping,
            supervisor,
            devices: Mutex::new(table),
        }))
    }

    async fn launch(&self, timeout: Duration) -> Result<Arc<Vm>> {
        let deadline = Instant::now() + timeout;
        let created = files::prepare_runtime_dir(&self.config)?;
        self.created_runtime_dir.store(created, Ordering::Relaxed);
        let args = self.command_line()?;
        let log_path = self.config.qemu_log();
        let log = std::fs::File::create(&log_path).map_err(|source| Error::RuntimeDir {
            path: log_path.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| Error::RuntimeDir {
            path: log_path.clone(),
            source,
        })?;
        let mut command = Command::new(&self.config.qemu_binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        slog::debug!(self.logger, "spawning QEMU"; "args" => args.join(" "));
        let spawn_err = |source| Error::Spawn {
            binary: self.config.qemu_binary.clone(),
            source,
        };
        let pid = process::spawn(command, self.config.kill_on_parent_exit)
            .await
            .map_err(spawn_err)?;
        // Our child cannot be reaped by anyone else, so the pid is stable here.
        let pidfd = match process::pidfd_open(pid) {
            Ok(pidfd) => pidfd,
            Err(source) => {
                // Without a pidfd it cannot be supervised: end it now, by
                // pid (still ours and unreaped, so not reused).
                process::kill_and_reap_child(pid);
                return Err(Error::Process {
                    op: "open pidfd of",
                    pid,
                    source,
                });
            }
        };
        let start_time = process::start_time(pid).unwrap_or(0);
        let ports = HotplugPorts::new(self.config.hotplug_ports);
        let vm = self.supervise(
            pid,
            start_time,
            pidfd,
            true,
            DeviceTable {
                ports,
                ..Default::default()
            },
        )?;
        *self.lock_phase() = Phase::Starting(Some(vm.clone()));
        if let Err(e) = self.wait_ready(deadline, timeout).await {
            self.terminate(&vm).await;
            return Err(e);
        }
        Ok(vm)
    }

    /// Connects QMP (retrying while QEMU creates its socket) and checks
    /// that the VM runs; fails early if QEMU exits.
    async fn wait_ready(&self, deadline: Instant, limit: Duration) -> Result<()> {
        let timeout = || Error::StartTimeout {
            timeout: limit,
            stderr: files::tail(&self.config.qemu_log()),
        };
        let mut exit = ExitWatch::new(self.exit_tx.subscribe());
        loop {
            if let Some(exit) = exit.exited() {
                return Err(self.exited_error(exit));
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            let attempt = tokio::time::timeout_at(deadline.into(), self.qmp.connect());
            match attempt.await {
                Ok(Ok(())) => break,
                Ok(Err(_)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(CONNECT_RETRY) => {}
                        _ = exit.wait() => {}
                    }
                }
                Err(_) => return Err(timeout()),
            }
        }
        let status = tokio::time::timeout_at(deadline.into(), self.query_status())
            .await
            .map_err(|_| timeout())??;
        if status != VmStatus::Running {
            return Err(Error::InvalidState {
                op: "start",
                state: "not running after start",
            });
        }
        Ok(())
    }

    async fn query_status(&self) -> Result<VmStatus> {
        let info = self.qmp.execute(qapi::qmp::query_status {}).await?;
        Ok(match info.status {
            qapi::qmp::RunState::running => VmStatus::Running,
            qapi::qmp::RunState::paused => VmStatus::Paused,
            other => VmStatus::Other(format!("{other:?}")),
        })
    }

    /// Waits for the exit up to `limit`; returns it if it happened.
    async fn wait_exit(&self, limit: Duration) -> Option<VmExit> {
        let mut exit = ExitWatch::new(self.exit_tx.subscribe());
        tokio::time::timeout(limit, exit.wait())
            .await
            .ok()
            .flatten()
    }

    /// Kills QEMU and waits (bounded) for its exit to be published.
    async fn terminate(&self, vm: &Vm) -> Option<VmExit> {
        vm.stopping.store(true, Ordering::Relaxed);
        if let Err(e) = process::kill(vm.pidfd.get_ref()) {
            slog::error!(self.logger, "killing QEMU failed"; "pid" => vm.pid, "error" => %e);
        }
        self.wait_exit(KILL_WAIT).await
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
}

/// The supervisor task: waits for the process to exit, reaps it if it is
/// our child, publishes the exit, and logs a death that no stop asked for.
async fn supervise(
    pid: u32,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    stopping: Arc<AtomicBool>,
    logger: slog::Logger,
    qemu_log: PathBuf,
    console_log: PathBuf,
) {
    if let Err(e) = process::wait_exit(&pidfd).await {
        slog::error!(logger, "cannot watch QEMU"; "pid" => pid, "error" => %e);
        return;
    }
    // The pidfd turns readable at exit; the zombie may need a moment to be
    // reapable, so retry briefly.
    let mut status = ExitStatus::Unknown;
    for _ in 0..100 {
        match process::try_reap(pidfd.get_ref()) {
            Ok(Some(s)) => {
                status = s;
                break;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                slog::warn!(logger, "reaping QEMU failed"; "pid" => pid, "error" => %e);
                break;
            }
        }
    }
    let exit = VmExit { pid, status };
    if stopping.load(Ordering::Relaxed) {
        slog::info!(logger, "QEMU exited"; "exit" => %exit);
    } else {
        slog::warn!(logger, "QEMU exited unexpectedly"; "exit" => %exit,
            "stderr" => files::tail(&qemu_log), "console" => files::tail(&console_log));
    }
    exit_tx.send_replace(Some(exit));
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
    Unsupported {
        feature: "vsock".into(),
        reason: "this host has no /dev/vhost-vsock (load vhost_vsock)".into(),
    }
}

fn no_vfio() -> Unsupported {
    Unsupported {
        feature: "VFIO passthrough".into(),
        reason: "this host has no /dev/vfio/vfio".into(),
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn config(&self) -> &HypervisorConfig {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        let mut coldplug = vec![
            DeviceKind::Block,
            DeviceKind::Share9p,
            DeviceKind::ShareVirtioFs,
            DeviceKind::Serial,
            DeviceKind::Network,
        ];
        let mut hotplug = vec![DeviceKind::Block, DeviceKind::Serial, DeviceKind::Network];
        if self.config.memory.shared {
            hotplug.push(DeviceKind::ShareVirtioFs);
        }
        if self.host.vfio {
            coldplug.push(DeviceKind::Vfio);
            hotplug.push(DeviceKind::Vfio);
        }
        if self.host.vhost_vsock {
            coldplug.push(DeviceKind::Vsock);
            hotplug.push(DeviceKind::Vsock);
        }
        Capabilities {
            coldplug,
            hotplug,
            vsock: self.host.vhost_vsock,
            pause: true,
        }
    }

    async fn start(&self, timeout: Duration) -> Result<()> {
        {
            let mut phase = self.lock_phase();
            match &*phase {
                Phase::Prepared | Phase::Stopped => *phase = Phase::Starting(None),
                other => {
                    return Err(Error::InvalidState {
                        op: "start",
                        state: other.name(),
                    });
                }
            }
        }
        self.exit_tx.send_replace(None);
        match self.launch(timeout).await {
            Ok(vm) => {
                slog::info!(self.logger, "QEMU running"; "pid" => vm.pid,
                    "accelerator" => ?self.accel.accelerator, "runtime_dir" => %self.config.runtime_dir.display());
                *self.lock_phase() = Phase::Running(vm);
                Ok(())
            }
            Err(e) => {
                slog::error!(self.logger, "QEMU failed to start"; "error" => %e);
                self.qmp.disconnect();
                let created = self.created_runtime_dir.load(Ordering::Relaxed);
                if let Err(cleanup) = files::cleanup_runtime_dir(&self.config, &[], created) {
                    slog::warn!(self.logger, "cleaning the runtime dir failed"; "error" => %cleanup);
                }
                *self.lock_phase() = Phase::Stopped;
                Err(e)
            }
        }
    }

    async fn stop(&self, timeout: Duration) -> Result<()> {
        let vm = {
            let mut phase = self.lock_phase();
            match std::mem::replace(&mut *phase, Phase::Stopping) {
                // A start whose future was dropped leaves its process here.
                Phase::Running(vm) | Phase::Starting(Some(vm)) => vm,
                Phase::Prepared => {
                    *phase = Phase::Prepared;
                    return Ok(());
                }
                Phase::Stopped => {
                    *phase = Phase::Stopped;
                    return Ok(());
                }
                other => {
                    let state = other.name();
                    *phase = other;
                    return Err(Error::InvalidState { op: "stop", state });
                }
            }
        };
        vm.stopping.store(true, Ordering::Relaxed);
        let mut exit = *self.exit_tx.borrow();
        if exit.is_none() {
            // quit answers and then exits; the answer may be lost in the
            // exit, which is fine: the exit watch is what counts.
            let quit = tokio::time::timeout(timeout, self.qmp.execute(qapi::qmp::quit {})).await;
            if let Ok(Err(e)) = quit {
                slog::debug!(self.logger, "QMP quit"; "error" => %e);
            }
            exit = self.wait_exit(timeout).await;
        }
        if exit.is_none() {
            slog::warn!(self.logger, "QEMU did not quit in time: killing it"; "pid" => vm.pid, "timeout" => ?timeout);
            exit = self.terminate(&vm).await;
        }
        self.qmp.disconnect();
        let Some(exit) = exit else {
            // Still there after SIGKILL (stuck in the kernel): keep the
            // handle so a later stop can try again.
            *self.lock_phase() = Phase::Running(vm.clone());
            return Err(Error::Process {
                op: "wait for the exit of",
                pid: vm.pid,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        };
        slog::info!(self.logger, "VM stopped"; "exit" => %exit);
        let sockets = Self::hotplugged_sockets(&vm);
        let created = self.created_runtime_dir.load(Ordering::Relaxed);
        *self.lock_phase() = Phase::Stopped;
        files::cleanup_runtime_dir(&self.config, &sockets, created)
    }

    async fn pause(&self) -> Result<()> {
        self.live_vm("pause")?;
        self.qmp.execute(qapi::qmp::stop {}).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.live_vm("resume")?;
        self.qmp.execute(qapi::qmp::cont {}).await?;
        Ok(())
    }

    async fn check(&self) -> Result<VmStatus> {
        self.live_vm("check")?;
        match self.query_status().await {
            // The process may have died while the command was in flight.
            Err(e) => match *self.exit_tx.borrow() {
                Some(exit) => Err(self.exited_error(exit)),
                None => Err(e),
            },
            ok => ok,
        }
    }

    async fn vcpu_threads(&self) -> Result<Vec<VcpuThread>> {
        self.live_vm("list the vCPUs of")?;
        let cpus = self.qmp.execute(qapi::qmp::query_cpus_fast {}).await?;
        cpus.into_iter()
            .map(|cpu| match cpu {
                qapi::qmp::CpuInfoFast::x86_64(base) | qapi::qmp::CpuInfoFast::i386(base) => {
                    Ok(VcpuThread {
                        cpu: base.cpu_index as u32,
                        tid: base.thread_id as u32,
                    })
                }
                other => Err(Error::QmpCommand {
                    command: "query-cpus-fast",
                    class: "UnexpectedTarget".into(),
                    desc: format!("vCPU of target {:?}", other.target()),
                }),
            })
            .collect()
    }

    fn vmm_pids(&self) -> Vec<u32> {
        match &*self.lock_phase() {
            Phase::Running(vm) if self.exit_tx.borrow().is_none() => vec![vm.pid],
            _ => Vec::new(),
        }
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        match self.config.agent_channel {
            AgentChannel::VirtioSerial => AgentEndpoint::VirtioSerial {
                socket: self.config.agent_socket(),
                port_name: AGENT_CHANNEL_NAME.to_owned(),
                extra_sockets: self.config.agent_sockets().into_iter().skip(1).collect(),
            },
            AgentChannel::Vsock { guest_cid, port } => AgentEndpoint::Vsock { guest_cid, port },
        }
    }

    fn devices(&self) -> Vec<AttachedDevice> {
        let mut devices = self.cold_devices();
        if let Phase::Running(vm) = &*self.lock_phase() {
            let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            devices.extend(table.hotplugged.values().cloned());
        }
        devices
    }

    fn exit_watch(&self) -> ExitWatch {
        ExitWatch::new(self.exit_tx.subscribe())
    }

    fn save_state(&self) -> Result<HypervisorState> {
        Ok(HypervisorState::Qemu(self.qemu_state()?))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut *self.lock_phase(), Phase::Detached);
        let (Phase::Running(vm) | Phase::Starting(Some(vm))) = phase else {
            return;
        };
        vm.supervisor.abort();
        if !vm.owned {
            return;
        }
        // The owner must not leave QEMU behind. No runtime may be around
        // (drop can run anywhere), so kill and reap synchronously, bounded.
        vm.stopping.store(true, Ordering::Relaxed);
        let _ = process::kill(vm.pidfd.get_ref());
        let deadline = Instant::now() + KILL_WAIT;
        let mut reaped = false;
        while Instant::now() < deadline {
            match process::try_reap(vm.pidfd.get_ref()) {
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                _ => {
                    reaped = true;
                    break;
                }
            }
        }
        if !reaped {
            slog::error!(self.logger, "QEMU survived SIGKILL for 5 s"; "pid" => vm.pid);
        }
        let sockets = Self::hotplugged_sockets(&vm);
        let created = self.created_runtime_dir.load(Ordering::Relaxed);
        if let Err(e) = files::cleanup_runtime_dir(&self.config, &sockets, created) {
            slog::warn!(self.logger, "cleaning the runtime dir failed"; "error" => %e);
        }
        slog::info!(self.logger, "QEMU killed on drop"; "pid" => vm.pid);
    }
}
