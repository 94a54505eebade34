//! Host cgroup partitioning for VM sandboxes.
//!
//! A sandbox gets two cgroups on the host (see the design's "Host cgroups"):
//!
//! - the **sandbox cgroup**, under the parent its OCI `linux.cgroupsPath`
//!   names (or [`plan::DEFAULT_PARENT`]), carrying the sum of its
//!   containers' resources;
//! - the **overhead cgroup**, unless `sandbox_cgroup_only`, under
//!   [`plan::DEFAULT_OVERHEAD_PARENT`] and unconstrained: the VMM's
//!   non-vCPU threads and helper processes run there, unaccounted to the
//!   pod.
//!
//! The crate is split in two:
//!
//! - [`plan`](mod@plan): a pure planner — sandbox configuration and container
//!   resources in, a [`CgroupPlan`] out (paths, constraint values for
//!   cgroup v1 or v2, device allowlist, placement of each process and
//!   thread class). [`plan::ContainerResources::limits`] gives the checked
//!   per-container limits that VM sizing (in `virtcontainers`) starts from. No I/O; exhaustively unit-tested.
//! - [`apply`]: the applier, which executes a plan on a real cgroupfs
//!   through `cgroups-rs` ([`CgroupfsV1`], [`CgroupfsV2`]) and removes
//!   everything it made. It is built by [`HostCgroups::new`] from explicit
//!   mount points.
//!
//! Supported: the cgroupfs driver on v1 (tested on this project's CI hosts'
//! real v1 hierarchy) and on v2 (threaded cgroups for the vCPU split, the
//! device allowlist as an eBPF program, [`device_filter`]; tested on a
//! real cgroup2 hierarchy with every controller inside a guest VM, and on
//! the hosts' controller-less cgroup2 mount). The systemd driver's
//! `slice:prefix:name` paths are parsed and planned; applying them needs
//! systemd's D-Bus API and returns [`Error::Unsupported`] for now.
//!
//! # Example
//!
//! Plan a sandbox for two containers, 1.5 CPUs in total:
//!
//! ```
//! use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};
//! use vc_cgroups_host::plan::{
//!     CgroupDriver, CgroupVersion, ContainerResources, FileValue, SandboxCgroupConfig, plan,
//! };
//!
//! let container = |id: &str, quota: i64| {
//!     let cpu = LinuxCpuBuilder::default().quota(quota).period(100_000u64).build().unwrap();
//!     ContainerResources::new(id, LinuxResourcesBuilder::default().cpu(cpu).build().unwrap())
//! };
//! let id = "sandbox1".parse()?;
//! let config = SandboxCgroupConfig::new(id, CgroupDriver::Cgroupfs, CgroupVersion::V2);
//! let plan = plan(&config, &[container("a", 100_000), container("b", 50_000)])?;
//!
//! assert_eq!(plan.sandbox.path.as_str(), "/virtcontainers/sandbox1");
//! // On v2 the vCPU threads get a threaded child carrying the CPU limit.
//! let vcpus = plan.vcpus.as_ref().unwrap();
//! let cpu_max = vcpus
//!     .settings
//!     .iter()
//!     .flat_map(|s| s.files(plan.version))
//!     .find(|(file, _)| *file == "cpu.max");
//! assert_eq!(cpu_max, Some(("cpu.max", FileValue::Text("150000 100000".into()))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Apply it (as root, on the host's real hierarchy) and tear it down:
//!
//! ```no_run
//! use vc_cgroups_host::plan::{CgroupDriver, SandboxCgroupConfig, plan};
//! use vc_cgroups_host::{CgroupManager, CgroupRoots, HostCgroups, SandboxTasks};
//!
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let roots = CgroupRoots::discover()?;
//! let version = roots.preferred_version();
//! let config = SandboxCgroupConfig::new("sandbox1".parse()?, CgroupDriver::Cgroupfs, version);
//! let plan = plan(&config, &[])?;
//! let mut cgroups = HostCgroups::new(CgroupDriver::Cgroupfs, version, &roots, logger)?;
//! let vmm_pid = 4242; // the VMM, started after the cgroups exist
//! cgroups.apply(&plan, &SandboxTasks::default())?;
//! cgroups.update(&plan, &SandboxTasks { vmm: Some(vmm_pid), ..Default::default() })?;
//! cgroups.delete()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod apply;
pub mod device_filter;
mod error;
pub mod host_devices;
pub mod plan;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use apply::{
    CgroupManager, CgroupRoots, CgroupfsV1, CgroupfsV2, CgroupsState, HostCgroups, Journal,
    JournalError, SandboxTasks, SystemdCgroups, V1Mounts, systemd_unsupported, thread_cgroup,
};
pub use error::{CpuListError, Error, PathError, Result, SystemdPathError};
pub use plan::{CgroupPlan, plan};
