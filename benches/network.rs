//! The sandbox's network: TCP throughput and round-trip time between a
//! container in the VM and a peer namespace on the same CNI bridge,
//! beside the same peer and a process in the pod namespace on the host
//! (the veth alone, before the sandbox takes it over), in one run.
//!
//! - throughput: `dd if=/dev/zero bs=64k | nc PEER PORT` into a busybox
//!   `nc -l` in the peer namespace; bytes over the time from the sender's
//!   start to the receiver's end of stream;
//! - RTT: busybox `ping -c N -i 0.2 PEER`, its average.
//!
//! Needs root, `make guest-image` and the CNI plugins.
//! `cargo bench -p vc-benches --bench network [-- MIB]` (default 64).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, ProcessBuilder};
use tokio::io::AsyncReadExt;
use vc_guest_image::rootfs::DEFAULT_BUSYBOX;
use vc_test_support::{
    CniBridge, ContainerSpec, NETWORK_HOST, bench_args, busybox_rootfs, discard, require,
    require_sandbox_host,
};
use virtcontainers::{
    ContainerConfig, FsShareConfig, FsShareKind, NetnsConfig, NetworkConfig, Paths, QemuFactory,
    Sandbox, SandboxConfig, VmConfig, create_sandbox,
};

const PORT: &str = "5201";
const PINGS: &str = "20";

/// `nc -l` in `netns`, its output thrown away; its stdin held open (a
/// busybox nc ends at its stdin's end).
fn receiver(netns: &Path) -> Child {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([DEFAULT_BUSYBOX, "nc", "-l", "-p", PORT])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for the receiver's end, bounded.
fn wait_end(rx: &mut Child, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if rx.try_wait().unwrap().is_some() {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the transfer took over {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn send_script(peer: Ipv4Addr, mib: usize) -> String {
    format!(
        "sleep 0.3; dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {peer} {PORT}",
        mib * 16
    )
}

fn ping_avg_ms(out: &str) -> f64 {
    // "round-trip min/avg/max = 0.071/0.090/0.143 ms"
    out.lines()
        .find_map(|l| l.split_once(" = ").filter(|_| l.contains("min/avg/max")))
        .and_then(|(_, v)| v.split('/').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no ping summary in {out:?}"))
}

/// The veth alone: a process in the pod namespace on the host.
fn host_side(pod: &Path, peer_ns: &Path, peer: Ipv4Addr, mib: usize) -> (f64, f64) {
    let in_pod = |script: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", pod.display()))
            .args([DEFAULT_BUSYBOX, "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut rx = receiver(peer_ns);
    let start = Instant::now();
    in_pod(&send_script(peer, mib));
    let end = wait_end(&mut rx, Duration::from_secs(300));
    let secs = (end - start).as_secs_f64() - 0.3;
    let rtt = ping_avg_ms(&in_pod(&format!(
        "{DEFAULT_BUSYBOX} ping -c {PINGS} -i 0.2 {peer}"
    )));
    (mib as f64 * 8.0 * 1.048_576 / secs, rtt)
}

/// The container's capabilities: busybox ping needs a raw socket.
fn capabilities() -> LinuxCapabilities {
    let caps: std::collections::HashSet<_> =
        [Capability::NetRaw, Capability::Kill].into_iter().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .inheritable(caps.clone())
        .ambient(caps.clone())
        .permitted(caps)
        .build()
        .unwrap()
}

async fn exec(sandbox: &Sandbox, name: &str, script: &str) -> String {
    let process = ProcessBuilder::default()
        .args(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()])
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .capabilities(capabilities())
        .build()
        .unwrap();
    let main = "main".parse().unwrap();
    let id = name.parse().unwrap();
    let io = sandbox.exec(&main, &id, &process).await.unwrap();
    let mut out = String::new();
    let mut stdout = io.stdout;
    stdout.read_to_string(&mut out).await.unwrap();
    let code = sandbox.wait_process(&main, Some(&id)).await.unwrap();
    assert_eq!(code, 0, "{script}: {out}");
    out
}

fn main() {
    let Some(numbers) = bench_args() else {
        return;
    };
    let mib = numbers.first().copied().unwrap_or(64).max(1);
    let image = require_sandbox_host();
    require(NETWORK_HOST);
    let tmp = tempfile::Builder::new()
        .prefix("vcbench-net")
        .tempdir_in("/tmp")
        .unwrap();
    let bridge = CniBridge::new().unwrap();
    let id = format!("bench-net-{}", std::process::id());
    let pod = bridge.attach_new(&format!("{id}-pod")).unwrap();
    let peer = bridge.attach_new(&format!("{id}-peer")).unwrap();

    let (host_mbps, host_rtt) = host_side(&pod.netns, &peer.netns, peer.ip, mib);

    let rootfs = busybox_rootfs(tmp.path());
    let mut spec = ContainerSpec::new(&rootfs, &["sleep", "1000"])
        .cwd("/")
        .build();
    if let Some(process) = spec.process_mut() {
        process.set_capabilities(Some(capabilities()));
    }
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    spec.save(bundle.join("config.json")).unwrap();
    let mut config = SandboxConfig::new(
        id.parse().unwrap(),
        VmConfig::new(&image.vmlinux, &image.initramfs),
    );
    config.paths = Paths::under(tmp.path());
    config.fs_share = FsShareConfig {
        kind: FsShareKind::NineP,
        virtiofsd: None,
    };
    config.network = NetworkConfig {
        netns: NetnsConfig::Path(pod.netns.clone()),
        dns: Vec::new(),
    };
    config
        .containers
        .push(ContainerConfig::from_bundle("main".parse().unwrap(), &bundle).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (vm_mbps, vm_rtt) = rt.block_on(async {
        let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), discard())
            .await
            .unwrap();
        sandbox
            .start_container(&"main".parse().unwrap())
            .await
            .unwrap();
        // Warm the path (ARP, the guest's caches).
        exec(&sandbox, "warm", &format!("ping -c 2 -i 0.2 {}", peer.ip)).await;
        let mut rx = receiver(&peer.netns);
        let start = Instant::now();
        exec(&sandbox, "send", &send_script(peer.ip, mib)).await;
        let end = tokio::task::spawn_blocking(move || wait_end(&mut rx, Duration::from_secs(600)))
            .await
            .unwrap();
        let secs = (end - start).as_secs_f64() - 0.3;
        let out = exec(
            &sandbox,
            "ping",
            &format!("ping -c {PINGS} -i 0.2 {}", peer.ip),
        )
        .await;
        sandbox.stop(Duration::from_secs(5)).await.unwrap();
        sandbox.delete().await.unwrap();
        (mib as f64 * 8.0 * 1.048_576 / secs, ping_avg_ms(&out))
    });
    println!("TCP {mib} MiB and {PINGS} pings to a peer namespace on the same CNI bridge:");
    println!(
        "  pod namespace on the host (veth alone): {host_mbps:>8.1} Mbit/s, RTT {host_rtt:.3} ms"
    );
    println!("  container in the VM (tap + tc, TCG):    {vm_mbps:>8.1} Mbit/s, RTT {vm_rtt:.3} ms");
    println!(
        "  VM / host: throughput {:.3}x, RTT {:.1}x",
        vm_mbps / host_mbps,
        vm_rtt / host_rtt
    );
}
