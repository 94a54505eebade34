//! The cgroup v1 backend: one directory per controller mount.

use std::path::{Path, PathBuf};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::Cgroup;
use slog::{debug, warn};

use super::hierarchy::FixedHierarchy;
use super::mounts::{V1_CONTROLLERS, V1Mounts, check_cgroupfs};
use super::tasks::{SandboxTasks, is_no_such_task};
use super::write::{write_device_rules, write_setting};
use super::{
    Backend, CgroupManager, CgroupsState, Journal, Recorded, Step, apply_plan, check_step,
    create_dirs, delete_all, ensure_under, evacuation_target, remove_cgroup_dir,
};
use crate::error::Error;
use crate::plan::{CgroupPath, CgroupPlan, CgroupRole, CgroupVersion, PlannedCgroup};

/// Controllers the applier cannot work without; `cpuacct` is used (for
/// accounting) when mounted.
const REQUIRED: [&str; 5] = ["cpu", "cpuset", "memory", "pids", "devices"];

/// Tries to empty a cgroup of tasks before removing it; new threads may
/// appear while we move the old ones out.
const EVACUATE_ATTEMPTS: usize = 10;

/// The cgroupfs v1 backend.
#[derive(Debug)]
pub struct CgroupfsV1 {
    mounts: V1Mounts,
    logger: slog::Logger,
    rec: Recorded,
    /// A step where a test injects a failure.
    pub(crate) fail_at: Option<Step>,
}

impl CgroupfsV1 {
    /// A backend on the given controller mounts.
    pub fn new(mounts: V1Mounts, logger: slog::Logger) -> Self {
        Self::with_state(mounts, logger, CgroupsState::default())
    }

    pub(crate) fn with_state(mounts: V1Mounts, logger: slog::Logger, state: CgroupsState) -> Self {
        // Only the controllers this crate drives.
        let mounts = V1Mounts::from_pairs(
            mounts
                .iter()
                .filter(|(c, _)| V1_CONTROLLERS.contains(c))
                .map(|(c, p)| (c.to_owned(), p.to_path_buf())),
        );
        CgroupfsV1 {
            mounts,
            logger,
            rec: Recorded::new(state),
            fail_at: None,
        }
    }

    /// Records the state in `journal` before every change (see [`Journal`]).
    pub fn with_journal(mut self, journal: Box<dyn Journal>) -> Self {
        self.rec.set_journal(journal);
        self
    }

    fn hierarchy(&self) -> FixedHierarchy {
        FixedHierarchy::V1(self.mounts.clone())
    }

    fn cgroup(&self, role: CgroupRole, plan: &CgroupPlan) -> Option<Cgroup> {
        plan.cgroup(role)
            .map(|c| self.hierarchy().cgroup(c.path.relative()))
    }

    /// The directory of `path` under one controller's mount.
    fn dir(&self, controller: &str, path: &str) -> PathBuf {
        let point = self.mounts.get(controller).unwrap_or(Path::new("/"));
        point.join(path.trim_start_matches('/'))
    }

    fn step(&self, step: Step) -> Result<(), Error> {
        check_step(self.fail_at, step)
    }

    fn move_process(&self, plan: &CgroupPlan, role: CgroupRole, pid: u32) -> Result<(), Error> {
        let Some(cgroup) = self.cgroup(role, plan) else {
            return Ok(());
        };
        cgroup
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|e| move_error("process", pid, &cgroup, e))
    }

    /// Moves a process to `role` in every controller but memory, and to
    /// `memory_role` in the memory controller (whose charges do not move
    /// with a process: it should have been there from its start).
    fn move_process_split_memory(
        &self,
        plan: &CgroupPlan,
        role: CgroupRole,
        memory_role: CgroupRole,
        pid: u32,
    ) -> Result<(), Error> {
        for (controller, _) in self.mounts.iter() {
            let target = if controller == "memory" {
                memory_role
            } else {
                role
            };
            let Some(cgroup) = plan.cgroup(target) else {
                continue;
            };
            let procs = self
                .dir(controller, cgroup.path.as_str())
                .join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    return Err(Error::NoSuchTask { pid });
                }
                return Err(Error::MoveTask {
                    kind: "process",
                    pid,
                    path: procs,
                    source: Box::new(e),
                });
            }
        }
        Ok(())
    }

    fn move_thread(&self, plan: &CgroupPlan, role: CgroupRole, tid: u32) -> Result<(), Error> {
        let Some(cgroup) = self.cgroup(role, plan) else {
            return Ok(());
        };
        cgroup
            .add_task(CgroupPid::from(u64::from(tid)))
            .map_err(|e| move_error("thread", tid, &cgroup, e))
    }
}

/// Which failure-injection step creating a cgroup of `role` is.
fn step_for_create(role: CgroupRole) -> Step {
    match role {
        CgroupRole::Sandbox => Step::CreateSandbox,
        CgroupRole::Vcpus => Step::CreateVcpus,
        CgroupRole::Overhead => Step::CreateOverhead,
    }
}

fn move_error(
    kind: &'static str,
    pid: u32,
    cgroup: &Cgroup,
    e: cgroups_rs::fs::error::Error,
) -> Error {
    if is_no_such_task(&e) {
        return Error::NoSuchTask { pid };
    }
    Error::MoveTask {
        kind,
        pid,
        path: PathBuf::from(cgroup.path()),
        source: Box::new(e),
    }
}

impl CgroupManager for CgroupfsV1 {
    fn apply(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        apply_plan(self, plan, tasks)
    }

    fn delete(&mut self) -> Result<(), Error> {
        delete_all(self)
    }

    fn state(&self) -> &CgroupsState {
        &self.rec.state
    }
}

impl Backend for CgroupfsV1 {
    fn logger(&self) -> &slog::Logger {
        &self.logger
    }

    fn recorded(&mut self) -> &mut Recorded {
        &mut self.rec
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn planned_dirs(&self, plan: &CgroupPlan) -> Vec<(PathBuf, PathBuf)> {
        let mut dirs = Vec::new();
        for (_, c) in plan.cgroups() {
            for (_, point) in self.mounts.iter() {
                dirs.push((point.join(c.path.relative()), point.to_path_buf()));
            }
        }
        dirs
    }

    fn check(&self, plan: &CgroupPlan) -> Result<(), Error> {
        for controller in REQUIRED {
            let point = self
                .mounts
                .get(controller)
                .ok_or_else(|| Error::ControllerMissing {
                    controller,
                    root: PathBuf::from("/proc/self/mountinfo"),
                })?;
            check_cgroupfs(point, false)?;
        }
        for (_, c) in plan.cgroups() {
            for (_, point) in self.mounts.iter() {
                ensure_under(point, &point.join(c.path.relative()))?;
            }
        }
        Ok(())
    }

    fn create(&mut self, plan: &CgroupPlan) -> Result<(), Error> {
        for (role, c) in plan.cgroups() {
            self.step(step_for_create(role))?;
            let points: Vec<PathBuf> = self.mounts.iter().map(|(_, p)| p.to_path_buf()).collect();
            for point in points {
                let dir = point.join(c.path.relative());
                create_dirs(&dir, &point, &mut self.rec.state.created)?;
            }
            // cgroups-rs gives a new v1 cpuset the parent's cpus and mems
            // (an empty cpuset cannot hold tasks).
            self.hierarchy()
                .cgroup(c.path.relative())
                .create()
                .map_err(|e| Error::CreateCgroup {
                    path: self.dir("cpuset", c.path.as_str()),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        Ok(())
    }

    fn constrain(&mut self, plan: &CgroupPlan) -> Result<(), Error> {
        self.step(Step::WriteSettings)?;
        for (_, c) in plan.cgroups() {
            let cgroup = self.hierarchy().cgroup(c.path.relative());
            for setting in &c.settings {
                let dir = self.dir(setting.controller(), c.path.as_str());
                write_setting(&cgroup, setting, CgroupVersion::V1, &dir)?;
            }
        }
        self.step(Step::WriteDevices)?;
        let sandbox = self.hierarchy().cgroup(plan.sandbox.path.relative());
        write_device_rules(
            &sandbox,
            &plan.devices,
            &self.dir("devices", plan.sandbox.path.as_str()),
        )
    }

    fn place(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        let p = plan.placement;
        // An update that moves nothing writes nothing (see `already_placed`).
        let mounts = &self.mounts;
        let placed = super::tasks::already_placed(plan, tasks, Path::new("/proc"), |list| {
            list.split(',')
                .any(|c| mounts.get(c).is_some())
                .then(|| list.split(',').any(|c| c == "memory"))
        });
        self.step(Step::PlaceRuntime)?;
        if let (false, Some(role), Some(pid)) = (placed, p.runtime, tasks.runtime) {
            if self
                .rec
                .state
                .runtime_origin
                .as_ref()
                .is_none_or(|(p, _)| *p != pid)
            {
                // Recorded before the move, so a crash right after it still
                // knows where the runtime came from.
                self.rec.state.runtime_origin = Some((pid, super::tasks::cgroups_of(pid)));
                self.rec.save()?;
            }
            self.move_process(plan, role, pid)?;
        }
        self.step(Step::PlaceVmm)?;
        if let (false, Some(pid)) = (placed, tasks.vmm) {
            // Moving the process moves all its threads: every placement
            // starts from scratch, so threads that stopped being vCPUs leave
            // the sandbox cgroup.
            if p.vmm_memory() == p.vmm {
                self.move_process(plan, p.vmm, pid)?;
            } else {
                self.move_process_split_memory(plan, p.vmm, p.vmm_memory(), pid)?;
            }
        }
        self.step(Step::PlaceVcpus)?;
        if !placed && p.vcpu_threads != p.vmm {
            for &tid in &tasks.vcpu_threads {
                self.move_thread(plan, p.vcpu_threads, tid)?;
            }
        }
        self.step(Step::PlaceHelpers)?;
        for &pid in tasks.helpers.iter().filter(|_| !placed) {
            self.move_process(plan, p.helpers, pid)?;
        }
        Ok(())
    }

    /// Puts processes back where they were before a failed first apply.
    fn restore(&self, originals: &[(u32, Vec<(String, String)>)]) {
        for (pid, cgroups) in originals {
            for (controller, point) in self.mounts.iter() {
                let Some((_, path)) = cgroups
                    .iter()
                    .find(|(list, _)| list.split(',').any(|c| c == controller))
                else {
                    continue;
                };
                let procs = point
                    .join(path.trim_start_matches('/'))
                    .join("cgroup.procs");
                if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                    debug!(self.logger, "could not restore process cgroup";
                        "pid" => pid, "file" => %procs.display(), "error" => %e);
                }
            }
        }
    }

    /// Moves every task out of the cgroup at `path` into its nearest
    /// ancestor that outlives the sandbox, then removes it in every
    /// controller.
    fn remove(&self, cgroup: &PlannedCgroup) -> Result<(), Error> {
        let path = &cgroup.path;
        let cgroup = self.hierarchy().cgroup(path.relative());
        let any_mount = self.mounts.iter().next().map(|(_, p)| p.to_path_buf());
        let target = match &any_mount {
            Some(mount) => evacuation_target(path, mount, &self.rec.state.created),
            None => CgroupPath::root(),
        };
        let target = self.hierarchy().cgroup(target.relative());
        for _ in 0..EVACUATE_ATTEMPTS {
            let tasks = cgroup.tasks();
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if let Err(e) = target.add_task(task)
                    && !is_no_such_task(&e)
                {
                    warn!(self.logger, "cannot move task out of cgroup";
                            "tid" => task.pid, "cgroup" => %path, "error" => %e);
                }
            }
        }
        for (_, point) in self.mounts.iter() {
            remove_cgroup_dir(&point.join(path.relative()))?;
        }
        Ok(())
    }
}
