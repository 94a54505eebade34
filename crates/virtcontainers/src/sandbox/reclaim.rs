//! Freeing sandboxes whose creator died: [`reclaim`] one by id,
//! [`reclaim_stale`] every one whose owner and VM are gone (what a runtime
//! runs when it starts, as containerd runs `shim delete` for dead shims).

use std::time::Duration;

use slog::{Logger, debug, info, o, warn};
use vc_hypervisor::process::ProcessLedger;
use vc_types::SandboxId;

use super::lifecycle::free_host_resources;
use crate::config::{Paths, SandboxLifetime};
use crate::error::Error;
use crate::persist::{LockMode, SandboxStore, Store};
use crate::state::{SandboxPhase, SandboxState};

/// How long `reclaim` gives each process to exit before SIGKILL.
const RECLAIM_GRACE: Duration = Duration::from_secs(2);
/// How long `reclaim` waits for a sandbox's lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long `reclaim_stale` waits for a sandbox's lock: a sandbox whose
/// lock is held is being worked on by a live process, so not stale.
const STALE_LOCK_WAIT: Duration = Duration::from_millis(200);

/// What [`reclaim_stale`] did.
#[derive(Debug, Default)]
pub struct ReclaimReport {
    /// Sandboxes found stale and freed.
    pub reclaimed: Vec<SandboxId>,
    /// Sandboxes alive (their owner or VM runs) or busy (locked).
    pub alive: Vec<SandboxId>,
    /// Stale sandboxes that could not be freed entirely, with why.
    pub failed: Vec<(SandboxId, Error)>,
}

/// Ends the VMM and helpers the state records, and every process the VM
/// runtime directory's ledger records (written before each was let run:
/// what a creator killed before it wrote the state also ends), by pid and
/// start time.
pub(super) async fn kill_recorded_processes(
    state: &mut SandboxState,
    logger: &Logger,
) -> Result<(), Error> {
    let mut procs = std::mem::take(&mut state.resources.helpers);
    procs.extend(state.resources.vmm.take());
    let mut left = crate::process::terminate_all(procs, RECLAIM_GRACE).await;
    if let Some(dir) = state.resources.runtime_dir.clone() {
        let ledger = ProcessLedger::open(&dir);
        let survivors = tokio::task::spawn_blocking(move || ledger.terminate_all(RECLAIM_GRACE))
            .await
            .map_err(|e| Error::Helper {
                program: dir,
                reason: format!("ending the processes of the VM's ledger panicked: {e}"),
            })?
            .map_err(Error::hypervisor("end the processes of the VM's ledger"))?;
        left.extend(survivors);
    }
    let failed = left.first().map(|p| {
        warn!(logger, "process survived SIGKILL"; "pid" => p.pid);
        Error::Helper {
            program: p.program.clone(),
            reason: format!("pid {} survived SIGKILL", p.pid),
        }
    });
    state.resources.vm = None;
    failed.map_or(Ok(()), Err)
}

/// Frees everything a sandbox's state records, whatever its phase —
/// typically one whose creator died in the middle of `create_sandbox`:
/// the VMM and helper processes (matched by pid and start time), host
/// mounts, cgroups, directories, and the state itself. Needs no agent and
/// no VM. Errors are collected; what can be freed is.
pub async fn reclaim(paths: &Paths, sandbox_id: &SandboxId, logger: Logger) -> Result<(), Error> {
    let logger = logger.new(o!("sandbox" => sandbox_id.to_string()));
    let store = Store::new(&paths.state_root);
    let sstore = store
        .open(sandbox_id, LockMode::Exclusive, LOCK_WAIT)
        .await?;
    reclaim_locked(sstore, &logger).await
}

/// Frees every sandbox under `paths` whose owner (the process that
/// created it) is gone and that nobody can use any more: its VM died with
/// its owner ([`SandboxLifetime::DiesWithOwner`]), or is gone too, or the
/// dead creator left it half created. Leaves alone every sandbox whose
/// owner runs, every [`SandboxLifetime::UntilDeleted`] one whose VM runs,
/// and every one another process holds locked. Returns what it found.
pub async fn reclaim_stale(paths: &Paths, logger: Logger) -> Result<ReclaimReport, Error> {
    let store = Store::new(&paths.state_root);
    let mut report = ReclaimReport::default();
    match store.remove_stale_claims() {
        Ok(n) if n > 0 => info!(logger, "half-claimed state directories removed"; "count" => n),
        Ok(_) => {}
        Err(e) => warn!(logger, "stale claims not removed"; "error" => %e),
    }
    for id in store.list()? {
        let logger = logger.new(o!("sandbox" => id.to_string()));
        let sstore = match store.open(&id, LockMode::Exclusive, STALE_LOCK_WAIT).await {
            Ok(s) => s,
            // Gone meanwhile: someone else removed it.
            Err(Error::NotFound { .. }) => continue,
            Err(Error::LockTimeout { .. }) => {
                debug!(logger, "sandbox busy: not stale");
                report.alive.push(id);
                continue;
            }
            Err(e) => {
                report.failed.push((id, e));
                continue;
            }
        };
        match sstore.read::<SandboxState>() {
            Ok(state) if !is_stale(&state) => {
                report.alive.push(id);
                continue;
            }
            // No state yet (died between claiming the directory and writing
            // its first state), or a stale one.
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => {
                report.failed.push((id, e));
                continue;
            }
        }
        match reclaim_locked(sstore, &logger).await {
            Ok(()) => report.reclaimed.push(id),
            Err(e) => report.failed.push((id, e)),
        }
    }
    info!(logger, "stale sandboxes reclaimed"; "reclaimed" => report.reclaimed.len(),
        "alive" => report.alive.len(), "failed" => report.failed.len());
    Ok(report)
}

/// A sandbox nobody will ever finish or use: its owner is gone and, unless
/// its VM was meant to outlive the owner and still runs, so is the VM (a
/// VM that dies with its owner may still be dying: it is ended here), or
/// it never got past creation.
fn is_stale(state: &SandboxState) -> bool {
    let alive = |r: &Option<crate::state::ProcessRecord>| {
        r.as_ref()
            .is_some_and(|r| crate::process::is_alive(r.pid, r.start_time))
    };
    if alive(&state.owner) {
        return false;
    }
    match state.settings.lifetime {
        SandboxLifetime::DiesWithOwner => true,
        SandboxLifetime::UntilDeleted => {
            state.phase == SandboxPhase::Creating || !alive(&state.resources.vmm)
        }
    }
}

async fn reclaim_locked(sstore: SandboxStore, logger: &Logger) -> Result<(), Error> {
    let mut state: SandboxState = match sstore.read() {
        Ok(s) => s,
        // Died before the first state was written: only the directory.
        Err(Error::NotFound { .. }) => return sstore.remove(),
        Err(e) => return Err(e),
    };
    let mut errors = Vec::new();
    if let Err(e) = kill_recorded_processes(&mut state, logger).await {
        errors.push(e);
    }
    match free_host_resources(&sstore, &mut state, logger, true) {
        Ok(()) => {}
        Err(Error::Cleanup { errors: e, .. }) => errors.extend(e),
        Err(e) => errors.push(e),
    }
    sstore.remove()?;
    info!(logger, "sandbox reclaimed"; "errors" => errors.len());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Cleanup {
            sandbox: state.id.clone(),
            errors,
        })
    }
}
