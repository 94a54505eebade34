//! A test VM with its shell: boots a busybox
//! [`InitMode::Serve`](crate::InitMode::Serve) image and connects a
//! [`GuestShell`] to it. The one
//! place where tests that only need a guest to run commands in touch the
//! hypervisor API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use vc_hypervisor::{Hypervisor, HypervisorConfig, Qemu, QemuOptions};

use crate::shell::GuestShell;

/// A running VM and the shell on its agent channel. The VM is killed when
/// this is dropped; [`ShellVm::stop`] stops it cleanly.
pub struct ShellVm {
    vm: Qemu,
    /// The guest's command server.
    pub shell: GuestShell,
    console_log: PathBuf,
}

impl ShellVm {
    /// Starts a VM from `config` and `options` (e.g.
    /// [`crate::small_vm_options`]; the image's init serves shell commands)
    /// and connects to its shell, each step within `timeout`. On failure
    /// the error carries the guest's console.
    pub async fn boot(
        config: HypervisorConfig,
        options: QemuOptions,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let socket = config.agent_socket();
        let console_log = config.console_log();
        let vm = Qemu::new(config, options, crate::vm::logger()).context("preparing the VM")?;
        let console = |e: anyhow::Error| {
            let text = std::fs::read_to_string(&console_log).unwrap_or_default();
            e.context(format!("guest console:\n{text}"))
        };
        vm.start(timeout)
            .await
            .context("starting the VM")
            .map_err(console)?;
        let (shell, _) = GuestShell::connect(&socket, timeout)
            .await
            .map_err(console)?;
        Ok(ShellVm {
            vm,
            shell,
            console_log,
        })
    }

    /// What the guest has written on its console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// Stops the VM, killing it when it does not stop within `timeout`.
    pub async fn stop(self, timeout: Duration) -> anyhow::Result<()> {
        self.vm.stop(timeout).await.context("stopping the VM")
    }
}
