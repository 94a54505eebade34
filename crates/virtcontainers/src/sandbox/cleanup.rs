//! Cleaning up one container, and the sandbox with its last one:
//! [`cleanup_container`].

use std::sync::Arc;
use std::time::Duration;

use slog::{Logger, info, o, warn};
use vc_types::{ContainerId, SandboxId, Signal};

use super::Sandbox;
use super::container::unbind_all;
use super::fetch::connect;
use super::lifecycle::free_host_resources;
use super::reclaim::kill_recorded_processes;
use crate::config::Paths;
use crate::error::Error;
use crate::factory::VmFactory;
use crate::persist::{LockMode, SandboxStore, Store};
use crate::state::{ContainerPhase, SandboxPhase, SandboxState};

/// How long a cleanup waits for the sandbox's lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long a killed container may take to be reported exited.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What [`cleanup_container`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOutcome {
    /// The container was the last one, so the sandbox was stopped and
    /// deleted too.
    pub sandbox_removed: bool,
}

/// Stops and deletes container `container_id` of sandbox `sandbox_id`,
/// under the sandbox's exclusive lock; when no container is left, stops
/// and deletes the sandbox too.
///
/// Without `force`, a failure leaves what it could not free recorded, so
/// calling again finishes the job (also when the container is already
/// gone and only the sandbox's teardown failed).
///
/// With `force`, carries on past every error (a dead VM, an agent that
/// does not answer, a container already gone) and frees everything the
/// state records; the errors met are returned together in
/// [`Error::Cleanup`] after everything that could be freed was.
pub async fn cleanup_container(
    paths: &Paths,
    sandbox_id: &SandboxId,
    container_id: &ContainerId,
    force: bool,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
) -> Result<CleanupOutcome, Error> {
    let logger = logger
        .new(o!("sandbox" => sandbox_id.to_string(), "container" => container_id.to_string()));
    let store = Store::new(&paths.state_root);
    let sstore = store
        .open(sandbox_id, LockMode::Exclusive, LOCK_WAIT)
        .await?;
    let mut state: SandboxState = sstore.read()?;
    // A container already gone from a sandbox that has none left means an
    // earlier cleanup deleted it but failed to finish the sandbox: finish
    // it now.
    if !state.containers.contains_key(container_id) && !force && !state.containers.is_empty() {
        return Err(Error::ContainerNotFound {
            sandbox: sandbox_id.clone(),
            container: container_id.clone(),
        });
    }
    let mut cleanup = Cleanup {
        force,
        errors: Vec::new(),
        logger,
    };
    if state.effective_phase() == SandboxPhase::VmDied {
        // Every container died with the VM: finish the teardown, no guest
        // to ask, nothing to force.
        cleanup.remove_dead_sandbox(sstore, &mut state).await?;
        return cleanup.outcome(sandbox_id, true);
    }
    let sandbox = match connect(
        store,
        state.clone(),
        factory.as_ref(),
        cleanup.logger.clone(),
    )
    .await
    {
        Ok(s) => Some(s),
        Err(e) if force => {
            warn!(cleanup.logger, "cannot reach the sandbox; freeing what its state records"; "error" => crate::error::chain(&e));
            cleanup.errors.push(e);
            None
        }
        Err(e) => return Err(e),
    };
    cleanup
        .remove_container(sandbox.as_ref(), &sstore, &mut state, container_id)
        .await?;
    let last = state.containers.is_empty();
    if last {
        cleanup
            .remove_sandbox(sandbox.as_ref(), sstore, &mut state)
            .await?;
    } else if let Some(s) = &sandbox {
        s.shrink_to_containers(&sstore, &mut state).await;
        if let Err(e) = s.update_cgroups(&state).await {
            warn!(cleanup.logger, "host cgroups not updated"; "error" => crate::error::chain(&e));
        }
    }
    cleanup.outcome(sandbox_id, last)
}

/// One run of `cleanup_container`: with `force`, errors are collected and
/// the work goes on; without, the first one ends it.
struct Cleanup {
    force: bool,
    errors: Vec<Error>,
    logger: Logger,
}

impl Cleanup {
    fn outcome(self, sandbox: &SandboxId, removed: bool) -> Result<CleanupOutcome, Error> {
        match self.errors.is_empty() {
            true => Ok(CleanupOutcome {
                sandbox_removed: removed,
            }),
            false => Err(Error::Cleanup {
                sandbox: sandbox.clone(),
                errors: self.errors,
            }),
        }
    }

    /// A sandbox whose VM died: its containers' host mounts, its helpers
    /// and everything else it holds on the host, and its state.
    async fn remove_dead_sandbox(
        &mut self,
        sstore: SandboxStore,
        state: &mut SandboxState,
    ) -> Result<(), Error> {
        warn!(
            self.logger,
            "the sandbox's VM is gone: tearing down what is left"
        );
        let ids: Vec<ContainerId> = state.containers.keys().cloned().collect();
        for id in ids {
            self.remove_container(None, &sstore, state, &id).await?;
        }
        self.remove_sandbox(None, sstore, state).await
    }

    fn collect(&mut self, r: Result<(), Error>) -> Result<(), Error> {
        match r {
            Err(e) if self.force => {
                self.errors.push(e);
                Ok(())
            }
            r => r,
        }
    }

    /// The container, stopped and deleted in the guest with its mounts and
    /// devices; forced, whatever the guest would not let go of is dropped
    /// from the record anyway (the sandbox's teardown frees it).
    async fn remove_container(
        &mut self,
        sandbox: Option<&Sandbox>,
        sstore: &SandboxStore,
        state: &mut SandboxState,
        id: &ContainerId,
    ) -> Result<(), Error> {
        let Some(sandbox) = sandbox else {
            if let Some(record) = state.containers.remove(id) {
                self.collect(unbind_all(&record.mounts))?;
                sstore.write(state)?;
            }
            return Ok(());
        };
        if !state.containers.contains_key(id) {
            return Ok(());
        }
        // Deleted even when the stop failed: the guest decides whether it
        // can let go of the container.
        let stopped = stop_in_place(sandbox, state, id).await;
        let deleted = sandbox.delete_container_locked(sstore, state, id).await;
        self.collect(stopped.and(deleted))?;
        if self.force
            && let Some(record) = state.containers.remove(id)
        {
            self.collect(unbind_all(&record.mounts))?;
            if let Err(source) = sandbox.devices.release_container(id).await {
                self.errors.push(Error::Devices {
                    operation: "release the container's devices",
                    source,
                });
            }
            state.devices = Some(sandbox.devices.save_state());
            sstore.write(state)?;
        }
        Ok(())
    }

    /// The sandbox, stopped (through its VM, or by killing its recorded
    /// processes when unreachable) and freed, its state removed.
    async fn remove_sandbox(
        &mut self,
        sandbox: Option<&Sandbox>,
        sstore: SandboxStore,
        state: &mut SandboxState,
    ) -> Result<(), Error> {
        let stopped = match sandbox {
            Some(s) => s.stop_locked(&sstore, state, self.force).await,
            None => kill_recorded_processes(state, &self.logger).await,
        };
        self.collect(stopped)?;
        let freed = free_host_resources(&sstore, state, &self.logger, self.force);
        self.collect(freed)?;
        if self.errors.is_empty() || self.force {
            sstore.remove()?;
        }
        info!(self.logger, "last container cleaned up: sandbox removed");
        Ok(())
    }
}

/// Stops a container with the sandbox lock held by the caller: SIGKILL to
/// every process in it, then its exit recorded.
async fn stop_in_place(
    sandbox: &Sandbox,
    state: &mut SandboxState,
    id: &ContainerId,
) -> Result<(), Error> {
    let Some(c) = state.containers.get(id) else {
        return Ok(());
    };
    if !matches!(c.phase, ContainerPhase::Running | ContainerPhase::Paused) {
        return Ok(());
    }
    let agent = sandbox.agent.clone();
    let _ = agent.signal_process(id, "", Signal::KILL).await;
    let code = tokio::time::timeout(KILL_WAIT, agent.wait_process(id, id))
        .await
        .map_err(|_| Error::Timeout {
            operation: "waiting for a killed container",
            timeout: KILL_WAIT,
        })?
        .map_err(Error::agent("WaitProcess"))?;
    if let Some(c) = state.containers.get_mut(id) {
        c.phase = ContainerPhase::Stopped;
        c.exit_code = Some(code);
    }
    Ok(())
}
