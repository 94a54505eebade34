//! Planning a sandbox: the configuration checked and turned, before
//! anything on the host changes, into everything the steps of
//! [`crate::create_sandbox`] carry out.
//!
//! Like Firecracker's `vmm_config/` beside its builder: this module
//! reads the host only to check it (files exist, where the cgroup mounts
//! and `virtiofsd` are) and changes nothing; every configuration error,
//! typed by the layer that knows the rule (a hypervisor `ConfigError`, a
//! cgroup planner error, an id rule), comes back from here.

mod resources;
mod vm;
mod vm_size;

use std::path::PathBuf;

use vc_agent_client::protocol::convert;
use vc_cgroups_host::plan::{
    CgroupDriver, CgroupLocation, CgroupVersion, ContainerResources, SandboxCgroupConfig,
};
use vc_cgroups_host::{CgroupPlan, CgroupRoots};
use vc_hypervisor::HypervisorConfig;
use vc_types::SandboxId;

pub use resources::{container_resources, resources_of};
pub use vm_size::{VmBaseSize, VmSize, vm_size};

use crate::boot::{BootAdmission, BootBudget};
use crate::config::{CgroupHierarchy, CgroupsConfig, ContainerConfig, SandboxConfig};
use crate::error::Error;
use crate::fs_share::{self, ShareChoice};
use crate::state::PersistedSettings;

/// Everything `create_sandbox` does, worked out and checked.
#[derive(Debug, Clone)]
pub struct SandboxPlan {
    /// The sandbox id.
    pub id: SandboxId,
    /// `<state_root>/<id>`: state, lock and the resource owners' records.
    pub state_dir: PathBuf,
    /// `<runtime_root>/<id>`: the VM's sockets and logs.
    pub runtime_dir: PathBuf,
    /// `<shared_root>/<id>`: the host side of the filesystem share.
    pub shared_dir: PathBuf,
    /// The filesystem share, and why it was chosen.
    pub share: ShareChoice,
    /// The VM, sized for the containers, its config validated.
    pub vm: HypervisorConfig,
    /// The VM's size before any container counts (for re-sizing later).
    pub vm_base: VmBaseSize,
    /// The host cgroups, when managed.
    pub cgroups: Option<CgroupsPlan>,
    /// The guest's hostname.
    pub hostname: String,
    /// The containers created with the sandbox, checked.
    pub containers: Vec<ContainerPlan>,
    /// What another process needs to drive the sandbox.
    pub settings: PersistedSettings,
    /// How the boot is admitted and waited for.
    pub boot: BootPlan,
    /// The network.
    pub network: crate::network::NetworkPlan,
}

/// How the VM's boot is admitted and waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// How many boots at once.
    pub admission: BootAdmission,
    /// How long to wait for a slot.
    pub admission_timeout: std::time::Duration,
    /// Whose slots: the runtime root's.
    pub slot_scope: String,
    /// How long the guest is waited for.
    pub budget: BootBudget,
}

/// The sandbox's host cgroups: the planner's input and its first plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupsPlan {
    /// The planner's configuration (re-planned as containers change).
    pub config: SandboxCgroupConfig,
    /// The mounts written.
    pub roots: CgroupRoots,
    /// The plan for the containers created with the sandbox.
    pub plan: CgroupPlan,
}

/// One container created with the sandbox.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Its configuration, checked.
    pub config: ContainerConfig,
    /// Its resources as the cgroup planner and VM sizing see them.
    pub resources: ContainerResources,
}

/// Checks `config` and plans the sandbox, changing nothing on the host.
///
/// Reads the host only where a rule depends on it: that the kernel, initrd
/// and bundles exist, where `virtiofsd` and the cgroup mounts are (unless
/// the configuration says), which VMM device nodes `/dev` has.
pub fn plan_sandbox(config: &SandboxConfig) -> Result<SandboxPlan, Error> {
    let id = config.id.clone();
    let state_dir = config.paths.state_root.join(id.as_str());
    let network = crate::network::plan_network(&config.network, &state_dir)?;
    let containers = plan_containers(config)?;
    let resources: Vec<ContainerResources> =
        containers.iter().map(|c| c.resources.clone()).collect();
    let hostname = plan_hostname(config)?;
    let share = fs_share::resolve(&config.fs_share)?;
    let runtime_dir = config.paths.runtime_root.join(id.as_str());
    let shared_dir = config.paths.shared_root.join(id.as_str());
    let vm_base = vm::base_size(&config.vm)?;
    let size = vm_size(&resources, &vm_base).map_err(cgroups_config)?;
    vm_base.check(size)?;
    let share_device = fs_share::new_share(
        &share.kind,
        shared_dir.clone(),
        &runtime_dir,
        config.lifetime.into(),
        slog::Logger::root(slog::Discard, slog::o!()),
    );
    let mut vm = vm::hypervisor_config(config, &runtime_dir, size, share_device.as_ref())?;
    let cgroups = match &config.cgroups {
        Some(cg) => Some(plan_cgroups(
            &id,
            cg,
            &resources,
            config.vm.default_memory_mib,
        )?),
        None => None,
    };
    if let Some(procs) = cgroups.as_ref().and_then(vmm_memory_cgroup) {
        vm.spawn_cgroups.push(procs);
    }
    let settings = PersistedSettings {
        paths: config.paths.clone(),
        agent: config.agent,
        share: share.kind.clone(),
        cgroups: config.cgroups.clone(),
        vm_base,
        stop_timeout: config.vm.stop_timeout,
        resize_timeout: config.vm.resize_timeout,
        lock_timeout: config.lock_timeout,
        lifetime: config.lifetime,
    };
    Ok(SandboxPlan {
        state_dir,
        network,
        settings,
        boot: BootPlan {
            admission: config.vm.boot_admission,
            admission_timeout: config.vm.admission_timeout,
            slot_scope: config.paths.runtime_root.to_string_lossy().into_owned(),
            budget: BootBudget {
                cpu: config.vm.boot_cpu_budget,
                wall: config.vm.start_timeout,
            },
        },
        id,
        runtime_dir,
        shared_dir,
        share,
        vm,
        vm_base,
        cgroups,
        hostname,
        containers,
    })
}

fn cgroups_config(source: vc_cgroups_host::Error) -> Error {
    Error::InvalidCgroupsConfig { source }
}

fn plan_containers(config: &SandboxConfig) -> Result<Vec<ContainerPlan>, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut plans = Vec::with_capacity(config.containers.len());
    for c in &config.containers {
        if !seen.insert(c.id.clone()) {
            return Err(Error::ContainerExists {
                sandbox: config.id.clone(),
                container: c.id.clone(),
            });
        }
        plans.push(plan_container(c)?);
    }
    Ok(plans)
}

/// Checks one container: its bundle, and that its spec reaches the guest
/// whole (a spec the agent protocol cannot carry fails here, not after
/// the VM booted).
pub(crate) fn plan_container(c: &ContainerConfig) -> Result<ContainerPlan, Error> {
    c.validate()?;
    convert::spec_to_proto(&c.spec).map_err(|e| Error::InvalidSpec {
        container: c.id.clone(),
        reason: e.to_string(),
    })?;
    if let Some(path) = c
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    {
        crate::container_spec::guest_cgroups_path(&c.id, &path.to_string_lossy())?;
    }
    Ok(ContainerPlan {
        config: c.clone(),
        resources: resources_of(&c.id, &c.spec, false),
    })
}

/// The `cgroup.procs` of the sandbox's memory cgroup, when the plan puts
/// the VMM's memory there apart from the VMM itself (cgroup v1 with
/// `charge_guest_memory_to_pod`): the VMM is spawned in it, since memory
/// stays charged where it was touched when a process moves later.
fn vmm_memory_cgroup(cgroups: &CgroupsPlan) -> Option<PathBuf> {
    use vc_cgroups_host::plan::CgroupRole;
    let placement = cgroups.plan.placement;
    if placement.vmm_memory() != CgroupRole::Sandbox || placement.vmm == CgroupRole::Sandbox {
        return None;
    }
    let mount = cgroups.roots.v1.get("memory")?;
    Some(
        mount
            .join(cgroups.plan.sandbox.path.relative())
            .join("cgroup.procs"),
    )
}

fn plan_hostname(config: &SandboxConfig) -> Result<String, Error> {
    match &config.hostname {
        None => Ok(config.id.to_string()),
        Some(h) if h.is_empty() || h.len() > 64 || h.contains(['/', '\0', ' ']) => {
            Err(Error::InvalidHostname {
                hostname: h.clone(),
            })
        }
        Some(h) => Ok(h.clone()),
    }
}

/// The cgroup planner's input for `config`, checked by planning it for the
/// containers created with the sandbox.
fn plan_cgroups(
    id: &SandboxId,
    config: &CgroupsConfig,
    containers: &[ContainerResources],
    default_memory_mib: u64,
) -> Result<CgroupsPlan, Error> {
    if config.driver == CgroupDriver::Systemd {
        return Err(vc_cgroups_host::systemd_unsupported().into());
    }
    let (roots, version) = match &config.hierarchy {
        CgroupHierarchy::Discover => {
            let roots = CgroupRoots::discover().map_err(cgroups_config)?;
            let version = roots.preferred_version();
            (roots, version)
        }
        CgroupHierarchy::At { roots, version } => (roots.clone(), *version),
    };
    let mut planner = SandboxCgroupConfig::new(id.clone(), config.driver, version);
    if let Some(path) = &config.cgroups_path {
        planner.location = CgroupLocation::CgroupsPath(path.clone());
    }
    planner.sandbox_cgroup_only = config.sandbox_cgroup_only;
    planner.overhead = config.overhead;
    if config.charge_guest_memory_to_pod {
        planner.vmm_memory_in_sandbox = true;
        // The guest's own memory is charged too: the pod's limit (when
        // every container has one) must leave it room.
        planner.overhead.memory_bytes = planner
            .overhead
            .memory_bytes
            .saturating_add(default_memory_mib << 20);
    }
    planner.vmm_devices = vc_cgroups_host::host_devices::discover_vmm_devices(&config.dev_dir);
    let plan = vc_cgroups_host::plan(&planner, containers).map_err(cgroups_config)?;
    if version == CgroupVersion::V2 && roots.v2.is_none()
        || version == CgroupVersion::V1 && roots.v1.iter().next().is_none()
    {
        return Err(Error::InvalidCgroupsConfig {
            source: vc_cgroups_host::Error::CgroupfsMissing {
                path: PathBuf::from(format!("<cgroup {version:?} mount>")),
                source: std::io::ErrorKind::NotFound.into(),
            },
        });
    }
    Ok(CgroupsPlan {
        config: planner,
        roots,
        plan,
    })
}
