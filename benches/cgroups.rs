//! Host cgroup planning (pure) for 1, 10 and 100 containers, and apply +
//! delete of a sandbox's cgroups on the real cgroupfs (root needed).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
use vc_cgroups_host::plan::{
    CgroupDriver, CgroupLocation, CgroupVersion, ContainerResources, FileValue,
    SandboxCgroupConfig, plan,
};
use vc_cgroups_host::{CgroupManager, CgroupRoots, HostCgroups, SandboxTasks};

fn containers(n: usize) -> Vec<ContainerResources> {
    (0..n)
        .map(|i| {
            let cpu = LinuxCpuBuilder::default()
                .quota(10_000 + i as i64 * 1_000)
                .period(if i % 2 == 0 { 100_000u64 } else { 50_000 })
                .cpus(format!("{}", i % 2))
                .shares(256u64)
                .build()
                .unwrap();
            let memory = LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap();
            ContainerResources::new(
                format!("c{i}"),
                LinuxResourcesBuilder::default()
                    .cpu(cpu)
                    .memory(memory)
                    .build()
                    .unwrap(),
            )
        })
        .collect()
}

fn planning(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for version in [CgroupVersion::V1, CgroupVersion::V2] {
        let config =
            SandboxCgroupConfig::new("bench".parse().unwrap(), CgroupDriver::Cgroupfs, version);
        for n in [1, 10, 100] {
            let input = containers(n);
            group.bench_with_input(
                BenchmarkId::new(format!("{version:?}"), n),
                &input,
                |b, input| b.iter(|| plan(black_box(&config), black_box(input)).unwrap()),
            );
        }
    }
    group.finish();
}

fn apply_delete(c: &mut Criterion) {
    // The apply+delete bench writes the real cgroupfs.
    vc_test_support::require_root();
    let roots = CgroupRoots::discover().unwrap();
    let version = roots.preferred_version();
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut group = c.benchmark_group("cgroupfs");
    for only in [false, true] {
        let config = SandboxCgroupConfig {
            location: CgroupLocation::Parent("/vc-bench".into()),
            overhead_parent: "/vc-bench-overhead".into(),
            sandbox_cgroup_only: only,
            ..SandboxCgroupConfig::new(
                format!("bench-{}", std::process::id()).parse().unwrap(),
                CgroupDriver::Cgroupfs,
                version,
            )
        };
        let plan = plan(&config, &containers(10)).unwrap();
        let name = if only {
            "apply+delete/sandbox_cgroup_only"
        } else {
            "apply+delete/split"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut m =
                    HostCgroups::new(CgroupDriver::Cgroupfs, version, &roots, logger.clone())
                        .unwrap();
                m.apply(&plan, &SandboxTasks::default()).unwrap();
                m.delete().unwrap();
            })
        });
        if version == CgroupVersion::V1 {
            let bare = if only {
                "bare-fs/sandbox_cgroup_only"
            } else {
                "bare-fs/split"
            };
            group.bench_function(bare, |b| b.iter(|| bare_v1(&roots, &plan)));
        }
    }
    group.finish();
}

/// The same directories and file writes with plain `std::fs` and no checks:
/// the floor the applier's validation, cgroups-rs and bookkeeping sit on.
fn bare_v1(roots: &CgroupRoots, plan: &vc_cgroups_host::CgroupPlan) {
    let mut made = Vec::new();
    for (_, c) in plan.cgroups() {
        for (_, point) in roots.v1.iter() {
            let dir = point.join(c.path.relative());
            for d in dir.ancestors().collect::<Vec<_>>().into_iter().rev() {
                if d.starts_with(point) && d != point && std::fs::create_dir(d).is_ok() {
                    made.push(d.to_path_buf());
                }
            }
        }
        // A new v1 cpuset is empty: fill it (and any new parent) from above.
        let cpuset = roots.v1.get("cpuset").unwrap();
        for d in made.iter().filter(|d| d.starts_with(cpuset)) {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(d.parent().unwrap().join(file)).unwrap();
                std::fs::write(d.join(file), parent.trim()).unwrap();
            }
        }
        for setting in &c.settings {
            let dir = roots
                .v1
                .get(setting.controller())
                .unwrap()
                .join(c.path.relative());
            for (file, value) in setting.files(CgroupVersion::V1) {
                let value = match value {
                    FileValue::Text(t) => t,
                    FileValue::CopyFromParent => continue,
                };
                std::fs::write(dir.join(file), &value)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
            }
        }
    }
    let devices = roots
        .v1
        .get("devices")
        .unwrap()
        .join(plan.sandbox.path.relative());
    std::fs::write(devices.join("devices.deny"), "a").unwrap();
    for rule in &plan.devices {
        std::fs::write(devices.join("devices.allow"), rule.to_string()).unwrap();
    }
    made.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in made {
        std::fs::remove_dir(d).unwrap();
    }
}

criterion_group!(benches, planning, apply_delete);
criterion_main!(benches);
