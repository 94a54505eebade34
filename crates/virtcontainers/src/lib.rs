//! virtcontainers-rs: run OCI containers inside lightweight virtual
//! machines.
//!
//! This crate is the SDK's face. It composes the leaf crates —
//! `vc-cgroups-host` (host cgroups), `vc-hypervisor` (the VM),
//! `vc-agent-client` (the guest agent) — behind a small API:
//!
//! - [`create_sandbox`] boots a sandbox (a VM with its agent) and creates
//!   its containers, unwinding every step on failure;
//! - [`Sandbox`] drives it: containers (create, start, exec, wait, kill,
//!   stop, pause, resume, update, stats, delete) and the sandbox itself
//!   (start, stop, pause, resume, delete, status);
//! - [`fetch_sandbox`] gives another process a working handle to a
//!   running sandbox; [`cleanup_container`] stops and deletes a container
//!   (and the sandbox with its last container); [`reclaim`] frees a sandbox
//!   whose creator died.
//!
//! State lives in `<state_root>/<id>/state.json` (versioned JSON, written
//! atomically) under a file lock: shared for reads, exclusive for changes.
//! Every host resource is recorded before it is made.
//!
//! The pod's network reaches the VM as in Kata's `tcfilter` model
//! ([`network`]): a tap beside each interface of the sandbox's network
//! namespace (CNI's, one the SDK makes, or none: [`NetworkConfig`]), tc
//! redirects between them, a guest NIC with the interface's MAC, and the
//! interface's addresses, routes and neighbours set up by the guest agent;
//! [`Sandbox::rescan_network`] hot-plugs what CNI adds later. OCI hooks run
//! on the host, `prestart`/`createRuntime` inside that namespace.
//!
//! Container rootfs and bind-mount volumes reach the guest through one
//! filesystem share per sandbox ([`FsShare`]): virtio-fs (`virtiofsd`) when
//! installed, else virtio-9p. Kubernetes emptyDir volumes stay in the
//! guest; memory-backed ones are a tmpfs there.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokio::io::AsyncReadExt;
//! use virtcontainers::{ContainerConfig, QemuFactory, SandboxConfig, VmConfig, create_sandbox};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let vm = VmConfig::new("/var/lib/vc/vmlinux", "/var/lib/vc/initramfs.cpio");
//! // Ids are checked once, here: a bad one never reaches the SDK.
//! let mut config = SandboxConfig::new("sandbox-1".parse()?, vm);
//! let app = "app".parse()?;
//! config.containers.push(ContainerConfig::from_bundle(app, "/bundles/app")?);
//!
//! // The pod's network namespace, as CNI made it.
//! config.network.netns = virtcontainers::NetnsConfig::Path("/run/netns/pod-1".into());
//! config.network.dns = vec!["nameserver 10.96.0.10".into()];
//!
//! // Every configuration error comes back from planning, before the host
//! // changes; create_sandbox plans first too.
//! virtcontainers::plan_sandbox(&config)?;
//! let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger).await?;
//! let app = "app".parse()?;
//! let mut io = sandbox.start_container(&app).await?;
//! let mut out = String::new();
//! io.stdout.read_to_string(&mut out).await?;
//! let code = sandbox.wait_container(&app).await?;
//! println!("{out} (exit {code})");
//! sandbox.stop(std::time::Duration::from_secs(5)).await?;
//! sandbox.delete().await?;
//! # Ok(()) }
//! ```

pub mod boot;
mod config;
mod container_spec;
mod devices;
mod error;
mod factory;
pub mod fs_share;
mod guest_metrics;
mod hooks;
mod host_mounts;
pub mod mounts;
pub mod network;
pub mod persist;
mod plan;
mod process;
mod sandbox;
mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod undo;

pub use boot::BootAdmission;
pub use config::{
    AgentSettings, BlockRootfs, CgroupHierarchy, CgroupsConfig, ContainerConfig, FsShareConfig,
    FsShareKind, Paths, SandboxConfig, SandboxLifetime, VmConfig,
};
pub use container_spec::{GUEST_EPHEMERAL_DIR, GUEST_LOCAL_DIR};
pub use devices::{GUEST_LAYERS_DIR, GUEST_ROOTFS_DIR, GUEST_VOLUMES_DIR};
pub use error::{CreateStep, Error, Result};
pub use factory::{QemuFactory, VmFactory, transport_for};
pub use fs_share::{FsShare, GUEST_SHARED_DIR, SHARE_MOUNT_TAG, ShareChoice, ShareKind};
pub use guest_metrics::{GuestMemory, parse_guest_memory};
pub use network::{NetnsConfig, NetworkConfig, NetworkInterface};
pub use plan::{
    BootPlan, CgroupsPlan, ContainerPlan, SandboxPlan, VmBaseSize, VmSize, container_resources,
    plan_sandbox, resources_of, vm_size,
};
pub use sandbox::{
    CgroupUsage, CgroupsRecord, ChargedTo, CleanupOutcome, ContainerStatus, OverheadReport,
    ProcessIo, ProcessUsage, ReclaimReport, Sandbox, SandboxStatus, Usage, cleanup_container,
    create_sandbox, fetch_sandbox, reclaim, reclaim_stale,
};
pub use state::{
    ContainerPhase, ContainerRecord, GuestInfo, HostResources, PersistedSettings, ProcessRecord,
    SandboxPhase, SandboxState,
};
pub use vc_types::{ContainerId, ExecId, IdError, IdKind, IdRule, MAX_ID_LEN, SandboxId, Signal};

// Re-exported so embedders name the same types.
pub use oci_spec;
pub use vc_agent_client;
pub use vc_cgroups_host;
pub use vc_device_manager;
pub use vc_hypervisor;
pub use vc_types;
