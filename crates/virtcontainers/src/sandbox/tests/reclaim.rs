//! `reclaim` of a sandbox whose creator died.

use super::*;

#[tokio::test]
async fn reclaim_frees_a_sandbox_whose_creator_died_mid_create() {
    let fx = Fixture::new("crash");
    let paths = fx.paths();
    // What a creator killed right after starting virtiofsd and sharing a
    // rootfs leaves behind: a state in phase `creating` that records a
    // helper process, a host mount and the host cgroups.
    let helper = FakeVmm::start();
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
        settings: crate::state::PersistedSettings {
            paths: paths.clone(),
            agent: Default::default(),
            share: crate::fs_share::ShareKind::NineP,
            cgroups: None,
            vm_base: crate::plan::VmBaseSize {
                default_vcpus: 1,
                default_memory_mib: 256,
                max_vcpus: None,
            },
            stop_timeout: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(1),
        },
        resources: crate::state::HostResources {
            runtime_dir: Some(paths.runtime_root.join(fx.id.as_str())),
            shared_dir: Some(shared.clone()),
            vm: None,
            vmm: None,
            helpers: vec![crate::state::HelperRecord {
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
