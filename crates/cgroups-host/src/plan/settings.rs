//! Constraint values and how each cgroup version spells them.

use serde::{Deserialize, Serialize};

use super::cpu_list::CpuList;
use super::resources::{CPU_SHARES_RANGE, CpuQuota, SandboxResources};

/// The cgroup hierarchy version a plan is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`/sys/fs/cgroup/<controller>`).
    V1,
    /// The unified hierarchy.
    V2,
}

/// `cpu.shares` the kernel gives a cgroup that sets none.
pub const DEFAULT_CPU_SHARES: u64 = 1024;
/// `cpu.weight` the kernel gives a cgroup that sets none.
pub const DEFAULT_CPU_WEIGHT: u64 = 100;

/// Converts cgroup v1 `cpu.shares` to cgroup v2 `cpu.weight`.
///
/// Uses the quadratic mapping crun and runc (1.3+) use, which keeps the
/// defaults aligned (1024 shares is weight 100) and maps the ends of the
/// ranges onto each other (2 is 1, 262144 is 10000). The older linear
/// formula turned the default 1024 into 39, starving v2 sandboxes next to
/// default-weight neighbours.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(CPU_SHARES_RANGE.0, CPU_SHARES_RANGE.1);
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// One constraint, version-independent; [`Setting::files`] spells it for a
/// given cgroup version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setting {
    /// CFS bandwidth: `quota` microseconds (`None`: unlimited) per `period`.
    CpuBandwidth {
        /// Microseconds per period; `None` is unlimited.
        quota: Option<u64>,
        /// The period in microseconds.
        period: u64,
    },
    /// Relative CPU weight as v1 shares (converted for v2); `None` restores
    /// the default.
    CpuShares(Option<u64>),
    /// CPUs the tasks may run on; `None` inherits the parent's.
    Cpus(Option<CpuList>),
    /// Memory nodes the tasks may allocate from; `None` inherits the parent's.
    Mems(Option<CpuList>),
    /// Memory limit in bytes; `None` is unlimited.
    MemoryMax(Option<u64>),
    /// Limit on the number of tasks; `None` is unlimited.
    PidsMax(Option<u64>),
}

/// The value a control file receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileValue {
    /// This exact text.
    Text(String),
    /// The parent cgroup's value of the same file (cgroup v1 cpusets, which
    /// an empty value would leave unusable).
    CopyFromParent,
}

impl Setting {
    /// The controller that owns the setting's files.
    pub fn controller(&self) -> &'static str {
        match self {
            Setting::CpuBandwidth { .. } | Setting::CpuShares(_) => "cpu",
            Setting::Cpus(_) | Setting::Mems(_) => "cpuset",
            Setting::MemoryMax(_) => "memory",
            Setting::PidsMax(_) => "pids",
        }
    }

    /// The control files and values that express this setting, in the
    /// order they are written.
    pub fn files(&self, version: CgroupVersion) -> Vec<(&'static str, FileValue)> {
        use CgroupVersion::{V1, V2};
        use FileValue::Text;
        let max_or = |v: Option<u64>, unlimited: &str| {
            v.map_or_else(|| unlimited.to_owned(), |v| v.to_string())
        };
        match (self, version) {
            (Setting::CpuBandwidth { quota, period }, V1) => vec![
                ("cpu.cfs_period_us", Text(period.to_string())),
                ("cpu.cfs_quota_us", Text(max_or(*quota, "-1"))),
            ],
            (Setting::CpuBandwidth { quota, period }, V2) => {
                vec![(
                    "cpu.max",
                    Text(format!("{} {period}", max_or(*quota, "max"))),
                )]
            }
            (Setting::CpuShares(shares), V1) => vec![(
                "cpu.shares",
                Text(shares.unwrap_or(DEFAULT_CPU_SHARES).to_string()),
            )],
            (Setting::CpuShares(shares), V2) => vec![(
                "cpu.weight",
                Text(
                    shares
                        .map_or(DEFAULT_CPU_WEIGHT, shares_to_weight)
                        .to_string(),
                ),
            )],
            (Setting::Cpus(cpus), _) => vec![("cpuset.cpus", cpuset_value(cpus, version))],
            (Setting::Mems(mems), _) => vec![("cpuset.mems", cpuset_value(mems, version))],
            (Setting::MemoryMax(limit), V1) => {
                vec![("memory.limit_in_bytes", Text(max_or(*limit, "-1")))]
            }
            (Setting::MemoryMax(limit), V2) => vec![("memory.max", Text(max_or(*limit, "max")))],
            (Setting::PidsMax(limit), _) => vec![("pids.max", Text(max_or(*limit, "max")))],
        }
    }
}

fn cpuset_value(set: &Option<CpuList>, version: CgroupVersion) -> FileValue {
    match (set, version) {
        (Some(set), _) => FileValue::Text(set.to_string()),
        // v2: an empty cpuset.cpus means "use the parent's effective set".
        (None, CgroupVersion::V2) => FileValue::Text(String::new()),
        (None, CgroupVersion::V1) => FileValue::CopyFromParent,
    }
}

/// The CPU settings of a sandbox: bandwidth, weight, cpus, mems.
pub(crate) fn cpu_settings(r: &SandboxResources) -> Vec<Setting> {
    let (quota, period) = match r.cpu_quota {
        CpuQuota::Unlimited => (None, super::resources::DEFAULT_CPU_PERIOD_US),
        CpuQuota::Limited { quota, period } => (Some(quota), period.get()),
    };
    vec![
        Setting::Cpus(r.cpus.clone()),
        Setting::Mems(r.mems.clone()),
        Setting::CpuBandwidth { quota, period },
        Setting::CpuShares(r.cpu_shares),
    ]
}

/// The memory and pids settings of a sandbox.
pub(crate) fn memory_and_pids_settings(r: &SandboxResources) -> Vec<Setting> {
    vec![
        Setting::MemoryMax(r.memory_limit),
        Setting::PidsMax(r.pids_limit),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupVersion::{V1, V2};

    fn text(s: &Setting, v: CgroupVersion) -> Vec<(String, String)> {
        s.files(v)
            .into_iter()
            .map(|(f, v)| {
                let v = match v {
                    FileValue::Text(t) => t,
                    FileValue::CopyFromParent => "<parent>".to_owned(),
                };
                (f.to_owned(), v)
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn cpu_bandwidth_in_both_versions() {
        let limited = Setting::CpuBandwidth {
            quota: Some(150_000),
            period: 100_000,
        };
        assert_eq!(
            text(&limited, V1),
            pairs(&[
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000")
            ])
        );
        assert_eq!(text(&limited, V2), pairs(&[("cpu.max", "150000 100000")]));
        let unlimited = Setting::CpuBandwidth {
            quota: None,
            period: 100_000,
        };
        assert_eq!(
            text(&unlimited, V1),
            pairs(&[("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")])
        );
        assert_eq!(text(&unlimited, V2), pairs(&[("cpu.max", "max 100000")]));
    }

    #[test]
    fn shares_become_weight_on_v2() {
        assert_eq!(
            text(&Setting::CpuShares(Some(512)), V1),
            pairs(&[("cpu.shares", "512")])
        );
        assert_eq!(
            text(&Setting::CpuShares(Some(1024)), V2),
            pairs(&[("cpu.weight", "100")])
        );
        assert_eq!(
            text(&Setting::CpuShares(None), V1),
            pairs(&[("cpu.shares", "1024")])
        );
        assert_eq!(
            text(&Setting::CpuShares(None), V2),
            pairs(&[("cpu.weight", "100")])
        );
    }

    #[test]
    fn shares_to_weight_keeps_ends_and_default() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
        let mut last = 0;
        for s in (2..=262_144).step_by(97) {
            let w = shares_to_weight(s);
            assert!(w >= last, "not monotonic at {s}");
            last = w;
        }
    }

    #[test]
    fn cpusets_memory_and_pids() {
        let cpus: CpuList = "0-3,8".parse().unwrap();
        assert_eq!(
            text(&Setting::Cpus(Some(cpus.clone())), V1),
            pairs(&[("cpuset.cpus", "0-3,8")])
        );
        assert_eq!(
            text(&Setting::Cpus(Some(cpus)), V2),
            pairs(&[("cpuset.cpus", "0-3,8")])
        );
        assert_eq!(
            text(&Setting::Cpus(None), V1),
            pairs(&[("cpuset.cpus", "<parent>")])
        );
        assert_eq!(
            text(&Setting::Mems(None), V2),
            pairs(&[("cpuset.mems", "")])
        );
        assert_eq!(
            text(&Setting::MemoryMax(Some(1 << 30)), V1),
            pairs(&[("memory.limit_in_bytes", "1073741824")])
        );
        assert_eq!(
            text(&Setting::MemoryMax(None), V1),
            pairs(&[("memory.limit_in_bytes", "-1")])
        );
        assert_eq!(
            text(&Setting::MemoryMax(Some(4096)), V2),
            pairs(&[("memory.max", "4096")])
        );
        assert_eq!(
            text(&Setting::MemoryMax(None), V2),
            pairs(&[("memory.max", "max")])
        );
        assert_eq!(
            text(&Setting::PidsMax(Some(100)), V1),
            pairs(&[("pids.max", "100")])
        );
        assert_eq!(
            text(&Setting::PidsMax(None), V2),
            pairs(&[("pids.max", "max")])
        );
        assert_eq!(Setting::PidsMax(None).controller(), "pids");
        assert_eq!(Setting::Cpus(None).controller(), "cpuset");
    }
}
