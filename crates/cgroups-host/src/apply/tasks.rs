//! The processes and threads a plan places, and their validation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::plan::{CgroupPlan, CgroupRole, Placement};

/// The sandbox's processes and threads, as known at the time of a call.
///
/// The VMM is absent before the VM starts (cgroups are set up first);
/// vCPU thread ids change when CPUs are hot-plugged, so callers query them
/// from the hypervisor afresh for every call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxTasks {
    /// The runtime's own process (placed only with `sandbox_cgroup_only`).
    pub runtime: Option<u32>,
    /// The VMM process.
    pub vmm: Option<u32>,
    /// The VMM's vCPU threads.
    pub vcpu_threads: Vec<u32>,
    /// Helper processes (virtiofsd, ...).
    pub helpers: Vec<u32>,
}

impl SandboxTasks {
    /// Checks that every process and thread exists and that every vCPU
    /// thread belongs to the VMM, before anything is touched.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_in(Path::new("/proc"))
    }

    pub(crate) fn validate_in(&self, proc: &Path) -> Result<(), Error> {
        let processes = self
            .runtime
            .iter()
            .chain(self.vmm.iter())
            .chain(self.helpers.iter());
        for &pid in processes {
            if pid == 0 || !proc.join(pid.to_string()).exists() {
                return Err(Error::NoSuchTask { pid });
            }
        }
        if self.vcpu_threads.is_empty() {
            return Ok(());
        }
        let vmm = self.vmm.ok_or(Error::VcpuThreadsWithoutVmm)?;
        for &tid in &self.vcpu_threads {
            if tid == 0 || !proc.join(tid.to_string()).exists() {
                return Err(Error::NoSuchTask { pid: tid });
            }
            if !proc
                .join(vmm.to_string())
                .join("task")
                .join(tid.to_string())
                .exists()
            {
                return Err(Error::NotAThreadOf { tid, pid: vmm });
            }
        }
        Ok(())
    }
}

impl SandboxTasks {
    /// The processes this placement moves, each with the cgroups it is in
    /// now, so a failed apply can put them back.
    pub(crate) fn current_cgroups(
        &self,
        placement: &Placement,
    ) -> Vec<(u32, Vec<(String, String)>)> {
        self.runtime
            .filter(|_| placement.runtime.is_some())
            .into_iter()
            .chain(self.vmm)
            .chain(self.helpers.iter().copied())
            .map(|pid| (pid, cgroups_of(pid)))
            .collect()
    }
}

/// Whether every task of `tasks` already is where `plan`'s placement
/// puts it, in each hierarchy `hierarchy` says this backend writes.
///
/// Why ask first: writing a pid to `cgroup.procs` or `tasks` takes the
/// host-wide `cgroup_threadgroup_rwsem` for writing, which waits for an
/// RCU grace period unless another move just did (measured: 13 ms for the
/// first move of a sandbox start, on every `update` after a container is
/// created), even when the task does not move. An update that changes
/// nothing then writes nothing.
///
/// `hierarchy` maps a `/proc/<pid>/cgroup` controller list (`""` for the
/// v2 hierarchy) to `None` when the backend does not write that hierarchy,
/// or `Some(is_memory)`. Any task that cannot be read counts as not placed.
pub(crate) fn already_placed(
    plan: &CgroupPlan,
    tasks: &SandboxTasks,
    proc: &Path,
    hierarchy: impl Fn(&str) -> Option<bool>,
) -> bool {
    let p = plan.placement;
    let path_of = |role: CgroupRole| plan.cgroup(role).map(|c| c.path.relative().to_owned());
    // (pid, threads to check, role, role in the memory controller)
    let mut groups: Vec<(u32, Option<&[u32]>, CgroupRole, CgroupRole)> = Vec::new();
    if let (Some(role), Some(pid)) = (p.runtime, tasks.runtime) {
        groups.push((pid, None, role, role));
    }
    let vcpus_apart = p.vcpu_threads != p.vmm;
    if let Some(pid) = tasks.vmm {
        groups.push((pid, None, p.vmm, p.vmm_memory()));
        if vcpus_apart {
            groups.push((
                pid,
                Some(&tasks.vcpu_threads),
                p.vcpu_threads,
                p.vcpu_threads,
            ));
        }
    }
    for &pid in &tasks.helpers {
        groups.push((pid, None, p.helpers, p.helpers));
    }
    groups.into_iter().all(|(pid, only, role, memory_role)| {
        let threads: Vec<u32> = match only {
            Some(tids) => tids.to_vec(),
            None => match std::fs::read_dir(proc.join(pid.to_string()).join("task")) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    // The vCPU threads are checked against their own role.
                    .filter(|tid| !(vcpus_apart && tasks.vcpu_threads.contains(tid)))
                    .collect(),
                Err(_) => return false,
            },
        };
        let (want, want_memory) = (path_of(role), path_of(memory_role));
        threads.iter().all(|tid| {
            let file = proc.join(format!("{pid}/task/{tid}/cgroup"));
            let Ok(text) = std::fs::read_to_string(file) else {
                return false;
            };
            parse_proc_cgroup(&text).iter().all(|(list, path)| {
                let expected = match hierarchy(list) {
                    None => return true,
                    Some(true) => &want_memory,
                    Some(false) => &want,
                };
                // A role without a cgroup is not moved by the placement.
                expected
                    .as_ref()
                    .is_none_or(|e| path.trim_start_matches('/') == e)
            })
        })
    })
}

/// The cgroup of `pid` in each hierarchy, from `/proc/<pid>/cgroup`: pairs
/// of (controller list, path); the v2 entry has an empty controller list.
pub(crate) fn cgroups_of(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| parse_proc_cgroup(&text))
        .unwrap_or_default()
}

/// The cgroup of thread `tid` of process `pid` in the hierarchy holding
/// `controller` (`""`: the cgroup v2 hierarchy), from
/// `/proc/<pid>/task/<tid>/cgroup`; `None` when the thread is gone or the
/// controller is not mounted.
pub fn thread_cgroup(pid: u32, tid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
        .into_iter()
        .find(|(list, _)| {
            if controller.is_empty() {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == controller)
            }
        })
        .map(|(_, path)| path)
}

/// Parses `/proc/<pid>/cgroup` text (`id:controllers:path` lines).
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_owned();
            let path = parts.next()?.to_owned();
            Some((controllers, path))
        })
        .collect()
}

/// Whether an I/O error (possibly boxed inside a cgroups-rs error) says the
/// task is gone.
pub(crate) fn is_no_such_task(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::ESRCH)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_against_a_proc_fixture() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc.path().join("100/task/100")).unwrap();
        std::fs::create_dir_all(proc.path().join("100/task/101")).unwrap();
        std::fs::create_dir_all(proc.path().join("101")).unwrap();
        std::fs::create_dir_all(proc.path().join("200")).unwrap();
        let ok = SandboxTasks {
            runtime: Some(200),
            vmm: Some(100),
            vcpu_threads: vec![101],
            helpers: vec![],
        };
        ok.validate_in(proc.path()).unwrap();

        let missing = SandboxTasks {
            helpers: vec![999],
            ..ok.clone()
        };
        assert!(matches!(
            missing.validate_in(proc.path()),
            Err(Error::NoSuchTask { pid: 999 })
        ));
        let foreign = SandboxTasks {
            vcpu_threads: vec![200],
            ..ok.clone()
        };
        assert!(matches!(
            foreign.validate_in(proc.path()),
            Err(Error::NotAThreadOf { tid: 200, pid: 100 })
        ));
        let orphan = SandboxTasks {
            vmm: None,
            ..ok.clone()
        };
        assert!(matches!(
            orphan.validate_in(proc.path()),
            Err(Error::VcpuThreadsWithoutVmm)
        ));
        let zero = SandboxTasks {
            runtime: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            zero.validate_in(proc.path()),
            Err(Error::NoSuchTask { pid: 0 })
        ));
    }

    /// A `/proc` with process `pid` whose threads are in the given v1
    /// cgroups (one path for `cpu,cpuacct`, one for `memory`, and a
    /// `name=systemd` line no backend writes).
    fn proc_fixture(pid: u32, threads: &[(u32, &str, &str)]) -> tempfile::TempDir {
        let proc = tempfile::tempdir().unwrap();
        for (tid, cpu, memory) in threads {
            let dir = proc.path().join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("cgroup"),
                format!("12:name=systemd:/user.slice\n4:cpu,cpuacct:{cpu}\n3:memory:{memory}\n"),
            )
            .unwrap();
        }
        proc
    }

    #[test]
    fn knows_when_a_placement_would_move_nothing() {
        use crate::plan::{CgroupDriver, CgroupVersion, SandboxCgroupConfig, plan};
        let config = SandboxCgroupConfig::new(
            "sb".parse().unwrap(),
            CgroupDriver::Cgroupfs,
            CgroupVersion::V1,
        );
        let mut plan = plan(&config, &[]).unwrap();
        let sandbox = plan.sandbox.path.as_str().to_owned();
        let overhead = plan.overhead.clone().unwrap().path.as_str().to_owned();
        let tasks = SandboxTasks {
            vmm: Some(100),
            vcpu_threads: vec![101],
            ..Default::default()
        };
        let v1 = |list: &str| {
            let managed = ["cpu", "cpuacct", "memory"];
            list.split(',')
                .any(|c| managed.contains(&c))
                .then(|| list.split(',').any(|c| c == "memory"))
        };
        let placed = |threads: &[(u32, &str, &str)], plan: &CgroupPlan| {
            let proc = proc_fixture(100, threads);
            already_placed(plan, &tasks, proc.path(), v1)
        };
        let (sb, oh) = (sandbox.as_str(), overhead.as_str());
        // The VMM in the overhead cgroup, its vCPU thread in the sandbox's.
        assert!(placed(
            &[(100, oh, oh), (101, sb, sb), (102, oh, oh)],
            &plan
        ));
        // A vCPU thread left in the overhead cgroup: a move is needed.
        assert!(!placed(&[(100, oh, oh), (101, oh, oh)], &plan));
        // A thread that stopped being a vCPU is still in the sandbox's.
        assert!(!placed(
            &[(100, oh, oh), (101, sb, sb), (102, sb, sb)],
            &plan
        ));
        // Only the memory controller differs.
        assert!(!placed(&[(100, oh, "/"), (101, sb, sb)], &plan));
        // The VMM's memory charged to the sandbox: its memory line must
        // say so, its other lines still the overhead.
        plan.placement.vmm_memory = Some(CgroupRole::Sandbox);
        assert!(placed(&[(100, oh, sb), (101, sb, sb)], &plan));
        assert!(!placed(&[(100, oh, oh), (101, sb, sb)], &plan));
        // A thread that cannot be read counts as not placed.
        let proc = proc_fixture(100, &[(100, oh, sb)]);
        assert!(!already_placed(&plan, &tasks, proc.path(), v1));
    }

    #[test]
    fn parses_proc_cgroup() {
        let parsed = parse_proc_cgroup("4:memory:/a/b\n1:cpu,cpuacct:/\n0::/x:y\n");
        assert_eq!(
            parsed,
            vec![
                ("memory".to_owned(), "/a/b".to_owned()),
                ("cpu,cpuacct".to_owned(), "/".to_owned()),
                (String::new(), "/x:y".to_owned()),
            ]
        );
    }

    #[test]
    fn recognises_esrch() {
        let e = std::io::Error::from_raw_os_error(libc::ESRCH);
        assert!(is_no_such_task(&e));
        let other = std::io::Error::from_raw_os_error(libc::EBUSY);
        assert!(!is_no_such_task(&other));
    }
}
