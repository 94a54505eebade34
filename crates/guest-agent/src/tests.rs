//! The agent on the host, for real (root needed): a busybox container from
//! a spec in a temp dir, driven through ttrpc by the real client.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{MountBuilder, ProcessBuilder, RootBuilder, Spec};
use vc_agent_client::protocol::{agent as pb, convert};
use vc_agent_client::{Agent as _, AgentConfig, AgentError, Transport, TtrpcAgent};
use vc_test_support::{ContainerSpec, Need};

use crate::Agent;
use crate::reaper::ReapMode;

const APPLETS: [&str; 12] = [
    "sh", "echo", "cat", "sleep", "id", "pwd", "env", "hostname", "ls", "true", "false", "ps",
];

/// A busybox rootfs: /bin/busybox and applet links, and mount points.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "work"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    root
}

fn spec(root: &Path, args: &[&str]) -> Spec {
    ContainerSpec::new(root, args)
        .version("1.0.2")
        .hostname("inside")
        .env("FOO=bar baz")
        .cwd("/work")
        .user(1234, 567, &[89])
        .no_rlimits()
        .isolated()
        .proc_mount()
        .tmpfs("/dev", &["nosuid", "mode=755"])
        .build()
}

struct Harness {
    _dir: tempfile::TempDir,
    root: PathBuf,
    agent: Arc<TtrpcAgent>,
    guest: Agent,
    server: ttrpc::r#async::Server,
}

impl Harness {
    async fn new() -> Harness {
        // Namespaces and mounts need root; the rootfs needs busybox.
        vc_test_support::require(&[Need::Root, Need::Busybox]);
        let dir = tempfile::tempdir().unwrap();
        let root = rootfs(dir.path());
        let guest = Agent::new(
            ReapMode::Registered,
            None,
            slog::Logger::root(slog::Discard, slog::o!()),
        )
        .unwrap();
        let sock = dir.path().join("agent.sock");
        let server = guest.serve_unix(&sock).await.unwrap();
        let config = AgentConfig {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            ..AgentConfig::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let agent = Arc::new(
            TtrpcAgent::connect(Transport::Serial { socket: sock }, config, &logger)
                .await
                .unwrap(),
        );
        Harness {
            _dir: dir,
            root,
            agent,
            guest,
            server,
        }
    }

    async fn create(&self, id: &str, args: &[&str]) -> vc_agent_client::Result<()> {
        self.create_spec(id, spec(&self.root, args)).await
    }

    async fn create_spec(&self, id: &str, spec: Spec) -> vc_agent_client::Result<()> {
        self.agent
            .create_container(vc_test_support::agent::create_request(id, &spec))
            .await
    }

    /// Runs a container to its end: (stdout, stderr, exit code).
    async fn run(&self, id: &str, args: &[&str]) -> (String, String, i32) {
        self.create(id, args).await.unwrap();
        self.agent.start_container(id).await.unwrap();
        let (out, err) = self.output(id, id).await;
        let code = self.agent.wait_process(id, id).await.unwrap();
        (out, err, code)
    }

    async fn output(&self, cid: &str, eid: &str) -> (String, String) {
        vc_test_support::agent::read_output(self.agent.clone(), cid, eid).await
    }

    async fn remove(&self, id: &str) {
        let mut req = pb::RemoveContainerRequest::new();
        req.container_id = id.into();
        req.timeout = 10;
        self.agent.remove_container(req).await.unwrap();
    }

    async fn finish(mut self) {
        assert!(
            self.guest.sandbox().container_ids().is_empty(),
            "containers left: {:?}",
            self.guest.sandbox().container_ids()
        );
        drop(self.agent);
        self.server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_exit_codes_env_cwd_user_hostname() {
    let h = Harness::new().await;
    let (out, err, code) = h.run("echo", &["echo", "hello"]).await;
    assert_eq!((out.as_str(), err.as_str(), code), ("hello\n", "", 0));
    h.remove("echo").await;

    let (_, _, code) = h.run("three", &["sh", "-c", "exit 3"]).await;
    assert_eq!(code, 3);
    h.remove("three").await;

    let (out, err, code) = h
        .run(
            "ids",
            &[
                "sh",
                "-c",
                "echo \"$FOO\"; pwd; id -u; id -g; id -G; hostname; echo $$; echo oops >&2",
            ],
        )
        .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(out, "bar baz\n/work\n1234\n567\n567 89\ninside\n1\n");
    assert_eq!(err, "oops\n");
    h.remove("ids").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_comes_back_and_kill_reports_137() {
    let h = Harness::new().await;
    h.create("cat", &["cat"]).await.unwrap();
    h.agent.start_container("cat").await.unwrap();
    assert_eq!(
        h.agent
            .write_stdin("cat", "cat", b"ping\npong\n")
            .await
            .unwrap(),
        10
    );
    h.agent.close_stdin("cat", "cat").await.unwrap();
    let (out, _) = h.output("cat", "cat").await;
    assert_eq!(out, "ping\npong\n");
    assert_eq!(h.agent.wait_process("cat", "cat").await.unwrap(), 0);
    h.remove("cat").await;

    h.create("sleeper", &["sleep", "100"]).await.unwrap();
    h.agent.start_container("sleeper").await.unwrap();
    // A second process in the container's namespaces sees its pid 1 and hostname.
    let mut exec = pb::ExecProcessRequest::new();
    exec.container_id = "sleeper".into();
    exec.exec_id = "probe".into();
    let p = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".into(),
            "cat /proc/1/cmdline; echo; hostname; pwd".into(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/tmp")
        .rlimits(vec![])
        .build()
        .unwrap();
    exec.process = protobuf::MessageField::some(convert::process_to_proto(&p).unwrap());
    h.agent.exec_process(exec).await.unwrap();
    let (out, err) = h.output("sleeper", "probe").await;
    assert_eq!(
        h.agent.wait_process("sleeper", "probe").await.unwrap(),
        0,
        "stderr: {err}"
    );
    assert_eq!(out, "sleep\u{0}100\u{0}\ninside\n/tmp\n");

    h.agent
        .signal_process("sleeper", "sleeper", vc_types::Signal::KILL)
        .await
        .unwrap();
    assert_eq!(
        h.agent.wait_process("sleeper", "sleeper").await.unwrap(),
        137
    );
    h.remove("sleeper").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let h = Harness::new().await;
    match h.create("ghost", &["no-such-binary"]).await {
        Err(AgentError::Rpc { code, message, .. }) => {
            assert_eq!(code, ttrpc::Code::INTERNAL);
            assert!(message.contains("executable lookup"), "{message}");
            assert!(message.contains("No such file"), "{message}");
        }
        other => panic!("expected an Rpc error, got {other:?}"),
    }
    h.agent.check().await.unwrap();
    assert!(h.guest.sandbox().container_ids().is_empty());

    let mut s = spec(&h.root, &["true"]);
    s.root().clone().unwrap();
    s.set_root(Some(
        RootBuilder::default()
            .path("/nonexistent/rootfs")
            .build()
            .unwrap(),
    ));
    let err = h.create_spec("noroot", s).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("rootfs /nonexistent/rootfs does not exist"),
        "{err}"
    );

    let mut s = spec(&h.root, &["true"]);
    let mut p = s.process().clone().unwrap();
    p.set_cwd("/no/such/dir".into());
    s.set_process(Some(p));
    let err = h.create_spec("nocwd", s).await.unwrap_err();
    assert!(err.to_string().contains("process.cwd"), "{err}");

    let err = h.create("../escape", &["true"]).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Rpc {
                code: ttrpc::Code::INVALID_ARGUMENT,
                ..
            }
        ),
        "{err:?}"
    );

    let mut req = pb::CreateContainerRequest::new();
    req.container_id = "nospec".into();
    let err = h.agent.create_container(req).await.unwrap_err();
    assert!(err.to_string().contains("no OCI spec"), "{err}");

    let err = h.agent.start_container("nope").await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Rpc {
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        ),
        "{err:?}"
    );
    let err = h.agent.wait_process("nope", "x").await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Rpc {
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        ),
        "{err:?}"
    );

    // Created, never started, then removed: its waiting process goes away.
    h.create("idle", &["true"]).await.unwrap();
    assert!(h.create("idle", &["true"]).await.is_err(), "duplicate id");
    h.remove("idle").await;

    h.agent.check().await.unwrap();
    h.finish().await;
}

/// Symlinks in the image cannot make the agent create or mount anything
/// outside the rootfs: mount targets resolve inside it, as they will for the
/// container after `pivot_root`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_targets_resolve_inside_the_rootfs() {
    let h = Harness::new().await;
    // `rootfs/../outside` is a host directory beside the rootfs.
    let outside = h.root.parent().unwrap().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(h.root.join("outside")).unwrap();
    symlink("../outside", h.root.join("rel")).unwrap();
    symlink(&outside, h.root.join("abs")).unwrap();
    symlink("/outside", h.root.join("rooted")).unwrap();

    // And a read-only bind through the same resolution (remount on the
    // resolved target).
    let shared = h.root.parent().unwrap().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), "shared\n").unwrap();
    symlink("busybox", h.root.join("bin/cut")).unwrap();

    let mut s = spec(
        &h.root,
        &[
            "sh",
            "-c",
            "grep -o ' /[a-z/-]* tmpfs' /proc/mounts; cat /data/f; \
             grep ' /data ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
        ],
    );
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(&shared)
            .options(vec!["rbind".to_string(), "ro".into(), "rprivate".into()])
            .build()
            .unwrap(),
    );
    for dest in ["/rel/made-rel", "/rooted/made-rooted"] {
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        );
    }
    s.set_mounts(Some(mounts));
    h.create_spec("links", s).await.unwrap();
    h.agent.start_container("links").await.unwrap();
    let (out, err) = h.output("links", "links").await;
    assert_eq!(
        h.agent.wait_process("links", "links").await.unwrap(),
        0,
        "{err}"
    );
    // Both land in the rootfs's own /outside, where the container sees them
    // (and the default spec's masked /proc/acpi directory is a tmpfs).
    assert_eq!(
        out,
        " /dev tmpfs\n /outside/made-rel tmpfs\n /outside/made-rooted tmpfs\n /proc/acpi tmpfs\nshared\nro\n"
    );
    assert!(h.root.join("outside/made-rel").is_dir());
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "created outside the rootfs"
    );
    h.remove("links").await;

    // A symlink to a host path that the rootfs lacks: refused, nothing made.
    let mut s = spec(&h.root, &["true"]);
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/abs/made-abs")
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap(),
    );
    s.set_mounts(Some(mounts));
    let err = h.create_spec("abs", s).await.unwrap_err();
    assert!(err.to_string().contains("creating a mount target"), "{err}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "created outside the rootfs"
    );
    h.agent.check().await.unwrap();
    h.finish().await;
}

/// A created container waits for its start holding no descriptor of the
/// agent's: closing another container's stdin meanwhile reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_container_holds_no_other_pipes() {
    let h = Harness::new().await;
    h.create("reader", &["cat"]).await.unwrap();
    h.agent.start_container("reader").await.unwrap();
    h.create("waiting", &["true"]).await.unwrap();
    h.agent
        .write_stdin("reader", "reader", b"x\n")
        .await
        .unwrap();
    h.agent.close_stdin("reader", "reader").await.unwrap();
    let (out, _) = tokio::time::timeout(Duration::from_secs(10), h.output("reader", "reader"))
        .await
        .expect("cat never saw the end of its stdin: another child holds the pipe");
    assert_eq!(out, "x\n");
    assert_eq!(h.agent.wait_process("reader", "reader").await.unwrap(), 0);
    h.remove("reader").await;
    h.remove("waiting").await;
    h.finish().await;
}

/// CreateSandbox mounts the sandbox's storages (all or none) and
/// DestroySandbox unmounts them and removes the mount points it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_storages_live_until_destroy() {
    let h = Harness::new().await;
    let base = h.root.parent().unwrap().join("sandbox");
    let storage = |name: &str, fstype: &str| {
        let mut s = pb::Storage::new();
        s.driver = "ephemeral".into();
        s.fstype = fstype.into();
        s.mount_point = base.join(name).display().to_string();
        s
    };
    let mut req = pb::CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    req.storages = vec![storage("a", "tmpfs"), storage("b", "no-such-fs")];
    let err = h.agent.create_sandbox(req.clone()).await.unwrap_err();
    assert!(err.to_string().contains("mounting storage"), "{err}");
    assert!(
        !base.exists(),
        "a failed CreateSandbox left its mount points"
    );

    req.storages = vec![storage("a", "tmpfs"), storage("b", "tmpfs")];
    h.agent.create_sandbox(req).await.unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!(" {} ", base.join("b").display())),
        "not mounted"
    );
    h.agent.destroy_sandbox().await.unwrap();
    assert!(!base.exists(), "DestroySandbox left its mount points");
    h.finish().await;
}

/// The vsock listener's address is the one Kata's runtime dials (port 1024,
/// any CID), and it is set up only where `/dev/vsock` exists.
#[test]
fn vsock_listener_setup() {
    assert_eq!(crate::vsock_address(crate::VSOCK_PORT), "vsock://-1:1024");
    let dev = tempfile::tempdir().unwrap();
    assert!(!crate::has_vsock(dev.path()));
    std::fs::write(dev.path().join("vsock"), "").unwrap();
    assert!(crate::has_vsock(dev.path()));
}

/// Binding the listener needs the vsock address family (the host's
/// `vsock` module): the agent listens as it does in a guest.
#[tokio::test]
async fn vsock_listener_binds() {
    // SAFETY: socket(2) with constant arguments; closed at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    assert!(
        fd >= 0,
        "this test needs the vsock address family on the host (modprobe vsock): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: closes the probe socket.
    unsafe { libc::close(fd) };
    let agent = Agent::new(
        ReapMode::Registered,
        None,
        slog::Logger::root(slog::Discard, slog::o!()),
    )
    .unwrap();
    // A free port: 1024 may be taken by the host's own agent.
    let mut server = agent.serve_vsock(0x7654_3210).await.unwrap();
    server.shutdown().await.unwrap();
}

/// A `linux.devices` node goes in the container's `/dev` tmpfs, never in
/// the rootfs under it (on the host, the shared directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_go_in_the_dev_tmpfs_not_the_rootfs() {
    let h = Harness::new().await;
    let mut spec = spec(&h.root, &["sh", "-c", "ls -l /dev/probe"]);
    let probe = oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/probe")
        .typ(oci_spec::runtime::LinuxDeviceType::C)
        .major(1i64)
        .minor(3i64)
        .build()
        .unwrap();
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_devices(Some(vec![probe]));
    spec.set_linux(Some(linux));
    h.create_spec("probe", spec).await.unwrap();
    h.agent.start_container("probe").await.unwrap();
    let (out, err) = h.output("probe", "probe").await;
    assert_eq!(
        h.agent.wait_process("probe", "probe").await.unwrap(),
        0,
        "{err}"
    );
    assert!(out.starts_with('c'), "{out}");
    assert!(
        !h.root.join("dev/probe").exists(),
        "the node was made in the rootfs: {}",
        h.root.join("dev/probe").display()
    );
    h.remove("probe").await;
    h.finish().await;
}
