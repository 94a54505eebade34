//! The rest of the spec in a real VM (root, QEMU under TCG): an OOM kill
//! reported by `GetOOMEvent`, an exec'd process with a terminal, and the
//! process fields a runc user sets (umask, OOM score, I/O priority,
//! personality) with the rootfs propagation. One VM for all.

mod docker_profile;
mod parity;

use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{
    BoxBuilder, IOPriorityClass, LinuxIOPriorityBuilder, LinuxMemoryBuilder,
    LinuxPersonalityBuilder, LinuxPersonalityDomain, LinuxResourcesBuilder, ProcessBuilder, Spec,
};
use tokio::io::AsyncReadExt;
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::protocol::convert;
use vc_agent_client::protocol::protobuf::MessageField;
use vc_agent_client::{Agent, OutputStream, ProcessOutput, TtrpcAgent};
use vc_hypervisor::{Hypervisor, Qemu};
use vc_test_support::agent as support;

fn request(cid: &str, spec: &Spec) -> pb::CreateContainerRequest {
    let mut req = support::create_request(cid, spec);
    let mut storage = pb::Storage::new();
    storage.driver = "9p".into();
    storage.source = support::ROOTFS_TAG.into();
    storage.fstype = "9p".into();
    storage.options = vec!["trans=virtio".into(), "version=9p2000.L".into()];
    storage.mount_point = support::guest_rootfs(cid);
    req.storages.push(storage);
    req
}

async fn read_all(agent: &Arc<TtrpcAgent>, cid: &str, eid: &str) -> String {
    let a: Arc<dyn Agent> = agent.clone();
    let mut s = String::new();
    ProcessOutput::new(a, cid, eid, OutputStream::Stdout)
        .read_to_string(&mut s)
        .await
        .unwrap();
    s
}

async fn remove(agent: &TtrpcAgent, cid: &str) {
    let mut req = pb::RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    agent.remove_container(req).await.unwrap();
}

/// A container over its memory limit is OOM-killed; GetOOMEvent names it.
async fn oom_event(agent: &Arc<TtrpcAgent>) {
    let cid = "oom-victim";
    let mut spec = parity::base_spec(
        &support::guest_rootfs(cid),
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
    );
    let mut linux = spec.linux().clone().unwrap();
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(32i64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    ));
    spec.set_linux(Some(linux));
    let events = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.get_oom_event().await })
    };
    agent.create_container(request(cid, &spec)).await.unwrap();
    agent.start_container(cid).await.unwrap();
    let code = agent.wait_process(cid, cid).await.unwrap();
    assert_eq!(code, 137, "dd survived its memory limit");
    let got = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .expect("no OOM event")
        .unwrap()
        .unwrap();
    assert_eq!(got, cid);
    remove(agent, cid).await;
}

/// An exec'd process with a terminal: a pty of the container's devpts,
/// sized by process.consoleSize.
async fn exec_with_terminal(agent: &Arc<TtrpcAgent>) {
    let cid = "tty-host";
    let spec = parity::base_spec(&support::guest_rootfs(cid), &["sleep", "100"]);
    agent.create_container(request(cid, &spec)).await.unwrap();
    agent.start_container(cid).await.unwrap();
    let p = ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".into(), "tty; stty size".into()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .terminal(true)
        .console_size(
            BoxBuilder::default()
                .height(30u64)
                .width(90u64)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut exec = pb::ExecProcessRequest::new();
    exec.container_id = cid.into();
    exec.exec_id = "shell".into();
    exec.process = MessageField::some(convert::process_to_proto(&p).unwrap());
    agent.exec_process(exec).await.unwrap();
    let out = parity::strip_cr(&read_all(agent, cid, "shell").await);
    assert_eq!(agent.wait_process(cid, "shell").await.unwrap(), 0);
    assert_eq!(out, "/dev/pts/0\n30 90\n");
    remove(agent, cid).await;
}

/// umask, oomScoreAdj, ioPriority, personality and rootfsPropagation.
async fn process_fields(agent: &Arc<TtrpcAgent>) {
    let cid = "fields";
    let mut spec = parity::base_spec(
        &support::guest_rootfs(cid),
        &[
            "sh",
            "-c",
            "umask; cat /proc/self/oom_score_adj; ionice; cat /proc/self/personality; \
             grep -c ' / / .* shared:' /proc/self/mountinfo",
        ],
    );
    let mut p = spec.process().clone().unwrap();
    let mut user = p.user().clone();
    user.set_umask(Some(0o077));
    p.set_user(user);
    p.set_oom_score_adj(Some(-500));
    p.set_io_priority(Some(
        LinuxIOPriorityBuilder::default()
            .class(IOPriorityClass::IoprioClassBe)
            .priority(6i64)
            .build()
            .unwrap(),
    ));
    spec.set_process(Some(p));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_personality(Some(
        LinuxPersonalityBuilder::default()
            .domain(LinuxPersonalityDomain::PerLinux32)
            .build()
            .unwrap(),
    ));
    linux.set_rootfs_propagation(Some("rshared".into()));
    spec.set_linux(Some(linux));
    agent.create_container(request(cid, &spec)).await.unwrap();
    agent.start_container(cid).await.unwrap();
    let out = read_all(agent, cid, cid).await;
    assert_eq!(agent.wait_process(cid, cid).await.unwrap(), 0, "{out}");
    assert_eq!(out, "0077\n-500\nbest-effort: prio 6\n00000008\n1\n");
    remove(agent, cid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_terminals_and_process_fields_in_the_vm() {
    vc_test_support::require_vm_host();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = vc_test_support::busybox_rootfs(dir.path());
    let config = support::agent_vm_config("vc-agent-spec", dir.path(), &rootfs);
    let qemu = Qemu::new(
        config,
        support::agent_vm_options(),
        vc_test_support::logger(),
    )
    .expect("VM config");
    qemu.start(Duration::from_secs(60))
        .await
        .expect("starting QEMU");
    let agent = match support::connect(&qemu).await {
        Ok(a) => Arc::new(a),
        Err(e) => panic!("agent did not come up: {e}\n{}", support::console(&qemu)),
    };
    let res = async move {
        process_fields(&agent).await;
        exec_with_terminal(&agent).await;
        oom_event(&agent).await;
    };
    let res = tokio::spawn(res).await;
    if res.is_err() {
        eprintln!("guest console:\n{}", support::console(&qemu));
    }
    qemu.stop(Duration::from_secs(5)).await.unwrap();
    res.unwrap();
}
