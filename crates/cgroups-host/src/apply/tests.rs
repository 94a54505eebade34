//! The applier on this host's real cgroupfs (root needed: these tests fail,
//! naming what is missing, without it).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder,
};

use vc_test_support::unique;

use super::test_support::{
    CHECKED, Process, cgroup_of, leftovers, read, require_root_v1, v1_config,
};
use super::*;
use crate::plan::{
    CgroupLocation, ContainerResources, DeviceRule, HostDevice, SandboxCgroupConfig, plan,
};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn container(id: &str, quota: i64, cpus: &str, memory: i64, pids: i64) -> ContainerResources {
    let cpu = LinuxCpuBuilder::default()
        .quota(quota)
        .period(100_000u64)
        .cpus(cpus)
        .build()
        .unwrap();
    let res = LinuxResourcesBuilder::default()
        .cpu(cpu)
        .memory(LinuxMemoryBuilder::default().limit(memory).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(pids).build().unwrap())
        .build()
        .unwrap();
    ContainerResources::new(id, res)
}

fn v1(roots: &CgroupRoots) -> CgroupfsV1 {
    CgroupfsV1::new(roots.v1.clone(), logger())
}

fn dir(roots: &CgroupRoots, controller: &str, path: &CgroupPath) -> PathBuf {
    roots.v1.get(controller).unwrap().join(path.relative())
}

/// Every checked controller puts thread `tid` of `pid` in `expected`.
fn assert_thread_in(pid: u32, tid: u32, expected: &CgroupPath) {
    for c in CHECKED {
        assert_eq!(
            cgroup_of(pid, tid, c),
            expected.as_str(),
            "thread {tid} of {pid} in controller {c}"
        );
    }
}

#[test]
fn v1_split_puts_vcpu_threads_in_the_sandbox_and_the_rest_in_overhead() {
    let roots = require_root_v1();
    let id = unique("split");
    let vmm = Process::fake_vmm(4);
    let helper = Process::sleeper();
    let workers = vmm.worker_threads();
    let vcpus = vec![workers[0], workers[1]];
    let kvm_like = HostDevice {
        path: "/dev/net/tun".into(),
        kind: crate::plan::DeviceKind::Char,
        major: 10,
        minor: 200,
    };
    let mut config = v1_config(&id, false);
    config.vmm_devices.push(kvm_like);
    config.overhead = crate::plan::Overhead {
        memory_bytes: 64 << 20,
        pids: 50,
    };
    let plan = plan(
        &config,
        &[
            container("a", 100_000, "0", 256 << 20, 20),
            container("b", 50_000, "1", 128 << 20, 30),
        ],
    )
    .unwrap();
    let mut m = v1(&roots);
    m.apply(
        &plan,
        &SandboxTasks {
            runtime: None,
            vmm: Some(vmm.pid()),
            vcpu_threads: vcpus.clone(),
            helpers: vec![helper.pid()],
        },
    )
    .unwrap();

    let sandbox = &plan.sandbox.path;
    let overhead = &plan.overhead.as_ref().unwrap().path;
    for tid in vmm.threads() {
        let expected = if vcpus.contains(&tid) {
            sandbox
        } else {
            overhead
        };
        assert_thread_in(vmm.pid(), tid, expected);
    }
    assert_thread_in(helper.pid(), helper.pid(), overhead);

    // Every limit file holds the plan's value.
    assert_eq!(
        read(dir(&roots, "cpu", sandbox).join("cpu.cfs_quota_us")),
        "150000"
    );
    assert_eq!(
        read(dir(&roots, "cpu", sandbox).join("cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(read(dir(&roots, "cpu", sandbox).join("cpu.shares")), "1024");
    assert_eq!(
        read(dir(&roots, "cpuset", sandbox).join("cpuset.cpus")),
        "0-1"
    );
    assert_eq!(
        read(dir(&roots, "cpuset", sandbox).join("cpuset.mems")),
        read(roots.v1.get("cpuset").unwrap().join("cpuset.mems"))
    );
    assert_eq!(
        read(dir(&roots, "memory", sandbox).join("memory.limit_in_bytes")),
        ((256 + 128 + 64) << 20).to_string()
    );
    assert_eq!(read(dir(&roots, "pids", sandbox).join("pids.max")), "100");
    let listed: Vec<String> = read(dir(&roots, "devices", sandbox).join("devices.list"))
        .lines()
        .map(str::to_owned)
        .collect();
    let planned: Vec<String> = plan.devices.iter().map(DeviceRule::to_string).collect();
    assert_eq!(sorted(listed), sorted(planned));
    assert!(plan.devices.iter().any(|r| r.to_string() == "c 10:200 rwm"));
    // The overhead cgroup is unconstrained.
    assert_eq!(
        read(dir(&roots, "cpu", overhead).join("cpu.cfs_quota_us")),
        "-1"
    );
    assert_eq!(
        read(dir(&roots, "devices", overhead).join("devices.list")),
        "a *:* rwm"
    );

    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
    for tid in vmm.threads() {
        assert_thread_in(vmm.pid(), tid, &CgroupPath::root());
    }
}

/// With `vmm_memory_in_sandbox`, the VMM's memory controller placement
/// is the sandbox cgroup, its CPU (vCPU threads aside) the overhead's, and
/// an update keeps it so.
#[test]
fn v1_the_vmms_memory_can_be_charged_to_the_sandbox() {
    let roots = require_root_v1();
    let id = unique("vmmmem");
    let vmm = Process::fake_vmm(2);
    let vcpus = vec![vmm.worker_threads()[0]];
    let mut config = v1_config(&id, false);
    config.vmm_memory_in_sandbox = true;
    let plan = plan(&config, &[container("a", 100_000, "0", 256 << 20, 20)]).unwrap();
    let tasks = SandboxTasks {
        runtime: None,
        vmm: Some(vmm.pid()),
        vcpu_threads: vcpus.clone(),
        helpers: Vec::new(),
    };
    let mut m = v1(&roots);
    m.apply(&plan, &tasks).unwrap();
    let sandbox = plan.sandbox.path.as_str();
    let overhead = plan.overhead.as_ref().unwrap().path.as_str();
    for _ in 0..2 {
        for tid in vmm.threads() {
            assert_eq!(cgroup_of(vmm.pid(), tid, "memory"), sandbox, "thread {tid}");
            let cpu = if vcpus.contains(&tid) {
                sandbox
            } else {
                overhead
            };
            assert_eq!(cgroup_of(vmm.pid(), tid, "cpu"), cpu, "thread {tid}");
            assert_eq!(cgroup_of(vmm.pid(), tid, "pids"), cpu, "thread {tid}");
        }
        m.update(&plan, &tasks).unwrap();
    }
    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn v1_sandbox_cgroup_only_puts_everything_in_the_sandbox() {
    let roots = require_root_v1();
    let id = unique("only");
    let vmm = Process::fake_vmm(3);
    let runtime = Process::sleeper();
    let runtime_before: Vec<String> = CHECKED
        .iter()
        .map(|c| cgroup_of(runtime.pid(), runtime.pid(), c))
        .collect();
    let helper = Process::sleeper();
    let plan = plan(
        &v1_config(&id, true),
        &[container("a", 150_000, "0-1", 1 << 30, 10)],
    )
    .unwrap();
    assert!(plan.overhead.is_none());
    let mut m = v1(&roots);
    m.apply(
        &plan,
        &SandboxTasks {
            runtime: Some(runtime.pid()),
            vmm: Some(vmm.pid()),
            vcpu_threads: vmm.worker_threads()[..2].to_vec(),
            helpers: vec![helper.pid()],
        },
    )
    .unwrap();
    let sandbox = &plan.sandbox.path;
    for tid in vmm.threads() {
        assert_thread_in(vmm.pid(), tid, sandbox);
    }
    assert_thread_in(runtime.pid(), runtime.pid(), sandbox);
    assert_thread_in(helper.pid(), helper.pid(), sandbox);
    let devices = read(dir(&roots, "devices", sandbox).join("devices.list"));
    for rule in [
        "c 5:2 rwm",
        "c 136:* rwm",
        "b 7:* rwm",
        "c 10:237 rwm",
        "c 1:3 rwm",
    ] {
        assert!(
            devices.lines().any(|l| l == rule),
            "{rule} missing from {devices}"
        );
    }
    assert_eq!(
        read(dir(&roots, "cpu", sandbox).join("cpu.cfs_quota_us")),
        "150000"
    );
    assert!(leftovers(&roots.v1, &format!("{id}-overhead")).is_empty());

    // Deleting with the tasks still inside moves them out first: the
    // runtime back where it came from, the others to the nearest parent
    // that stays.
    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
    let runtime_after: Vec<String> = CHECKED
        .iter()
        .map(|c| cgroup_of(runtime.pid(), runtime.pid(), c))
        .collect();
    assert_eq!(runtime_after, runtime_before);
    assert_thread_in(helper.pid(), helper.pid(), &CgroupPath::root());
}

#[test]
fn v1_update_reaggregates_and_follows_new_vcpu_threads() {
    let roots = require_root_v1();
    let id = unique("update");
    let vmm = Process::fake_vmm(4);
    let workers = vmm.worker_threads();
    let config = v1_config(&id, false);
    let one = plan(&config, &[container("a", 50_000, "0", 64 << 20, 10)]).unwrap();
    let mut m = v1(&roots);
    m.apply(&one, &SandboxTasks::default()).unwrap();
    // The VMM starts after the cgroups exist.
    m.update(
        &one,
        &SandboxTasks {
            vmm: Some(vmm.pid()),
            vcpu_threads: vec![workers[0]],
            ..Default::default()
        },
    )
    .unwrap();
    let sandbox = one.sandbox.path.clone();
    let overhead = one.overhead.clone().unwrap().path;
    assert_thread_in(vmm.pid(), workers[0], &sandbox);
    assert_thread_in(vmm.pid(), workers[1], &overhead);

    // A container joins with a device; vCPUs are hot-plugged: new thread ids.
    let mut joiner = container("b", 100_000, "1", 64 << 20, 10);
    joiner.devices.push(
        LinuxDeviceBuilder::default()
            .path("/dev/sdz")
            .typ(LinuxDeviceType::B)
            .major(8)
            .minor(400)
            .build()
            .unwrap(),
    );
    let two = plan(
        &config,
        &[container("a", 50_000, "0", 64 << 20, 10), joiner],
    )
    .unwrap();
    m.update(
        &two,
        &SandboxTasks {
            vmm: Some(vmm.pid()),
            vcpu_threads: vec![workers[1], workers[2]],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        read(dir(&roots, "cpu", &sandbox).join("cpu.cfs_quota_us")),
        "150000"
    );
    assert_eq!(
        read(dir(&roots, "cpuset", &sandbox).join("cpuset.cpus")),
        "0-1"
    );
    assert!(
        read(dir(&roots, "devices", &sandbox).join("devices.list"))
            .lines()
            .any(|l| l == "b 8:400 rwm")
    );
    assert_thread_in(vmm.pid(), workers[0], &overhead);
    assert_thread_in(vmm.pid(), workers[1], &sandbox);
    assert_thread_in(vmm.pid(), workers[2], &sandbox);

    // It leaves again: limits shrink, its device is no longer allowed.
    m.update(
        &one,
        &SandboxTasks {
            vmm: Some(vmm.pid()),
            vcpu_threads: vec![workers[1]],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        read(dir(&roots, "cpu", &sandbox).join("cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(
        read(dir(&roots, "cpuset", &sandbox).join("cpuset.cpus")),
        "0"
    );
    assert!(
        !read(dir(&roots, "devices", &sandbox).join("devices.list"))
            .lines()
            .any(|l| l.starts_with("b 8:400"))
    );
    assert_thread_in(vmm.pid(), workers[2], &overhead);

    // The same update again moves nothing (it is not written: see
    // `already_placed`); one after someone moved a vCPU thread away puts
    // it back.
    let same = SandboxTasks {
        vmm: Some(vmm.pid()),
        vcpu_threads: vec![workers[1]],
        ..Default::default()
    };
    m.update(&one, &same).unwrap();
    assert_thread_in(vmm.pid(), workers[1], &sandbox);
    assert_thread_in(vmm.pid(), workers[2], &overhead);
    std::fs::write(
        roots.v1.get("cpu").unwrap().join("tasks"),
        workers[1].to_string(),
    )
    .unwrap();
    assert_eq!(cgroup_of(vmm.pid(), workers[1], "cpu"), "/");
    m.update(&one, &same).unwrap();
    assert_thread_in(vmm.pid(), workers[1], &sandbox);

    // A plan naming other cgroups is refused.
    let other = plan(&v1_config(&unique("other"), false), &[]).unwrap();
    assert!(matches!(
        m.update(&other, &SandboxTasks::default()),
        Err(Error::PlanMismatch { .. })
    ));
    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

#[test]
fn v1_apply_twice_and_delete_twice() {
    let roots = require_root_v1();
    let id = unique("idem");
    let vmm = Process::fake_vmm(2);
    let plan = plan(
        &v1_config(&id, false),
        &[container("a", 100_000, "0", 64 << 20, 10)],
    )
    .unwrap();
    let tasks = SandboxTasks {
        vmm: Some(vmm.pid()),
        vcpu_threads: vmm.worker_threads()[..1].to_vec(),
        ..Default::default()
    };
    let mut m = v1(&roots);
    m.apply(&plan, &tasks).unwrap();
    let state = m.state().clone();
    m.apply(&plan, &tasks).unwrap();
    assert_eq!(m.state(), &state, "a second apply records nothing new");
    assert_thread_in(vmm.pid(), tasks.vcpu_threads[0], &plan.sandbox.path);

    // Another process (here: another manager) rebuilds the manager from the
    // persisted state and deletes.
    let json = serde_json::to_string(m.state()).unwrap();
    let mut again = HostCgroups::from_state(
        crate::plan::CgroupDriver::Cgroupfs,
        crate::plan::CgroupVersion::V1,
        &roots,
        logger(),
        serde_json::from_str(&json).unwrap(),
    )
    .unwrap();
    again.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
    again.delete().unwrap();
    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

#[test]
fn v1_default_parents_are_removed_only_when_empty() {
    let roots = require_root_v1();
    let a = unique("shared-a");
    let b = unique("shared-b");
    let shared = unique("shared-parent");
    let config = |id: &str| SandboxCgroupConfig {
        location: CgroupLocation::Parent(format!("/{shared}")),
        overhead_parent: format!("/{shared}-overhead"),
        ..v1_config(id, false)
    };
    let (pa, pb) = (
        plan(&config(&a), &[]).unwrap(),
        plan(&config(&b), &[]).unwrap(),
    );
    let (mut ma, mut mb) = (v1(&roots), v1(&roots));
    ma.apply(&pa, &SandboxTasks::default()).unwrap();
    mb.apply(&pb, &SandboxTasks::default()).unwrap();
    ma.delete().unwrap();
    // b still lives in the shared parent, which a created.
    assert!(dir(&roots, "cpu", &pb.sandbox.path).exists());
    mb.delete().unwrap();
    assert!(!dir(&roots, "cpu", &pb.sandbox.path).exists());
    // The parent was created by a, not b: b leaves it, and it is empty.
    let parent = roots.v1.get("cpu").unwrap().join(&shared);
    if parent.exists() {
        std::fs::remove_dir(&parent).unwrap();
        for (_, point) in roots.v1.iter() {
            let _ = std::fs::remove_dir(point.join(&shared));
            let _ = std::fs::remove_dir(point.join(format!("{shared}-overhead")));
        }
    }
    assert_eq!(leftovers(&roots.v1, &shared), Vec::<PathBuf>::new());
}

/// The default parents are every sandbox's: the last to leave removes
/// them, even when another made them (that left them, empty, in every
/// controller after concurrent sandboxes).
#[test]
fn v1_the_last_sandbox_out_removes_the_default_parents() {
    let roots = require_root_v1();
    let (a, b) = (unique("default-a"), unique("default-b"));
    let config = |id: &str| SandboxCgroupConfig {
        location: CgroupLocation::Parent(crate::plan::DEFAULT_PARENT.into()),
        overhead_parent: crate::plan::DEFAULT_OVERHEAD_PARENT.into(),
        ..v1_config(id, false)
    };
    let (pa, pb) = (
        plan(&config(&a), &[]).unwrap(),
        plan(&config(&b), &[]).unwrap(),
    );
    let parents = || {
        roots.v1.iter().flat_map(|(_, point)| {
            [
                crate::plan::DEFAULT_PARENT,
                crate::plan::DEFAULT_OVERHEAD_PARENT,
            ]
            .map(|p| point.join(p.trim_start_matches('/')))
        })
    };
    let (mut ma, mut mb) = (v1(&roots), v1(&roots));
    ma.apply(&pa, &SandboxTasks::default()).unwrap();
    mb.apply(&pb, &SandboxTasks::default()).unwrap();
    // b made no parent; a leaves first, b still inside.
    assert!(
        mb.state()
            .created
            .iter()
            .all(|c| !c.ends_with("virtcontainers"))
    );
    ma.delete().unwrap();
    assert!(dir(&roots, "cpu", &pb.sandbox.path).exists());
    assert!(parents().any(|p| p.exists()), "b's parents went under it");
    mb.delete().unwrap();
    // Another sandbox of this host (not this test's) may still be in one.
    let left: Vec<PathBuf> = parents()
        .filter(|p| {
            std::fs::read_dir(p).is_ok_and(|entries| {
                !entries
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            })
        })
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "empty default parents left");
    assert_eq!(leftovers(&roots.v1, &a), Vec::<PathBuf>::new());
    assert_eq!(leftovers(&roots.v1, &b), Vec::<PathBuf>::new());
}

#[test]
fn v1_a_failure_at_any_step_unwinds_everything() {
    let roots = require_root_v1();
    for step in ALL_STEPS {
        for only in [false, true] {
            let id = unique("fail");
            let vmm = Process::fake_vmm(2);
            let runtime = Process::sleeper();
            let helper = Process::sleeper();
            let before: Vec<(u32, String)> = [vmm.pid(), runtime.pid(), helper.pid()]
                .iter()
                .flat_map(|&p| CHECKED.iter().map(move |c| (p, cgroup_of(p, p, c))))
                .collect();
            let plan = plan(
                &v1_config(&id, only),
                &[container("a", 100_000, "0", 64 << 20, 10)],
            )
            .unwrap();
            let mut m = v1(&roots);
            m.fail_at = Some(step);
            let result = m.apply(
                &plan,
                &SandboxTasks {
                    runtime: Some(runtime.pid()),
                    vmm: Some(vmm.pid()),
                    vcpu_threads: vmm.worker_threads(),
                    helpers: vec![helper.pid()],
                },
            );
            let steps_this_plan_has =
                step != Step::CreateVcpus && !(only && step == Step::CreateOverhead);
            if !steps_this_plan_has {
                result.unwrap();
                m.delete().unwrap();
            } else {
                let err = result.unwrap_err();
                assert!(
                    matches!(&err, Error::CreateCgroup { path, .. } if path.to_string_lossy().contains("injected")),
                    "{step:?}: {err}"
                );
            }
            assert_eq!(
                leftovers(&roots.v1, &id),
                Vec::<PathBuf>::new(),
                "{step:?} only={only}"
            );
            assert_eq!(m.state(), &CgroupsState::default(), "{step:?}");
            let after: Vec<(u32, String)> = [vmm.pid(), runtime.pid(), helper.pid()]
                .iter()
                .flat_map(|&p| CHECKED.iter().map(move |c| (p, cgroup_of(p, p, c))))
                .collect();
            if steps_this_plan_has {
                assert_eq!(
                    before, after,
                    "{step:?}: processes are back where they were"
                );
            }
        }
    }
}

#[test]
fn v1_bad_tasks_are_refused_before_anything_is_created() {
    let roots = require_root_v1();
    let id = unique("badtask");
    let vmm = Process::fake_vmm(1);
    let other = Process::sleeper();
    let dead = {
        let mut p = Process::sleeper();
        let pid = p.pid();
        p.0.0.kill().unwrap();
        p.0.0.wait().unwrap();
        pid
    };
    let plan = plan(&v1_config(&id, false), &[]).unwrap();
    let cases = [
        (
            SandboxTasks {
                vmm: Some(dead),
                ..Default::default()
            },
            "dead vmm",
        ),
        (
            SandboxTasks {
                vmm: Some(vmm.pid()),
                vcpu_threads: vec![other.pid()],
                ..Default::default()
            },
            "foreign thread",
        ),
        (
            SandboxTasks {
                vcpu_threads: vmm.worker_threads(),
                ..Default::default()
            },
            "vcpus without vmm",
        ),
        (
            SandboxTasks {
                helpers: vec![dead],
                ..Default::default()
            },
            "dead helper",
        ),
    ];
    for (tasks, what) in cases {
        let mut m = v1(&roots);
        let err = m.apply(&plan, &tasks).unwrap_err();
        match what {
            "dead vmm" | "dead helper" => assert!(
                matches!(err, Error::NoSuchTask { pid } if pid == dead),
                "{what}: {err}"
            ),
            "foreign thread" => assert!(matches!(err, Error::NotAThreadOf { .. }), "{what}: {err}"),
            _ => assert!(matches!(err, Error::VcpuThreadsWithoutVmm), "{what}: {err}"),
        }
        assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new(), "{what}");
    }
}

/// A read-only bind mount of a cgroup controller, unmounted on drop.
struct ReadOnlyBind {
    target: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadOnlyBind {
    fn of(source: &Path) -> Self {
        use nix::mount::{MsFlags, mount};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ro");
        std::fs::create_dir(&target).unwrap();
        mount(
            Some(source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        ReadOnlyBind { target, _dir: dir }
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn missing_read_only_or_foreign_cgroupfs_is_a_typed_error() {
    let roots = require_root_v1();
    let id = unique("fs");
    let plan = plan(&v1_config(&id, false), &[]).unwrap();
    let with_cpu_at = |point: &Path| {
        V1Mounts::from_pairs(roots.v1.iter().map(|(c, p)| {
            let p = if c == "cpu" {
                point.to_path_buf()
            } else {
                p.to_path_buf()
            };
            (c.to_owned(), p)
        }))
    };

    let missing = CgroupfsV1::new(with_cpu_at(Path::new("/nonexistent/cpu")), logger())
        .apply(&plan, &SandboxTasks::default());
    assert!(
        matches!(missing, Err(Error::CgroupfsMissing { .. })),
        "{missing:?}"
    );

    let ro = ReadOnlyBind::of(roots.v1.get("cpu").unwrap());
    let read_only =
        CgroupfsV1::new(with_cpu_at(&ro.target), logger()).apply(&plan, &SandboxTasks::default());
    assert!(
        matches!(read_only, Err(Error::CgroupfsReadOnly { .. })),
        "{read_only:?}"
    );

    let plain = tempfile::tempdir().unwrap();
    let foreign =
        CgroupfsV1::new(with_cpu_at(plain.path()), logger()).apply(&plan, &SandboxTasks::default());
    assert!(
        matches!(foreign, Err(Error::NotACgroupfs { .. })),
        "{foreign:?}"
    );

    let no_memory = V1Mounts::from_pairs(
        roots
            .v1
            .iter()
            .filter(|(c, _)| *c != "memory")
            .map(|(c, p)| (c.to_owned(), p.to_path_buf())),
    );
    let unmounted = CgroupfsV1::new(no_memory, logger()).apply(&plan, &SandboxTasks::default());
    assert!(
        matches!(
            unmounted,
            Err(Error::ControllerMissing {
                controller: "memory",
                ..
            })
        ),
        "{unmounted:?}"
    );

    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

#[test]
fn a_plan_for_another_backend_is_refused() {
    let roots = require_root_v1();
    let id = unique("mismatch");
    let mut config = v1_config(&id, false);
    config.version = crate::plan::CgroupVersion::V2;
    let v2_plan = plan(&config, &[]).unwrap();
    assert!(matches!(
        v1(&roots).apply(&v2_plan, &SandboxTasks::default()),
        Err(Error::PlanMismatch { .. })
    ));
    config.driver = crate::plan::CgroupDriver::Systemd;
    config.location = CgroupLocation::Parent("test.slice".into());
    config.overhead_parent = "test_overhead.slice".into();
    let systemd_plan = plan(&config, &[]).unwrap();
    let mut systemd = HostCgroups::new(
        crate::plan::CgroupDriver::Systemd,
        crate::plan::CgroupVersion::V2,
        &roots,
        logger(),
    )
    .unwrap();
    assert!(matches!(
        systemd.apply(&systemd_plan, &SandboxTasks::default()),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

/// The v1 `devices` controller takes the whole rule language: partial
/// access, `*` majors, allow-all and back, and a deny rule, which the
/// kernel applies by narrowing the matching exception (here with the same
/// result as the v2 program: read and mknod stay, write goes).
#[test]
fn v1_device_rules_beyond_the_allowlist() {
    use crate::plan::{DeviceAccess, DeviceKind, permits};
    let roots = require_root_v1();
    let id = unique("v1rules");
    let mut plan = plan(&v1_config(&id, false), &[]).unwrap();
    let list = |plan: &CgroupPlan| -> Vec<String> {
        sorted(
            read(dir(&roots, "devices", &plan.sandbox.path).join("devices.list"))
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    };
    let loops_read_only = DeviceRule {
        kind: DeviceKind::Block,
        major: Some(7),
        minor: None,
        access: DeviceAccess::READ,
        allow: true,
    };
    plan.devices = vec![loops_read_only, DeviceRule::char(1, 3)];
    let mut m = v1(&roots);
    m.apply(&plan, &SandboxTasks::default()).unwrap();
    assert_eq!(list(&plan), ["b 7:* r", "c 1:3 rwm"]);

    let everything = DeviceRule {
        kind: DeviceKind::All,
        major: None,
        minor: None,
        access: DeviceAccess::RWM,
        allow: true,
    };
    plan.devices = vec![everything];
    m.update(&plan, &SandboxTasks::default()).unwrap();
    assert_eq!(list(&plan), ["a *:* rwm"]);

    let no_write = DeviceRule {
        access: DeviceAccess::WRITE,
        allow: false,
        ..DeviceRule::char(1, 3)
    };
    plan.devices = vec![DeviceRule::char(1, 3), no_write];
    m.update(&plan, &SandboxTasks::default()).unwrap();
    assert_eq!(list(&plan), ["c 1:3 rm"]);
    let (c, r, w) = (DeviceKind::Char, DeviceAccess::READ, DeviceAccess::WRITE);
    assert!(permits(&plan.devices, c, 1, 3, r));
    assert!(!permits(&plan.devices, c, 1, 3, w));

    m.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}
