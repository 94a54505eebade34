//! The VM factory end to end: cold boots beside template clones and a pool
//! of booted VMs, in one run, on the real guest image (9p share):
//!
//! - agent ready: `VmFactory::start_vm` -> the agent answers a check
//!   (cold boot, template clone; a clone's time includes its reseed and
//!   clock set);
//! - `create_sandbox` + `start_container` -> the container's first stdout
//!   byte (cold, template, pool: its VMs warmed up by a `true` container),
//!   and in an already running sandbox
//!   `create_container` + `start_container` -> first byte (the floor a
//!   pool can reach: the VM and the sandbox are already there), the same
//!   once a container of that sandbox has ended, and the same for the
//!   first container of a fresh VM (a cold sandbox created
//!   without containers): what a VM's first container costs over its
//!   next ones (under TCG, guest code is translated on first use);
//! - host memory of 4 idle sandboxes, cold vs template: the sum of their
//!   QEMU processes' PSS (a page the clones share counts once in the
//!   total), and apart the template's tmpfs, which is host memory too;
//! - N sandboxes started at once (N = 1, 5, 10, 20; each runs `echo ok;
//!   sleep 5`), cold and template, with the default boot admission:
//!   successes, failures, wall time to the last first byte, sandboxes/s.
//!
//! Needs root and `make guest-image`.
//! `cargo bench -p vc-benches --bench factory [-- ROUNDS [N...]]`
//! (default 3 rounds; N = 1 5 10 20).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use vc_agent_client::AgentConfig;
use vc_guest_image::GuestImage;
use vc_test_support::{ContainerSpec, bench_args, busybox_rootfs, discard, require_sandbox_host};
use virtcontainers::{
    ContainerConfig, ContainerId, FsShareConfig, FsShareKind, Paths, PoolConfig, PoolFactory,
    QemuFactory, Sandbox, SandboxConfig, TemplateConfig, TemplateFactory, VmConfig, VmFactory,
    VmPool, create_sandbox, plan_sandbox,
};

/// Safety net on every wait (boots are waited for by progress).
const WALL: Duration = Duration::from_secs(600);
/// Memory measured with this many idle sandboxes.
const IDLE_SANDBOXES: usize = 4;
/// The N of "started at once" by default.
const AT_ONCE: [usize; 4] = [1, 5, 10, 20];

/// What every measurement shares: the image, a directory, a rootfs.
struct Bench {
    image: GuestImage,
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Bench {
    /// A sandbox like `run --factory template`'s (9p, default sizes),
    /// with one container running `args` when there are any.
    fn config(&self, id: &str, args: &[&str]) -> SandboxConfig {
        let mut config = SandboxConfig::new(
            id.parse().unwrap(),
            VmConfig::new(&self.image.vmlinux, &self.image.initramfs),
        );
        config.paths = Paths::under(self.dir.path());
        config.fs_share = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        if !args.is_empty() {
            config.containers.push(self.container("c1", id, args));
        }
        config
    }

    fn container(&self, name: &str, sandbox: &str, args: &[&str]) -> ContainerConfig {
        let bundle = ContainerSpec::new(&self.rootfs, args)
            .cwd("/")
            .save_bundle(&self.dir.path().join("bundles").join(sandbox).join(name));
        ContainerConfig::from_bundle(cid(name), &bundle).unwrap()
    }
}

fn cid(name: &str) -> ContainerId {
    name.parse().unwrap()
}

fn id(tag: &str, n: usize) -> String {
    format!("bf-{tag}-{}-{n}", std::process::id())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The factory's VM for a sandbox of the bench's shape, until its agent
/// answers a check; the VM is stopped after.
async fn agent_ready(b: &Bench, factory: &dyn VmFactory, id: &str) -> Duration {
    let plan = plan_sandbox(&b.config(id, &[])).unwrap();
    for dir in [&plan.runtime_dir, &plan.shared_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let log = discard();
    let start = Instant::now();
    let vm = factory.start_vm(plan.vm.clone(), WALL, &log).await.unwrap();
    let config = AgentConfig {
        connect_timeout: WALL,
        ..AgentConfig::default()
    };
    let agent = factory
        .connect_agent(&vm.agent_endpoint(), config, &log)
        .await
        .unwrap();
    agent.check().await.unwrap();
    let ready = start.elapsed();
    drop(agent);
    vm.stop(Duration::from_secs(2)).await.unwrap();
    for dir in [&plan.runtime_dir, &plan.shared_dir] {
        std::fs::remove_dir_all(dir).unwrap();
    }
    ready
}

/// Reads the container's first stdout byte.
async fn first_byte_of(sandbox: &Sandbox, name: &str) {
    let mut io = sandbox.start_container(&cid(name)).await.unwrap();
    let mut byte = [0u8; 1];
    io.stdout.read_exact(&mut byte).await.unwrap();
}

/// `create_sandbox` -> first stdout byte of its container (which then
/// sleeps); the sandbox is returned running.
async fn first_byte(b: &Bench, factory: Arc<dyn VmFactory>, id: &str) -> (Duration, Sandbox) {
    let config = b.config(id, &["sh", "-c", "echo ready; sleep 1000"]);
    let start = Instant::now();
    let sandbox = create_sandbox(config, factory, discard()).await.unwrap();
    first_byte_of(&sandbox, "c1").await;
    (start.elapsed(), sandbox)
}

/// In a running sandbox: `create_container` of `name` -> first stdout
/// byte (the container echoes and ends).
async fn in_running(b: &Bench, sandbox: &Sandbox, name: &str) -> Duration {
    let config = b.container(name, sandbox.id().as_str(), &["echo", "again"]);
    let start = Instant::now();
    sandbox.create_container(config).await.unwrap();
    first_byte_of(sandbox, name).await;
    start.elapsed()
}

async fn teardown(sandbox: Sandbox) {
    // The container's `sh` ignores SIGTERM: no grace period to wait out.
    sandbox.stop(Duration::ZERO).await.unwrap();
    sandbox.delete().await.unwrap();
}

async fn until_ready(pool: &VmPool) {
    let deadline = Instant::now() + WALL;
    while pool.counts().ready == 0 {
        assert!(Instant::now() < deadline, "pool stuck: {:?}", pool.counts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latency samples of one kind, in ms order of rounds.
#[derive(Default)]
struct Latency {
    cold_ready: Vec<Duration>,
    template_ready: Vec<Duration>,
    cold_byte: Vec<Duration>,
    template_byte: Vec<Duration>,
    pool_byte: Vec<Duration>,
    running_byte: Vec<Duration>,
    /// The same, once a container of that sandbox has ended (its memory
    /// is what the next one gets).
    after_ended_byte: Vec<Duration>,
    fresh_byte: Vec<Duration>,
}

/// One round of every latency, each alone on the host (the pool's refill
/// is waited for before the next measurement).
async fn latency_round(
    b: &Bench,
    n: usize,
    cold: &Arc<dyn VmFactory>,
    template: &Arc<dyn VmFactory>,
    pool: &Arc<VmPool>,
    l: &mut Latency,
) {
    l.cold_ready
        .push(agent_ready(b, cold.as_ref(), &id("cr", n)).await);
    l.template_ready
        .push(agent_ready(b, template.as_ref(), &id("tr", n)).await);
    let (t, sandbox) = first_byte(b, cold.clone(), &id("cb", n)).await;
    l.cold_byte.push(t);
    l.running_byte.push(in_running(b, &sandbox, "c2").await);
    sandbox.wait_container(&cid("c2")).await.unwrap();
    l.after_ended_byte.push(in_running(b, &sandbox, "c3").await);
    teardown(sandbox).await;
    let empty = create_sandbox(b.config(&id("cf", n), &[]), cold.clone(), discard())
        .await
        .unwrap();
    l.fresh_byte.push(in_running(b, &empty, "c2").await);
    teardown(empty).await;
    let (t, sandbox) = first_byte(b, template.clone(), &id("tb", n)).await;
    l.template_byte.push(t);
    teardown(sandbox).await;
    until_ready(pool).await;
    let pooled: Arc<dyn VmFactory> = Arc::new(PoolFactory::local(pool.clone()));
    let (t, sandbox) = first_byte(b, pooled, &id("pb", n)).await;
    l.pool_byte.push(t);
    teardown(sandbox).await;
    until_ready(pool).await;
    println!(
        "round {n}: agent ready cold {:>6.0} ms, template {:>5.0} ms | first byte cold {:>6.0} ms, template {:>5.0} ms, pool {:>5.0} ms, running sandbox {:>5.0} ms (after one ended {:>5.0} ms), fresh VM {:>5.0} ms",
        ms(l.cold_ready[n]),
        ms(l.template_ready[n]),
        ms(l.cold_byte[n]),
        ms(l.template_byte[n]),
        ms(l.pool_byte[n]),
        ms(l.running_byte[n]),
        ms(l.after_ended_byte[n]),
        ms(l.fresh_byte[n]),
    );
}

fn report_latency(l: &Latency) {
    let (cr, tr) = (median(&l.cold_ready), median(&l.template_ready));
    let (cb, tb) = (median(&l.cold_byte), median(&l.template_byte));
    let (pb, rb) = (median(&l.pool_byte), median(&l.running_byte));
    let fb = median(&l.fresh_byte);
    println!("medians over {} rounds:", l.cold_ready.len());
    println!(
        "  agent ready:  cold {:>6.0} ms, template {:>5.0} ms: {:>5.1}x faster (goal >= 10x)",
        ms(cr),
        ms(tr),
        ms(cr) / ms(tr)
    );
    println!(
        "  first byte:   cold {:>6.0} ms, template {:>5.0} ms: {:>5.1}x faster (goal >= 5x)",
        ms(cb),
        ms(tb),
        ms(cb) / ms(tb)
    );
    println!(
        "  first byte:   pool {:>6.0} ms, create_container in a running sandbox {:>5.0} ms: {:.2}x (goal <= 1.5x)",
        ms(pb),
        ms(rb),
        ms(pb) / ms(rb)
    );
    println!(
        "  first byte:   the first container of a fresh VM {:>5.0} ms ({:.2}x a running sandbox's next one; pool / fresh VM: {:.2}x)",
        ms(fb),
        ms(fb) / ms(rb),
        ms(pb) / ms(fb)
    );
    println!(
        "  first byte:   create_container in a running sandbox after one of its containers ended {:>5.0} ms (TCG: the guest reuses pages that held code; see init_on_free)",
        ms(median(&l.after_ended_byte)),
    );
}

/// Proportional set size of a process, KiB (0 once it is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes the files under `dir` occupy (a tmpfs: host memory).
fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// The total PSS of `IDLE_SANDBOXES` idle sandboxes' QEMU processes, KiB
/// (each sandbox made and its container started one after the other).
async fn idle_pss(b: &Bench, factory: &Arc<dyn VmFactory>, tag: &str) -> u64 {
    let mut sandboxes = Vec::new();
    for n in 0..IDLE_SANDBOXES {
        let (_, sandbox) = first_byte(b, factory.clone(), &id(tag, n)).await;
        sandboxes.push(sandbox);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut total = 0;
    for sandbox in &sandboxes {
        total += pss_kib(sandbox.status().await.unwrap().vmm_pid.unwrap());
    }
    for sandbox in sandboxes {
        teardown(sandbox).await;
    }
    total
}

/// What `n` sandboxes started at once made of it.
struct Burst {
    successes: usize,
    failures: Vec<String>,
    /// Start -> the last successful sandbox's first byte.
    last_first_byte: Duration,
    /// Start -> every sandbox done and removed.
    total: Duration,
}

/// One sandbox of a burst: its first byte's time since `start`, then its
/// container's exit, then it is removed.
async fn one_of_burst(
    config: SandboxConfig,
    factory: Arc<dyn VmFactory>,
    start: Instant,
) -> Result<Duration, String> {
    let sandbox = create_sandbox(config, factory, discard())
        .await
        .map_err(|e| chain(&e))?;
    let run = async {
        let mut io = sandbox
            .start_container(&cid("c1"))
            .await
            .map_err(|e| chain(&e))?;
        let mut out = [0u8; 3];
        io.stdout
            .read_exact(&mut out)
            .await
            .map_err(|e| chain(&e))?;
        let first = start.elapsed();
        let code = sandbox
            .wait_container(&cid("c1"))
            .await
            .map_err(|e| chain(&e))?;
        match (&out, code) {
            (b"ok\n", 0) => Ok(first),
            _ => Err(format!("output {out:?}, exit code {code}")),
        }
    }
    .await;
    let stopped = sandbox.stop(Duration::from_secs(2)).await;
    let deleted = sandbox.delete().await;
    let first = run?;
    stopped.map_err(|e| chain(&e))?;
    deleted.map_err(|e| chain(&e))?;
    Ok(first)
}

async fn burst(b: &Bench, factory: &Arc<dyn VmFactory>, tag: &str, n: usize) -> Burst {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let config = b.config(&id(tag, i), &["sh", "-c", "echo ok; sleep 5"]);
            tokio::spawn(one_of_burst(config, factory.clone(), start))
        })
        .collect();
    let mut burst = Burst {
        successes: 0,
        failures: Vec::new(),
        last_first_byte: Duration::ZERO,
        total: Duration::ZERO,
    };
    for task in tasks {
        match task.await.unwrap() {
            Ok(first) => {
                burst.successes += 1;
                burst.last_first_byte = burst.last_first_byte.max(first);
            }
            Err(e) => burst.failures.push(e),
        }
    }
    burst.total = start.elapsed();
    burst
}

async fn report_bursts(b: &Bench, counts: &[usize], factories: &[(&str, Arc<dyn VmFactory>)]) {
    println!("sandboxes started at once (each `echo ok; sleep 5`; default boot admission):");
    for &n in counts {
        for (name, factory) in factories {
            let r = burst(b, factory, &format!("{}{n}", &name[..1]), n).await;
            println!(
                "  N={n:>2} {name:<8}: {:>2} ok, {:>2} failed, last first byte {:>7.1} s, {:>5.2} sandboxes/s, all done and removed {:>6.1} s",
                r.successes,
                r.failures.len(),
                r.last_first_byte.as_secs_f64(),
                r.successes as f64 / r.last_first_byte.as_secs_f64().max(1e-3),
                r.total.as_secs_f64(),
            );
            if let Some(first) = r.failures.first() {
                println!("      first failure: {first}");
            }
        }
    }
}

fn main() {
    let Some(numbers) = bench_args() else {
        return;
    };
    let rounds = numbers.first().copied().unwrap_or(3).max(1);
    let counts = match numbers.get(1..) {
        Some(n) if !n.is_empty() => n.to_vec(),
        _ => AT_ONCE.to_vec(),
    };
    let image = require_sandbox_host();
    let dir = tempfile::Builder::new()
        .prefix("vcbench-factory")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let b = Bench { image, dir, rootfs };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&b, rounds, &counts));
}

async fn run(b: &Bench, rounds: usize, counts: &[usize]) {
    let template_config = TemplateConfig {
        dir: b.dir.path().join("template"),
        ..TemplateConfig::default()
    };
    let made = TemplateFactory::new(template_config.clone());
    let start = Instant::now();
    let info = made
        .init(&b.config("bf-proto", &[]), &discard())
        .await
        .unwrap();
    println!(
        "template: init {:.1} s (boot to agent {:.1} s), guest RAM {} MiB, device state {} KiB",
        start.elapsed().as_secs_f64(),
        info.boot_time.as_secs_f64(),
        info.memory_bytes >> 20,
        info.state_bytes >> 10
    );
    let cold: Arc<dyn VmFactory> = Arc::new(QemuFactory::default());
    let template: Arc<dyn VmFactory> = Arc::new(TemplateFactory::new(template_config));

    let mut pool_config = PoolConfig::new(b.config("bf-pool", &[]), 1);
    pool_config.dir = b.dir.path().join("pool");
    // Each pool VM runs its first container before it joins the pool.
    pool_config.warm_up = Some(b.container("warm-up", "bf-pool", &["true"]));
    let pool = VmPool::start(pool_config, discard()).await.unwrap();
    until_ready(&pool).await;
    // Warm-ups, not counted (page cache, first QEMU starts).
    teardown(first_byte(b, cold.clone(), &id("wc", 0)).await.1).await;
    teardown(first_byte(b, template.clone(), &id("wt", 0)).await.1).await;
    let mut latency = Latency::default();
    for n in 0..rounds {
        latency_round(b, n, &cold, &template, &pool, &mut latency).await;
    }
    pool.shutdown().await.unwrap();
    report_latency(&latency);

    let cold_pss = idle_pss(b, &cold, "mc").await;
    let template_pss = idle_pss(b, &template, "mt").await;
    let tmpfs = used_bytes(&b.dir.path().join("template").join("memory")) >> 10;
    println!(
        "{IDLE_SANDBOXES} idle sandboxes, total QEMU PSS: cold {} MiB, template {} MiB: {:.0} % less (goal >= 40 %); with the template's tmpfs ({} MiB): {:.0} % less",
        cold_pss >> 10,
        template_pss >> 10,
        100.0 * (1.0 - template_pss as f64 / cold_pss as f64),
        tmpfs >> 10,
        100.0 * (1.0 - (template_pss + tmpfs) as f64 / cold_pss as f64),
    );

    report_bursts(b, counts, &[("cold", cold), ("template", template)]).await;
    made.destroy(&discard()).await.unwrap();
}
