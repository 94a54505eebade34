//! The pod's network, under runc's shim and ours alike: a container
//! fetches a page from a peer on a CNI bridge (Debian's `bridge` +
//! `host-local`).
//!
//! - `ctr run --cni`: ctr runs CNI on `/proc/<pid>/ns/net` of the pid
//!   Create returned, between Create and Start; with ours the interface
//!   CNI made reaches the VM, and after the run the pod's namespace is
//!   gone (CNI's veth with it: the taps were in it).
//! - `ctr run --with-ns network:PATH`: a namespace CNI set up beforehand,
//!   as the CRI hands one over; after ours it is exactly as CNI made it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};
use vc_test_support::{CniAttachment, CniBridge, netns_snapshot, unique};

use crate::common::containerd::{CTR_TIMEOUT, run};
use crate::common::image::IMAGE;
use crate::common::{Env, Outcome, RUNC, VC, outcome};

/// Where ctr (go-cni's default) reads the CNI configuration.
const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// A process that dies with the scenario.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directories of [`CNI_CONF_DIR`] this scenario made (it removes
/// them, if still empty, when dropped).
struct MadeDirs(Vec<PathBuf>);

impl MadeDirs {
    fn ensure(dir: &Path) -> Result<MadeDirs> {
        let mut made = Vec::new();
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            std::fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
            made.push(d.to_owned());
        }
        Ok(MadeDirs(made))
    }
}

impl Drop for MadeDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `ctr run --rm --cni --runtime RUNTIME IMAGE ID CMD...` with `conf` as
/// the CNI configuration directory: ctr runs in a mount namespace of its
/// own where `conf` is bound on [`CNI_CONF_DIR`], so the host's CNI
/// configuration is neither read nor touched.
fn run_with_cni(env: &Env, conf: &Path, runtime: &str, id: &str, cmd: &[&str]) -> Result<Outcome> {
    let mut args = vec!["run", "--rm", "--cni", "--runtime", runtime, IMAGE, id];
    args.extend_from_slice(cmd);
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "mount --bind '{}' {CNI_CONF_DIR}; exec ctr \"$@\"",
            conf.display()
        ))
        .arg("sh")
        .args(env.containerd.ctr_args(&args))
        .stdin(Stdio::null());
    let out = run(command, CTR_TIMEOUT)?;
    outcome(&out, &args)
}

/// The host-side ports of `bridge` (CNI's veths).
fn ports(bridge: &str) -> Result<Vec<String>> {
    let out = vc_test_support::run("ip", &["-o", "link", "show", "master", bridge])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
        .collect())
}

/// A CNI bridge with a peer serving a page on it, and the command that
/// fetches the page.
struct Lan {
    bridge: CniBridge,
    peer: CniAttachment,
    _httpd: Background,
    /// The page.
    page: String,
    /// `sh -c` script: fetch it (retried: a server may still start; each
    /// try bounded by `timeout`, as busybox's static wget crashes on -T).
    script: String,
}

impl Lan {
    fn new(env: &Env) -> Result<Lan> {
        let bridge = CniBridge::new()?;
        let peer = bridge.attach_new(&unique("vcpeer"))?;
        let www = env.containerd.scratch(&unique("www"));
        let page = format!("served by the peer {}\n", peer.ip);
        std::fs::write(www.join("index.html"), &page)?;
        let httpd = Background(
            Command::new("nsenter")
                .arg(format!("--net={}", peer.netns.display()))
                .args(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h"])
                .arg(&www)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("busybox httpd in the peer's namespace")?,
        );
        let script = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
               timeout 10 wget -qO- http://{}:8080/index.html && exit 0; sleep 1; done; exit 1",
            peer.ip
        );
        Ok(Lan {
            bridge,
            peer,
            _httpd: httpd,
            page,
            script,
        })
    }

    fn cmd(&self) -> [&str; 3] {
        ["sh", "-c", self.script.as_str()]
    }
}

/// `ctr run --cni` under both runtimes: the same page fetched from the
/// peer, the same exit code; ours logs the interface brought into the
/// VM (to containerd's log, through the bundle's log FIFO); after each
/// run the bridge has only the peer's port again.
pub fn cni_run(env: &Env) -> Result<()> {
    let _dirs = MadeDirs::ensure(Path::new(CNI_CONF_DIR))?;
    let lan = Lan::new(env)?;
    let conf = env.containerd.scratch("cni-net.d");
    std::fs::write(conf.join("10-vc-test.conf"), lan.bridge.config())?;
    let alone = ports(&lan.bridge.bridge)?;
    ensure!(alone.len() == 1, "the peer's port alone: {alone:?}");

    let runc = run_with_cni(env, &conf, RUNC, &unique("r-cni"), &lan.cmd())?;
    ensure!(
        ports(&lan.bridge.bridge)? == alone,
        "runc: CNI's veth left on the bridge"
    );
    let id = unique("v-cni");
    let vc = env.leak_checked(&[&id], || run_with_cni(env, &conf, VC, &id, &lan.cmd()))?;
    ensure!(runc == vc, "runc: {runc:?}\nvc:   {vc:?}");
    ensure!(vc.stdout == lan.page && vc.code == 0, "{vc:?}");
    ensure!(
        ports(&lan.bridge.bridge)? == alone,
        "vc: CNI's veth left on the bridge (the pod's namespace lives on)"
    );
    let log = env.containerd.log_tail(usize::MAX);
    ensure!(
        log.lines()
            .any(|l| l.contains("interface brought into the VM")
                && l.contains("name: eth0")
                && l.contains(&format!("id: {id}"))),
        "no line of our shim in containerd's log saying eth0 reached the VM"
    );
    Ok(())
}

/// What a run in a given namespace saw.
#[derive(Debug, PartialEq, Eq)]
struct InNetns {
    /// The fetch, run by `ctr task exec`.
    fetched: Outcome,
    /// Whether a tap of ours was in the namespace while the task ran.
    tap_seen: bool,
}

/// `ctr run -d --with-ns network:PATH` of a sleeping task; the page
/// fetched by an exec; then `ctr task kill`, `task rm`, `container rm`.
fn in_given_netns(env: &Env, runtime: &str, id: &str, netns: &Path, lan: &Lan) -> Result<InNetns> {
    let c = &env.containerd;
    let with_ns = format!("network:{}", netns.display());
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        "--with-ns",
        &with_ns,
        IMAGE,
        id,
        "sleep",
        "600",
    ])?;
    let seen = (|| -> Result<InNetns> {
        env.wait_status(id, "RUNNING")?;
        let mut args = vec!["task", "exec", "--exec-id", "fetch", id];
        args.extend_from_slice(&lan.cmd());
        let fetched = outcome(&c.ctr(&args)?, &args)?;
        // `ip -o link` lines: "5: tap0_vc: <...".
        let tap_seen = netns_snapshot(netns)
            .lines()
            .any(|l| l.contains(": tap") && l.contains("_vc:"));
        Ok(InNetns { fetched, tap_seen })
    })();
    let removed = (|| -> Result<()> {
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id])?;
        env.wait_status(id, "STOPPED")?;
        c.ctr_ok(&["task", "rm", id])?;
        c.ctr_ok(&["container", "rm", id])?;
        Ok(())
    })();
    let seen = seen?;
    removed?;
    Ok(seen)
}

/// A namespace CNI already set up, named in the spec (`ctr run --with-ns
/// network:PATH`, what the CRI does for a pod): both runtimes reach the
/// peer through it; ours had its tap there while the task ran, and after
/// `ctr task rm` and `ctr container rm` the namespace is exactly as CNI
/// made it (no tap, qdisc or filter of ours left). A namespace that does
/// not exist fails the task's creation, naming it, and leaves nothing.
pub fn given_netns(env: &Env) -> Result<()> {
    let lan = Lan::new(env)?;
    let pod = lan.bridge.attach_new(&unique("vcpod"))?;
    let before = netns_snapshot(&pod.netns);
    let runc = in_given_netns(env, RUNC, &unique("r-netns"), &pod.netns, &lan)?;
    let id = unique("v-netns");
    let vc = env.leak_checked(&[&id], || in_given_netns(env, VC, &id, &pod.netns, &lan))?;
    ensure!(runc.fetched == vc.fetched, "runc: {runc:?}\nvc:   {vc:?}");
    ensure!(
        vc.fetched.stdout == lan.page && vc.fetched.code == 0,
        "{vc:?}"
    );
    ensure!(
        !runc.tap_seen && vc.tap_seen,
        "our tap not seen in the pod's namespace while the task ran"
    );
    ensure!(
        netns_snapshot(&pod.netns) == before,
        "the pod's namespace is not as CNI made it:\nbefore:\n{before}\nafter:\n{}",
        netns_snapshot(&pod.netns)
    );
    drop(pod);
    let left = ports(&lan.bridge.bridge)?;
    ensure!(
        left.len() == 1,
        "ports besides the peer's ({}) after CNI DEL: {left:?}",
        lan.peer.name
    );

    let id = unique("v-nonetns");
    let missing = env.containerd.scratch("netns").join("missing");
    let with_missing = format!("network:{}", missing.display());
    env.leak_checked(&[&id], || {
        let args = [
            "run",
            "--rm",
            "--runtime",
            VC,
            "--with-ns",
            &with_missing,
            IMAGE,
            &id,
            "true",
        ];
        let out = env.containerd.ctr(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "a missing namespace was accepted");
        ensure!(
            stderr.contains(&missing.display().to_string()),
            "the error does not name the namespace: {stderr}"
        );
        Ok(())
    })
}
