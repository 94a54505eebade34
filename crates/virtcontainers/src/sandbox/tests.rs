//! `create_sandbox`, `cleanup_container`, `fetch_sandbox` and `reclaim`
//! with a fake VM and agent, and everything else real: host cgroups on the
//! real cgroupfs, bind mounts, state files (root needed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxResourcesBuilder, MountBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder,
};
use vc_agent_client::AgentMethod;
use vc_hypervisor::testing::Method;

use super::*;
use crate::config::{
    CgroupHierarchy, CgroupsConfig, ContainerConfig, FsShareConfig, FsShareKind, Paths,
    SandboxConfig, VmConfig,
};
use crate::error::CreateStep;
use crate::state::{ContainerPhase, SandboxPhase};
use crate::testing::MockVmFactory;

fn cid(id: &str) -> ContainerId {
    id.parse().unwrap()
}

fn logger() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root: they create host cgroups and bind mounts"
    );
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vct-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A sleeping child standing in for the VMM (real cgroups place it).
struct FakeVmm(std::process::Child);

impl FakeVmm {
    fn start() -> Self {
        FakeVmm(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    id: SandboxId,
    vmm: FakeVmm,
    factory: Arc<MockVmFactory>,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        require_root();
        let vmm = FakeVmm::start();
        let factory = Arc::new(MockVmFactory::new().with_processes(vmm.pid(), vec![vmm.pid()]));
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            id: unique(tag).parse().unwrap(),
            vmm,
            factory,
        }
    }

    fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    fn bundle(&self, name: &str, volume: Option<&Path>) -> ContainerConfig {
        let bundle = self.dir.path().join("bundles").join(name);
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::write(bundle.join("rootfs/bin/marker"), name).unwrap();
        let mut mounts = Vec::new();
        if let Some(v) = volume {
            mounts.push(
                MountBuilder::default()
                    .destination("/data")
                    .source(v)
                    .typ("bind")
                    .options(vec!["rbind".to_owned(), "ro".to_owned()])
                    .build()
                    .unwrap(),
            );
        }
        let cpu = LinuxCpuBuilder::default()
            .quota(50_000i64)
            .period(100_000u64)
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .root(RootBuilder::default().path("rootfs").build().unwrap())
            .process(
                ProcessBuilder::default()
                    .args(vec!["/bin/true".to_owned()])
                    .build()
                    .unwrap(),
            )
            .mounts(mounts)
            .linux(
                LinuxBuilder::default()
                    .resources(LinuxResourcesBuilder::default().cpu(cpu).build().unwrap())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        ContainerConfig {
            id: cid(name),
            bundle,
            spec,
            rootfs_block: None,
        }
    }

    fn config(&self, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let images = self.dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("vmlinux"), "").unwrap();
        std::fs::write(images.join("initrd"), "").unwrap();
        let mut config = SandboxConfig::new(
            self.id.clone(),
            VmConfig::new(images.join("vmlinux"), images.join("initrd")),
        );
        // Any executable stands in for QEMU: the mock factory starts none.
        config.vm.qemu_binary = "/bin/sh".into();
        config.paths = self.paths();
        config.cgroups = Some(CgroupsConfig {
            cgroups_path: Some(format!("/{}-pod/{}", self.id, self.id)),
            ..CgroupsConfig::default()
        });
        config.fs_share = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        config.containers = containers;
        config.lock_timeout = Duration::from_secs(5);
        config
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let roots = vc_cgroups_host::CgroupRoots::discover().unwrap();
        let mut dirs = Vec::new();
        for (_, point) in roots.v1.iter() {
            for name in [
                format!("{}-pod", self.id),
                format!("virtcontainers_overhead/{}", self.id),
            ] {
                let d = point.join(name);
                if d.exists() {
                    dirs.push(d);
                }
            }
        }
        dirs
    }

    fn mounts_under_dir(&self) -> Vec<PathBuf> {
        vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect()
    }

    /// Nothing of the sandbox is left on the host.
    fn assert_clean(&self, context: &str) {
        let p = self.paths();
        for d in [
            p.state_root.join(self.id.as_str()),
            p.shared_root.join(self.id.as_str()),
            p.runtime_root.join(self.id.as_str()),
        ] {
            assert!(!d.exists(), "{context}: {} left behind", d.display());
        }
        assert_eq!(
            self.cgroup_dirs(),
            Vec::<PathBuf>::new(),
            "{context}: cgroups left behind"
        );
        assert_eq!(
            self.mounts_under_dir(),
            Vec::<PathBuf>::new(),
            "{context}: mounts left behind"
        );
    }
}

impl Drop for Fixture {
    /// A failed test may leave bind mounts under the temporary directory:
    /// unmount them before it is removed, or the removal would recurse into
    /// their sources.
    fn drop(&mut self) {
        let mut mounts = self.mounts_under_dir();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test]
async fn create_run_and_cleanup_the_last_container_removes_everything() {
    let fx = Fixture::new("full");
    let volume = fx.dir.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("v"), "vol").unwrap();
    let config = fx.config(vec![fx.bundle("c1", Some(&volume)), fx.bundle("c2", None)]);
    let sandbox = create_sandbox(config, fx.factory.clone(), logger())
        .await
        .unwrap();

    // The share carries each rootfs and the volume, read-only as asked.
    let shared = fx.paths().shared_root.join(fx.id.as_str());
    assert_eq!(
        std::fs::read_to_string(shared.join("c1/rootfs/bin/marker")).unwrap(),
        "c1"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("c2/rootfs/bin/marker")).unwrap(),
        "c2"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("c1/mounts/0/v")).unwrap(),
        "vol"
    );
    assert!(std::fs::write(shared.join("c1/mounts/0/w"), "x").is_err());
    // Host cgroups: the fake VMM's vCPU thread carries 2 x 0.5 CPU.
    let status = sandbox.status().await.unwrap();
    assert_eq!(status.phase, SandboxPhase::Ready);
    let sandbox_cgroup = status.sandbox_cgroup.clone().unwrap();
    let cpu = Path::new("/sys/fs/cgroup/cpu").join(sandbox_cgroup.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "100000"
    );
    let tasks = std::fs::read_to_string(cpu.join("tasks")).unwrap();
    assert!(
        tasks.lines().any(|t| t == fx.vmm.pid().to_string()),
        "{tasks}"
    );
    assert_eq!(fx.factory.agent().containers().len(), 2);

    sandbox.start_container(&cid("c1")).await.unwrap();
    assert_eq!(sandbox.wait_container(&cid("c1")).await.unwrap(), 0);
    assert_eq!(
        sandbox.container_status(&cid("c1")).await.unwrap().phase,
        ContainerPhase::Stopped
    );
    // c1 stopped: only c2 counts now.
    assert_eq!(
        std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );

    let paths = fx.paths();
    let first = cleanup_container(
        &paths,
        &fx.id,
        &cid("c1"),
        false,
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    assert!(!first.sandbox_removed);
    assert!(!shared.join("c1").exists());
    assert_eq!(sandbox.containers().await.unwrap().len(), 1);
    let last = cleanup_container(
        &paths,
        &fx.id,
        &cid("c2"),
        false,
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    assert!(last.sandbox_removed);
    assert_eq!(fx.factory.agent().count(AgentMethod::DestroySandbox), 1);
    let stops: usize = fx
        .factory
        .vms()
        .iter()
        .map(|vm| vm.count(Method::Stop))
        .sum();
    assert_eq!(stops, 1);
    fx.assert_clean("after the last cleanup");
    drop(sandbox);
}

/// One row per step of `create_sandbox`: how to make it fail, and which
/// undo actions must then have run exactly once.
#[tokio::test]
async fn a_failure_at_every_step_unwinds_each_completed_step_once() {
    let steps = [
        CreateStep::State,
        CreateStep::Cgroups,
        CreateStep::FsShare,
        CreateStep::StartVm,
        CreateStep::ConstrainVm,
        CreateStep::ConnectAgent,
        CreateStep::GuestDetails,
        CreateStep::GuestSandbox,
        CreateStep::Containers,
    ];
    for step in steps {
        let fx = Fixture::new("fail");
        let mut config = fx.config(vec![
            fx.bundle("c1", Some(fx.dir.path())),
            fx.bundle("c2", None),
        ]);
        match step {
            CreateStep::State => {
                std::fs::write(fx.dir.path().join("sbs"), "not a directory").unwrap();
            }
            CreateStep::Cgroups => {
                // Mounts that are not a cgroupfs: the plan is sound, the
                // applier refuses the hierarchy.
                let fake = fx.dir.path().join("not-cgroupfs");
                let mounts = ["cpu", "cpuacct", "cpuset", "memory", "pids", "devices"].map(|c| {
                    std::fs::create_dir_all(fake.join(c)).unwrap();
                    (c.to_owned(), fake.join(c))
                });
                config.cgroups.as_mut().unwrap().hierarchy = CgroupHierarchy::At {
                    roots: vc_cgroups_host::CgroupRoots {
                        v1: vc_cgroups_host::V1Mounts::from_pairs(mounts),
                        v2: None,
                    },
                    version: vc_cgroups_host::plan::CgroupVersion::V1,
                };
            }
            CreateStep::FsShare => {
                std::fs::write(fx.dir.path().join("shared"), "not a directory").unwrap();
            }
            CreateStep::StartVm => fx.factory.fail_vm(Method::Start),
            CreateStep::ConstrainVm => fx.factory.fail_vm(Method::VcpuThreads),
            CreateStep::ConnectAgent => fx.factory.fail_connect(true),
            CreateStep::GuestDetails => fx
                .factory
                .agent()
                .fail(AgentMethod::GetGuestDetails, Some(1)),
            CreateStep::GuestSandbox => {
                fx.factory.agent().fail(AgentMethod::CreateSandbox, Some(1))
            }
            CreateStep::Containers => {
                // The first container is created; the second's volume
                // vanished after validation, so sharing it fails.
                config.containers[1] = fx.bundle("c2", Some(&fx.dir.path().join("gone")));
            }
            CreateStep::Plan => unreachable!(),
        }
        let err = create_sandbox(config, fx.factory.clone(), logger())
            .await
            .unwrap_err();
        match &err {
            Error::Create {
                step: failed,
                sandbox,
                ..
            } => {
                assert_eq!(*failed, step, "{err:?}");
                assert_eq!(sandbox, &fx.id);
            }
            other => panic!("{step:?}: {other:?}"),
        }
        let vm_started = matches!(
            step,
            CreateStep::StartVm
                | CreateStep::ConstrainVm
                | CreateStep::ConnectAgent
                | CreateStep::GuestDetails
                | CreateStep::GuestSandbox
                | CreateStep::Containers
        );
        let stops: usize = fx
            .factory
            .vms()
            .iter()
            .map(|vm| vm.count(Method::Stop))
            .sum();
        assert_eq!(stops, usize::from(vm_started), "{step:?}: VM stops");
        let destroyed = fx.factory.agent().count(AgentMethod::DestroySandbox);
        assert_eq!(
            destroyed,
            usize::from(step == CreateStep::Containers),
            "{step:?}: guest sandbox undone"
        );
        let removed = fx.factory.agent().count(AgentMethod::RemoveContainer);
        assert_eq!(
            removed,
            usize::from(step == CreateStep::Containers),
            "{step:?}: container undone"
        );
        fx.assert_clean(&format!("after a failure at {step:?}"));
        let _ = std::fs::remove_file(fx.dir.path().join("sbs"));
        let _ = std::fs::remove_file(fx.dir.path().join("shared"));
    }
}

#[tokio::test]
async fn an_existing_id_is_already_exists_and_the_first_sandbox_is_untouched() {
    let fx = Fixture::new("dup");
    let sandbox = create_sandbox(
        fx.config(vec![fx.bundle("c1", None)]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    let again = create_sandbox(fx.config(vec![]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { ref id }) if *id == fx.id),
        "{again:?}"
    );
    assert_eq!(fx.factory.vms().len(), 1, "no second VM");
    assert_eq!(sandbox.status().await.unwrap().containers.len(), 1);
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
    fx.assert_clean("after delete");
}

#[tokio::test]
async fn fetch_sandbox_reconnects_to_a_running_sandbox() {
    let fx = Fixture::new("fetch");
    let created = create_sandbox(
        fx.config(vec![fx.bundle("c1", None)]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    let fetched = fetch_sandbox(&fx.paths(), &fx.id, fx.factory.clone(), logger())
        .await
        .unwrap();
    assert_eq!(fetched.id(), &fx.id);
    fetched.start_container(&cid("c1")).await.unwrap();
    assert_eq!(
        created.container_status(&cid("c1")).await.unwrap().phase,
        ContainerPhase::Running
    );
    assert!(matches!(
        fetch_sandbox(
            &fx.paths(),
            &"no-such-sandbox".parse().unwrap(),
            fx.factory.clone(),
            logger()
        )
        .await,
        Err(Error::NotFound { .. })
    ));
    fetched.stop(Duration::from_secs(1)).await.unwrap();
    fetched.delete().await.unwrap();
    fx.assert_clean("after delete through the fetched handle");
    drop(created);
}

/// A failure at each step of cleaning up the last container: without
/// `force` the error is returned and a retry can finish; with `force`
/// everything is freed anyway.
#[tokio::test]
async fn a_failure_at_every_step_of_cleanup_is_survived_with_force() {
    #[derive(Debug, Clone, Copy)]
    enum Fail {
        Connect,
        RemoveContainer,
        DestroySandbox,
        StopVm,
    }
    for fail in [
        Fail::Connect,
        Fail::RemoveContainer,
        Fail::DestroySandbox,
        Fail::StopVm,
    ] {
        for force in [false, true] {
            let fx = Fixture::new("cleanfail");
            let sandbox = create_sandbox(
                fx.config(vec![fx.bundle("c1", Some(fx.dir.path()))]),
                fx.factory.clone(),
                logger(),
            )
            .await
            .unwrap();
            match fail {
                Fail::Connect => fx.factory.fail_connect(true),
                Fail::RemoveContainer => fx
                    .factory
                    .agent()
                    .fail(AgentMethod::RemoveContainer, Some(1)),
                Fail::DestroySandbox => fx
                    .factory
                    .agent()
                    .fail(AgentMethod::DestroySandbox, Some(1)),
                Fail::StopVm => fx.factory.fail_vm(Method::Stop),
            }
            let paths = fx.paths();
            let r = cleanup_container(
                &paths,
                &fx.id,
                &cid("c1"),
                force,
                fx.factory.clone(),
                logger(),
            )
            .await;
            if force {
                match r {
                    Ok(o) => assert!(o.sandbox_removed, "{fail:?}"),
                    Err(Error::Cleanup { errors, .. }) => assert!(!errors.is_empty(), "{fail:?}"),
                    Err(e) => panic!("{fail:?} forced: {e}"),
                }
                fx.assert_clean(&format!("forced cleanup with {fail:?} failing"));
            } else if matches!(fail, Fail::DestroySandbox) {
                // A guest that cannot tidy itself up is logged, not fatal:
                // the VM is stopped anyway.
                assert!(r.is_ok(), "{fail:?}: {r:?}");
                fx.assert_clean("cleanup with a failed DestroySandbox");
            } else {
                assert!(r.is_err(), "{fail:?}: {r:?}");
                // A retry, the failure gone, finishes the job.
                fx.factory.fail_connect(false);
                cleanup_container(
                    &paths,
                    &fx.id,
                    &cid("c1"),
                    false,
                    fx.factory.clone(),
                    logger(),
                )
                .await
                .unwrap_or_else(|e| panic!("retry after {fail:?}: {e}"));
                fx.assert_clean(&format!("retried cleanup after {fail:?}"));
            }
            drop(sandbox);
        }
    }
}

#[tokio::test]
async fn forced_cleanup_of_an_unreachable_sandbox_frees_everything() {
    let fx = Fixture::new("force");
    let sandbox = create_sandbox(
        fx.config(vec![fx.bundle("c1", Some(fx.dir.path()))]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    // The guest is gone: nothing answers.
    fx.factory.fail_connect(true);
    let paths = fx.paths();
    let refused = cleanup_container(
        &paths,
        &fx.id,
        &cid("c1"),
        false,
        fx.factory.clone(),
        logger(),
    )
    .await;
    assert!(refused.is_err());
    let forced = cleanup_container(
        &paths,
        &fx.id,
        &cid("c1"),
        true,
        fx.factory.clone(),
        logger(),
    )
    .await;
    assert!(
        matches!(forced, Err(Error::Cleanup { .. })),
        "errors are reported: {forced:?}"
    );
    fx.assert_clean("after a forced cleanup");
    drop(sandbox);
}

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

#[tokio::test]
async fn bad_ids_and_bundles_are_refused_before_anything_is_made() {
    let fx = Fixture::new("bad");
    // An id is checked where it enters: a bad one is never a SandboxId.
    assert!(matches!(
        "../escape".parse::<SandboxId>(),
        Err(vc_types::IdError {
            rule: vc_types::IdRule::Character('/'),
            ..
        })
    ));
    let mut missing = fx.bundle("c1", None);
    missing.bundle = fx.dir.path().join("no-such-bundle");
    let r = create_sandbox(fx.config(vec![missing]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(&r, Err(Error::Create { source, .. }) if matches!(**source, Error::InvalidBundle { ref reason, .. } if reason == "does not exist")),
        "{r:?}"
    );
    let mut file = fx.bundle("c1", None);
    file.bundle = fx.dir.path().join("images/vmlinux");
    let r = create_sandbox(fx.config(vec![file]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(&r, Err(Error::Create { source, .. }) if matches!(**source, Error::InvalidBundle { ref reason, .. } if reason == "not a directory")),
        "{r:?}"
    );
    let dup = create_sandbox(
        fx.config(vec![fx.bundle("c1", None), fx.bundle("c1", None)]),
        fx.factory.clone(),
        logger(),
    )
    .await;
    assert!(
        matches!(&dup, Err(Error::Create { source, .. }) if matches!(**source, Error::ContainerExists { .. })),
        "{dup:?}"
    );
    assert!(fx.factory.vms().is_empty());
    fx.assert_clean("after refused configs");
}

/// Every kind of configuration error comes back from planning, typed by
/// the layer whose rule it broke, before anything exists on the host: no
/// state directory, no cgroup, no VM or other process.
#[tokio::test]
async fn config_errors_of_every_kind_change_nothing_on_the_host() {
    type Check = fn(&Error) -> bool;
    type Break = Box<dyn Fn(&Fixture, &mut SandboxConfig)>;
    let cases: Vec<(&str, Break, Check)> = vec![
        (
            "bad kernel parameter",
            Box::new(|_, c| c.vm.kernel_params = vec!["console=\"hvc0".into()]),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::InvalidKernelParams { .. }
                    }
                )
            },
        ),
        ("0 vCPUs", Box::new(|_, c| c.vm.default_vcpus = 0), |e| {
            matches!(
                e,
                Error::InvalidVmConfig {
                    source: vc_hypervisor::ConfigError::ZeroVcpus
                }
            )
        }),
        (
            "missing kernel",
            Box::new(|fx, c| c.vm.kernel = fx.dir.path().join("no-such-vmlinux")),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::KernelNotFound { .. }
                    }
                )
            },
        ),
        (
            "socket path too long",
            Box::new(|fx, c| c.paths.runtime_root = fx.dir.path().join("r".repeat(100))),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::SocketPathTooLong { .. }
                    }
                )
            },
        ),
        (
            "bad cgroups path",
            Box::new(|_, c| c.cgroups.as_mut().unwrap().cgroups_path = Some("/pod/../../x".into())),
            |e| {
                matches!(
                    e,
                    Error::InvalidCgroupsConfig {
                        source: vc_cgroups_host::Error::InvalidCgroupPath { .. }
                    }
                )
            },
        ),
        (
            "systemd driver",
            Box::new(|_, c| {
                c.cgroups.as_mut().unwrap().driver = vc_cgroups_host::plan::CgroupDriver::Systemd
            }),
            |e| matches!(e, Error::Unsupported(_)),
        ),
        (
            "bad hostname",
            Box::new(|_, c| c.hostname = Some("a b".into())),
            |e| matches!(e, Error::InvalidHostname { .. }),
        ),
        (
            "bad container resources",
            Box::new(|fx, c| {
                let mut bad = fx.bundle("c1", None);
                let cpu = LinuxCpuBuilder::default().quota(-7i64).build().unwrap();
                bad.spec.set_linux(Some(
                    LinuxBuilder::default()
                        .resources(LinuxResourcesBuilder::default().cpu(cpu).build().unwrap())
                        .build()
                        .unwrap(),
                ));
                c.containers = vec![bad];
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidCgroupsConfig {
                        source: vc_cgroups_host::Error::InvalidCpuQuota { .. }
                    }
                )
            },
        ),
    ];
    // A bad id never becomes a SandboxId or ContainerId, so it cannot
    // reach create_sandbox at all.
    assert!("a/b".parse::<SandboxId>().is_err());
    assert!("-rf".parse::<ContainerId>().is_err());
    for (what, breaks, expected) in cases {
        let fx = Fixture::new("config");
        let mut config = fx.config(vec![fx.bundle("c1", None)]);
        breaks(&fx, &mut config);
        let err = create_sandbox(config, fx.factory.clone(), logger())
            .await
            .unwrap_err();
        match &err {
            Error::Create {
                step: CreateStep::Plan,
                source,
                ..
            } => assert!(expected(source), "{what}: {source:?}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            !fx.paths().state_root.exists(),
            "{what}: the state root was made"
        );
        assert!(fx.factory.vms().is_empty(), "{what}: a VM was made");
        fx.assert_clean(what);
        let mut pod = Vec::new();
        for (_, point) in vc_cgroups_host::CgroupRoots::discover().unwrap().v1.iter() {
            let dir = point.join(format!("{}-pod", fx.id));
            if dir.exists() {
                pod.push(dir);
            }
        }
        assert_eq!(pod, Vec::<PathBuf>::new(), "{what}: cgroups were made");
    }
}
