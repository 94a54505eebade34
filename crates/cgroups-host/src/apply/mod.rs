//! The applier: executes a [`CgroupPlan`] on a real cgroupfs through
//! `cgroups-rs`, and removes everything it made.
//!
//! One [`CgroupManager`] trait, one backend per hierarchy
//! ([`CgroupfsV1`], [`CgroupfsV2`], [`SystemdCgroups`]), and the
//! [`HostCgroups`] enum over them built by [`HostCgroups::new`] from
//! explicit mount points, so tests (and embedders with unusual mounts) say
//! where the hierarchies are.

#[cfg(test)]
mod guest_vm;
mod hierarchy;
#[cfg(test)]
mod journal_tests;
pub mod mounts;
mod tasks;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod v1;
mod v2;
#[cfg(test)]
mod v2_guest_tests;
#[cfg(test)]
mod v2_host_tests;
mod write;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use mounts::V1Mounts;
pub use tasks::{SandboxTasks, thread_cgroup};
pub use v1::CgroupfsV1;
pub use v2::CgroupfsV2;

use crate::error::Error;
use crate::plan::{CgroupDriver, CgroupPath, CgroupPlan, CgroupVersion};

/// What a manager has created: enough to delete it all again, also from
/// another process (persist it with serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupsState {
    /// The last plan applied (or being applied).
    pub plan: Option<CgroupPlan>,
    /// Directories this manager created, in creation order, recorded
    /// before each is created. Removed deepest first on delete.
    pub created: Vec<PathBuf>,
    /// The runtime's own process and the cgroups it was in before it was
    /// moved into the sandbox cgroup (`sandbox_cgroup_only`): delete puts
    /// it back there, not merely into a parent.
    #[serde(default)]
    pub runtime_origin: Option<(u32, Vec<(String, String)>)>,
}

/// A journal's error (whatever the caller's storage fails with).
pub type JournalError = Box<dyn std::error::Error + Send + Sync>;

/// Where a manager writes its [`CgroupsState`] down before each change it
/// makes to the host: the plan before anything is created, every
/// directory before `mkdir`, the runtime's own cgroups before it is moved.
/// A process killed at any instant then leaves a record of everything that
/// exists because of it, and [`HostCgroups::from_state`] +
/// [`CgroupManager::delete`] in another process remove exactly that
/// (parents only when empty).
///
/// Any `FnMut(&CgroupsState) -> Result<(), JournalError> + Send` is a
/// journal.
pub trait Journal: Send {
    /// Makes `state` durable; an error stops the change it precedes.
    fn record(&mut self, state: &CgroupsState) -> Result<(), JournalError>;
}

impl<F> Journal for F
where
    F: FnMut(&CgroupsState) -> Result<(), JournalError> + Send,
{
    fn record(&mut self, state: &CgroupsState) -> Result<(), JournalError> {
        self(state)
    }
}

/// Writes `state` to `journal`, naming the sandbox in the error.
pub(crate) fn record(journal: &mut dyn Journal, state: &CgroupsState) -> Result<(), Error> {
    journal.record(state).map_err(|source| Error::Journal {
        sandbox: state
            .plan
            .as_ref()
            .map(|p| p.sandbox_id.clone())
            .unwrap_or_else(|| "unknown".parse().expect("a valid id")),
        source,
    })
}

/// A backend's state and the journal it is recorded in.
pub(crate) struct Recorded {
    pub(crate) state: CgroupsState,
    journal: Option<Box<dyn Journal>>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("state", &self.state)
            .field("journal", &self.journal.is_some())
            .finish()
    }
}

impl Recorded {
    pub(crate) fn new(state: CgroupsState) -> Self {
        Recorded {
            state,
            journal: None,
        }
    }

    pub(crate) fn set_journal(&mut self, journal: Box<dyn Journal>) {
        self.journal = Some(journal);
    }

    /// Writes the state to the journal, if there is one.
    pub(crate) fn save(&mut self) -> Result<(), Error> {
        match self.journal.as_mut() {
            Some(journal) => record(journal.as_mut(), &self.state),
            None => Ok(()),
        }
    }
}

/// Manages one sandbox's host cgroups.
///
/// Every method is synchronous: cgroupfs writes do not block on anything
/// worth an async runtime.
pub trait CgroupManager: Send {
    /// Creates the plan's cgroups, writes their constraints and device
    /// rules, and places the given tasks. Idempotent: applying the same
    /// plan again changes nothing and is not an error.
    ///
    /// On error, a first apply unwinds completely: the processes it moved
    /// go back to the cgroups they came from and every directory it created
    /// is removed.
    fn apply(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error>;

    /// Re-applies a re-made plan after a container joined, left or was
    /// updated: new constraints, new device rules, and a fresh placement
    /// (vCPU thread ids are read anew by the caller each time). The plan
    /// must name the same cgroups as the applied one.
    fn update(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        match &self.state().plan {
            Some(applied) if same_cgroups(applied, plan) => self.apply(plan, tasks),
            Some(_) => Err(Error::PlanMismatch {
                sandbox: plan.sandbox_id.clone(),
                what: "cgroup paths differ",
            }),
            None => Err(Error::PlanMismatch {
                sandbox: plan.sandbox_id.clone(),
                what: "nothing applied yet",
            }),
        }
    }

    /// Deletes every cgroup of the plan and every directory this manager
    /// created, moving tasks still inside to the parent cgroup first.
    /// Idempotent: deleting twice is not an error.
    fn delete(&mut self) -> Result<(), Error>;

    /// What this manager has created, for persistence.
    fn state(&self) -> &CgroupsState;
}

/// The steps a cgroupfs backend implements; [`apply_plan`] and
/// [`delete_all`] run them in the same order, with the same unwinding, for
/// every version.
pub(crate) trait Backend {
    fn logger(&self) -> &slog::Logger;
    fn recorded(&mut self) -> &mut Recorded;
    fn state_mut(&mut self) -> &mut CgroupsState {
        &mut self.recorded().state
    }
    /// Every cgroup directory the plan needs, with the mount it lives in.
    fn planned_dirs(&self, plan: &CgroupPlan) -> Vec<(PathBuf, PathBuf)>;
    /// The hierarchy version this backend writes.
    fn version(&self) -> CgroupVersion;
    /// Checks this backend's mounts and the plan's paths in them (no changes).
    fn check(&self, plan: &CgroupPlan) -> Result<(), Error>;
    /// Creates the plan's cgroups.
    fn create(&mut self, plan: &CgroupPlan) -> Result<(), Error>;
    /// Writes the settings and device rules.
    fn constrain(&mut self, plan: &CgroupPlan) -> Result<(), Error>;
    /// Places the tasks.
    fn place(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error>;
    /// Puts processes back into the cgroups they were in.
    fn restore(&self, originals: &[(u32, Vec<(String, String)>)]);
    /// Empties one planned cgroup and removes it.
    fn remove(&self, cgroup: &crate::plan::PlannedCgroup) -> Result<(), Error>;
}

/// The apply flow shared by the cgroupfs backends: check, record the plan
/// (write-ahead), create, constrain, place; a first apply that fails puts
/// the processes back and deletes what it made.
pub(crate) fn apply_plan<B: Backend>(
    b: &mut B,
    plan: &CgroupPlan,
    tasks: &SandboxTasks,
) -> Result<(), Error> {
    if plan.driver != CgroupDriver::Cgroupfs || plan.version != b.version() {
        return Err(Error::PlanMismatch {
            sandbox: plan.sandbox_id.clone(),
            what: "plan is not for this cgroupfs backend's version",
        });
    }
    if let Some(applied) = &b.state_mut().plan
        && !same_cgroups(applied, plan)
    {
        return Err(Error::PlanMismatch {
            sandbox: plan.sandbox_id.clone(),
            what: "cgroup paths differ from the applied plan",
        });
    }
    b.check(plan)?;
    tasks.validate()?;
    let first = b.state_mut().plan.is_none();
    let originals = if first {
        tasks.current_cgroups(&plan.placement)
    } else {
        Vec::new()
    };
    b.state_mut().plan = Some(plan.clone());
    // Write-ahead: the plan and every directory about to be made are on
    // record before the first mkdir (one journal write, not one per dir).
    for (dir, floor) in b.planned_dirs(plan) {
        let created = &mut b.state_mut().created;
        for missing in missing_dirs(&dir, &floor) {
            if !created.contains(&missing) {
                created.push(missing);
            }
        }
    }
    b.recorded().save()?;
    let result = b
        .create(plan)
        .and_then(|()| b.constrain(plan))
        .and_then(|()| b.place(plan, tasks));
    // A directory someone else made first is not ours: the record says so.
    let saved = b.recorded().save();
    if let Err(e) = result {
        if first {
            b.restore(&originals);
            if let Err(undo) = delete_all(b) {
                slog::warn!(b.logger(), "unwinding a failed apply left cgroups behind";
                    "sandbox" => %plan.sandbox_id, "error" => %undo);
            }
        }
        return Err(e);
    }
    saved?;
    slog::debug!(b.logger(), "host cgroups applied";
        "sandbox" => %plan.sandbox_id, "cgroup" => %plan.sandbox.path);
    Ok(())
}

/// The delete flow shared by the cgroupfs backends: the runtime back to
/// its own cgroups, the planned cgroups (children first) emptied and
/// removed, then the parents this manager created, when empty, and the
/// default parents when empty, whoever created them.
pub(crate) fn delete_all<B: Backend>(b: &mut B) -> Result<(), Error> {
    if let Some(origin) = b.state_mut().runtime_origin.take() {
        b.restore(std::slice::from_ref(&origin));
    }
    let mut defaults = Vec::new();
    if let Some(plan) = b.state_mut().plan.clone() {
        defaults = default_parent_dirs(&b.planned_dirs(&plan));
        let mut cgroups = plan.cgroups();
        cgroups.reverse();
        for (_, c) in cgroups {
            b.remove(c)?;
        }
    }
    let state = b.state_mut();
    remove_created_parents(&mut state.created);
    // The defaults are every sandbox's: the one that made a default parent
    // is not always the last to leave it, and only the maker's rule
    // (above) left them behind, empty, in every controller. A parent a
    // sandbox being created meanwhile needs is made again (creation
    // retries a parent removed under it). Busy or gone: nothing to do.
    for dir in defaults {
        let _ = std::fs::remove_dir(dir);
    }
    state.plan = None;
    state.created.clear();
    b.recorded().save()
}

/// Whether two plans name the same cgroups.
pub(crate) fn same_cgroups(a: &CgroupPlan, b: &CgroupPlan) -> bool {
    let paths = |p: &CgroupPlan| {
        p.cgroups()
            .into_iter()
            .map(|(role, c)| (role, c.path.clone()))
            .collect::<Vec<_>>()
    };
    a.sandbox_id == b.sandbox_id && a.version == b.version && paths(a) == paths(b)
}

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CgroupRoots {
    /// cgroup v1 controller mounts.
    pub v1: V1Mounts,
    /// The cgroup2 mount, if any.
    pub v2: Option<PathBuf>,
}

impl CgroupRoots {
    /// The mounts of this process, from `/proc/self/mountinfo`.
    pub fn discover() -> Result<Self, Error> {
        Self::discover_from(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
    }

    /// The mounts listed in a mountinfo file.
    pub fn discover_from(mountinfo: &Path) -> Result<Self, Error> {
        let table = vc_mountinfo::read_mountinfo(mountinfo)?;
        Ok(CgroupRoots {
            v1: V1Mounts::from_mounts(&table),
            v2: mounts::cgroup2_mount(&table),
        })
    }

    /// The version a host should use: v2 when the only cgroup mount is
    /// cgroup2 (unified mode), else v1 (legacy or hybrid mode).
    pub fn preferred_version(&self) -> CgroupVersion {
        if self.v1.iter().next().is_none() && self.v2.is_some() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    }
}

/// The systemd driver's backend: plans are accepted, applying is not.
///
/// Creating scopes and setting their properties goes through systemd's
/// D-Bus API (`StartTransientUnit`, `SetUnitProperties`); writing cgroupfs
/// under systemd's feet would be undone by systemd. Until that is
/// implemented every operation returns [`Error::Unsupported`]; use the
/// cgroupfs driver.
#[derive(Debug, Default)]
pub struct SystemdCgroups {
    state: CgroupsState,
}

/// Why the systemd driver cannot be applied (yet).
pub fn systemd_unsupported() -> vc_types::Unsupported {
    vc_types::Unsupported::new(
        "the systemd cgroup driver",
        "it is planned only: applying through systemd's D-Bus API is not implemented yet; use the cgroupfs driver",
    )
}

impl CgroupManager for SystemdCgroups {
    fn apply(&mut self, _plan: &CgroupPlan, _tasks: &SandboxTasks) -> Result<(), Error> {
        Err(systemd_unsupported().into())
    }

    fn delete(&mut self) -> Result<(), Error> {
        Err(systemd_unsupported().into())
    }

    fn state(&self) -> &CgroupsState {
        &self.state
    }
}

/// The manager for one sandbox, over the supported backends.
#[derive(Debug)]
pub enum HostCgroups {
    /// cgroupfs v1.
    V1(CgroupfsV1),
    /// cgroupfs v2.
    V2(CgroupfsV2),
    /// systemd (plans only).
    Systemd(SystemdCgroups),
}

impl HostCgroups {
    /// Builds the backend for `driver` and `version` on the given mounts.
    pub fn new(
        driver: CgroupDriver,
        version: CgroupVersion,
        roots: &CgroupRoots,
        logger: slog::Logger,
    ) -> Result<Self, Error> {
        Self::from_state(driver, version, roots, logger, CgroupsState::default())
    }

    /// Rebuilds the manager of an existing sandbox from its persisted
    /// state, e.g. in another process, to update or delete it.
    pub fn from_state(
        driver: CgroupDriver,
        version: CgroupVersion,
        roots: &CgroupRoots,
        logger: slog::Logger,
        state: CgroupsState,
    ) -> Result<Self, Error> {
        Ok(match (driver, version) {
            (CgroupDriver::Systemd, _) => HostCgroups::Systemd(SystemdCgroups { state }),
            (CgroupDriver::Cgroupfs, CgroupVersion::V1) => {
                HostCgroups::V1(CgroupfsV1::with_state(roots.v1.clone(), logger, state))
            }
            (CgroupDriver::Cgroupfs, CgroupVersion::V2) => {
                let root = roots.v2.clone().ok_or_else(|| Error::CgroupfsMissing {
                    path: PathBuf::from("<cgroup2 mount>"),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?;
                HostCgroups::V2(CgroupfsV2::with_state(root, logger, state))
            }
        })
    }

    /// Records the manager's state in `journal` before every change it
    /// makes to the host (see [`Journal`]). The systemd backend changes
    /// nothing and records nothing.
    pub fn with_journal(self, journal: Box<dyn Journal>) -> Self {
        match self {
            HostCgroups::V1(m) => HostCgroups::V1(m.with_journal(journal)),
            HostCgroups::V2(m) => HostCgroups::V2(m.with_journal(journal)),
            systemd @ HostCgroups::Systemd(_) => systemd,
        }
    }

    fn inner(&mut self) -> &mut dyn CgroupManager {
        match self {
            HostCgroups::V1(m) => m,
            HostCgroups::V2(m) => m,
            HostCgroups::Systemd(m) => m,
        }
    }
}

impl CgroupManager for HostCgroups {
    fn apply(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        self.inner().apply(plan, tasks)
    }

    fn update(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        self.inner().update(plan, tasks)
    }

    fn delete(&mut self) -> Result<(), Error> {
        self.inner().delete()
    }

    fn state(&self) -> &CgroupsState {
        match self {
            HostCgroups::V1(m) => m.state(),
            HostCgroups::V2(m) => m.state(),
            HostCgroups::Systemd(m) => m.state(),
        }
    }
}

/// Steps of an apply, where tests inject failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    CreateSandbox,
    CreateVcpus,
    CreateOverhead,
    WriteSettings,
    WriteDevices,
    PlaceRuntime,
    PlaceVmm,
    PlaceVcpus,
    PlaceHelpers,
}

/// Every step, in order.
#[cfg(test)]
pub(crate) const ALL_STEPS: [Step; 9] = [
    Step::CreateSandbox,
    Step::CreateVcpus,
    Step::CreateOverhead,
    Step::WriteSettings,
    Step::WriteDevices,
    Step::PlaceRuntime,
    Step::PlaceVmm,
    Step::PlaceVcpus,
    Step::PlaceHelpers,
];

/// Fails with an injected error when a test asked for one at `step`.
pub(crate) fn check_step(fail_at: Option<Step>, step: Step) -> Result<(), Error> {
    if fail_at == Some(step) {
        return Err(Error::CreateCgroup {
            path: PathBuf::from(format!("<injected failure at {step:?}>")),
            source: std::io::Error::other("injected"),
        });
    }
    Ok(())
}

/// Creates `dir` and any missing ancestors below `floor`, recording each in
/// `created` before creating it. Tolerates a concurrent creator, and a
/// concurrent remover of an empty shared parent (it retries).
pub(crate) fn create_dirs(
    dir: &Path,
    floor: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), Error> {
    let mut attempts = 0;
    loop {
        match create_dirs_once(dir, floor, created) {
            Err(Error::CreateCgroup { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 =>
            {
                attempts += 1;
            }
            result => return result,
        }
    }
}

/// `dir` and its ancestors below `floor` that do not exist, outermost first.
fn missing_dirs(dir: &Path, floor: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(p) = cursor {
        if p == floor || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cursor = p.parent();
    }
    missing.reverse();
    missing
}

fn create_dirs_once(dir: &Path, floor: &Path, created: &mut Vec<PathBuf>) -> Result<(), Error> {
    for p in missing_dirs(dir, floor) {
        if !created.contains(&p) {
            created.push(p.clone());
        }
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone else made it between our check and mkdir: it is
                // not ours to remove.
                created.retain(|c| c != &p);
            }
            Err(source) => {
                created.retain(|c| c != &p);
                return Err(Error::CreateCgroup { path: p, source });
            }
        }
    }
    Ok(())
}

/// Where tasks still inside a cgroup go when it is deleted: its nearest
/// ancestor that this manager did not create (a parent we created is about
/// to be removed too, and would be kept busy by the tasks).
pub(crate) fn evacuation_target(
    path: &CgroupPath,
    mount: &Path,
    created: &[PathBuf],
) -> CgroupPath {
    let mut cursor = path.parent();
    while let Some(p) = cursor {
        if p.is_root() || !created.contains(&mount.join(p.relative())) {
            return p;
        }
        cursor = p.parent();
    }
    CgroupPath::root()
}

/// Removes a cgroup directory, retrying briefly: the kernel may still be
/// tearing down tasks that just left (as runc does). Missing is fine.
pub(crate) fn remove_cgroup_dir(dir: &Path) -> Result<(), Error> {
    let mut delay = std::time::Duration::from_millis(5);
    let mut last = None;
    for _ in 0..6 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(delay);
        delay *= 2;
    }
    Err(Error::DeleteCgroup {
        path: dir.to_owned(),
        source: last.unwrap_or_else(|| std::io::Error::other("rmdir failed")),
    })
}

/// The directories of the default parents ([`crate::plan::DEFAULT_PARENT`],
/// [`crate::plan::DEFAULT_OVERHEAD_PARENT`]) that hold some of
/// `planned` (cgroup directories with their mounts).
fn default_parent_dirs(planned: &[(PathBuf, PathBuf)]) -> Vec<PathBuf> {
    let defaults = [
        crate::plan::DEFAULT_PARENT,
        crate::plan::DEFAULT_OVERHEAD_PARENT,
    ];
    let mut dirs: Vec<PathBuf> = planned
        .iter()
        .filter_map(|(dir, mount)| {
            let parent = dir.parent()?;
            defaults
                .iter()
                .any(|d| parent == mount.join(d.trim_start_matches('/')))
                .then(|| parent.to_owned())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Removes the created directories that are not planned cgroups, deepest
/// first, when empty of child cgroups; a parent shared with another sandbox
/// (`EBUSY`/`ENOTEMPTY`) stays.
pub(crate) fn remove_created_parents(created: &mut Vec<PathBuf>) {
    let mut dirs = created.clone();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in dirs {
        match std::fs::remove_dir(&d) {
            Ok(()) => created.retain(|c| c != &d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => created.retain(|c| c != &d),
            Err(_) => {}
        }
    }
}

/// Checks that `path` resolves under `root` (symlinks included).
pub(crate) fn ensure_under(root: &Path, path: &Path) -> Result<(), Error> {
    let escape = || Error::PathEscapesRoot {
        path: path.to_owned(),
        root: root.to_owned(),
    };
    let canonical_root = root
        .canonicalize()
        .map_err(|source| Error::CgroupfsMissing {
            path: root.to_owned(),
            source,
        })?;
    // Resolve the deepest existing ancestor; what does not exist yet will be
    // created by plain mkdir, which does not follow links.
    let mut existing = path;
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Err(escape()),
        }
    }
    let resolved = existing.canonicalize().map_err(|_| escape())?;
    if resolved.starts_with(&canonical_root) {
        Ok(())
    } else {
        Err(escape())
    }
}
