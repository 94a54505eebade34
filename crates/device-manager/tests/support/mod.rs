//! What the device manager's VM tests need beyond `vc-test-support`: a
//! host that can also make EROFS layers and ext4 disks, and a VM booting
//! the busybox command-server image with `ext4` (a module in Debian's
//! kernel) for the block-volume test. The guest init is not the guest
//! agent: these tests check the disks, not the agent.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vc_device_manager::{DeviceManager, RegistryConfig};
use vc_hypervisor::{DeviceHotplug, HypervisorConfig, Qemu};
use vc_test_support::{EROFS_HOST, InitMode, Need, VM_HOST, busybox_image, require};

/// Fails the test, naming what is missing, unless the host can boot the
/// test VM and make the EROFS layers and ext4 disks it attaches.
pub fn require_disk_vm_host() {
    let e2fsprogs = [
        Need::Program {
            name: "mkfs.ext4",
            package: "e2fsprogs",
        },
        Need::Program {
            name: "debugfs",
            package: "e2fsprogs",
        },
    ];
    require(&[VM_HOST, EROFS_HOST, &e2fsprogs].concat());
}

/// A VM config for the test image, with its runtime dir under `dir`.
pub fn vm_config(name: &str, dir: &Path) -> HypervisorConfig {
    let image = busybox_image(InitMode::Serve, &["ext4"]);
    vc_test_support::small_vm_config(name, image, &dir.join("run"))
}

/// A prepared (not started) test VM with `hotplug_ports` ports, the
/// device registry hot-plugging into it, and its agent socket.
pub fn test_vm(name: &str, dir: &Path, hotplug_ports: u32) -> (Arc<Qemu>, DeviceManager, PathBuf) {
    let config = vm_config(name, dir);
    let agent_socket = config.agent_socket();
    let options = vc_test_support::small_vm_options(hotplug_ports);
    let vm = Arc::new(Qemu::new(config, options, vc_test_support::logger()).expect("a VM config"));
    let hotplug: Arc<dyn DeviceHotplug> = vm.clone();
    let devices = DeviceManager::new(
        hotplug,
        RegistryConfig::default(),
        vc_test_support::logger(),
    );
    (vm, devices, agent_socket)
}
