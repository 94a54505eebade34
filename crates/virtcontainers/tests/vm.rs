//! The Sandbox API end to end: real QEMU (TCG here), the real guest agent
//! from `make guest-image`, busybox containers, host cgroups, 9p and
//! virtio-fs. Root needed. The tests run one at a time (two cores), and
//! each ends by checking that nothing of ours is left on the host: no
//! QEMU, no virtiofsd, no cgroup, no mount, no state or runtime directory.

use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{MountBuilder, ProcessBuilder, RootBuilder};
use tokio::io::AsyncReadExt;
use vc_guest_image::GuestImage;
use vc_test_support::{
    ContainerSpec, HostMounts, HostSnapshot, assert_unchanged_since_matching, leftovers_under,
    make_layer, require, require_sandbox_host, run, shared_busybox_rootfs, unique, unmount_under,
    vm_lock_async,
};
use virtcontainers::{
    CgroupsConfig, ContainerConfig, ContainerId, ContainerPhase, Error, FsShareConfig, FsShareKind,
    Paths, QemuFactory, SandboxConfig, SandboxId, VmConfig, cleanup_container, create_sandbox,
    fetch_sandbox,
};

/// Set in the child process of the cross-process test.
const CHILD_ENV: &str = "VC_E2E_FETCH_CHILD";

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn cid(id: &str) -> ContainerId {
    id.parse().unwrap()
}

/// One sandbox's test: its id, its temporary directory (state, runtime
/// and share roots under it), the guest image, and the host as it was.
struct Env {
    dir: tempfile::TempDir,
    id: SandboxId,
    image: GuestImage,
    before: HostSnapshot,
}

impl Env {
    fn new(tag: &str) -> Self {
        let image = require_sandbox_host();
        Env {
            before: HostSnapshot::take(),
            dir: tempfile::Builder::new()
                .prefix("vce2e")
                .tempdir_in("/tmp")
                .unwrap(),
            id: unique(tag).parse().unwrap(),
            image,
        }
    }

    fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    /// A busybox container running `args` in its own mount, pid, uts and
    /// ipc namespaces, with `/proc`.
    fn bundle(&self, name: &str, args: &[&str]) -> ContainerConfig {
        self.bundle_of(name, ContainerSpec::new(shared_busybox_rootfs(), args))
    }

    /// Like [`Env::bundle`], from `spec` as a test built it.
    fn bundle_of(&self, name: &str, spec: ContainerSpec) -> ContainerConfig {
        let bundle = spec
            .hostname(name)
            .cwd("/")
            .without_default_mounts()
            .proc_mount()
            .isolated()
            .save_bundle(&self.dir.path().join("bundles").join(name));
        ContainerConfig::from_bundle(cid(name), &bundle).unwrap()
    }

    fn config(&self, share: FsShareKind, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let mut config = SandboxConfig::new(
            self.id.clone(),
            VmConfig::new(&self.image.vmlinux, &self.image.initramfs),
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

    /// Nothing of this sandbox is left on the host: no state, runtime or
    /// share directory, and nothing naming it or its directory among the
    /// host's cgroups, mounts, loop devices and QEMU/virtiofsd processes.
    fn assert_clean(&self) {
        let p = self.paths();
        for d in [
            p.state_root.join(self.id.as_str()),
            p.shared_root.join(self.id.as_str()),
            p.runtime_root.join(self.id.as_str()),
        ] {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert_unchanged_since_matching(&self.before, &[self.id.as_str(), &dir]);
    }
}

impl Drop for Env {
    /// A failed test may leave its sandbox: reclaim it, then unmount what
    /// is left under the temporary directory before it is removed, or the
    /// removal would recurse into the shared rootfs.
    fn drop(&mut self) {
        if self.paths().state_root.join(self.id.as_str()).exists() {
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
        unmount_under(self.dir.path());
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}

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

/// A container rootfs as containerd's erofs snapshotter makes it: two
/// `layer.erofs` images loop-mounted read-only, an overlay over them with
/// an upper dir. The sandbox hot-plugs the layers as read-only disks and
/// the guest stacks them again. In the same VM: a container whose rootfs
/// is an ext4 image, with an ext4 block volume it writes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_layers_block_rootfs_and_block_volume() {
    let _serial = vm_lock_async().await;
    let env = Env::new("dev");
    require(
        &[
            vc_test_support::EROFS_HOST,
            &[
                vc_test_support::Need::Program {
                    name: "mkfs.ext4",
                    package: "e2fsprogs",
                },
                vc_test_support::Need::Program {
                    name: "debugfs",
                    package: "e2fsprogs",
                },
            ],
        ]
        .concat(),
    );
    let work = env.dir.path().join("snapshots");
    let mut mounts = HostMounts::default();
    // Layer 1: busybox and a greeting; layer 2 overrides the greeting.
    let l1 = work.join("1");
    let l2 = work.join("2");
    std::fs::create_dir_all(l1.join("src")).unwrap();
    run(
        "cp",
        &[
            "-a",
            &format!("{}/.", shared_busybox_rootfs().display()),
            &l1.join("src").display().to_string(),
        ],
    )
    .unwrap();
    make_layer(
        &l1.join("src"),
        &l1.join("layer.erofs"),
        &[
            ("etc/greeting", Some("from layer 1\n")),
            ("etc/base", Some("base layer\n")),
        ],
    )
    .unwrap();
    make_layer(
        &l2.join("src"),
        &l2.join("layer.erofs"),
        &[("etc/greeting", Some("from layer 2\n"))],
    )
    .unwrap();
    for l in [&l2, &l1] {
        mounts
            .mount_erofs(&l.join("layer.erofs"), &l.join("fs"))
            .unwrap();
    }
    let bundle_rootfs = env.dir.path().join("erofs-rootfs");
    mounts
        .mount_overlay(
            &[&l2.join("fs"), &l1.join("fs")],
            Some((&work.join("upper"), &work.join("work"))),
            &bundle_rootfs,
        )
        .unwrap();

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
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-d",
            &shared_busybox_rootfs().display().to_string(),
            &root_img.display().to_string(),
            "64M",
        ],
    )
    .unwrap();
    run("mkfs.ext4", &["-q", &vol_img.display().to_string(), "16M"]).unwrap();
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
    let io = sandbox.start_container(&cid("layered")).await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    assert_eq!(
        sandbox.wait_container(&cid("layered")).await.unwrap(),
        0,
        "{out}{err}"
    );
    assert_eq!(out, "from layer 2\nbase layer\nscratch\n");
    let io = sandbox.start_container(&cid("block")).await.unwrap();
    let (out, err) = tokio::join!(read_all(io.stdout), read_all(io.stderr));
    assert_eq!(
        sandbox.wait_container(&cid("block")).await.unwrap(),
        0,
        "{out}{err}"
    );
    assert_eq!(out, "from-the-guest\n");

    let last = async {
        cleanup_container(
            &env.paths(),
            &env.id,
            &cid("layered"),
            false,
            Arc::new(QemuFactory::default()),
            logger(),
        )
        .await?;
        cleanup_container(
            &env.paths(),
            &env.id,
            &cid("block"),
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
    mounts.unmount_all().unwrap();
    env.assert_clean();
    assert_eq!(
        leftovers_under(env.dir.path()),
        Vec::<String>::new(),
        "loop devices or mounts left behind"
    );
}

/// A host block device named in the spec's `linux.devices` (by its
/// numbers, as runc reads them) reaches the container: hot-plugged as a
/// disk, found by the agent, its node made with the guest's numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_block_device_in_linux_devices_reaches_the_container() {
    let _serial = vm_lock_async().await;
    let env = Env::new("hostdev");
    vc_test_support::require_loop();
    let image = env.dir.path().join("raw.img");
    let mut content = b"hello-disk".to_vec();
    content.resize(1 << 20, 0);
    std::fs::write(&image, content).unwrap();
    let loop_dev = run("losetup", &["-f", "--show", &image.display().to_string()])
        .unwrap()
        .trim()
        .to_owned();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = run("losetup", &["-d", &self.0]);
        }
    }
    let detach = Detach(loop_dev.clone());
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&loop_dev).unwrap());
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));

    // /dev on a tmpfs of the container's own, as runc's default spec has
    // it: the nodes are made there, not in the (shared) rootfs.
    let bundle = ContainerSpec::new(
        shared_busybox_rootfs(),
        &[
            "sh",
            "-c",
            "head -c 10 /dev/xvda; echo; ls -l /dev/xvda /dev/probe",
        ],
    )
    .cwd("/")
    .without_default_mounts()
    .proc_mount()
    .tmpfs("/dev", &["nosuid", "mode=755"])
    .isolated()
    .save_bundle(&env.dir.path().join("bundles/main"));
    let mut c = ContainerConfig::from_bundle(cid("main"), &bundle).unwrap();
    let device = oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/xvda")
        .typ(oci_spec::runtime::LinuxDeviceType::B)
        .major(major as i64)
        .minor(minor as i64)
        .file_mode(0o660u32)
        .build()
        .unwrap();
    let mut linux = c.spec.linux().clone().unwrap_or_default();
    let probe = oci_spec::runtime::LinuxDeviceBuilder::default()
        .path("/dev/probe")
        .typ(oci_spec::runtime::LinuxDeviceType::C)
        .major(1i64)
        .minor(3i64)
        .build()
        .unwrap();
    linux.set_devices(Some(vec![probe, device]));
    c.spec.set_linux(Some(linux));
    let sandbox = create_sandbox(
        env.config(FsShareKind::NineP, vec![c]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    let io = sandbox.start_container(&cid("main")).await.unwrap();
    let out = read_all(io.stdout).await;
    assert_eq!(
        sandbox.wait_container(&cid("main")).await.unwrap(),
        0,
        "{out}"
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello-disk"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('b') && l.ends_with("/dev/xvda")),
        "a block node in the container: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with('c') && l.ends_with("/dev/probe")),
        "the char device, made with the spec's numbers: {out}"
    );
    assert!(
        !shared_busybox_rootfs().join("dev/xvda").exists(),
        "a node made in the shared rootfs instead of the container's /dev"
    );
    assert_eq!(
        sandbox
            .hypervisor()
            .devices()
            .iter()
            .filter(|d| d.hotplugged)
            .count(),
        1
    );
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    drop(detach);
    env.assert_clean();
}

/// A container the agent refuses, in a sandbox sharing over virtio-fs: the
/// create fails at the Containers step and unwinds cleanly — the guest
/// lets go of the share (DestroySandbox) while virtiofsd still serves it,
/// so no undo step fails or waits for a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_container_unwinds_a_virtio_fs_sandbox_cleanly() {
    let _serial = vm_lock_async().await;
    let env = Env::new("refused");
    let mut c = env.bundle("main", &["true"]);
    // A hostname without a UTS namespace: runc and the agent refuse it.
    let mut linux = c.spec.linux().clone().unwrap_or_default();
    linux.set_namespaces(Some(Vec::new()));
    c.spec.set_linux(Some(linux));
    let mut config = env.config(FsShareKind::VirtioFs, vec![c]);
    // A DestroySandbox that cannot finish would fail within this, not 30 s.
    config.agent.call_timeout = Duration::from_secs(10);
    let err = create_sandbox(config, Arc::new(QemuFactory::default()), logger())
        .await
        .unwrap_err();
    match &err {
        Error::Create {
            step,
            unwind_errors,
            ..
        } => {
            assert_eq!(*step, virtcontainers::CreateStep::Containers, "{err}");
            assert!(unwind_errors.is_empty(), "{err}");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(!text.contains("undoing left"), "{text}");
    env.assert_clean();
}
