//! The VM following its containers: hot-plug, online, re-constrain, and
//! every way it can fail, with the fake VM and agent (real cgroups).

use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResources};
use vc_hypervisor::testing::{Call, MockState};

use super::*;

/// `cpus` CPUs of quota and `memory_mib` of memory limit.
fn resources(cpus: i64, memory_mib: Option<i64>) -> LinuxResources {
    let cpu = LinuxCpuBuilder::default()
        .quota(cpus * 100_000)
        .period(100_000u64)
        .build()
        .unwrap();
    let mut r = LinuxResourcesBuilder::default().cpu(cpu);
    if let Some(m) = memory_mib {
        r = r.memory(
            LinuxMemoryBuilder::default()
                .limit(m << 20)
                .build()
                .unwrap(),
        );
    }
    r.build().unwrap()
}

fn with_resources(mut c: ContainerConfig, r: LinuxResources) -> ContainerConfig {
    let mut linux = c.spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(r));
    c.spec.set_linux(Some(linux));
    c
}

/// A sandbox with no container: 1 vCPU and 256 MiB, growing to 4 vCPUs
/// and 1 GiB; its agent has no GetMetrics (the online call is trusted).
async fn sandbox(fx: &Fixture) -> Sandbox {
    let mut config = fx.config(Vec::new());
    config.vm.max_vcpus = 4;
    config.vm.max_memory_mib = 1024;
    fx.factory.agent().fail(AgentMethod::GetMetrics, None);
    create_sandbox(config, fx.factory.clone(), logger())
        .await
        .unwrap()
}

fn vm(fx: &Fixture) -> vc_hypervisor::testing::MockHypervisor {
    fx.factory.vms().last().cloned().unwrap()
}

fn resizes(fx: &Fixture) -> Vec<Call> {
    vm(fx)
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::ResizeVcpus(_) | Call::ResizeMemory(..)))
        .collect()
}

/// The CPU quota (µs per 100 ms period) of the sandbox cgroup.
async fn quota(sandbox: &Sandbox) -> String {
    let cg = sandbox.status().await.unwrap().sandbox_cgroup.unwrap();
    let file = Path::new("/sys/fs/cgroup/cpu")
        .join(cg.trim_start_matches('/'))
        .join("cpu.cfs_quota_us");
    std::fs::read_to_string(file).unwrap().trim().to_owned()
}

/// The VM's saved state, as the next process would attach to it.
fn saved_vm(fx: &Fixture) -> MockState {
    let file = fx
        .paths()
        .state_root
        .join(fx.id.as_str())
        .join("state.json");
    let state: crate::state::SandboxState = crate::persist::read_versioned(&file).unwrap().unwrap();
    state
        .resources
        .vm
        .unwrap()
        .decode(vc_hypervisor::testing::MockHypervisor::BACKEND, 1)
        .unwrap()
}

#[tokio::test]
async fn a_joining_container_is_hot_plugged_onlined_then_constrained() {
    let fx = Fixture::new("grow");
    let sandbox = sandbox(&fx).await;
    assert_eq!(sandbox.vm_resources().vcpus, 1);
    let c = with_resources(fx.bundle("big", None), resources(2, Some(200)));
    sandbox.create_container(c).await.unwrap();

    // 1 + 2 vCPUs; 256 + 200 MiB, in whole 128 MiB blocks.
    assert_eq!(
        resizes(&fx),
        [Call::ResizeVcpus(3), Call::ResizeMemory(456, 128)]
    );
    let r = sandbox.vm_resources();
    assert_eq!((r.vcpus, r.memory_mib), (3, 512));
    let online = fx.factory.agent().online_requests();
    assert_eq!(online.len(), 1);
    assert_eq!((online[0].nb_cpus, online[0].cpu_only), (3, false));
    // Onlined before the container was made in the guest.
    let calls: Vec<AgentMethod> = fx
        .factory
        .agent()
        .calls()
        .iter()
        .map(|c| c.method)
        .collect();
    let at = |m| calls.iter().rposition(|c| *c == m).unwrap();
    assert!(
        at(AgentMethod::OnlineCPUMem) < at(AgentMethod::CreateContainer),
        "{calls:?}"
    );
    // The pod's quota follows; the next process knows the vCPUs and memory.
    assert_eq!(quota(&sandbox).await, "200000");
    let saved = saved_vm(&fx);
    assert_eq!(
        (saved.hotplugged_vcpus, saved.hotplugged_memory_mib),
        (2, 256)
    );

    // A container that fits plugs nothing (the guest is asked to have its
    // vCPUs online, which it has).
    sandbox
        .create_container(with_resources(
            fx.bundle("small", None),
            LinuxResources::default(),
        ))
        .await
        .unwrap();
    assert_eq!(resizes(&fx).len(), 2);
    let online = fx.factory.agent().online_requests();
    assert_eq!((online[1].nb_cpus, online[1].cpu_only), (3, true));
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
    fx.assert_clean("after delete");
}

#[tokio::test]
async fn more_than_the_maxima_is_refused_before_anything_changes() {
    let fx = Fixture::new("max");
    let sandbox = sandbox(&fx).await;
    let before = std::fs::read(
        fx.paths()
            .state_root
            .join(fx.id.as_str())
            .join("state.json"),
    )
    .unwrap();
    for (what, r) in [
        ("vCPUs", resources(4, None)),
        ("MiB of memory", resources(1, Some(800))),
    ] {
        let err = sandbox
            .create_container(with_resources(fx.bundle("huge", None), r))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::ResourcesAboveMax { resource, .. } if *resource == what),
            "{err}"
        );
    }
    assert!(resizes(&fx).is_empty());
    assert!(fx.factory.agent().containers().is_empty());
    let after = std::fs::read(
        fx.paths()
            .state_root
            .join(fx.id.as_str())
            .join("state.json"),
    )
    .unwrap();
    assert_eq!(before, after, "the state is untouched");
    // At create_sandbox, the same is a planning error.
    let mut config = fx.config(vec![with_resources(
        fx.bundle("huge", None),
        resources(8, None),
    )]);
    config.id = unique("max2").parse().unwrap();
    config.vm.max_vcpus = 4;
    let err = create_sandbox(config, fx.factory.clone(), logger())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Create { step: CreateStep::Plan, source, .. }
            if matches!(**source, Error::ResourcesAboveMax { requested: 9, max: 4, .. })),
        "{err}"
    );
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
}

#[tokio::test]
async fn a_failed_memory_plug_unplugs_the_new_vcpus_and_creates_nothing() {
    let fx = Fixture::new("memfail");
    let sandbox = sandbox(&fx).await;
    vm(&fx).fail_next(Method::ResizeMemory);
    let err = sandbox
        .create_container(with_resources(
            fx.bundle("c1", None),
            resources(2, Some(200)),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Hypervisor {
                operation: "hot-plug memory",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        resizes(&fx),
        [
            Call::ResizeVcpus(3),
            Call::ResizeMemory(456, 128),
            Call::ResizeVcpus(1)
        ]
    );
    assert_eq!(sandbox.vm_resources().vcpus, 1);
    assert!(fx.factory.agent().online_requests().is_empty());
    assert!(sandbox.containers().await.unwrap().is_empty());
    assert!(fx.factory.agent().containers().is_empty());
    assert_eq!(quota(&sandbox).await, "-1");
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
}

/// The guest does not online: the memory goes back, and vCPUs the
/// hypervisor cannot unplug stay (recorded, constrained), offline.
#[tokio::test]
async fn a_guest_that_does_not_online_undoes_what_can_be() {
    let fx = Fixture::new("nonline");
    let sandbox = sandbox(&fx).await;
    let _ = vm(&fx).without_vcpu_unplug();
    fx.factory.agent().fail(AgentMethod::OnlineCPUMem, Some(1));
    let err = sandbox
        .create_container(with_resources(
            fx.bundle("c1", None),
            resources(1, Some(100)),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Agent {
                operation: "OnlineCPUMem",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        resizes(&fx),
        [
            Call::ResizeVcpus(2),
            Call::ResizeMemory(356, 128),
            Call::ResizeMemory(256, 128),
            Call::ResizeVcpus(1)
        ]
    );
    let r = sandbox.vm_resources();
    assert_eq!(
        (r.vcpus, r.memory_mib),
        (2, 256),
        "the vCPU stays, the memory went"
    );
    assert_eq!(saved_vm(&fx).hotplugged_vcpus, 1, "and is recorded");
    assert!(sandbox.containers().await.unwrap().is_empty());
    // The next container finds the vCPU there: it is only onlined.
    sandbox
        .create_container(with_resources(fx.bundle("c1", None), resources(1, None)))
        .await
        .unwrap();
    assert_eq!(resizes(&fx).len(), 4);
    assert_eq!(
        fx.factory.agent().online_requests().last().unwrap().nb_cpus,
        2
    );
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
}

#[tokio::test]
async fn leaving_or_shrinking_containers_give_vcpus_back_and_memory_stays() {
    let fx = Fixture::new("shrink");
    let sandbox = sandbox(&fx).await;
    sandbox
        .create_container(with_resources(fx.bundle("ca", None), resources(1, None)))
        .await
        .unwrap();
    sandbox
        .create_container(with_resources(
            fx.bundle("cb", None),
            resources(2, Some(200)),
        ))
        .await
        .unwrap();
    assert_eq!(sandbox.vm_resources().vcpus, 4);
    assert_eq!(quota(&sandbox).await, "300000");
    sandbox.delete_container(&cid("cb")).await.unwrap();
    let r = sandbox.vm_resources();
    assert_eq!(
        (r.vcpus, r.memory_mib),
        (2, 512),
        "vCPUs back, memory stays"
    );
    assert_eq!(quota(&sandbox).await, "100000");
    assert_eq!(saved_vm(&fx).hotplugged_vcpus, 1);

    // An update grows first, then shrinks back when lowered.
    sandbox
        .update_container(&cid("ca"), &resources(3, None))
        .await
        .unwrap();
    assert_eq!(sandbox.vm_resources().vcpus, 4);
    assert_eq!(quota(&sandbox).await, "300000");
    sandbox
        .update_container(&cid("ca"), &resources(1, None))
        .await
        .unwrap();
    assert_eq!(sandbox.vm_resources().vcpus, 2);
    // A refused update undoes its growth.
    fx.factory
        .agent()
        .fail(AgentMethod::UpdateContainer, Some(1));
    assert!(
        sandbox
            .update_container(&cid("ca"), &resources(2, None))
            .await
            .is_err()
    );
    assert_eq!(sandbox.vm_resources().vcpus, 2);
    assert_eq!(quota(&sandbox).await, "100000");

    // Where vCPUs cannot be unplugged, a delete still succeeds; they stay.
    let _ = vm(&fx).without_vcpu_unplug();
    sandbox
        .update_container(&cid("ca"), &resources(3, None))
        .await
        .unwrap();
    sandbox
        .update_container(&cid("ca"), &resources(1, None))
        .await
        .unwrap();
    assert_eq!(sandbox.vm_resources().vcpus, 4);
    assert_eq!(
        quota(&sandbox).await,
        "100000",
        "the quota follows regardless"
    );
    sandbox.stop(Duration::from_secs(1)).await.unwrap();
    sandbox.delete().await.unwrap();
    fx.assert_clean("after delete");
}
