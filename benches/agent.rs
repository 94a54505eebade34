//! The guest agent end to end, each figure beside its bare alternative in
//! the same run:
//!
//! - **VM start -> first successful Check**: `vc_hypervisor::Qemu` boots
//!   the agent image and `TtrpcAgent::connect` retries until `Health.Check`
//!   answers; beside it, the same QEMU command line started by hand with a
//!   busybox init that writes one line on the agent channel as soon as it
//!   can (the floor any agent could reach, as in `benches/boot.rs`).
//! - **CreateContainer -> first stdout byte** of `echo hello` (new mount,
//!   pid, uts and ipc namespaces, `/proc`, a tmpfs `/dev`, the rootfs a 9p
//!   share mounted by the request's storage), split into CreateContainer
//!   and StartContainer -> first byte; beside it, the same agent binary
//!   running on the host (`--listen`, a local rootfs, no VM), which shows
//!   what the VM (TCG, 9p, virtio-serial) adds to the agent's own work.
//! - For scale, one `Health.Check` round trip on a connected agent, in the
//!   VM and on the host: a container start takes three calls.
//!
//! `cargo bench -p vc-benches --bench agent [-- ROUNDS [CONTAINERS]]`
//! (default 5 VMs, 10 containers each). Needs root, QEMU, busybox-static
//! and the Debian kernel package, like the VM tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vc_agent_client::protocol::agent as pb;
use vc_agent_client::{Agent, AgentConfig, Transport, TtrpcAgent};
use vc_hypervisor::{Hypervisor, Qemu};
use vc_test_support::agent::{
    agent_config, agent_vm_config, agent_vm_options, console, container_spec, create_request,
    guest_create_request, transport,
};
use vc_test_support::{
    ChildGuard, InitMode, agent_binary, agent_image, bench_args, busybox_image, busybox_rootfs,
    discard, require_vm_host, time_bare_boot,
};

const TIMEOUT: Duration = Duration::from_secs(120);

/// One container: create, start, first stdout byte; then drains, checks
/// the output and exit code, and removes it. Returns (create, first byte),
/// both from just before CreateContainer.
async fn container_round(
    agent: &TtrpcAgent,
    cid: &str,
    req: pb::CreateContainerRequest,
) -> (Duration, Duration) {
    let start = Instant::now();
    agent.create_container(req).await.unwrap();
    let created = start.elapsed();
    agent.start_container(cid).await.unwrap();
    let mut out = agent.read_stdout(cid, cid, 4096).await.unwrap();
    let first = start.elapsed();
    assert!(!out.is_empty(), "no output from {cid}");
    loop {
        let more = agent.read_stdout(cid, cid, 4096).await.unwrap();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    assert_eq!(out, b"hello\n");
    assert_eq!(agent.wait_process(cid, cid).await.unwrap(), 0);
    let mut rm = pb::RemoveContainerRequest::new();
    rm.container_id = cid.into();
    rm.timeout = 10;
    agent.remove_container(rm).await.unwrap();
    (created, first)
}

#[derive(Default)]
struct Samples {
    ready: Vec<Duration>,
    bare_ready: Vec<Duration>,
    vm_check: Vec<Duration>,
    host_check: Vec<Duration>,
    vm_create: Vec<Duration>,
    vm_first: Vec<Duration>,
    host_create: Vec<Duration>,
    host_first: Vec<Duration>,
}

/// Boots the agent VM, times start -> first Check, then `containers`
/// containers; stops the VM.
async fn vm_round(dir: &Path, rootfs: &Path, containers: usize, s: &mut Samples) {
    let config = agent_vm_config("vc-bench-agent", dir, rootfs);
    let start = Instant::now();
    let vm = Qemu::new(config, agent_vm_options(), discard()).unwrap();
    vm.start(TIMEOUT).await.unwrap();
    let agent = TtrpcAgent::connect(transport(&vm), agent_config(), &discard())
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", console(&vm)));
    s.ready.push(start.elapsed());
    for _ in 0..containers {
        let t = Instant::now();
        agent.check().await.unwrap();
        s.vm_check.push(t.elapsed());
    }
    for i in 0..containers {
        let cid = format!("c{i}");
        let req = guest_create_request(&cid, &["echo", "hello"]);
        let (created, first) = container_round(&agent, &cid, req).await;
        s.vm_create.push(created);
        s.vm_first.push(first);
    }
    drop(agent);
    vm.stop(Duration::from_secs(10)).await.unwrap();
}

/// The agent binary serving on a unix socket on the host; killed on drop.
struct HostAgent {
    _child: ChildGuard,
    socket: PathBuf,
}

impl HostAgent {
    fn spawn(dir: &Path) -> HostAgent {
        let socket = dir.join("host-agent.sock");
        let child = Command::new(agent_binary())
            .arg("--listen")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        HostAgent {
            _child: ChildGuard(child),
            socket,
        }
    }
}

fn stats(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "{:>7.1} / {:>7.1} / {:>7.1} ms   (n={})",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(mean),
        samples.len()
    )
}

fn main() {
    let Some(numbers) = bench_args() else {
        return;
    };
    let rounds = numbers.first().copied().unwrap_or(5).max(1);
    let containers = numbers.get(1).copied().unwrap_or(10).max(1);
    require_vm_host();
    agent_image();
    let bare_image = busybox_image(InitMode::ReadyLine, &[]);

    let tmp = tempfile::tempdir().unwrap();
    let vm_rootfs = busybox_rootfs(&tmp.path().join("vm"));
    let host_rootfs = busybox_rootfs(&tmp.path().join("host"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The bare baseline runs the agent VM's command line with the bare image.
    let bare_run = tmp.path().join("bare/run");
    let mut bare_config = agent_vm_config("vc-bench-bare", &tmp.path().join("bare"), &vm_rootfs);
    bare_config.kernel = bare_image.vmlinux.clone();
    bare_config.initrd = Some(bare_image.initramfs.clone());
    let probe = Qemu::new(bare_config, agent_vm_options(), discard()).unwrap();
    let qemu_args = probe.command_line().unwrap();
    let qemu = probe.options().binary.clone();
    println!(
        "accelerator: {:?} ({})",
        probe.accelerator().accelerator,
        probe.accelerator().reason
    );
    drop(probe);

    let host = HostAgent::spawn(tmp.path());
    let mut s = Samples::default();
    rt.block_on(async {
        let host_agent = TtrpcAgent::connect(
            Transport::Serial {
                socket: host.socket.clone(),
            },
            AgentConfig {
                connect_timeout: Duration::from_secs(10),
                ..AgentConfig::default()
            },
            &discard(),
        )
        .await
        .expect("the agent on the host did not answer");
        // Warm-up, not counted: page cache, first QEMU start.
        vm_round(
            &tmp.path().join("warm"),
            &vm_rootfs,
            1,
            &mut Samples::default(),
        )
        .await;
        time_bare_boot(&qemu, &qemu_args, &bare_run, TIMEOUT).await;
        for round in 0..rounds {
            vm_round(
                &tmp.path().join(format!("vm{round}")),
                &vm_rootfs,
                containers,
                &mut s,
            )
            .await;
            s.bare_ready
                .push(time_bare_boot(&qemu, &qemu_args, &bare_run, TIMEOUT).await);
            for _ in 0..containers {
                let t = Instant::now();
                host_agent.check().await.unwrap();
                s.host_check.push(t.elapsed());
            }
            for i in 0..containers {
                let cid = format!("h{round}-{i}");
                let spec = container_spec(host_rootfs.to_str().unwrap(), &["echo", "hello"]);
                let req = create_request(&cid, &spec);
                let (created, first) = container_round(&host_agent, &cid, req).await;
                s.host_create.push(created);
                s.host_first.push(first);
            }
            println!(
                "round {round}: first Check {:>6.0} ms   bare ready {:>6.0} ms",
                s.ready.last().unwrap().as_secs_f64() * 1e3,
                s.bare_ready.last().unwrap().as_secs_f64() * 1e3
            );
        }
    });
    drop(host);
    println!("(min / median / mean)");
    println!("VM start -> first successful Check");
    println!(
        "  agent image, vc_hypervisor::Qemu + TtrpcAgent::connect  {}",
        stats(&mut s.ready)
    );
    println!(
        "  bare: same QEMU command, busybox init writes a line     {}",
        stats(&mut s.bare_ready)
    );
    println!("One Check round trip, connected");
    println!(
        "  in the VM (virtio-serial)                               {}",
        stats(&mut s.vm_check)
    );
    println!(
        "  agent on the host (unix socket)                         {}",
        stats(&mut s.host_check)
    );
    println!("CreateContainer -> first stdout byte (echo hello)");
    println!(
        "  in the VM (9p rootfs storage, virtio-serial)            {}",
        stats(&mut s.vm_first)
    );
    println!(
        "    of which CreateContainer                              {}",
        stats(&mut s.vm_create)
    );
    println!(
        "  agent on the host (--listen, local rootfs, no VM)       {}",
        stats(&mut s.host_first)
    );
    println!(
        "    of which CreateContainer                              {}",
        stats(&mut s.host_create)
    );
}
