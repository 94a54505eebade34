//! Starting, watching and ending the QEMU process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{DeviceTable, Phase, Qemu, Vm, cmdline, files};
use crate::error::{Error, Result};
use crate::hypervisor::{ExitWatch, VmExit, VmStatus};
use crate::process::{self, ProcessHandle, ProcessSpec};
use crate::qemu::slots::HotplugPorts;

/// How long to wait for QEMU to die after SIGKILL before reporting an error.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to connect to a QMP socket QEMU has not created yet.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

impl Qemu {
    /// Starts watching the process: the returned VM's supervisor task
    /// waits for its exit (reaping it when it is our child) and publishes
    /// it.
    pub(super) fn supervise(
        &self,
        process: ProcessHandle,
        owned: bool,
        table: DeviceTable,
    ) -> Arc<Vm> {
        let process = Arc::new(process);
        let stopping = Arc::new(AtomicBool::new(false));
        let supervisor = tokio::spawn(supervise(
            process.clone(),
            self.exit_tx.clone(),
            stopping.clone(),
            self.logger.clone(),
            files::qemu_log(&self.config),
            self.config.console_log(),
        ));
        Arc::new(Vm {
            process,
            owned,
            stopping,
            supervisor,
            devices: std::sync::Mutex::new(table),
        })
    }

    /// Prepares the runtime dir, spawns QEMU (recorded in the ledger
    /// before it runs) and waits until its monitor answers. On failure
    /// nothing is left: no process, no record, no socket (a runtime dir
    /// in use by another VMM is not touched).
    pub(super) async fn launch(&self, timeout: Duration) -> Result<Arc<Vm>> {
        let created = files::prepare_runtime_dir(&self.config)?;
        self.created_runtime_dir.store(created, Ordering::Relaxed);
        let launched = self.spawn_and_wait(timeout).await;
        if launched.is_err() {
            self.qmp.disconnect();
            if let Err(cleanup) = files::cleanup_runtime_dir(&self.config, &[], created) {
                slog::warn!(self.logger, "cleaning the runtime dir failed"; "error" => %cleanup);
            }
        }
        launched
    }

    async fn spawn_and_wait(&self, timeout: Duration) -> Result<Arc<Vm>> {
        let deadline = Instant::now() + timeout;
        let args = self.command_line()?;
        let log_path = files::qemu_log(&self.config);
        let log_err = |source| Error::RuntimeDir {
            path: log_path.clone(),
            source,
        };
        let log = std::fs::File::create(&log_path).map_err(log_err)?;
        let log2 = log.try_clone().map_err(log_err)?;
        let mut spec = ProcessSpec::new(&self.options.binary)
            .args(&args)
            .stdout(log)
            .stderr(log2);
        // In the order the command line numbers them (cmdline::cold_nics).
        for nic in cmdline::cold_nics(&self.config) {
            spec.pass_fd(super::hotplug::open_tap(nic).await?);
        }
        for procs in &self.config.spawn_cgroups {
            spec = spec.join_cgroup(procs);
        }
        slog::debug!(self.logger, "spawning QEMU"; "args" => args.join(" "), "lifetime" => ?self.config.lifetime);
        let process = process::spawn(spec, self.config.lifetime, &self.ledger).await?;
        let table = DeviceTable {
            ports: HotplugPorts::new(self.options.hotplug_ports),
            ..Default::default()
        };
        let vm = self.supervise(process, true, table);
        *self.lock_phase() = Phase::Starting(Some(vm.clone()));
        if let Err(e) = self.wait_ready(deadline, timeout).await {
            self.terminate(&vm).await;
            self.forget(&vm);
            return Err(e);
        }
        Ok(vm)
    }

    /// Connects QMP (retrying while QEMU creates its socket) and checks
    /// that the VM runs; fails early if QEMU exits.
    async fn wait_ready(&self, deadline: Instant, limit: Duration) -> Result<()> {
        let timeout = || Error::StartTimeout {
            timeout: limit,
            stderr: files::tail(&files::qemu_log(&self.config)),
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

    pub(super) async fn query_status(&self) -> Result<VmStatus> {
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
        if let Err(e) = vm.process.kill() {
            slog::error!(self.logger, "killing QEMU failed"; "pid" => vm.pid(), "error" => %e);
        }
        self.wait_exit(KILL_WAIT).await
    }

    /// Drops the record and exit status of a QEMU that is gone.
    fn forget(&self, vm: &Vm) {
        if let Err(e) = self.ledger.remove(vm.process.record()) {
            slog::warn!(self.logger, "removing QEMU from the process ledger failed"; "error" => %e);
        }
    }

    /// Removes what the VM left in the runtime dir: its ledger entry and
    /// exit status, sockets, logs unless kept, the dir if we made it.
    fn cleanup(&self, vm: &Vm) -> Result<()> {
        self.forget(vm);
        let sockets = Self::hotplugged_sockets(vm);
        let created = self.created_runtime_dir.load(Ordering::Relaxed);
        files::cleanup_runtime_dir(&self.config, &sockets, created)
    }

    /// Stops the VM of `vm`: `quit` over QMP, then `SIGKILL` after
    /// `timeout`; cleans the runtime dir once QEMU is gone.
    pub(super) async fn stop_vm(&self, vm: Arc<Vm>, timeout: Duration) -> Result<()> {
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
            slog::warn!(self.logger, "QEMU did not quit in time: killing it"; "pid" => vm.pid(), "timeout" => ?timeout);
            exit = self.terminate(&vm).await;
        }
        self.qmp.disconnect();
        let Some(exit) = exit else {
            // Still there after SIGKILL (stuck in the kernel): keep the
            // handle so a later stop can try again.
            let pid = vm.pid();
            *self.lock_phase() = Phase::Running(vm);
            return Err(Error::Process {
                op: "wait for the exit of",
                pid,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        };
        slog::info!(self.logger, "VM stopped"; "exit" => %exit);
        *self.lock_phase() = Phase::Stopped;
        self.cleanup(&vm)
    }
}

/// The supervisor task: waits for the process to exit (reaping it if it
/// is our child, else reading the status its reaper wrote), publishes the
/// exit, and logs a death that no stop asked for.
async fn supervise(
    process: Arc<ProcessHandle>,
    exit_tx: Arc<watch::Sender<Option<VmExit>>>,
    stopping: Arc<AtomicBool>,
    logger: slog::Logger,
    qemu_log: PathBuf,
    console_log: PathBuf,
) {
    let pid = process.pid();
    let status = match process.wait().await {
        Ok(status) => status,
        Err(e) => {
            slog::error!(logger, "cannot watch QEMU"; "pid" => pid, "error" => %e);
            return;
        }
    };
    let exit = VmExit { pid, status };
    if stopping.load(Ordering::Relaxed) {
        slog::info!(logger, "QEMU exited"; "exit" => %exit);
    } else {
        slog::warn!(logger, "QEMU exited unexpectedly"; "exit" => %exit,
            "stderr" => files::tail(&qemu_log), "console" => files::tail(&console_log));
    }
    exit_tx.send_replace(Some(exit));
}

impl Drop for Qemu {
    /// Lets go of the VM. Only the owning handle of a VM that dies with
    /// its owner ends QEMU here; an outliving VM keeps running until
    /// stopped, and an attached handle never ends it.
    fn drop(&mut self) {
        let phase = std::mem::replace(&mut *self.lock_phase(), Phase::Detached);
        let (Phase::Running(vm) | Phase::Starting(Some(vm))) = phase else {
            return;
        };
        vm.supervisor.abort();
        if !vm.owned || !self.dies_with_owner() {
            return;
        }
        // The owner must not leave QEMU behind. No runtime may be around
        // (drop can run anywhere), so kill and reap synchronously, bounded.
        vm.stopping.store(true, Ordering::Relaxed);
        let _ = vm.process.kill();
        let deadline = Instant::now() + KILL_WAIT;
        let mut reaped = false;
        while Instant::now() < deadline {
            match vm.process.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                _ => {
                    reaped = true;
                    break;
                }
            }
        }
        if !reaped {
            slog::error!(self.logger, "QEMU survived SIGKILL for 5 s"; "pid" => vm.pid());
        }
        if let Err(e) = self.cleanup(&vm) {
            slog::warn!(self.logger, "cleaning the runtime dir failed"; "error" => %e);
        }
        slog::info!(self.logger, "QEMU killed on drop"; "pid" => vm.pid());
    }
}
