//! The VM size that follows from the containers' resources: the same
//! checked per-container limits the host cgroups are planned from
//! ([`ContainerResources::limits`]), summed the way Kata sizes its VMs,
//! and checked against the most the VM can grow to.

use serde::{Deserialize, Serialize};
use vc_cgroups_host::Error;
use vc_cgroups_host::plan::{ContainerResources, ContainerState, CpuList};

const MIB: u64 = 1 << 20;

/// The VM's size before any container counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmBaseSize {
    /// vCPUs for the guest kernel, the agent and unconstrained containers.
    pub default_vcpus: u32,
    /// Memory for the guest kernel, the agent and unconstrained containers.
    pub default_memory_mib: u64,
    /// Upper bound on vCPUs (e.g. the hypervisor's maximum or the host's
    /// CPU count); `None` for no bound.
    pub max_vcpus: Option<u32>,
    /// Upper bound on memory, MiB; `None` for no bound.
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
}

impl VmBaseSize {
    /// Checks that the VM can grow to `size`: more vCPUs or memory than
    /// the maxima is [`crate::Error::ResourcesAboveMax`].
    pub fn check(&self, size: VmSize) -> Result<(), crate::Error> {
        if let Some(max) = self.max_vcpus
            && size.vcpus > max
        {
            return Err(crate::Error::ResourcesAboveMax {
                resource: "vCPUs",
                requested: u64::from(size.vcpus),
                max: u64::from(max),
            });
        }
        if let Some(max) = self.max_memory_mib
            && size.memory_mib > max
        {
            return Err(crate::Error::ResourcesAboveMax {
                resource: "MiB of memory",
                requested: size.memory_mib,
                max,
            });
        }
        Ok(())
    }
}

/// vCPUs and memory for the sandbox's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// Sizes the VM for the active containers, as Kata does:
/// - vCPUs: `ceil(Σ quota/period)` over the containers with a CPU quota, or,
///   when none has one, the number of CPUs in the union of their cpusets;
///   plus `default_vcpus` (not capped: [`VmBaseSize::check`] says whether
///   the VM can have it).
/// - memory: the sum of the containers' memory limits (rounded up to MiB),
///   plus `default_memory_mib`.
///
/// Stopped containers do not count; unlimited ones add nothing beyond the
/// defaults.
pub fn vm_size(containers: &[ContainerResources], base: &VmBaseSize) -> Result<VmSize, Error> {
    let mut quota_cpus = 0.0f64;
    let mut any_quota = false;
    let mut cpuset = CpuList::new();
    let mut memory_bytes: u64 = 0;
    for c in containers {
        // Check every container, whatever its state.
        let limits = c.limits()?;
        if c.state == ContainerState::Stopped {
            continue;
        }
        if let Some((q, p)) = limits.cpu_quota {
            any_quota = true;
            quota_cpus += q as f64 / p as f64;
        }
        if let Some(set) = limits.cpus {
            cpuset.extend(&set);
        }
        memory_bytes = memory_bytes.saturating_add(limits.memory_bytes.unwrap_or(0));
    }
    let container_vcpus = if any_quota {
        // Tolerate float noise: 0.5 + 0.5 must be 1, not 2.
        (quota_cpus - 1e-9).ceil().max(0.0) as u32
    } else {
        u32::try_from(cpuset.len()).unwrap_or(u32::MAX)
    };
    Ok(VmSize {
        vcpus: base.default_vcpus.saturating_add(container_vcpus),
        memory_mib: base
            .default_memory_mib
            .saturating_add(memory_bytes.div_ceil(MIB)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use vc_cgroups_host::testing::container_resources as container;

    const BASE: VmBaseSize = VmBaseSize {
        default_vcpus: 1,
        default_memory_mib: 256,
        max_vcpus: None,
        max_memory_mib: None,
    };

    #[test]
    fn quotas_round_up_and_add_to_the_default() {
        let s = vm_size(
            &[
                container("a", Some(50_000), None, None, None),
                container("b", Some(100_000), None, None, None),
            ],
            &BASE,
        )
        .unwrap();
        assert_eq!(s.vcpus, 1 + 2);
        let exact = vm_size(
            &[
                container("a", Some(50_000), None, None, None),
                container("b", Some(25_000), Some(50_000), None, None),
            ],
            &BASE,
        )
        .unwrap();
        assert_eq!(exact.vcpus, 1 + 1);
    }

    #[test]
    fn cpuset_counts_only_without_any_quota() {
        let pinned = [
            container("a", None, None, Some("0-3"), None),
            container("b", None, None, Some("2-5"), None),
        ];
        assert_eq!(vm_size(&pinned, &BASE).unwrap().vcpus, 1 + 6);
        let mixed = [
            container("a", Some(100_000), None, Some("0-3"), None),
            container("b", None, None, Some("4-7"), None),
        ];
        assert_eq!(vm_size(&mixed, &BASE).unwrap().vcpus, 1 + 1);
    }

    #[test]
    fn memory_sums_limits_in_mib() {
        let s = vm_size(
            &[
                container("a", None, None, None, Some(512 << 20)),
                container("b", None, None, None, Some((100 << 20) + 1)),
                container("c", None, None, None, Some(-1)),
            ],
            &BASE,
        )
        .unwrap();
        assert_eq!(s.memory_mib, 256 + 512 + 101);
    }

    #[test]
    fn stopped_containers_do_not_count_and_the_maxima_are_checked() {
        let mut stopped = container("s", Some(400_000), None, None, Some(1 << 30));
        stopped.state = ContainerState::Stopped;
        let s = vm_size(&[stopped], &BASE).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        let bounded = VmBaseSize {
            max_vcpus: Some(2),
            max_memory_mib: Some(512),
            ..BASE
        };
        let big = container("a", Some(800_000), None, None, Some(1 << 30));
        let size = vm_size(&[big], &bounded).unwrap();
        assert_eq!(size.vcpus, 1 + 8, "not capped: checked");
        assert!(matches!(
            bounded.check(size),
            Err(crate::Error::ResourcesAboveMax {
                resource: "vCPUs",
                requested: 9,
                max: 2
            })
        ));
        assert!(matches!(
            bounded.check(VmSize {
                vcpus: 2,
                memory_mib: 513
            }),
            Err(crate::Error::ResourcesAboveMax {
                requested: 513,
                max: 512,
                ..
            })
        ));
        bounded
            .check(VmSize {
                vcpus: 2,
                memory_mib: 512,
            })
            .unwrap();
    }

    #[test]
    fn no_containers_is_the_default_size() {
        assert_eq!(
            vm_size(&[], &BASE).unwrap(),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn invalid_input_is_an_error() {
        assert!(matches!(
            vm_size(&[container("a", Some(-7), None, None, None)], &BASE),
            Err(Error::InvalidCpuQuota { .. })
        ));
        assert!(matches!(
            vm_size(&[container("a", None, None, Some("x"), None)], &BASE),
            Err(Error::InvalidCpuList { .. })
        ));
    }
}
