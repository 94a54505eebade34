//! Kata interop end to end: a VM with a vhost-vsock device, the agent
//! reached on vsock port 1024 (where a Kata runtime dials it). Needs
//! `/dev/vhost-vsock`, which these hosts lack.

use std::time::Duration;

use vc_agent_client::{Agent, Transport, TtrpcAgent};
use vc_hypervisor::{AgentChannel, Hypervisor, Qemu};
use vc_test_support::agent as support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "no /dev/vhost-vsock on this host"]
async fn the_agent_answers_on_vsock_port_1024() {
    vc_test_support::require_vm_host();
    assert!(
        std::path::Path::new("/dev/vhost-vsock").exists(),
        "this test needs /dev/vhost-vsock (modprobe vhost_vsock)"
    );
    let dir = tempfile::tempdir().unwrap();
    let rootfs = vc_test_support::busybox_rootfs(dir.path());
    let mut config = support::agent_vm_config("vc-agent-vsock", dir.path(), &rootfs);
    let guest_cid = 3 + std::process::id() % 10_000;
    config.agent_channel = AgentChannel::Vsock {
        guest_cid,
        port: vc_guest_agent::VSOCK_PORT,
    };
    let qemu = Qemu::new(
        config,
        support::agent_vm_options(),
        vc_test_support::logger(),
    )
    .expect("VM config");
    qemu.start(Duration::from_secs(60))
        .await
        .expect("starting QEMU");
    let agent = TtrpcAgent::connect(
        Transport::Vsock {
            cid: guest_cid,
            port: vc_guest_agent::VSOCK_PORT,
        },
        support::agent_config(),
        &vc_test_support::logger(),
    )
    .await
    .unwrap_or_else(|e| panic!("no agent on vsock: {e}\n{}", support::console(&qemu)));
    agent.check().await.unwrap();
    qemu.stop(Duration::from_secs(5)).await.unwrap();
}
