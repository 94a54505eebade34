//! What VM tests share: a small VM config, one VM test at a time, a
//! runtime and loggers.

use std::path::Path;

use vc_guest_image::GuestImage;
use vc_hypervisor::{HypervisorConfig, QemuOptions};

/// Guest RAM of [`small_vm_config`]: enough for the test inits and a few
/// busybox containers.
pub const SMALL_VM_MIB: u64 = 256;

/// A config booting `image` with 1 vCPU and [`SMALL_VM_MIB`] of RAM, its
/// sockets and logs in `runtime_dir`.
pub fn small_vm_config(name: &str, image: &GuestImage, runtime_dir: &Path) -> HypervisorConfig {
    let mut config =
        HypervisorConfig::new(name, &image.vmlinux, runtime_dir).with_initrd(&image.initramfs);
    config.memory.boot_mib = SMALL_VM_MIB;
    config.memory.max_mib = SMALL_VM_MIB;
    config
}

/// The QEMU options of the test VMs: Debian's QEMU with `hotplug_ports`
/// PCIe root ports for hot-plug.
pub fn small_vm_options(hotplug_ports: u32) -> QemuOptions {
    QemuOptions {
        hotplug_ports,
        ..QemuOptions::default()
    }
}

static VM_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serialises the VM tests of a test binary (the CI machines have 2 cores
/// and no KVM). For a synchronous test; not from inside a runtime.
pub fn vm_lock() -> tokio::sync::MutexGuard<'static, ()> {
    VM_LOCK.blocking_lock()
}

/// [`vm_lock`] for an async test (the same lock).
pub async fn vm_lock_async() -> tokio::sync::MutexGuard<'static, ()> {
    VM_LOCK.lock().await
}

/// A multi-threaded runtime (2 workers) for one synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// A logger whose output the test harness captures (shown for a failing
/// test).
pub fn logger() -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(slog_term::TestStdoutWriter);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

/// A logger that drops everything (benches, noisy fixtures).
pub fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// The share of `over` that threads `tids` of process `pid` spent running
/// (1.0: one thread busy throughout), from their `/proc` CPU times: how a
/// test tells an idle guest (its vCPU threads) from one that spins.
pub async fn busy_share(pid: u32, tids: &[u32], over: std::time::Duration) -> f64 {
    let ticks = || -> u64 {
        tids.iter()
            .map(|tid| {
                let path = format!("/proc/{pid}/task/{tid}/stat");
                let stat = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {path}: {e}"));
                let after_comm = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
                let fields: Vec<&str> = after_comm.split(' ').collect();
                // utime and stime: fields 14 and 15 of proc_pid_stat(5).
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
            })
            .sum()
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = ticks();
    tokio::time::sleep(over).await;
    (ticks() - before) as f64 / hz / over.as_secs_f64()
}
