//! VM templating with QEMU (TCG on these hosts): a template VM whose RAM
//! is a shared memory file saves its device state; clones start from it
//! on private mappings of that file and carry on where the template
//! stopped, each on its own from there.
//!
//! Needs root, QEMU, busybox-static and the Debian kernel package; a host
//! without them fails the tests with a message naming what is missing.

use std::path::Path;
use std::time::{Duration, Instant};

use vc_hypervisor::{
    Error, Hypervisor, HypervisorConfig, MemoryFile, Qemu, QemuOptions, Unsupported,
};
use vc_test_support::{
    GuestShell, InitMode, busybox_image, logger, require_vm_host, runtime, small_vm_config,
    small_vm_options, vm_lock,
};

const START: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(10);

fn config(name: &str, dir: &Path, memory: &Path, shared: bool) -> HypervisorConfig {
    let mut c = small_vm_config(name, busybox_image(InitMode::Serve, &[]), &dir.join(name));
    c.memory_file = Some(MemoryFile {
        path: memory.to_owned(),
        shared,
    });
    c
}

fn options() -> QemuOptions {
    small_vm_options(1)
}

/// Boots the template, leaves a mark in guest RAM, saves it; two clones
/// come up with the mark and diverge; a clone of a missing state leaves
/// nothing behind.
#[test]
fn clones_resume_the_template_and_diverge() {
    require_vm_host();
    let _serial = vm_lock();
    // The memory file on a tmpfs, as the VM factory keeps it.
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let memory = tmp.path().join("memory");
    let state = tmp.path().join("state");
    runtime().block_on(async {
        let template = Qemu::new(
            config("vc-tmpl", tmp.path(), &memory, true),
            options(),
            logger(),
        )
        .unwrap();
        template.start(START).await.unwrap();
        let socket = template.config().agent_socket();
        let (mut guest, _) = GuestShell::connect(&socket, BOOT).await.unwrap();
        guest.run("echo from-template > /mark").await.unwrap();
        // Saved while the guest still thinks a host is connected, a clone
        // would wake up in the middle of the template's session: let the
        // guest see the hang-up first.
        drop(guest);
        tokio::time::sleep(Duration::from_millis(300)).await;
        template.save_device_state(&state, START).await.unwrap();
        template.stop(STOP).await.unwrap();
        assert!(state.metadata().unwrap().len() > 0);
        // RAM stayed out of the stream: the state is far smaller.
        let ram = memory.metadata().unwrap().len();
        assert!(
            state.metadata().unwrap().len() < ram / 16,
            "state of {} bytes for {ram} bytes of RAM",
            state.metadata().unwrap().len()
        );

        let clone = |name: &str| {
            Qemu::new(
                config(name, tmp.path(), &memory, false),
                options(),
                logger(),
            )
            .unwrap()
        };
        let (a, b) = (clone("vc-clone-a"), clone("vc-clone-b"));
        let started = Instant::now();
        let (ra, rb) = tokio::join!(
            a.start_from_state(&state, START),
            b.start_from_state(&state, START)
        );
        ra.unwrap();
        rb.unwrap();
        let (mut ga, _) = GuestShell::connect(&a.config().agent_socket(), BOOT)
            .await
            .unwrap();
        let (mut gb, _) = GuestShell::connect(&b.config().agent_socket(), BOOT)
            .await
            .unwrap();
        println!("two clones answering after {:?}", started.elapsed());
        assert_eq!(ga.run("cat /mark").await.unwrap(), "from-template");
        ga.run("echo clone-a > /mark").await.unwrap();
        assert_eq!(gb.run("cat /mark").await.unwrap(), "from-template");
        assert_eq!(ga.run("cat /mark").await.unwrap(), "clone-a");
        let pids = [a.vmm_pids()[0], b.vmm_pids()[0]];
        a.stop(STOP).await.unwrap();
        b.stop(STOP).await.unwrap();
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "QEMU {pid} left"
            );
        }

        // A state that is not there: an error naming the load, no QEMU
        // and no runtime dir left.
        let lost = clone("vc-clone-lost");
        let err = lost
            .start_from_state(&tmp.path().join("no-state"), START)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Migration { .. }), "{err}");
        // A state that is not one: QEMU refuses it and exits.
        std::fs::write(tmp.path().join("garbage"), [0x5a; 4096]).unwrap();
        let err = lost
            .start_from_state(&tmp.path().join("garbage"), START)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::VmmExited { .. }), "{err}");
        assert!(lost.vmm_pids().is_empty());
        assert!(!tmp.path().join("vc-clone-lost").exists());
    });
}

/// A VM whose RAM is not a shared memory file cannot be a template.
#[test]
fn only_a_shared_memory_file_can_be_saved() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut c = config("vc-plain", tmp.path(), &tmp.path().join("m"), true);
        c.memory_file = None;
        let vm = Qemu::new(c, options(), logger()).unwrap();
        vm.start(START).await.unwrap();
        let err = vm
            .save_device_state(&tmp.path().join("state"), START)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unsupported(Unsupported { .. })),
            "{err}"
        );
        assert!(!tmp.path().join("state").exists());
        vm.stop(STOP).await.unwrap();
    });
}
