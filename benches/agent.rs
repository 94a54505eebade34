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

#[path = "../crates/guest-agent/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::{Agent, AgentConfig, Transport, TtrpcAgent};
use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache, KernelPackage};
use vc_hypervisor::{Hypervisor, Qemu};

/// The bare guest: ready as soon as the agent channel can carry a line.
const READY_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
while read -r m; do /bin/busybox insmod "/lib/modules/vc/$m"; done < /lib/modules/vc/load-order
for _ in $(/bin/busybox seq 1 400); do
  for p in /sys/class/virtio-ports/*; do
    if [ "$(/bin/busybox cat "$p/name" 2>/dev/null)" = agent.channel.0 ] && [ -e "/dev/${p##*/}" ]; then
      echo READY > "/dev/${p##*/}"
      exec /bin/busybox sleep 3600
    fi
  done
  /bin/busybox sleep 0.02
done
/bin/busybox poweroff -f
"#;

const TIMEOUT: Duration = Duration::from_secs(120);

fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

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
    let config = support::vm_config("vc-bench-agent", dir, rootfs);
    let start = Instant::now();
    let vm = Qemu::new(config, support::qemu_options(), discard()).unwrap();
    vm.start(TIMEOUT).await.unwrap();
    let agent = TtrpcAgent::connect(support::transport(&vm), support::agent_config(), &discard())
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", support::console(&vm)));
    s.ready.push(start.elapsed());
    for _ in 0..containers {
        let t = Instant::now();
        agent.check().await.unwrap();
        s.vm_check.push(t.elapsed());
    }
    for i in 0..containers {
        let cid = format!("c{i}");
        let req = support::guest_create_request(&cid, &["echo", "hello"]);
        let (created, first) = container_round(&agent, &cid, req).await;
        s.vm_create.push(created);
        s.vm_first.push(first);
    }
    drop(agent);
    vm.stop(Duration::from_secs(10)).await.unwrap();
}

/// The same QEMU command line with the bare image, started by hand.
async fn bare_round(binary: &Path, args: &[String], run_dir: &Path) -> Duration {
    std::fs::create_dir_all(run_dir).unwrap();
    let socket = run_dir.join("agent.sock");
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stream = loop {
        match UnixStream::connect(&socket).await {
            Ok(stream) => break stream,
            Err(e) if start.elapsed() > TIMEOUT => panic!("{}: {e}", socket.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, BufReader::new(stream).read_line(&mut line))
        .await
        .expect("the bare guest never wrote its line")
        .unwrap();
    assert_eq!(line.trim(), "READY");
    let ready = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(run_dir).unwrap();
    ready
}

/// The agent binary serving on a unix socket on the host; killed on drop.
struct HostAgent {
    child: Child,
    socket: PathBuf,
}

impl HostAgent {
    fn spawn(dir: &Path) -> HostAgent {
        let socket = dir.join("host-agent.sock");
        let child = Command::new(support::agent_binary())
            .arg("--listen")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        HostAgent { child, socket }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench targets without --bench: nothing to do then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut numbers = args.iter().skip(1).filter_map(|a| a.parse::<usize>().ok());
    let rounds = numbers.next().unwrap_or(5).max(1);
    let containers = numbers.next().unwrap_or(10).max(1);
    support::require_vm_host();
    support::guest_image();
    let bare_image: GuestImage = GuestImageBuilder::new(
        KernelPackage::find_installed().unwrap(),
        READY_INIT.as_bytes().to_vec(),
    )
    .extra_file("/bin/busybox", PathBuf::from("/bin/busybox"), 0o755)
    .build_cached(&ImageCache::in_target_dir())
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let vm_rootfs = support::busybox_rootfs(&tmp.path().join("vm"));
    let host_rootfs = support::busybox_rootfs(&tmp.path().join("host"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The bare baseline runs the agent VM's command line with the bare image.
    let bare_run = tmp.path().join("bare/run");
    let mut bare_config = support::vm_config("vc-bench-bare", &tmp.path().join("bare"), &vm_rootfs);
    bare_config.kernel = bare_image.vmlinux.clone();
    bare_config.initrd = Some(bare_image.initramfs.clone());
    let probe = Qemu::new(bare_config, support::qemu_options(), discard()).unwrap();
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
        bare_round(&qemu, &qemu_args, &bare_run).await;
        for round in 0..rounds {
            vm_round(
                &tmp.path().join(format!("vm{round}")),
                &vm_rootfs,
                containers,
                &mut s,
            )
            .await;
            s.bare_ready
                .push(bare_round(&qemu, &qemu_args, &bare_run).await);
            for _ in 0..containers {
                let t = Instant::now();
                host_agent.check().await.unwrap();
                s.host_check.push(t.elapsed());
            }
            for i in 0..containers {
                let cid = format!("h{round}-{i}");
                let spec =
                    support::container_spec(host_rootfs.to_str().unwrap(), &["echo", "hello"]);
                let req = support::create_request(&cid, &spec);
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
