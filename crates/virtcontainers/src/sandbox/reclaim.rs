//! Freeing a sandbox whose creator died: [`reclaim`].

use std::time::Duration;

use slog::{Logger, info, o, warn};
use vc_types::SandboxId;

use super::lifecycle::free_host_resources;
use crate::config::Paths;
use crate::error::Error;
use crate::persist::{LockMode, SandboxStore, Store};
use crate::state::SandboxState;

/// How long `reclaim` gives each process to exit before SIGKILL.
const RECLAIM_GRACE: Duration = Duration::from_secs(2);

/// Ends the VMM and helpers a state records, by pid and start time.
pub(super) async fn kill_recorded_processes(
    state: &mut SandboxState,
    logger: &Logger,
) -> Result<(), Error> {
    let mut procs = std::mem::take(&mut state.resources.helpers);
    procs.extend(state.resources.vmm.take());
    let left = crate::process::terminate_all(procs, RECLAIM_GRACE).await;
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
    let sstore: SandboxStore = store
        .open(sandbox_id, LockMode::Exclusive, Duration::from_secs(30))
        .await?;
    let mut state: SandboxState = match sstore.read() {
        Ok(s) => s,
        // Died before the first state was written: only the directory.
        Err(Error::NotFound { .. }) => return sstore.remove(),
        Err(e) => return Err(e),
    };
    let mut errors = Vec::new();
    if let Err(e) = kill_recorded_processes(&mut state, &logger).await {
        errors.push(e);
    }
    match free_host_resources(&sstore, &mut state, &logger, true) {
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
            sandbox: sandbox_id.clone(),
            errors,
        })
    }
}
