//! `create_sandbox` and `fetch_sandbox`.

use super::*;

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

    let first = fx.cleanup("c1", false).await.unwrap();
    assert!(!first.sandbox_removed);
    assert!(!shared.join("c1").exists());
    assert_eq!(sandbox.containers().await.unwrap().len(), 1);
    let last = fx.cleanup("c2", false).await.unwrap();
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
        CreateStep::Network,
        CreateStep::Cgroups,
        CreateStep::FsShare,
        CreateStep::BootSlot,
        CreateStep::StartVm,
        CreateStep::ConstrainVm,
        CreateStep::ConnectAgent,
        CreateStep::GuestDetails,
        CreateStep::GuestNetwork,
        CreateStep::GuestSandbox,
        CreateStep::Containers,
    ];
    for step in steps {
        // A namespace with interfaces to carry.
        let netns = DummyNetns::new(&step);
        let mut _held_slot = None;
        let fx = Fixture::new("fail");
        let mut config = fx.config(vec![
            fx.bundle("c1", Some(fx.dir.path())),
            fx.bundle("c2", None),
        ]);
        match step {
            CreateStep::State => {
                std::fs::write(fx.dir.path().join("sbs"), "not a directory").unwrap();
            }
            CreateStep::Network => {
                // A link with the tap's name: the SDK never takes it over.
                netns.add_veth("tap0_vc", "tpeer0");
                config.network.netns = crate::NetnsConfig::Path(netns.path.clone());
            }
            CreateStep::GuestNetwork => {
                config.network.netns = crate::NetnsConfig::Path(netns.path.clone());
                fx.factory
                    .agent()
                    .fail(AgentMethod::UpdateInterface, Some(1))
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
            CreateStep::BootSlot => {
                // The host's only boot slot stays taken.
                config.vm.boot_admission = crate::BootAdmission::Limit(std::num::NonZeroU32::MIN);
                config.vm.admission_timeout = Duration::from_millis(100);
                let scope = config.paths.runtime_root.to_string_lossy().into_owned();
                _held_slot = Some(
                    crate::boot::admission::take_slot(
                        &scope,
                        std::num::NonZeroU32::MIN,
                        Duration::ZERO,
                    )
                    .await
                    .unwrap(),
                );
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
                unwind_errors,
                ..
            } => {
                assert_eq!(*failed, step, "{err:?}");
                assert_eq!(sandbox, &fx.id);
                assert!(unwind_errors.is_empty(), "{step:?}: {err}");
            }
            other => panic!("{step:?}: {other:?}"),
        }
        let vm_started = matches!(
            step,
            CreateStep::StartVm
                | CreateStep::ConstrainVm
                | CreateStep::ConnectAgent
                | CreateStep::GuestDetails
                | CreateStep::GuestNetwork
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
        assert_eq!(
            vc_test_support::netns_snapshot(&netns.path),
            netns.before(),
            "{step:?}: the namespace changed"
        );
        let _ = std::fs::remove_file(fx.dir.path().join("sbs"));
        let _ = std::fs::remove_file(fx.dir.path().join("shared"));
    }
}

/// A named namespace (`ip netns add`) with a veth pair `eth0`/`peer0`
/// (interfaces to carry; this host has no dummy links), deleted on drop.
struct DummyNetns {
    name: String,
    path: std::path::PathBuf,
    before: std::sync::Mutex<Option<String>>,
}

impl DummyNetns {
    fn new(step: &CreateStep) -> Self {
        let name = vc_test_support::unique(&format!("{step:?}").to_lowercase());
        vc_test_support::run("ip", &["netns", "add", &name]).unwrap();
        let netns = DummyNetns {
            path: std::path::Path::new("/run/netns").join(&name),
            name,
            before: std::sync::Mutex::new(None),
        };
        netns.add_veth("eth0", "peer0");
        netns
    }

    fn add_veth(&self, link: &str, peer: &str) {
        vc_test_support::run(
            "ip",
            &[
                "-n", &self.name, "link", "add", link, "type", "veth", "peer", "name", peer,
            ],
        )
        .unwrap();
        *self.before.lock().unwrap() = Some(vc_test_support::netns_snapshot(&self.path));
    }

    fn before(&self) -> String {
        self.before.lock().unwrap().clone().unwrap()
    }
}

impl Drop for DummyNetns {
    fn drop(&mut self) {
        let _ = vc_test_support::run("ip", &["netns", "del", &self.name]);
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

#[tokio::test]
async fn oom_kills_in_the_guest_reach_the_sandbox_api() {
    let fx = Fixture::new("oom");
    let sandbox = create_sandbox(
        fx.config(vec![fx.bundle("c1", None)]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    let waiting = tokio::spawn({
        let agent = fx.factory.agent().clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            agent.inject_oom("c1");
        }
    });
    let id = tokio::time::timeout(Duration::from_secs(5), sandbox.next_oom_event())
        .await
        .expect("an OOM event")
        .unwrap();
    assert_eq!(id, cid("c1"));
    waiting.await.unwrap();
    fx.factory.agent().inject_oom("../bad");
    assert!(matches!(
        sandbox.next_oom_event().await,
        Err(Error::InvalidId(_))
    ));
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
    fx.assert_clean("after delete");
}
