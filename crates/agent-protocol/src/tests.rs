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

/// A Kata peer may send fields we do not declare (Intel RDT, fs_group):
/// they are skipped, the rest is read.
#[test]
fn unknown_fields_from_kata_are_tolerated() {
    // Linux { IntelRdt (13) = { L3CacheSchema = "x" }, MountLabel (12) = "m" }
    let bytes = [0x6a, 3, 0x0a, 1, b'x', 0x62, 1, b'm'];
    let linux = oci::Linux::parse_from_bytes(&bytes).unwrap();
    assert_eq!(linux.MountLabel, "m");
}

/// Kata's numbers for the seccomp messages: Linux.Seccomp = 8;
/// LinuxSeccomp { DefaultAction = 1, Architectures = 2, Flags = 3,
/// Syscalls = 4 }; LinuxSyscall { Names = 1, Action = 2, errnoret = 3 (in
/// the oneof ErrnoRet), Args = 4 }; LinuxSeccompArg { Index = 1, Value = 2,
/// ValueTwo = 3, Op = 4 }; and OOMEvent { container_id = 1 }.
#[test]
fn seccomp_and_oom_use_katas_field_numbers() {
    let mut arg = oci::LinuxSeccompArg::new();
    arg.Index = 1;
    arg.Value = 2;
    arg.ValueTwo = 3;
    arg.Op = "o".into();
    assert_eq!(
        arg.write_to_bytes().unwrap(),
        [0x08, 1, 0x10, 2, 0x18, 3, 0x22, 1, b'o']
    );
    let mut call = oci::LinuxSyscall::new();
    call.Names = vec!["n".into()];
    call.Action = "a".into();
    call.set_errnoret(0);
    call.Args.push(arg);
    let arg_bytes = call.Args[0].write_to_bytes().unwrap();
    let mut want = vec![0x0a, 1, b'n', 0x12, 1, b'a', 0x22, arg_bytes.len() as u8];
    want.extend(&arg_bytes);
    // An errno of 0 is sent (after the other fields, as rust-protobuf
    // writes oneofs): the oneof keeps "set to 0" apart from "unset".
    want.extend([0x18, 0]);
    assert_eq!(call.write_to_bytes().unwrap(), want);
    let mut sc = oci::LinuxSeccomp::new();
    sc.DefaultAction = "d".into();
    sc.Architectures = vec!["x".into()];
    sc.Flags = vec!["f".into()];
    assert_eq!(
        sc.write_to_bytes().unwrap(),
        [0x0a, 1, b'd', 0x12, 1, b'x', 0x1a, 1, b'f']
    );
    let mut linux = oci::Linux::new();
    linux.Seccomp = MessageField::some(sc);
    assert_eq!(linux.write_to_bytes().unwrap()[0], 0x42);
    let mut oom = OOMEvent::new();
    oom.container_id = "c".into();
    assert_eq!(oom.write_to_bytes().unwrap(), [0x0a, 1, b'c']);
    round_trip(&GetOOMEventRequest::new());
    let mut metrics = Metrics::new();
    metrics.metrics = "m".into();
    assert_eq!(metrics.write_to_bytes().unwrap(), [0x0a, 1, b'm']);
    round_trip(&GetMetricsRequest::new());
}

/// Kata's numbers for the network messages (`types.proto`):
/// IPAddress { family = 1, address = 2, mask = 3 }; Interface { device =
/// 1, name = 2, IPAddresses = 3, mtu = 4, hwAddr = 5, devicePath = 6, type
/// = 7, raw_flags = 8 }; Route { dest = 1, gateway = 2, device = 3, source
/// = 4, scope = 5, family = 6, flags = 7 }; ARPNeighbor { toIPAddress = 1,
/// device = 2, lladdr = 3, state = 4, flags = 5 }; and the requests that
/// carry them (`agent.proto`).
#[test]
fn network_messages_use_katas_field_numbers() {
    use crate::types::{ARPNeighbor, IPAddress, IPFamily, Interface, Route};
    let mut addr = IPAddress::new();
    addr.family = IPFamily::v6.into();
    addr.address = "a".into();
    addr.mask = "8".into();
    assert_eq!(
        addr.write_to_bytes().unwrap(),
        [0x08, 1, 0x12, 1, b'a', 0x1a, 1, b'8']
    );
    let mut iface = Interface::new();
    iface.device = "d".into();
    iface.name = "n".into();
    iface.mtu = 1500;
    iface.hwAddr = "h".into();
    iface.devicePath = "p".into();
    iface.type_ = "t".into();
    iface.raw_flags = 1;
    assert_eq!(
        iface.write_to_bytes().unwrap(),
        [
            0x0a, 1, b'd', 0x12, 1, b'n', 0x20, 0xdc, 0x0b, 0x2a, 1, b'h', 0x32, 1, b'p', 0x3a, 1,
            b't', 0x40, 1
        ]
    );
    iface.IPAddresses.push(addr.clone());
    round_trip(&iface);
    let mut route = Route::new();
    route.dest = "d".into();
    route.gateway = "g".into();
    route.device = "e".into();
    route.source = "s".into();
    route.scope = 253;
    route.family = IPFamily::v6.into();
    route.flags = 4;
    assert_eq!(
        route.write_to_bytes().unwrap(),
        [
            0x0a, 1, b'd', 0x12, 1, b'g', 0x1a, 1, b'e', 0x22, 1, b's', 0x28, 0xfd, 0x01, 0x30, 1,
            0x38, 4
        ]
    );
    let mut neigh = ARPNeighbor::new();
    neigh.device = "e".into();
    neigh.lladdr = "l".into();
    neigh.state = 128;
    neigh.flags = 2;
    assert_eq!(
        neigh.write_to_bytes().unwrap(),
        [0x12, 1, b'e', 0x1a, 1, b'l', 0x20, 0x80, 0x01, 0x28, 2]
    );
    neigh.toIPAddress = MessageField::some(addr);
    round_trip(&neigh);
    let mut update = UpdateInterfaceRequest::new();
    update.interface = MessageField::some(Interface::new());
    assert_eq!(update.write_to_bytes().unwrap(), [0x0a, 0]);
    let mut routes = Routes::new();
    routes.Routes.push(Route::new());
    assert_eq!(routes.write_to_bytes().unwrap(), [0x0a, 0]);
    let mut update = UpdateRoutesRequest::new();
    update.routes = MessageField::some(routes);
    assert_eq!(update.write_to_bytes().unwrap(), [0x0a, 2, 0x0a, 0]);
    let mut neighbors = ARPNeighbors::new();
    neighbors.ARPNeighbors.push(ARPNeighbor::new());
    let mut add = AddARPNeighborsRequest::new();
    add.neighbors = MessageField::some(neighbors);
    assert_eq!(add.write_to_bytes().unwrap(), [0x0a, 2, 0x0a, 0]);
    let mut list = Interfaces::new();
    list.Interfaces.push(Interface::new());
    assert_eq!(list.write_to_bytes().unwrap(), [0x0a, 0]);
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

fn seccomp_profile() -> spec::LinuxSeccomp {
    let arg = |index: usize, value: u64, two: Option<u64>, op| {
        let mut b = spec::LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op);
        if let Some(two) = two {
            b = b.value_two(two);
        }
        b.build().unwrap()
    };
    spec::LinuxSeccompBuilder::default()
        .default_action(spec::LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(38u32)
        .architectures(vec![spec::Arch::ScmpArchX86_64, spec::Arch::ScmpArchX86])
        .flags(vec![
            spec::LinuxSeccompFilterFlag::SeccompFilterFlagLog,
            spec::LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
        ])
        .syscalls(vec![
            spec::LinuxSyscallBuilder::default()
                .names(vec!["read".to_string(), "write".into()])
                .action(spec::LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap(),
            spec::LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string()])
                .action(spec::LinuxSeccompAction::ScmpActErrno)
                .errno_ret(1u32)
                .build()
                .unwrap(),
            spec::LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(spec::LinuxSeccompAction::ScmpActAllow)
                .args(vec![
                    arg(
                        0,
                        0x7E02_0000,
                        None,
                        spec::LinuxSeccompOperator::ScmpCmpMaskedEq,
                    ),
                    arg(
                        2,
                        0xff,
                        Some(3),
                        spec::LinuxSeccompOperator::ScmpCmpMaskedEq,
                    ),
                    arg(1, 5, None, spec::LinuxSeccompOperator::ScmpCmpLe),
                ])
                .build()
                .unwrap(),
            spec::LinuxSyscallBuilder::default()
                .names(vec!["getpid".to_string()])
                .action(spec::LinuxSeccompAction::ScmpActKillProcess)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

/// Every field a runc user sets survives the trip to the guest.
#[test]
fn seccomp_personality_io_priority_and_umask_survive_the_wire() {
    let mut original = sample_spec();
    let mut linux = original.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp_profile()));
    linux.set_personality(Some(
        spec::LinuxPersonalityBuilder::default()
            .domain(spec::LinuxPersonalityDomain::PerLinux32)
            .build()
            .unwrap(),
    ));
    linux.set_sysctl(Some(
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    ));
    linux.set_uid_mappings(Some(vec![
        spec::LinuxIdMappingBuilder::default()
            .host_id(100_000u32)
            .container_id(0u32)
            .size(65_536u32)
            .build()
            .unwrap(),
    ]));
    linux.set_devices(Some(vec![
        spec::LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(spec::LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .unwrap(),
    ]));
    linux.set_rootfs_propagation(Some("rslave".into()));
    original.set_linux(Some(linux));
    let mut process = original.process().clone().unwrap();
    let mut user = process.user().clone();
    user.set_umask(Some(0o077));
    process.set_user(user);
    process.set_oom_score_adj(Some(-500));
    process.set_terminal(Some(true));
    process.set_io_priority(Some(
        spec::LinuxIOPriorityBuilder::default()
            .class(spec::IOPriorityClass::IoprioClassIdle)
            .priority(7i64)
            .build()
            .unwrap(),
    ));
    original.set_process(Some(process));

    let bytes = convert::spec_to_proto(&original)
        .unwrap()
        .write_to_bytes()
        .unwrap();
    let back = convert::spec_from_proto(&oci::Spec::parse_from_bytes(&bytes).unwrap()).unwrap();
    let (l, m) = (
        back.linux().as_ref().unwrap(),
        original.linux().as_ref().unwrap(),
    );
    assert_eq!(l.seccomp(), m.seccomp());
    assert_eq!(l.personality(), m.personality());
    assert_eq!(l.sysctl(), m.sysctl());
    assert_eq!(l.uid_mappings(), m.uid_mappings());
    assert_eq!(l.devices(), m.devices());
    assert_eq!(l.rootfs_propagation(), m.rootfs_propagation());
    let (p, q) = (
        back.process().as_ref().unwrap(),
        original.process().as_ref().unwrap(),
    );
    assert_eq!(p.user().umask(), Some(0o077));
    assert_eq!(p.io_priority(), q.io_priority());
    assert_eq!(p.oom_score_adj(), Some(-500));
    assert_eq!(p.terminal(), Some(true));
}

/// Kata's `ValueTwo` has no presence: an explicit 0 comes back unset,
/// which libseccomp reads as the same 0.
#[test]
fn a_zero_value_two_comes_back_unset() {
    let arg = spec::LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(0x7E02_0000u64)
        .value_two(0u64)
        .op(spec::LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .unwrap();
    let mut profile = seccomp_profile();
    let mut calls = profile.syscalls().clone().unwrap();
    calls[2].set_args(Some(vec![arg]));
    profile.set_syscalls(Some(calls));
    let back = convert::seccomp_from_proto(&convert::seccomp_to_proto(&profile)).unwrap();
    let back_arg = back.syscalls().as_ref().unwrap()[2]
        .args()
        .as_ref()
        .unwrap()[0];
    assert_eq!(back_arg.value_two(), None);
    assert_eq!(back_arg.value(), 0x7E02_0000);
}

#[test]
fn seccomp_names_are_checked_on_the_way_in() {
    let mut msg = convert::seccomp_to_proto(&seccomp_profile());
    msg.Syscalls[0].Action = "SCMP_ACT_BOGUS".into();
    assert!(matches!(
        convert::seccomp_from_proto(&msg),
        Err(ConvertError::InvalidValue {
            field: "linux.seccomp.syscalls.action",
            ..
        })
    ));
    let mut msg = convert::seccomp_to_proto(&seccomp_profile());
    msg.Architectures.push("SCMP_ARCH_Z80".into());
    assert!(matches!(
        convert::seccomp_from_proto(&msg),
        Err(ConvertError::InvalidValue {
            field: "linux.seccomp.architectures",
            ..
        })
    ));
    let mut msg = convert::seccomp_to_proto(&seccomp_profile());
    msg.Syscalls[2].Args[0].Op = "SCMP_CMP_ALMOST".into();
    assert!(convert::seccomp_from_proto(&msg).is_err());
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
