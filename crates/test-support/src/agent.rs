//! The real guest agent in a VM (feature `agent`): the VM config that
//! boots [`agent_image`](crate::agent_image) with a busybox rootfs shared
//! by 9p, the client connected to it, and CreateContainer requests for
//! [`ContainerSpec`]s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::Spec;
use tokio::io::AsyncReadExt;
use vc_agent_client::protocol::protobuf::MessageField;
use vc_agent_client::protocol::{agent as pb, convert};
use vc_agent_client::{Agent, AgentConfig, OutputStream, ProcessOutput, Transport, TtrpcAgent};
use vc_hypervisor::{
    AgentEndpoint, Device, Hypervisor, HypervisorConfig, KernelParamsBuilder, Qemu, ShareBackend,
    SharedDir,
};

use crate::ContainerSpec;

/// The 9p mount tag of the container rootfs share.
pub const ROOTFS_TAG: &str = "rootfs";

/// Where the agent mounts container `cid`'s rootfs in the guest.
pub fn guest_rootfs(cid: &str) -> String {
    format!("/run/vc/{cid}/rootfs")
}

/// The spec of the agent's test containers: new mount, pid, uts and ipc
/// namespaces, hostname `guest-box`, `/proc` and a tmpfs `/dev`, uid 1000
/// gid 1001, cwd `/work`, `PATH=/bin` and `GREETING=hi there`, running
/// `args`, with its root at `root`.
pub fn container_spec(root: &str, args: &[&str]) -> Spec {
    ContainerSpec::new(root, args)
        .env("GREETING=hi there")
        .cwd("/work")
        .hostname("guest-box")
        .user(1000, 1001, &[])
        .isolated()
        .proc_mount()
        .tmpfs("/dev", &[])
        .build()
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

/// A CreateContainer request for `spec` (exec id = container id), no
/// storages.
pub fn create_request(cid: &str, spec: &Spec) -> pb::CreateContainerRequest {
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = cid.into();
    req.exec_id = cid.into();
    req.OCI =
        MessageField::some(convert::spec_to_proto(spec).expect("a spec the protocol carries"));
    req
}

/// The agent VM's config: [`agent_image`](crate::agent_image), 2 vCPUs,
/// agent debug logs, `rootfs` shared by 9p under [`ROOTFS_TAG`], sockets
/// and logs (kept) under `dir/run`.
pub fn agent_vm_config(name: &str, dir: &Path, rootfs: &Path) -> HypervisorConfig {
    let image = crate::agent_image();
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

/// The agent VM's QEMU options: no hot-plug port (nothing is hot-plugged).
pub fn agent_vm_options() -> vc_hypervisor::QemuOptions {
    crate::small_vm_options(0)
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
    TtrpcAgent::connect(transport(vm), agent_config(), &crate::logger()).await
}

/// The guest console so far (kernel and agent logs).
pub fn console(vm: &Qemu) -> String {
    std::fs::read_to_string(vm.config().console_log()).unwrap_or_default()
}

/// Reads process `eid` of container `cid` to its end: (stdout, stderr).
pub async fn read_output(agent: Arc<dyn Agent>, cid: &str, eid: &str) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    let mut o = ProcessOutput::new(agent.clone(), cid, eid, OutputStream::Stdout);
    let mut e = ProcessOutput::new(agent, cid, eid, OutputStream::Stderr);
    let (a, b) = tokio::join!(o.read_to_string(&mut out), e.read_to_string(&mut err));
    a.unwrap_or_else(|e| panic!("reading {cid}/{eid}'s stdout: {e}"));
    b.unwrap_or_else(|e| panic!("reading {cid}/{eid}'s stderr: {e}"));
    (out, err)
}
