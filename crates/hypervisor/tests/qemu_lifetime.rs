//! A VM across processes: started by a creator process (this test binary
//! re-executed) that exits or hangs, then attached to, watched and
//! stopped from the test process.
//!
//! Needs root, QEMU, busybox-static and the Debian kernel package; a host
//! without them fails the tests with a message naming what is missing.

mod reexec;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use reexec::{eventually, line_from, wait_exit};
use vc_hypervisor::process::{self, KEEPER_NAME, ProcessLedger};
use vc_hypervisor::{
    Error, ExitStatus, Hypervisor, HypervisorConfig, HypervisorState, ProcessLifetime, Qemu,
    QemuOptions, QemuState, VmStatus,
};
use vc_test_support::{
    GuestShell, InitMode, busybox_image, logger, require_vm_host, runtime, small_vm_config,
    small_vm_options, vm_lock,
};

/// A config for the busybox test image with its runtime dir under `dir`.
fn config(name: &str, dir: &Path) -> HypervisorConfig {
    small_vm_config(name, busybox_image(InitMode::Serve, &[]), &dir.join("run"))
}

/// The QEMU options of the test VMs.
fn options() -> QemuOptions {
    small_vm_options(2)
}

const START: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(10);

/// Which role a re-executed test binary plays.
const ROLE: &str = "VC_QEMU_TEST_ROLE";
/// The directory the creator's VM lives under.
const DIR: &str = "VC_QEMU_TEST_DIR";

/// The entry point of re-executed creators; does nothing in a normal run.
#[test]
#[ignore = "entry point of the creator processes the other tests re-execute"]
fn creator_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(DIR).unwrap());
    let mut cfg = config("vc-test-creator", &dir);
    cfg.lifetime = match role.as_str() {
        "start-and-exit" => ProcessLifetime::OutlivesOwner,
        _ => ProcessLifetime::DiesWithOwner,
    };
    // One thread: once `block_on` returns nothing polls the VM's
    // supervisor, so a QEMU that dies stays an unreaped zombie.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vm = Qemu::new(cfg, options(), logger()).unwrap();
    let state = rt.block_on(async {
        vm.start(START).await.unwrap();
        vm.save_state().unwrap()
    });
    reexec::say(&serde_json::to_string(&state).unwrap());
    match role.as_str() {
        // Dropping the owning handle of an outliving VM leaves it running.
        "start-and-exit" => drop(vm),
        "start-and-hang" => std::thread::sleep(Duration::from_secs(600)),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Starts a VM in a creator process; returns the creator and the state it saved.
fn start_in_creator(role: &str, dir: &Path) -> (reexec::Creator, HypervisorState) {
    let mut creator = reexec::creator(&[(ROLE, OsStr::new(role)), (DIR, dir.as_os_str())]);
    let line = line_from(&mut creator, |l| l.starts_with('{'));
    (creator, serde_json::from_str(&line).unwrap())
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

fn stat_field(pid: u32, field: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields after the command start at field 3.
    after.split_whitespace().nth(field - 3).map(str::to_owned)
}

#[test]
fn an_outliving_vm_survives_its_creator_and_is_stopped_by_another_process() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    let (mut creator, state) = start_in_creator("start-and-exit", tmp.path());
    let creator_pid = creator.0.id();
    assert!(wait_exit(&mut creator, START).success());

    let qemu = QemuState::from_hypervisor_state(&state).unwrap();
    let record = qemu.process();
    assert!(record.is_alive(), "QEMU died with its creator");
    // Under its keeper, re-parented away from the creator; recorded in
    // the runtime dir's ledger.
    let keeper: u32 = stat_field(record.pid, 4).unwrap().parse().unwrap();
    assert_eq!(comm(keeper), KEEPER_NAME);
    assert_ne!(keeper, creator_pid);
    let ledger = ProcessLedger::open(&qemu.config.runtime_dir);
    assert_eq!(ledger.records().unwrap(), std::slice::from_ref(&record));

    runtime().block_on(async {
        let vm = Qemu::attach(state.clone(), logger()).await.unwrap();
        assert_eq!(vm.vmm_processes(), std::slice::from_ref(&record));
        assert_eq!(vm.check().await.unwrap(), VmStatus::Running);
        let (mut guest, _) = GuestShell::connect(&vm.config().agent_socket(), BOOT)
            .await
            .unwrap();
        assert_eq!(guest.run("echo alive").await.unwrap(), "alive");

        let mut exit = vm.exit_watch();
        vm.stop(STOP).await.unwrap();
        let exit = tokio::time::timeout(STOP, exit.wait())
            .await
            .unwrap()
            .unwrap();
        // The keeper recorded how QEMU ended; this process read it.
        assert_eq!(exit.status, ExitStatus::Code(0));
        assert!(!Path::new(&format!("/proc/{}", record.pid)).exists());
        assert!(
            !qemu.config.runtime_dir.exists(),
            "left in the runtime dir: {:?}",
            std::fs::read_dir(&qemu.config.runtime_dir).map(|d| d.count())
        );
        eventually(STOP, || match comm(keeper).as_str() {
            KEEPER_NAME => Err(format!("keeper {keeper} still runs")),
            _ => Ok(()),
        });

        let err = Qemu::attach(state, logger()).await.unwrap_err();
        assert!(
            matches!(err, Error::VmmNotRunning { pid } if pid == record.pid),
            "{err}"
        );
    });
}

#[test]
fn a_killed_vm_reports_its_exit_status_to_attached_handles() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();

    // An outliving VM whose creator is gone: the keeper records the status.
    let (mut creator, state) = start_in_creator("start-and-exit", &tmp.path().join("outlives"));
    assert!(wait_exit(&mut creator, START).success());
    let pid = QemuState::from_hypervisor_state(&state).unwrap().pid;
    runtime().block_on(async {
        let vm = Qemu::attach(state.clone(), logger()).await.unwrap();
        let mut exit = vm.exit_watch();
        kill9(pid);
        let exit = tokio::time::timeout(STOP, exit.wait())
            .await
            .expect("the attached handle did not see QEMU die")
            .unwrap();
        assert_eq!(exit.status, ExitStatus::Signal(libc::SIGKILL));
        assert!(matches!(vm.check().await, Err(Error::VmmExited { .. })));
        assert!(vm.vmm_processes().is_empty());
        let err = Qemu::attach(state.clone(), logger()).await.unwrap_err();
        assert!(matches!(err, Error::VmmNotRunning { .. }), "{err}");
        vm.stop(STOP).await.unwrap();
        let runtime_dir = vm.config().runtime_dir.clone();
        assert!(!runtime_dir.exists(), "runtime dir left after stop");
    });

    // A VM that dies with its owner, owned here and attached here too:
    // the owner reaps it and records the status for the other handle.
    let cfg = config("vc-test-owned", &tmp.path().join("owned"));
    runtime().block_on(async {
        let owner = Qemu::new(cfg, options(), logger()).unwrap();
        owner.start(START).await.unwrap();
        let attached = Qemu::attach(owner.save_state().unwrap(), logger())
            .await
            .unwrap();
        let pid = owner.vmm_pids()[0];
        let mut seen_by_owner = owner.exit_watch();
        let mut seen_attached = attached.exit_watch();
        kill9(pid);
        for watch in [&mut seen_by_owner, &mut seen_attached] {
            let exit = tokio::time::timeout(STOP, watch.wait())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(exit.status, ExitStatus::Signal(libc::SIGKILL));
        }
        drop(attached);
        owner.stop(STOP).await.unwrap();
        assert!(!owner.config().runtime_dir.exists());
    });
}

#[test]
fn attach_refuses_a_vmm_that_is_a_zombie() {
    require_vm_host();
    let _serial = vm_lock();
    let tmp = tempfile::tempdir().unwrap();
    // The creator owns QEMU (it dies with it) and then stops reaping.
    let (creator, state) = start_in_creator("start-and-hang", tmp.path());
    let pid = QemuState::from_hypervisor_state(&state).unwrap().pid;
    assert_eq!(
        stat_field(pid, 4).unwrap(),
        creator.0.id().to_string(),
        "QEMU is the creator's child"
    );
    kill9(pid);
    eventually(STOP, || match stat_field(pid, 3).as_deref() {
        Some("Z") => Ok(()),
        other => Err(format!("QEMU {pid} is {other:?}, not a zombie")),
    });
    // /proc still shows it with its start time, but it is dead for us.
    assert!(!process::is_alive(
        pid,
        QemuState::from_hypervisor_state(&state).unwrap().start_time
    ));
    runtime().block_on(async {
        let err = Qemu::attach(state, logger()).await.unwrap_err();
        assert!(
            matches!(err, Error::VmmNotRunning { pid: p } if p == pid),
            "{err}"
        );
    });
    // Killing the creator hands the zombie to init, which reaps it.
    drop(creator);
}

fn kill9(pid: u32) {
    let pidfd = process::pidfd_open(pid).unwrap();
    process::kill(&pidfd).unwrap();
}
