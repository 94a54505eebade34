//! What the VM tests (and the agent bench, which includes this file) need:
//! the static agent built from this source tree, the guest image built
//! around it by `vc-guest-image`, a busybox container rootfs, a VM started
//! by `vc-hypervisor`'s QEMU backend, and the client connected to it.
//!
//! The agent is built here, not taken from an earlier `make guest-image`,
//! so that a test never boots a stale agent: with the same flags as the
//! Makefile, the build is a no-op after `make guest-image`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use vc_agent_client::protocol::protobuf::MessageField;
use vc_agent_client::protocol::{agent as pb, convert};
use vc_agent_client::{AgentConfig, Transport, TtrpcAgent};
use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache, KernelPackage};
use vc_hypervisor::{
    AgentEndpoint, Device, Hypervisor, HypervisorConfig, KernelParamsBuilder, Qemu, QemuOptions,
    ShareBackend, SharedDir,
};

/// The target the static agent is built for (glibc, `+crt-static`).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The 9p mount tag of the container rootfs share.
pub const ROOTFS_TAG: &str = "rootfs";
/// Fails the test, naming what the host lacks, unless it can run the VM tests.
pub fn require_vm_host() {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (9p passthrough, namespaces in the guest)".to_owned());
    }
    if !Path::new(vc_hypervisor::DEFAULT_QEMU_BINARY).exists() {
        missing.push(format!(
            "{} (apt-get install qemu-system-x86)",
            vc_hypervisor::DEFAULT_QEMU_BINARY
        ));
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)".to_owned());
    }
    if let Err(e) = KernelPackage::find_installed() {
        missing.push(format!("a guest kernel ({e})"));
    }
    assert!(
        missing.is_empty(),
        "the agent's VM tests need: {} (scripts/install-prereqs.sh installs the packages)",
        missing.join("; ")
    );
}

/// Builds the static agent (`cargo build --release --target
/// x86_64-unknown-linux-gnu`, `+crt-static`, stripped: the same command
/// and flags as `make guest-image`) and returns the binary's path.
pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // This file is compiled into a test of vc-guest-agent and into a
        // bench of vc-benches: find the workspace root from either.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .find(|d| {
                std::fs::read_to_string(d.join("Cargo.toml"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
            })
            .expect("the workspace root above CARGO_MANIFEST_DIR");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace)
            .args(["build", "--release", "-p", "vc-guest-agent"])
            .args(["--bin", "vc-guest-agent", "--target", AGENT_TARGET])
            .arg("--message-format=json-render-diagnostics")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo to build the static guest agent");
        assert!(
            out.status.success(),
            "building the static guest agent failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no vc-guest-agent executable")
    })
}

/// The guest image with the agent as `/init`, built once per inputs and
/// cached under the target dir.
pub fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let kernel = KernelPackage::find_installed().expect("guest kernel");
        GuestImageBuilder::new(kernel, agent_binary().to_path_buf())
            .build_cached(&ImageCache::in_target_dir())
            .expect("building the guest image")
    })
}

/// A busybox tree in `dir/rootfs` (`vc_guest_image::rootfs`: every
/// applet, `/etc/passwd`, mount points) plus the containers' cwd `/work`.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    vc_guest_image::rootfs::busybox_rootfs(&root, Path::new("/bin/busybox"))
        .expect("a busybox rootfs");
    std::fs::create_dir(root.join("work")).unwrap();
    root
}

/// The spec of the test containers: new mount, pid, uts and ipc
/// namespaces, hostname `guest-box`, `/proc` and a tmpfs `/dev`, uid 1000
/// gid 1001, cwd `/work`, `PATH=/bin` and `GREETING=hi there`, running
/// `args`, with its root at `root`.
pub fn container_spec(root: &str, args: &[&str]) -> Spec {
    let ns = [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().unwrap())
    .collect::<Vec<_>>();
    SpecBuilder::default()
        .hostname("guest-box")
        .root(RootBuilder::default().path(root).build().unwrap())
        .process(
            ProcessBuilder::default()
                .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .env(vec!["PATH=/bin".to_string(), "GREETING=hi there".into()])
                .cwd("/work")
                .user(
                    UserBuilder::default()
                        .uid(1000u32)
                        .gid(1001u32)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .mounts(vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/dev")
                .typ("tmpfs")
                .source("tmpfs")
                .build()
                .unwrap(),
        ])
        .linux(LinuxBuilder::default().namespaces(ns).build().unwrap())
        .build()
        .unwrap()
}

/// Where the agent mounts container `cid`'s rootfs in the guest.
pub fn guest_rootfs(cid: &str) -> String {
    format!("/run/vc/{cid}/rootfs")
}

/// A CreateContainer request for the VM: the 9p share [`ROOTFS_TAG`] as
/// its storage, mounted at [`guest_rootfs`], and [`container_spec`].
pub fn guest_create_request(cid: &str, args: &[&str]) -> pb::CreateContainerRequest {
    let mut storage = pb::Storage::new();
    storage.driver = "9p".into();
    storage.source = ROOTFS_TAG.into();
    storage.fstype = "9p".into();
    storage.options = vec!["trans=virtio".into(), "version=9p2000.L".into()];
    storage.mount_point = guest_rootfs(cid);
    let mut req = create_request(cid, &container_spec(&guest_rootfs(cid), args));
    req.storages.push(storage);
    req
}

/// A CreateContainer request for `spec`, no storages.
pub fn create_request(cid: &str, spec: &Spec) -> pb::CreateContainerRequest {
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = cid.into();
    req.exec_id = cid.into();
    req.OCI = MessageField::some(convert::spec_to_proto(spec).unwrap());
    req
}

/// A logger that the test harness captures.
pub fn logger() -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(slog_term::TestStdoutWriter);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

/// The QEMU options of the agent VM: no hot-plug ports (nothing is
/// hot-plugged).
pub fn qemu_options() -> QemuOptions {
    QemuOptions {
        hotplug_ports: 0,
        ..QemuOptions::default()
    }
}

/// The VM config: the agent image, 2 vCPUs, 512 MiB, agent debug logs,
/// `rootfs` shared by 9p under [`ROOTFS_TAG`], sockets and logs under `dir/run`.
pub fn vm_config(name: &str, dir: &Path, rootfs: &Path) -> HypervisorConfig {
    let image = guest_image();
    let mut config =
        HypervisorConfig::new(name, &image.vmlinux, dir.join("run")).with_initrd(&image.initramfs);
    config.vcpus.boot = 2;
    config.vcpus.max = 2;
    config.kernel_params = KernelParamsBuilder::new().agent("log", "debug").build();
    config.keep_logs = true;
    config.devices.push(Device::SharedDir(SharedDir {
        id: "rootfs".into(),
        mount_tag: ROOTFS_TAG.into(),
        backend: ShareBackend::NineP {
            host_path: rootfs.to_owned(),
            read_only: false,
        },
    }));
    config
}

/// The client's transport for `vm`'s agent endpoint.
pub fn transport(vm: &Qemu) -> Transport {
    match vm.agent_endpoint() {
        AgentEndpoint::VirtioSerial { socket, .. } => Transport::Serial { socket },
        AgentEndpoint::Vsock { guest_cid, port } => Transport::Vsock {
            cid: guest_cid,
            port,
        },
        AgentEndpoint::HybridVsock { socket, port } => Transport::HybridVsock { socket, port },
    }
}

/// Client timeouts for TCG: the guest boots in a few seconds, a container
/// starts in well under one.
pub fn agent_config() -> AgentConfig {
    AgentConfig {
        connect_timeout: Duration::from_secs(60),
        call_timeout: Duration::from_secs(30),
        ..AgentConfig::default()
    }
}

/// Connects to the agent of `vm` (waiting for the guest to boot).
pub async fn connect(vm: &Qemu) -> vc_agent_client::Result<TtrpcAgent> {
    TtrpcAgent::connect(transport(vm), agent_config(), &logger()).await
}

/// The guest console so far (kernel and agent logs).
pub fn console(vm: &Qemu) -> String {
    std::fs::read_to_string(vm.config().console_log()).unwrap_or_default()
}
