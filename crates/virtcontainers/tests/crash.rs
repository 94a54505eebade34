//! Crash safety of `create_sandbox`: the creating process is killed with
//! SIGKILL at many points spread over the whole of its run (before the
//! state exists, during the cgroups, the share, QEMU's boot, the agent's
//! connection, the containers, and after it finished), then a fresh
//! process runs `reclaim_stale`: the host's cgroups, processes, mounts,
//! loop devices, sockets and state files must be exactly as before, at
//! every point, for both filesystem shares (with a network namespace the
//! SDK makes, the default), and for a sandbox in a pod namespace CNI set
//! up, which must be left exactly as CNI made it (links, qdiscs,
//! filters). Root, QEMU and the guest image needed (and the CNI plugins).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vc_test_support::{
    CniBridge, ContainerSpec, HostSnapshot, NETWORK_HOST, assert_unchanged_since_matching,
    netns_snapshot, require, require_sandbox_host, shared_busybox_rootfs, unique, unmount_under,
    vm_lock_async,
};
use virtcontainers::{
    ContainerConfig, FsShareConfig, FsShareKind, NetnsConfig, Paths, QemuFactory, SandboxConfig,
    SandboxId, VmConfig, create_sandbox, reclaim_stale,
};

/// Set in the re-executed test binary that creates a sandbox and is
/// killed: `<root>\t<id>\t<share>\t<netns path, or empty>`.
const CREATOR_ENV: &str = "VC_CRASH_CREATOR";
/// Set in the re-executed test binary that reclaims: `<root>`.
const RECLAIMER_ENV: &str = "VC_CRASH_RECLAIMER";

/// When the creator is killed, after it starts: spread over the whole of
/// `create_sandbox` (about 3.5 s to a created sandbox under TCG here),
/// and once after it finished.
const KILL_AFTER_MS: [u64; 13] = [0, 3, 10, 30, 60, 100, 200, 400, 800, 1500, 2500, 3500, 6000];

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn share_name(share: FsShareKind) -> &'static str {
    match share {
        FsShareKind::NineP => "9p",
        _ => "virtio-fs",
    }
}

/// The creator's body: create the sandbox (VM dies with this process,
/// the default lifetime), then hold it until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process the crash tests start and kill, not a test"]
async fn creator_process() {
    let spec = std::env::var(CREATOR_ENV).expect("run by the crash tests only");
    let mut parts = spec.split('\t');
    let (root, id, share, netns) = (
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().parse::<SandboxId>().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or_default(),
    );
    let image = require_sandbox_host();
    let bundle = ContainerSpec::new(shared_busybox_rootfs(), &["sleep", "1000"])
        .cwd("/")
        .without_default_mounts()
        .proc_mount()
        .isolated()
        .save_bundle(&root.join("bundle"));
    let mut config = SandboxConfig::new(id, VmConfig::new(&image.vmlinux, &image.initramfs));
    config.paths = Paths::under(&root);
    config.fs_share = FsShareConfig {
        kind: if share == "9p" {
            FsShareKind::NineP
        } else {
            FsShareKind::VirtioFs
        },
        virtiofsd: None,
    };
    if !netns.is_empty() {
        config.network.netns = NetnsConfig::Path(netns.into());
    }
    config
        .containers
        .push(ContainerConfig::from_bundle("main".parse().unwrap(), &bundle).unwrap());
    let _sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger())
        .await
        .unwrap();
    println!("created");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

/// The reclaimer's body: a fresh process frees what the dead creator left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process the crash tests start, not a test"]
async fn reclaimer_process() {
    let root = std::env::var(RECLAIMER_ENV).expect("run by the crash tests only");
    let report = reclaim_stale(&Paths::under(&root), logger()).await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(report.alive.is_empty(), "{report:?}");
    println!("reclaimed {}", report.reclaimed.len());
}

fn reexec(test: &str, env: (&str, &str)) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(env.0, env.1)
    .stdin(Stdio::null());
    cmd
}

/// Kills a creator after `after` and reclaims in a fresh process; the
/// host must be as `before`, and the pod namespace (if any) as CNI made
/// it.
fn kill_and_reclaim(
    share: FsShareKind,
    after: Duration,
    before: &HostSnapshot,
    pod: Option<(&Path, &str)>,
) {
    let root = tempfile::Builder::new()
        .prefix("vccrash")
        .tempdir_in("/tmp")
        .unwrap();
    let id = unique("crash");
    let netns = pod
        .map(|(p, _)| p.display().to_string())
        .unwrap_or_default();
    let spec = format!(
        "{}\t{id}\t{}\t{netns}",
        root.path().display(),
        share_name(share)
    );
    let mut creator = reexec("creator_process", (CREATOR_ENV, &spec))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    std::thread::sleep(after);
    let _ = creator.kill();
    let status = creator.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the creator ended on its own before {after:?} ({status}): it failed"
    );
    let elapsed = started.elapsed();

    let out = reexec(
        "reclaimer_process",
        (RECLAIMER_ENV, &root.path().display().to_string()),
    )
    .output()
    .unwrap();
    let context = format!(
        "{} share, creator killed after {elapsed:?}",
        share_name(share)
    );
    assert!(
        out.status.success(),
        "{context}: reclaim failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let state_root = Paths::under(root.path()).state_root;
    let left: Vec<_> = std::fs::read_dir(&state_root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .flat_map(|p| {
            let inner: Vec<_> = std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            std::iter::once(p).chain(inner)
        })
        .collect();
    assert!(
        left.is_empty(),
        "{context}: state left in {}: {left:?}",
        state_root.display()
    );
    let dir = root.path().display().to_string();
    assert_unchanged_since_matching(before, &[&id, &dir]);
    if let Some((netns, as_cni_made_it)) = pod {
        assert_eq!(
            netns_snapshot(netns),
            as_cni_made_it,
            "{context}: the pod's namespace changed"
        );
    }
    assert_no_file_left(root.path(), &context);
    unmount_under(root.path());
}

/// Nothing but the test's own bundle is left in its directory: no socket,
/// log, share or state file.
fn assert_no_file_left(root: &Path, context: &str) {
    let mut left = Vec::new();
    for sub in ["sbs", "vm", "shared"] {
        let dir = root.join(sub);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            left.push(entry.path());
        }
    }
    assert!(left.is_empty(), "{context}: left behind: {left:?}");
}

async fn kill_at_every_point(share: FsShareKind) {
    require_sandbox_host();
    let _serial = vm_lock_async().await;
    let before = HostSnapshot::take();
    tokio::task::spawn_blocking(move || {
        for ms in KILL_AFTER_MS {
            kill_and_reclaim(share, Duration::from_millis(ms), &before, None);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_anywhere_in_create_then_reclaim_leaves_nothing_9p() {
    kill_at_every_point(FsShareKind::NineP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_anywhere_in_create_then_reclaim_leaves_nothing_virtio_fs() {
    kill_at_every_point(FsShareKind::VirtioFs).await;
}

/// A sandbox in a pod namespace that CNI's `bridge` plugin set up: killed
/// at every point, then reclaimed, the namespace holds exactly what CNI
/// put there (no tap, qdisc or filter of ours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_anywhere_in_create_with_a_cni_network_then_reclaim_leaves_it_as_cni_made_it() {
    require_sandbox_host();
    require(NETWORK_HOST);
    let _serial = vm_lock_async().await;
    let bridge = CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("crash-pod")).unwrap();
    let as_cni_made_it = netns_snapshot(&pod.netns);
    let before = HostSnapshot::take();
    let netns = pod.netns.clone();
    tokio::task::spawn_blocking(move || {
        for ms in KILL_AFTER_MS {
            kill_and_reclaim(
                FsShareKind::NineP,
                Duration::from_millis(ms),
                &before,
                Some((&netns, &as_cni_made_it)),
            );
        }
    })
    .await
    .unwrap();
}
