//! `ctr run --rm IMAGE ID true`, wall time from `ctr` start to its exit,
//! under runc's shim and under ours, in one run on one private containerd
//! (the tests' harness and images): what a container costs to run in a
//! fresh VM (cold boot under TCG here) against a namespace container.
//!
//! Ours twice: cold, and cloned from a VM template (`[factory]
//! enable_template`, the template made by the shim's `factory-init`
//! before the rounds and removed after).
//!
//! Needs root, containerd, runc and `make guest-image`.
//! `cargo bench -p containerd-shim-vc-v2 --bench ctr_run [-- ROUNDS]`
//! (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::image::IMAGE;
use common::{Env, RUNC, VC, shim, template_config};
use vc_test_support::{bench_args, unique};

fn main() -> anyhow::Result<()> {
    // `cargo test --benches` runs benches without `--bench`: nothing to do.
    let Some(args) = bench_args() else {
        return Ok(());
    };
    let rounds = args.first().copied().unwrap_or(5).max(1);
    let env = Env::setup()?;
    println!("ctr run --rm {IMAGE} ID true: {rounds} rounds per runtime");
    let dir = env.containerd.scratch("bench-template");
    let config = template_config(&dir, &dir.join("template"))?;
    let config_arg = config.display().to_string();
    let templated = ["--runtime-config-path", config_arg.as_str()];
    println!("{}", shim(&config, "factory-init")?.trim());
    let mut report = Vec::new();
    for (label, runtime, extra) in [
        ("runc (io.containerd.runc.v2)", RUNC, &[][..]),
        ("vc cold (io.containerd.vc.v2)", VC, &[][..]),
        ("vc template (io.containerd.vc.v2)", VC, &templated[..]),
    ] {
        // One unmeasured run: page cache, containerd's first shim of a kind.
        env.run_rm(runtime, &unique("bench-warm"), extra, IMAGE, &["true"])?;
        let mut times = Vec::new();
        for _ in 0..rounds {
            let start = Instant::now();
            let out = env.run_rm(runtime, &unique("bench"), extra, IMAGE, &["true"])?;
            anyhow::ensure!(out.code == 0, "{label}: {out:?}");
            times.push(start.elapsed());
        }
        times.sort();
        report.push((label, times));
    }
    println!("{}", shim(&config, "factory-destroy")?.trim());
    println!(
        "{:<32} {:>9} {:>9} {:>9}",
        "runtime", "min", "median", "max"
    );
    for (label, times) in &report {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{label:<32} {:>7.0}ms {:>7.0}ms {:>7.0}ms",
            ms(&times[0]),
            ms(&times[times.len() / 2]),
            ms(&times[times.len() - 1])
        );
    }
    Ok(())
}
