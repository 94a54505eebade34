//! The sandbox's host cgroups, owned by one type: [`SandboxCgroups`]
//! creates them, keeps them following the containers and the VM's vCPU
//! threads, and deletes them.
//!
//! The vCPU-constraint story (Kata's `constrainHypervisor`): the VMM is
//! placed when the VM has started, and placed again whenever the
//! containers change, with the vCPU thread ids asked of the hypervisor
//! each time — vCPUs can be hot-plugged, so a cached list would leave new
//! vCPUs unconstrained. Without `sandbox_cgroup_only` only the vCPU
//! threads carry the pod's limits; the VMM's other threads and the helpers
//! run in the overhead cgroup.
//!
//! Write-ahead: the owner's record, `<state dir>/cgroups.json`, is written
//! through the applier's journal before every directory is made, so a
//! process killed at any instant leaves a record from which any process
//! can delete exactly what exists (the parents made too, when empty).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slog::Logger;
use vc_cgroups_host::plan::{ContainerResources, SandboxCgroupConfig};
use vc_cgroups_host::{
    CgroupManager, CgroupRoots, CgroupsState, HostCgroups, JournalError, SandboxTasks,
};
use vc_hypervisor::Hypervisor;

use crate::error::Error;
use crate::persist::{read_versioned, write_versioned};
use crate::plan::CgroupsPlan;
use crate::state::ProcessRecord;

/// The record's file in the sandbox's state directory.
const RECORD_FILE: &str = "cgroups.json";

/// What the owner of a sandbox's host cgroups records: enough for any
/// process to update or delete them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupsRecord {
    /// The planner's configuration.
    pub config: SandboxCgroupConfig,
    /// The mounts used.
    pub roots: CgroupRoots,
    /// What the applier created (and the plan it applied).
    pub state: CgroupsState,
}

/// The sandbox's host cgroups.
pub(crate) struct SandboxCgroups {
    file: PathBuf,
    config: SandboxCgroupConfig,
    roots: CgroupRoots,
    manager: HostCgroups,
}

impl std::fmt::Debug for SandboxCgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCgroups")
            .field("file", &self.file)
            .field("sandbox", &self.config.sandbox_id)
            .finish_non_exhaustive()
    }
}

impl SandboxCgroups {
    /// Creates the planned cgroups, recording them in `state_dir` before
    /// each is made; with `sandbox_cgroup_only`, this process moves in.
    /// A failure unwinds: nothing is left but the record of nothing.
    pub(crate) fn create(
        state_dir: &Path,
        plan: &CgroupsPlan,
        logger: &Logger,
    ) -> Result<Self, Error> {
        let mut owner = Self::open(
            state_dir,
            plan.config.clone(),
            plan.roots.clone(),
            CgroupsState::default(),
            logger,
        )?;
        let tasks = SandboxTasks {
            runtime: plan.config.sandbox_cgroup_only.then(std::process::id),
            ..SandboxTasks::default()
        };
        owner
            .manager
            .apply(&plan.plan, &tasks)
            .map_err(Error::cgroups("create"))?;
        Ok(owner)
    }

    /// The owner of the cgroups recorded in `state_dir`, `None` when the
    /// sandbox has none (unmanaged, or not created yet).
    pub(crate) fn load(state_dir: &Path, logger: &Logger) -> Result<Option<Self>, Error> {
        let Some(record) = read_versioned::<CgroupsRecord>(&state_dir.join(RECORD_FILE))? else {
            return Ok(None);
        };
        Self::open(state_dir, record.config, record.roots, record.state, logger).map(Some)
    }

    fn open(
        state_dir: &Path,
        config: SandboxCgroupConfig,
        roots: CgroupRoots,
        state: CgroupsState,
        logger: &Logger,
    ) -> Result<Self, Error> {
        let file = state_dir.join(RECORD_FILE);
        let journal = {
            let (file, config, roots) = (file.clone(), config.clone(), roots.clone());
            move |state: &CgroupsState| -> Result<(), JournalError> {
                let record = CgroupsRecord {
                    config: config.clone(),
                    roots: roots.clone(),
                    state: state.clone(),
                };
                write_versioned(&file, &record).map_err(|e| Box::new(e) as JournalError)
            }
        };
        let manager =
            HostCgroups::from_state(config.driver, config.version, &roots, logger.clone(), state)
                .map_err(Error::cgroups("open the cgroup hierarchy"))?
                .with_journal(Box::new(journal));
        Ok(SandboxCgroups {
            file,
            config,
            roots,
            manager,
        })
    }

    /// Re-plans the cgroups for `containers` and places the VMM again: its
    /// vCPU threads as the hypervisor reports them now, its other threads
    /// and the live `helpers` (with their descendants) where the plan says.
    pub(crate) async fn update(
        &mut self,
        containers: &[ContainerResources],
        vm: &dyn Hypervisor,
        helpers: &[ProcessRecord],
    ) -> Result<(), Error> {
        let plan =
            vc_cgroups_host::plan(&self.config, containers).map_err(Error::cgroups("plan"))?;
        let vcpus = vm
            .vcpu_threads()
            .await
            .map_err(Error::hypervisor("list vCPU threads"))?;
        let tasks = SandboxTasks {
            // Only the creator moves in (at create): another process
            // driving the sandbox stays where it is.
            runtime: None,
            vmm: vm.vmm_pids().first().copied(),
            vcpu_threads: vcpus.iter().map(|v| v.tid).collect(),
            helpers: helpers
                .iter()
                .filter(|h| crate::process::start_time(h.pid) == Some(h.start_time))
                .flat_map(|h| crate::process::with_descendants(h.pid))
                .collect(),
        };
        self.manager
            .update(&plan, &tasks)
            .map_err(Error::cgroups("update"))
    }

    /// Deletes the cgroups (tasks still inside are moved out first), the
    /// parents made for them when empty, and the record.
    pub(crate) fn delete(mut self) -> Result<(), Error> {
        self.manager.delete().map_err(Error::cgroups("delete"))?;
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::host_io("remove", &self.file)(e)),
        }
    }

    /// What the owner records: the planner's configuration, the mounts,
    /// the plan applied (for reading the cgroups' own counters).
    pub(crate) fn record(&self) -> CgroupsRecord {
        CgroupsRecord {
            config: self.config.clone(),
            roots: self.roots.clone(),
            state: self.manager.state().clone(),
        }
    }

    /// The sandbox cgroup's path (as planned).
    pub(crate) fn sandbox_path(&self) -> Option<String> {
        let plan = self.manager.state().plan.as_ref()?;
        Some(plan.sandbox.path.to_string())
    }

    /// The overhead cgroup's path, when there is one.
    pub(crate) fn overhead_path(&self) -> Option<String> {
        let plan = self.manager.state().plan.as_ref()?;
        Some(plan.overhead.as_ref()?.path.to_string())
    }
}
