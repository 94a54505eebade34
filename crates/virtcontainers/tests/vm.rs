//! The Sandbox API end to end: real QEMU (TCG here), the real guest agent
//! from `make guest-image`, busybox containers, host cgroups, 9p and
//! virtio-fs. Root needed. The tests run one at a time (two cores), and
//! each ends by checking that nothing of ours is left on the host: no
//! QEMU, no virtiofsd, no cgroup, no mount, no state or runtime directory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Env, cid, logger, read_all};

use oci_spec::runtime::ProcessBuilder;
use vc_test_support::{ContainerSpec, LogCapture, shared_busybox_rootfs, vm_lock_async};
use virtcontainers::{
    BootAdmission, ContainerPhase, Error, FsShareKind, Paths, QemuFactory, cleanup_container,
    create_sandbox, fetch_sandbox,
};

/// Set in the child process of the cross-process test.
const CHILD_ENV: &str = "VC_E2E_FETCH_CHILD";

/// The `run` example's path: create, start, stream, wait, stop, delete.
async fn run_path(share: FsShareKind, sandbox_cgroup_only: bool) {
    let _serial = vm_lock_async().await;
    let env = Env::new("run");
    let c = env.bundle(
        "main",
        &[
            "sh",
            "-c",
            "echo hello; cat /proc/version; echo oops >&2; exit 3",
        ],
    );
    let mut config = env.config(share, vec![c]);
    config.cgroups.as_mut().unwrap().sandbox_cgroup_only = sandbox_cgroup_only;
    let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger())
        .await
        .unwrap();
    let io = sandbox.start_container(&cid("main")).await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    let code = sandbox.wait_container(&cid("main")).await.unwrap();
    assert_eq!(code, 3);
    assert!(out.starts_with("hello\nLinux version "), "{out}");
    assert_eq!(err, "oops\n");
    let status = sandbox.status().await.unwrap();
    assert_eq!(status.containers[0].phase, ContainerPhase::Stopped);
    assert_eq!(status.containers[0].exit_code, Some(3));
    // Where the processes run: QEMU's vCPU threads in the sandbox cgroup,
    // its other threads and virtiofsd in the overhead cgroup (or all in the
    // sandbox cgroup).
    let sandbox_cg = status.sandbox_cgroup.clone().unwrap();
    let overhead_cg = status
        .overhead_cgroup
        .clone()
        .unwrap_or_else(|| sandbox_cg.clone());
    let qemu = status.vmm_pid.unwrap();
    assert_eq!(cpu_cgroup(qemu, qemu), overhead_cg);
    let vcpus = sandbox.hypervisor().vcpu_threads().await.unwrap();
    assert!(!vcpus.is_empty());
    for v in vcpus {
        assert_eq!(cpu_cgroup(qemu, v.tid), sandbox_cg, "vCPU thread {}", v.tid);
    }
    if share == FsShareKind::VirtioFs {
        let helpers = std::process::Command::new("pgrep")
            .args(["-f", &env.id])
            .output()
            .unwrap();
        let virtiofsd: Vec<u32> = String::from_utf8_lossy(&helpers.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&p: &u32| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("virtiofsd"))
            })
            .collect();
        assert!(!virtiofsd.is_empty(), "virtiofsd runs");
        for p in virtiofsd {
            assert_eq!(cpu_cgroup(p, p), overhead_cg, "virtiofsd {p}");
        }
    }
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    env.assert_clean();
}

/// The cgroup v1 `cpu` path of thread `tid` of `pid`.
fn cpu_cgroup(pid: u32, tid: u32) -> String {
    virtcontainers::vc_cgroups_host::thread_cgroup(pid, tid, "cpu").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_path_with_9p() {
    run_path(FsShareKind::NineP, false).await;
}

/// Everything, this process and QEMU included, in the sandbox cgroup with
/// its device allowlist: the VM still boots and runs the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_path_with_sandbox_cgroup_only() {
    let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    run_path(FsShareKind::VirtioFs, true).await;
    let after = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(
        !after.contains("/virtcontainers/"),
        "the runtime left the sandbox cgroup: {after}"
    );
    assert_ne!(before, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_path_with_virtio_fs() {
    run_path(FsShareKind::VirtioFs, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_and_cleanup_of_the_last_removes_the_sandbox() {
    let _serial = vm_lock_async().await;
    let env = Env::new("two");
    // The long one names its cgroup the systemd way (as containerd with
    // SystemdCgroup = true would), the short one the cgroupfs way.
    let containers = vec![
        env.bundle_of(
            "long",
            ContainerSpec::new(shared_busybox_rootfs(), &["sleep", "1000"])
                .cgroups_path("kubepods-pod1.slice:cri-containerd:long"),
        ),
        env.bundle_of(
            "short",
            ContainerSpec::new(shared_busybox_rootfs(), &["cat", "/proc/self/cgroup"])
                .cgroups_path("/kubepods/pod1/short"),
        ),
    ];
    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, containers),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    let short_out = sandbox.process_io(&cid("short"), None);
    sandbox.start().await.unwrap();
    assert_eq!(sandbox.wait_container(&cid("short")).await.unwrap(), 0);
    assert_eq!(
        read_all(short_out.stdout).await,
        "0::/kubepods/pod1/short\n",
        "the container runs in the cgroup its spec names"
    );
    // Both run in the same guest: the exec sees the long-running one's pid 1.
    let process = ProcessBuilder::default()
        .args(vec!["cat".to_owned(), "/proc/1/cmdline".to_owned()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .unwrap();
    let io = sandbox
        .exec(&cid("long"), &"probe".parse().unwrap(), &process)
        .await
        .unwrap();
    let out = read_all(io.stdout).await;
    assert_eq!(out, "sleep\u{0}1000\u{0}");
    let cgroup = ProcessBuilder::default()
        .args(vec!["cat".to_owned(), "/proc/self/cgroup".to_owned()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .unwrap();
    let io = sandbox
        .exec(&cid("long"), &"cg".parse().unwrap(), &cgroup)
        .await
        .unwrap();
    assert_eq!(
        read_all(io.stdout).await,
        "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-long.scope\n",
        "an exec joins its container's cgroup, the systemd path expanded"
    );
    assert_eq!(
        sandbox
            .wait_process(&cid("long"), Some(&"probe".parse().unwrap()))
            .await
            .unwrap(),
        0
    );

    let paths = env.paths();
    let first = cleanup_container(
        &paths,
        &env.id,
        &cid("short"),
        false,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert!(!first.sandbox_removed);
    assert_eq!(sandbox.containers().await.unwrap().len(), 1);
    let last = cleanup_container(
        &paths,
        &env.id,
        &cid("long"),
        false,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert!(last.sandbox_removed);
    drop(sandbox);
    env.assert_clean();
}

/// The child half of the cross-process test: fetch the sandbox named in
/// the environment, exec a command in its container, print the output.
async fn fetch_child(spec: &str) {
    let (root, id) = spec.split_once(':').unwrap();
    let sandbox = fetch_sandbox(
        &Paths::under(root),
        &id.parse().unwrap(),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    let process = ProcessBuilder::default()
        .args(vec!["echo".to_owned(), "from-another-process".to_owned()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .unwrap();
    let io = sandbox
        .exec(&cid("main"), &"child".parse().unwrap(), &process)
        .await
        .unwrap();
    print!("{}", read_all(io.stdout).await);
    assert_eq!(
        sandbox
            .wait_process(&cid("main"), Some(&"child".parse().unwrap()))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_sandbox_from_another_process() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return fetch_child(&spec).await;
    }
    let _serial = vm_lock_async().await;
    let env = Env::new("fetch");
    let c = env.bundle("main", &["sleep", "1000"]);
    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, vec![c]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start_container(&cid("main")).await.unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "fetch_sandbox_from_another_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}:{}", env.dir.path().display(), env.id),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(stdout.contains("from-another-process\n"), "{stdout}");
    // The handle that created the sandbox still drives it.
    assert_eq!(
        sandbox.container_status(&cid("main")).await.unwrap().phase,
        ContainerPhase::Running
    );
    let last = cleanup_container(
        &env.paths(),
        &env.id,
        &cid("main"),
        false,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert!(last.sandbox_removed);
    drop(sandbox);
    env.assert_clean();
}

/// QEMU killed with SIGKILL: every process sees the VM dead (status, a
/// typed fetch error), and a plain cleanup finishes the teardown (virtiofsd,
/// mounts, cgroups, state). Issue 10 made the plain cleanup succeed here;
/// before, it needed `force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_qemu_then_a_plain_cleanup_frees_everything() {
    let _serial = vm_lock_async().await;
    let env = Env::new("kill");
    let c = env.bundle("main", &["sleep", "1000"]);
    let sandbox = create_sandbox(
        env.config(FsShareKind::VirtioFs, vec![c]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start_container(&cid("main")).await.unwrap();
    let pid = sandbox.status().await.unwrap().vmm_pid.expect("QEMU runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut exit = sandbox.hypervisor().exit_watch();
    tokio::time::timeout(Duration::from_secs(10), exit.wait())
        .await
        .unwrap();

    let status = sandbox.status().await.unwrap();
    assert_eq!(status.phase, virtcontainers::SandboxPhase::VmDied);
    assert_eq!(status.vmm_pid, None, "the dead pid is not reported");
    let paths = env.paths();
    let fetched = fetch_sandbox(&paths, &env.id, Arc::new(QemuFactory::default()), logger()).await;
    assert!(
        matches!(&fetched, Err(Error::VmDied { pid: p, .. }) if *p == pid),
        "{fetched:?}"
    );
    let plain = cleanup_container(
        &paths,
        &env.id,
        &cid("main"),
        false,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert!(plain.sandbox_removed);
    drop(sandbox);
    env.assert_clean();
}

/// Boots beyond the admission limit wait their turn instead of all
/// booting at once: three sandboxes created together with one boot slot
/// all run their container, one boot after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_beyond_the_admission_limit_wait_their_turn() {
    let _serial = vm_lock_async().await;
    let env = Env::new("admit");
    let capture = LogCapture::new();
    let creates = ["a", "b", "c"].map(|tag| {
        let mut config = env.config(
            FsShareKind::NineP,
            vec![env.bundle("main", &["echo", "ok"])],
        );
        config.id = format!("{}-{tag}", env.id).parse().unwrap();
        config.vm.boot_admission = BootAdmission::Limit(std::num::NonZeroU32::MIN);
        let log = capture.logger().new(slog::o!("sandbox" => tag));
        async move {
            let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), log).await?;
            let io = sandbox.start_container(&cid("main")).await?;
            let out = read_all(io.stdout).await;
            let code = sandbox.wait_container(&cid("main")).await?;
            sandbox.stop(Duration::from_secs(5)).await?;
            sandbox.delete().await?;
            Ok::<_, Error>((out, code))
        }
    });
    let [a, b, c] = creates;
    let (a, b, c) = tokio::join!(a, b, c);
    for r in [a, b, c] {
        assert_eq!(r.unwrap(), ("ok\n".to_owned(), 0));
    }
    let taken = capture.with_message("boot slot taken");
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert!(
        taken.iter().all(|l| l.value("slot") == Some("0")),
        "{taken:?}"
    );
    let mut waits: Vec<u64> = taken
        .iter()
        .map(|l| l.value("waited_ms").unwrap().parse().unwrap())
        .collect();
    waits.sort_unstable();
    // A boot to agent-ready takes seconds under TCG: the second and third
    // waited for at least one and two of them.
    assert!(waits[1] >= 500 && waits[2] >= waits[1] + 500, "{waits:?}");
    env.assert_clean();
}
