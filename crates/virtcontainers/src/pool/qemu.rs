//! The pool's QEMU VMs: each boots (or is cloned from the template) in a
//! slot directory of the pool, shaped like the prototype's sandboxes, and
//! is handed over by moving its runtime and share directories to the
//! sandbox's places and letting go of its handle.
//!
//! ```text
//! <pool dir>/<n>/vm/      the VM's runtime dir (QMP, agent sockets, logs, process ledger)
//! <pool dir>/<n>/share/   the host side of its 9p share
//! ```
//!
//! QEMU keeps its listening sockets and its share's directory open by
//! inode, and the keeper of an outliving VM holds its ledger directory the
//! same way: a `rename(2)` within one filesystem moves them under the VM's
//! feet without it noticing. So the pool's directory must be on the same
//! filesystem as the sandboxes' runtime and share roots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use slog::{Logger, warn};
use vc_hypervisor::{
    AgentEndpoint, Device, Hypervisor, HypervisorConfig, HypervisorState, ProcessLifetime, Qemu,
    QemuOptions, ShareBackend,
};

use super::core::Spawner;
use crate::error::Error;
use crate::template::TemplateFactory;

/// How long a pool VM gets to quit when the pool stops it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A VM of the pool, ready to hand over.
pub(crate) struct PooledVm {
    qemu: Qemu,
    slot: PathBuf,
    /// Its VMM's threads are in the `SCHED_IDLE` class.
    background: bool,
}

/// Starts the pool's VMs.
pub(crate) struct QemuSpawner {
    pub(crate) dir: PathBuf,
    /// The prototype's VM config: what each slot's VM is, but its paths.
    pub(crate) base: HypervisorConfig,
    pub(crate) options: QemuOptions,
    pub(crate) template: Option<TemplateFactory>,
    pub(crate) start_timeout: Duration,
    /// Boot VMs in the `SCHED_IDLE` class (this process can move them
    /// back to the normal one at hand-over).
    pub(crate) background: bool,
    /// Run in each VM before it is ready ([`super::PoolConfig::warm_up`]).
    pub(crate) warm_up: Option<crate::config::ContainerConfig>,
    pub(crate) logger: Logger,
}

/// The host directory of `config`'s 9p share, if it has one.
pub(crate) fn share_dir(config: &HypervisorConfig) -> Option<&Path> {
    config.devices.iter().find_map(|d| match d {
        Device::SharedDir(share) => match &share.backend {
            ShareBackend::NineP { host_path, .. } => Some(host_path.as_path()),
            ShareBackend::VirtioFs { .. } => None,
        },
        _ => None,
    })
}

impl QemuSpawner {
    /// VM `n`'s config: the prototype's, in slot `n`.
    pub(crate) fn slot_config(&self, n: u64) -> HypervisorConfig {
        let slot = self.dir.join(n.to_string());
        let mut config = self.base.clone();
        config.name = format!("vc-pool-{n}");
        config.runtime_dir = slot.join("vm");
        for device in &mut config.devices {
            if let Device::SharedDir(share) = device
                && let ShareBackend::NineP { host_path, .. } = &mut share.backend
            {
                *host_path = slot.join("share");
            }
        }
        config
    }

    /// Boots VM `n`; with whether it is in the background class.
    async fn boot(&self, n: u64) -> Result<(Qemu, bool), Error> {
        let deadline = Instant::now() + self.start_timeout;
        let config = self.slot_config(n);
        let plan = match &self.template {
            Some(template) => template.clone_plan(&config, &self.logger).await?,
            None => None,
        };
        let qemu = match &plan {
            Some(plan) => {
                let qemu = Qemu::new(
                    plan.config.clone(),
                    self.options.clone(),
                    self.logger.clone(),
                )
                .map_err(Error::hypervisor("prepare a pool VM"))?;
                qemu.start_from_state(&plan.state, self.start_timeout)
                    .await
                    .map_err(Error::hypervisor("start a pool VM from the template"))?;
                qemu
            }
            None => {
                let qemu = Qemu::new(config, self.options.clone(), self.logger.clone())
                    .map_err(Error::hypervisor("prepare a pool VM"))?;
                qemu.start(self.start_timeout)
                    .await
                    .map_err(Error::hypervisor("start a pool VM"))?;
                qemu
            }
        };
        let background = self.background && self.to_background(&qemu);
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = match plan {
            Some(_) => crate::template::refresh(&qemu.agent_endpoint(), left, &self.logger).await,
            None => agent_ready(&qemu.agent_endpoint(), left, &self.logger).await,
        };
        let warmed = match (ready, &self.warm_up) {
            (Ok(()), Some(container)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let share = self.dir.join(n.to_string()).join("share");
                super::warm_up::warm_up(
                    &qemu.agent_endpoint(),
                    &share,
                    container,
                    left,
                    &self.logger,
                )
                .await
            }
            (ready, _) => ready,
        };
        if let Err(e) = warmed {
            let _ = qemu.stop(STOP_TIMEOUT).await;
            return Err(e);
        }
        Ok((qemu, background))
    }

    /// Moves a booting VM's threads to the `SCHED_IDLE` class; whether
    /// they are there (a failure is logged: the VM boots at normal
    /// priority).
    fn to_background(&self, qemu: &Qemu) -> bool {
        let Some(vmm) = qemu.vmm_processes().into_iter().next() else {
            return false;
        };
        match crate::process::set_background(vmm.pid, true) {
            Ok(()) => true,
            Err(e) => {
                warn!(self.logger, "a pool VM boots at normal priority"; "pid" => vmm.pid,
                    "error" => %e);
                false
            }
        }
    }
}

/// Waits until the agent answers.
async fn agent_ready(
    endpoint: &AgentEndpoint,
    timeout: Duration,
    logger: &Logger,
) -> Result<(), Error> {
    let config = vc_agent_client::AgentConfig {
        connect_timeout: timeout,
        ..Default::default()
    };
    vc_agent_client::TtrpcAgent::connect(crate::factory::transport_for(endpoint), config, logger)
        .await
        .map(drop)
        .map_err(Error::agent("connect to a pool VM's agent"))
}

#[async_trait]
impl Spawner for QemuSpawner {
    type Vm = PooledVm;

    async fn start(&self, n: u64) -> Result<PooledVm, Error> {
        let slot = self.dir.join(n.to_string());
        let share = slot.join("share");
        std::fs::create_dir_all(&share).map_err(Error::host_io("create directory", &share))?;
        match self.boot(n).await {
            Ok((qemu, background)) => Ok(PooledVm {
                qemu,
                slot,
                background,
            }),
            Err(e) => {
                remove_slot(&slot, &self.logger);
                Err(e)
            }
        }
    }

    async fn stop(&self, vm: PooledVm) {
        if let Err(e) = vm.qemu.stop(STOP_TIMEOUT).await {
            warn!(self.logger, "stopping a pool VM"; "error" => %e);
        }
        remove_slot(&vm.slot, &self.logger);
    }
}

/// Removes a slot's directories (its runtime dir holds only sockets and
/// logs; its share is empty, but for a warm-up's bind mounts if the pool
/// was killed during one: undone first).
pub(crate) fn remove_slot(slot: &Path, logger: &Logger) {
    if let Err(e) = unbind_warm_up_leftovers(&slot.join("share")) {
        warn!(logger, "undoing a pool warm-up's mounts"; "error" => crate::error::chain(&e));
    }
    let removed = crate::sandbox::remove_runtime_dir(&slot.join("vm"))
        .and_then(|()| crate::sandbox::remove_empty_dir(&slot.join("share")))
        .and_then(|()| crate::sandbox::remove_empty_dir(slot));
    if let Err(e) = removed {
        warn!(logger, "removing a pool VM's directory"; "error" => crate::error::chain(&e));
    }
}

/// Undoes the bind mounts a warm-up makes in a slot's share (nothing else
/// is ever mounted there), latest first, and removes the directories that
/// held them.
fn unbind_warm_up_leftovers(share: &Path) -> Result<(), Error> {
    // The mount table names resolved paths.
    let Ok(share) = share.canonicalize() else {
        return Ok(());
    };
    let mounted: Vec<PathBuf> = crate::host_mounts::mount_table()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&share) && p != &share)
        .collect();
    crate::sandbox::unbind_all(&mounted)
}

/// A hand-over that did not happen, and the VM when it can go back to
/// the pool.
pub(crate) struct HandOverError {
    pub(crate) vm: Option<Box<PooledVm>>,
    pub(crate) error: Error,
}

/// Hands `vm` over as the VM of `wanted`: moves its runtime and share
/// directories to `wanted`'s (which must be empty or missing), lets go of
/// it, and returns the state to adopt it from, its config now `wanted`'s.
pub(crate) fn hand_over(
    vm: PooledVm,
    wanted: &HypervisorConfig,
) -> Result<HypervisorState, HandOverError> {
    let fail = |vm: Option<PooledVm>, error| {
        Err(HandOverError {
            vm: vm.map(Box::new),
            error,
        })
    };
    let (Some(target_share), Some(ours)) = (share_dir(wanted), share_dir(vm.qemu.config())) else {
        return fail(
            Some(vm),
            Error::Unsupported(vc_types::Unsupported::new(
                "handing a pool VM to a sandbox without a 9p share",
                "the pool's VMs carry a 9p share for their sandbox's files",
            )),
        );
    };
    // Back to normal priority first: a sandbox's VM must never run only
    // on idle CPU time.
    if vm.background
        && let Some(vmm) = vm.qemu.vmm_processes().into_iter().next()
        && let Err(e) = crate::process::set_background(vmm.pid, false)
    {
        return fail(
            Some(vm),
            Error::HostIo {
                operation: "move to the normal CPU class the threads of pool VM",
                path: PathBuf::from(format!("/proc/{}", vmm.pid)),
                source: e,
            },
        );
    }
    let (ours_share, ours_run) = (ours.to_owned(), vm.qemu.config().runtime_dir.clone());
    if let Err(e) = move_dir(&ours_run, &wanted.runtime_dir) {
        return fail(Some(vm), e);
    }
    if let Err(e) = move_dir(&ours_share, target_share) {
        let back = move_dir(&wanted.runtime_dir, &ours_run);
        return fail(back.is_ok().then_some(vm), e);
    }
    let memory_file = vm.qemu.config().memory_file.clone();
    let slot = vm.slot.clone();
    let mut state = match vm.qemu.detach() {
        Ok(state) => state,
        Err(e) => return fail(None, Error::hypervisor("let go of a pool VM")(e)),
    };
    let _ = std::fs::remove_dir(&slot);
    state.config = HypervisorConfig {
        memory_file,
        ..wanted.clone()
    };
    state.to_hypervisor_state().map_err(|e| HandOverError {
        vm: None,
        error: Error::hypervisor("save a pool VM's state")(e),
    })
}

/// `rename(2)` of a directory onto an empty (or missing) one.
fn move_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(|e| Error::HostIo {
        operation: "move a pool VM's directory to",
        path: to.to_owned(),
        source: e,
    })
}

/// Whether the pool's VMs can be handed to a sandbox of `lifetime`: a VM
/// that dies with the pool's process cannot outlive it.
pub(crate) fn lifetime_fits(pool: ProcessLifetime, wanted: ProcessLifetime) -> bool {
    pool == ProcessLifetime::OutlivesOwner || pool == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use vc_test_support::require_root;

    /// A pool killed during a warm-up leaves its binds in the slot's
    /// share: removing the slot undoes them, leaving nothing.
    #[test]
    fn a_slot_left_during_a_warm_up_is_removed_with_its_mounts() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let (rootfs, file) = (dir.path().join("rootfs"), dir.path().join("hosts"));
        std::fs::create_dir(&rootfs).unwrap();
        std::fs::write(rootfs.join("bin"), "busybox").unwrap();
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let slot = dir.path().join("pool/3");
        std::fs::create_dir_all(slot.join("vm")).unwrap();
        let container = slot.join("share/warm-up");
        let targets = [container.join("rootfs"), container.join("mounts/0")];
        crate::host_mounts::bind(&rootfs, &targets[0], false).unwrap();
        crate::host_mounts::bind(&file, &targets[1], true).unwrap();
        assert!(targets.iter().all(|t| crate::host_mounts::is_mounted(t)));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        remove_slot(&slot, &logger);
        assert!(targets.iter().all(|t| !crate::host_mounts::is_mounted(t)));
        assert!(!slot.exists(), "the slot stays");
        // The sources are untouched.
        assert_eq!(
            std::fs::read_to_string(rootfs.join("bin")).unwrap(),
            "busybox"
        );
        assert!(file.is_file());
    }
}
