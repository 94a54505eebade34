//! Partitions a stand-in VMM into a sandbox's host cgroups, shows where
//! every thread landed and what was written, then cleans up.
//!
//! ```text
//! sudo cargo run --example cgroups -- --cpus 1.5 [--sandbox-cgroup-only]
//! ```
//!
//! The stand-in is this program re-executed with four threads named like a
//! VMM's: two vCPU threads (`CPU 0/KVM`, `CPU 1/KVM`) and two others. A
//! real runtime gets the vCPU thread ids from the hypervisor (QMP
//! `query-cpus-fast`); here they are found by name.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};
use slog::{Drain, o};
use vc_cgroups_host::plan::{
    CgroupDriver, CgroupRole, CgroupVersion, ContainerResources, SandboxCgroupConfig,
};
use vc_cgroups_host::{CgroupManager, CgroupRoots, HostCgroups, SandboxTasks};

/// Partition a stand-in VMM as a sandbox with host cgroups.
#[derive(Parser)]
struct Args {
    /// CPUs the sandbox's one container may use (CFS quota / period).
    #[arg(long, default_value_t = 1.5)]
    cpus: f64,
    /// Put every thread, this runtime included, in the sandbox cgroup.
    #[arg(long)]
    sandbox_cgroup_only: bool,
    /// Sandbox id (default: derived from this process id).
    #[arg(long)]
    id: Option<String>,
    /// Internal: run as the stand-in VMM.
    #[arg(long, hide = true)]
    fake_vmm: bool,
}

const VCPU_NAMES: [&str; 2] = ["CPU 0/KVM", "CPU 1/KVM"];
const OTHER_NAMES: [&str; 2] = ["worker", "io-thread"];
const PERIOD_US: u64 = 100_000;

fn main() -> Result<()> {
    let args = Args::parse();
    if args.fake_vmm {
        run_fake_vmm();
    }
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this example writes the host's cgroupfs: run it as root"
    );
    ensure!(args.cpus > 0.0, "--cpus must be positive");

    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = drain.filter_level(slog::Level::Info).fuse();
    let drain = slog_async::Async::new(drain).build().fuse();
    let logger = slog::Logger::root(drain, o!("example" => "cgroups"));

    let roots = CgroupRoots::discover()?;
    let version = roots.preferred_version();
    let id: vc_types::SandboxId = args
        .id
        .clone()
        .unwrap_or_else(|| format!("demo-{}", std::process::id()))
        .parse()?;
    let mut config = SandboxCgroupConfig::new(id.clone(), CgroupDriver::Cgroupfs, version);
    config.sandbox_cgroup_only = args.sandbox_cgroup_only;
    config.vmm_devices = vc_cgroups_host::host_devices::discover_vmm_devices(Path::new("/dev"));

    let quota = (args.cpus * PERIOD_US as f64).round() as i64;
    let cpu = LinuxCpuBuilder::default()
        .quota(quota)
        .period(PERIOD_US)
        .build()?;
    let container = ContainerResources::new(
        "demo-container",
        LinuxResourcesBuilder::default().cpu(cpu).build()?,
    );
    let plan = vc_cgroups_host::plan(&config, &[container])?;

    let vmm = FakeVmm::start()?;
    let vcpus = vmm.threads_named(&VCPU_NAMES)?;
    let tasks = SandboxTasks {
        runtime: Some(std::process::id()),
        vmm: Some(vmm.pid()),
        vcpu_threads: vcpus.clone(),
        helpers: Vec::new(),
    };

    let mut cgroups = HostCgroups::new(CgroupDriver::Cgroupfs, version, &roots, logger)?;
    let shown = cgroups
        .apply(&plan, &tasks)
        .map(|()| show(&plan, &roots, &vmm, &vcpus));
    let deleted = cgroups.delete();
    shown?;
    deleted?;
    let left: Vec<_> = plan
        .cgroups()
        .iter()
        .map(|(_, c)| dir_of(&roots, version, "cpu", c.path.relative()))
        .filter(|d| d.exists())
        .collect();
    ensure!(left.is_empty(), "cgroups left behind: {left:?}");
    println!("cleaned up: the sandbox's cgroups are gone");
    Ok(())
}

fn show(plan: &vc_cgroups_host::CgroupPlan, roots: &CgroupRoots, vmm: &FakeVmm, vcpus: &[u32]) {
    println!("sandbox cgroup:  {}", plan.sandbox.path);
    match &plan.overhead {
        Some(o) => println!("overhead cgroup: {}", o.path),
        None => println!("overhead cgroup: none (sandbox_cgroup_only)"),
    }
    println!("# tid\tcgroup (vCPU threads: {vcpus:?})");
    let controller = if plan.version == CgroupVersion::V1 {
        "cpu"
    } else {
        ""
    };
    for tid in vmm.threads() {
        println!(
            "{tid}\t{}",
            vc_cgroups_host::thread_cgroup(vmm.pid(), tid, controller)
                .unwrap_or_else(|| "?".into())
        );
    }
    println!("# runtime (this process)");
    let me = std::process::id();
    println!(
        "{me}\t{}",
        vc_cgroups_host::thread_cgroup(me, me, controller).unwrap_or_else(|| "?".into())
    );

    println!("limits written:");
    for (role, c) in plan.cgroups() {
        if role == CgroupRole::Overhead {
            continue;
        }
        for setting in &c.settings {
            for (file, _) in setting.files(plan.version) {
                let path =
                    dir_of(roots, plan.version, setting.controller(), c.path.relative()).join(file);
                let value = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("<{e}>"));
                println!("{}\t{}", path.display(), value.trim());
            }
        }
    }
    if plan.version == CgroupVersion::V1 {
        let list = dir_of(roots, plan.version, "devices", plan.sandbox.path.relative())
            .join("devices.list");
        let rules = std::fs::read_to_string(&list).unwrap_or_default();
        println!(
            "{}\t{}",
            list.display(),
            rules.lines().collect::<Vec<_>>().join(", ")
        );
    }
}

fn dir_of(
    roots: &CgroupRoots,
    version: CgroupVersion,
    controller: &str,
    rel: &str,
) -> std::path::PathBuf {
    match version {
        CgroupVersion::V1 => roots.v1.get(controller).unwrap_or(Path::new("/")).join(rel),
        CgroupVersion::V2 => roots.v2.clone().unwrap_or_default().join(rel),
    }
}

/// The stand-in VMM: killed and reaped on drop.
struct FakeVmm(Child);

impl FakeVmm {
    fn start() -> Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .arg("--fake-vmm")
            .stdin(Stdio::null())
            .spawn()
            .context("starting the stand-in VMM")?;
        let vmm = FakeVmm(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while vmm.threads().len() < 1 + VCPU_NAMES.len() + OTHER_NAMES.len() {
            if Instant::now() > deadline {
                bail!("the stand-in VMM did not start its threads");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(vmm)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn threads(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort();
        tids
    }

    fn threads_named(&self, names: &[&str]) -> Result<Vec<u32>> {
        let found: Vec<u32> = self
            .threads()
            .into_iter()
            .filter(|tid| {
                let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid()))
                    .unwrap_or_default();
                names.contains(&comm.trim())
            })
            .collect();
        ensure!(found.len() == names.len(), "found vCPU threads {found:?}");
        Ok(found)
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_fake_vmm() -> ! {
    for name in VCPU_NAMES.iter().chain(OTHER_NAMES.iter()) {
        std::thread::Builder::new()
            .name((*name).to_owned())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            })
            .expect("spawning a stand-in thread");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
