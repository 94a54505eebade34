//! The sandbox's network end to end: real QEMU (TCG), the real agent, a
//! pod namespace set up as containerd does it (Debian's CNI `bridge` and
//! `host-local` plugins run as CNI binaries), and busybox `httpd`/`wget`
//! on each side. Root, QEMU, the guest image and the CNI plugins needed.
//! Each test ends with the namespace exactly as CNI made it and nothing
//! of the sandbox left on the host.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_spec::runtime::{HookBuilder, HooksBuilder, ProcessBuilder};
use tokio::io::AsyncReadExt;
use vc_guest_image::GuestImage;
use vc_test_support::{
    CniBridge, ContainerSpec, HostSnapshot, NETWORK_HOST, assert_unchanged_since_matching,
    netns_snapshot, require, require_sandbox_host, shared_busybox_rootfs, unique, unmount_under,
    vm_lock_async,
};
use virtcontainers::{
    ContainerConfig, ContainerId, CreateStep, Error, FsShareConfig, FsShareKind, NetnsConfig,
    NetworkConfig, Paths, QemuFactory, Sandbox, SandboxConfig, SandboxId, VmConfig, create_sandbox,
};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn cid(id: &str) -> ContainerId {
    id.parse().unwrap()
}

/// A process on the host that dies with the test.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// busybox `httpd` serving `dir` on port 8080 inside the namespace
/// `netns`.
fn httpd_in(netns: &Path, dir: &Path) -> Background {
    let child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([
            vc_guest_image::rootfs::DEFAULT_BUSYBOX,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Background(child)
}

/// `wget -qO- http://ip:8080/path` from the host, retried until it
/// answers (a server still starting) or 30 s pass. (Each try is bounded
/// by `timeout`: Debian's static busybox crashes on `wget -T`.)
fn fetch_from_host(ip: Ipv4Addr, path: &str) -> String {
    let url = format!("http://{ip}:8080/{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("timeout")
            .args([
                "10",
                vc_guest_image::rootfs::DEFAULT_BUSYBOX,
                "wget",
                "-qO-",
                &url,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One test's sandbox: its directory, id, image and the host before.
struct Env {
    dir: tempfile::TempDir,
    id: SandboxId,
    image: GuestImage,
    before: HostSnapshot,
}

impl Env {
    fn new(tag: &str) -> Self {
        let image = require_sandbox_host();
        require(NETWORK_HOST);
        Env {
            before: HostSnapshot::take(),
            dir: tempfile::Builder::new()
                .prefix("vcnet")
                .tempdir_in("/tmp")
                .unwrap(),
            id: unique(tag).parse().unwrap(),
            image,
        }
    }

    fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    fn container(&self, name: &str, spec: ContainerSpec) -> ContainerConfig {
        let bundle = spec.save_bundle(&self.dir.path().join("bundles").join(name));
        ContainerConfig::from_bundle(cid(name), &bundle).unwrap()
    }

    fn container_from_spec(&self, name: &str, spec: oci_spec::runtime::Spec) -> ContainerConfig {
        let bundle = self.dir.path().join("bundles").join(name);
        std::fs::create_dir_all(&bundle).unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        ContainerConfig::from_bundle(cid(name), &bundle).unwrap()
    }

    fn busybox(&self, args: &[&str]) -> ContainerSpec {
        ContainerSpec::new(shared_busybox_rootfs(), args)
            .cwd("/")
            .without_default_mounts()
            .proc_mount()
            .tmpfs("/tmp", &[])
            .isolated()
    }

    fn config(&self, network: NetworkConfig, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let mut config = SandboxConfig::new(
            self.id.clone(),
            VmConfig::new(&self.image.vmlinux, &self.image.initramfs),
        );
        config.paths = self.paths();
        config.fs_share = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        config.network = network;
        config.containers = containers;
        config
    }

    fn assert_clean(&self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert_unchanged_since_matching(&self.before, &[self.id.as_str(), &dir]);
        assert!(
            !self.paths().state_root.join(self.id.as_str()).exists(),
            "state left"
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.paths().state_root.join(self.id.as_str()).exists() {
            let (paths, id) = (self.paths(), self.id.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(virtcontainers::reclaim(&paths, &id, logger()))
            })
            .join();
        }
        unmount_under(self.dir.path());
    }
}

async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}

/// Runs `args` in container `id` of `sandbox`; its stdout and exit code.
async fn exec(sandbox: &Sandbox, id: &str, exec_id: &str, args: &[&str]) -> (String, i32) {
    let process = ProcessBuilder::default()
        .args(args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin".to_owned()])
        .cwd("/")
        .build()
        .unwrap();
    let exec_id = exec_id.parse().unwrap();
    let io = sandbox.exec(&cid(id), &exec_id, &process).await.unwrap();
    let out = read_all(io.stdout).await;
    let code = sandbox
        .wait_process(&cid(id), Some(&exec_id))
        .await
        .unwrap();
    (out, code)
}

/// The web page a side serves.
fn www(dir: &Path, text: &str) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), text).unwrap();
    www
}

/// The container in the VM fetches a page from a peer on the bridge and
/// serves one to the host; its `eth0` is the veth (address, MAC); its
/// resolv.conf has the configured server; its stats count the traffic;
/// after delete the namespace is as CNI made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_talks_to_a_peer_and_the_host_through_cni() {
    let _serial = vm_lock_async().await;
    let env = Env::new("net-e2e");
    let bridge = CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("pod")).unwrap();
    let peer = bridge.attach_new(&unique("peer")).unwrap();
    // A static neighbour, as some CNI plugins add: the guest gets it too.
    let neighbour = Ipv4Addr::from(u32::from(bridge.gateway()) + 98);
    vc_test_support::run(
        "ip",
        &[
            "-n",
            &pod.name,
            "neigh",
            "add",
            &neighbour.to_string(),
            "lladdr",
            "02:00:00:00:00:63",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let pod_before = netns_snapshot(&pod.netns);
    let peer_page = format!("hello from the peer {}\n", env.id);
    let _peer_httpd = httpd_in(&peer.netns, &www(&env.dir.path().join("peer"), &peer_page));
    let container_page = format!("hello from the container {}\n", env.id);
    let served = www(&env.dir.path().join("container"), &container_page);
    let main = env.container(
        "main",
        env.busybox(&["httpd", "-f", "-p", "8080", "-h", "/www"])
            .bind(&served, "/www", &["ro"]),
    );
    let network = NetworkConfig {
        netns: NetnsConfig::Path(pod.netns.clone()),
        dns: vec!["nameserver 10.53.0.53".into(), "search vc.test".into()],
    };
    let sandbox = create_sandbox(
        env.config(network, vec![main]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    assert_eq!(
        sandbox.netns().unwrap().as_deref(),
        Some(pod.netns.as_path())
    );
    sandbox.start_container(&cid("main")).await.unwrap();

    let url = format!("http://{}:8080/index.html", peer.ip);
    let (page, code) = exec(&sandbox, "main", "wget", &["wget", "-qO-", &url]).await;
    assert_eq!((page.as_str(), code), (peer_page.as_str(), 0));
    let ip = pod.ip;
    let from_host = tokio::task::spawn_blocking(move || fetch_from_host(ip, "index.html"));
    assert_eq!(from_host.await.unwrap(), container_page);
    let (addr, _) = exec(
        &sandbox,
        "main",
        "addr",
        &["ip", "-o", "addr", "show", "eth0"],
    )
    .await;
    assert!(addr.contains(&format!("inet {}/24", pod.ip)), "{addr}");
    let (link, _) = exec(
        &sandbox,
        "main",
        "link",
        &["ip", "-o", "link", "show", "eth0"],
    )
    .await;
    assert!(link.contains(&format!("link/ether {} ", pod.mac)), "{link}");
    let (route, _) = exec(
        &sandbox,
        "main",
        "route",
        &["ip", "route", "show", "default"],
    )
    .await;
    assert!(
        route.contains(&format!("via {} dev eth0", pod.gateway)),
        "{route}"
    );
    let (neigh, _) = exec(
        &sandbox,
        "main",
        "neigh",
        &["ip", "neigh", "show", "dev", "eth0"],
    )
    .await;
    assert!(
        neigh.lines().any(
            |l| l.starts_with(&format!("{neighbour} lladdr 02:00:00:00:00:63 "))
                && l.ends_with("PERMANENT")
        ),
        "{neigh}"
    );
    let (resolv, _) = exec(&sandbox, "main", "resolv", &["cat", "/etc/resolv.conf"]).await;
    assert_eq!(resolv, "nameserver 10.53.0.53\nsearch vc.test\n");
    let stats = sandbox.stats_container(&cid("main")).await.unwrap();
    let eth0 = stats
        .network_stats
        .iter()
        .find(|s| s.name == "eth0")
        .unwrap_or_else(|| panic!("{:?}", stats.network_stats));
    assert!(eth0.rx_bytes > 0 && eth0.tx_bytes > 0, "{eth0:?}");
    assert!(eth0.rx_packets > 0 && eth0.tx_packets > 0, "{eth0:?}");
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    assert_eq!(netns_snapshot(&pod.netns), pod_before, "after delete");
    env.assert_clean();
}

/// A NIC CNI adds after the sandbox started (a second network) is
/// hot-plugged by a rescan: the guest gets it by its MAC, with its
/// address, and reaches a peer on that network through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_added_after_start_is_hot_plugged_by_rescan() {
    let _serial = vm_lock_async().await;
    let env = Env::new("net-hotplug");
    let (first, second) = (CniBridge::new().unwrap(), CniBridge::new().unwrap());
    let pod = first.attach_new(&unique("pod")).unwrap();
    let peer = second.attach_new(&unique("peer2")).unwrap();
    let before = netns_snapshot(&pod.netns);
    let page = format!("second network {}\n", env.id);
    let _httpd = httpd_in(&peer.netns, &www(env.dir.path(), &page));
    let main = env.container("main", env.busybox(&["sleep", "1000"]));
    let network = NetworkConfig {
        netns: NetnsConfig::Path(pod.netns.clone()),
        dns: Vec::new(),
    };
    let sandbox = create_sandbox(
        env.config(network, vec![main]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    sandbox.start_container(&cid("main")).await.unwrap();
    assert!(
        sandbox.rescan_network().await.unwrap().is_empty(),
        "nothing new yet"
    );
    let eth1 = second.attach(&pod.netns, "eth1").unwrap();
    let added = sandbox.rescan_network().await.unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].name, "eth1");
    assert_eq!(added[0].mac.to_string(), eth1.mac);
    let (addr, _) = exec(
        &sandbox,
        "main",
        "addr",
        &["ip", "-o", "addr", "show", "eth1"],
    )
    .await;
    assert!(addr.contains(&format!("inet {}/24", eth1.ip)), "{addr}");
    let (link, _) = exec(
        &sandbox,
        "main",
        "link",
        &["ip", "-o", "link", "show", "eth1"],
    )
    .await;
    assert!(
        link.contains(&format!("link/ether {} ", eth1.mac)),
        "{link}"
    );
    let url = format!("http://{}:8080/index.html", peer.ip);
    let (got, code) = exec(&sandbox, "main", "wget", &["wget", "-qO-", &url]).await;
    assert_eq!((got.as_str(), code), (page.as_str(), 0));
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    drop(eth1);
    assert_eq!(
        netns_snapshot(&pod.netns),
        before,
        "after delete and CNI DEL"
    );
    env.assert_clean();
}

/// A `createRuntime` hook runs on the host in the pod's namespace with
/// the OCI state on stdin: it sees CNI's veth. A failing `prestart` hook
/// fails the create with the hook's path and exit status, and nothing is
/// left: the namespace as CNI made it, no VM, no state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_the_pod_namespace_and_a_failing_one_unwinds_the_create() {
    let _serial = vm_lock_async().await;
    let env = Env::new("net-hooks");
    let bridge = CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("pod")).unwrap();
    let before = netns_snapshot(&pod.netns);
    let seen = env.dir.path().join("links.txt");
    let state = env.dir.path().join("state.json");
    let started = env.dir.path().join("poststart.txt");
    let stopped = env.dir.path().join("poststop.txt");
    let hook = |script: String| {
        HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_owned(), "-c".to_owned(), script])
            .env(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned()])
            .timeout(20)
            .build()
            .unwrap()
    };
    let hooks = HooksBuilder::default()
        .create_runtime(vec![hook(format!(
            "ip -o link show > {}; cat > {}",
            seen.display(),
            state.display()
        ))])
        .poststart(vec![hook(format!("cat > {}", started.display()))])
        .poststop(vec![hook(format!("cat > {}", stopped.display()))])
        .build()
        .unwrap();
    let mut spec = env.busybox(&["true"]).build();
    spec.set_hooks(Some(hooks));
    let main = env.container_from_spec("main", spec);
    let network = NetworkConfig {
        netns: NetnsConfig::Path(pod.netns.clone()),
        dns: Vec::new(),
    };
    let sandbox = create_sandbox(
        env.config(network.clone(), vec![main]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap();
    let links = std::fs::read_to_string(&seen).unwrap();
    assert!(links.contains(&pod.mac), "the hook saw: {links}");
    assert!(links.contains("eth0@"), "{links}");
    let read: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(read["id"], "main");
    assert_eq!(read["status"], "created");
    assert!(read["pid"].as_u64().unwrap() > 0);
    sandbox.start_container(&cid("main")).await.unwrap();
    assert_eq!(sandbox.wait_container(&cid("main")).await.unwrap(), 0);
    let poststart: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&started).unwrap()).unwrap();
    assert_eq!(poststart["status"], "running");
    sandbox.delete_container(&cid("main")).await.unwrap();
    let poststop: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stopped).unwrap()).unwrap();
    assert_eq!(poststop["status"], "stopped");
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    env.assert_clean();
    assert_eq!(netns_snapshot(&pod.netns), before);

    // A prestart hook that fails: the create fails naming it, and unwinds.
    let failing = HooksBuilder::default()
        .prestart(vec![hook("exit 7".into())])
        .build()
        .unwrap();
    let mut spec = env.busybox(&["true"]).build();
    spec.set_hooks(Some(failing));
    let main = env.container_from_spec("failing", spec);
    let err = create_sandbox(
        env.config(network, vec![main]),
        Arc::new(QemuFactory::default()),
        logger(),
    )
    .await
    .unwrap_err();
    let Error::Create { step, source, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*step, CreateStep::Containers);
    assert!(
        matches!(&**source, Error::HookFailed { stage: "prestart", path, status }
            if path == Path::new("/bin/sh") && status.code() == Some(7)),
        "{source:?}"
    );
    env.assert_clean();
    assert_eq!(
        netns_snapshot(&pod.netns),
        before,
        "after the failed create"
    );
}
