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
use factory_support::{Capture, template_factory};
use vc_test_support::{
    ContainerSpec, HostSnapshot, assert_unchanged_since_matching, shared_busybox_rootfs, unique,
    vm_lock_async,
};
use virtcontainers::{
    FsShareKind, Sandbox, SandboxConfig, TemplateStatus, VmFactory, create_sandbox,
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
    let capture = Capture::new();
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
    let capture = Capture::new();
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
    let line = capture
        .find("VM does not match the template: booting cold")
        .unwrap_or_else(|| panic!("no mismatch logged:\n{}", capture.text()));
    assert!(line.contains("field=memory_mib"), "{line}");
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
