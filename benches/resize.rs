//! Growing a running sandbox by 1 vCPU and 256 MiB, beside the cold
//! start of a sandbox that has them from the start:
//!
//! - grow: `create_container` of a container of 1 CPU and 256 MiB into a
//!   running sandbox of 1 vCPU and 256 MiB (hot-plug of a vCPU and a DIMM,
//!   the guest onlining both, the host cgroups re-applied, and the
//!   container made), less `create_container` of a container that fits
//!   (the container alone): what growing adds;
//! - cold: `create_sandbox` with and without that container (its VM
//!   booting with 2 vCPUs and 512 MiB, or 1 and 256).
//!
//! Needs root and `make guest-image`; virtio-fs (guest RAM a shared memfd,
//! the DIMM one too). `cargo bench -p vc-benches --bench resize [-- ROUNDS]`
//! (default 3).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder};
use vc_guest_image::GuestImage;
use vc_test_support::{ContainerSpec, bench_args, busybox_rootfs, discard, require_sandbox_host};
use virtcontainers::{
    ContainerConfig, FsShareConfig, FsShareKind, Paths, QemuFactory, Sandbox, SandboxConfig,
    VmConfig, create_sandbox,
};

/// A sleeping container; with `grow`, of 1 CPU and 256 MiB.
fn container(dir: &Path, rootfs: &Path, name: &str, grow: bool) -> ContainerConfig {
    let mut spec = ContainerSpec::new(rootfs, &["sleep", "1000"]).cwd("/");
    if grow {
        let cpu = LinuxCpuBuilder::default()
            .quota(100_000i64)
            .period(100_000u64)
            .build()
            .unwrap();
        let memory = LinuxMemoryBuilder::default()
            .limit(256i64 << 20)
            .build()
            .unwrap();
        spec = spec.resources(
            LinuxResourcesBuilder::default()
                .cpu(cpu)
                .memory(memory)
                .build()
                .unwrap(),
        );
    }
    let bundle = spec.save_bundle(&dir.join(name));
    ContainerConfig::from_bundle(name.parse().unwrap(), &bundle).unwrap()
}

fn config(
    image: &GuestImage,
    dir: &Path,
    id: &str,
    containers: Vec<ContainerConfig>,
) -> SandboxConfig {
    let mut vm = VmConfig::new(&image.vmlinux, &image.initramfs);
    vm.max_vcpus = 4;
    vm.max_memory_mib = 1024;
    let mut config = SandboxConfig::new(id.parse().unwrap(), vm);
    config.paths = Paths::under(dir);
    config.fs_share = FsShareConfig {
        kind: FsShareKind::VirtioFs,
        virtiofsd: None,
    };
    config.containers = containers;
    config
}

async fn timed_create(config: SandboxConfig) -> (Sandbox, Duration) {
    let start = Instant::now();
    let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), discard())
        .await
        .unwrap();
    (sandbox, start.elapsed())
}

async fn teardown(sandbox: Sandbox) {
    sandbox.stop(Duration::ZERO).await.unwrap();
    sandbox.delete().await.unwrap();
}

struct Round {
    cold_small: Duration,
    cold_big: Duration,
    create_growing: Duration,
    create_fitting: Duration,
}

async fn round(image: &GuestImage, dir: &Path, rootfs: &Path, n: usize) -> Round {
    let pid = std::process::id();
    let base = container(dir, rootfs, "base", false);
    let (sandbox, cold_small) = timed_create(config(
        image,
        dir,
        &format!("bench-rs-{pid}-{n}"),
        vec![base.clone()],
    ))
    .await;
    let start = Instant::now();
    sandbox
        .create_container(container(dir, rootfs, "fits", false))
        .await
        .unwrap();
    let create_fitting = start.elapsed();
    let start = Instant::now();
    sandbox
        .create_container(container(dir, rootfs, "grows", true))
        .await
        .unwrap();
    let create_growing = start.elapsed();
    let r = sandbox.vm_resources();
    assert_eq!((r.vcpus, r.memory_mib), (2, 512), "the VM grew");
    teardown(sandbox).await;

    let big = vec![base, container(dir, rootfs, "grows", true)];
    let (sandbox, cold_big) =
        timed_create(config(image, dir, &format!("bench-rb-{pid}-{n}"), big)).await;
    let r = sandbox.vm_resources();
    assert_eq!((r.vcpus, r.memory_mib), (2, 512), "booted with them");
    teardown(sandbox).await;
    Round {
        cold_small,
        cold_big,
        create_growing,
        create_fitting,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
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
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    rt.block_on(async {
        // A warm-up, not counted.
        round(&image, &tmp.path().join("w"), &rootfs, 0).await;
        let mut all = Vec::new();
        for n in 0..rounds {
            let r = round(&image, &tmp.path().join(format!("r{n}")), &rootfs, n + 1).await;
            println!(
                "round {n}: grow by 1 vCPU + 256 MiB {:>5.0} ms (create {:>5.0} ms, {:>5.0} ms without growing); cold start {:>6.0} ms with them, {:>6.0} ms without",
                ms(r.create_growing.saturating_sub(r.create_fitting)),
                ms(r.create_growing),
                ms(r.create_fitting),
                ms(r.cold_big),
                ms(r.cold_small),
            );
            all.push(r);
        }
        let grow = median(all.iter().map(|r| r.create_growing.saturating_sub(r.create_fitting)).collect());
        let growing = median(all.iter().map(|r| r.create_growing).collect());
        let fitting = median(all.iter().map(|r| r.create_fitting).collect());
        let big = median(all.iter().map(|r| r.cold_big).collect());
        let small = median(all.iter().map(|r| r.cold_small).collect());
        println!("medians over {rounds} rounds:");
        println!(
            "  grow a running sandbox by 1 vCPU + 256 MiB (hot-plug, online, re-constrain): {:>5.0} ms \
             (create_container {:>5.0} ms, {:>5.0} ms for one that fits)",
            ms(grow),
            ms(growing),
            ms(fitting)
        );
        println!(
            "  cold start with 2 vCPUs + 512 MiB: {:>6.0} ms (1 vCPU + 256 MiB: {:>6.0} ms)",
            ms(big),
            ms(small)
        );
    });
}
