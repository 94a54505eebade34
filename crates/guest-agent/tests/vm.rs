//! End to end in a real VM (root, QEMU under TCG): `vc-hypervisor`'s QEMU
//! backend boots the image `vc-guest-image` builds around the static agent
//! (`vc_test_support::agent_image`, built fresh from this tree); the
//! container rootfs is a busybox tree shared by 9p. One VM serves all the
//! checks, in order, to keep the suite short on two shared cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::runtime::ProcessBuilder;
use vc_agent_client::protocol::{agent as pb, convert};
use vc_agent_client::{Agent, AgentError, TtrpcAgent};
use vc_hypervisor::{Hypervisor, Qemu};
use vc_test_support::agent;

/// The VM, killed when dropped; on a failing test its console (kernel and
/// agent logs) is printed.
struct Vm {
    qemu: Qemu,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Vm {
    async fn boot() -> Vm {
        vc_test_support::require_vm_host();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = vc_test_support::busybox_rootfs(dir.path());
        let config = agent::agent_vm_config("vc-agent-vm-test", dir.path(), &rootfs);
        let options = agent::agent_vm_options();
        let qemu = Qemu::new(config, options, vc_test_support::logger()).expect("VM config");
        let started = Instant::now();
        qemu.start(Duration::from_secs(60))
            .await
            .expect("starting QEMU");
        Vm {
            qemu,
            started,
            _dir: dir,
        }
    }

    fn console(&self) -> String {
        agent::console(&self.qemu)
    }

    async fn connect(&self) -> Arc<TtrpcAgent> {
        match agent::connect(&self.qemu).await {
            Ok(a) => Arc::new(a),
            Err(e) => panic!("agent did not come up: {e}\nconsole:\n{}", self.console()),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("guest console:\n{}", self.console());
        }
    }
}

async fn create(agent: &TtrpcAgent, cid: &str, args: &[&str]) -> vc_agent_client::Result<()> {
    agent
        .create_container(agent::guest_create_request(cid, args))
        .await
}

async fn output(agent: &Arc<TtrpcAgent>, cid: &str, eid: &str) -> (String, String) {
    agent::read_output(agent.clone(), cid, eid).await
}

async fn run(agent: &Arc<TtrpcAgent>, cid: &str, args: &[&str]) -> (String, String, i32) {
    create(agent, cid, args).await.unwrap();
    agent.start_container(cid).await.unwrap();
    let (out, err) = output(agent, cid, cid).await;
    let code = agent.wait_process(cid, cid).await.unwrap();
    remove(agent, cid).await;
    (out, err, code)
}

async fn remove(agent: &TtrpcAgent, cid: &str) {
    let mut req = pb::RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    agent.remove_container(req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_in_the_vm() {
    let vm = Vm::boot().await;
    let agent = vm.connect().await;
    eprintln!("agent answered {:?} after QEMU start", vm.started.elapsed());

    // echo hello: its output and exit 0.
    let (out, err, code) = run(&agent, "echo", &["echo", "hello"]).await;
    assert_eq!(
        (out.as_str(), code),
        ("hello\n", 0),
        "stderr: {err}\nconsole:\n{}",
        vm.console()
    );

    // A command that exits 3 reports 3.
    assert_eq!(run(&agent, "three", &["sh", "-c", "exit 3"]).await.2, 3);

    // env, cwd, uid/gid and hostname from the spec.
    let (out, err, code) = run(
        &agent,
        "ids",
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; id -g; hostname",
        ],
    )
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "hi there\n/work\n1000\n1001\nguest-box\n");

    // pivot_root, not chroot: the container's mount namespace holds its
    // own mounts only, none of the agent's (/run, /sys, other rootfs); then
    // the default spec's read-only and masked /proc paths (those the guest
    // kernel has), as runc makes them.
    let (out, err, code) = run(&agent, "mounts", &["cut", "-d ", "-f2", "/proc/mounts"]).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "/",
            "/proc",
            "/dev",
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list"
        ]
    );

    // stdin to cat comes back.
    create(&agent, "cat", &["cat"]).await.unwrap();
    agent.start_container("cat").await.unwrap();
    agent
        .write_stdin("cat", "cat", b"through the guest\n")
        .await
        .unwrap();
    agent.close_stdin("cat", "cat").await.unwrap();
    assert_eq!(output(&agent, "cat", "cat").await.0, "through the guest\n");
    assert_eq!(agent.wait_process("cat", "cat").await.unwrap(), 0);
    remove(&agent, "cat").await;

    // sleep 100, a second process exec'd into it, then SIGKILL: 137.
    create(&agent, "sleeper", &["sleep", "100"]).await.unwrap();
    agent.start_container("sleeper").await.unwrap();
    let mut exec = pb::ExecProcessRequest::new();
    exec.container_id = "sleeper".into();
    exec.exec_id = "probe".into();
    let p = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".into(),
            "cat /proc/1/cmdline; echo; hostname".into(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    exec.process = vc_agent_client::protocol::protobuf::MessageField::some(
        convert::process_to_proto(&p).unwrap(),
    );
    agent.exec_process(exec).await.unwrap();
    let (out, err) = output(&agent, "sleeper", "probe").await;
    assert_eq!(
        agent.wait_process("sleeper", "probe").await.unwrap(),
        0,
        "stderr: {err}"
    );
    assert_eq!(out, "sleep\u{0}100\u{0}\nguest-box\n");
    let stats = agent.stats_container("sleeper").await.unwrap();
    assert!(stats.cgroup_stats.pids_stats.current >= 1, "{stats:?}");
    agent
        .signal_process("sleeper", "sleeper", vc_types::Signal::KILL)
        .await
        .unwrap();
    assert_eq!(agent.wait_process("sleeper", "sleeper").await.unwrap(), 137);
    remove(&agent, "sleeper").await;

    // A missing binary: a clear error, and the agent still answers.
    match create(&agent, "ghost", &["/bin/no-such-binary"]).await {
        Err(AgentError::Rpc { message, .. }) => {
            assert!(message.contains("executable lookup"), "{message}")
        }
        other => panic!("expected an agent error, got {other:?}"),
    }
    agent.check().await.unwrap();

    // A storage the VM does not have: a clear error naming it, the agent
    // still answers, and the id is free again.
    let mut req = agent::guest_create_request("lost", &["true"]);
    req.storages[0].source = "no-such-tag".into();
    match agent.create_container(req).await {
        Err(AgentError::Rpc { message, .. }) => {
            assert!(message.contains("mounting storage"), "{message}")
        }
        other => panic!("expected an agent error, got {other:?}"),
    }
    assert_eq!(run(&agent, "lost", &["echo", "found"]).await.0, "found\n");

    // A clone's fresh state: the wall clock the host sets is what
    // containers read; entropy is mixed in (an empty seed is refused).
    let year_2100 = std::time::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    agent.set_guest_date_time(year_2100).await.unwrap();
    let (out, _, _) = run(&agent, "date", &["date", "+%s"]).await;
    let guest: u64 = out.trim().parse().unwrap();
    assert!(
        (4_102_444_800..4_102_444_860).contains(&guest),
        "guest clock {guest}"
    );
    agent
        .set_guest_date_time(std::time::SystemTime::now())
        .await
        .unwrap();
    agent.reseed_random_dev(&[7u8; 64]).await.unwrap();
    assert!(matches!(
        agent.reseed_random_dev(&[]).await,
        Err(AgentError::Rpc {
            code: ttrpc::Code::INVALID_ARGUMENT,
            ..
        })
    ));

    // The host disconnects and reconnects: a working agent again.
    drop(agent);
    let agent = vm.connect().await;
    agent.check().await.unwrap();
    assert_eq!(run(&agent, "again", &["echo", "back"]).await.0, "back\n");
    // Hosts that leave and come back at once, then an idle one: each is
    // served by a session of its own, and the guest's CPU rests (a
    // session that outlived its host's hang-up once spun on the port, a
    // vCPU at 100 %).
    drop(agent);
    for _ in 0..5 {
        vm.connect().await.check().await.unwrap();
    }
    let agent = vm.connect().await;
    agent.check().await.unwrap();
    let pid = vm.qemu.vmm_processes()[0].pid;
    let vcpus = vm.qemu.vcpu_threads().await.unwrap();
    let tids: Vec<u32> = vcpus.iter().map(|v| v.tid).collect();
    let busy = vc_test_support::busy_share(pid, &tids, Duration::from_millis(1500)).await;
    assert!(
        busy < 0.5,
        "the idle guest kept its vCPU {:.0} % busy after reconnects",
        busy * 100.0
    );

    // The VM dies under a waiting call: the call fails at once with
    // Disconnected instead of hanging.
    create(&agent, "orphan", &["sleep", "100"]).await.unwrap();
    agent.start_container("orphan").await.unwrap();
    let waiting = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.wait_process("orphan", "orphan").await })
    };
    vm.qemu.stop(Duration::from_secs(5)).await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("WaitProcess still pending after the VM stopped")
        .unwrap();
    assert!(
        matches!(&res, Err(e) if e.is_disconnect()),
        "expected Disconnected, got {res:?}"
    );
    assert!(agent.is_closed());
}
