//! vCPU and memory hot-plug on a real QEMU (TCG here) with the busybox
//! test image: what the guest sees, what QEMU's threads are, what the
//! saved state carries to another handle, and the limits.
//!
//! Needs root, QEMU, busybox-static and the Debian kernel package; a host
//! without them fails with a message naming what is missing.

use std::path::Path;
use std::time::Duration;

use vc_hypervisor::accel::ResolvedAccelerator;
use vc_hypervisor::{Error, Hypervisor, HypervisorConfig, Qemu, QemuState};
use vc_test_support::{
    GuestShell, InitMode, busybox_image, logger, require_vm_host, runtime, small_vm_config,
    small_vm_options, vm_lock,
};

const START: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(20);
const BLOCK_MIB: u64 = 128;

/// 1 vCPU of 4, 256 MiB of 1 GiB, guest RAM shared (a memfd: virtio-fs's
/// case, where hot-plugged memory must be shared too).
fn config(dir: &Path) -> HypervisorConfig {
    let mut c = small_vm_config(
        "vc-test-resize",
        busybox_image(InitMode::Serve, &[]),
        &dir.join("run"),
    );
    c.vcpus.boot = 1;
    c.vcpus.max = 4;
    c.memory.max_mib = 1024;
    c.memory.shared = true;
    c
}

/// Onlines every offline CPU and memory block, as the agent does.
const ONLINE_ALL: &str = "for f in /sys/devices/system/cpu/cpu*/online; do \
    [ \"$(cat $f)\" = 0 ] && echo 1 > $f; done; \
    for m in /sys/devices/system/memory/memory*/state; do \
    grep -q offline $m && echo online > $m; done; true";

/// The guest's MemTotal, kB.
async fn mem_total_kb(guest: &mut GuestShell) -> u64 {
    let out = guest.run("grep MemTotal /proc/meminfo").await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn vcpus_and_memory_grow_within_the_maxima_and_another_handle_knows_them() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let agent_socket = cfg.agent_socket();
    let vm = Qemu::new(cfg, small_vm_options(0), logger()).unwrap();
    runtime().block_on(async {
        vm.start(START).await.unwrap();
        let (mut guest, _) = GuestShell::connect(&agent_socket, START).await.unwrap();
        let r = vm.resources();
        assert_eq!(
            (r.vcpus, r.max_vcpus, r.memory_mib, r.max_memory_mib),
            (1, 4, 256, 1024)
        );
        let mem_before = mem_total_kb(&mut guest).await;

        // Two vCPUs: QEMU runs a thread for each, the guest finds them.
        let r = vm.resize_vcpus(3, T).await.unwrap();
        assert_eq!(r.vcpus, 3);
        let threads = vm.vcpu_threads().await.unwrap();
        assert_eq!(threads.len(), 3, "{threads:?}");
        let pid = vm.vmm_pids()[0];
        for t in &threads {
            assert!(Path::new(&format!("/proc/{pid}/task/{}", t.tid)).exists());
        }
        guest
            .run_until("cat /sys/devices/system/cpu/present", T, |o| o == "0-2")
            .await
            .unwrap();
        guest.run(ONLINE_ALL).await.unwrap();
        assert_eq!(guest.run("nproc").await.unwrap(), "3");

        // Above the maximum: a typed error and nothing changes.
        assert!(matches!(
            vm.resize_vcpus(5, T).await,
            Err(Error::VcpusAboveMax {
                requested: 5,
                max: 4
            })
        ),);
        assert_eq!(vm.vcpu_threads().await.unwrap().len(), 3);

        // 200 MiB more is two 128 MiB blocks: the guest gains 256 MiB.
        let r = vm.resize_memory(456, BLOCK_MIB, T).await.unwrap();
        assert_eq!(r.memory_mib, 512);
        guest
            .run_until("ls /sys/devices/system/memory | grep -c memory", T, |o| {
                o == "4"
            })
            .await
            .unwrap();
        guest.run(ONLINE_ALL).await.unwrap();
        assert_eq!(mem_total_kb(&mut guest).await, mem_before + (256 << 10));
        let over = vm.resize_memory(1025, BLOCK_MIB, T).await;
        assert!(
            matches!(
                over,
                Err(Error::MemoryAboveMax {
                    requested_mib: 1152,
                    max_mib: 1024
                })
            ),
            "{over:?}"
        );
        assert!(matches!(
            vm.resize_memory(600, 100, T).await,
            Err(Error::InvalidMemoryBlock { block_mib: 100 })
        ));

        // The saved state names every vCPU and DIMM plugged; a handle
        // attached from it knows the size.
        let state = QemuState::from_hypervisor_state(&vm.save_state().unwrap()).unwrap();
        assert_eq!(state.vcpus.len(), 2);
        assert_eq!(state.dimms.len(), 1);
        assert_eq!(state.dimms[0].size_mib, 256);
        let other = Qemu::attach(vm.save_state().unwrap(), logger())
            .await
            .unwrap();
        assert_eq!(other.resources(), vm.resources());

        // A resize through the other handle is seen by this one's next
        // resize (it reads QEMU first), not double-counted.
        other.resize_vcpus(4, T).await.unwrap();
        let r = vm.resize_vcpus(4, T).await.unwrap();
        assert_eq!(r.vcpus, 4);
        assert_eq!(vm.vcpu_threads().await.unwrap().len(), 4);

        // Shrinking: QEMU before 8.0 under TCG cannot unplug vCPUs safely
        // and says so; elsewhere the hot-plugged vCPUs go.
        match vm.resize_vcpus(1, T).await {
            Err(Error::Unsupported(u)) => {
                assert_eq!(
                    vm.accelerator().accelerator,
                    ResolvedAccelerator::Tcg,
                    "{u}"
                );
                assert_eq!(vm.resources().vcpus, 4, "a refused shrink changes nothing");
                assert_eq!(vm.vcpu_threads().await.unwrap().len(), 4);
            }
            Ok(r) => {
                assert_eq!(r.vcpus, 1);
                assert_eq!(vm.vcpu_threads().await.unwrap().len(), 1);
                guest.run_until("nproc", T, |o| o == "1").await.unwrap();
            }
            Err(e) => panic!("{e}"),
        }

        // Memory the guest has not onlined can go back (how a failed grow
        // is undone); onlined memory stays, as in Kata.
        assert_eq!(
            vm.resize_memory(640, BLOCK_MIB, T)
                .await
                .unwrap()
                .memory_mib,
            640
        );
        guest
            .run_until("ls /sys/devices/system/memory | grep -c memory", T, |o| {
                o == "5"
            })
            .await
            .unwrap();
        let r = vm.resize_memory(512, BLOCK_MIB, T).await.unwrap();
        assert_eq!(r.memory_mib, 512);
        guest
            .run_until("ls /sys/devices/system/memory | grep -c memory", T, |o| {
                o == "4"
            })
            .await
            .unwrap();
        assert_eq!(mem_total_kb(&mut guest).await, mem_before + (256 << 10));
        let state = QemuState::from_hypervisor_state(&vm.save_state().unwrap()).unwrap();
        assert_eq!(state.dimms.len(), 1);
        drop(other);
        vm.stop(T).await.unwrap();
    });
}
