//! `reclaim` of a sandbox whose creator died.

use super::*;
use crate::sandbox::reclaim_stale;

#[tokio::test]
async fn reclaim_frees_a_sandbox_whose_creator_died_mid_create() {
    let fx = Fixture::new("crash");
    let paths = fx.paths();
    // What a creator killed right after starting virtiofsd and sharing a
    // rootfs leaves behind: a state in phase `creating` that records a
    // helper process, a host mount and the host cgroups.
    let helper = vc_test_support::ChildGuard::sleeper();
    let helper_pid = helper.pid();
    let source = fx.dir.path().join("rootfs-src");
    std::fs::create_dir_all(&source).unwrap();
    let shared = paths.shared_root.join(fx.id.as_str());
    let target = shared.join("c1/rootfs");
    crate::host_mounts::bind(&source, &target, false).unwrap();
    let store = crate::persist::Store::new(&paths.state_root);
    let sstore = store.create(&fx.id).unwrap();
    let roots = vc_cgroups_host::CgroupRoots::discover().unwrap();
    let version = roots.preferred_version();
    let planner = vc_cgroups_host::plan::SandboxCgroupConfig::new(
        fx.id.clone(),
        vc_cgroups_host::plan::CgroupDriver::Cgroupfs,
        version,
    );
    let plan = vc_cgroups_host::plan(&planner, &[]).unwrap();
    let cgroups_plan = crate::plan::CgroupsPlan {
        config: planner,
        roots,
        plan: plan.clone(),
    };
    // The owner records the cgroups next to the state, in its own file.
    super::cgroups::SandboxCgroups::create(sstore.dir(), &cgroups_plan, &logger()).unwrap();
    let state = SandboxState {
        id: fx.id.clone(),
        phase: SandboxPhase::Creating,
        owner: None,
        settings: crate::state::PersistedSettings {
            paths: paths.clone(),
            agent: Default::default(),
            share: crate::fs_share::ShareKind::NineP,
            cgroups: None,
            vm_base: crate::plan::VmBaseSize {
                default_vcpus: 1,
                default_memory_mib: 256,
                max_vcpus: None,
                max_memory_mib: None,
            },
            stop_timeout: Duration::from_secs(1),
            resize_timeout: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(1),
            lifetime: Default::default(),
        },
        resources: crate::state::HostResources {
            runtime_dir: Some(paths.runtime_root.join(fx.id.as_str())),
            shared_dir: Some(shared.clone()),
            vm: None,
            vmm: None,
            helpers: vec![crate::state::ProcessRecord {
                program: "sleep".into(),
                pid: helper_pid,
                start_time: crate::process::start_time(helper_pid).unwrap(),
            }],
            mounts: Vec::new(),
        },
        guest: None,
        containers: [(
            cid("c1"),
            crate::state::ContainerRecord {
                id: cid("c1"),
                bundle: fx.dir.path().into(),
                spec: Default::default(),
                phase: ContainerPhase::Created,
                exit_code: None,
                mounts: vec![target.clone()],
                devices: Vec::new(),
            },
        )]
        .into(),
        devices: None,
    };
    std::fs::create_dir_all(paths.runtime_root.join(fx.id.as_str())).unwrap();
    sstore.write(&state).unwrap();
    drop(sstore);

    // Creating again is refused: never a second VM for a live id.
    let again = create_sandbox(fx.config(vec![]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );

    reclaim(&paths, &fx.id, logger()).await.unwrap();
    assert!(
        crate::process::start_time(helper_pid).is_none(),
        "the helper was ended"
    );
    let roots = vc_cgroups_host::CgroupRoots::discover().unwrap();
    for (_, point) in roots.v1.iter() {
        assert!(!point.join(plan.sandbox.path.relative()).exists());
    }
    fx.assert_clean("after reclaim");
    assert!(source.exists(), "the rootfs source itself is untouched");
}

/// Rewrites the owner recorded in a sandbox's state.
fn set_owner(
    fx: &Fixture,
    owner: Option<crate::state::ProcessRecord>,
    phase: Option<SandboxPhase>,
) {
    let store = crate::persist::Store::new(&fx.paths().state_root);
    let rt = tokio::runtime::Handle::current();
    let sstore = tokio::task::block_in_place(|| {
        rt.block_on(store.open(
            &fx.id,
            crate::persist::LockMode::Exclusive,
            Duration::from_secs(5),
        ))
    })
    .unwrap();
    let mut state: SandboxState = sstore.read().unwrap();
    state.owner = owner;
    if let Some(p) = phase {
        state.phase = p;
    }
    sstore.write(&state).unwrap();
}

/// An owner that is gone: this process's pid with another start time.
fn dead_owner() -> Option<crate::state::ProcessRecord> {
    let mut me = crate::process::this_process().unwrap();
    me.start_time += 1;
    Some(me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_stale_frees_only_sandboxes_whose_owner_and_vm_are_gone() {
    // Owner alive (this process): left alone, whatever the VM.
    let alive = Fixture::new("stale-alive");
    let mut config = alive.config(vec![]);
    config.lifetime = crate::config::SandboxLifetime::UntilDeleted;
    let sandbox = create_sandbox(config, alive.factory.clone(), logger())
        .await
        .unwrap();
    let report = reclaim_stale(&alive.paths(), logger()).await.unwrap();
    assert_eq!(report.alive, std::slice::from_ref(&alive.id));
    assert!(report.reclaimed.is_empty());

    // Owner gone, VM (the fake VMM) running, and meant to outlive its
    // owner: a CLI-style sandbox, alive.
    set_owner(&alive, dead_owner(), None);
    let report = reclaim_stale(&alive.paths(), logger()).await.unwrap();
    assert_eq!(report.alive, std::slice::from_ref(&alive.id), "{report:?}");

    // Owner gone and VM gone: stale, freed whole.
    let vmm_pid = alive.vmm.pid();
    // Killed but not reaped: a zombie, which is dead for reclaim_stale.
    alive.kill_vmm();
    assert!(
        crate::process::start_time(vmm_pid).is_some(),
        "still a zombie"
    );
    let report = reclaim_stale(&alive.paths(), logger()).await.unwrap();
    assert_eq!(
        report.reclaimed,
        std::slice::from_ref(&alive.id),
        "{report:?}"
    );
    assert!(report.failed.is_empty(), "{report:?}");
    alive.assert_clean("after reclaim_stale of a dead sandbox");
    drop(sandbox);
}

/// A VM that dies with its owner may still be dying when its owner is
/// already gone: the sandbox is stale, and its VM is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_stale_ends_a_vm_whose_owner_is_gone_when_it_dies_with_its_owner() {
    let fx = Fixture::new("stale-owned");
    let sandbox = create_sandbox(fx.config(vec![]), fx.factory.clone(), logger())
        .await
        .unwrap();
    set_owner(&fx, dead_owner(), None);
    let report = reclaim_stale(&fx.paths(), logger()).await.unwrap();
    assert_eq!(report.reclaimed, std::slice::from_ref(&fx.id), "{report:?}");
    let pid = fx.vmm.pid();
    assert!(
        crate::process::start_time(pid).is_none_or(|start| !crate::process::is_alive(pid, start)),
        "the VM (its fake VMM) was ended"
    );
    fx.assert_clean("after reclaim_stale");
    drop(sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_stale_frees_a_half_created_sandbox_and_skips_a_busy_one() {
    // A creator that died mid-create leaves phase `creating`: stale even
    // with its VM up (nobody will ever finish it), and the VM is ended.
    let fx = Fixture::new("stale-creating");
    let sandbox = create_sandbox(fx.config(vec![]), fx.factory.clone(), logger())
        .await
        .unwrap();
    set_owner(&fx, dead_owner(), Some(SandboxPhase::Creating));
    let report = reclaim_stale(&fx.paths(), logger()).await.unwrap();
    assert_eq!(report.reclaimed, std::slice::from_ref(&fx.id), "{report:?}");
    assert!(
        crate::process::start_time(fx.vmm.pid()).is_none()
            || !crate::process::is_alive(
                fx.vmm.pid(),
                crate::process::start_time(fx.vmm.pid()).unwrap()
            ),
        "the half-created sandbox's VMM was ended"
    );
    fx.assert_clean("after reclaim_stale of a half-created sandbox");
    drop(sandbox);

    // Locked by a live process: busy, not stale.
    let busy = Fixture::new("stale-busy");
    let sandbox = create_sandbox(busy.config(vec![]), busy.factory.clone(), logger())
        .await
        .unwrap();
    set_owner(&busy, dead_owner(), Some(SandboxPhase::Creating));
    let held = crate::persist::Store::new(&busy.paths().state_root)
        .open(
            &busy.id,
            crate::persist::LockMode::Shared,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let report = reclaim_stale(&busy.paths(), logger()).await.unwrap();
    assert_eq!(report.alive, std::slice::from_ref(&busy.id), "{report:?}");
    drop(held);
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
    busy.assert_clean("after delete");
}
