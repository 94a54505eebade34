//! A sandbox any process can finish: created in process A, started and
//! exec'd in B, cleaned up in C, with A gone (a CLI's model: the VM lives
//! until deleted) or alive (a shim's model: the VM dies with A), for both
//! filesystem shares; and two processes racing the same cleanup. Nothing
//! may leak. Root, QEMU and the guest image needed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use vc_test_support::{
    ContainerSpec, HostSnapshot, assert_unchanged_since_matching, require_sandbox_host,
    shared_busybox_rootfs, unique, unmount_under, vm_lock_async,
};
use virtcontainers::{
    ContainerConfig, Error, FsShareConfig, FsShareKind, Paths, QemuFactory, SandboxConfig,
    SandboxId, SandboxLifetime, VmConfig, cleanup_container, create_sandbox, fetch_sandbox,
};

/// The role of a re-executed test binary and its arguments:
/// `<role>\t<root>\t<id>[\t<share>\t<lifetime>]`.
const ROLE_ENV: &str = "VC_PROCESSES_ROLE";

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn main_id() -> virtcontainers::ContainerId {
    "main".parse().unwrap()
}

/// The body of every child process: create (and exit, or hold), start and
/// exec, or clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of the child processes the tests start, not a test"]
async fn child_process() {
    let spec = std::env::var(ROLE_ENV).expect("run by the process tests only");
    let parts: Vec<&str> = spec.split('\t').collect();
    let (role, root, id) = (
        parts[0],
        PathBuf::from(parts[1]),
        parts[2].parse::<SandboxId>().unwrap(),
    );
    let paths = Paths::under(&root);
    match role {
        "create-and-exit" | "create-and-hold" => {
            let config = sandbox_config(&root, &id, parts[3], parts[4]);
            let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger())
                .await
                .unwrap();
            println!("created");
            if role == "create-and-hold" {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            // Exits dropping the handle: with UntilDeleted, the VM stays.
            drop(sandbox);
        }
        "start-and-exec" => {
            let sandbox = fetch_sandbox(&paths, &id, Arc::new(QemuFactory::default()), logger())
                .await
                .unwrap();
            let mut io = sandbox.start_container(&main_id()).await.unwrap();
            let mut line = [0u8; 8];
            io.stdout.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"started\n");
            let process = oci_spec::runtime::ProcessBuilder::default()
                .args(vec!["sh".into(), "-c".into(), "echo from-B; exit 4".into()])
                .env(vec!["PATH=/bin".to_owned()])
                .cwd("/")
                .build()
                .unwrap();
            let exec = "probe".parse().unwrap();
            let mut io = sandbox.exec(&main_id(), &exec, &process).await.unwrap();
            let mut out = String::new();
            io.stdout.read_to_string(&mut out).await.unwrap();
            assert_eq!(out, "from-B\n");
            assert_eq!(
                sandbox.wait_process(&main_id(), Some(&exec)).await.unwrap(),
                4
            );
            println!("started");
        }
        "cleanup" => {
            let outcome = cleanup_container(
                &paths,
                &id,
                &main_id(),
                false,
                Arc::new(QemuFactory::default()),
                logger(),
            )
            .await;
            match outcome {
                Ok(o) => {
                    assert!(o.sandbox_removed);
                    println!("removed");
                }
                Err(Error::NotFound { .. }) => println!("not-found"),
                Err(e) => panic!("cleanup: {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn sandbox_config(root: &Path, id: &SandboxId, share: &str, lifetime: &str) -> SandboxConfig {
    let image = require_sandbox_host();
    let bundle = ContainerSpec::new(
        shared_busybox_rootfs(),
        &["sh", "-c", "echo started; exec sleep 1000"],
    )
    .cwd("/")
    .without_default_mounts()
    .proc_mount()
    .isolated()
    .save_bundle(&root.join("bundle"));
    let mut config =
        SandboxConfig::new(id.clone(), VmConfig::new(&image.vmlinux, &image.initramfs));
    config.paths = Paths::under(root);
    config.fs_share = FsShareConfig {
        kind: match share {
            "9p" => FsShareKind::NineP,
            _ => FsShareKind::VirtioFs,
        },
        virtiofsd: None,
    };
    config.lifetime = match lifetime {
        "until-deleted" => SandboxLifetime::UntilDeleted,
        _ => SandboxLifetime::DiesWithOwner,
    };
    config
        .containers
        .push(ContainerConfig::from_bundle(main_id(), &bundle).unwrap());
    config
}

fn child(role: &str, root: &Path, id: &str, rest: &[&str]) -> Command {
    let mut args = vec![role.to_owned(), root.display().to_string(), id.to_owned()];
    args.extend(rest.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, args.join("\t"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// Runs a child to its end; it must succeed and print `expect`.
fn finish(cmd: &mut Command, expect: &str) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(expect),
        "{cmd:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits for a holding creator to print "created".
fn wait_created(creator: &mut Child) {
    use std::io::BufRead;
    let stdout = creator.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("created") => return,
            Some(Ok(_)) => {}
            other => panic!("the creator ended without creating: {other:?}"),
        }
    }
}

async fn a_then_b_then_c(share: &str, owner_lives: bool) {
    require_sandbox_host();
    let _serial = vm_lock_async().await;
    let share = share.to_owned();
    tokio::task::spawn_blocking(move || {
        let before = HostSnapshot::take();
        let root = tempfile::Builder::new()
            .prefix("vcprocs")
            .tempdir_in("/tmp")
            .unwrap();
        let id = unique("procs");
        let mut holder = None;
        if owner_lives {
            let mut a = child(
                "create-and-hold",
                root.path(),
                &id,
                &[&share, "dies-with-owner"],
            )
            .spawn()
            .unwrap();
            wait_created(&mut a);
            holder = Some(a);
        } else {
            finish(
                &mut child(
                    "create-and-exit",
                    root.path(),
                    &id,
                    &[&share, "until-deleted"],
                ),
                "created",
            );
        }
        finish(
            &mut child("start-and-exec", root.path(), &id, &[]),
            "started",
        );
        finish(&mut child("cleanup", root.path(), &id, &[]), "removed");
        if let Some(mut a) = holder {
            // A still holds its handle; the sandbox is gone under it.
            assert!(a.try_wait().unwrap().is_none(), "A died");
            let _ = a.kill();
            let _ = a.wait();
        }
        let dir = root.path().display().to_string();
        assert_unchanged_since_matching(&before, &[&id, &dir]);
        unmount_under(root.path());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_a_that_exits_start_in_b_clean_in_c_9p() {
    a_then_b_then_c("9p", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_a_that_exits_start_in_b_clean_in_c_virtio_fs() {
    a_then_b_then_c("virtio-fs", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_a_that_lives_start_in_b_clean_in_c_9p() {
    a_then_b_then_c("9p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_a_that_lives_start_in_b_clean_in_c_virtio_fs() {
    a_then_b_then_c("virtio-fs", true).await;
}

/// Two processes clean up the same last container at once, while the
/// creator lives: one removes the sandbox, the other finds it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_the_same_cleanup() {
    require_sandbox_host();
    let _serial = vm_lock_async().await;
    tokio::task::spawn_blocking(|| {
        for share in ["9p", "virtio-fs"] {
            let before = HostSnapshot::take();
            let root = tempfile::Builder::new()
                .prefix("vcrace")
                .tempdir_in("/tmp")
                .unwrap();
            let id = unique("race");
            let mut a = child(
                "create-and-hold",
                root.path(),
                &id,
                &[share, "dies-with-owner"],
            )
            .spawn()
            .unwrap();
            wait_created(&mut a);
            let c1 = child("cleanup", root.path(), &id, &[]).spawn().unwrap();
            let c2 = child("cleanup", root.path(), &id, &[]).spawn().unwrap();
            let mut outcomes = Vec::new();
            for c in [c1, c2] {
                let out = c.wait_with_output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "{share}: a cleanup failed: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                outcomes.push(if stdout.contains("removed") {
                    "removed"
                } else {
                    "not-found"
                });
            }
            outcomes.sort();
            assert_eq!(outcomes, ["not-found", "removed"], "{share}");
            let _ = a.kill();
            let _ = a.wait();
            let dir = root.path().display().to_string();
            assert_unchanged_since_matching(&before, &[&id, &dir]);
            unmount_under(root.path());
        }
    })
    .await
    .unwrap();
}
