//! Real VMs: QEMU (TCG on these hosts) boots the guest image with the
//! test init, and each test checks what a user of the SDK would.
//!
//! Needs root, QEMU, busybox-static and the Debian kernel package; a host
//! without them fails the tests with a message naming what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vc_hypervisor::{
    BlockDevice, ConfigError, Device, DeviceHotplug, Error, ExitStatus, GuestAddress, Hypervisor,
    HypervisorState, KvmUnusable, MacAddress, NetworkDevice, ProcessLifetime, Qemu, QemuOptions,
    QemuOptionsError, SerialPort, ShareBackend, SharedDir, VmStatus,
};
use vc_test_support::{
    GuestShell, InitMode, busybox_image, logger, require_vm_host, runtime, small_vm_config,
    small_vm_options, vm_lock,
};

/// A config for the busybox test image with its runtime dir under `dir`.
fn config(name: &str, dir: &Path) -> vc_hypervisor::HypervisorConfig {
    small_vm_config(name, busybox_image(InitMode::Serve, &[]), &dir.join("run"))
}

/// The QEMU options of the test VMs: 2 hot-plug ports.
fn options() -> QemuOptions {
    small_vm_options(2)
}

const START: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(10);
const UNPLUG: Duration = Duration::from_secs(20);

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Everything under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Kills a process (through a pidfd, so never a stranger) when dropped.
struct KillOnDrop(Option<std::os::fd::OwnedFd>);

impl KillOnDrop {
    fn new(pid: u32) -> Self {
        Self(vc_hypervisor::process::pidfd_open(pid).ok())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pidfd) = &self.0 {
            let _ = vc_hypervisor::process::kill(pidfd);
            for _ in 0..1000 {
                if !matches!(vc_hypervisor::process::try_reap(pidfd), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The PCI function under a bridge slot, e.g. `0000:01:00.0` under `0000:00:10.0`.
fn pci_child_command(path: &vc_hypervisor::PciPath) -> String {
    let port = path.0[0];
    format!(
        "ls -d /sys/bus/pci/devices/0000:00:{port:02x}.0/0000:*:{:02x}.0",
        path.0[1]
    )
}

#[test]
fn vm_lifecycle_vcpus_pause_hotplug_and_clean_stop() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();

    let mut cfg = config("vc-test-lifecycle", tmp.path());
    cfg.vcpus.boot = 2;
    cfg.vcpus.max = 2;
    cfg.devices.push(Device::SharedDir(SharedDir {
        id: "share0".into(),
        mount_tag: "hostshare".into(),
        backend: ShareBackend::NineP {
            host_path: share.clone(),
            read_only: true,
        },
    }));
    let runtime_dir = cfg.runtime_dir.clone();
    let agent_socket = cfg.agent_socket();
    let vm = Qemu::new(cfg, options(), logger()).unwrap();

    runtime().block_on(async {
        vm.start(START).await.unwrap();
        let (mut guest, ready) = GuestShell::connect(&agent_socket, BOOT).await.unwrap();
        let ready = ready.expect("no readiness marker on the agent channel");
        println!("guest ready: {ready}");
        assert_eq!(vm.check().await.unwrap(), VmStatus::Running);
        // The guest console is captured (nobody is connected to its socket).
        let console = std::fs::read_to_string(runtime_dir.join("console.log")).unwrap();
        assert!(console.contains("vc-test-init: serving on /dev/vport"), "console.log: {console:?}");

        // vCPU threads are real threads of the QEMU process, named by
        // debug-threads, and are queried afresh.
        let pid = vm.vmm_pids()[0];
        let threads = vm.vcpu_threads().await.unwrap();
        assert_eq!(threads.len(), 2);
        for t in &threads {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", t.tid))
                .unwrap_or_else(|e| panic!("vCPU thread {} is not a task of QEMU {pid}: {e}", t.tid));
            assert_eq!(comm.trim(), format!("CPU {}/TCG", t.cpu), "thread {}", t.tid);
        }
        assert_eq!(vm.vcpu_threads().await.unwrap(), threads);

        // The cold-plugged 9p share is mountable in the guest.
        let out = guest
            .run("mkdir -p /mnt && mount -t 9p -o trans=virtio,version=9p2000.L,ro hostshare /mnt && cat /mnt/hello.txt")
            .await
            .unwrap();
        assert_eq!(out, "hello from the host");

        // Paused vCPUs do not run the guest: a command sent while paused is
        // answered only after resume.
        vm.pause().await.unwrap();
        assert_eq!(vm.check().await.unwrap(), VmStatus::Paused);
        guest.send("echo after-resume").await.unwrap();
        assert!(guest.line(Duration::from_secs(2)).await.is_err(), "the guest answered while paused");
        vm.resume().await.unwrap();
        assert_eq!(vm.check().await.unwrap(), VmStatus::Running);
        assert_eq!(guest.answer(Duration::from_secs(20)).await.unwrap(), ("after-resume".into(), 0));

        // A hot-plugged disk appears in the guest at the PCI path returned.
        let mut block = BlockDevice::new("disk1", &disk);
        block.serial = Some("vc-test-disk1".into());
        let attached = vm.hotplug(Device::Block(block)).await.unwrap();
        let GuestAddress::Pci { path } = &attached.address else {
            panic!("disk address {:?}", attached.address)
        };
        assert_eq!(path.to_string(), "10/00");
        let blocks = guest
            .run_until("ls /sys/block", Duration::from_secs(30), |out| out.contains("vda"))
            .await
            .unwrap();
        println!("guest block devices: {blocks}");
        let function = guest.run(&pci_child_command(path)).await.unwrap();
        let disk_name = guest.run(&format!("ls {function}/virtio*/block")).await.unwrap();
        assert_eq!(disk_name, "vda");
        assert_eq!(guest.run("cat /sys/block/vda/serial").await.unwrap(), "vc-test-disk1");
        assert_eq!(guest.run("cat /sys/block/vda/size").await.unwrap(), (16u64 << 20 >> 9).to_string());
        assert!(vm.devices().iter().any(|d| d.device.id() == "disk1" && d.hotplugged));

        // The same id twice is refused; unplug removes it from the guest.
        let again = vm.hotplug(Device::Block(BlockDevice::new("disk1", &disk))).await;
        assert!(matches!(again, Err(Error::DeviceExists { .. })), "{again:?}");
        vm.unplug("disk1", UNPLUG).await.unwrap();
        guest
            .run_until("ls /sys/block", Duration::from_secs(30), |out| !out.contains("vda"))
            .await
            .unwrap();
        assert!(!vm.devices().iter().any(|d| d.device.id() == "disk1"));

        // A serial port hot-plugged by name shows up in the guest.
        let port_socket = runtime_dir.join("extra.sock");
        vm.hotplug(Device::Serial(SerialPort {
            id: "port1".into(),
            name: "vc.test.port".into(),
            socket: port_socket.clone(),
        }))
        .await
        .unwrap();
        guest
            .run_until("cat /sys/class/virtio-ports/*/name", Duration::from_secs(20), |out| {
                out.lines().any(|l| l == "vc.test.port")
            })
            .await
            .unwrap();
        assert!(port_socket.exists());
        vm.unplug("port1", UNPLUG).await.unwrap();
        assert!(!port_socket.exists());

        // A tap NIC: the hypervisor opens (creates) the host tap and hands
        // QEMU its file over QMP (getfd); the guest gets eth0; the tap goes
        // with QEMU's file.
        let tap = format!("vctest{}", std::process::id() % 100_000);
        vm.hotplug(Device::Network(NetworkDevice {
            id: "nic1".into(),
            tap: tap.clone(),
            mac: "52:54:00:12:34:56".parse::<MacAddress>().unwrap(),
            netns: None,
        }))
        .await
        .unwrap();
        assert!(Path::new("/sys/class/net").join(&tap).exists(), "host tap {tap} missing");
        let mac = guest
            .run_until("cat /sys/class/net/eth0/address 2>/dev/null || true", Duration::from_secs(30), |o| !o.is_empty())
            .await
            .unwrap();
        assert_eq!(mac, "52:54:00:12:34:56");
        vm.unplug("nic1", UNPLUG).await.unwrap();
        assert!(!Path::new("/sys/class/net").join(&tap).exists(), "host tap {tap} left behind");

        // 9p shares cannot be hot-plugged in QEMU: a typed error, nothing changes.
        let nine_p = vm
            .hotplug(Device::SharedDir(SharedDir {
                id: "share1".into(),
                mount_tag: "late".into(),
                backend: ShareBackend::NineP {
                    host_path: share.clone(),
                    read_only: false,
                },
            }))
            .await;
        assert!(matches!(nine_p, Err(Error::Unsupported(_))), "{nine_p:?}");

        // Stop: the process is gone (reaped), the exit was reported, and
        // nothing the backend made is left.
        let mut exit = vm.exit_watch();
        vm.stop(STOP).await.unwrap();
        let exit = tokio::time::timeout(STOP, exit.wait()).await.unwrap().unwrap();
        assert_eq!(exit.pid, pid);
        assert!(!process_exists(pid), "QEMU {pid} still exists (or is a zombie)");
        assert!(vm.vmm_pids().is_empty());
        assert!(!runtime_dir.exists(), "left in the runtime dir: {:?}", files_under(&runtime_dir));
        assert!(matches!(vm.check().await, Err(Error::InvalidState { .. })));
        // A second stop is harmless.
        vm.stop(STOP).await.unwrap();
    });
    assert_eq!(
        files_under(tmp.path()),
        ["disk.img", "share", "share/hello.txt"]
    );
}

#[test]
fn qemu_killed_mid_run_is_reported_and_cleaned_up() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("vc-test-kill9", tmp.path());
    let runtime_dir = cfg.runtime_dir.clone();
    let agent_socket = cfg.agent_socket();
    let vm = Qemu::new(cfg, options(), logger()).unwrap();
    runtime().block_on(async {
        vm.start(START).await.unwrap();
        let (mut guest, ready) = GuestShell::connect(&agent_socket, BOOT).await.unwrap();
        assert!(ready.is_some(), "no readiness marker");
        assert_eq!(guest.run("echo up").await.unwrap(), "up");
        let pid = vm.vmm_pids()[0];
        let mut exit = vm.exit_watch();

        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();

        let exit = tokio::time::timeout(Duration::from_secs(10), exit.wait())
            .await
            .expect("the backend did not report QEMU's death")
            .unwrap();
        assert_eq!(exit.status, ExitStatus::Signal(9));
        assert!(!process_exists(pid), "QEMU {pid} not reaped");
        assert!(matches!(vm.check().await, Err(Error::VmmExited { .. })));
        assert!(matches!(
            vm.vcpu_threads().await,
            Err(Error::VmmExited { .. })
        ));
        assert!(vm.vmm_pids().is_empty());
        // The guest end is gone too.
        assert!(!matches!(
            guest.line(Duration::from_secs(5)).await,
            Ok(Some(_))
        ));

        vm.stop(STOP).await.unwrap();
        assert!(
            !runtime_dir.exists(),
            "left in the runtime dir: {:?}",
            files_under(&runtime_dir)
        );
    });
}

#[test]
fn attach_from_saved_state_drives_and_stops_the_vm() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mut cfg = config("vc-test-attach", tmp.path());
    cfg.lifetime = ProcessLifetime::OutlivesOwner;
    let runtime_dir = cfg.runtime_dir.clone();
    let agent_socket = cfg.agent_socket();
    runtime().block_on(async {
        let owner = Qemu::new(cfg, options(), logger()).unwrap();
        owner.start(START).await.unwrap();
        let (guest, ready) = GuestShell::connect(&agent_socket, BOOT).await.unwrap();
        assert!(ready.is_some(), "no readiness marker");
        drop(guest);
        owner
            .hotplug(Device::Block(BlockDevice::new("disk1", &disk)))
            .await
            .unwrap();
        let pid = owner.vmm_pids()[0];

        // What an upper layer persists, then the creating handle lets go.
        let json = serde_json::to_string(&owner.save_state().unwrap()).unwrap();
        let detached = owner.detach().unwrap();
        // Nobody owns QEMU now: make sure a failing assertion cannot leak it.
        let _reaper = KillOnDrop::new(pid);
        assert!(process_exists(pid), "detach must not stop the VM");

        // A reused pid is refused.
        let mut forged = detached.clone();
        forged.start_time += 1;
        let err = Qemu::attach(forged.to_hypervisor_state().unwrap(), logger())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PidReused { .. }), "{err}");

        let state: HypervisorState = serde_json::from_str(&json).unwrap();
        let vm = Qemu::attach(state, logger()).await.unwrap();
        assert_eq!(vm.vmm_pids(), [pid]);
        assert_eq!(vm.check().await.unwrap(), VmStatus::Running);
        assert_eq!(vm.vcpu_threads().await.unwrap().len(), 1);
        assert!(
            vm.devices()
                .iter()
                .any(|d| d.device.id() == "disk1" && d.hotplugged)
        );
        // The agent channel is reachable again through the same socket.
        let (mut guest, _) = GuestShell::connect(&agent_socket, BOOT).await.unwrap();
        guest
            .run_until("ls /sys/block", Duration::from_secs(30), |o| {
                o.contains("vda")
            })
            .await
            .unwrap();
        vm.unplug("disk1", UNPLUG).await.unwrap();
        guest
            .run_until("ls /sys/block", Duration::from_secs(30), |o| {
                !o.contains("vda")
            })
            .await
            .unwrap();

        let mut exit = vm.exit_watch();
        vm.stop(STOP).await.unwrap();
        tokio::time::timeout(STOP, exit.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(!process_exists(pid), "QEMU {pid} still exists");
        assert!(
            !runtime_dir.exists(),
            "left in the runtime dir: {:?}",
            files_under(&runtime_dir)
        );

        // Once it is gone, attaching says so.
        let err = Qemu::attach(detached.to_hypervisor_state().unwrap(), logger())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::VmmNotRunning { pid: p } if p == pid),
            "{err}"
        );
    });
}

#[test]
fn failed_start_reports_qemu_stderr_and_leaves_nothing() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    // A file that is not a kernel: validation passes, QEMU refuses it.
    let bogus = tmp.path().join("not-a-kernel");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let mut cfg = config("vc-test-badkernel", tmp.path());
    cfg.kernel = bogus;
    let runtime_dir = cfg.runtime_dir.clone();
    let vm = Qemu::new(cfg, options(), logger()).unwrap();
    runtime().block_on(async {
        let err = vm.start(START).await.unwrap_err();
        match &err {
            Error::VmmExited { exit, stderr } => {
                assert_eq!(exit.status, ExitStatus::Code(1), "{err}");
                assert!(
                    stderr.contains("kernel"),
                    "stderr should say what is wrong: {stderr:?}"
                );
                assert!(!process_exists(exit.pid));
            }
            other => panic!("expected VmmExited, got {other}"),
        }
        assert!(
            !runtime_dir.exists(),
            "left behind: {:?}",
            files_under(&runtime_dir)
        );
        assert!(vm.vmm_pids().is_empty());
    });

    // A start that cannot finish in time is a timeout, and the QEMU it
    // spawned is killed and its files removed.
    let cfg = config("vc-test-timeout", tmp.path());
    let runtime_dir = cfg.runtime_dir.clone();
    let vm = Qemu::new(cfg, options(), logger()).unwrap();
    runtime().block_on(async {
        let exit = vm.exit_watch();
        let err = vm.start(Duration::from_millis(1)).await.unwrap_err();
        assert!(matches!(err, Error::StartTimeout { .. }), "{err}");
        let exit = exit.exited().expect("the spawned QEMU was not ended");
        assert!(!process_exists(exit.pid), "QEMU {} left running", exit.pid);
        assert!(
            !runtime_dir.exists(),
            "left behind: {:?}",
            files_under(&runtime_dir)
        );
    });
}

#[test]
fn missing_qemu_and_bad_configs_are_typed_errors() {
    // No VM starts here: these need only the files the config names.
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("vmlinux");
    let initrd = tmp.path().join("initrd");
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&initrd, b"i").unwrap();
    let base = vc_hypervisor::HypervisorConfig::new("vm", &kernel, tmp.path().join("run"))
        .with_initrd(&initrd);

    let mut missing = options();
    missing.binary = PathBuf::from("/nonexistent/qemu-system-x86_64");
    let err = Qemu::new(base.clone(), missing, logger()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidQemuOptions(QemuOptionsError::BinaryNotFound { path }) if path.ends_with("qemu-system-x86_64")),
        "{err}"
    );
    assert!(err.to_string().contains("invalid QEMU options"));

    let mut cfg = base.clone();
    cfg.memory.boot_mib = 16;
    cfg.memory.max_mib = 16;
    let err = Qemu::new(cfg, options(), logger()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig(ConfigError::MemoryTooSmall { .. })
        ),
        "{err}"
    );

    let mut cfg = base.clone();
    cfg.runtime_dir = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
    let err = Qemu::new(cfg, options(), logger()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig(ConfigError::SocketPathTooLong { .. })
        ),
        "{err}"
    );

    // Explicit KVM on a host that cannot run a stock guest is an error, not a hang.
    if Path::new(vc_hypervisor::DEFAULT_QEMU_BINARY).exists() {
        let mut cfg = base.clone();
        cfg.accelerator = vc_hypervisor::Accelerator::Kvm;
        let result = Qemu::new(cfg, options(), logger());
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(
                matches!(result, Err(Error::KvmUnusable(KvmUnusable::Pvm))),
                "{result:?}"
            );
        } else if !Path::new("/dev/kvm").exists() {
            assert!(
                matches!(
                    result,
                    Err(Error::KvmUnusable(KvmUnusable::DeviceUnavailable(_)))
                ),
                "{result:?}"
            );
        }
        // Auto on such a host falls back to TCG.
        let vm = Qemu::new(base.clone(), options(), logger()).unwrap();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(
                vm.accelerator().accelerator,
                vc_hypervisor::accel::ResolvedAccelerator::Tcg
            );
        }
    }
    // Nothing was created by any of this.
    assert!(!tmp.path().join("run").exists());
}
