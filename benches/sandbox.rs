//! The Sandbox API end to end, beside the bare QEMU boot of the same guest
//! image in the same run:
//!
//! - `create_sandbox` + `start_container` -> the container's first stdout
//!   byte (a busybox container that prints a line, then sleeps);
//! - host memory of an idle sandbox: RSS of QEMU plus its helpers
//!   (virtiofsd with virtio-fs);
//! - teardown: `stop` (SIGKILL to the container at once) + `delete`;
//! - bare: the same image booted by QEMU started by hand (no share, no
//!   cgroups, no state), until its agent answers a health check.
//!
//! Needs root and `make guest-image`.
//! `cargo bench -p vc-benches --bench sandbox [-- ROUNDS]` (default 3).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use vc_agent_client::{AgentConfig, Transport, TtrpcAgent};
use vc_guest_image::GuestImage;
use vc_hypervisor::{HypervisorConfig, Qemu, QemuOptions};
use vc_test_support::{
    ContainerSpec, bench_args, busybox_rootfs, discard, require_sandbox_host, spawn_bare_qemu,
};
use virtcontainers::{
    ContainerConfig, FsShareConfig, FsShareKind, Paths, QemuFactory, SandboxConfig, VmConfig,
    create_sandbox,
};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pids_of(name: &str, marker: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with(name))
        })
        .collect()
}

struct Round {
    first_byte: Duration,
    idle_rss_kib: u64,
    teardown: Duration,
}

async fn sdk_round(
    image: &GuestImage,
    dir: &Path,
    rootfs: &Path,
    share: FsShareKind,
    n: usize,
) -> Round {
    let id = format!("bench-{}-{n}", std::process::id());
    let bundle = ContainerSpec::new(rootfs, &["sh", "-c", "echo ready; sleep 1000"])
        .cwd("/")
        .save_bundle(&dir.join("bundle"));
    let mut config = SandboxConfig::new(
        id.parse().unwrap(),
        VmConfig::new(&image.vmlinux, &image.initramfs),
    );
    config.paths = Paths::under(dir);
    config.fs_share = FsShareConfig {
        kind: share,
        virtiofsd: None,
    };
    config
        .containers
        .push(ContainerConfig::from_bundle("c1".parse().unwrap(), &bundle).unwrap());
    let start = Instant::now();
    let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), discard())
        .await
        .unwrap();
    let mut io = sandbox
        .start_container(&"c1".parse().unwrap())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    io.stdout.read_exact(&mut byte).await.unwrap();
    let first_byte = start.elapsed();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let qemu = sandbox.status().await.unwrap().vmm_pid.unwrap();
    let mut idle_rss_kib = rss_kib(qemu);
    for pid in pids_of("virtiofsd", &id) {
        idle_rss_kib += rss_kib(pid);
    }

    // No grace period: the container's `sh` (its pid 1) ignores SIGTERM,
    // and waiting for it would time the grace, not the teardown.
    let start = Instant::now();
    sandbox.stop(Duration::ZERO).await.unwrap();
    sandbox.delete().await.unwrap();
    Round {
        first_byte,
        idle_rss_kib,
        teardown: start.elapsed(),
    }
}

/// The same guest image, QEMU started by hand, until the agent answers.
async fn bare_round(binary: &Path, args: &[String], run_dir: &Path) -> (Duration, u64) {
    std::fs::create_dir_all(run_dir).unwrap();
    let start = Instant::now();
    let qemu = spawn_bare_qemu(binary, args);
    let agent = TtrpcAgent::connect(
        Transport::Serial {
            socket: run_dir.join("agent.sock"),
        },
        AgentConfig {
            connect_timeout: Duration::from_secs(120),
            ..AgentConfig::default()
        },
        &discard(),
    )
    .await
    .unwrap();
    let ready = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(qemu.pid());
    drop(agent);
    drop(qemu);
    std::fs::remove_dir_all(run_dir).unwrap();
    (ready, rss)
}

fn median<T: Copy + Ord>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let Some(numbers) = bench_args() else {
        return;
    };
    let rounds = numbers.first().copied().unwrap_or(3).max(1);
    let image = require_sandbox_host();
    let tmp = tempfile::Builder::new()
        .prefix("vcbench")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = busybox_rootfs(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // The bare baseline: the SDK's command line for the same image, VM
    // size (1 vCPU + 256 MiB for a container without limits) and agent port.
    let run_dir = tmp.path().join("bare");
    let mut hc = HypervisorConfig::new("vc-bench-bare", &image.vmlinux, &run_dir)
        .with_initrd(&image.initramfs);
    hc.memory.boot_mib = 256;
    hc.memory.max_mib = 256;
    hc.agent_ports = 1;
    // The options QemuFactory::default() boots with.
    let probe = Qemu::new(hc, QemuOptions::default(), discard()).unwrap();
    let qemu_args = probe.command_line().unwrap();
    let binary = probe.options().binary.clone();
    drop(probe);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    rt.block_on(async {
        // Warm-ups, not counted.
        bare_round(&binary, &qemu_args, &run_dir).await;
        sdk_round(&image, &tmp.path().join("w"), &rootfs, FsShareKind::NineP, 0).await;
        let (mut bare_ready, mut bare_rss) = (Vec::new(), Vec::new());
        let mut results: Vec<(FsShareKind, Vec<Round>)> =
            vec![(FsShareKind::NineP, Vec::new()), (FsShareKind::VirtioFs, Vec::new())];
        for n in 0..rounds {
            let (ready, rss) = bare_round(&binary, &qemu_args, &run_dir).await;
            bare_ready.push(ready);
            bare_rss.push(rss);
            for (share, rounds) in &mut results {
                let r = sdk_round(&image, &tmp.path().join(format!("r{n}")), &rootfs, *share, n + 1).await;
                println!(
                    "round {n} {share:?}: create->stdout {:>6.0} ms, idle RSS {:>6} KiB, teardown {:>5.0} ms (bare ready {:>6.0} ms)",
                    ms(r.first_byte),
                    r.idle_rss_kib,
                    ms(r.teardown),
                    ms(ready)
                );
                rounds.push(r);
            }
        }
        let bare_ready = median(&mut bare_ready);
        let bare_rss = median(&mut bare_rss);
        println!("medians over {rounds} rounds:");
        println!("  bare QEMU, same image: start -> agent answers {:>6.0} ms, RSS {:>6} KiB", ms(bare_ready), bare_rss);
        for (share, r) in &mut results {
            let first = median(&mut r.iter().map(|r| r.first_byte).collect::<Vec<_>>());
            let rss = median(&mut r.iter().map(|r| r.idle_rss_kib).collect::<Vec<_>>());
            let down = median(&mut r.iter().map(|r| r.teardown).collect::<Vec<_>>());
            println!(
                "  SDK {share:?}: create -> first stdout byte {:>6.0} ms ({:.2}x bare boot), idle RSS (QEMU+helpers) {:>6} KiB ({:.2}x bare), teardown {:>5.0} ms",
                ms(first),
                ms(first) / ms(bare_ready),
                rss,
                rss as f64 / bare_rss as f64,
                ms(down)
            );
        }
    });
}
