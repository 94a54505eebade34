//! The VM factory, as `kata-runtime factory` offers it: make, inspect and
//! remove the VM template, or serve a pool of booted VMs to other
//! processes.
//!
//! ```text
//! sudo cargo run --release --example factory -- init    [--vcpus N] [--memory-mib M] [--debug]
//! sudo cargo run --release --example factory -- status
//! sudo cargo run --release --example factory -- destroy
//! sudo cargo run --release --example factory -- serve --pool N [--template] [--warm-up]
//! ```
//!
//! The template (in `/run/vc/template`) is made for the sandboxes of the
//! `run` example: the image of `make guest-image`, the 9p share, the VM
//! sizes given here (the defaults are `run`'s). `run --factory template`
//! clones it; a sandbox that differs boots cold and the log says which
//! field differed. `serve` keeps N VMs booted (cloned from the template
//! with `--template`) and hands them to `run --factory pool` over
//! `/run/vc/pool.sock` until Ctrl-C, then stops the VMs it still holds;
//! with `--warm-up` each VM first runs `true` in a busybox container (a
//! VM's first container costs about twice its next ones under TCG).
//!
//! Templates are opt-in: clones share their template's memory pages, a
//! side channel between them (see `virtcontainers::template`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod common;

use anyhow::{Result, bail, ensure};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use virtcontainers::oci_spec::runtime::{ProcessBuilder, RootBuilder, SpecBuilder};
use virtcontainers::pool::{DEFAULT_POOL_DIR, DEFAULT_POOL_SOCKET};
use virtcontainers::template::DEFAULT_TEMPLATE_DIR;
use virtcontainers::{
    ContainerConfig, FsShareKind, PoolConfig, SandboxConfig, TemplateConfig, TemplateFactory,
    TemplateStatus, VmConfig, VmPool,
};

/// Make, inspect or remove the VM template; serve a pool of VMs.
#[derive(Parser)]
struct Args {
    /// The template's directory.
    #[arg(long, default_value = DEFAULT_TEMPLATE_DIR)]
    dir: PathBuf,
    /// Debug logs.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

/// The VM the template (or the pool) is made for.
#[derive(clap::Args)]
struct Shape {
    /// vCPUs of the guest itself (as `run` without `--cpus`: 1).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory of the guest itself, MiB (as `run` without `--memory`: 256).
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// The guest agent logs at debug level (must match `run --guest-debug`).
    #[arg(long)]
    guest_debug: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the template VM, save it, stop it (replaces any template).
    Init(Shape),
    /// Show the template: missing, ready (with what it was made for) or
    /// unusable (an init that died: `init` again).
    Status,
    /// Remove the template: its tmpfs, files and any leftover process.
    Destroy,
    /// Keep N VMs booted and hand them to other processes until Ctrl-C.
    Serve {
        /// How many VMs to keep ready.
        #[arg(long)]
        pool: usize,
        /// Clone the VMs from the template instead of booting them.
        #[arg(long)]
        template: bool,
        /// Run `true` in a busybox container in each VM before it joins
        /// the pool (from the host's busybox-static).
        #[arg(long)]
        warm_up: bool,
        /// The socket to serve on.
        #[arg(long, default_value = DEFAULT_POOL_SOCKET)]
        socket: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
}

fn main() -> ExitCode {
    common::run_main("factory", run(Args::parse()))
}

/// Sandboxes like `run`'s: the guest image, 9p, the default paths.
fn prototype(shape: &Shape) -> Result<SandboxConfig> {
    let (kernel, initrd) = (
        common::image_dir().join("vmlinux"),
        common::image_dir().join("initramfs.cpio"),
    );
    if !kernel.is_file() || !initrd.is_file() {
        bail!(
            "no guest image in {}: run `make guest-image` first",
            common::image_dir().display()
        );
    }
    let mut vm = VmConfig::new(kernel, initrd);
    vm.default_vcpus = shape.vcpus;
    vm.default_memory_mib = shape.memory_mib;
    vm.debug = shape.guest_debug;
    let mut config = SandboxConfig::new("factory-prototype".parse()?, vm);
    config.fs_share.kind = FsShareKind::NineP;
    Ok(config)
}

async fn run(args: Args) -> Result<ExitCode> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the factory mounts a tmpfs and starts QEMU: run it as root"
    );
    let logger = common::logger(args.debug);
    let factory = TemplateFactory::new(TemplateConfig {
        dir: args.dir.clone(),
        ..TemplateConfig::default()
    });
    match &args.command {
        Command::Init(shape) => {
            let started = std::time::Instant::now();
            let info = factory.init(&prototype(shape)?, &logger).await?;
            println!("template made in {}", args.dir.display());
            println!("  boot to agent:  {:?}", info.boot_time);
            println!("  init total:     {:?}", started.elapsed());
            println!(
                "  guest memory:   {} MiB (tmpfs {}/memory)",
                info.memory_bytes >> 20,
                args.dir.display()
            );
            println!("  device state:   {} KiB", info.state_bytes >> 10);
            println!(
                "  for:            {} vCPU, {} MiB, kernel {}",
                info.key.vcpus,
                info.key.memory_mib,
                info.key.kernel.path.display()
            );
        }
        Command::Status => match factory.status()? {
            TemplateStatus::Absent => println!("no template in {}", args.dir.display()),
            TemplateStatus::Ready(info) => {
                let age = info.saved_at.elapsed().unwrap_or_default();
                println!("template ready in {}", args.dir.display());
                println!(
                    "  saved:          {:?} ago",
                    Duration::from_secs(age.as_secs())
                );
                println!(
                    "  for:            {} vCPU, {} MiB, kernel {}",
                    info.key.vcpus,
                    info.key.memory_mib,
                    info.key.kernel.path.display()
                );
                println!("  QEMU:           {}", info.key.qemu_version);
                println!("  device state:   {} KiB", info.state_bytes >> 10);
            }
            TemplateStatus::Unusable { reason } => {
                println!("template in {} unusable: {reason}", args.dir.display());
                println!("  `factory init` rebuilds it, `factory destroy` removes it");
            }
        },
        Command::Destroy => {
            let report = factory.destroy(&logger).await?;
            println!(
                "template {} removed ({}; {} leftover process(es) ended; tmpfs {})",
                args.dir.display(),
                if report.had_template {
                    "it was complete"
                } else {
                    "there was no complete template"
                },
                report.processes_ended,
                if report.unmounted {
                    "unmounted"
                } else {
                    "was not mounted"
                },
            );
        }
        Command::Serve {
            pool,
            template,
            warm_up,
            socket,
            shape,
        } => {
            let pool = Pool {
                size: *pool,
                template: *template,
                warm_up: *warm_up,
            };
            serve(&args, &pool, socket, shape, logger).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool `serve` keeps.
struct Pool {
    size: usize,
    template: bool,
    warm_up: bool,
}

/// A busybox container running `true`, in `dir` (rootfs and bundle).
fn warm_up_container(dir: &std::path::Path) -> Result<ContainerConfig> {
    let rootfs = dir.join("rootfs");
    vc_guest_image::rootfs::busybox_rootfs(
        &rootfs,
        std::path::Path::new(vc_guest_image::rootfs::DEFAULT_BUSYBOX),
    )?;
    let spec = SpecBuilder::default()
        .root(RootBuilder::default().path(&rootfs).build()?)
        .process(
            ProcessBuilder::default()
                .args(vec!["true".to_owned()])
                .cwd("/")
                .build()?,
        )
        .build()?;
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle)?;
    spec.save(bundle.join("config.json"))?;
    Ok(ContainerConfig::from_bundle("warm-up".parse()?, bundle)?)
}

async fn serve(
    args: &Args,
    pool: &Pool,
    socket: &std::path::Path,
    shape: &Shape,
    logger: slog::Logger,
) -> Result<()> {
    let (size, template, warm_up) = (pool.size, pool.template, pool.warm_up);
    let mut config = PoolConfig::new(prototype(shape)?, size);
    config.dir = DEFAULT_POOL_DIR.into();
    // Kept until the pool stops: its VMs' warm-ups share the rootfs.
    let work = tempfile::Builder::new()
        .prefix("vc-pool-warm-up")
        .tempdir()?;
    if warm_up {
        config.warm_up = Some(warm_up_container(work.path())?);
    }
    // Handed to other processes: the VMs must not die with this one.
    config.outlive_owner = true;
    if template {
        config.template = Some(TemplateConfig {
            dir: args.dir.clone(),
            ..TemplateConfig::default()
        });
    }
    let pool: Arc<VmPool> = VmPool::start(config, logger).await?;
    println!(
        "serving a pool of {size} VM(s) ({}{}) on {}; Ctrl-C stops it",
        if template {
            "cloned from the template"
        } else {
            "booted"
        },
        if warm_up { ", warmed up" } else { "" },
        socket.display()
    );
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    pool.serve(socket, async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
    .await?;
    let counts = pool.counts();
    println!(
        "pool stopped: {} VM(s) handed over, {} failed start(s); the VMs it held were stopped",
        counts.handed_over, counts.failed_starts
    );
    Ok(())
}
