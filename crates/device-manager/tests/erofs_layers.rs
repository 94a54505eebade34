//! Real EROFS layers: images made by mkfs.erofs, loop-mounted read-only
//! on the host the way containerd's EROFS snapshotter mounts them, an
//! overlay rootfs over them; discovery reads the real mount table and
//! sysfs; then the layers go to a real VM (QEMU through vc-hypervisor) as
//! read-only virtio-blk disks, and the guest finds, mounts and stacks
//! them. Every test ends by checking that no loop device, mount or
//! hot-plugged device of its own remains.
//!
//! Needs root, erofs-utils, the loop module; the VM test also QEMU,
//! busybox-static and the Debian kernel package. A host without them
//! fails the tests with a message naming what is missing.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use vc_device_manager::erofs::{ErofsDiscovery, ErofsRootfs, GuestOverlayPlan, MountTableFile};
use vc_device_manager::{DetachOutcome, DeviceInfo, DeviceState, Error};
use vc_hypervisor::Hypervisor;
use vc_test_support::{HostMounts, leftovers_under, make_layer};

fn cid(id: &str) -> vc_types::ContainerId {
    id.parse().unwrap()
}

/// A containerd-like snapshotter root (with a space, as escaping must
/// hold), three committed layers and one active snapshot.
struct Snapshots {
    root: PathBuf,
    rootfs: PathBuf,
}

impl Snapshots {
    fn layer(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(id)
    }

    fn image(&self, id: &str) -> PathBuf {
        self.layer(id).join("layer.erofs")
    }

    fn fs(&self, id: &str) -> PathBuf {
        self.layer(id).join("fs")
    }
}

/// Layer ids, bottom to top; "2 two" has a space in its path.
const LAYERS: [&str; 3] = ["1", "2 two", "3"];

/// Builds the layers, mounts them and the container's overlay rootfs.
fn containerd_rootfs(tmp: &Path, mounts: &mut HostMounts) -> anyhow::Result<Snapshots> {
    let snaps = Snapshots {
        root: tmp.join("io.containerd.snapshotter.v1.erofs test"),
        rootfs: tmp.join("task/c1/rootfs"),
    };
    let contents: [&[(&str, Option<&str>)]; 3] = [
        &[
            ("etc/os-release", Some("NAME=layer-one\n")),
            ("shared.txt", Some("layer 1")),
            ("gone.txt", Some("deleted by layer 2")),
            ("only1.txt", Some("one")),
            ("my dir/a.txt", Some("spaced")),
        ],
        &[
            ("shared.txt", Some("layer 2")),
            ("gone.txt", None),
            ("only2.txt", Some("two")),
        ],
        &[
            ("shared.txt", Some("layer 3")),
            ("only3.txt", Some("three")),
        ],
    ];
    for (id, files) in LAYERS.iter().zip(contents) {
        make_layer(&tmp.join("src").join(id), &snaps.image(id), files)?;
        mounts.mount_erofs(&snaps.image(id), &snaps.fs(id))?;
    }
    let lower: Vec<PathBuf> = LAYERS.iter().rev().map(|id| snaps.fs(id)).collect();
    let lower: Vec<&Path> = lower.iter().map(PathBuf::as_path).collect();
    let upper = snaps.fs("4");
    let work = snaps.layer("4").join("work");
    mounts.mount_overlay(&lower, Some((&upper, &work)), &snaps.rootfs)?;
    std::fs::write(snaps.rootfs.join("upper.txt"), "upper")?;
    Ok(snaps)
}

fn check_discovered(found: &ErofsRootfs, snaps: &Snapshots) {
    assert_eq!(found.rootfs, snaps.rootfs);
    let images: Vec<&Path> = found.layers.iter().map(|l| l.image.as_path()).collect();
    assert_eq!(
        images,
        [snaps.image("3"), snaps.image("2 two"), snaps.image("1")],
        "layers must be topmost first"
    );
    for layer in &found.layers {
        let device = layer.loop_device.as_ref().expect("loop-mounted");
        assert!(
            device.to_str().unwrap().starts_with("/dev/loop"),
            "{device:?}"
        );
        assert_eq!(layer.subdir, Path::new(""));
    }
    assert_eq!(found.layers[1].lowerdir, snaps.fs("2 two"));
    assert_eq!(found.upperdir.as_deref(), Some(snaps.fs("4").as_path()));
    assert_eq!(
        found.workdir.as_deref(),
        Some(snaps.layer("4").join("work").as_path())
    );
}

#[test]
fn erofs_layers_are_found_through_the_real_mount_table_and_sysfs() {
    vc_test_support::require_erofs();
    let tmp = tempfile::tempdir().unwrap();
    let mut mounts = HostMounts::default();
    let snaps = containerd_rootfs(tmp.path(), &mut mounts).unwrap();
    // The host sees the union: layer 3 wins, layer 2's whiteout hides
    // layer 1's file, the upper dir is writable.
    let read = |p: &str| std::fs::read_to_string(snaps.rootfs.join(p)).unwrap();
    assert_eq!(read("shared.txt"), "layer 3");
    assert!(!snaps.rootfs.join("gone.txt").exists());
    assert_eq!(read("only1.txt"), "one");

    let found = ErofsDiscovery::default().discover(&snaps.rootfs).unwrap();
    check_discovered(&found, &snaps);
    let via_mounts =
        ErofsDiscovery::new(MountTableFile::Mounts("/proc/self/mounts".into()), "/sys")
            .discover(&snaps.rootfs)
            .unwrap();
    assert_eq!(via_mounts, found);

    // The overlayfs snapshotter's layers (plain directories) are refused.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(plain.join("lower")).unwrap();
    let (upper, work) = (plain.join("upper"), plain.join("work"));
    mounts
        .mount_overlay(
            &[&plain.join("lower")],
            Some((&upper, &work)),
            &plain.join("rootfs"),
        )
        .unwrap();
    match ErofsDiscovery::default().discover(&plain.join("rootfs")) {
        Err(Error::UnsupportedLayer { lowerdir, reason }) => {
            assert_eq!(lowerdir, plain.join("lower"));
            assert!(reason.contains("is on a"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // An EROFS image under another name is not guessed to be a layer.
    let odd = tmp.path().join("odd");
    make_layer(
        &odd.join("src"),
        &odd.join("other.erofs"),
        &[("f", Some("x"))],
    )
    .unwrap();
    mounts
        .mount_erofs(&odd.join("other.erofs"), &odd.join("fs"))
        .unwrap();
    let (upper, work) = (odd.join("upper"), odd.join("work"));
    mounts
        .mount_overlay(
            &[&odd.join("fs")],
            Some((&upper, &work)),
            &odd.join("rootfs"),
        )
        .unwrap();
    match ErofsDiscovery::default().discover(&odd.join("rootfs")) {
        Err(Error::UnsupportedLayer { reason, .. }) => {
            assert!(reason.contains("not a layer.erofs"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A rootfs that is not an overlay.
    let tmpfs = tmp.path().join("tmpfs-rootfs");
    mounts.mount_tmpfs(&tmpfs).unwrap();
    assert!(matches!(
        ErofsDiscovery::default().discover(&tmpfs),
        Err(Error::RootfsNotOverlay { fs_type, .. }) if fs_type == "tmpfs"
    ));

    mounts.unmount_all().unwrap();
    let left = leftovers_under(tmp.path());
    assert!(left.is_empty(), "left on the host: {left:?}");
}

const START: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(90);
const HOTPLUG_SEEN: Duration = Duration::from_secs(30);

/// The guest's disk name (`vdb`) for a two-level PCI path (`11/00`), found
/// the way the agent must: the function under the root port's slot.
fn disk_name_command(pci_path: &vc_hypervisor::PciPath) -> String {
    assert_eq!(
        pci_path.0.len(),
        2,
        "hot-plugged disks sit behind a root port"
    );
    format!(
        "fn=$(ls -d /sys/bus/pci/devices/0000:00:{:02x}.0/0000:*:{:02x}.0 2>/dev/null) && ls $fn/virtio*/block 2>/dev/null || true",
        pci_path.0[0], pci_path.0[1]
    )
}

#[test]
fn erofs_layers_attach_read_only_to_a_vm_and_stack_in_the_guest() {
    support::require_disk_vm_host();
    let _one_vm_at_a_time = vc_test_support::vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut mounts = HostMounts::default();
    let snaps = containerd_rootfs(tmp.path(), &mut mounts).unwrap();
    let found = ErofsDiscovery::default().discover(&snaps.rootfs).unwrap();
    check_discovered(&found, &snaps);

    let (vm, devices, agent_socket) = support::test_vm("vc-dm-erofs", tmp.path(), 4);

    vc_test_support::runtime().block_on(async {
        vm.start(START).await.unwrap();
        let (mut guest, _) = vc_test_support::GuestShell::connect(&agent_socket, BOOT).await.unwrap();

        let ids: Vec<String> = found
            .images()
            .iter()
            .map(|image| devices.register(DeviceInfo::block(*image).read_only()).unwrap())
            .collect();
        let disks = devices.attach_all(&ids, &cid("c1")).await.unwrap();
        // A second container with the same image shares the disks.
        assert_eq!(devices.attach_all(&ids, &cid("c2")).await.unwrap(), disks);
        let plugged: Vec<String> = vm
            .devices()
            .iter()
            .filter(|d| d.hotplugged)
            .map(|d| d.device.id().to_owned())
            .collect();
        assert_eq!(plugged, ids, "one hot-plug per layer");

        let plan = GuestOverlayPlan::new(&found, &disks, Path::new("/run/layers")).unwrap();
        for disk in &plan.disks {
            let name = guest
                .run_until(&disk_name_command(&disk.pci_path), HOTPLUG_SEEN, |o| o.starts_with("vd"))
                .await
                .unwrap();
            assert_eq!(
                guest.run(&format!("cat /sys/block/{name}/serial")).await.unwrap(),
                disk.serial,
                "disk {} at {}", disk.device_id, disk.pci_path
            );
            assert_eq!(guest.run(&format!("cat /sys/block/{name}/ro")).await.unwrap(), "1");
            let mp = disk.mount_point.display();
            guest
                .run(&format!("mkdir -p {mp} && mount -t erofs -o ro /dev/{name} {mp}"))
                .await
                .unwrap();
        }
        // Each disk holds its own layer (the plan pairs them in order).
        let top = plan.disks[0].mount_point.display();
        assert_eq!(guest.run(&format!("cat {top}/only3.txt")).await.unwrap(), "three");
        let bottom = plan.disks[2].mount_point.display();
        assert_eq!(guest.run(&format!("cat {bottom}/only1.txt")).await.unwrap(), "one");
        let (out, rc) = guest
            .status_of(&format!("touch {top}/new"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(rc, 0, "an EROFS layer accepted a write: {out}");

        // The guest overlay over the disks is the container's rootfs: the
        // top layer wins, the whiteout hides, the upper dir takes writes.
        guest
            .run(&format!(
                "mkdir -p /run/rw && mount -t tmpfs tmpfs /run/rw && mkdir -p /run/rw/upper /run/rw/work /run/rootfs && \
                 mount -t overlay overlay -o {},upperdir=/run/rw/upper,workdir=/run/rw/work /run/rootfs",
                plan.lowerdir_option()
            ))
            .await
            .unwrap();
        assert_eq!(guest.run("cat /run/rootfs/shared.txt").await.unwrap(), "layer 3");
        assert_eq!(
            guest.run("cat /run/rootfs/only1.txt /run/rootfs/only2.txt /run/rootfs/only3.txt").await.unwrap(),
            "onetwothree"
        );
        assert_eq!(guest.run("cat '/run/rootfs/my dir/a.txt'").await.unwrap(), "spaced");
        assert_eq!(
            guest.run("test -e /run/rootfs/gone.txt && echo present || echo hidden").await.unwrap(),
            "hidden"
        );
        assert_eq!(guest.run("cat /run/rootfs/etc/os-release").await.unwrap(), "NAME=layer-one");
        guest.run("echo written > /run/rootfs/new.txt && cat /run/rw/upper/new.txt").await.unwrap();

        // The agent's teardown: unmount, then the host detaches.
        let layer_mounts: Vec<String> =
            plan.disks.iter().map(|d| d.mount_point.display().to_string()).collect();
        guest
            .run(&format!("umount /run/rootfs /run/rw {}", layer_mounts.join(" ")))
            .await
            .unwrap();
        assert_eq!(devices.release_container(&cid("c1")).await.unwrap().len(), 3);
        for id in &ids {
            assert!(matches!(devices.device(id).unwrap().state, DeviceState::Attached { .. }));
        }
        for id in &ids {
            assert_eq!(devices.detach(id, &cid("c2")).await.unwrap(), DetachOutcome::Unplugged);
        }
        guest
            .run_until("ls /sys/block", HOTPLUG_SEEN, |o| !o.contains("vd"))
            .await
            .unwrap();
        assert!(vm.devices().iter().all(|d| !d.hotplugged), "{:?}", vm.devices());
        for id in &ids {
            devices.unregister(id).unwrap();
        }
        vm.stop(Duration::from_secs(10)).await.unwrap();
    });

    mounts.unmount_all().unwrap();
    let left = leftovers_under(tmp.path());
    assert!(left.is_empty(), "left on the host: {left:?}");
}
