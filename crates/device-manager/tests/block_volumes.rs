//! Block volumes in a real VM (QEMU through vc-hypervisor, TCG here): a
//! writable ext4 image shared by two containers that attach it at the
//! same moment, written in the guest and read back on the host; a
//! hot-plug the VM refuses (no free port) leaving the registry as it was;
//! and the registry saved, restored in a "new process" over a hypervisor
//! handle attached from its saved state, and emptied from there.
//!
//! Needs root, QEMU, busybox-static, e2fsprogs and the Debian kernel
//! package; a host without them fails with a message naming what is
//! missing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vc_device_manager::{
    DetachOutcome, DeviceInfo, DeviceManager, DeviceState, Error, GuestDevice, GuestLocation,
    ReconcileReport, RegistryConfig,
};
use vc_hypervisor::{Hypervisor, PciPath, Qemu};

fn cid(id: &str) -> vc_types::ContainerId {
    id.parse().unwrap()
}

const START: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(90);
const SEEN: Duration = Duration::from_secs(30);

fn pci_path(device: &GuestDevice) -> &PciPath {
    match &device.location {
        GuestLocation::VirtioBlk { pci_path, .. } => pci_path,
        other => panic!("not a disk: {other:?}"),
    }
}

fn disk_name_command(path: &PciPath) -> String {
    format!(
        "fn=$(ls -d /sys/bus/pci/devices/0000:00:{:02x}.0/0000:*:{:02x}.0 2>/dev/null) && ls $fn/virtio*/block 2>/dev/null || true",
        path.0[0], path.0[1]
    )
}

fn hotplugged(vm: &dyn Hypervisor) -> Vec<String> {
    vm.devices()
        .iter()
        .filter(|d| d.hotplugged)
        .map(|d| d.device.id().to_owned())
        .collect()
}

fn sparse_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

#[test]
fn block_volumes_are_shared_written_refused_and_restored_in_a_vm() {
    support::require_disk_vm_host();
    let _one_vm_at_a_time = vc_test_support::vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.ext4");
    sparse_file(&data, 32 << 20);
    vc_test_support::run("mkfs.ext4", &["-q", "-F", data.to_str().unwrap()]).unwrap();
    let scratch = tmp.path().join("scratch.img");
    sparse_file(&scratch, 1 << 20);
    let extra = tmp.path().join("extra.img");
    sparse_file(&extra, 1 << 20);

    // Two hot-plug ports: the third disk has nowhere to go.
    let (vm, devices, agent_socket) = support::test_vm("vc-dm-block", tmp.path(), 2);

    vc_test_support::runtime().block_on(async {
        vm.start(START).await.unwrap();
        let (mut guest, _) = vc_test_support::GuestShell::connect(&agent_socket, BOOT)
            .await
            .unwrap();

        // Two containers attach the writable volume at the same moment:
        // one hot-plug, one disk, both told the same place.
        let data_id = devices.register(DeviceInfo::block(&data)).unwrap();
        let (c1, c2) = (cid("c1"), cid("c2"));
        let (a, b) = tokio::join!(devices.attach(&data_id, &c1), devices.attach(&data_id, &c2));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        assert_eq!(hotplugged(vm.as_ref()), std::slice::from_ref(&data_id));
        assert_eq!(devices.device(&data_id).unwrap().ref_count(), 2);

        let name = guest
            .run_until(&disk_name_command(pci_path(&a)), SEEN, |o| {
                o.starts_with("vd")
            })
            .await
            .unwrap();
        assert_eq!(
            guest
                .run(&format!("cat /sys/block/{name}/serial"))
                .await
                .unwrap(),
            data_id
        );
        assert_eq!(
            guest
                .run(&format!("cat /sys/block/{name}/ro"))
                .await
                .unwrap(),
            "0"
        );
        guest
            .run(&format!(
                "mkdir -p /mnt/data && mount -t ext4 /dev/{name} /mnt/data && \
                 echo 'written in the guest' > /mnt/data/hello.txt && umount /mnt/data"
            ))
            .await
            .unwrap();

        // The second port goes to a scratch disk; the third disk finds no
        // port: a typed error, and the registry is as it was.
        let scratch_id = devices.register(DeviceInfo::block(&scratch)).unwrap();
        devices.attach(&scratch_id, &cid("c1")).await.unwrap();
        let extra_id = devices.register(DeviceInfo::block(&extra)).unwrap();
        let before = devices.save_state();
        match devices.attach(&extra_id, &cid("c1")).await {
            Err(Error::Hotplug {
                id,
                source: vc_hypervisor::Error::NoFreeHotplugPort { .. },
            }) => assert_eq!(id, extra_id),
            other => panic!("expected no free port, got {other:?}"),
        }
        assert_eq!(devices.save_state(), before);
        assert_eq!(
            devices.device(&extra_id).unwrap().state,
            DeviceState::Detached
        );
        assert_eq!(
            hotplugged(vm.as_ref()),
            [data_id.clone(), scratch_id.clone()]
        );

        // Another process takes over: the VM from its saved state, the
        // registry from its own, reconciled with the VM's devices.
        let saved_devices = serde_json::to_string(&devices.save_state()).unwrap();
        let other_vm: Arc<dyn Hypervisor> = Arc::new(
            Qemu::attach(vm.save_state().unwrap(), vc_test_support::logger())
                .await
                .unwrap(),
        );
        let (restored, report) = DeviceManager::restore(
            serde_json::from_str(&saved_devices).unwrap(),
            other_vm.clone(),
            RegistryConfig::default(),
            vc_test_support::logger(),
            &other_vm.devices(),
        )
        .await
        .unwrap();
        assert_eq!(report, ReconcileReport::default());
        assert_eq!(restored.device(&data_id).unwrap().ref_count(), 2);
        assert_eq!(
            restored.detach(&data_id, &cid("c1")).await.unwrap(),
            DetachOutcome::StillInUse { ref_count: 1 }
        );
        let mut released = restored.release_container(&cid("c1")).await.unwrap();
        released.sort();
        assert_eq!(released, std::slice::from_ref(&scratch_id));
        assert_eq!(
            restored.detach(&data_id, &cid("c2")).await.unwrap(),
            DetachOutcome::Unplugged
        );
        guest
            .run_until("ls /sys/block", SEEN, |o| !o.contains("vd"))
            .await
            .unwrap();
        assert!(hotplugged(other_vm.as_ref()).is_empty());
        vm.stop(Duration::from_secs(10)).await.unwrap();
    });

    // What the guest wrote is on the host's image.
    let out =
        vc_test_support::run("debugfs", &["-R", "cat /hello.txt", data.to_str().unwrap()]).unwrap();
    assert_eq!(out.trim(), "written in the guest");
    let left = vc_test_support::leftovers_under(tmp.path());
    assert!(left.is_empty(), "left on the host: {left:?}");
}
