//! Reaching a sandbox from its persisted state: `fetch_sandbox`,
//! `cleanup_container` and `reclaim`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{Logger, info, o, warn};
use vc_agent_client::AgentConfig;

use super::Sandbox;
use super::lifecycle::free_host_resources;
use crate::config::Paths;
use crate::error::Error;
use crate::factory::VmFactory;
use crate::id::{IdKind, validate_id};
use crate::persist::{LockMode, SandboxStore, Store};
use crate::state::{SandboxPhase, SandboxState};

/// How long `reclaim` gives each process to exit before SIGKILL.
const RECLAIM_GRACE: Duration = Duration::from_secs(2);

/// What [`cleanup_container`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOutcome {
    /// The container was the last one, so the sandbox was stopped and
    /// deleted too.
    pub sandbox_removed: bool,
}

/// A handle to a running sandbox created by another process (or by this
/// one): reconnects to its VM and its agent.
pub async fn fetch_sandbox(
    paths: &Paths,
    id: &str,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
) -> Result<Sandbox, Error> {
    validate_id(IdKind::Sandbox, id)?;
    let logger = logger.new(o!("sandbox" => id.to_owned()));
    let store = Store::new(&paths.state_root);
    let state: SandboxState = {
        let s = store
            .open(id, LockMode::Shared, Duration::from_secs(10))
            .await?;
        s.read()?
    };
    connect(store, state, factory.as_ref(), logger).await
}

async fn connect(
    store: Store,
    state: SandboxState,
    factory: &dyn VmFactory,
    logger: Logger,
) -> Result<Sandbox, Error> {
    let vm_state = match (state.phase, &state.resources.vm) {
        (SandboxPhase::Ready | SandboxPhase::Running | SandboxPhase::Paused, Some(vm)) => {
            vm.clone()
        }
        (phase, _) => {
            return Err(Error::WrongState {
                operation: "fetch",
                subject: format!("sandbox {:?}", state.id),
                state: format!("{phase:?}").to_lowercase(),
            });
        }
    };
    let vm = factory.attach_vm(vm_state, &logger).await?;
    let agent = factory
        .connect_agent(
            &vm.agent_endpoint(),
            AgentConfig {
                connect_timeout: Duration::from_secs(10),
                call_timeout: state.settings.agent.call_timeout,
                ..AgentConfig::default()
            },
            &logger,
        )
        .await?;
    let devices = match state.devices.clone() {
        Some(saved) => {
            let (registry, report) = vc_device_manager::DeviceRegistry::restore(
                saved,
                vm.clone(),
                vc_device_manager::RegistryConfig::default(),
                logger.clone(),
                &vm.devices(),
            )
            .await
            .map_err(|source| Error::Devices {
                operation: "restore the device registry",
                source,
            })?;
            slog::debug!(logger, "device registry restored"; "report" => ?report);
            Arc::new(registry)
        }
        None => super::new_device_registry(&vm, &logger),
    };
    Ok(Sandbox {
        id: state.id.clone(),
        store,
        settings: state.settings.clone(),
        vm,
        agent,
        devices,
        share: Mutex::new(None),
        logger,
    })
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
    sandbox_id: &str,
    container_id: &str,
    force: bool,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
) -> Result<CleanupOutcome, Error> {
    validate_id(IdKind::Sandbox, sandbox_id)?;
    validate_id(IdKind::Container, container_id)?;
    let logger =
        logger.new(o!("sandbox" => sandbox_id.to_owned(), "container" => container_id.to_owned()));
    let store = Store::new(&paths.state_root);
    let sstore = store
        .open(sandbox_id, LockMode::Exclusive, Duration::from_secs(30))
        .await?;
    let mut state: SandboxState = sstore.read()?;
    // A container already gone from a sandbox that has none left means an
    // earlier cleanup deleted it but failed to finish the sandbox: finish
    // it now.
    if !state.containers.contains_key(container_id) && !force && !state.containers.is_empty() {
        return Err(Error::ContainerNotFound {
            sandbox: sandbox_id.to_owned(),
            container: container_id.to_owned(),
        });
    }
    let mut errors = Vec::new();
    let sandbox = match connect(
        store.clone(),
        state.clone(),
        factory.as_ref(),
        logger.clone(),
    )
    .await
    {
        Ok(s) => Some(s),
        Err(e) if force => {
            warn!(logger, "cannot reach the sandbox; freeing what its state records"; "error" => %e);
            errors.push(e);
            None
        }
        Err(e) => return Err(e),
    };

    if let Some(sandbox) = &sandbox {
        if state.containers.contains_key(container_id) {
            let stopped = stop_in_place(sandbox, &mut state, container_id).await;
            let r = stopped.and(
                sandbox
                    .delete_container_locked(&sstore, &mut state, container_id)
                    .await,
            );
            collect(&mut errors, r, force)?;
            // Forced: what the guest would not let go of is dropped anyway
            // (its mounts and disks go with the sandbox's teardown below,
            // or now if other containers remain).
            if force && let Some(record) = state.containers.remove(container_id) {
                collect(
                    &mut errors,
                    super::container::unbind_all(&record.mounts),
                    force,
                )?;
                if let Err(source) = vc_device_manager::DeviceManager::release_container(
                    sandbox.devices.as_ref(),
                    container_id,
                )
                .await
                {
                    errors.push(Error::Devices {
                        operation: "release the container's devices",
                        source,
                    });
                }
                state.devices = Some(vc_device_manager::DeviceManager::save_state(
                    sandbox.devices.as_ref(),
                ));
                sstore.write(&state)?;
            }
        }
    } else if let Some(record) = state.containers.remove(container_id) {
        collect(
            &mut errors,
            super::container::unbind_all(&record.mounts),
            force,
        )?;
        sstore.write(&state)?;
    }

    let last = state.containers.is_empty();
    if last {
        match &sandbox {
            Some(s) => collect(
                &mut errors,
                s.stop_locked(&sstore, &mut state, force).await,
                force,
            )?,
            None => collect(
                &mut errors,
                kill_recorded_processes(&mut state, &logger).await,
                force,
            )?,
        }
        collect(
            &mut errors,
            free_host_resources(&sstore, &mut state, &logger, force),
            force,
        )?;
        if errors.is_empty() || force {
            sstore.remove()?;
        }
        info!(logger, "last container cleaned up: sandbox removed");
    } else if let Some(s) = &sandbox
        && let Err(e) = s.update_cgroups(&sstore, &mut state).await
    {
        warn!(logger, "host cgroups not updated"; "error" => %e);
    }
    if errors.is_empty() {
        Ok(CleanupOutcome {
            sandbox_removed: last,
        })
    } else {
        Err(Error::Cleanup {
            sandbox: sandbox_id.to_owned(),
            errors,
        })
    }
}

fn collect(errors: &mut Vec<Error>, r: Result<(), Error>, force: bool) -> Result<(), Error> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if force => {
            errors.push(e);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Stops a container with the sandbox lock held by the caller.
async fn stop_in_place(sandbox: &Sandbox, state: &mut SandboxState, id: &str) -> Result<(), Error> {
    use crate::state::ContainerPhase::{Paused, Running};
    let Some(c) = state.containers.get(id) else {
        return Ok(());
    };
    if !matches!(c.phase, Running | Paused) {
        return Ok(());
    }
    let agent = sandbox.agent.clone();
    let _ = agent
        .signal_process(id, "", vc_agent_client::Signal::KILL)
        .await;
    let code = tokio::time::timeout(Duration::from_secs(10), agent.wait_process(id, id))
        .await
        .map_err(|_| Error::Timeout {
            operation: "waiting for a killed container",
            timeout: Duration::from_secs(10),
        })?
        .map_err(Error::agent("WaitProcess"))?;
    if let Some(c) = state.containers.get_mut(id) {
        c.phase = crate::state::ContainerPhase::Stopped;
        c.exit_code = Some(code);
    }
    Ok(())
}

/// Ends the VMM and helpers a state records, by pid and start time.
async fn kill_recorded_processes(state: &mut SandboxState, logger: &Logger) -> Result<(), Error> {
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
pub async fn reclaim(paths: &Paths, sandbox_id: &str, logger: Logger) -> Result<(), Error> {
    validate_id(IdKind::Sandbox, sandbox_id)?;
    let logger = logger.new(o!("sandbox" => sandbox_id.to_owned()));
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
            sandbox: sandbox_id.to_owned(),
            errors,
        })
    }
}
