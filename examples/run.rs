//! Runs a command in a container inside a fresh VM, streams its output,
//! and exits with its exit code.
//!
//! ```text
//! sudo cargo run --release --example run -- [--cpus N] [--memory SIZE] \
//!     [--sandbox-cgroup-only] [--fs-share 9p|virtio-fs] [--rootfs DIR] [--hold] \
//!     -- CMD ARGS...
//! ```
//!
//! The guest image comes from `make guest-image`
//! (`target/vc-guest-agent-image/`); the default rootfs is a busybox tree
//! built from the host's `busybox-static`. `--hold` keeps the sandbox up
//! after the command, prints where to look (sandbox id, QEMU pid, cgroup
//! paths) and waits for Enter or Ctrl-C before cleaning up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use slog::{Drain, o};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use virtcontainers::oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder,
};
use virtcontainers::{
    CgroupsConfig, ContainerConfig, FsShareConfig, FsShareKind, ProcessIo, QemuFactory,
    SandboxConfig, VmConfig, create_sandbox,
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
    /// Debug logs, and the guest console kept in the runtime directory.
    #[arg(long)]
    debug: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
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

/// Where `make guest-image` puts the image.
fn image_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("vc-guest-agent-image")
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
    Ok(ContainerConfig::from_bundle("main", dir)?)
}

async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) -> Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    to.flush().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let args = Args::parse();
    ensure!(
        nix_is_root(),
        "this example starts QEMU, mounts and writes host cgroups: run it as root"
    );
    let level = if args.debug {
        slog::Level::Debug
    } else {
        slog::Level::Warning
    };
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain.filter_level(level).fuse())
        .build()
        .fuse();
    let logger = slog::Logger::root(drain, o!());

    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| image_dir().join("vmlinux"));
    let initrd = args
        .initrd
        .clone()
        .unwrap_or_else(|| image_dir().join("initramfs.cpio"));
    if !kernel.is_file() || !initrd.is_file() {
        bail!(
            "no guest image at {} / {}: run `make guest-image` first",
            kernel.display(),
            initrd.display()
        );
    }

    let work = tempfile::Builder::new().prefix("vc-run-").tempdir()?;
    let rootfs = match &args.rootfs {
        Some(r) => r
            .canonicalize()
            .with_context(|| format!("--rootfs {}", r.display()))?,
        None => {
            let r = work.path().join("rootfs");
            vc_guest_image::rootfs::busybox_rootfs(
                &r,
                Path::new(vc_guest_image::rootfs::DEFAULT_BUSYBOX),
            )?;
            r
        }
    };
    let container = bundle(&work.path().join("bundle"), &rootfs, &args)?;

    let id = format!("run-{}", std::process::id());
    let mut vm = VmConfig::new(kernel, initrd);
    vm.debug = args.debug;
    let mut config = SandboxConfig::new(&id, vm);
    config.cgroups = Some(CgroupsConfig {
        sandbox_cgroup_only: args.sandbox_cgroup_only,
        ..CgroupsConfig::default()
    });
    config.fs_share = FsShareConfig {
        kind: match args.fs_share.as_deref() {
            Some("9p") => FsShareKind::NineP,
            Some("virtio-fs") => FsShareKind::VirtioFs,
            _ => FsShareKind::Auto,
        },
        virtiofsd: None,
    };
    config.containers.push(container);

    let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger.clone()).await?;
    let result = async {
        let ProcessIo { stdout, stderr } = sandbox.start_container("main").await?;
        let out = tokio::spawn(pump(stdout, tokio::io::stdout()));
        let err = tokio::spawn(pump(stderr, tokio::io::stderr()));
        let code = sandbox.wait_container("main").await?;
        out.await??;
        err.await??;
        if args.hold {
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
            eprintln!("holding; press Enter or Ctrl-C to clean up");
            let mut line = String::new();
            let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
            tokio::select! {
                _ = stdin.read_line(&mut line) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        anyhow::Ok(code)
    }
    .await;
    let stopped = sandbox.stop(Duration::from_secs(5)).await;
    let deleted = match stopped {
        Ok(()) => sandbox.delete().await,
        Err(e) => Err(e),
    };
    let code = result?;
    deleted.context("cleaning up the sandbox")?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
}
