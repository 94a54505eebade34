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

use std::path::Path;
use std::time::{Duration, Instant};

use vc_guest_image::GuestImage;
use vc_hypervisor::{Hypervisor, HypervisorConfig, Qemu};
use vc_test_support::{
    InitMode, Need, bench_args, busybox_image, discard, require, small_vm_config, small_vm_options,
    time_bare_boot, wait_ready_line,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn config(image: &GuestImage, run_dir: &Path) -> HypervisorConfig {
    small_vm_config("vc-bench-boot", image, run_dir)
}

/// SDK: new + start + guest ready; the stop is timed apart.
async fn sdk_round(image: &GuestImage, run_dir: &Path) -> (Duration, Duration) {
    let config = config(image, run_dir);
    let socket = config.agent_socket();
    let start = Instant::now();
    let vm = Qemu::new(config, small_vm_options(2), discard()).unwrap();
    vm.start(TIMEOUT).await.unwrap();
    wait_ready_line(&socket, TIMEOUT).await.unwrap();
    let boot = start.elapsed();
    let stop_start = Instant::now();
    vm.stop(Duration::from_secs(10)).await.unwrap();
    (boot, stop_start.elapsed())
}

fn stats(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    (samples[0], median, mean)
}

fn main() {
    let Some(numbers) = bench_args() else {
        return;
    };
    let rounds = numbers.first().copied().unwrap_or(5).max(1);
    require(&[Need::Qemu, Need::Busybox, Need::GuestKernel]);
    let image = busybox_image(InitMode::ReadyLine, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // The bare baseline runs exactly the SDK's command line.
    let probe = Qemu::new(config(image, &run_dir), small_vm_options(2), discard()).unwrap();
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
        sdk_round(image, &run_dir).await;
        time_bare_boot(&binary, &qemu_args, &run_dir, TIMEOUT).await;
        for round in 0..rounds {
            let (boot, stop) = sdk_round(image, &run_dir).await;
            let baseline = time_bare_boot(&binary, &qemu_args, &run_dir, TIMEOUT).await;
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
