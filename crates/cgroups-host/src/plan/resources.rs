//! Aggregation of the containers' OCI resources into the sandbox's.

use std::num::NonZeroU64;

use oci_spec::runtime::{LinuxDevice, LinuxResources};
use serde::{Deserialize, Serialize};

use super::cpu_list::CpuList;
use crate::error::Error;

/// The CFS period used when containers disagree on theirs, or give none
/// (the kernel's default, 100 ms).
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS period the kernel accepts (1 ms).
pub const MIN_CPU_PERIOD_US: u64 = 1_000;
/// Largest CFS period the kernel accepts (1 s).
pub const MAX_CPU_PERIOD_US: u64 = 1_000_000;
/// Smallest CFS quota the kernel accepts (1 ms); smaller sums are raised to it.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Smallest and largest cgroup v1 `cpu.shares`.
pub const CPU_SHARES_RANGE: (u64, u64) = (2, 262_144);

/// Whether a container counts towards the sandbox's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created or running: its resources count.
    #[default]
    Active,
    /// Stopped: it uses nothing, so it counts for neither the cgroup
    /// constraints nor the VM size.
    Stopped,
}

/// One container's share of the sandbox, as the planner sees it.
#[derive(Debug, Clone, Default)]
pub struct ContainerResources {
    /// The container id, used in error messages.
    pub id: String,
    /// `linux.resources` from the container's OCI spec.
    pub resources: LinuxResources,
    /// `linux.devices` from the container's OCI spec: host device nodes the
    /// VMM must open to pass them into the guest. (The spec's
    /// `linux.resources.devices` rules are the guest's own device policy and
    /// are enforced inside the VM, not on the host.)
    pub devices: Vec<LinuxDevice>,
    /// Whether the container counts.
    pub state: ContainerState,
}

impl ContainerResources {
    /// An active container with the given id and resources and no devices.
    pub fn new(id: impl Into<String>, resources: LinuxResources) -> Self {
        ContainerResources {
            id: id.into(),
            resources,
            devices: Vec::new(),
            state: ContainerState::Active,
        }
    }
}

/// One container's limits, each checked (a bad value is an error, whatever
/// the container's state); `None` where the container sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLimits {
    /// CFS quota and period, microseconds (a quota of `-1` or `0` is none).
    pub cpu_quota: Option<(u64, u64)>,
    /// Its cpuset's CPUs.
    pub cpus: Option<CpuList>,
    /// Its memory limit, bytes.
    pub memory_bytes: Option<u64>,
}

impl ContainerResources {
    /// The container's limits, checked: what VM sizing and the cgroup
    /// planner both start from.
    pub fn limits(&self) -> Result<ContainerLimits, Error> {
        Ok(ContainerLimits {
            cpu_quota: validated_quota(self)?,
            cpus: validated_cpuset(self)?.cpus,
            memory_bytes: validated_memory(self)?,
        })
    }
}

/// A CFS bandwidth limit.
///
/// The period is a [`NonZeroU64`]: a zero period, for which Kata's
/// `CalculateMilliCPUs` returns 0 CPUs and a plain division would give
/// infinity, cannot be built (and is refused when deserialized), so
/// [`CpuQuota::cpus`] is always finite. The planner never makes one: a
/// container's period outside the kernel's 1 ms ..= 1 s is
/// [`Error::InvalidCpuPeriod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuQuota {
    /// No limit (`-1` / `max`).
    Unlimited,
    /// `quota` microseconds of CPU time every `period` microseconds.
    Limited {
        /// Microseconds of CPU time per period.
        quota: u64,
        /// The period, in microseconds; never zero.
        period: NonZeroU64,
    },
}

impl CpuQuota {
    /// The limit in CPUs (`quota / period`), `None` when unlimited.
    pub fn cpus(&self) -> Option<f64> {
        match *self {
            CpuQuota::Unlimited => None,
            CpuQuota::Limited { quota, period } => Some(quota as f64 / period.get() as f64),
        }
    }
}

/// The sandbox's aggregated resources, independent of the cgroup version.
///
/// `None` means "no limit" for every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxResources {
    /// CFS bandwidth: the containers' quotas summed on a common period;
    /// unlimited as soon as one active container is.
    pub cpu_quota: CpuQuota,
    /// The containers' `cpu.shares` summed (clamped to the kernel's range).
    pub cpu_shares: Option<u64>,
    /// The union of the containers' cpusets (containers without one do not
    /// narrow it; `None` when no container has one).
    pub cpus: Option<CpuList>,
    /// The union of the containers' memory nodes.
    pub mems: Option<CpuList>,
    /// The containers' memory limits summed plus the configured overhead;
    /// unlimited as soon as one active container is.
    pub memory_limit: Option<u64>,
    /// The containers' pids limits summed plus the configured overhead;
    /// unlimited as soon as one active container is.
    pub pids_limit: Option<u64>,
}

/// Headroom added to the summed limits for what runs in the sandbox cgroup
/// besides the containers' own work (the guest kernel and agent, the VMM,
/// the runtime when `sandbox_cgroup_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overhead {
    /// Bytes added to a finite memory limit.
    pub memory_bytes: u64,
    /// Tasks added to a finite pids limit (host threads of the VMM and
    /// helpers count against `pids.max`, not the guest's processes).
    pub pids: u64,
}

impl Default for Overhead {
    fn default() -> Self {
        Overhead {
            memory_bytes: 0,
            pids: 1024,
        }
    }
}

/// A container's CPU quota, validated: `Ok(None)` when it sets none.
pub(crate) fn validated_quota(c: &ContainerResources) -> Result<Option<(u64, u64)>, Error> {
    let Some(cpu) = c.resources.cpu() else {
        return Ok(None);
    };
    let period = match cpu.period() {
        None => DEFAULT_CPU_PERIOD_US,
        Some(p) if (MIN_CPU_PERIOD_US..=MAX_CPU_PERIOD_US).contains(&p) => p,
        Some(p) => {
            return Err(Error::InvalidCpuPeriod {
                container: c.id.clone(),
                period: p,
            });
        }
    };
    match cpu.quota() {
        Some(q) if q < -1 => Err(Error::InvalidCpuQuota {
            container: c.id.clone(),
            quota: q,
        }),
        Some(q) if q > 0 => Ok(Some((q as u64, period))),
        // -1 is "unlimited"; 0 is "unset" (runc's reading).
        _ => Ok(None),
    }
}

/// A container's memory limit, validated: `Ok(None)` when unlimited.
pub(crate) fn validated_memory(c: &ContainerResources) -> Result<Option<u64>, Error> {
    match c.resources.memory().as_ref().and_then(|m| m.limit()) {
        Some(l) if l < -1 => Err(Error::InvalidMemoryLimit {
            container: c.id.clone(),
            limit: l,
        }),
        Some(l) if l > 0 => Ok(Some(l as u64)),
        _ => Ok(None),
    }
}

/// A container's cpuset, each list `None` when unset or empty.
#[derive(Default)]
struct Cpuset {
    cpus: Option<CpuList>,
    mems: Option<CpuList>,
}

fn validated_cpuset(c: &ContainerResources) -> Result<Cpuset, Error> {
    let Some(cpu) = c.resources.cpu() else {
        return Ok(Cpuset::default());
    };
    let parse = |list: &Option<String>| -> Result<Option<CpuList>, Error> {
        match list.as_deref() {
            None => Ok(None),
            Some(s) => {
                let set: CpuList = s.parse()?;
                Ok((!set.is_empty()).then_some(set))
            }
        }
    };
    Ok(Cpuset {
        cpus: parse(cpu.cpus())?,
        mems: parse(cpu.mems())?,
    })
}

/// Sums the active containers' resources into the sandbox's.
///
/// Rules (each unit-tested):
/// - CPU quota: summed on a common period (the containers' own when they
///   all agree, else [`DEFAULT_CPU_PERIOD_US`]), rounded up, at least
///   [`MIN_CPU_QUOTA_US`]; one active container without a quota makes the
///   sandbox unlimited, and so does having no active container.
/// - Shares: summed over the containers that set them, clamped to
///   [`CPU_SHARES_RANGE`].
/// - Cpuset cpus and mems: unioned over the containers that set them. A
///   container without a cpuset does not widen it: as in Kata, the cpuset
///   pins the vCPUs, and an unpinned container runs on whichever vCPUs exist.
/// - Memory and pids: summed plus `overhead`; unlimited as soon as one
///   active container is.
pub fn aggregate(
    containers: &[ContainerResources],
    overhead: Overhead,
) -> Result<SandboxResources, Error> {
    // Validate every container, stopped ones included: bad input is an
    // error whatever its state.
    let mut quotas = Vec::new();
    let mut memory = Vec::new();
    let mut cpusets = Vec::new();
    for c in containers {
        quotas.push(validated_quota(c)?);
        memory.push(validated_memory(c)?);
        cpusets.push(validated_cpuset(c)?);
    }
    let active: Vec<usize> = (0..containers.len())
        .filter(|&i| containers[i].state == ContainerState::Active)
        .collect();

    let cpu_quota = sum_quotas(active.iter().map(|&i| quotas[i]));

    let cpu_shares = active
        .iter()
        .filter_map(|&i| {
            containers[i]
                .resources
                .cpu()
                .as_ref()
                .and_then(|c| c.shares())
        })
        .filter(|&s| s > 0)
        .fold(None, |acc: Option<u64>, s| {
            Some(acc.unwrap_or(0).saturating_add(s))
        })
        .map(|s| s.clamp(CPU_SHARES_RANGE.0, CPU_SHARES_RANGE.1));

    let union = |pick: fn(&Cpuset) -> &Option<CpuList>| {
        active
            .iter()
            .filter_map(|&i| pick(&cpusets[i]).as_ref())
            .fold(None, |acc: Option<CpuList>, set| {
                Some(acc.map_or_else(|| set.clone(), |a| a.union(set)))
            })
    };
    let cpus = union(|s| &s.cpus);
    let mems = union(|s| &s.mems);

    let memory_limit = sum_limits(active.iter().map(|&i| memory[i]), overhead.memory_bytes);
    let pids_limit = sum_limits(
        active.iter().map(|&i| {
            containers[i]
                .resources
                .pids()
                .as_ref()
                .map(|p| p.limit())
                .filter(|&l| l > 0)
                .map(|l| l as u64)
        }),
        overhead.pids,
    );

    Ok(SandboxResources {
        cpu_quota,
        cpu_shares,
        cpus,
        mems,
        memory_limit,
        pids_limit,
    })
}

fn sum_quotas(quotas: impl Iterator<Item = Option<(u64, u64)>>) -> CpuQuota {
    let quotas: Option<Vec<(u64, u64)>> = quotas.collect();
    let Some(quotas) = quotas.filter(|q| !q.is_empty()) else {
        return CpuQuota::Unlimited;
    };
    let first_period = quotas[0].1;
    let period = if quotas.iter().all(|&(_, p)| p == first_period) {
        first_period
    } else {
        DEFAULT_CPU_PERIOD_US
    };
    // Σ quota_i * P / period_i, rounded up so the sandbox never gets less
    // than its containers asked for. Whole parts are summed exactly; only
    // the fractional remainders (each below 1us) go through floating point.
    let mut whole: u128 = 0;
    let mut fractions = 0.0f64;
    for &(q, p) in &quotas {
        let scaled = q as u128 * period as u128;
        whole += scaled / p as u128;
        fractions += (scaled % p as u128) as f64 / p as f64;
    }
    // A sum of remainders that is an integer up to rounding error must not
    // add a microsecond.
    let extra = (fractions - 1e-9).ceil().max(0.0) as u128;
    let quota = u64::try_from(whole + extra)
        .unwrap_or(u64::MAX)
        .max(MIN_CPU_QUOTA_US);
    CpuQuota::Limited {
        quota,
        // Every period was checked to be at least MIN_CPU_PERIOD_US.
        period: NonZeroU64::new(period).unwrap_or(NonZeroU64::MIN),
    }
}

fn sum_limits(limits: impl Iterator<Item = Option<u64>>, overhead: u64) -> Option<u64> {
    let limits: Option<Vec<u64>> = limits.collect();
    let limits = limits.filter(|l| !l.is_empty())?;
    Some(
        limits
            .into_iter()
            .fold(overhead, |acc, l| acc.saturating_add(l)),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxPidsBuilder};
    use proptest::prelude::*;

    pub(crate) use crate::testing::container_resources as container;

    fn with_shares(mut c: ContainerResources, shares: u64) -> ContainerResources {
        let cpu = LinuxCpuBuilder::default().shares(shares).build().unwrap();
        c.resources.set_cpu(Some(cpu));
        c
    }

    fn with_pids(mut c: ContainerResources, limit: i64) -> ContainerResources {
        c.resources.set_pids(Some(
            LinuxPidsBuilder::default().limit(limit).build().unwrap(),
        ));
        c
    }

    fn nz(period: u64) -> NonZeroU64 {
        NonZeroU64::new(period).unwrap()
    }

    #[test]
    fn a_zero_period_cannot_be_made_so_cpus_is_always_finite() {
        // Kata's CalculateMilliCPUs answers 0 for a zero period; here the
        // value cannot exist, not even from a persisted plan.
        let zero = serde_json::from_str::<CpuQuota>(r#"{"Limited":{"quota":100000,"period":0}}"#);
        assert!(zero.is_err(), "{zero:?}");
        let one =
            serde_json::from_str::<CpuQuota>(r#"{"Limited":{"quota":100000,"period":1}}"#).unwrap();
        assert_eq!(one.cpus(), Some(100_000.0));
        assert_eq!(CpuQuota::Unlimited.cpus(), None);
    }

    const NO_OVERHEAD: Overhead = Overhead {
        memory_bytes: 0,
        pids: 0,
    };

    #[test]
    fn quotas_sum_on_their_common_period() {
        let r = aggregate(
            &[
                container("a", Some(50_000), Some(100_000), None, None),
                container("b", Some(100_000), Some(100_000), None, None),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(
            r.cpu_quota,
            CpuQuota::Limited {
                quota: 150_000,
                period: nz(100_000)
            }
        );
        assert_eq!(r.cpu_quota.cpus(), Some(1.5));

        let same_odd_period = aggregate(
            &[
                container("a", Some(20_000), Some(50_000), None, None),
                container("b", Some(30_000), Some(50_000), None, None),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(
            same_odd_period.cpu_quota,
            CpuQuota::Limited {
                quota: 50_000,
                period: nz(50_000)
            }
        );
    }

    #[test]
    fn quotas_on_different_periods_are_normalised_and_rounded_up() {
        // 0.5 CPU + 1/3 CPU = 5/6 CPU = 83333.33us per 100ms, rounded up.
        let r = aggregate(
            &[
                container("a", Some(25_000), Some(50_000), None, None),
                container("b", Some(100_000), Some(300_000), None, None),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(
            r.cpu_quota,
            CpuQuota::Limited {
                quota: 83_334,
                period: nz(DEFAULT_CPU_PERIOD_US)
            }
        );
    }

    #[test]
    fn missing_period_defaults_and_tiny_quota_is_raised_to_kernel_minimum() {
        let r = aggregate(&[container("a", Some(10), None, None, None)], NO_OVERHEAD).unwrap();
        assert_eq!(
            r.cpu_quota,
            CpuQuota::Limited {
                quota: MIN_CPU_QUOTA_US,
                period: nz(DEFAULT_CPU_PERIOD_US)
            }
        );
    }

    #[test]
    fn one_unlimited_container_makes_cpu_unlimited() {
        for unlimited in [
            container("u", Some(-1), Some(100_000), None, None),
            container("u", Some(0), None, None, None),
            container("u", None, None, None, None),
            ContainerResources::new("u", LinuxResources::default()),
        ] {
            let r = aggregate(
                &[container("a", Some(50_000), None, None, None), unlimited],
                NO_OVERHEAD,
            )
            .unwrap();
            assert_eq!(r.cpu_quota, CpuQuota::Unlimited);
        }
        let empty = aggregate(&[], NO_OVERHEAD).unwrap();
        assert_eq!(empty.cpu_quota, CpuQuota::Unlimited);
        assert_eq!(empty.memory_limit, None);
    }

    #[test]
    fn stopped_containers_do_not_count() {
        let mut stopped = container("s", None, None, Some("7"), None);
        stopped.state = ContainerState::Stopped;
        let r = aggregate(
            &[
                container("a", Some(50_000), None, Some("0-1"), Some(1 << 20)),
                stopped,
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(r.cpu_quota.cpus(), Some(0.5));
        assert_eq!(r.cpus.unwrap().to_string(), "0-1");
        assert_eq!(r.memory_limit, Some(1 << 20));
    }

    #[test]
    fn bad_quota_and_period_are_rejected_even_when_stopped() {
        let mut c = container("bad", Some(-2), None, None, None);
        c.state = ContainerState::Stopped;
        match aggregate(&[c], NO_OVERHEAD) {
            Err(Error::InvalidCpuQuota { container, quota }) => {
                assert_eq!(container, "bad");
                assert_eq!(quota, -2);
            }
            other => panic!("{other:?}"),
        }
        for period in [0, 999, 1_000_001] {
            let c = container("p", Some(1000), Some(period), None, None);
            assert!(
                matches!(aggregate(&[c], NO_OVERHEAD), Err(Error::InvalidCpuPeriod { period: p, .. }) if p == period),
                "{period}"
            );
        }
        let c = container("m", None, None, None, Some(-5));
        assert!(matches!(
            aggregate(&[c], NO_OVERHEAD),
            Err(Error::InvalidMemoryLimit { limit: -5, .. })
        ));
        let c = container("c", None, None, Some("1-0"), None);
        assert!(matches!(
            aggregate(&[c], NO_OVERHEAD),
            Err(Error::InvalidCpuList { .. })
        ));
    }

    #[test]
    fn cpusets_union_and_unpinned_containers_do_not_widen() {
        let r = aggregate(
            &[
                container("a", None, None, Some("0-1"), None),
                container("b", None, None, Some("1,8"), None),
                container("c", None, None, None, None),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(r.cpus.unwrap().to_string(), "0-1,8");
        assert_eq!(r.mems, None);
        let none = aggregate(&[container("a", None, None, None, None)], NO_OVERHEAD).unwrap();
        assert_eq!(none.cpus, None);
    }

    #[test]
    fn shares_sum_and_clamp() {
        let r = aggregate(
            &[
                with_shares(container("a", None, None, None, None), 512),
                with_shares(container("b", None, None, None, None), 1024),
                container("c", None, None, None, None),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(r.cpu_shares, Some(1536));
        let huge = aggregate(
            &[
                with_shares(container("a", None, None, None, None), 200_000),
                with_shares(container("b", None, None, None, None), 200_000),
            ],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(huge.cpu_shares, Some(CPU_SHARES_RANGE.1));
        let tiny = aggregate(
            &[with_shares(container("a", None, None, None, None), 1)],
            NO_OVERHEAD,
        )
        .unwrap();
        assert_eq!(tiny.cpu_shares, Some(CPU_SHARES_RANGE.0));
        let unset = aggregate(&[container("a", None, None, None, None)], NO_OVERHEAD).unwrap();
        assert_eq!(unset.cpu_shares, None);
    }

    #[test]
    fn memory_and_pids_sum_with_overhead_and_unlimited_wins() {
        let overhead = Overhead {
            memory_bytes: 100,
            pids: 10,
        };
        let r = aggregate(
            &[
                with_pids(container("a", None, None, None, Some(1000)), 5),
                with_pids(container("b", None, None, None, Some(2000)), 7),
            ],
            overhead,
        )
        .unwrap();
        assert_eq!(r.memory_limit, Some(3100));
        assert_eq!(r.pids_limit, Some(22));

        let r = aggregate(
            &[
                with_pids(container("a", None, None, None, Some(1000)), 5),
                with_pids(container("b", None, None, None, Some(-1)), -1),
            ],
            overhead,
        )
        .unwrap();
        assert_eq!(r.memory_limit, None);
        assert_eq!(r.pids_limit, None);
    }

    fn arb_container() -> impl Strategy<Value = ContainerResources> {
        (
            prop_oneof![
                Just(None),
                Just(Some(-1i64)),
                (1_000i64..400_000).prop_map(Some)
            ],
            prop_oneof![
                Just(None),
                (MIN_CPU_PERIOD_US..=MAX_CPU_PERIOD_US).prop_map(Some)
            ],
            prop_oneof![
                Just(None),
                proptest::collection::btree_set(0u32..64, 1..8)
                    .prop_map(|s| Some(s.into_iter().collect::<CpuList>().to_string()))
            ],
            prop_oneof![Just(None), (1i64..1 << 34).prop_map(Some)],
        )
            .prop_map(|(q, p, cpus, mem)| container("x", q, p, cpus.as_deref(), mem))
    }

    proptest! {
        #[test]
        fn container_order_does_not_matter(
            containers in proptest::collection::vec(arb_container(), 0..8),
            seed in any::<u64>(),
        ) {
            let mut shuffled = containers.clone();
            // A deterministic permutation driven by the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 7) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            shuffled.reverse();
            let a = aggregate(&containers, Overhead::default()).unwrap();
            let b = aggregate(&shuffled, Overhead::default()).unwrap();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn adding_an_unlimited_container_makes_cpu_unlimited(
            containers in proptest::collection::vec(arb_container(), 0..8),
        ) {
            let mut with_unlimited = containers.clone();
            with_unlimited.push(container("u", Some(-1), None, None, None));
            let r = aggregate(&with_unlimited, Overhead::default()).unwrap();
            prop_assert_eq!(r.cpu_quota, CpuQuota::Unlimited);
        }

        #[test]
        fn summed_quota_never_undercuts_the_containers(
            containers in proptest::collection::vec(arb_container(), 1..8),
        ) {
            let r = aggregate(&containers, Overhead::default()).unwrap();
            if let Some(total) = r.cpu_quota.cpus() {
                let asked: f64 = containers.iter().map(|c| {
                    let cpu = c.resources.cpu().as_ref().unwrap();
                    cpu.quota().unwrap() as f64 / cpu.period().unwrap_or(DEFAULT_CPU_PERIOD_US) as f64
                }).sum();
                prop_assert!(total + 1e-9 >= asked, "{} < {}", total, asked);
            }
        }

        #[test]
        fn cpuset_union_is_idempotent(
            containers in proptest::collection::vec(arb_container(), 0..8),
        ) {
            let once = aggregate(&containers, Overhead::default()).unwrap();
            let mut twice = containers.clone();
            twice.extend(containers.iter().cloned());
            let doubled = aggregate(&twice, Overhead::default()).unwrap();
            prop_assert_eq!(once.cpus, doubled.cpus);
            prop_assert_eq!(once.mems, doubled.mems);
        }
    }
}
