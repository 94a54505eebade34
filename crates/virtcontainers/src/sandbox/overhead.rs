//! What a pod really costs the host: [`Sandbox::overhead`].
//!
//! For the VMM and each helper process: CPU time (the VMM's vCPU threads
//! apart from its other threads) and memory (RSS and PSS, from
//! `/proc/<pid>/smaps_rollup`), each with where it is charged — the pod
//! (the sandbox cgroup, or its vCPU child on cgroup v2), the overhead
//! cgroup, or outside the sandbox's cgroups; the sums of both sides; the
//! cgroups' own counters; and the guest's own view of its memory.
//!
//! Where things are charged follows the kernel's rules, read from
//! `/proc/<pid>/task/<tid>/cgroup`:
//! - CPU time is charged to the cgroup of the thread that runs. A thread's
//!   time from before it was moved counts where it is now here, while its
//!   cgroup counted only what it ran since: compare the two over an
//!   interval, not since boot.
//! - Memory is charged to the memory cgroup of the process (its thread
//!   group leader, the mm owner), never to the threads that touch it, and
//!   stays where it was first touched when the process moves. So on cgroup
//!   v1 without `sandbox_cgroup_only`, guest RAM is overhead: the vCPU
//!   threads carry the pod's CPU limits, the VMM process its memory.
//!   `CgroupsConfig::charge_guest_memory_to_pod` starts the VMM in the
//!   sandbox's memory cgroup instead.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vc_cgroups_host::plan::CgroupVersion;

use super::Sandbox;
use super::cgroups::SandboxCgroups;
use crate::error::Error;
use crate::guest_metrics::{GuestMemory, parse_guest_memory};
use crate::persist::LockMode;

/// Where a process's or thread's use is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargedTo {
    /// The sandbox cgroup (or a cgroup below it): the pod's limits bind it.
    Pod,
    /// The overhead cgroup.
    Overhead,
    /// Neither: where the process was started (e.g. the runtime's cgroup).
    Outside,
}

/// CPU time and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time.
    pub cpu: Duration,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Proportional set size (shared pages split between their users), bytes.
    pub pss_bytes: u64,
}

/// One host process of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// Its program.
    pub program: PathBuf,
    /// Its pid.
    pub pid: u32,
    /// Whether it is the VMM (else a helper: virtiofsd, ...).
    pub vmm: bool,
    /// CPU time of its vCPU threads (zero for a helper).
    pub vcpu_cpu: Duration,
    /// Where its vCPU threads' CPU time is charged (`None`: it has none).
    pub vcpu_cpu_charged_to: Option<ChargedTo>,
    /// CPU time of its other threads (those gone included).
    pub other_cpu: Duration,
    /// Where its main thread's CPU time is charged.
    pub other_cpu_charged_to: ChargedTo,
    /// `Rss` of `/proc/<pid>/smaps_rollup`, bytes.
    pub rss_bytes: u64,
    /// `Pss` of `/proc/<pid>/smaps_rollup`, bytes.
    pub pss_bytes: u64,
    /// Where its memory is charged (its own memory cgroup).
    pub memory_charged_to: ChargedTo,
}

/// A cgroup's own counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// Its path in the hierarchy.
    pub path: String,
    /// CPU time of its tasks since they joined it (`cpuacct.usage`, or
    /// `usage_usec` of `cpu.stat` on cgroup v2).
    pub cpu: Option<Duration>,
    /// Memory charged to it (`memory.usage_in_bytes`, or `memory.current`).
    pub memory_bytes: Option<u64>,
}

/// What the sandbox costs the host, and what the guest sees.
///
/// Where things are charged follows the kernel's rules, read from
/// `/proc/<pid>/task/<tid>/cgroup`:
/// - CPU time is charged to the cgroup of the thread that runs. A thread's
///   time from before it was moved counts where it is now here, while its
///   cgroup counted only what it ran since: compare the two over an
///   interval, not since boot.
/// - Memory is charged to the memory cgroup of the process (its thread
///   group leader, the mm owner), never to the threads that touch it, and
///   stays where it was first touched when the process moves. So on
///   cgroup v1 without `sandbox_cgroup_only`, guest RAM is overhead: the
///   vCPU threads carry the pod's CPU limits, the VMM process its memory,
///   and the pod's memory limit does not bind its VM.
///   [`CgroupsConfig::charge_guest_memory_to_pod`](crate::CgroupsConfig::charge_guest_memory_to_pod)
///   starts the VMM in the sandbox's memory cgroup instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverheadReport {
    /// The VMM and the helpers.
    pub processes: Vec<ProcessUsage>,
    /// What of it is charged to the pod.
    pub pod: Usage,
    /// What is not (overhead cgroup or outside).
    pub overhead: Usage,
    /// The sandbox cgroup's counters (host cgroups managed).
    pub sandbox_cgroup: Option<CgroupUsage>,
    /// The overhead cgroup's counters, when there is one.
    pub overhead_cgroup: Option<CgroupUsage>,
    /// The guest's memory as its kernel sees it (from the agent).
    pub guest: Option<GuestMemory>,
}

impl Sandbox {
    /// What the sandbox costs the host: see [`OverheadReport`] for what
    /// each figure is and where the kernel charges it. The guest's view
    /// comes from the agent (Kata's `GetMetrics`); `None` when the agent
    /// cannot say.
    pub async fn overhead(&self) -> Result<OverheadReport, Error> {
        let (_store, state) = self.lock(LockMode::Shared).await?;
        let record = SandboxCgroups::load(&self.state_dir(), &self.logger)?.map(|c| c.record());
        let places = record.as_ref().map(Places::of);
        let vcpus: Vec<u32> = self
            .vm
            .vcpu_threads()
            .await
            .map_err(Error::hypervisor("list vCPU threads"))?
            .iter()
            .map(|v| v.tid)
            .collect();
        let mut processes = Vec::new();
        for vmm in self.vm.vmm_processes() {
            processes.extend(process_usage(
                &vmm.program,
                vmm.pid,
                Some(&vcpus),
                places.as_ref(),
            ));
        }
        for helper in &state.resources.helpers {
            if crate::process::start_time(helper.pid) != Some(helper.start_time) {
                continue;
            }
            for pid in crate::process::with_descendants(helper.pid) {
                let program = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .unwrap_or_else(|_| helper.program.clone());
                processes.extend(process_usage(&program, pid, None, places.as_ref()));
            }
        }
        let (pod, overhead) = split(&processes);
        let guest = match self.agent.get_metrics().await {
            Ok(text) => parse_guest_memory(&text),
            Err(e) => {
                slog::debug!(self.logger, "no guest metrics"; "error" => crate::error::chain(&e));
                None
            }
        };
        Ok(OverheadReport {
            processes,
            pod,
            overhead,
            sandbox_cgroup: places.as_ref().map(|p| p.counters(&p.sandbox)),
            overhead_cgroup: places
                .as_ref()
                .and_then(|p| Some(p.counters(p.overhead.as_ref()?))),
            guest,
        })
    }
}

/// The sandbox's cgroup paths and where their counters are.
struct Places {
    version: CgroupVersion,
    sandbox: String,
    vcpus: Option<String>,
    overhead: Option<String>,
    roots: vc_cgroups_host::CgroupRoots,
}

impl Places {
    fn of(record: &super::CgroupsRecord) -> Self {
        let plan = record.state.plan.as_ref();
        let path = |c: &vc_cgroups_host::plan::PlannedCgroup| c.path.as_str().to_owned();
        Places {
            version: record.config.version,
            sandbox: plan.map(|p| path(&p.sandbox)).unwrap_or_default(),
            vcpus: plan.and_then(|p| p.vcpus.as_ref().map(path)),
            overhead: plan.and_then(|p| p.overhead.as_ref().map(path)),
            roots: record.roots.clone(),
        }
    }

    /// Who is charged for a task in cgroup `path`.
    fn charged_to(&self, path: &str) -> ChargedTo {
        let under = |root: &str| {
            !root.is_empty() && (path == root || path.starts_with(&format!("{root}/")))
        };
        if under(&self.sandbox) || self.vcpus.as_deref().is_some_and(under) {
            ChargedTo::Pod
        } else if self.overhead.as_deref().is_some_and(under) {
            ChargedTo::Overhead
        } else {
            ChargedTo::Outside
        }
    }

    /// The counters of the cgroup at `path`.
    fn counters(&self, path: &str) -> CgroupUsage {
        let rel = path.trim_start_matches('/');
        let read = |dir: Option<&Path>, file: &str| {
            std::fs::read_to_string(dir?.join(rel).join(file)).ok()
        };
        let (cpu, memory_bytes) = match self.version {
            CgroupVersion::V1 => (
                read(self.roots.v1.get("cpuacct"), "cpuacct.usage")
                    .and_then(|s| s.trim().parse().ok())
                    .map(Duration::from_nanos),
                read(self.roots.v1.get("memory"), "memory.usage_in_bytes")
                    .and_then(|s| s.trim().parse().ok()),
            ),
            CgroupVersion::V2 => (
                read(self.roots.v2.as_deref(), "cpu.stat")
                    .and_then(|s| field(&s, "usage_usec"))
                    .map(Duration::from_micros),
                read(self.roots.v2.as_deref(), "memory.current")
                    .and_then(|s| s.trim().parse().ok()),
            ),
        };
        CgroupUsage {
            path: path.to_owned(),
            cpu,
            memory_bytes,
        }
    }
}

/// The value of `key` in a `key value` per line file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `Rss` and `Pss` of a `smaps_rollup`, bytes.
pub(crate) fn smaps_rollup(text: &str) -> (u64, u64) {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (kib("Rss"), kib("Pss"))
}

/// The cgroup of task `tid` of `pid` for a v1 `controller` (or the v2
/// hierarchy's), from `/proc/<pid>/task/<tid>/cgroup`.
pub(crate) fn task_cgroup(text: &str, controller: &str) -> Option<String> {
    let v1 = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        list.split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    });
    v1.or_else(|| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
    })
}

fn cgroup_of(pid: u32, tid: u32, controller: &str) -> Option<String> {
    task_cgroup(
        &std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).ok()?,
        controller,
    )
}

/// One process's usage; `None` when it is gone.
fn process_usage(
    program: &Path,
    pid: u32,
    vcpus: Option<&[u32]>,
    places: Option<&Places>,
) -> Option<ProcessUsage> {
    let total = crate::process::start_time(pid)
        .and_then(|start| vc_hypervisor::process::cpu_time(pid, start))?;
    let vcpus = vcpus.unwrap_or(&[]);
    let vcpu_cpu: Duration = vcpus
        .iter()
        .filter_map(|&tid| vc_hypervisor::process::thread_cpu_time(pid, tid))
        .sum();
    let (rss_bytes, pss_bytes) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map(|t| smaps_rollup(&t))
        .unwrap_or((0, 0));
    let charged = |tid: u32, controller: &str| match (places, cgroup_of(pid, tid, controller)) {
        (Some(places), Some(path)) => places.charged_to(&path),
        _ => ChargedTo::Outside,
    };
    Some(ProcessUsage {
        program: program.to_owned(),
        pid,
        vmm: !vcpus.is_empty(),
        vcpu_cpu,
        vcpu_cpu_charged_to: vcpus.first().map(|&tid| charged(tid, "cpu")),
        other_cpu: total.saturating_sub(vcpu_cpu),
        other_cpu_charged_to: charged(pid, "cpu"),
        rss_bytes,
        pss_bytes,
        memory_charged_to: charged(pid, "memory"),
    })
}

/// The sums charged to the pod and the rest.
fn split(processes: &[ProcessUsage]) -> (Usage, Usage) {
    let (mut pod, mut overhead) = (Usage::default(), Usage::default());
    for p in processes {
        for (cpu, to) in [
            (
                p.vcpu_cpu,
                p.vcpu_cpu_charged_to.unwrap_or(ChargedTo::Outside),
            ),
            (p.other_cpu, p.other_cpu_charged_to),
        ] {
            let u = if to == ChargedTo::Pod {
                &mut pod
            } else {
                &mut overhead
            };
            u.cpu += cpu;
        }
        let u = if p.memory_charged_to == ChargedTo::Pod {
            &mut pod
        } else {
            &mut overhead
        };
        u.rss_bytes += p.rss_bytes;
        u.pss_bytes += p.pss_bytes;
    }
    (pod, overhead)
}

const MIB: f64 = (1u64 << 20) as f64;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl fmt::Display for ChargedTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChargedTo::Pod => "pod",
            ChargedTo::Overhead => "overhead",
            ChargedTo::Outside => "outside",
        })
    }
}

impl fmt::Display for OverheadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:>10} {:>12} {:>12}  charged to",
            "", "CPU", "RSS", "PSS"
        )?;
        for p in &self.processes {
            let name = p.program.file_name().map_or_else(
                || p.program.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            writeln!(f, "{:<34}", format!("{name} (pid {})", p.pid))?;
            if let Some(to) = p.vcpu_cpu_charged_to {
                writeln!(
                    f,
                    "{:<34} {:>10} {:>12} {:>12}  {to}",
                    "  vCPU threads",
                    secs(p.vcpu_cpu),
                    "",
                    ""
                )?;
            }
            writeln!(
                f,
                "{:<34} {:>10} {:>12} {:>12}  {}",
                "  other threads",
                secs(p.other_cpu),
                "",
                "",
                p.other_cpu_charged_to
            )?;
            writeln!(
                f,
                "{:<34} {:>10} {:>12} {:>12}  {}",
                "  memory",
                "",
                mib(p.rss_bytes),
                mib(p.pss_bytes),
                p.memory_charged_to
            )?;
        }
        for (what, u) in [
            ("charged to the pod", &self.pod),
            ("overhead", &self.overhead),
        ] {
            writeln!(
                f,
                "{what:<34} {:>10} {:>12} {:>12}",
                secs(u.cpu),
                mib(u.rss_bytes),
                mib(u.pss_bytes)
            )?;
        }
        for (what, cg) in [
            ("sandbox cgroup", &self.sandbox_cgroup),
            ("overhead cgroup", &self.overhead_cgroup),
        ] {
            if let Some(cg) = cg {
                writeln!(
                    f,
                    "{what} {}: CPU {}, memory {} (its own counters)",
                    cg.path,
                    cg.cpu.map_or_else(|| "?".into(), secs),
                    cg.memory_bytes.map_or_else(|| "?".into(), mib)
                )?;
            }
        }
        if let Some(g) = &self.guest {
            writeln!(
                f,
                "guest: {} total, {} used, {} available",
                mib(g.total_bytes),
                mib(g.used_bytes()),
                mib(g.available_bytes)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_gives_rss_and_pss_in_bytes() {
        let text = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              277828 kB\nPss:              276000 kB\nPss_Anon:         1 kB\n";
        assert_eq!(smaps_rollup(text), (277_828 * 1024, 276_000 * 1024));
        assert_eq!(smaps_rollup(""), (0, 0));
    }

    #[test]
    fn a_tasks_cgroup_per_controller_and_on_v2() {
        let v1 = "12:pids:/a\n5:cpu,cpuacct:/virtcontainers/sb\n3:memory:/virtcontainers_overhead/sb\n0::/\n";
        assert_eq!(
            task_cgroup(v1, "cpu").as_deref(),
            Some("/virtcontainers/sb")
        );
        assert_eq!(
            task_cgroup(v1, "memory").as_deref(),
            Some("/virtcontainers_overhead/sb")
        );
        assert_eq!(
            task_cgroup("0::/pod/sb/vcpus\n", "cpu").as_deref(),
            Some("/pod/sb/vcpus")
        );
    }

    #[test]
    fn charges_follow_the_paths_and_the_split_adds_up() {
        let places = Places {
            version: CgroupVersion::V2,
            sandbox: "/pod/sb".into(),
            vcpus: Some("/pod/sb/vcpus".into()),
            overhead: Some("/overhead/sb".into()),
            roots: Default::default(),
        };
        assert_eq!(places.charged_to("/pod/sb/vcpus"), ChargedTo::Pod);
        assert_eq!(places.charged_to("/pod/sb"), ChargedTo::Pod);
        assert_eq!(places.charged_to("/pod/sb2"), ChargedTo::Outside);
        assert_eq!(places.charged_to("/overhead/sb"), ChargedTo::Overhead);
        let s = |n| Duration::from_secs(n);
        let vmm = ProcessUsage {
            program: "qemu".into(),
            pid: 1,
            vmm: true,
            vcpu_cpu: s(10),
            vcpu_cpu_charged_to: Some(ChargedTo::Pod),
            other_cpu: s(2),
            other_cpu_charged_to: ChargedTo::Overhead,
            rss_bytes: 300,
            pss_bytes: 290,
            memory_charged_to: ChargedTo::Overhead,
        };
        let helper = ProcessUsage {
            program: "virtiofsd".into(),
            pid: 2,
            vmm: false,
            vcpu_cpu: s(0),
            vcpu_cpu_charged_to: None,
            other_cpu: s(1),
            other_cpu_charged_to: ChargedTo::Outside,
            rss_bytes: 10,
            pss_bytes: 5,
            memory_charged_to: ChargedTo::Pod,
        };
        let (pod, overhead) = split(&[vmm, helper]);
        assert_eq!(
            pod,
            Usage {
                cpu: s(10),
                rss_bytes: 10,
                pss_bytes: 5
            }
        );
        assert_eq!(
            overhead,
            Usage {
                cpu: s(3),
                rss_bytes: 300,
                pss_bytes: 290
            }
        );
        assert_eq!(
            field("usage_usec 1500\nuser_usec 1\n", "usage_usec"),
            Some(1500)
        );
    }
}
