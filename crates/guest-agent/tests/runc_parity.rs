//! Side by side with runc (root, QEMU under TCG, Debian's runc): the same
//! OCI specs (`parity::cases`: seccomp denying `mkdir`, killing on
//! `getpid`, Docker's default profile refusing `unshare -U`, a terminal
//! that is resized, a user namespace, masked and read-only paths, a
//! sysctl, a device node) run with `runc run` on the host and with our
//! agent in a VM, over the same busybox rootfs (shared to the VM by 9p);
//! both must show the same stdout and exit code, and the ones written down
//! in the case. Then bad profiles and mappings: clear errors, and the agent
//! goes on serving. One VM serves every check, to keep the suite short.

mod docker_profile;
mod parity;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::Spec;
use parity::{Case, Outcome, TtyDialogue};
use tokio::io::AsyncReadExt;
use vc_agent_client::protocol::protobuf::MessageField;
use vc_agent_client::protocol::{agent as pb, oci};
use vc_agent_client::{Agent, AgentError, OutputStream, ProcessOutput, TtrpcAgent};
use vc_hypervisor::{Hypervisor, Qemu};
use vc_test_support::agent as support;

/// The CreateContainer request for `spec` in the VM: the rootfs share
/// mounted at the container's guest rootfs.
fn request(cid: &str, spec: &Spec) -> pb::CreateContainerRequest {
    let mut req = support::create_request(cid, spec);
    let mut storage = pb::Storage::new();
    storage.driver = "9p".into();
    storage.source = support::ROOTFS_TAG.into();
    storage.fstype = "9p".into();
    storage.options = vec!["trans=virtio".into(), "version=9p2000.L".into()];
    storage.mount_point = support::guest_rootfs(cid);
    req.storages.push(storage);
    req
}

async fn read_all(agent: &Arc<TtrpcAgent>, cid: &str, which: OutputStream) -> String {
    let a: Arc<dyn Agent> = agent.clone();
    let mut s = String::new();
    ProcessOutput::new(a, cid, cid, which)
        .read_to_string(&mut s)
        .await
        .unwrap();
    s
}

/// The terminal dialogue through the agent: wait for the marker, resize
/// (TtyWinResize), type.
async fn tty_dialogue(agent: &Arc<TtrpcAgent>, cid: &str, d: &TtyDialogue) -> String {
    let a: Arc<dyn Agent> = agent.clone();
    let mut out = ProcessOutput::new(a, cid, cid, OutputStream::Stdout);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !parity::strip_cr(&String::from_utf8_lossy(&seen)).contains(d.marker) {
        let n = tokio::time::timeout(parity::RUN_TIMEOUT, out.read(&mut buf))
            .await
            .expect("the terminal stayed silent")
            .unwrap();
        assert!(n > 0, "the terminal ended early: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    let mut resize = pb::TtyWinResizeRequest::new();
    resize.container_id = cid.into();
    resize.exec_id = cid.into();
    resize.row = d.rows.into();
    resize.column = d.cols.into();
    agent.tty_win_resize(resize).await.unwrap();
    agent
        .write_stdin(cid, cid, d.input.as_bytes())
        .await
        .unwrap();
    out.read_to_end(&mut seen).await.unwrap();
    parity::strip_cr(&String::from_utf8_lossy(&seen))
}

async fn run_in_vm(agent: &Arc<TtrpcAgent>, cid: &str, case: &Case) -> (Outcome, String) {
    let spec = (case.spec)(&support::guest_rootfs(cid));
    agent.create_container(request(cid, &spec)).await.unwrap();
    agent.start_container(cid).await.unwrap();
    let (stdout, stderr) = match &case.tty {
        Some(d) => (tty_dialogue(agent, cid, d).await, String::new()),
        None => tokio::join!(
            read_all(agent, cid, OutputStream::Stdout),
            read_all(agent, cid, OutputStream::Stderr)
        ),
    };
    let code = tokio::time::timeout(parity::RUN_TIMEOUT, agent.wait_process(cid, cid))
        .await
        .expect("the container did not end")
        .unwrap();
    remove(agent, cid).await;
    (Outcome { stdout, code }, stderr)
}

async fn remove(agent: &TtrpcAgent, cid: &str) {
    let mut req = pb::RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    agent.remove_container(req).await.unwrap();
}

/// The user-namespace case's file: owned by the mapped host ids; removed
/// for the next run.
fn check_mapped_owner(rootfs: &Path, who: &str) {
    use std::os::unix::fs::MetadataExt;
    let file = rootfs.join("shared/by-userns");
    let meta = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{who}: {} not made: {e}", file.display()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (parity::MAPPED_ID, parity::MAPPED_ID),
        "{who}: the file made by container root belongs to the mapped ids on the host"
    );
    std::fs::remove_file(&file).unwrap();
}

async fn expect_invalid(agent: &TtrpcAgent, req: pb::CreateContainerRequest, what: &str) {
    match agent.create_container(req).await {
        Err(AgentError::Rpc { code, message, .. }) => {
            assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{what}: {message}");
            assert!(message.contains(what), "{what}: {message}");
        }
        other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
    }
    agent.check().await.unwrap();
}

/// Bad profiles and mappings get clear errors; the agent serves on, and
/// the ids are free again.
async fn bad_requests(agent: &Arc<TtrpcAgent>, rootfs: &str) {
    let spec = parity::base_spec(rootfs, &["true"]);
    let mut req = request("bad-seccomp", &spec);
    let mut seccomp = oci::LinuxSeccomp::new();
    seccomp.DefaultAction = "SCMP_ACT_SOMETIMES".into();
    req.OCI.as_mut().unwrap().Linux.as_mut().unwrap().Seccomp = MessageField::some(seccomp);
    expect_invalid(agent, req, "linux.seccomp.defaultAction").await;

    let mut req = request("bad-seccomp", &spec);
    let mut seccomp = oci::LinuxSeccomp::new();
    seccomp.DefaultAction = "SCMP_ACT_ALLOW".into();
    let mut call = oci::LinuxSyscall::new();
    call.Names = vec!["read".into()];
    call.Action = "SCMP_ACT_ERRNO".into();
    let mut arg = oci::LinuxSeccompArg::new();
    arg.Index = 9;
    arg.Op = "SCMP_CMP_EQ".into();
    call.Args.push(arg);
    seccomp.Syscalls.push(call);
    req.OCI.as_mut().unwrap().Linux.as_mut().unwrap().Seccomp = MessageField::some(seccomp);
    expect_invalid(agent, req, "argument index 9").await;

    let mut req = request("bad-mapping", &(parity::cases()[4].spec)(rootfs));
    let linux = req.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
    linux.UIDMappings[0].Size = 0;
    expect_invalid(agent, req, "linux.uidMappings[0] has size 0").await;

    let mut req = request("bad-mapping", &(parity::cases()[4].spec)(rootfs));
    let linux = req.OCI.as_mut().unwrap().Linux.as_mut().unwrap();
    linux.GIDMappings.clear();
    expect_invalid(agent, req, "needs linux.gidMappings").await;

    // Both ids work afterwards.
    for cid in ["bad-seccomp", "bad-mapping"] {
        let spec = parity::base_spec(&support::guest_rootfs(cid), &["echo", "fine"]);
        agent.create_container(request(cid, &spec)).await.unwrap();
        agent.start_container(cid).await.unwrap();
        assert_eq!(read_all(agent, cid, OutputStream::Stdout).await, "fine\n");
        assert_eq!(agent.wait_process(cid, cid).await.unwrap(), 0);
        remove(agent, cid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_what_runc_runs() {
    vc_test_support::require_vm_host();
    parity::require_runc();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = vc_test_support::busybox_rootfs(dir.path());
    parity::prepare_rootfs(&rootfs);

    // runc first, on the host.
    let mut runc = Vec::new();
    for case in parity::cases() {
        let id = format!("vc-parity-{}-{}", case.name, std::process::id());
        let spec = (case.spec)(&rootfs.display().to_string());
        let got = parity::run_runc(&dir.path().join("bundles"), &id, &spec, case.tty.as_ref());
        if case.name == "user-namespace" {
            check_mapped_owner(&rootfs, "runc");
        }
        runc.push(got);
    }

    let config = support::agent_vm_config("vc-agent-parity", dir.path(), &rootfs);
    let qemu = Qemu::new(
        config,
        support::agent_vm_options(),
        vc_test_support::logger(),
    )
    .expect("VM config");
    qemu.start(Duration::from_secs(60))
        .await
        .expect("starting QEMU");
    let agent = match support::connect(&qemu).await {
        Ok(a) => Arc::new(a),
        Err(e) => panic!("agent did not come up: {e}\n{}", support::console(&qemu)),
    };
    let mut failures = Vec::new();
    for (case, runc) in parity::cases().iter().zip(&runc) {
        let cid = format!("parity-{}", case.name);
        let (ours, stderr) = run_in_vm(&agent, &cid, case).await;
        if case.name == "user-namespace" {
            check_mapped_owner(&rootfs, "agent");
        }
        eprintln!("{}: runc {runc:?}, agent {ours:?}", case.name);
        if &ours != runc || ours != case.expect {
            failures.push(format!(
                "{}:\n  runc:   {runc:?}\n  agent:  {ours:?} (stderr {stderr:?})\n  expect: {:?}",
                case.name, case.expect
            ));
        }
    }
    bad_requests(&agent, &support::guest_rootfs("bad-seccomp")).await;
    if !failures.is_empty() {
        eprintln!("guest console:\n{}", support::console(&qemu));
    }
    qemu.stop(Duration::from_secs(5)).await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
