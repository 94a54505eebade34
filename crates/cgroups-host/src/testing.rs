//! A complete fake [`CgroupManager`] for unit tests of code built on this
//! crate (feature `testing`): [`FakeCgroups`] keeps the applied plan and
//! the placed tasks in memory, follows the real managers' rules (an
//! update must name the same cgroups, delete is idempotent, a journal is
//! written before every change), and fails on request. Also a fixture
//! for the planner's input ([`container_resources`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::apply::{CgroupManager, CgroupsState, Journal, SandboxTasks, record, same_cgroups};
use crate::error::Error;
use crate::plan::CgroupPlan;

/// A method of [`CgroupManager`], for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// [`CgroupManager::apply`].
    Apply,
    /// [`CgroupManager::update`].
    Update,
    /// [`CgroupManager::delete`].
    Delete,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<Method>,
    fail: BTreeSet<Method>,
    tasks: Option<SandboxTasks>,
}

/// An in-memory [`CgroupManager`]. Clones share their record, so a test
/// keeps a clone to look at what the code under test did.
#[derive(Clone, Default)]
pub struct FakeCgroups {
    state: CgroupsState,
    inner: Arc<Mutex<Inner>>,
    journal: Option<Arc<Mutex<Box<dyn Journal>>>>,
}

impl std::fmt::Debug for FakeCgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCgroups")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl FakeCgroups {
    /// A manager with nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state in `journal` before every change, as the real
    /// managers do.
    pub fn with_journal(mut self, journal: Box<dyn Journal>) -> Self {
        self.journal = Some(Arc::new(Mutex::new(journal)));
        self
    }

    /// The next call of `method` fails (once).
    pub fn fail_next(&self, method: Method) {
        self.lock().fail.insert(method);
    }

    /// How many times `method` was called.
    pub fn count(&self, method: Method) -> usize {
        self.lock().calls.iter().filter(|m| **m == method).count()
    }

    /// The tasks placed by the last successful apply or update.
    pub fn tasks(&self) -> Option<SandboxTasks> {
        self.lock().tasks.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call and fails it if asked to.
    fn enter(&self, method: Method, plan: Option<&CgroupPlan>) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.calls.push(method);
        if inner.fail.remove(&method) {
            return Err(Error::CreateCgroup {
                path: PathBuf::from(format!(
                    "<injected failure in {method:?} for {}>",
                    plan.map_or("-".to_owned(), |p| p.sandbox_id.to_string())
                )),
                source: std::io::Error::other("injected"),
            });
        }
        Ok(())
    }

    fn save(&self) -> Result<(), Error> {
        match &self.journal {
            Some(journal) => {
                let mut journal = journal.lock().unwrap_or_else(|e| e.into_inner());
                record(journal.as_mut(), &self.state)
            }
            None => Ok(()),
        }
    }
}

impl CgroupManager for FakeCgroups {
    fn apply(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        if let Some(applied) = &self.state.plan
            && !same_cgroups(applied, plan)
        {
            return Err(Error::PlanMismatch {
                sandbox: plan.sandbox_id.clone(),
                what: "cgroup paths differ from the applied plan",
            });
        }
        self.enter(Method::Apply, Some(plan))?;
        let first = self.state.plan.is_none();
        self.state.plan = Some(plan.clone());
        if first {
            self.state.created = plan
                .cgroups()
                .into_iter()
                .map(|(_, c)| PathBuf::from(c.path.as_str()))
                .collect();
        }
        self.save()?;
        self.lock().tasks = Some(tasks.clone());
        Ok(())
    }

    fn update(&mut self, plan: &CgroupPlan, tasks: &SandboxTasks) -> Result<(), Error> {
        self.enter(Method::Update, Some(plan))?;
        match &self.state.plan {
            Some(applied) if same_cgroups(applied, plan) => {}
            Some(_) => {
                return Err(Error::PlanMismatch {
                    sandbox: plan.sandbox_id.clone(),
                    what: "cgroup paths differ",
                });
            }
            None => {
                return Err(Error::PlanMismatch {
                    sandbox: plan.sandbox_id.clone(),
                    what: "nothing applied yet",
                });
            }
        }
        self.state.plan = Some(plan.clone());
        self.save()?;
        self.lock().tasks = Some(tasks.clone());
        Ok(())
    }

    fn delete(&mut self) -> Result<(), Error> {
        self.enter(Method::Delete, self.state.plan.clone().as_ref())?;
        self.state = CgroupsState::default();
        self.lock().tasks = None;
        self.save()
    }

    fn state(&self) -> &CgroupsState {
        &self.state
    }
}

/// A container's resources with the given CPU quota/period, cpuset and
/// memory limit (bytes), each left unset when `None`.
pub fn container_resources(
    id: &str,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: Option<&str>,
    memory: Option<i64>,
) -> crate::plan::ContainerResources {
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(q) = quota {
        cpu = cpu.quota(q);
    }
    if let Some(p) = period {
        cpu = cpu.period(p);
    }
    if let Some(c) = cpus {
        cpu = cpu.cpus(c);
    }
    let mut res = LinuxResourcesBuilder::default().cpu(cpu.build().expect("a cpu section"));
    if let Some(m) = memory {
        res = res.memory(
            LinuxMemoryBuilder::default()
                .limit(m)
                .build()
                .expect("a memory section"),
        );
    }
    crate::plan::ContainerResources::new(id, res.build().expect("resources"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{CgroupDriver, CgroupVersion, SandboxCgroupConfig, plan};

    fn plan_for(id: &str) -> CgroupPlan {
        let config = SandboxCgroupConfig::new(
            id.parse().unwrap(),
            CgroupDriver::Cgroupfs,
            CgroupVersion::V2,
        );
        plan(&config, &[]).unwrap()
    }

    #[test]
    fn follows_the_real_managers_rules() {
        let mut m = FakeCgroups::new();
        let watcher = m.clone();
        let p = plan_for("sb1");
        assert!(matches!(
            m.update(&p, &SandboxTasks::default()),
            Err(Error::PlanMismatch { .. })
        ));
        let tasks = SandboxTasks {
            vmm: Some(42),
            ..Default::default()
        };
        m.apply(&p, &tasks).unwrap();
        assert_eq!(watcher.tasks(), Some(tasks));
        assert_eq!(m.state().plan.as_ref(), Some(&p));
        assert!(matches!(
            m.update(&plan_for("sb2"), &SandboxTasks::default()),
            Err(Error::PlanMismatch { .. })
        ));
        m.delete().unwrap();
        m.delete().unwrap();
        assert_eq!(m.state(), &CgroupsState::default());
        assert_eq!(watcher.count(Method::Delete), 2);
    }

    #[test]
    fn injected_failures_and_the_journal() {
        let records = Arc::new(Mutex::new(Vec::new()));
        let seen = records.clone();
        let journal = move |s: &CgroupsState| -> Result<(), crate::JournalError> {
            seen.lock().unwrap().push(s.clone());
            Ok(())
        };
        let mut m = FakeCgroups::new().with_journal(Box::new(journal));
        m.fail_next(Method::Apply);
        let p = plan_for("sb1");
        assert!(m.apply(&p, &SandboxTasks::default()).is_err());
        assert!(
            records.lock().unwrap().is_empty(),
            "a failed call records nothing"
        );
        m.apply(&p, &SandboxTasks::default()).unwrap();
        assert_eq!(records.lock().unwrap()[0].plan.as_ref(), Some(&p));
    }
}
