//! The pure planner: from a sandbox's configuration and its containers'
//! resources to the cgroups to create, their constraints, and where each
//! process and thread goes. No I/O.

mod cpu_list;
mod devices;
mod path;
mod resources;
mod settings;

use serde::{Deserialize, Serialize};

pub use cpu_list::{CpuList, MAX_CPU_INDEX};
pub use devices::{
    BASIC_DEVICES, DeviceAccess, DeviceKind, DeviceRule, HostDevice, RUNTIME_DEVICES, allowlist,
    permits,
};
pub use path::{CgroupPath, DEFAULT_SYSTEMD_SLICE, SystemdCgroupPath};
pub use resources::{
    CPU_SHARES_RANGE, ContainerLimits, ContainerResources, ContainerState, CpuQuota,
    DEFAULT_CPU_PERIOD_US, MAX_CPU_PERIOD_US, MIN_CPU_PERIOD_US, MIN_CPU_QUOTA_US, Overhead,
    SandboxResources, aggregate,
};
pub use settings::{
    CgroupVersion, DEFAULT_CPU_SHARES, DEFAULT_CPU_WEIGHT, FileValue, Setting, shares_to_weight,
};

use crate::error::Error;
use vc_types::SandboxId;

/// Parent of sandbox cgroups when the sandbox has no OCI `cgroupsPath`
/// (cgroupfs drivers).
pub const DEFAULT_PARENT: &str = "/virtcontainers";
/// Parent of overhead cgroups (cgroupfs drivers). Deliberately outside any
/// pod's cgroup, so the VMM's overhead is not charged to the pod.
pub const DEFAULT_OVERHEAD_PARENT: &str = "/virtcontainers_overhead";
/// Parent slice of sandbox scopes when the sandbox has no OCI `cgroupsPath`
/// (systemd driver).
pub const DEFAULT_SYSTEMD_PARENT: &str = "virtcontainers.slice";
/// Parent slice of overhead scopes (systemd driver).
pub const DEFAULT_SYSTEMD_OVERHEAD_PARENT: &str = "virtcontainers_overhead.slice";
/// Prefix of the scopes the systemd driver names after a sandbox.
pub const SYSTEMD_SCOPE_PREFIX: &str = "vc";
/// Name of the threaded child that holds the vCPU threads on cgroup v2.
pub const VCPU_CGROUP_NAME: &str = "vcpus";

/// Who manages the cgroup tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CgroupDriver {
    /// We write cgroupfs directly.
    Cgroupfs,
    /// systemd owns the tree; paths are `slice:prefix:name`. Planned here;
    /// applying needs systemd's D-Bus API, which the applier does not
    /// implement yet ([`crate::Error::Unsupported`]).
    Systemd,
}

/// Where the sandbox cgroup goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupLocation {
    /// The sandbox's OCI `linux.cgroupsPath`, which names the sandbox cgroup
    /// itself (as runc and Kata read it), in the driver's syntax: a cgroupfs
    /// path, or `slice:prefix:name` for systemd.
    CgroupsPath(String),
    /// The sandbox has no `cgroupsPath`: its cgroup is created under this
    /// parent (a cgroupfs path, or a slice for systemd), named after the
    /// sandbox id (`vc-<id>.scope` for systemd).
    Parent(String),
}

/// Which planned cgroup something goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CgroupRole {
    /// The sandbox cgroup.
    Sandbox,
    /// The threaded child of the sandbox cgroup holding the vCPU threads
    /// (cgroup v2 without `sandbox_cgroup_only`).
    Vcpus,
    /// The overhead cgroup.
    Overhead,
}

/// Where each class of process and thread is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The runtime's own process (the embedder calling this SDK); `None`
    /// leaves it where it is.
    pub runtime: Option<CgroupRole>,
    /// The VMM process with all its threads (before vCPU threads are split
    /// off).
    pub vmm: CgroupRole,
    /// The VMM's vCPU threads.
    pub vcpu_threads: CgroupRole,
    /// Helper processes (virtiofsd, ...).
    pub helpers: CgroupRole,
    /// Where the VMM's memory is charged, when not where the VMM is: a
    /// cgroup v1 memory controller placement of its own (see
    /// [`SandboxCgroupConfig::vmm_memory_in_sandbox`]).
    #[serde(default)]
    pub vmm_memory: Option<CgroupRole>,
}

impl Placement {
    /// The cgroup the VMM's memory is charged to.
    pub fn vmm_memory(&self) -> CgroupRole {
        self.vmm_memory.unwrap_or(self.vmm)
    }
}

/// One cgroup of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCgroup {
    /// Its path inside the hierarchy.
    pub path: CgroupPath,
    /// Whether it is a cgroup v2 threaded cgroup.
    pub threaded: bool,
    /// The constraints written to it, in order.
    pub settings: Vec<Setting>,
}

/// Everything the applier needs, and nothing it has to work out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// The sandbox id.
    pub sandbox_id: SandboxId,
    /// Who manages the tree.
    pub driver: CgroupDriver,
    /// Which hierarchy the settings are written for.
    pub version: CgroupVersion,
    /// The sandbox cgroup: always planned.
    pub sandbox: PlannedCgroup,
    /// The vCPU threads' threaded cgroup (cgroup v2 without
    /// `sandbox_cgroup_only`).
    pub vcpus: Option<PlannedCgroup>,
    /// The overhead cgroup (without `sandbox_cgroup_only`); never constrained.
    pub overhead: Option<PlannedCgroup>,
    /// The aggregated resources the settings were derived from.
    pub resources: SandboxResources,
    /// The sandbox cgroup's device rules (an allowlist: everything else is
    /// denied). Enforced through the v1 `devices` controller, and on
    /// cgroup v2 by the eBPF program [`crate::device_filter`] generates
    /// from them.
    pub devices: Vec<DeviceRule>,
    /// Where processes and threads go.
    pub placement: Placement,
}

impl CgroupPlan {
    /// The planned cgroup with the given role, if planned.
    pub fn cgroup(&self, role: CgroupRole) -> Option<&PlannedCgroup> {
        match role {
            CgroupRole::Sandbox => Some(&self.sandbox),
            CgroupRole::Vcpus => self.vcpus.as_ref(),
            CgroupRole::Overhead => self.overhead.as_ref(),
        }
    }

    /// The planned cgroups with their roles, parents before children.
    pub fn cgroups(&self) -> Vec<(CgroupRole, &PlannedCgroup)> {
        [CgroupRole::Sandbox, CgroupRole::Vcpus, CgroupRole::Overhead]
            .into_iter()
            .filter_map(|role| self.cgroup(role).map(|c| (role, c)))
            .collect()
    }
}

/// The sandbox's static cgroup configuration: the planner's inputs other
/// than the containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCgroupConfig {
    /// The sandbox id; it names cgroups (valid by construction).
    pub sandbox_id: SandboxId,
    /// Where the sandbox cgroup goes.
    pub location: CgroupLocation,
    /// Parent of the overhead cgroup (a cgroupfs path, or a slice for
    /// systemd).
    pub overhead_parent: String,
    /// Who manages the tree.
    pub driver: CgroupDriver,
    /// The hierarchy version.
    pub version: CgroupVersion,
    /// Put every sandbox process and thread, the runtime's own included, in
    /// the sandbox cgroup, and create no overhead cgroup.
    pub sandbox_cgroup_only: bool,
    /// Headroom added to the summed memory and pids limits.
    pub overhead: Overhead,
    /// The VMM's device nodes present on this host
    /// ([`crate::host_devices::discover_vmm_devices`]).
    pub vmm_devices: Vec<HostDevice>,
    /// Charge the VMM's memory (guest RAM, mostly) to the sandbox cgroup
    /// while its threads other than the vCPUs stay in the overhead
    /// cgroup. A process's memory is charged to the memory cgroup of the
    /// process (its thread group leader, the mm owner), never to where
    /// the threads touching it are: so without this, on cgroup v1, guest
    /// RAM is overhead and a pod's memory limit does not bind its VM.
    /// cgroup v1 gives the memory controller a hierarchy of its own, so
    /// the VMM is placed there separately; on cgroup v2 (one hierarchy)
    /// and with `sandbox_cgroup_only` the VMM is in the sandbox cgroup
    /// anyway, and this changes nothing.
    #[serde(default)]
    pub vmm_memory_in_sandbox: bool,
}

impl SandboxCgroupConfig {
    /// A configuration with the default parents for `driver`, no
    /// `cgroupsPath`, default overhead and no VMM devices.
    pub fn new(sandbox_id: SandboxId, driver: CgroupDriver, version: CgroupVersion) -> Self {
        let (parent, overhead_parent) = match driver {
            CgroupDriver::Cgroupfs => (DEFAULT_PARENT, DEFAULT_OVERHEAD_PARENT),
            CgroupDriver::Systemd => (DEFAULT_SYSTEMD_PARENT, DEFAULT_SYSTEMD_OVERHEAD_PARENT),
        };
        SandboxCgroupConfig {
            sandbox_id,
            location: CgroupLocation::Parent(parent.to_owned()),
            overhead_parent: overhead_parent.to_owned(),
            driver,
            version,
            sandbox_cgroup_only: false,
            overhead: Overhead::default(),
            vmm_devices: Vec::new(),
            vmm_memory_in_sandbox: false,
        }
    }
}

/// Plans the sandbox's host cgroups for its containers.
///
/// Call it again with the new container list when a container joins,
/// leaves or is updated, and hand the new plan to
/// [`crate::CgroupManager::update`].
pub fn plan(
    config: &SandboxCgroupConfig,
    containers: &[ContainerResources],
) -> Result<CgroupPlan, Error> {
    let id = &config.sandbox_id;
    let sandbox_path = resolve_sandbox_path(config)?;
    if sandbox_path.is_root() {
        return Err(Error::InvalidCgroupPath {
            path: sandbox_path.to_string(),
            reason: crate::error::PathError::IsRoot,
        });
    }
    let overhead_path = if config.sandbox_cgroup_only {
        None
    } else {
        Some(resolve_under_parent(
            config.driver,
            &config.overhead_parent,
            id,
        )?)
    };

    let resources = aggregate(containers, config.overhead)?;
    let devices = allowlist(&config.vmm_devices, containers, config.sandbox_cgroup_only)?;

    let cpu = settings::cpu_settings(&resources);
    let mem_pids = settings::memory_and_pids_settings(&resources);
    let split_threads_v2 = config.version == CgroupVersion::V2 && !config.sandbox_cgroup_only;

    let (sandbox_settings, vcpus) = if split_threads_v2 {
        // One process's threads can only be split inside one threaded
        // subtree: the VMM lives in the sandbox cgroup (a domain cgroup,
        // which becomes "domain threaded"), its vCPU threads in a threaded
        // child carrying the CPU constraints. Memory is a domain controller
        // and stays on the sandbox cgroup.
        let vcpus = PlannedCgroup {
            path: sandbox_path.join(VCPU_CGROUP_NAME)?,
            threaded: true,
            settings: cpu,
        };
        (mem_pids, Some(vcpus))
    } else {
        (cpu.into_iter().chain(mem_pids).collect(), None)
    };

    let placement = if config.sandbox_cgroup_only {
        Placement {
            runtime: Some(CgroupRole::Sandbox),
            vmm: CgroupRole::Sandbox,
            vcpu_threads: CgroupRole::Sandbox,
            helpers: CgroupRole::Sandbox,
            vmm_memory: None,
        }
    } else if split_threads_v2 {
        Placement {
            runtime: None,
            vmm: CgroupRole::Sandbox,
            vcpu_threads: CgroupRole::Vcpus,
            helpers: CgroupRole::Overhead,
            vmm_memory: None,
        }
    } else {
        Placement {
            runtime: None,
            vmm: CgroupRole::Overhead,
            vcpu_threads: CgroupRole::Sandbox,
            helpers: CgroupRole::Overhead,
            vmm_memory: config.vmm_memory_in_sandbox.then_some(CgroupRole::Sandbox),
        }
    };

    Ok(CgroupPlan {
        sandbox_id: id.clone(),
        driver: config.driver,
        version: config.version,
        sandbox: PlannedCgroup {
            path: sandbox_path,
            threaded: false,
            settings: sandbox_settings,
        },
        vcpus,
        overhead: overhead_path.map(|path| PlannedCgroup {
            path,
            threaded: false,
            settings: Vec::new(),
        }),
        resources,
        devices,
        placement,
    })
}

fn resolve_sandbox_path(config: &SandboxCgroupConfig) -> Result<CgroupPath, Error> {
    match (&config.location, config.driver) {
        (CgroupLocation::CgroupsPath(p), CgroupDriver::Cgroupfs) => CgroupPath::parse(p),
        (CgroupLocation::CgroupsPath(p), CgroupDriver::Systemd) => {
            Ok(SystemdCgroupPath::parse(p)?.cgroup_path().clone())
        }
        (CgroupLocation::Parent(parent), driver) => {
            resolve_under_parent(driver, parent, &config.sandbox_id)
        }
    }
}

fn resolve_under_parent(driver: CgroupDriver, parent: &str, id: &str) -> Result<CgroupPath, Error> {
    match driver {
        CgroupDriver::Cgroupfs => CgroupPath::parse(parent)?.join(id),
        CgroupDriver::Systemd => Ok(SystemdCgroupPath::parse(&format!(
            "{parent}:{SYSTEMD_SCOPE_PREFIX}:{id}"
        ))?
        .cgroup_path()
        .clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PathError;
    use resources::tests::container;

    fn config(version: CgroupVersion, only: bool) -> SandboxCgroupConfig {
        SandboxCgroupConfig {
            sandbox_cgroup_only: only,
            ..SandboxCgroupConfig::new("sb1".parse().unwrap(), CgroupDriver::Cgroupfs, version)
        }
    }

    #[test]
    fn default_paths_for_cgroupfs() {
        let p = plan(&config(CgroupVersion::V1, false), &[]).unwrap();
        assert_eq!(p.sandbox.path.as_str(), "/virtcontainers/sb1");
        assert_eq!(
            p.overhead.as_ref().unwrap().path.as_str(),
            "/virtcontainers_overhead/sb1"
        );
        assert!(p.overhead.as_ref().unwrap().settings.is_empty());
        assert_eq!(p.vcpus, None);
    }

    #[test]
    fn oci_cgroups_path_names_the_sandbox_cgroup() {
        let mut c = config(CgroupVersion::V1, false);
        c.location = CgroupLocation::CgroupsPath("/kubepods/burstable/pod12/sb1".into());
        let p = plan(&c, &[]).unwrap();
        assert_eq!(p.sandbox.path.as_str(), "/kubepods/burstable/pod12/sb1");
        // The overhead stays outside the pod, unaccounted to it.
        assert_eq!(
            p.overhead.unwrap().path.as_str(),
            "/virtcontainers_overhead/sb1"
        );
    }

    #[test]
    fn systemd_driver_plans_scopes() {
        let mut c = SandboxCgroupConfig::new(
            "sb1".parse().unwrap(),
            CgroupDriver::Systemd,
            CgroupVersion::V2,
        );
        let p = plan(&c, &[]).unwrap();
        assert_eq!(
            p.sandbox.path.as_str(),
            "/virtcontainers.slice/vc-sb1.scope"
        );
        assert_eq!(
            p.overhead.unwrap().path.as_str(),
            "/virtcontainers_overhead.slice/vc-sb1.scope"
        );
        c.location =
            CgroupLocation::CgroupsPath("kubepods-besteffort-pod9.slice:cri-containerd:sb1".into());
        let p = plan(&c, &[]).unwrap();
        assert_eq!(
            p.sandbox.path.as_str(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/cri-containerd-sb1.scope"
        );
        c.location = CgroupLocation::CgroupsPath("/not/systemd".into());
        assert!(matches!(
            plan(&c, &[]),
            Err(Error::InvalidSystemdPath { .. })
        ));
    }

    #[test]
    fn placement_follows_sandbox_cgroup_only() {
        let only = plan(&config(CgroupVersion::V1, true), &[]).unwrap();
        assert_eq!(only.overhead, None);
        assert_eq!(only.vcpus, None);
        assert_eq!(
            only.placement,
            Placement {
                runtime: Some(CgroupRole::Sandbox),
                vmm: CgroupRole::Sandbox,
                vcpu_threads: CgroupRole::Sandbox,
                helpers: CgroupRole::Sandbox,
                vmm_memory: None,
            }
        );
        let split = plan(&config(CgroupVersion::V1, false), &[]).unwrap();
        assert_eq!(
            split.placement,
            Placement {
                runtime: None,
                vmm: CgroupRole::Overhead,
                vcpu_threads: CgroupRole::Sandbox,
                helpers: CgroupRole::Overhead,
                vmm_memory: None,
            }
        );
        assert_eq!(split.placement.vmm_memory(), CgroupRole::Overhead);
    }

    #[test]
    fn the_vmms_memory_can_be_charged_to_the_pod() {
        let mut c = config(CgroupVersion::V1, false);
        c.vmm_memory_in_sandbox = true;
        let p = plan(&c, &[]).unwrap().placement;
        assert_eq!(
            (p.vmm, p.vmm_memory()),
            (CgroupRole::Overhead, CgroupRole::Sandbox)
        );
        // v2 and sandbox_cgroup_only have the VMM in the sandbox cgroup.
        for (version, only) in [(CgroupVersion::V2, false), (CgroupVersion::V1, true)] {
            let mut c = config(version, only);
            c.vmm_memory_in_sandbox = true;
            let p = plan(&c, &[]).unwrap().placement;
            assert_eq!((p.vmm, p.vmm_memory), (CgroupRole::Sandbox, None));
        }
        // Plans saved before the field existed read as "with the VMM".
        let mut json = serde_json::to_value(p).unwrap();
        json.as_object_mut().unwrap().remove("vmm_memory");
        let old: Placement = serde_json::from_value(json).unwrap();
        assert_eq!(old.vmm_memory(), old.vmm);
    }

    #[test]
    fn v2_split_uses_a_threaded_vcpu_child_with_the_cpu_settings() {
        let containers = [container(
            "a",
            Some(150_000),
            None,
            Some("0-1"),
            Some(1 << 30),
        )];
        let p = plan(&config(CgroupVersion::V2, false), &containers).unwrap();
        let vcpus = p.vcpus.as_ref().unwrap();
        assert_eq!(vcpus.path.as_str(), "/virtcontainers/sb1/vcpus");
        assert!(vcpus.threaded);
        let controllers = |c: &PlannedCgroup| -> Vec<&str> {
            c.settings.iter().map(Setting::controller).collect()
        };
        assert_eq!(controllers(vcpus), ["cpuset", "cpuset", "cpu", "cpu"]);
        assert_eq!(controllers(&p.sandbox), ["memory", "pids"]);
        assert_eq!(p.placement.vmm, CgroupRole::Sandbox);
        assert_eq!(p.placement.vcpu_threads, CgroupRole::Vcpus);
        assert_eq!(p.placement.helpers, CgroupRole::Overhead);
        assert!(p.overhead.is_some());
        let roles: Vec<CgroupRole> = p.cgroups().into_iter().map(|(r, _)| r).collect();
        assert_eq!(
            roles,
            [CgroupRole::Sandbox, CgroupRole::Vcpus, CgroupRole::Overhead]
        );
    }

    #[test]
    fn v1_settings_carry_the_aggregate() {
        let containers = [
            container("a", Some(100_000), None, Some("0"), Some(256 << 20)),
            container("b", Some(50_000), None, Some("2-3"), Some(256 << 20)),
        ];
        let mut c = config(CgroupVersion::V1, false);
        c.overhead = Overhead {
            memory_bytes: 64 << 20,
            pids: 100,
        };
        let p = plan(&c, &containers).unwrap();
        assert_eq!(
            p.sandbox.settings,
            vec![
                Setting::Cpus(Some("0,2-3".parse().unwrap())),
                Setting::Mems(None),
                Setting::CpuBandwidth {
                    quota: Some(150_000),
                    period: 100_000
                },
                Setting::CpuShares(None),
                Setting::MemoryMax(Some(576 << 20)),
                Setting::PidsMax(None),
            ]
        );
    }

    #[test]
    fn bad_ids_and_paths_are_rejected() {
        // The id is checked where it enters: a config read back from a
        // state file with a bad id does not parse.
        let c = config(CgroupVersion::V1, false);
        let mut json = serde_json::to_value(&c).unwrap();
        for bad in ["../x", "", "a b"] {
            json["sandbox_id"] = serde_json::json!(bad);
            let err = serde_json::from_value::<SandboxCgroupConfig>(json.clone()).unwrap_err();
            assert!(
                err.to_string().contains("invalid sandbox id"),
                "{bad:?}: {err}"
            );
        }
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/a/../../..", PathError::ParentComponent),
            ("/a\0", PathError::NulByte),
            ("/sys/fs/cgroup/cpu/a", PathError::MountPath),
            ("/", PathError::IsRoot),
        ];
        for (bad, why) in cases {
            let mut c = config(CgroupVersion::V1, false);
            c.location = CgroupLocation::CgroupsPath((*bad).into());
            match plan(&c, &[]) {
                Err(Error::InvalidCgroupPath { reason, .. }) => assert_eq!(reason, *why, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
            let mut c = config(CgroupVersion::V1, false);
            c.location = CgroupLocation::Parent((*bad).into());
            if *bad != "/" {
                assert!(plan(&c, &[]).is_err(), "parent {bad:?}");
            }
            let mut c = config(CgroupVersion::V1, false);
            c.overhead_parent = (*bad).into();
            if *bad != "/" {
                assert!(plan(&c, &[]).is_err(), "overhead parent {bad:?}");
            }
        }
    }

    #[test]
    fn devices_are_planned() {
        let mut c = config(CgroupVersion::V1, true);
        c.vmm_devices.push(HostDevice {
            path: "/dev/kvm".into(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 232,
        });
        let p = plan(&c, &[]).unwrap();
        assert!(
            p.devices
                .iter()
                .any(|r| r.allows(DeviceKind::Char, 10, 232))
        );
        assert!(p.devices.iter().any(|r| r.allows(DeviceKind::Block, 7, 1)));
    }

    #[test]
    fn plan_round_trips_through_json() {
        let containers = [container(
            "a",
            Some(150_000),
            None,
            Some("0-1"),
            Some(1 << 30),
        )];
        let p = plan(&config(CgroupVersion::V2, false), &containers).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: CgroupPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
