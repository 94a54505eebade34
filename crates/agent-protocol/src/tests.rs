//! Round trips of the messages, the wire layout Kata peers expect, the OCI
//! conversions, and one real ttrpc call through the generated code.

use std::sync::Arc;

use oci_spec::runtime as spec;
use protobuf::{Message, MessageField};

use crate::agent::*;
use crate::convert::{self, ConvertError};
use crate::{health, health_ttrpc, oci};

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.write_to_bytes().expect("encode");
    let back = M::parse_from_bytes(&bytes).expect("decode");
    assert_eq!(&back, m);
}

#[test]
fn requests_round_trip() {
    let mut create = CreateContainerRequest::new();
    create.container_id = "c1".into();
    create.exec_id = "c1".into();
    let mut storage = Storage::new();
    storage.driver = "9p".into();
    storage.source = "rootfs".into();
    storage.fstype = "9p".into();
    storage.options = vec!["trans=virtio".into(), "version=9p2000.L".into()];
    storage.mount_point = "/run/vc/c1/rootfs".into();
    create.storages.push(storage);
    let mut spec_msg = oci::Spec::new();
    spec_msg.Hostname = "box".into();
    create.OCI = MessageField::some(spec_msg);
    round_trip(&create);

    let mut signal = SignalProcessRequest::new();
    signal.container_id = "c1".into();
    signal.signal = 9;
    round_trip(&signal);

    let mut write = WriteStreamRequest::new();
    write.data = vec![0, 1, 2, 255];
    round_trip(&write);

    let mut stats = StatsContainerResponse::new();
    let mut cg = CgroupStats::new();
    let mut mem = MemoryStats::new();
    mem.stats.insert("rss".into(), 4096);
    cg.memory_stats = MessageField::some(mem);
    stats.cgroup_stats = MessageField::some(cg);
    round_trip(&stats);

    let mut details = GuestDetailsResponse::new();
    details.mem_block_size_bytes = 128 << 20;
    let mut agent = AgentDetails::new();
    agent.version = "0.1.0".into();
    agent.init_daemon = true;
    details.agent_details = MessageField::some(agent);
    round_trip(&details);

    let mut copy = CopyFileRequest::new();
    copy.path = "/run/x".into();
    copy.uid = -1;
    copy.data = b"abc".to_vec();
    round_trip(&copy);
}

/// The field numbers are the contract with Kata peers: check the bytes.
#[test]
fn wire_layout_matches_kata_field_numbers() {
    let mut wait = WaitProcessRequest::new();
    wait.container_id = "a".into();
    wait.exec_id = "b".into();
    assert_eq!(
        wait.write_to_bytes().unwrap(),
        [0x0a, 1, b'a', 0x12, 1, b'b']
    );

    let mut signal = SignalProcessRequest::new();
    signal.signal = 15;
    assert_eq!(signal.write_to_bytes().unwrap(), [0x18, 15]);

    let mut resp = WaitProcessResponse::new();
    resp.status = 137;
    assert_eq!(resp.write_to_bytes().unwrap(), [0x08, 0x89, 0x01]);

    // CreateContainerRequest.OCI is field 6 (tag 0x32), Spec.Hostname field 4.
    let mut create = CreateContainerRequest::new();
    let mut s = oci::Spec::new();
    s.Hostname = "h".into();
    create.OCI = MessageField::some(s);
    assert_eq!(create.write_to_bytes().unwrap(), [0x32, 3, 0x22, 1, b'h']);

    let mut check = health::HealthCheckResponse::new();
    check.status = health::health_check_response::ServingStatus::SERVING.into();
    assert_eq!(check.write_to_bytes().unwrap(), [0x08, 1]);
}

/// A Kata peer may send fields we do not declare (seccomp, fs_group):
/// they are skipped, the rest is read.
#[test]
fn unknown_fields_from_kata_are_tolerated() {
    // Linux { Seccomp (8) = { DefaultAction = "x" }, MountLabel (12) = "m" }
    let bytes = [0x42, 3, 0x0a, 1, b'x', 0x62, 1, b'm'];
    let linux = oci::Linux::parse_from_bytes(&bytes).unwrap();
    assert_eq!(linux.MountLabel, "m");
}

fn sample_spec() -> spec::Spec {
    let process = spec::ProcessBuilder::default()
        .args(vec!["/bin/sh".to_string(), "-c".into(), "echo hi".into()])
        .env(vec!["PATH=/bin".to_string(), "A=b".into()])
        .cwd("/tmp")
        .user(
            spec::UserBuilder::default()
                .uid(1000u32)
                .gid(100u32)
                .additional_gids(vec![10u32, 20])
                .build()
                .unwrap(),
        )
        .rlimits(vec![
            spec::PosixRlimitBuilder::default()
                .typ(spec::PosixRlimitType::RlimitNofile)
                .hard(4096u64)
                .soft(1024u64)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap();
    let linux = spec::LinuxBuilder::default()
        .namespaces(vec![
            spec::LinuxNamespaceBuilder::default()
                .typ(spec::LinuxNamespaceType::Pid)
                .build()
                .unwrap(),
            spec::LinuxNamespaceBuilder::default()
                .typ(spec::LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap(),
        ])
        .resources(
            spec::LinuxResourcesBuilder::default()
                .memory(
                    spec::LinuxMemoryBuilder::default()
                        .limit(64i64 << 20)
                        .build()
                        .unwrap(),
                )
                .cpu(
                    spec::LinuxCpuBuilder::default()
                        .quota(50_000i64)
                        .period(100_000u64)
                        .cpus("0")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .masked_paths(vec!["/proc/kcore".to_string()])
        .readonly_paths(vec!["/proc/sys".to_string()])
        .build()
        .unwrap();
    spec::SpecBuilder::default()
        .version("1.0.2")
        .hostname("box")
        .root(
            spec::RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .unwrap(),
        )
        .mounts(vec![
            spec::MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .options(vec!["nosuid".to_string()])
                .build()
                .unwrap(),
        ])
        .process(process)
        .linux(linux)
        .build()
        .unwrap()
}

#[test]
fn spec_survives_the_wire() {
    let original = sample_spec();
    let msg = convert::spec_to_proto(&original).unwrap();
    let bytes = msg.write_to_bytes().unwrap();
    let back = convert::spec_from_proto(&oci::Spec::parse_from_bytes(&bytes).unwrap()).unwrap();

    assert_eq!(back.version(), original.version());
    assert_eq!(back.hostname(), original.hostname());
    assert_eq!(back.root(), original.root());
    assert_eq!(back.mounts(), original.mounts());
    let (p, q) = (
        back.process().as_ref().unwrap(),
        original.process().as_ref().unwrap(),
    );
    assert_eq!(p.args(), q.args());
    assert_eq!(p.env(), q.env());
    assert_eq!(p.cwd(), q.cwd());
    assert_eq!(p.user(), q.user());
    assert_eq!(p.rlimits(), q.rlimits());
    assert_eq!(p.capabilities(), q.capabilities());
    let (l, m) = (
        back.linux().as_ref().unwrap(),
        original.linux().as_ref().unwrap(),
    );
    assert_eq!(l.namespaces(), m.namespaces());
    assert_eq!(l.masked_paths(), m.masked_paths());
    assert_eq!(l.readonly_paths(), m.readonly_paths());
    let (r, s) = (
        l.resources().as_ref().unwrap(),
        m.resources().as_ref().unwrap(),
    );
    assert_eq!(r.memory(), s.memory());
    assert_eq!(r.cpu(), s.cpu());
}

#[test]
fn bad_enum_strings_are_typed_errors() {
    let mut p = oci::Process::new();
    let mut rl = oci::POSIXRlimit::new();
    rl.Type = "RLIMIT_BOGUS".into();
    p.Rlimits.push(rl);
    match convert::process_from_proto(&p) {
        Err(ConvertError::InvalidValue { field, value }) => {
            assert_eq!(field, "process.rlimits.type");
            assert_eq!(value, "RLIMIT_BOGUS");
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }

    let mut l = oci::Linux::new();
    let mut ns = oci::LinuxNamespace::new();
    ns.Type = "nope".into();
    l.Namespaces.push(ns);
    let mut s = oci::Spec::new();
    s.Linux = MessageField::some(l);
    assert!(matches!(
        convert::spec_from_proto(&s),
        Err(ConvertError::InvalidValue {
            field: "linux.namespaces.type",
            ..
        })
    ));

    let mut p = oci::Process::new();
    let mut caps = oci::LinuxCapabilities::new();
    caps.Bounding = vec!["CAP_KILL".into(), "CAP_NOPE".into()];
    p.Capabilities = MessageField::some(caps);
    assert!(matches!(
        convert::process_from_proto(&p),
        Err(ConvertError::InvalidValue {
            field: "process.capabilities",
            ..
        })
    ));
}

struct Healthy;

#[async_trait::async_trait]
impl health_ttrpc::Health for Healthy {
    async fn check(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut resp = health::HealthCheckResponse::new();
        resp.status = if req.service.is_empty() {
            health::health_check_response::ServingStatus::SERVING.into()
        } else {
            health::health_check_response::ServingStatus::NOT_SERVING.into()
        };
        Ok(resp)
    }
}

/// The generated client and server agree on the method path
/// (`/grpc.Health/Check`) over a real socket; an undeclared method is a ttrpc
/// error, not a hang.
#[tokio::test]
async fn generated_client_and_server_talk() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let mut server = ttrpc::r#async::Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(health_ttrpc::create_health(Arc::new(Healthy)));
    server.start().await.unwrap();

    let client = ttrpc::r#async::Client::connect(&addr).await.unwrap();
    let health = health_ttrpc::HealthClient::new(client);
    let ctx = ttrpc::context::with_timeout(5_000_000_000);
    let resp = health
        .check(ctx, &health::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        resp.status.enum_value(),
        Ok(health::health_check_response::ServingStatus::SERVING)
    );
    let ctx = ttrpc::context::with_timeout(5_000_000_000);
    let err = health
        .version(ctx, &health::CheckRequest::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ttrpc::Error::RpcStatus(_)), "{err:?}");
    server.shutdown().await.unwrap();
}
