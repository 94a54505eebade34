//! The Sandbox API end to end: real QEMU (TCG here), the real guest agent
//! from `make guest-image`, busybox containers, host cgroups, 9p and
//! virtio-fs. Root needed. The tests run one at a time (two cores), and
//! each ends by checking that nothing of ours is left on the host: no
//! QEMU, no virtiofsd, no cgroup, no mount, no state or runtime directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder,
};
use tokio::io::AsyncReadExt;
use virtcontainers::vc_device_manager::DeviceManager;
use virtcontainers::{
    CgroupsConfig, ContainerConfig, ContainerPhase, Error, FsShareConfig, FsShareKind, Paths,
    QemuFactory, SandboxConfig, VmConfig, cleanup_container, create_sandbox, fetch_sandbox,
};

/// Set in the child process of the cross-process test.
const CHILD_ENV: &str = "VC_E2E_FETCH_CHILD";

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn image_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("vc-guest-agent-image")
}

/// Fails, naming what is missing, unless this host can run the VM tests.
fn require_vm_host() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    if !Path::new(vc_hypervisor_binary()).exists() {
        missing.push(format!(
            "{} (apt-get install qemu-system-x86)",
            vc_hypervisor_binary()
        ));
    }
    for f in ["vmlinux", "initramfs.cpio"] {
        if !image_dir().join(f).exists() {
            missing.push(format!(
                "{} (run `make guest-image`)",
                image_dir().join(f).display()
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)".into());
    }
    assert!(
        missing.is_empty(),
        "the VM tests need: {}",
        missing.join("; ")
    );
}

fn vc_hypervisor_binary() -> &'static str {
    virtcontainers::vc_hypervisor::DEFAULT_QEMU_BINARY
}

/// One VM test at a time: two cores, TCG.
fn serial() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "e2e-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A busybox rootfs shared by the tests (built once, under target/).
fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vc-e2e-rootfs");
        if !dir.join("bin/busybox").is_file() {
            vc_guest_image::rootfs::busybox_rootfs(
                &dir,
                Path::new(vc_guest_image::rootfs::DEFAULT_BUSYBOX),
            )
            .unwrap();
        }
        dir
    })
}

struct Env {
    dir: tempfile::TempDir,
    id: String,
}

impl Env {
    fn new(tag: &str) -> Self {
        require_vm_host();
        Env {
            dir: tempfile::Builder::new()
                .prefix("vce2e")
                .tempdir_in("/tmp")
                .unwrap(),
            id: unique(tag),
        }
    }

    fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    fn bundle(&self, name: &str, args: &[&str]) -> ContainerConfig {
        let bundle = self.dir.path().join("bundles").join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        let ns = [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
        ]
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
        .collect::<Vec<_>>();
        let spec = SpecBuilder::default()
            .hostname(name)
            .root(RootBuilder::default().path(rootfs()).build().unwrap())
            .process(
                ProcessBuilder::default()
                    .args(args.iter().map(ToString::to_string).collect::<Vec<_>>())
                    .env(vec!["PATH=/bin".to_owned()])
                    .cwd("/")
                    .build()
                    .unwrap(),
            )
            .mounts(vec![
                MountBuilder::default()
                    .destination("/proc")
                    .typ("proc")
                    .source("proc")
                    .build()
                    .unwrap(),
            ])
            .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
            .build()
            .unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        ContainerConfig::from_bundle(name, &bundle).unwrap()
    }

    fn config(&self, share: FsShareKind, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let mut config = SandboxConfig::new(
            &self.id,
            VmConfig::new(
                image_dir().join("vmlinux"),
                image_dir().join("initramfs.cpio"),
            ),
        );
        config.paths = self.paths();
        config.cgroups = Some(CgroupsConfig::default());
        config.fs_share = FsShareConfig {
            kind: share,
            virtiofsd: None,
        };
        config.containers = containers;
        config
    }

    /// Nothing of this sandbox is left on the host.
    fn assert_clean(&self) {
        let p = self.paths();
        for d in [
            p.state_root.join(&self.id),
            p.shared_root.join(&self.id),
            p.runtime_root.join(&self.id),
        ] {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        let procs = std::process::Command::new("pgrep")
            .args(["-af", &self.id])
            .output()
            .unwrap();
        let procs = String::from_utf8_lossy(&procs.stdout);
        let ours: Vec<&str> = procs
            .lines()
            .filter(|l| l.contains("qemu-system") || l.contains("virtiofsd"))
            .collect();
        assert!(ours.is_empty(), "processes left behind: {ours:?}");
        for controller in ["cpu", "cpuset", "memory", "pids", "devices"] {
            for parent in ["virtcontainers", "virtcontainers_overhead"] {
                let d = Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(parent)
                    .join(&self.id);
                assert!(!d.exists(), "cgroup {} left behind", d.display());
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

impl Drop for Env {
    /// A failed test may leave bind mounts under the temporary directory;
    /// unmount them before it is removed, or the removal would recurse
    /// into the shared rootfs.
    fn drop(&mut self) {
        // A test that failed half-way leaves its sandbox: reclaim it (this
        // runs during a panic, so on a runtime of its own).
        if self.paths().state_root.join(&self.id).exists() {
            let (paths, id) = (self.paths(), self.id.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(virtcontainers::reclaim(&paths, &id, logger()))
            })
            .join();
        }
        let mut mounts: Vec<PathBuf> =
            vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
                .map(|t| t.into_iter().map(|m| m.mount_point).collect())
                .unwrap_or_default();
        mounts.retain(|m| m.starts_with(self.dir.path()));
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}

/// The `run` example's path: create, start, stream, wait, stop, delete.
async fn run_path(share: FsShareKind, sandbox_cgroup_only: bool) {
    let _serial = serial().lock().await;
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
    let io = sandbox.start_container("main").await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    let code = sandbox.wait_container("main").await.unwrap();
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
    let _serial = serial().lock().await;
    let env = Env::new("two");
    let containers = vec![
        env.bundle("long", &["sleep", "1000"]),
        env.bundle("short", &["echo", "short"]),
    ];
    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, containers),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start().await.unwrap();
    assert_eq!(sandbox.wait_container("short").await.unwrap(), 0);
    // Both run in the same guest: the exec sees the long-running one's pid 1.
    let process = ProcessBuilder::default()
        .args(vec!["cat".to_owned(), "/proc/1/cmdline".to_owned()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .unwrap();
    let io = sandbox.exec("long", "probe", &process).await.unwrap();
    let out = read_all(io.stdout).await;
    assert_eq!(out, "sleep\u{0}1000\u{0}");
    assert_eq!(sandbox.wait_process("long", "probe").await.unwrap(), 0);

    let paths = env.paths();
    let first = cleanup_container(
        &paths,
        &env.id,
        "short",
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
        "long",
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
        id,
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
    let io = sandbox.exec("main", "child", &process).await.unwrap();
    print!("{}", read_all(io.stdout).await);
    assert_eq!(sandbox.wait_process("main", "child").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_sandbox_from_another_process() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return fetch_child(&spec).await;
    }
    let _serial = serial().lock().await;
    let env = Env::new("fetch");
    let c = env.bundle("main", &["sleep", "1000"]);
    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, vec![c]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start_container("main").await.unwrap();
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
        sandbox.container_status("main").await.unwrap().phase,
        ContainerPhase::Running
    );
    let last = cleanup_container(
        &env.paths(),
        &env.id,
        "main",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_qemu_then_forced_cleanup_frees_everything() {
    let _serial = serial().lock().await;
    let env = Env::new("kill");
    let c = env.bundle("main", &["sleep", "1000"]);
    let sandbox = create_sandbox(
        env.config(FsShareKind::VirtioFs, vec![c]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start_container("main").await.unwrap();
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

    let paths = env.paths();
    let plain = cleanup_container(
        &paths,
        &env.id,
        "main",
        false,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await;
    assert!(plain.is_err(), "without force a dead VM is an error");
    let forced = cleanup_container(
        &paths,
        &env.id,
        "main",
        true,
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await;
    match forced {
        Ok(outcome) => assert!(outcome.sandbox_removed),
        Err(Error::Cleanup { errors, .. }) => assert!(!errors.is_empty()),
        Err(e) => panic!("forced cleanup: {e}"),
    }
    drop(sandbox);
    env.assert_clean();
}

/// Runs `cmd` and fails the test with its output when it fails.
fn sh(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host mounts made by a test, unmounted (last first) on drop.
struct HostMounts(Vec<PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
    }
}

fn loop_devices_backed_by(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["-ln", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()))
        .map(str::to_owned)
        .collect()
}

/// A container rootfs as containerd's erofs snapshotter makes it: two
/// `layer.erofs` images loop-mounted read-only, an overlay over them with
/// an upper dir. The sandbox hot-plugs the layers as read-only disks and
/// the guest stacks them again. In the same VM: a container whose rootfs
/// is an ext4 image, with an ext4 block volume it writes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_layers_block_rootfs_and_block_volume() {
    let _serial = serial().lock().await;
    let env = Env::new("dev");
    for tool in ["mkfs.erofs", "mkfs.ext4", "debugfs", "losetup"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .status()
                .unwrap()
                .success(),
            "this test needs {tool} (erofs-utils, e2fsprogs, util-linux)"
        );
    }
    let work = env.dir.path().join("snapshots");
    let mut mounts = HostMounts(Vec::new());
    // Layer 1: busybox and a greeting; layer 2 overrides the greeting.
    let l1 = work.join("1");
    let l2 = work.join("2");
    std::fs::create_dir_all(l1.join("src")).unwrap();
    std::fs::create_dir_all(l2.join("src/etc")).unwrap();
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", rootfs().display()))
        .arg(l1.join("src")));
    std::fs::write(l1.join("src/etc/greeting"), "from layer 1\n").unwrap();
    std::fs::write(l1.join("src/etc/base"), "base layer\n").unwrap();
    std::fs::write(l2.join("src/etc/greeting"), "from layer 2\n").unwrap();
    let mut lowers = Vec::new();
    for l in [&l2, &l1] {
        sh(std::process::Command::new("mkfs.erofs")
            .arg(l.join("layer.erofs"))
            .arg(l.join("src")));
        std::fs::create_dir_all(l.join("fs")).unwrap();
        sh(std::process::Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(l.join("layer.erofs"))
            .arg(l.join("fs")));
        mounts.0.push(l.join("fs"));
        lowers.push(l.join("fs").display().to_string());
    }
    let bundle_rootfs = env.dir.path().join("erofs-rootfs");
    for d in ["upper", "work"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    std::fs::create_dir_all(&bundle_rootfs).unwrap();
    sh(std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            work.join("upper").display(),
            work.join("work").display()
        ))
        .arg(&bundle_rootfs));
    mounts.0.push(bundle_rootfs.clone());

    let mut layered = env.bundle(
        "layered",
        &[
            "sh",
            "-c",
            "cat /etc/greeting /etc/base; echo scratch > /etc/new; cat /etc/new",
        ],
    );
    let mut spec = layered.spec.clone();
    spec.set_root(Some(
        RootBuilder::default()
            .path(&bundle_rootfs)
            .readonly(false)
            .build()
            .unwrap(),
    ));
    layered.spec = spec;

    // An ext4 image as the rootfs, and an ext4 volume.
    let root_img = env.dir.path().join("root.img");
    let vol_img = env.dir.path().join("volume.img");
    sh(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(rootfs())
        .arg(&root_img)
        .arg("64M"));
    sh(std::process::Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&vol_img)
        .arg("16M"));
    let mut block = env.bundle(
        "block",
        &[
            "sh",
            "-c",
            "echo from-the-guest > /data/hello; cat /data/hello",
        ],
    );
    let mut spec = block.spec.clone();
    let mut spec_mounts = spec.mounts().clone().unwrap_or_default();
    spec_mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("ext4")
            .source(&vol_img)
            .build()
            .unwrap(),
    );
    spec.set_mounts(Some(spec_mounts));
    block.spec = spec;
    block.rootfs_block = Some(virtcontainers::BlockRootfs {
        image: root_img.clone(),
        fs_type: "ext4".into(),
    });

    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, vec![layered, block]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert_eq!(
        sandbox.devices().devices().len(),
        4,
        "two layers, a rootfs image, a volume"
    );
    let io = sandbox.start_container("layered").await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    assert_eq!(
        sandbox.wait_container("layered").await.unwrap(),
        0,
        "{out}{err}"
    );
    assert_eq!(out, "from layer 2\nbase layer\nscratch\n");
    let io = sandbox.start_container("block").await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    assert_eq!(
        sandbox.wait_container("block").await.unwrap(),
        0,
        "{out}{err}"
    );
    assert_eq!(out, "from-the-guest\n");

    let last = async {
        cleanup_container(
            &env.paths(),
            &env.id,
            "layered",
            false,
            Arc::new(QemuFactory::default()),
            logger(),
        )
        .await?;
        cleanup_container(
            &env.paths(),
            &env.id,
            "block",
            false,
            Arc::new(QemuFactory::default()),
            logger(),
        )
        .await
    }
    .await
    .unwrap();
    assert!(last.sandbox_removed);
    drop(sandbox);

    // The guest's writes to the layered rootfs stayed in the guest; the
    // volume's reached the image.
    assert!(!work.join("upper/etc/new").exists());
    let dump = std::process::Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&vol_img)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout), "from-the-guest\n");
    drop(mounts);
    env.assert_clean();
    assert!(
        loop_devices_backed_by(env.dir.path()).is_empty(),
        "loop devices left behind"
    );
}
