//! The cgroup v2 backend: one unified hierarchy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::Cgroup;
use slog::{debug, warn};

use super::hierarchy::FixedHierarchy;
use super::mounts::check_cgroupfs;
use super::tasks::{SandboxTasks, is_no_such_task};
use super::write::write_setting;
use super::{
    Backend, CgroupManager, CgroupsState, Journal, Recorded, Step, apply_plan, check_step,
    create_dirs, delete_all, ensure_under, evacuation_target, remove_cgroup_dir,
};
use crate::error::Error;
use crate::plan::{CgroupPath, CgroupPlan, CgroupRole, CgroupVersion, PlannedCgroup};

/// The v2 controllers this crate drives.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];

const EVACUATE_ATTEMPTS: usize = 10;

/// The cgroupfs v2 backend.
///
/// Splitting one process's threads between cgroups needs *threaded*
/// cgroups: the VMM process sits in the sandbox cgroup (which becomes
/// "domain threaded") and its vCPU threads in the threaded child `vcpus`,
/// which carries the CPU constraints. The kernel refuses that when the
/// sandbox cgroup already has domain children or domain controllers
/// (memory, io) enabled for its subtree; apply then fails with
/// [`Error::ThreadedModeUnavailable`] and unwinds, and the caller can fall
/// back to `sandbox_cgroup_only`.
///
/// The device allowlist is enforced by a `BPF_PROG_TYPE_CGROUP_DEVICE`
/// program attached to the sandbox cgroup ([`crate::device_filter`]),
/// replaced on every apply and detached before the cgroup is removed. It
/// covers the threaded `vcpus` child too (a cgroup's device programs apply
/// to its descendants); the overhead cgroup has none, as on v1.
#[derive(Debug)]
pub struct CgroupfsV2 {
    root: PathBuf,
    logger: slog::Logger,
    rec: Recorded,
    /// A step where a test injects a failure.
    pub(crate) fail_at: Option<Step>,
}

fn read_list(path: &Path) -> Result<BTreeSet<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadCgroupFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

impl CgroupfsV2 {
    /// Records the state in `journal` before every change (see [`Journal`]).
    pub fn with_journal(mut self, journal: Box<dyn Journal>) -> Self {
        self.rec.set_journal(journal);
        self
    }

    /// A backend on the cgroup2 mount at `root`.
    pub fn new(root: PathBuf, logger: slog::Logger) -> Self {
        Self::with_state(root, logger, CgroupsState::default())
    }

    pub(crate) fn with_state(root: PathBuf, logger: slog::Logger, state: CgroupsState) -> Self {
        CgroupfsV2 {
            root,
            logger,
            rec: Recorded::new(state),
            fail_at: None,
        }
    }

    fn hierarchy(&self) -> FixedHierarchy {
        let available = read_list(&self.root.join("cgroup.controllers")).unwrap_or_default();
        FixedHierarchy::V2 {
            root: self.root.clone(),
            controllers: V2_CONTROLLERS
                .iter()
                .filter(|c| available.contains(**c))
                .map(|c| (*c).to_owned())
                .collect(),
        }
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn cgroup(&self, role: CgroupRole, plan: &CgroupPlan) -> Option<Cgroup> {
        plan.cgroup(role)
            .map(|c| self.hierarchy().cgroup(c.path.relative()))
    }

    fn step(&self, step: Step) -> Result<(), Error> {
        check_step(self.fail_at, step)
    }

    fn make_threaded(&self, dir: &Path) -> Result<(), Error> {
        let type_file = dir.join("cgroup.type");
        let current =
            std::fs::read_to_string(&type_file).map_err(|source| Error::ReadCgroupFile {
                path: type_file.clone(),
                source,
            })?;
        if current.trim() == "threaded" {
            return Ok(());
        }
        std::fs::write(&type_file, "threaded").map_err(|source| {
            Error::ThreadedModeUnavailable {
                path: dir.to_owned(),
                source,
            }
        })?;
        // Read it back: a cgroup the kernel could not turn threaded reports
        // another type rather than failing on every kernel version.
        let after = std::fs::read_to_string(&type_file).unwrap_or_default();
        if after.trim() != "threaded" {
            return Err(Error::ThreadedModeUnavailable {
                path: dir.to_owned(),
                source: std::io::Error::other(format!("cgroup.type is {:?}", after.trim())),
            });
        }
        Ok(())
    }

    /// Enables `needed` in `cgroup.subtree_control` of every ancestor of
    /// `dir`, from the root down, so `dir` gets those controllers' files.
    fn enable_controllers(&self, dir: &Path, needed: &BTreeSet<&'static str>) -> Result<(), Error> {
        if needed.is_empty() {
            return Ok(());
        }
        let mut ancestors: Vec<&Path> = dir
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&self.root))
            .collect();
        ancestors.reverse();
        for ancestor in ancestors {
            let available = read_list(&ancestor.join("cgroup.controllers"))?;
            let enabled = read_list(&ancestor.join("cgroup.subtree_control"))?;
            for &controller in needed {
                if !available.contains(controller) {
                    return Err(Error::ControllerMissing {
                        controller,
                        root: ancestor.to_owned(),
                    });
                }
                if enabled.contains(controller) {
                    continue;
                }
                let file = ancestor.join("cgroup.subtree_control");
                std::fs::write(&file, format!("+{controller}")).map_err(|e| {
                    Error::WriteSetting {
                        path: ancestor.to_owned(),
                        file: "cgroup.subtree_control",
                        value: format!("+{controller}"),
                        source: Box::new(e),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn move_process(&self, plan: &CgroupPlan, role: CgroupRole, pid: u32) -> Result<(), Error> {
        let Some(cgroup) = self.cgroup(role, plan) else {
            return Ok(());
        };
        cgroup
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|e| move_error("process", pid, &self.dir(cgroup.path()), e))
    }

    fn log_move_failure(&self, path: &CgroupPath, pid: u64, e: &cgroups_rs::fs::error::Error) {
        if !is_no_such_task(e) {
            warn!(self.logger, "cannot move task out of cgroup";
                "pid" => pid, "cgroup" => %path, "error" => %e);
        }
    }
}

fn move_error(kind: &'static str, pid: u32, dir: &Path, e: cgroups_rs::fs::error::Error) -> Error {
    if is_no_such_task(&e) {
        return Error::NoSuchTask { pid };
    }
    Error::MoveTask {
        kind,
        pid,
        path: dir.to_owned(),
        source: Box::new(e),
    }
}

impl CgroupManager for CgroupfsV2 {
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

impl Backend for CgroupfsV2 {
    fn logger(&self) -> &slog::Logger {
        &self.logger
    }

    fn recorded(&mut self) -> &mut Recorded {
        &mut self.rec
    }

    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn planned_dirs(&self, plan: &CgroupPlan) -> Vec<(PathBuf, PathBuf)> {
        plan.cgroups()
            .into_iter()
            .map(|(_, c)| (self.dir(c.path.as_str()), self.root.clone()))
            .collect()
    }

    fn check(&self, plan: &CgroupPlan) -> Result<(), Error> {
        check_cgroupfs(&self.root, true)?;
        for (_, c) in plan.cgroups() {
            ensure_under(&self.root, &self.dir(c.path.as_str()))?;
        }
        Ok(())
    }

    fn create(&mut self, plan: &CgroupPlan) -> Result<(), Error> {
        for (role, c) in plan.cgroups() {
            self.step(match role {
                CgroupRole::Sandbox => Step::CreateSandbox,
                CgroupRole::Vcpus => Step::CreateVcpus,
                CgroupRole::Overhead => Step::CreateOverhead,
            })?;
            let dir = self.dir(c.path.as_str());
            let root = self.root.clone();
            create_dirs(&dir, &root, &mut self.rec.state.created)?;
            if c.threaded {
                self.make_threaded(&dir)?;
            }
            let needed: BTreeSet<&'static str> =
                c.settings.iter().map(|s| s.controller()).collect();
            self.enable_controllers(&dir, &needed)?;
        }
        Ok(())
    }

    fn constrain(&mut self, plan: &CgroupPlan) -> Result<(), Error> {
        self.step(Step::WriteSettings)?;
        for (_, c) in plan.cgroups() {
            let cgroup = self.hierarchy().cgroup(c.path.relative());
            let dir = self.dir(c.path.as_str());
            for setting in &c.settings {
                write_setting(&cgroup, setting, CgroupVersion::V2, &dir)?;
            }
        }
        self.step(Step::WriteDevices)?;
        crate::device_filter::install(&self.dir(plan.sandbox.path.as_str()), &plan.devices)
    }

    fn place(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        let p = plan.placement;
        // An update that moves nothing writes nothing (see `already_placed`).
        let placed = super::tasks::already_placed(plan, tasks, Path::new("/proc"), |list| {
            list.is_empty().then_some(false)
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
            self.move_process(plan, p.vmm, pid)?;
        }
        self.step(Step::PlaceVcpus)?;
        if !placed && p.vcpu_threads != p.vmm {
            for &tid in &tasks.vcpu_threads {
                let Some(cgroup) = self.cgroup(p.vcpu_threads, plan) else {
                    continue;
                };
                cgroup
                    .add_task(CgroupPid::from(u64::from(tid)))
                    .map_err(|e| move_error("thread", tid, &self.dir(cgroup.path()), e))?;
            }
        }
        self.step(Step::PlaceHelpers)?;
        for &pid in tasks.helpers.iter().filter(|_| !placed) {
            self.move_process(plan, p.helpers, pid)?;
        }
        Ok(())
    }

    fn restore(&self, originals: &[(u32, Vec<(String, String)>)]) {
        for (pid, cgroups) in originals {
            let Some((_, path)) = cgroups.iter().find(|(list, _)| list.is_empty()) else {
                continue;
            };
            let procs = self.dir(path).join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                debug!(self.logger, "could not restore process cgroup";
                    "pid" => pid, "file" => %procs.display(), "error" => %e);
            }
        }
    }

    /// Moves everything out of the cgroup at `path` and removes it.
    /// Threads of a threaded cgroup go to its parent (the same threaded
    /// subtree, removed next); processes of a domain cgroup go to its
    /// nearest ancestor that outlives the sandbox, or to the root when that
    /// ancestor may not hold processes (it has domain controllers enabled
    /// for its children).
    fn remove(&self, cgroup: &PlannedCgroup) -> Result<(), Error> {
        let (path, threaded) = (&cgroup.path, cgroup.threaded);
        let is_sandbox = self
            .rec
            .state
            .plan
            .as_ref()
            .is_some_and(|p| p.sandbox.path == *path);
        if is_sandbox && let Err(e) = crate::device_filter::remove(&self.dir(path.as_str())) {
            // Removing the cgroup releases its programs all the same.
            warn!(self.logger, "cannot detach the device program before removing the cgroup";
                "cgroup" => %path, "error" => %e);
        }
        let cgroup = self.hierarchy().cgroup(path.relative());
        let target = evacuation_target(path, &self.root, &self.rec.state.created);
        let target = self.hierarchy().cgroup(target.relative());
        for _ in 0..EVACUATE_ATTEMPTS {
            if threaded {
                let tids = cgroup.tasks();
                if tids.is_empty() {
                    break;
                }
                for tid in tids {
                    if let Err(e) = cgroup.move_task_to_parent(tid) {
                        self.log_move_failure(path, tid.pid, &e);
                    }
                }
            } else {
                let pids = cgroup.procs();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let moved = target.add_task_by_tgid(pid).or_else(|_| {
                        self.hierarchy()
                            .cgroup("")
                            .add_task_by_tgid(CgroupPid::from(pid.pid))
                    });
                    if let Err(e) = moved {
                        self.log_move_failure(path, pid.pid, &e);
                    }
                }
            }
        }
        remove_cgroup_dir(&self.dir(path.as_str()))
    }
}
