//! The registry over `vc_hypervisor::testing::MockHypervisor` (the fake
//! of the layer below), with failures injected at every hypervisor call.

use std::path::{Path, PathBuf};
use std::slice::from_ref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use vc_hypervisor::testing::{Call, Method, MockHypervisor};
use vc_hypervisor::{
    AttachedDevice, Device, DeviceHotplug, GuestAddress, Hypervisor, HypervisorConfig,
};

use super::*;

fn cid(id: &str) -> vc_types::ContainerId {
    id.parse().unwrap()
}
use crate::error::Error;
use crate::guest::GuestLocation;
use crate::info::DeviceType;
use crate::test_sysfs::{AUDIO, BRIDGE, FakeSys, GPU};

const T: Duration = Duration::from_secs(1);

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

async fn running_vm() -> MockHypervisor {
    let vm = MockHypervisor::new(HypervisorConfig::new("vm", "/k", "/run/vm"));
    vm.start(T).await.unwrap();
    vm
}

fn registry_over(hotplug: Arc<dyn DeviceHotplug>, sys: Option<&Path>) -> DeviceManager {
    let mut config = RegistryConfig {
        unplug_timeout: T,
        ..RegistryConfig::default()
    };
    if let Some(sys) = sys {
        config.sys_root = sys.to_owned();
    }
    DeviceManager::new(hotplug, config, logger())
}

/// Image files in a temp dir.
struct Images(tempfile::TempDir);

impl Images {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn make(&self, name: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        path
    }
}

fn hotplugged_ids(vm: &MockHypervisor) -> Vec<String> {
    vm.devices()
        .iter()
        .filter(|d| d.hotplugged)
        .map(|d| d.device.id().to_owned())
        .collect()
}

fn calls_of(vm: &MockHypervisor, method: Method) -> Vec<Call> {
    vm.calls()
        .into_iter()
        .filter(|c| c.method() == method)
        .collect()
}

#[tokio::test]
async fn shared_disk_is_plugged_once_and_unplugged_with_its_last_user() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let image = images.make("layer.img");

    let mut info = DeviceInfo::block(&image).read_only();
    info.driver_options
        .guest
        .insert("fstype".into(), "erofs".into());
    let id = reg.register(info).unwrap();
    assert_eq!(id, "dm-blk-0");
    assert_eq!(reg.device(&id).unwrap().state, DeviceState::Detached);
    assert!(vm.calls().iter().all(|c| c.method() != Method::Hotplug));

    let first = reg.attach(&id, &cid("c1")).await.unwrap();
    let GuestLocation::VirtioBlk { pci_path, serial } = &first.location else {
        panic!("{first:?}")
    };
    // The address is the hypervisor's; the serial names the device.
    let in_vm = &vm.devices()[0];
    assert_eq!(
        in_vm.address,
        GuestAddress::Pci {
            path: pci_path.clone()
        }
    );
    assert_eq!(serial, &id);
    let Device::Block(disk) = &in_vm.device else {
        panic!("{in_vm:?}")
    };
    assert!(disk.read_only);
    assert_eq!(disk.serial.as_deref(), Some(id.as_str()));
    assert_eq!(disk.path, std::fs::canonicalize(&image).unwrap());
    assert!(first.read_only);
    assert_eq!(first.device_type, DeviceType::Block);
    assert_eq!(first.options["fstype"], "erofs");

    // A second container, and the first one twice: references, no plug.
    assert_eq!(reg.attach(&id, &cid("c2")).await.unwrap(), first);
    assert_eq!(reg.attach(&id, &cid("c1")).await.unwrap(), first);
    assert_eq!(vm.count(Method::Hotplug), 1);
    let status = reg.device(&id).unwrap();
    assert_eq!(status.ref_count(), 3);
    assert_eq!(status.users["c1"], 2);
    assert!(matches!(
        status.state,
        DeviceState::Attached {
            plug: PlugKind::Hot,
            ..
        }
    ));

    assert_eq!(
        reg.detach(&id, &cid("c1")).await.unwrap(),
        DetachOutcome::StillInUse { ref_count: 2 }
    );
    assert!(matches!(
        reg.detach(&id, &cid("c3")).await,
        Err(Error::NotAttachedBy { .. })
    ));
    assert!(matches!(
        reg.unregister(&id),
        Err(Error::DeviceInUse { users: 2, .. })
    ));
    assert_eq!(
        reg.detach(&id, &cid("c2")).await.unwrap(),
        DetachOutcome::StillInUse { ref_count: 1 }
    );
    assert_eq!(hotplugged_ids(&vm), from_ref(&id));
    assert_eq!(
        reg.detach(&id, &cid("c1")).await.unwrap(),
        DetachOutcome::Unplugged
    );
    assert!(hotplugged_ids(&vm).is_empty());
    assert_eq!(calls_of(&vm, Method::Unplug), [Call::Unplug(id.clone(), T)]);
    assert!(matches!(
        reg.detach(&id, &cid("c1")).await,
        Err(Error::NotAttachedBy { .. })
    ));
    reg.unregister(&id).unwrap();
    assert!(reg.device(&id).is_none());
    assert!(matches!(
        reg.attach(&id, &cid("c1")).await,
        Err(Error::DeviceNotFound { .. })
    ));
}

#[tokio::test]
async fn registration_dedupes_by_file_and_lookups_find_it() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let image = images.make("disk.img");
    let link = images.0.path().join("alias.img");
    std::os::unix::fs::symlink(&image, &link).unwrap();

    let id = reg.register(DeviceInfo::block(&image)).unwrap();
    assert_eq!(reg.register(DeviceInfo::block(&image)).unwrap(), id);
    // Another name of the same file is the same device.
    assert_eq!(reg.register(DeviceInfo::block(&link)).unwrap(), id);
    // ... and must be asked for with the same settings.
    assert!(matches!(
        reg.register(DeviceInfo::block(&link).read_only()),
        Err(Error::RegisteredDifferently { id: existing, .. }) if existing == id
    ));
    assert_eq!(reg.find_by_host_path(&image).unwrap().id, id);
    assert_eq!(reg.find_by_host_path(&link).unwrap().id, id);
    assert!(reg.find_by_host_path(Path::new("/nonexistent")).is_none());
    let other = reg
        .register(DeviceInfo::block(images.make("b.img")))
        .unwrap();
    assert_eq!(other, "dm-blk-1");
    let ids: Vec<String> = reg.devices().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, [id, other]);
    // Bad input is refused before anything is recorded.
    assert!(reg.register(DeviceInfo::block(images.0.path())).is_err());
    assert!(reg.register(DeviceInfo::char(&image)).is_err());
    assert_eq!(reg.devices().len(), 2);
}

#[tokio::test]
async fn failed_hotplug_leaves_the_registry_as_before() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let id = reg
        .register(DeviceInfo::block(images.make("a.img")))
        .unwrap();
    let before = reg.save_state();

    vm.fail_next(Method::Hotplug);
    let err = reg.attach(&id, &cid("c1")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Hotplug { id: failed, source: vc_hypervisor::Error::Injected { .. } } if *failed == id),
        "{err:?}"
    );
    assert_eq!(reg.save_state(), before);
    assert!(hotplugged_ids(&vm).is_empty());
    // The next attempt works.
    reg.attach(&id, &cid("c1")).await.unwrap();
    assert_eq!(hotplugged_ids(&vm), [id]);
}

#[tokio::test]
async fn failed_unplug_keeps_the_device_and_the_reference() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let id = reg
        .register(DeviceInfo::block(images.make("a.img")))
        .unwrap();
    reg.attach(&id, &cid("c1")).await.unwrap();
    let before = reg.save_state();

    vm.fail_next(Method::Unplug);
    assert!(matches!(
        reg.detach(&id, &cid("c1")).await,
        Err(Error::Unplug { .. })
    ));
    assert_eq!(reg.save_state(), before);
    assert_eq!(hotplugged_ids(&vm), from_ref(&id));
    assert_eq!(
        reg.detach(&id, &cid("c1")).await.unwrap(),
        DetachOutcome::Unplugged
    );
}

/// A GPU and its audio function, behind a bridge, in IOMMU group 7.
fn gpu_sysfs() -> FakeSys {
    let sys = FakeSys::new();
    sys.device("0000:3b:00.0", 7, Some("vfio-pci"), GPU)
        .device("0000:3b:00.1", 7, Some("vfio-pci"), AUDIO)
        .device("0000:3a:00.0", 7, Some("pcieport"), BRIDGE);
    sys
}

#[tokio::test]
async fn vfio_group_plugs_every_function_and_unwinds_a_partial_plug() {
    let sys = gpu_sysfs();
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), Some(sys.root()));
    let id = reg.register(DeviceInfo::vfio("/dev/vfio/7")).unwrap();
    assert_eq!(id, "dm-vfio-0");
    // The same function through its iommufd node is refused.
    sys.cdev("vfio0", "0000:3b:00.1");
    let twice = reg.register(DeviceInfo::vfio("/dev/vfio/devices/vfio0"));
    assert!(
        matches!(&twice, Err(Error::InvalidDeviceInfo { reason, .. }) if reason.contains("0000:3b:00.1")),
        "{twice:?}"
    );

    // The second function fails: the first is unplugged again.
    vm.fail_nth(Method::Hotplug, 2);
    let before = reg.save_state();
    assert!(matches!(
        reg.attach(&id, &cid("c1")).await,
        Err(Error::Hotplug { .. })
    ));
    assert_eq!(reg.save_state(), before);
    assert!(hotplugged_ids(&vm).is_empty());
    let plugged: Vec<String> = vm
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Hotplug(Device::Vfio(v)) => Some(format!("+{}={}", v.id, v.host_bdf)),
            Call::Unplug(id, _) => Some(format!("-{id}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        plugged,
        [
            "+dm-vfio-0-f0=0000:3b:00.0",
            "+dm-vfio-0-f1=0000:3b:00.1",
            "-dm-vfio-0-f0"
        ]
    );

    let guest = reg.attach(&id, &cid("c1")).await.unwrap();
    let GuestLocation::Vfio {
        iommu_group,
        functions,
    } = &guest.location
    else {
        panic!("{guest:?}")
    };
    assert_eq!(*iommu_group, 7);
    assert_eq!(functions.len(), 2);
    assert_eq!(functions[1].host_address.to_string(), "0000:3b:00.1");
    let siblings: Vec<String> = functions[1]
        .siblings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(siblings, ["0000:3a:00.0", "0000:3b:00.0"]);
    assert_ne!(functions[0].pci_path, functions[1].pci_path);
    assert_eq!(
        reg.detach(&id, &cid("c1")).await.unwrap(),
        DetachOutcome::Unplugged
    );
    assert!(hotplugged_ids(&vm).is_empty());
}

#[tokio::test]
async fn char_and_vfio_control_devices_plug_nothing() {
    let sys = gpu_sysfs();
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), Some(sys.root()));
    let null = reg.register(DeviceInfo::char("/dev/null")).unwrap();
    let control = reg.register(DeviceInfo::vfio("/dev/vfio/vfio")).unwrap();
    let guest = reg.attach(&null, &cid("c1")).await.unwrap();
    assert_eq!(guest.location, GuestLocation::Char { major: 1, minor: 3 });
    assert_eq!(
        reg.attach(&control, &cid("c1")).await.unwrap().location,
        GuestLocation::VfioControl
    );
    assert_eq!(
        reg.detach(&null, &cid("c1")).await.unwrap(),
        DetachOutcome::Released
    );
    assert_eq!(reg.device(&null).unwrap().state, DeviceState::Detached);
    assert_eq!(vm.count(Method::Hotplug), 0);
    assert_eq!(reg.release_container(&cid("c1")).await.unwrap(), [control]);
}

#[tokio::test]
async fn attach_all_detaches_what_it_attached_when_one_fails() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let ids: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|n| reg.register(DeviceInfo::block(images.make(n))).unwrap())
        .collect();
    // Another container already holds the first disk.
    reg.attach(&ids[0], &cid("other")).await.unwrap();
    vm.fail_nth(Method::Hotplug, 2);
    assert!(matches!(
        reg.attach_all(&ids, &cid("c1")).await,
        Err(Error::Hotplug { id, .. }) if id == ids[2]
    ));
    // Disk 2 was unplugged again; disk 1 is still held by "other" only.
    assert_eq!(hotplugged_ids(&vm), [ids[0].clone()]);
    let first = reg.device(&ids[0]).unwrap();
    assert_eq!(first.users.keys().collect::<Vec<_>>(), ["other"]);
    let all = reg.attach_all(&ids, &cid("c1")).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(hotplugged_ids(&vm).len(), 3);
    let mut released = reg.release_container(&cid("c1")).await.unwrap();
    released.sort();
    assert_eq!(released, ids);
    assert_eq!(hotplugged_ids(&vm), [ids[0].clone()]);
}

#[tokio::test]
async fn release_carries_on_past_a_failure_and_reports_it() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let a = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    let b = reg.register(DeviceInfo::block(images.make("b"))).unwrap();
    reg.attach_all(&[a.clone(), b.clone()], &cid("c1"))
        .await
        .unwrap();
    vm.fail_next(Method::Unplug);
    match reg.release_container(&cid("c1")).await {
        Err(Error::Release { failed, .. }) => assert_eq!(failed, from_ref(&a)),
        other => panic!("{other:?}"),
    }
    assert_eq!(hotplugged_ids(&vm), from_ref(&a));
    assert_eq!(reg.release_container(&cid("c1")).await.unwrap(), [a]);
    assert!(hotplugged_ids(&vm).is_empty());
}

/// The mock behind a hot-plug that takes a while (as QEMU's does), so
/// that callers really overlap; optionally panics instead.
struct Slow {
    vm: MockHypervisor,
    delay: Duration,
    panic: AtomicBool,
}

#[async_trait]
impl DeviceHotplug for Slow {
    async fn hotplug(&self, device: Device) -> vc_hypervisor::Result<AttachedDevice> {
        tokio::time::sleep(self.delay).await;
        if self.panic.swap(false, Ordering::SeqCst) {
            panic!("hypervisor bug");
        }
        self.vm.hotplug(device).await
    }

    async fn unplug(&self, id: &str, timeout: Duration) -> vc_hypervisor::Result<()> {
        tokio::time::sleep(self.delay).await;
        self.vm.unplug(id, timeout).await
    }
}

fn slow(vm: &MockHypervisor) -> Arc<Slow> {
    Arc::new(Slow {
        vm: vm.clone(),
        delay: Duration::from_millis(30),
        panic: AtomicBool::new(false),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_attaches_plug_once_and_racing_detaches_unplug_once() {
    let vm = running_vm().await;
    let reg = registry_over(slow(&vm), None);
    let images = Images::new();
    let id = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    let attaches: Vec<_> = (0..8)
        .map(|i| {
            let (reg, id) = (reg.clone(), id.clone());
            tokio::spawn(async move { reg.attach(&id, &cid(&format!("c{i}"))).await })
        })
        .collect();
    let mut locations = Vec::new();
    for task in attaches {
        locations.push(task.await.unwrap().unwrap().location);
    }
    assert!(locations.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(vm.count(Method::Hotplug), 1);
    assert_eq!(reg.device(&id).unwrap().ref_count(), 8);

    let detaches: Vec<_> = (0..8)
        .map(|i| {
            let (reg, id) = (reg.clone(), id.clone());
            tokio::spawn(async move { reg.detach(&id, &cid(&format!("c{i}"))).await })
        })
        .collect();
    let mut unplugged = 0;
    for task in detaches {
        if task.await.unwrap().unwrap() == DetachOutcome::Unplugged {
            unplugged += 1;
        }
    }
    assert_eq!(unplugged, 1);
    assert_eq!(vm.count(Method::Unplug), 1);
    assert_eq!(reg.device(&id).unwrap().state, DeviceState::Detached);
    assert!(hotplugged_ids(&vm).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_attach_and_detach_end_consistent() {
    let vm = running_vm().await;
    let reg = registry_over(slow(&vm), None);
    let images = Images::new();
    let id = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    // Each container attaches and detaches three times; the device goes
    // in and out of the VM as the reference count crosses zero.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (reg, id) = (reg.clone(), id.clone());
            tokio::spawn(async move {
                for _ in 0..3 {
                    reg.attach(&id, &cid(&format!("c{i}"))).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5 * i)).await;
                    reg.detach(&id, &cid(&format!("c{i}"))).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(reg.device(&id).unwrap().state, DeviceState::Detached);
    assert_eq!(reg.device(&id).unwrap().ref_count(), 0);
    assert_eq!(vm.count(Method::Hotplug), vm.count(Method::Unplug));
    assert!(vm.count(Method::Hotplug) >= 1);
    assert!(hotplugged_ids(&vm).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_retries_when_the_first_attach_fails() {
    let vm = running_vm().await;
    let reg = registry_over(slow(&vm), None);
    let images = Images::new();
    let id = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    vm.fail_next(Method::Hotplug);
    let first = {
        let (reg, id) = (reg.clone(), id.clone());
        tokio::spawn(async move { reg.attach(&id, &cid("c1")).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = reg.attach(&id, &cid("c2")).await;
    assert!(matches!(first.await.unwrap(), Err(Error::Hotplug { .. })));
    second.unwrap();
    let status = reg.device(&id).unwrap();
    assert_eq!(status.users.keys().collect::<Vec<_>>(), ["c2"]);
    assert_eq!(vm.count(Method::Hotplug), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_attach_still_completes_and_a_panic_leaves_it_detached() {
    let vm = running_vm().await;
    let hotplug = slow(&vm);
    let reg = registry_over(hotplug.clone(), None);
    let images = Images::new();
    let id = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    // The caller gives up mid-hot-plug; the plug still finishes, and the
    // reference is the caller's to drop.
    let gave_up = tokio::time::timeout(Duration::from_millis(5), reg.attach(&id, &cid("c1"))).await;
    assert!(gave_up.is_err());
    let guest = reg.attach(&id, &cid("c2")).await.unwrap();
    assert_eq!(reg.device(&id).unwrap().ref_count(), 2);
    assert_eq!(vm.count(Method::Hotplug), 1);
    assert!(matches!(guest.location, GuestLocation::VirtioBlk { .. }));
    reg.release_container(&cid("c1")).await.unwrap();
    reg.release_container(&cid("c2")).await.unwrap();
    assert!(hotplugged_ids(&vm).is_empty());

    hotplug.panic.store(true, Ordering::SeqCst);
    assert!(matches!(
        reg.attach(&id, &cid("c1")).await,
        Err(Error::Interrupted { .. })
    ));
    assert_eq!(reg.device(&id).unwrap().state, DeviceState::Detached);
    reg.attach(&id, &cid("c1")).await.unwrap();
}

#[tokio::test]
async fn state_round_trips_and_restore_trusts_the_vm() {
    let vm = running_vm().await;
    let reg = registry_over(Arc::new(vm.clone()), None);
    let images = Images::new();
    let a = reg.register(DeviceInfo::block(images.make("a"))).unwrap();
    let b = reg.register(DeviceInfo::block(images.make("b"))).unwrap();
    let c = reg.register(DeviceInfo::block(images.make("c"))).unwrap();
    let guest_a = reg.attach(&a, &cid("c1")).await.unwrap();
    reg.attach(&b, &cid("c1")).await.unwrap();
    let json = serde_json::to_string(&reg.save_state()).unwrap();

    // Another process: the VM still has a, b was lost (say the guest
    // side vanished), and c was being attached when the process died.
    let mut state: DeviceManagerState = serde_json::from_str(&json).unwrap();
    state
        .devices
        .iter_mut()
        .find(|d| d.id == c)
        .unwrap()
        .in_flight = true;
    vm.unplug(&b, T).await.unwrap();
    let c_device = hypervisor_devices_of(&reg, &c);
    vm.hotplug(c_device).await.unwrap();

    let (restored, report) = DeviceManager::restore(
        state,
        Arc::new(vm.clone()),
        RegistryConfig::default(),
        logger(),
        &vm.devices(),
    )
    .await
    .unwrap();
    assert_eq!(report.lost, from_ref(&b));
    assert_eq!(report.cleaned, from_ref(&c));
    assert!(report.adopted.is_empty());
    assert_eq!(hotplugged_ids(&vm), from_ref(&a));
    let status = restored.device(&a).unwrap();
    assert_eq!(status.users["c1"], 1);
    assert!(matches!(&status.state, DeviceState::Attached { guest, .. } if *guest == guest_a));
    assert_eq!(restored.device(&b).unwrap().ref_count(), 0);
    // The restored registry goes on: ids continue, detach unplugs.
    let d = restored
        .register(DeviceInfo::block(images.make("d")))
        .unwrap();
    assert_eq!(d, "dm-blk-3");
    assert_eq!(
        restored.detach(&a, &cid("c1")).await.unwrap(),
        DetachOutcome::Unplugged
    );
    assert!(hotplugged_ids(&vm).is_empty());

    let mut bad = restored.save_state();
    bad.version = 99;
    assert!(matches!(
        DeviceManager::restore(
            bad,
            Arc::new(vm.clone()),
            RegistryConfig::default(),
            logger(),
            &[]
        )
        .await,
        Err(Error::InvalidSavedState { .. })
    ));
}

fn hypervisor_devices_of(reg: &DeviceManager, id: &str) -> Device {
    let status = reg.device(id).unwrap();
    super::record::hypervisor_devices(id, &status.info, &status.host)
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn cold_plugged_devices_are_adopted_and_stay() {
    let images = Images::new();
    // Register against a VM that is not started yet.
    let mut config = HypervisorConfig::new("vm", "/k", "/run/vm");
    let placeholder = MockHypervisor::new(config.clone());
    let reg = registry_over(Arc::new(placeholder), None);
    let id = reg
        .register(DeviceInfo::block(images.make("rootfs.img")))
        .unwrap();
    config.devices = reg.coldplug_devices(from_ref(&id)).unwrap();
    let vm = MockHypervisor::new(config);
    vm.start(T).await.unwrap();
    let reg = DeviceManager::restore(
        reg.save_state(),
        Arc::new(vm.clone()),
        RegistryConfig::default(),
        logger(),
        &[],
    )
    .await
    .unwrap()
    .0;
    let report = reg.reconcile(&vm.devices()).await.unwrap();
    assert_eq!(report.adopted, from_ref(&id));
    let guest = reg.attach(&id, &cid("c1")).await.unwrap();
    // The mock puts cold device i at root slot 3 + i.
    assert!(
        matches!(&guest.location, GuestLocation::VirtioBlk { pci_path, .. } if pci_path.to_string() == "03")
    );
    assert_eq!(
        reg.detach(&id, &cid("c1")).await.unwrap(),
        DetachOutcome::Released
    );
    assert!(matches!(
        reg.device(&id).unwrap().state,
        DeviceState::Attached {
            plug: PlugKind::Cold,
            ..
        }
    ));
    assert_eq!(vm.count(Method::Hotplug) + vm.count(Method::Unplug), 0);
    assert!(matches!(
        reg.coldplug_devices(from_ref(&id)),
        Err(Error::DeviceInUse { .. })
    ));
}

#[tokio::test]
async fn vfio_groups_cold_plug_on_the_qemu_command_line_in_attach_order() {
    use vc_hypervisor::accel::ResolvedAccelerator;
    use vc_hypervisor::qemu::cmdline;

    let sys = gpu_sysfs();
    sys.device("0000:0a:00.0", 5, Some("vfio-pci"), crate::test_sysfs::NIC);
    // Asked for in an arbitrary order; planned control first, then by address.
    let plan = crate::vfio::plan(
        &[
            crate::vfio::VfioRequest::coldplug("/dev/vfio/7"),
            crate::vfio::VfioRequest::coldplug("/dev/vfio/vfio"),
            crate::vfio::VfioRequest::coldplug("/dev/vfio/5"),
        ],
        sys.root(),
    )
    .unwrap();
    let placeholder = MockHypervisor::new(HypervisorConfig::new("vm", "/k", "/run/vm"));
    let reg = registry_over(Arc::new(placeholder), Some(sys.root()));
    let ids: Vec<String> = plan
        .iter()
        .map(|a| reg.register(DeviceInfo::vfio(&a.host_path)).unwrap())
        .collect();

    let mut config = HypervisorConfig::new("vm", "/k", "/run/vm");
    config.devices = reg.coldplug_devices(&ids).unwrap();
    let args =
        cmdline::build(&config, &Default::default(), ResolvedAccelerator::Tcg, None).unwrap();
    let vfio: Vec<serde_json::Value> = args
        .windows(2)
        .filter(|w| w[0] == "-device" && w[1].contains("vfio-pci"))
        .map(|w| serde_json::from_str(&w[1]).unwrap())
        .collect();
    let seen: Vec<(String, String, String)> = vfio
        .iter()
        .map(|d| {
            assert_eq!(d["driver"], "vfio-pci");
            assert_eq!(d["bus"], "pcie.0");
            let s = |k: &str| d[k].as_str().unwrap().to_owned();
            (s("id"), s("host"), s("addr"))
        })
        .collect();
    let expect =
        |id: &str, host: &str, addr: &str| (id.to_owned(), host.to_owned(), addr.to_owned());
    assert_eq!(
        seen,
        [
            expect("dm-vfio-1-f0", "0000:0a:00.0", "0x03"),
            expect("dm-vfio-2-f0", "0000:3b:00.0", "0x04"),
            expect("dm-vfio-2-f1", "0000:3b:00.1", "0x05"),
        ]
    );

    // The VM starts with them; reconcile adopts them, attach hands out
    // their root-bus slots with the IOMMU-group siblings.
    let vm = MockHypervisor::new(config);
    vm.start(T).await.unwrap();
    let reg = DeviceManager::restore(
        reg.save_state(),
        Arc::new(vm.clone()),
        RegistryConfig {
            sys_root: sys.root().to_owned(),
            ..RegistryConfig::default()
        },
        logger(),
        &vm.devices(),
    )
    .await
    .unwrap()
    .0;
    let guests = reg.attach_all(&ids, &cid("c1")).await.unwrap();
    assert_eq!(guests[0].location, GuestLocation::VfioControl);
    let GuestLocation::Vfio { functions, .. } = &guests[2].location else {
        panic!("{:?}", guests[2])
    };
    let paths: Vec<String> = functions.iter().map(|f| f.pci_path.to_string()).collect();
    assert_eq!(paths, ["04", "05"]);
    assert_eq!(functions[0].siblings.len(), 2);
    assert_eq!(vm.count(Method::Hotplug), 0);
}
