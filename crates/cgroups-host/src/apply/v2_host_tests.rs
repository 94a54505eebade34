//! The v2 backend on this host's own cgroup2 mount, which has no
//! controllers (they are all bound to v1 here): what needs none is tested
//! for real — the threaded split of a process's threads, and the device
//! program, which attaches to any cgroup2 directory. The constraints are
//! tested on a full hierarchy inside a guest VM (`v2_guest_tests`).

use std::time::{Duration, Instant};

use vc_test_support::unique;

use super::test_support::{Prober, Process, cgroup_of, read, require_root_v1, v1_config};
use super::*;
use crate::plan::{DeviceRule, plan};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A plan for this host's cgroup2 mount: no settings, as it has no
/// controllers.
fn bare_v2_plan(id: &str) -> CgroupPlan {
    let mut config = v1_config(id, false);
    config.version = crate::plan::CgroupVersion::V2;
    let mut plan = plan(&config, &[]).unwrap();
    plan.sandbox.settings.clear();
    if let Some(vcpus) = plan.vcpus.as_mut() {
        vcpus.settings.clear();
    }
    plan
}

/// Whether the kernel still has the program with this id, waiting a
/// moment for it to be freed.
fn program_freed(id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while crate::device_filter::loaded(id) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The device program on the host's cgroup2 mount: a process placed in the
/// sandbox cgroup opens an allowed device and is refused (`EPERM`) a
/// denied one, also as a fresh node it tries to make; an update replaces
/// the program (one attached at any time, the old one freed); delete
/// detaches it.
#[test]
fn v2_device_program_on_the_hosts_cgroup2_mount() {
    let root = vc_test_support::require_cgroup2();
    let id = unique("v2dev");
    let mut prober = Prober::spawn();
    let nodes = tempfile::tempdir().unwrap();
    let node = nodes.path().join("zero");
    // Outside the sandbox cgroup, nothing stops it.
    assert_eq!(prober.open("/dev/zero"), 0);
    assert_eq!(prober.mknod(&node, 1, 5), 0);

    let mut plan = bare_v2_plan(&id);
    plan.devices = vec![DeviceRule::char(1, 3)];
    let tasks = SandboxTasks {
        vmm: Some(prober.pid()),
        ..Default::default()
    };
    let mut m = CgroupfsV2::new(root.clone(), logger());
    m.apply(&plan, &tasks).unwrap();
    let sandbox = root.join(plan.sandbox.path.relative());
    assert_eq!(
        cgroup_of(prober.pid(), prober.pid(), ""),
        plan.sandbox.path.as_str()
    );
    let first = crate::device_filter::attached(&sandbox).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(prober.open("/dev/null"), 0);
    assert_eq!(prober.open("/dev/zero"), libc::EPERM);
    assert_eq!(prober.mknod(&node, 1, 5), libc::EPERM);
    assert_eq!(prober.mknod(&node, 1, 3), 0);

    // A container with /dev/zero joins: the program is replaced.
    plan.devices.push(DeviceRule::char(1, 5));
    m.update(&plan, &tasks).unwrap();
    let second = crate::device_filter::attached(&sandbox).unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    assert!(
        program_freed(first[0]),
        "the replaced program is still loaded"
    );
    assert_eq!(prober.open("/dev/zero"), 0);

    // Delete with the prober still inside: it is moved out, the program
    // detached and freed.
    m.delete().unwrap();
    assert!(!sandbox.exists());
    assert!(program_freed(second[0]), "the program outlived the sandbox");
    assert_eq!(cgroup_of(prober.pid(), prober.pid(), ""), "/");
    assert_eq!(prober.open("/dev/zero"), 0);
    assert!(!root.join(format!("{id}-parent")).exists());
}

/// A device program the kernel cannot load is a typed error, and a first
/// apply unwinds: no cgroup is left and the process is back where it was.
#[test]
fn v2_a_refused_device_program_unwinds_the_apply() {
    let root = vc_test_support::require_cgroup2();
    let id = unique("v2devfail");
    let prober = Prober::spawn();
    let before = cgroup_of(prober.pid(), prober.pid(), "");
    let plan = bare_v2_plan(&id);
    let mut m = CgroupfsV2::new(root.clone(), logger());
    // The kernel refuses programs longer than it allows (1M instructions
    // for root): a typed error naming the cgroup.
    let mut huge = plan.clone();
    huge.devices = (0..200_000).map(|n| DeviceRule::char(n, n)).collect();
    let err = m
        .apply(
            &huge,
            &SandboxTasks {
                vmm: Some(prober.pid()),
                ..Default::default()
            },
        )
        .unwrap_err();
    match &err {
        Error::LoadDeviceProgram { path, .. } => {
            assert_eq!(path, &root.join(plan.sandbox.path.relative()))
        }
        other => panic!("expected LoadDeviceProgram, got {other:?}"),
    }
    assert!(!root.join(format!("{id}-parent")).exists());
    assert!(!root.join(format!("{id}-overhead")).exists());
    assert_eq!(cgroup_of(prober.pid(), prober.pid(), ""), before);
    assert_eq!(m.state(), &CgroupsState::default());
}

/// The v2 backend on this host's cgroup2 mount, which has no controllers
/// (they are all bound to v1 here): the threaded split of a process's
/// threads is exercised for real; constraints need controllers, which are
/// tested on a full cgroup2 hierarchy inside a guest VM.
#[test]
fn v2_threaded_split_on_the_hosts_cgroup2_mount() {
    let roots = require_root_v1();
    let root = roots
        .v2
        .clone()
        .expect("the v2 applier test needs a cgroup2 mount (e.g. /sys/fs/cgroup/unified)");
    let id = unique("v2");
    let vmm = Process::fake_vmm(3);
    let helper = Process::sleeper();
    let mut config = v1_config(&id, false);
    config.version = crate::plan::CgroupVersion::V2;
    let mut plan = plan(&config, &[]).unwrap();

    // With settings, the missing controllers are a typed error and nothing
    // is left behind.
    let mut m = CgroupfsV2::new(root.clone(), logger());
    let before = cgroup_of(vmm.pid(), vmm.pid(), "");
    let err = m
        .apply(
            &plan,
            &SandboxTasks {
                vmm: Some(vmm.pid()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::ControllerMissing { .. }), "{err}");
    assert!(!root.join(format!("{id}-parent")).exists());
    assert_eq!(cgroup_of(vmm.pid(), vmm.pid(), ""), before);

    // Placement only: the VMM in the sandbox cgroup, its vCPU threads in
    // the threaded child.
    plan.sandbox.settings.clear();
    if let Some(vcpus) = plan.vcpus.as_mut() {
        vcpus.settings.clear();
    }
    let vcpus = vmm.worker_threads()[..2].to_vec();
    let mut m = CgroupfsV2::new(root.clone(), logger());
    m.apply(
        &plan,
        &SandboxTasks {
            vmm: Some(vmm.pid()),
            vcpu_threads: vcpus.clone(),
            helpers: vec![helper.pid()],
            ..Default::default()
        },
    )
    .unwrap();
    let vcpu_dir = root.join(plan.vcpus.as_ref().unwrap().path.relative());
    assert_eq!(read(vcpu_dir.join("cgroup.type")), "threaded");
    assert_eq!(
        read(root.join(plan.sandbox.path.relative()).join("cgroup.type")),
        "domain threaded"
    );
    for tid in vmm.threads() {
        let expected = if vcpus.contains(&tid) {
            plan.vcpus.as_ref().unwrap().path.as_str()
        } else {
            plan.sandbox.path.as_str()
        };
        assert_eq!(cgroup_of(vmm.pid(), tid, ""), expected, "thread {tid}");
    }
    assert_eq!(
        cgroup_of(helper.pid(), helper.pid(), ""),
        plan.overhead.as_ref().unwrap().path.as_str()
    );
    m.delete().unwrap();
    m.delete().unwrap();
    assert!(!root.join(format!("{id}-parent")).exists());
    assert!(!root.join(format!("{id}-overhead")).exists());
    assert_eq!(cgroup_of(vmm.pid(), vmm.pid(), ""), "/");
}
