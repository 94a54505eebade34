//! `vc`: a runc-style command-line runtime on the SDK's public API, one
//! process per command, each container in a VM of its own.
//!
//! ```text
//! sudo vc create --bundle DIR ID      # VM up, container created, returns
//!        [--factory cold|template|pool] # the VM: booted, cloned from `factory init`'s
//!                                       # template, or taken from `factory serve`'s pool
//! sudo vc start ID                    # starts it; streams its output until it exits
//! sudo vc exec ID -- CMD ARGS...      # an extra process; exits with its code
//! sudo vc kill ID [SIGNAL] [--all]    # SIGTERM by default; names or numbers
//! sudo vc state ID                    # JSON, like `runc state`
//! sudo vc list                        # the sandboxes and their phases
//! sudo vc delete [--force] ID         # container, VM and everything on the host
//! sudo vc reclaim                     # frees sandboxes whose owner and VM are gone
//! ```
//!
//! `create` asks for [`SandboxLifetime::UntilDeleted`]: the VM and its
//! helpers outlive the `create` process, and every later command reaches
//! them through [`fetch_sandbox`] or [`cleanup_container`]. The guest image
//! comes from `make guest-image` unless `--kernel`/`--initrd` say.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod common;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use virtcontainers::oci_spec::runtime::ProcessBuilder;
use virtcontainers::{
    ContainerConfig, ContainerId, ExecId, FsShareKind, Paths, QemuFactory, SandboxConfig,
    SandboxId, SandboxLifetime, Signal, VmConfig, cleanup_container, create_sandbox, fetch_sandbox,
    reclaim_stale,
};

/// A runc-style runtime whose containers run in VMs.
#[derive(Parser)]
struct Cli {
    /// Where sandbox state lives (default /run/vc/sbs; VM runtime dirs and
    /// shares go beside it).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Debug logs on stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a container from an OCI bundle, in a new VM.
    Create {
        /// The bundle (config.json and its rootfs).
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Guest kernel (default: target/vc-guest-agent-image/vmlinux).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Guest initramfs (default: target/vc-guest-agent-image/initramfs.cpio).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Where the VM comes from: a cold boot, the VM template (`factory
        /// init`), or the pool `factory serve` keeps; a template or pool
        /// VM that does not match boots cold (logged with `--debug`).
        #[arg(long, value_parser = common::FACTORIES, default_value = "cold")]
        factory: String,
        /// The container (and sandbox) id.
        id: ContainerId,
    },
    /// Starts a created container and streams its output until it exits.
    Start {
        /// The container id.
        id: ContainerId,
    },
    /// Runs an extra process in a running container.
    Exec {
        /// The exec id (default: exec-<pid>).
        #[arg(long)]
        exec_id: Option<ExecId>,
        /// The container id.
        id: ContainerId,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Sends a signal to the container's process.
    Kill {
        /// Every process of the container, not only its own.
        #[arg(long)]
        all: bool,
        /// The container id.
        id: ContainerId,
        /// The signal (a name such as SIGTERM, TERM, or a number).
        #[arg(default_value = "SIGTERM")]
        signal: Signal,
    },
    /// Prints the container's state as JSON.
    State {
        /// The container id.
        id: ContainerId,
    },
    /// Lists the sandboxes.
    List,
    /// Deletes a container: stops it, then its VM and everything on the host.
    Delete {
        /// Carry on past errors (a dead VM, an agent that does not answer).
        #[arg(long)]
        force: bool,
        /// The container id.
        id: ContainerId,
    },
    /// Frees every sandbox whose owner and VM are both gone.
    Reclaim,
}

fn main() -> ExitCode {
    common::run_main("vc", run(Cli::parse()))
}

fn paths(root: Option<&Path>) -> Paths {
    match root {
        Some(root) => Paths {
            state_root: root.to_owned(),
            runtime_root: root.with_extension("vm"),
            shared_root: root.with_extension("shared"),
        },
        None => Paths::default(),
    }
}

/// Each container has a sandbox of its own, named after it.
fn sandbox_of(id: &ContainerId) -> Result<SandboxId> {
    Ok(id.as_str().parse()?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let paths = paths(cli.root.as_deref());
    let logger = common::logger(cli.debug);
    let factory = Arc::new(QemuFactory::default());
    match cli.command {
        Command::Create {
            bundle,
            kernel,
            initrd,
            factory: from,
            id,
        } => {
            let image = common::image_dir();
            let vm = VmConfig::new(
                kernel.unwrap_or_else(|| image.join("vmlinux")),
                initrd.unwrap_or_else(|| image.join("initramfs.cpio")),
            );
            let mut config = SandboxConfig::new(sandbox_of(&id)?, vm);
            config.paths = paths;
            config.lifetime = SandboxLifetime::UntilDeleted;
            if from != "cold" {
                // A clone's guest memory is private to it: virtio-fs, which
                // needs it shared, cannot serve it.
                config.fs_share.kind = FsShareKind::NineP;
            }
            let bundle = bundle
                .canonicalize()
                .with_context(|| format!("bundle {}", bundle.display()))?;
            config
                .containers
                .push(ContainerConfig::from_bundle(id, bundle)?);
            create_sandbox(config, common::vm_factory(&from), logger).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { id } => {
            let sandbox = fetch_sandbox(&paths, &sandbox_of(&id)?, factory, logger).await?;
            let io = sandbox.start_container(&id).await?;
            let code = stream(io, sandbox.wait_container(&id)).await?;
            Ok(common::exit_code(code))
        }
        Command::Exec {
            exec_id,
            id,
            command,
        } => {
            let sandbox = fetch_sandbox(&paths, &sandbox_of(&id)?, factory, logger).await?;
            let exec_id = match exec_id {
                Some(e) => e,
                None => format!("exec-{}", std::process::id()).parse()?,
            };
            let process = ProcessBuilder::default()
                .args(command)
                .env(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned()])
                .cwd("/")
                .build()?;
            let io = sandbox.exec(&id, &exec_id, &process).await?;
            let code = stream(io, sandbox.wait_process(&id, Some(&exec_id))).await?;
            Ok(common::exit_code(code))
        }
        Command::Kill { all, id, signal } => {
            let sandbox = fetch_sandbox(&paths, &sandbox_of(&id)?, factory, logger).await?;
            sandbox.kill_container(&id, signal, all).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State { id } => {
            let sandbox = fetch_sandbox(&paths, &sandbox_of(&id)?, factory, logger).await?;
            let status = sandbox.status().await?;
            let container = sandbox.container_status(&id).await?;
            let state = serde_json::json!({
                "id": id.as_str(),
                "status": format!("{:?}", container.phase).to_lowercase(),
                "exitCode": container.exit_code,
                "bundle": container.bundle,
                "sandbox": {
                    "phase": format!("{:?}", status.phase).to_lowercase(),
                    "vmmPid": status.vmm_pid,
                    "cgroup": status.sandbox_cgroup,
                },
            });
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            for id in virtcontainers::persist::Store::new(&paths.state_root).list()? {
                println!("{id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { force, id } => {
            cleanup_container(&paths, &sandbox_of(&id)?, &id, force, factory, logger).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reclaim => {
            let report = reclaim_stale(&paths, logger).await?;
            for id in &report.reclaimed {
                println!("reclaimed {id}");
            }
            for (id, e) in &report.failed {
                eprintln!("vc: reclaiming {id}: {}", common::chain(e));
            }
            Ok(match report.failed.is_empty() {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            })
        }
    }
}

/// Copies a process's output to ours until it exits; returns its exit code.
async fn stream(
    io: virtcontainers::ProcessIo,
    wait: impl std::future::Future<Output = Result<i32, virtcontainers::Error>>,
) -> Result<i32> {
    let out = tokio::spawn(common::copy(io.stdout, tokio::io::stdout()));
    let err = tokio::spawn(common::copy(io.stderr, tokio::io::stderr()));
    let code = wait.await?;
    out.await??;
    err.await??;
    Ok(code)
}
