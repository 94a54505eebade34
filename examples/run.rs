//! Runs a command in a container inside a fresh VM, streams its output,
//! and exits with its exit code.
//!
//! ```text
//! sudo cargo run --release --example run -- [--cpus N] [--memory SIZE] \
//!     [--sandbox-cgroup-only] [--charge-guest-memory-to-pod] \
//!     [--fs-share 9p|virtio-fs] [--rootfs DIR] [--hold] \
//!     [--netns PATH | --net none|auto] [--dns LINE]... \
//!     [--factory cold|template|pool] [--debug] [--guest-debug] -- CMD ARGS...
//! ```
//!
//! Network: `--netns PATH` carries the interfaces of that network
//! namespace (e.g. one CNI set up, `/run/netns/NAME`) into the VM, with
//! their addresses and routes; `--net auto` (the default) gives the
//! sandbox a namespace of its own with only `lo`; `--net none` gives the
//! VM no network at all. `--dns 'nameserver 10.0.0.10'` (repeatable)
//! becomes the container's `/etc/resolv.conf`.
//!
//! `--factory` says where the VM comes from: booted for this run (`cold`,
//! the default), cloned from the template `factory init` made
//! (`template`), or taken from the pool `factory serve` keeps (`pool`).
//! Both use the 9p share; a sandbox that does not match boots cold, and a
//! warning names the field that differed.
//!
//! The guest image comes from `make guest-image`
//! (`target/vc-guest-agent-image/`); the default rootfs is a busybox tree
//! built from the host's `busybox-static`. `--hold` keeps the sandbox up
//! after the command, prints where to look (sandbox id, QEMU pid, cgroup
//! paths) and what the pod costs (`Sandbox::overhead`: the VMM's and
//! helpers' CPU and memory, charged to the pod or not, the cgroups' own
//! counters, the guest's view), and waits for Enter or Ctrl-C before
//! cleaning up.
//!
//! Like `runc run`: SIGINT, SIGTERM and SIGHUP are forwarded to the
//! container's process, whose exit code (128 + the signal when it was
//! killed) is the example's. The sandbox is removed on every exit path;
//! if the example itself is killed with SIGKILL, the VM dies with it and
//! the next run reclaims what it left (`reclaim_stale`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod common;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::signal::unix::{SignalKind, signal};
use virtcontainers::oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder,
};
use virtcontainers::{
    CgroupsConfig, ContainerConfig, ContainerId, FsShareConfig, FsShareKind, NetnsConfig,
    NetworkConfig, Paths, ProcessIo, Sandbox, SandboxConfig, Signal, VmConfig, create_sandbox,
    reclaim_stale,
};

/// Run a command in a container inside a VM.
#[derive(Parser)]
struct Args {
    /// CPUs the container may use (CFS quota); the VM gets them on top of
    /// one vCPU for the guest itself.
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory limit of the container (e.g. 256M, 1G); the VM gets it on top
    /// of 256 MiB for the guest itself.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Put every sandbox thread, this process included, in the sandbox cgroup.
    #[arg(long)]
    sandbox_cgroup_only: bool,
    /// Charge guest RAM to the sandbox cgroup (the VMM starts in its
    /// memory cgroup; cgroup v1), not to the overhead.
    #[arg(long)]
    charge_guest_memory_to_pod: bool,
    /// The filesystem share (default: virtio-fs when virtiofsd is installed).
    #[arg(long, value_parser = ["9p", "virtio-fs"])]
    fs_share: Option<String>,
    /// The container's rootfs (default: a busybox tree).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Guest kernel (default: target/vc-guest-agent-image/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs (default: target/vc-guest-agent-image/initramfs.cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Keep the sandbox up after the command until Enter or Ctrl-C.
    #[arg(long)]
    hold: bool,
    /// Use this network namespace (its interfaces, addresses and routes).
    #[arg(long, conflicts_with = "net")]
    netns: Option<PathBuf>,
    /// `auto`: a namespace of the sandbox's own, only `lo`; `none`: no
    /// network.
    #[arg(long, value_parser = ["none", "auto"])]
    net: Option<String>,
    /// A line of the container's /etc/resolv.conf (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// Debug logs (each create step and its time).
    #[arg(long)]
    debug: bool,
    /// The guest kernel and agent log at debug level, and the guest console
    /// is kept in the runtime directory (a template or pool VM must be made
    /// with the same flag to match).
    #[arg(long)]
    guest_debug: bool,
    /// Run this OCI bundle (`config.json` and its rootfs) instead of a
    /// command in a busybox container, as `runc run --bundle` does; its
    /// `process.terminal` is honoured when stdin is a terminal.
    #[arg(long, conflicts_with_all = ["rootfs", "cpus", "memory"])]
    bundle: Option<PathBuf>,
    /// Where the VM comes from: a cold boot, the VM template (`factory
    /// init`), or the pool `factory serve` keeps.
    #[arg(long, value_parser = common::FACTORIES, default_value = "cold")]
    factory: String,
    /// The command and its arguments.
    #[arg(
        last = true,
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    command: Vec<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.len()),
    );
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KI" | "KIB" => 1 << 10,
        "M" | "MB" | "MI" | "MIB" => 1 << 20,
        "G" | "GB" | "GI" | "GIB" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn bundle(dir: &Path, rootfs: &Path, args: &Args) -> Result<ContainerConfig> {
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(cpus) = args.cpus {
        ensure!(cpus > 0.0, "--cpus must be positive");
        let cpu = LinuxCpuBuilder::default()
            .quota((cpus * 100_000.0).round() as i64)
            .period(100_000u64)
            .build()?;
        resources = resources.cpu(cpu);
    }
    if let Some(memory) = args.memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(memory as i64).build()?);
    }
    let spec = SpecBuilder::default()
        .root(RootBuilder::default().path(rootfs).build()?)
        .process(
            ProcessBuilder::default()
                .args(args.command.clone())
                .env(vec![
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                    "HOME=/root".to_owned(),
                ])
                .cwd("/")
                .build()?,
        )
        .hostname("container")
        .linux(
            LinuxBuilder::default()
                .resources(resources.build()?)
                .build()?,
        )
        .build()?;
    std::fs::create_dir_all(dir)?;
    spec.save(dir.join("config.json"))?;
    Ok(ContainerConfig::from_bundle(main_id(), dir)?)
}

/// The container's id.
fn main_id() -> ContainerId {
    "main".parse().expect("a valid id")
}

/// Signals forwarded to the container, as `runc run` does.
const FORWARDED: [SignalKind; 3] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
];

/// Every forwarded signal, as one stream. Registered before the sandbox
/// exists, so a signal during creation is not fatal: it is delivered once
/// the container runs (or ends a run that has not started it yet).
fn forwarded_signals() -> Result<tokio::sync::mpsc::UnboundedReceiver<Signal>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for kind in FORWARDED {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        let number = Signal::new(kind.as_raw_value())?;
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(number).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

fn main() -> ExitCode {
    common::run_main("run", run(Args::parse()))
}

async fn run(args: Args) -> Result<ExitCode> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this example starts QEMU, mounts and writes host cgroups: run it as root"
    );
    let logger = common::logger(args.debug);
    let mut signals = forwarded_signals()?;
    let paths = Paths::default();
    // What an earlier run killed with SIGKILL left behind.
    let stale = reclaim_stale(&paths, logger.clone()).await?;
    for id in &stale.reclaimed {
        eprintln!("run: reclaimed sandbox {id} left by a process that died");
    }

    let work = tempfile::Builder::new().prefix("vc-run-").tempdir()?;
    let config = sandbox_config(&args, work.path(), paths)?;
    let terminal = config.containers.first().is_some_and(has_terminal);
    let created = std::time::Instant::now();
    let sandbox = create_sandbox(config, common::vm_factory(&args.factory), logger.clone())
        .await
        .context("creating the sandbox")?;
    if args.debug {
        eprintln!(
            "run: sandbox created in {:?} ({} factory)",
            created.elapsed(),
            args.factory
        );
    }
    let result = run_container(&sandbox, &args, terminal, &mut signals).await;
    // Every exit path cleans up: a failed run, a signal, a normal exit.
    let stopped = sandbox.stop(Duration::from_secs(5)).await;
    let deleted = match stopped {
        Ok(()) => sandbox.delete().await,
        Err(e) => Err(e),
    };
    let code = result?;
    deleted.context("cleaning up the sandbox")?;
    Ok(common::exit_code(code))
}

/// The sandbox for the command: its VM, cgroups, share and one container.
fn sandbox_config(args: &Args, work: &Path, paths: Paths) -> Result<SandboxConfig> {
    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| common::image_dir().join("vmlinux"));
    let initrd = args
        .initrd
        .clone()
        .unwrap_or_else(|| common::image_dir().join("initramfs.cpio"));
    if !kernel.is_file() || !initrd.is_file() {
        bail!(
            "no guest image at {} / {}: run `make guest-image` first",
            kernel.display(),
            initrd.display()
        );
    }
    let container = match &args.bundle {
        Some(dir) => user_bundle(dir)?,
        None => {
            let rootfs = match &args.rootfs {
                Some(r) => r
                    .canonicalize()
                    .with_context(|| format!("--rootfs {}", r.display()))?,
                None => {
                    let r = work.join("rootfs");
                    vc_guest_image::rootfs::busybox_rootfs(
                        &r,
                        Path::new(vc_guest_image::rootfs::DEFAULT_BUSYBOX),
                    )?;
                    r
                }
            };
            bundle(&work.join("bundle"), &rootfs, args)?
        }
    };
    let id = format!("run-{}", std::process::id());
    let mut vm = VmConfig::new(kernel, initrd);
    vm.debug = args.guest_debug;
    // The container's CPUs come on top of the guest's own vCPU: let the VM
    // have them even on a host with fewer CPUs (above the maximum is an
    // error, not a silent cap).
    let wanted = vm.default_vcpus + args.cpus.map_or(0, |c| c.ceil() as u32);
    vm.max_vcpus = vm.max_vcpus.max(wanted);
    let mut config = SandboxConfig::new(id.parse()?, vm);
    config.paths = paths;
    config.cgroups = Some(CgroupsConfig {
        sandbox_cgroup_only: args.sandbox_cgroup_only,
        charge_guest_memory_to_pod: args.charge_guest_memory_to_pod,
        ..CgroupsConfig::default()
    });
    config.fs_share = FsShareConfig {
        kind: match (args.fs_share.as_deref(), args.factory.as_str()) {
            (Some("9p"), _) => FsShareKind::NineP,
            (Some("virtio-fs"), _) => FsShareKind::VirtioFs,
            // Template and pool VMs carry a 9p share (virtio-fs needs
            // shared memory, which a clone's is not).
            (_, "template" | "pool") => FsShareKind::NineP,
            _ => FsShareKind::Auto,
        },
        virtiofsd: None,
    };
    config.network = NetworkConfig {
        netns: match (&args.netns, args.net.as_deref()) {
            (Some(path), _) => NetnsConfig::Path(path.clone()),
            (None, Some("none")) => NetnsConfig::Disabled,
            (None, _) => NetnsConfig::Create,
        },
        dns: args.dns.clone(),
    };
    config.containers.push(container);
    Ok(config)
}

/// An existing bundle, as `runc run --bundle` takes it. A terminal asked
/// for while stdin is not one is dropped, with a warning.
fn user_bundle(dir: &Path) -> Result<ContainerConfig> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--bundle {}", dir.display()))?;
    let mut container = ContainerConfig::from_bundle(main_id(), &dir)?;
    let wants_tty = container
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if wants_tty && !common::terminal::stdin_is_terminal() {
        eprintln!("run: process.terminal is set but stdin is not a terminal: running without one");
        let mut process = container.spec.process().clone().unwrap_or_default();
        process.set_terminal(Some(false));
        container.spec.set_process(Some(process));
    }
    Ok(container)
}

/// Whether the container's process runs on a terminal.
fn has_terminal(container: &ContainerConfig) -> bool {
    container
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// Starts the container, streams its output and our stdin, forwards
/// signals (and, on a terminal, window sizes) to it until it exits, and
/// returns its exit code.
async fn run_container(
    sandbox: &Sandbox,
    args: &Args,
    terminal: bool,
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>,
) -> Result<i32> {
    let main = main_id();
    // A signal that came while the sandbox was being made ends the run
    // before the command starts, as it would have ended `runc run`.
    if let Ok(sig) = signals.try_recv() {
        eprintln!("run: {sig} before the container started; cleaning up");
        return Ok(128 + sig.number());
    }
    let tty = terminal;
    // Raw mode for as long as the container owns the terminal.
    let _raw = tty.then(common::terminal::RawMode::enter).transpose()?;
    let ProcessIo { stdout, stderr } = sandbox.start_container(&main).await?;
    if tty && let Some((rows, columns)) = common::terminal::window_size() {
        sandbox.resize_terminal(&main, None, rows, columns).await?;
    }
    let out = tokio::spawn(common::copy(stdout, tokio::io::stdout()));
    let err = tokio::spawn(common::copy(stderr, tokio::io::stderr()));
    let wait = sandbox.wait_container(&main);
    tokio::pin!(wait);
    let mut winch = signal(SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 << 10];
    // The container's stdin is ours, as with `runc run`; `--hold` keeps
    // ours for its prompt.
    let mut stdin_open = !args.hold;
    let code = loop {
        tokio::select! {
            code = &mut wait => break code?,
            Some(sig) = signals.recv() => {
                if let Err(e) = sandbox.signal_process(&main, None, sig).await {
                    eprintln!("run: forwarding {sig}: {}", common::chain(&e));
                }
            }
            read = stdin.read(&mut buf), if stdin_open => match read {
                Ok(n) if n > 0 => {
                    if sandbox.write_stdin(&main, None, &buf[..n]).await.is_err() {
                        stdin_open = false;
                    }
                }
                _ => {
                    stdin_open = false;
                    let _ = sandbox.close_stdin(&main, None).await;
                }
            },
            Some(()) = winch.recv(), if tty => {
                if let Some((rows, columns)) = common::terminal::window_size() {
                    let _ = sandbox.resize_terminal(&main, None, rows, columns).await;
                }
            }
        }
    };
    out.await??;
    err.await??;
    if args.hold {
        hold(sandbox, signals).await?;
    }
    Ok(code)
}

/// Prints where to look and waits for Enter or a signal.
async fn hold(
    sandbox: &Sandbox,
    signals: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>,
) -> Result<()> {
    let status = sandbox.status().await?;
    eprintln!("sandbox:         {}", status.id);
    eprintln!(
        "QEMU pid:        {}",
        status.vmm_pid.map_or("-".into(), |p| p.to_string())
    );
    eprintln!(
        "sandbox cgroup:  {}",
        status.sandbox_cgroup.unwrap_or_default()
    );
    eprintln!(
        "overhead cgroup: {}",
        status.overhead_cgroup.unwrap_or_else(|| "none".into())
    );
    eprintln!("state:           {}", sandbox.state_dir().display());
    match sandbox.overhead().await {
        Ok(report) => eprintln!("\nwhat the pod costs:\n{report}"),
        Err(e) => eprintln!("no overhead report: {}", common::chain(&e)),
    }
    eprintln!("holding; press Enter or Ctrl-C to clean up");
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    tokio::select! {
        _ = stdin.read_line(&mut line) => {}
        _ = signals.recv() => {}
    }
    Ok(())
}
