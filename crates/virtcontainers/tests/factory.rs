//! The VM factory end to end: templates (init, clones, mismatches,
//! destroy, an init killed at any point) and the pool of booted VMs
//! (in-process and served to other processes). Real QEMU under TCG, the
//! real guest agent, busybox containers, host cgroups; root needed. The
//! tests run one at a time, and each checks that nothing of its own is
//! left on the host.

mod common;
mod factory_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Env, cid, read_all};
use factory_support::{CaptureExt, template_factory};
use vc_test_support::{
    ContainerSpec, HostSnapshot, LogCapture, assert_unchanged_since_matching,
    shared_busybox_rootfs, unique, vm_lock_async,
};
use virtcontainers::{
    FsShareKind, PoolConfig, PoolFactory, Sandbox, SandboxConfig, TemplateStatus, VmFactory,
    VmPool, create_sandbox,
};

const STOP: Duration = Duration::from_secs(5);

/// A container that prints `name`, 16 bytes of `/dev/urandom` in hex and
/// the guest's clock (seconds since the Epoch), one per line.
fn probe(env: &Env, name: &str) -> virtcontainers::ContainerConfig {
    let script = format!(
        "echo {name}; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
    );
    env.bundle_of(
        name,
        ContainerSpec::new(shared_busybox_rootfs(), &["sh", "-c", &script]).tmpfs("/dev", &[]),
    )
}

/// A sandbox of `env`'s shape (9p, host cgroups) named `id`.
fn config(env: &Env, id: &str, containers: Vec<virtcontainers::ContainerConfig>) -> SandboxConfig {
    let mut c = env.config(FsShareKind::NineP, containers);
    c.id = id.parse().unwrap();
    c
}

/// Starts the sandbox's one container and returns its output lines.
async fn run(sandbox: &Sandbox, name: &str) -> Vec<String> {
    let io = sandbox.start_container(&cid(name)).await.unwrap();
    let out = read_all(io.stdout).await;
    assert_eq!(
        sandbox.wait_container(&cid(name)).await.unwrap(),
        0,
        "{out}"
    );
    out.lines().map(str::to_owned).collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The cgroup v1 `cpu` path of thread `tid` of `pid`.
fn cpu_cgroup(pid: u32, tid: u32) -> String {
    virtcontainers::vc_cgroups_host::thread_cgroup(pid, tid, "cpu").unwrap()
}

/// How busy the sandbox's vCPU threads were over `over` (1.0: one vCPU
/// busy throughout).
async fn vcpu_busy_share(sandbox: &Sandbox, over: Duration) -> f64 {
    let pid = sandbox.status().await.unwrap().vmm_pid.unwrap();
    let vcpus = sandbox.hypervisor().vcpu_threads().await.unwrap();
    let tids: Vec<u32> = vcpus.iter().map(|v| v.tid).collect();
    vc_test_support::busy_share(pid, &tids, over).await
}

async fn stop(sandbox: Sandbox) {
    sandbox.stop(STOP).await.unwrap();
    sandbox.delete().await.unwrap();
}

/// Two clones of one template at once: each runs its own container, gets
/// its own entropy and the host's clock (the template was saved more than
/// 10 s before), and has its vCPU threads in its own sandbox cgroup. Then
/// `destroy` leaves nothing: no tmpfs, no file, no process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clones_at_once_are_independent_and_destroy_leaves_nothing() {
    let _serial = vm_lock_async().await;
    let env = Env::new("tmpl");
    let before = HostSnapshot::take();
    let capture = LogCapture::new();
    let factory = template_factory(&env);
    let info = factory
        .init(&env.config(FsShareKind::NineP, vec![]), &capture.logger())
        .await
        .unwrap();
    assert!(matches!(
        factory.status().unwrap(),
        TemplateStatus::Ready(_)
    ));
    let saved = info.saved_at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    // The clones wake up at the template's time: let it fall behind.
    tokio::time::sleep(Duration::from_secs(11)).await;

    let factory: Arc<dyn VmFactory> = Arc::new(factory);
    let (a, b) = (unique("clone-a"), unique("clone-b"));
    let (ra, rb) = tokio::join!(
        create_sandbox(
            config(&env, &a, vec![probe(&env, "one")]),
            factory.clone(),
            capture.logger()
        ),
        create_sandbox(
            config(&env, &b, vec![probe(&env, "two")]),
            factory.clone(),
            capture.logger()
        ),
    );
    let (sa, sb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        capture.count("VM started from its template"),
        2,
        "both came from the template:\n{}",
        capture.text()
    );
    let (oa, ob) = tokio::join!(run(&sa, "one"), run(&sb, "two"));
    assert_eq!(oa[0], "one");
    assert_eq!(ob[0], "two");
    assert_eq!(oa[1].len(), 32, "{oa:?}");
    assert_ne!(oa[1], ob[1], "both clones read the same random bytes");
    for out in [&oa, &ob] {
        let guest: i64 = out[2].parse().unwrap();
        assert!(
            (guest - now_secs()).abs() <= 2,
            "guest clock {guest}, host {}, template saved at {saved}",
            now_secs()
        );
    }
    for sandbox in [&sa, &sb] {
        let status = sandbox.status().await.unwrap();
        let cgroup = status.sandbox_cgroup.unwrap();
        assert!(cgroup.contains(sandbox.id().as_str()), "{cgroup}");
        let qemu = status.vmm_pid.unwrap();
        let vcpus = sandbox.hypervisor().vcpu_threads().await.unwrap();
        assert!(!vcpus.is_empty());
        for v in vcpus {
            assert_eq!(cpu_cgroup(qemu, v.tid), cgroup, "vCPU thread {}", v.tid);
        }
    }
    // Idle clones rest: a clone's agent once spun on its reconnected
    // channel, one vCPU at 100 % for as long as the sandbox lived.
    let idle = Duration::from_millis(1500);
    let (busy_a, busy_b) = tokio::join!(vcpu_busy_share(&sa, idle), vcpu_busy_share(&sb, idle));
    assert!(
        busy_a < 0.5 && busy_b < 0.5,
        "idle clones kept their vCPUs busy: {:.0} % and {:.0} %",
        busy_a * 100.0,
        busy_b * 100.0
    );
    tokio::join!(stop(sa), stop(sb));

    let factory = template_factory(&env);
    let report = factory.destroy(&capture.logger()).await.unwrap();
    assert!(report.had_template && report.unmounted, "{report:?}");
    assert_eq!(factory.status().unwrap(), TemplateStatus::Absent);
    let dir = factory.config().dir.clone();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert_unchanged_since_matching(&before, &[&dir.display().to_string(), &a, &b]);
}

/// A sandbox whose VM differs from the template (its memory) boots cold,
/// and the log says which field differed; one that matches is cloned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_boots_cold_and_names_the_field() {
    let _serial = vm_lock_async().await;
    let env = Env::new("tmpl-mis");
    let capture = LogCapture::new();
    let factory = template_factory(&env);
    factory
        .init(&env.config(FsShareKind::NineP, vec![]), &capture.logger())
        .await
        .unwrap();
    let factory: Arc<dyn VmFactory> = Arc::new(factory);

    let id = unique("bigger");
    let mut bigger = config(&env, &id, vec![env.bundle("main", &["echo", "cold"])]);
    bigger.vm.default_memory_mib += 128;
    let sandbox = create_sandbox(bigger, factory.clone(), capture.logger())
        .await
        .unwrap();
    let mismatches = capture.with_message("VM does not match the template: booting cold");
    assert_eq!(mismatches.len(), 1, "{}", capture.text());
    assert_eq!(
        mismatches[0].value("field"),
        Some("memory_mib"),
        "{mismatches:?}"
    );
    assert_eq!(capture.count("VM started from its template"), 0);
    assert_eq!(run(&sandbox, "main").await, ["cold"]);
    stop(sandbox).await;

    let id = unique("same");
    let same = config(&env, &id, vec![env.bundle("main", &["echo", "warm"])]);
    let sandbox = create_sandbox(same, factory.clone(), capture.logger())
        .await
        .unwrap();
    assert_eq!(capture.count("VM started from its template"), 1);
    assert_eq!(run(&sandbox, "main").await, ["warm"]);
    stop(sandbox).await;
    template_factory(&env)
        .destroy(&capture.logger())
        .await
        .unwrap();
}

/// Set in the re-executed test binary that makes a template and is
/// killed: `<test dir>`.
const INIT_CHILD_ENV: &str = "VC_FACTORY_INIT_CHILD";

/// When the process running `init` is killed: before and while it mounts,
/// while QEMU boots, around the save (about 5 s in here), after it.
const KILL_INIT_AFTER_MS: [u64; 7] = [0, 40, 300, 1500, 3500, 5500, 9000];

/// The body of the process killed during `init`: makes the template of
/// the test directory it is given, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process the init crash test starts and kills, not a test"]
async fn init_child_process() {
    let dir = std::env::var(INIT_CHILD_ENV).expect("run by the init crash test only");
    let dir = std::path::Path::new(&dir);
    let prototype = factory_support::sandbox_in(dir, "proto", vec![]);
    factory_support::template_factory_in(dir)
        .init(&prototype, &common::logger())
        .await
        .unwrap();
    println!("initialized");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// `init` killed with SIGKILL at several points: its VM dies with it, what
/// it left is never taken for a template, and the next `init` clears it
/// and makes a working one. Then `destroy` leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_killed_anywhere_is_rebuilt_and_never_used() {
    let _serial = vm_lock_async().await;
    let env = Env::new("tmpl-crash");
    let before = HostSnapshot::take();
    let factory = template_factory(&env);
    let dir = factory.config().dir.display().to_string();
    for ms in KILL_INIT_AFTER_MS {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "init_child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INIT_CHILD_ENV, env.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let finished = String::from_utf8_lossy(&out.stdout).contains("initialized");
        // The template VM died with its maker.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_naming(&dir).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "killed after {ms} ms: {:?} still run",
                processes_naming(&dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = factory.status().unwrap();
        eprintln!("init killed after {ms} ms: {status:?}");
        match status {
            TemplateStatus::Ready(_) => assert!(
                finished,
                "killed after {ms} ms: a half-made template reads as ready"
            ),
            status => assert!(!finished, "killed after {ms} ms, init done, yet {status:?}"),
        }
    }
    // Made again over what the last kill left: clones work.
    let capture = LogCapture::new();
    factory
        .init(&env.config(FsShareKind::NineP, vec![]), &capture.logger())
        .await
        .unwrap();
    let id = unique("after-crash");
    let sandbox = create_sandbox(
        config(&env, &id, vec![env.bundle("main", &["echo", "cloned"])]),
        Arc::new(template_factory(&env)),
        capture.logger(),
    )
    .await
    .unwrap();
    assert_eq!(
        capture.count("VM started from its template"),
        1,
        "{}",
        capture.text()
    );
    assert_eq!(run(&sandbox, "main").await, ["cloned"]);
    stop(sandbox).await;
    factory.destroy(&capture.logger()).await.unwrap();
    assert!(!factory.config().dir.exists());
    assert_unchanged_since_matching(&before, &[&dir, &id]);
}

/// The pool of an env's sandboxes: `size` VMs in `<test dir>/pool`.
fn pool_config(env: &Env, size: usize) -> PoolConfig {
    let mut config = PoolConfig::new(env.config(FsShareKind::NineP, vec![]), size);
    config.dir = env.dir.path().join("pool");
    config
}

async fn until_ready(pool: &VmPool, ready: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while pool.counts().ready < ready {
        assert!(
            std::time::Instant::now() < deadline,
            "pool stuck at {:?}",
            pool.counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pool of 2 whose VMs are warmed up: each VM ran the warm-up
/// container (it wrote a file into a host volume) before it joined the
/// pool; three sandboxes in a row each get a booted VM (the third waits
/// for a refill, which a waiting take starts at once) and run their
/// container; the pool refills, and its shutdown stops what it holds and
/// leaves nothing: no warm-up mount, file or process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_two_serves_three_sandboxes_in_a_row() {
    let _serial = vm_lock_async().await;
    let env = Env::new("pool");
    let before = HostSnapshot::take();
    let capture = LogCapture::new();
    let warmed = env.dir.path().join("warmed");
    std::fs::create_dir(&warmed).unwrap();
    let mut pool_config = pool_config(&env, 2);
    pool_config.warm_up = Some(env.bundle_of(
        "warm-up",
        ContainerSpec::new(
            shared_busybox_rootfs(),
            &["sh", "-c", "echo ran > /out/$(hostname)-$$-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' ')"],
        )
        .bind(&warmed, "/out", &["rbind", "rw"])
        .tmpfs("/dev", &[]),
    ));
    let pool = VmPool::start(pool_config, capture.logger()).await.unwrap();
    until_ready(&pool, 2).await;
    let warm_ups = || std::fs::read_dir(&warmed).unwrap().count();
    assert_eq!(warm_ups(), 2, "one warm-up per VM: {}", capture.text());
    let slots: Vec<_> = std::fs::read_dir(pool.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("share").is_dir())
        .map(|e| e.path().join("share"))
        .collect();
    assert_eq!(slots.len(), 2);
    for share in &slots {
        assert_eq!(
            std::fs::read_dir(share).unwrap().count(),
            0,
            "{} not empty after the warm-up",
            share.display()
        );
    }
    let factory: Arc<dyn VmFactory> = Arc::new(PoolFactory::local(pool.clone()));
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = unique(&format!("pooled{n}"));
        let word = format!("pooled-{n}");
        let config = config(&env, &id, vec![env.bundle("main", &["echo", &word])]);
        let started = std::time::Instant::now();
        let sandbox = create_sandbox(config, factory.clone(), capture.logger())
            .await
            .unwrap();
        eprintln!("sandbox {n} from the pool in {:?}", started.elapsed());
        assert_eq!(run(&sandbox, "main").await, [word]);
        stop(sandbox).await;
        ids.push(id);
    }
    assert_eq!(
        capture.count("VM taken from the pool"),
        3,
        "{}",
        capture.text()
    );
    let cold = capture
        .lines()
        .into_iter()
        .filter(|l| l.message.contains("booting cold"));
    assert_eq!(cold.count(), 0, "{}", capture.text());
    assert_eq!(pool.counts().handed_over, 3);
    until_ready(&pool, 2).await;
    assert_eq!(warm_ups(), 5, "the refills were warmed up too");
    pool.shutdown().await.unwrap();
    assert!(!pool.dir().exists(), "{} left", pool.dir().display());
    let dir = env.dir.path().display().to_string();
    assert_unchanged_since_matching(&before, &[&dir]);
}

/// Set in the re-executed test binary that takes a VM from a served
/// pool: `<test dir>\t<sandbox id>\t<socket>`.
const POOL_CLIENT_ENV: &str = "VC_FACTORY_POOL_CLIENT";

/// The body of another process: creates a sandbox (that outlives it) with
/// a VM from the pool at the socket it is given, runs its container once,
/// and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process the served pool test starts, not a test"]
async fn pool_client_process() {
    let spec = std::env::var(POOL_CLIENT_ENV).expect("run by the served pool test only");
    let mut parts = spec.split('\t');
    let (dir, id, socket) = (
        std::path::PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let bundle = ContainerSpec::new(shared_busybox_rootfs(), &["echo", "from-the-pool"])
        .cwd("/")
        .without_default_mounts()
        .proc_mount()
        .isolated()
        .save_bundle(&dir.join("bundles").join("client"));
    let container = virtcontainers::ContainerConfig::from_bundle(cid("main"), &bundle).unwrap();
    let mut config = factory_support::sandbox_in(&dir, &id, vec![container]);
    config.lifetime = virtcontainers::SandboxLifetime::UntilDeleted;
    let capture = LogCapture::new();
    let factory = PoolFactory::remote(
        socket,
        virtcontainers::vc_hypervisor::QemuOptions::default(),
    );
    let sandbox = create_sandbox(config, Arc::new(factory), capture.logger())
        .await
        .unwrap();
    println!("{}", run(&sandbox, "main").await.join(" "));
    println!("taken={}", capture.count("VM taken from the pool"));
}

/// A pool served over a unix socket: another process creates a sandbox
/// with one of its VMs; a third party (this process) fetches that sandbox
/// and cleans it up; the pool refills and its shutdown leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_pool_hands_a_vm_to_another_process() {
    let _serial = vm_lock_async().await;
    let env = Env::new("pool-srv");
    let before = HostSnapshot::take();
    let mut config = pool_config(&env, 1);
    config.outlive_owner = true;
    let pool = VmPool::start(config, common::logger()).await.unwrap();
    let socket = env.dir.path().join("pool.sock");
    let (stop_serving, serving) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (pool, socket) = (pool.clone(), socket.clone());
        tokio::spawn(async move {
            pool.serve(&socket, async {
                let _ = serving.await;
            })
            .await
        })
    };
    until_ready(&pool, 1).await;

    let id = unique("served");
    let spec = format!("{}\t{id}\t{}", env.dir.path().display(), socket.display());
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "pool_client_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(POOL_CLIENT_ENV, spec)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(stdout.contains("from-the-pool\n"), "{stdout}");
    assert!(stdout.contains("taken=1"), "{stdout}");

    let sandbox_id: virtcontainers::SandboxId = id.parse().unwrap();
    let fetched = virtcontainers::fetch_sandbox(
        &env.paths(),
        &sandbox_id,
        Arc::new(virtcontainers::QemuFactory::default()),
        common::logger(),
    )
    .await
    .unwrap();
    let vmm = fetched.status().await.unwrap().vmm_pid.unwrap();
    drop(fetched);
    let outcome = virtcontainers::cleanup_container(
        &env.paths(),
        &sandbox_id,
        &cid("main"),
        false,
        Arc::new(virtcontainers::QemuFactory::default()),
        common::logger(),
    )
    .await
    .unwrap();
    assert!(outcome.sandbox_removed);
    assert!(
        !std::path::Path::new(&format!("/proc/{vmm}")).exists(),
        "the VM outlived its cleanup"
    );
    until_ready(&pool, 1).await;
    stop_serving.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!socket.exists() && !pool.dir().exists());
    let dir = env.dir.path().display().to_string();
    assert_unchanged_since_matching(&before, &[&dir, &id]);
}

/// A sandbox in a CNI pod namespace gets a clone all the same (the
/// template has no NIC): the NIC for the pod's veth is hot-plugged once the
/// clone runs, and the container sees the veth's MAC and address and the
/// link's carrier. The namespace is left as CNI made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_in_a_pod_namespace_gets_its_nic_hot_plugged() {
    vc_test_support::require(vc_test_support::NETWORK_HOST);
    let _serial = vm_lock_async().await;
    let env = Env::new("tmpl-net");
    let bridge = vc_test_support::CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("tpod")).unwrap();
    let pod_before = vc_test_support::netns_snapshot(&pod.netns);
    let before = HostSnapshot::take();
    let capture = LogCapture::new();
    let factory = template_factory(&env);
    factory
        .init(&env.config(FsShareKind::NineP, vec![]), &capture.logger())
        .await
        .unwrap();

    let id = unique("netclone");
    // The carrier of a NIC plugged a moment ago may lag: up to 10 s.
    let script = "ip -o addr show eth0; \
         for i in $(seq 100); do ip -o link show eth0 | grep -q NO-CARRIER || break; sleep 0.1; done; \
         ip -o link show eth0";
    let mut config = config(&env, &id, vec![env.bundle("main", &["sh", "-c", script])]);
    config.network.netns = virtcontainers::NetnsConfig::Path(pod.netns.clone());
    let sandbox = create_sandbox(config, Arc::new(template_factory(&env)), capture.logger())
        .await
        .unwrap();
    assert_eq!(
        capture.count("VM started from its template"),
        1,
        "{}",
        capture.text()
    );
    let out = run(&sandbox, "main").await.join("\n");
    assert!(out.contains(&format!("link/ether {} ", pod.mac)), "{out}");
    assert!(out.contains(&format!("inet {}/24", pod.ip)), "{out}");
    let link = out.lines().last().unwrap_or_default();
    assert!(!link.contains("NO-CARRIER"), "{out}");
    stop(sandbox).await;
    factory.destroy(&capture.logger()).await.unwrap();
    assert_eq!(vc_test_support::netns_snapshot(&pod.netns), pod_before);
    let dir = env.dir.path().display().to_string();
    assert_unchanged_since_matching(&before, &[&dir, &id]);
}
