//! Devices end to end: EROFS layers and volumes on loop devices, host
//! block devices from `linux.devices`, and a refused container unwinding
//! a virtio-fs sandbox. Root, QEMU and loop devices needed; one test at a
//! time (two cores), each ending with a check that nothing is left.

mod common;

use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{MountBuilder, RootBuilder};
use vc_test_support::{
    ContainerSpec, HostMounts, leftovers_under, make_layer, require, run, shared_busybox_rootfs,
    vm_lock_async,
};
use virtcontainers::{
    ContainerConfig, Error, FsShareKind, QemuFactory, cleanup_container, create_sandbox,
};

use common::{Env, cid, logger, read_all};
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
