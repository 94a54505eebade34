//! VM boot, start -> guest ready, through the SDK (`vc_hypervisor::Qemu`)
//! and through the same QEMU command line started by hand (the bare
//! baseline), interleaved in one run; prints both and their ratio.
//!
//! "Guest ready" is the moment the host reads the guest's first line on
//! the agent channel: the guest image (Debian kernel, default module set)
//! runs a small init that loads the modules, finds `agent.channel.0` and
//! writes a line. The SDK path adds what a user gets on top of bare QEMU:
//! config validation, accelerator probe, runtime dir handling, pidfd
//! supervision and the QMP handshake.
//!
//! `cargo bench -p vc-benches --bench boot [-- ROUNDS]` (default 5 rounds).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use vc_guest_image::{GuestImageBuilder, ImageCache, KernelPackage};
use vc_hypervisor::{Hypervisor, HypervisorConfig, Qemu, QemuOptions};

/// The guest side: ready as soon as the agent channel can carry a line.
const READY_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
while read -r m; do /bin/busybox insmod "/lib/modules/vc/$m"; done < /lib/modules/vc/load-order
for _ in $(/bin/busybox seq 1 400); do
  for p in /sys/class/virtio-ports/*; do
    if [ "$(/bin/busybox cat "$p/name" 2>/dev/null)" = agent.channel.0 ] && [ -e "/dev/${p##*/}" ]; then
      echo READY > "/dev/${p##*/}"
      exec /bin/busybox sleep 3600
    fi
  done
  /bin/busybox sleep 0.02
done
/bin/busybox poweroff -f
"#;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Connects to the agent socket (retrying until QEMU creates it) and
/// waits for the guest's first line.
async fn wait_guest_ready(socket: &Path) -> Duration {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(_) if start.elapsed() < TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("agent socket {}: {e}", socket.display()),
        }
    };
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("guest never became ready")
        .unwrap();
    assert_eq!(line.trim(), "READY");
    start.elapsed()
}

fn config(image: &vc_guest_image::GuestImage, run_dir: &Path) -> HypervisorConfig {
    let mut config = HypervisorConfig::new("vc-bench-boot", &image.vmlinux, run_dir)
        .with_initrd(&image.initramfs);
    config.memory.boot_mib = 256;
    config.memory.max_mib = 256;
    config
}

fn options() -> QemuOptions {
    QemuOptions {
        hotplug_ports: 2,
        ..QemuOptions::default()
    }
}

/// SDK: new + start + guest ready; the stop is timed apart.
async fn sdk_round(image: &vc_guest_image::GuestImage, run_dir: &Path) -> (Duration, Duration) {
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let config = config(image, run_dir);
    let socket = config.agent_socket();
    let start = Instant::now();
    let vm = Qemu::new(config, options(), logger).unwrap();
    vm.start(TIMEOUT).await.unwrap();
    wait_guest_ready(&socket).await;
    let boot = start.elapsed();
    let stop_start = Instant::now();
    vm.stop(Duration::from_secs(10)).await.unwrap();
    (boot, stop_start.elapsed())
}

/// Bare: the same arguments, spawned and killed by hand.
async fn bare_round(binary: &Path, args: &[String], run_dir: &Path) -> Duration {
    std::fs::create_dir_all(run_dir).unwrap();
    let socket = run_dir.join("agent.sock");
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_guest_ready(&socket).await;
    let boot = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(run_dir).unwrap();
    boot
}

fn stats(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    (samples[0], median, mean)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench targets without --bench: nothing to do then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let kernel =
        KernelPackage::find_installed().expect("the boot bench needs the Debian kernel package");
    assert!(
        Path::new("/bin/busybox").exists(),
        "the boot bench needs busybox-static"
    );
    let image = GuestImageBuilder::new(kernel, READY_INIT.as_bytes().to_vec())
        .extra_file("/bin/busybox", PathBuf::from("/bin/busybox"), 0o755)
        .build_cached(&ImageCache::in_target_dir())
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // The bare baseline runs exactly the SDK's command line.
    let probe = Qemu::new(
        config(&image, &run_dir),
        options(),
        slog::Logger::root(slog::Discard, slog::o!()),
    )
    .unwrap();
    let qemu_args = probe.command_line().unwrap();
    let binary = probe.options().binary.clone();
    println!(
        "accelerator: {:?} ({})",
        probe.accelerator().accelerator,
        probe.accelerator().reason
    );
    println!("qemu {}", qemu_args.join(" "));
    drop(probe);

    let (mut sdk, mut bare, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        // One warm-up of each, not counted (page cache, first QEMU start).
        sdk_round(&image, &run_dir).await;
        bare_round(&binary, &qemu_args, &run_dir).await;
        for round in 0..rounds {
            let (boot, stop) = sdk_round(&image, &run_dir).await;
            let baseline = bare_round(&binary, &qemu_args, &run_dir).await;
            println!(
                "round {round}: sdk {:>6.0} ms   bare {:>6.0} ms",
                boot.as_secs_f64() * 1e3,
                baseline.as_secs_f64() * 1e3
            );
            sdk.push(boot);
            bare.push(baseline);
            stops.push(stop);
        }
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (sdk_min, sdk_median, sdk_mean) = stats(&mut sdk);
    let (bare_min, bare_median, bare_mean) = stats(&mut bare);
    let (_, stop_median, _) = stats(&mut stops);
    println!("boot start -> guest ready, {rounds} rounds (min / median / mean):");
    println!(
        "  sdk  (vc_hypervisor::Qemu)   {:>6.0} / {:>6.0} / {:>6.0} ms",
        ms(sdk_min),
        ms(sdk_median),
        ms(sdk_mean)
    );
    println!(
        "  bare (same QEMU command)     {:>6.0} / {:>6.0} / {:>6.0} ms",
        ms(bare_min),
        ms(bare_median),
        ms(bare_mean)
    );
    println!(
        "  ratio sdk/bare (median)      {:.3}",
        ms(sdk_median) / ms(bare_median)
    );
    println!(
        "sdk stop (QMP quit + cleanup), median: {:.0} ms",
        ms(stop_median)
    );
}
