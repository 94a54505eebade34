//! VFIO through the real QEMU backend.
//!
//! This host has no IOMMU and no `/dev/vfio`: the test that runs here
//! checks that asking anyway is a typed error that changes nothing; the
//! end-to-end passthrough test needs a device bound to vfio-pci and is
//! ignored (run it with `VC_TEST_VFIO_NODE=/dev/vfio/<group> cargo test
//! -p vc-device-manager --test vfio -- --ignored` on a host that has one).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vc_device_manager::vfio::{VfioRequest, plan};
use vc_device_manager::{
    DetachOutcome, DeviceInfo, DeviceManager, Error, GuestLocation, RegistryConfig,
};
use vc_hypervisor::{DeviceHotplug, Hypervisor, HypervisorConfig, Qemu};

fn cid(id: &str) -> vc_types::ContainerId {
    id.parse().unwrap()
}

/// A fixture sysfs with one IOMMU group, 3, holding `0000:01:00.0` bound to vfio-pci.
fn fixture_sysfs(root: &Path) {
    use std::os::unix::fs::symlink;
    let bdf = "0000:01:00.0";
    let dev = root.join("devices/pci0000:00").join(bdf);
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("class"), "0x020000\n").unwrap();
    std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
    symlink("../../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
    let group = root.join("kernel/iommu_groups/3/devices");
    std::fs::create_dir_all(&group).unwrap();
    symlink(
        format!("../../../../devices/pci0000:00/{bdf}"),
        group.join(bdf),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
    symlink(
        format!("../../../devices/pci0000:00/{bdf}"),
        root.join("bus/pci/devices").join(bdf),
    )
    .unwrap();
}

#[test]
fn vfio_hotplug_on_a_host_without_vfio_is_a_typed_error_and_changes_nothing() {
    vc_test_support::require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fixture_sysfs(&sys);
    // A VM that is prepared, not started: the backend must refuse VFIO
    // for what the host lacks before it looks at the VM.
    let (kernel, initrd) = (tmp.path().join("vmlinux"), tmp.path().join("initrd"));
    std::fs::write(&kernel, b"").unwrap();
    std::fs::write(&initrd, b"").unwrap();
    let config =
        HypervisorConfig::new("vc-dm-vfio", &kernel, tmp.path().join("run")).with_initrd(&initrd);
    let vm = Arc::new(Qemu::new(config, Default::default(), vc_test_support::logger()).unwrap());
    let hotplug: Arc<dyn DeviceHotplug> = vm.clone();
    let devices = DeviceManager::new(
        hotplug,
        RegistryConfig {
            sys_root: sys.clone(),
            ..RegistryConfig::default()
        },
        vc_test_support::logger(),
    );
    let id = devices.register(DeviceInfo::vfio("/dev/vfio/3")).unwrap();
    let before = devices.save_state();
    let result = vc_test_support::runtime().block_on(devices.attach(&id, &cid("c1")));
    let host_has_vfio = Path::new("/dev/vfio/vfio").exists();
    match result {
        Err(Error::Hotplug {
            source: vc_hypervisor::Error::Unsupported(u),
            ..
        }) if !host_has_vfio => assert!(u.reason.contains("/dev/vfio/vfio"), "{u}"),
        Err(Error::Hotplug {
            source: vc_hypervisor::Error::InvalidState { .. },
            ..
        }) if host_has_vfio => {}
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    assert_eq!(devices.save_state(), before);
    assert!(vm.devices().is_empty());
}

#[test]
#[ignore = "no VFIO hardware on this host"]
fn a_vfio_group_passes_through_to_a_vm_and_back() {
    support::require_disk_vm_host();
    let _one_vm_at_a_time = vc_test_support::vm_lock();
    let node = std::env::var("VC_TEST_VFIO_NODE")
        .expect("set VC_TEST_VFIO_NODE to a /dev/vfio/<group> whose devices are bound to vfio-pci");
    assert!(
        Path::new("/dev/vfio/vfio").exists(),
        "this test needs /dev/vfio/vfio (an IOMMU and the vfio-pci module)"
    );
    let attachments = plan(
        &[
            VfioRequest::hotplug("/dev/vfio/vfio"),
            VfioRequest::hotplug(&node),
        ],
        Path::new("/sys"),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (vm, devices, agent_socket) = support::test_vm("vc-dm-vfio-e2e", tmp.path(), 4);
    vc_test_support::runtime().block_on(async {
        vm.start(Duration::from_secs(60)).await.unwrap();
        let (mut guest, _) =
            vc_test_support::GuestShell::connect(&agent_socket, Duration::from_secs(90))
                .await
                .unwrap();
        let ids: Vec<String> = attachments
            .iter()
            .map(|a| devices.register(DeviceInfo::vfio(&a.host_path)).unwrap())
            .collect();
        let guests = devices.attach_all(&ids, &cid("c1")).await.unwrap();
        assert_eq!(guests[0].location, GuestLocation::VfioControl);
        let GuestLocation::Vfio { functions, .. } = &guests[1].location else {
            panic!("{:?}", guests[1])
        };
        for f in functions {
            let host_vendor = std::fs::read_to_string(format!(
                "/sys/bus/pci/devices/{}/vendor",
                f.host_address
            ))
            .unwrap();
            let command = format!(
                "cat /sys/bus/pci/devices/0000:00:{:02x}.0/0000:*:{:02x}.0/vendor 2>/dev/null || true",
                f.pci_path.0[0], f.pci_path.0[1]
            );
            guest
                .run_until(&command, Duration::from_secs(30), |o| o == host_vendor.trim())
                .await
                .unwrap();
        }
        assert_eq!(devices.detach(&ids[1], &cid("c1")).await.unwrap(), DetachOutcome::Unplugged);
        assert_eq!(devices.detach(&ids[0], &cid("c1")).await.unwrap(), DetachOutcome::Released);
        assert!(vm.devices().iter().all(|d| !d.hotplugged));
        vm.stop(Duration::from_secs(10)).await.unwrap();
    });
}
