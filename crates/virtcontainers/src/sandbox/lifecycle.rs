//! Sandbox-wide operations: start, stop, pause, resume, delete, status.

use std::time::Duration;

use slog::{info, warn};

use vc_types::SandboxId;

use super::cgroups::SandboxCgroups;
use super::container::{ContainerStatus, unbind_all};
use super::{Sandbox, remove_empty_dir, remove_runtime_dir};
use crate::error::Error;
use crate::host_mounts;
use crate::persist::{LockMode, SandboxStore};
use crate::state::{ContainerPhase, SandboxPhase, SandboxState};

/// What a sandbox is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Its id.
    pub id: SandboxId,
    /// Its phase.
    pub phase: SandboxPhase,
    /// The VMM's pid, while it runs (`None` once it is gone, in every
    /// process).
    pub vmm_pid: Option<u32>,
    /// The sandbox cgroup's path, when host cgroups are managed.
    pub sandbox_cgroup: Option<String>,
    /// The overhead cgroup's path, when there is one.
    pub overhead_cgroup: Option<String>,
    /// Its containers.
    pub containers: Vec<ContainerStatus>,
}

impl Sandbox {
    /// Starts every created container.
    pub async fn start(&self) -> Result<(), Error> {
        let created: Vec<_> = {
            let (_store, state) = self.lock(LockMode::Shared).await?;
            state
                .containers
                .values()
                .filter(|c| c.phase == ContainerPhase::Created)
                .map(|c| c.id.clone())
                .collect()
        };
        for id in created {
            self.start_container(&id).await?;
        }
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if state.phase == SandboxPhase::Ready {
            state.phase = SandboxPhase::Running;
            store.write(&state)?;
        }
        Ok(())
    }

    /// Pauses the VM (all containers at once).
    pub async fn pause(&self) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        self.vm
            .pause()
            .await
            .map_err(Error::hypervisor("pause the VM"))?;
        state.phase = SandboxPhase::Paused;
        store.write(&state)
    }

    /// Resumes a paused VM.
    pub async fn resume(&self) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if state.phase != SandboxPhase::Paused {
            return Err(Error::WrongState {
                operation: "resume",
                subject: format!("sandbox \"{}\"", self.id),
                state: format!("{:?}", state.phase).to_lowercase(),
            });
        }
        self.vm
            .resume()
            .await
            .map_err(Error::hypervisor("resume the VM"))?;
        state.phase = SandboxPhase::Running;
        store.write(&state)
    }

    /// Stops the sandbox: its running containers (SIGTERM, SIGKILL after
    /// `timeout`), the sandbox in the guest, the VM and its helpers. The
    /// state stays until [`delete`](Self::delete).
    pub async fn stop(&self, timeout: Duration) -> Result<(), Error> {
        let running: Vec<_> = {
            let (_store, state) = self.lock(LockMode::Shared).await?;
            if state.phase == SandboxPhase::Stopped {
                return Ok(());
            }
            if state.phase == SandboxPhase::Paused {
                self.vm
                    .resume()
                    .await
                    .map_err(Error::hypervisor("resume the VM"))?;
            }
            state
                .containers
                .values()
                .filter(|c| matches!(c.phase, ContainerPhase::Running | ContainerPhase::Paused))
                .map(|c| c.id.clone())
                .collect()
        };
        for id in running {
            if let Err(e) = self.stop_container(&id, timeout).await {
                warn!(self.logger, "container did not stop cleanly"; "container" => %id, "error" => crate::error::chain(&e));
            }
        }
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        self.stop_locked(&store, &mut state, false).await
    }

    /// Stops the guest side, the VM and the helpers, with the state locked.
    /// With `force`, errors are collected instead of stopping early.
    pub(crate) async fn stop_locked(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        force: bool,
    ) -> Result<(), Error> {
        let mut errors = Vec::new();
        let mut note = |r: Result<(), Error>| -> Result<(), Error> {
            match r {
                Err(e) if force => {
                    errors.push(e);
                    Ok(())
                }
                r => r,
            }
        };
        // The guest unmounts the share and removes what is left.
        if !self.vm.vmm_pids().is_empty() {
            let destroyed = self
                .agent
                .destroy_sandbox()
                .await
                .map_err(Error::agent("DestroySandbox"));
            if let Err(e) = destroyed {
                warn!(self.logger, "guest sandbox not destroyed; stopping the VM anyway"; "error" => crate::error::chain(&e));
            }
        }
        note(
            self.vm
                .stop(self.settings.stop_timeout)
                .await
                .map_err(Error::hypervisor("stop the VM")),
        )?;
        state.resources.vm = None;
        note(self.stop_helpers(state).await)?;
        state.phase = SandboxPhase::Stopped;
        for c in state.containers.values_mut() {
            if c.phase != ContainerPhase::Stopped {
                c.phase = ContainerPhase::Stopped;
            }
        }
        store.write(state)?;
        info!(self.logger, "sandbox stopped");
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn stop_helpers(&self, state: &mut SandboxState) -> Result<(), Error> {
        let share = self.share.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut share) = share {
            share.stop().await?;
        }
        let helpers = std::mem::take(&mut state.resources.helpers);
        let left = crate::process::terminate_all(helpers, Duration::from_secs(2)).await;
        if let Some(h) = left.first() {
            let program = h.program.clone();
            state.resources.helpers = left;
            return Err(Error::Helper {
                program,
                reason: "did not exit after SIGKILL".into(),
            });
        }
        Ok(())
    }

    /// Deletes a stopped sandbox: its containers' share mounts, its host
    /// cgroups, its directories and its state. Consumes the handle.
    pub async fn delete(self) -> Result<(), Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        if state.phase != SandboxPhase::Stopped {
            return Err(Error::WrongState {
                operation: "delete",
                subject: format!("sandbox \"{}\"", self.id),
                state: format!("{:?}", state.phase).to_lowercase(),
            });
        }
        free_host_resources(&store, &mut state, &self.logger, false)?;
        store.remove()?;
        info!(self.logger, "sandbox deleted");
        Ok(())
    }

    /// The sandbox's status and its containers'.
    pub async fn status(&self) -> Result<SandboxStatus, Error> {
        let (store, state) = self.lock(LockMode::Shared).await?;
        let cgroups = SandboxCgroups::load(store.dir(), &self.logger)?;
        Ok(status_of(&state, cgroups.as_ref()))
    }

    /// The sandbox's containers.
    pub async fn containers(&self) -> Result<Vec<ContainerStatus>, Error> {
        Ok(self.status().await?.containers)
    }
}

pub(crate) fn status_of(state: &SandboxState, cgroups: Option<&SandboxCgroups>) -> SandboxStatus {
    // The same answer in every process: the recorded VMM, if it runs.
    let vmm_pid = state
        .resources
        .vmm
        .as_ref()
        .filter(|v| crate::process::is_alive(v.pid, v.start_time))
        .map(|v| v.pid);
    SandboxStatus {
        id: state.id.clone(),
        phase: state.effective_phase(),
        vmm_pid,
        sandbox_cgroup: cgroups.and_then(SandboxCgroups::sandbox_path),
        overhead_cgroup: cgroups.and_then(SandboxCgroups::overhead_path),
        containers: state
            .containers
            .values()
            .map(ContainerStatus::from)
            .collect(),
    }
}

/// Frees what a stopped (or dead) sandbox holds on the host, from its
/// state: container and sandbox mounts, host cgroups, the share and
/// runtime directories. With `force`, carries on past errors and reports
/// them all at the end.
pub(crate) fn free_host_resources(
    store: &SandboxStore,
    state: &mut SandboxState,
    logger: &slog::Logger,
    force: bool,
) -> Result<(), Error> {
    let mut errors: Vec<Error> = Vec::new();
    let step = |errors: &mut Vec<Error>, r: Result<(), Error>| -> Result<(), Error> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if force => {
                warn!(logger, "cleanup step failed; carrying on"; "error" => crate::error::chain(&e));
                errors.push(e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let ids: Vec<_> = state.containers.keys().cloned().collect();
    for id in ids {
        let mounts = state.containers[&id].mounts.clone();
        let r = unbind_all(&mounts);
        if r.is_ok() {
            state.containers.remove(&id);
        }
        step(&mut errors, r)?;
    }
    for m in std::mem::take(&mut state.resources.mounts).iter().rev() {
        step(&mut errors, host_mounts::unmount(m))?;
    }
    let cgroups = SandboxCgroups::load(store.dir(), logger).and_then(|c| match c {
        Some(c) => c.delete(),
        None => Ok(()),
    });
    step(&mut errors, cgroups)?;
    // The VM is gone: its taps, their filters, an SDK-made namespace.
    step(
        &mut errors,
        crate::network::owner::remove_recorded(store.dir(), logger),
    )?;
    if let Some(dir) = state.resources.shared_dir.clone() {
        let r = remove_empty_dir(&dir);
        if r.is_ok() {
            state.resources.shared_dir = None;
        }
        step(&mut errors, r)?;
    }
    if let Some(dir) = state.resources.runtime_dir.clone() {
        let r = remove_runtime_dir(&dir);
        if r.is_ok() {
            state.resources.runtime_dir = None;
        }
        step(&mut errors, r)?;
    }
    store.write(state)?;
    match errors.len() {
        0 => Ok(()),
        _ => Err(Error::Cleanup {
            sandbox: state.id.clone(),
            errors,
        }),
    }
}
