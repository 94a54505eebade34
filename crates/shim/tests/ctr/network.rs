//! `ctr run --cni`: ctr runs CNI (Debian's `bridge` + `host-local`) on
//! `/proc/<pid>/ns/net` of the pid Create returned, between Create and
//! Start; the container then fetches a page from a peer on the same
//! bridge. Under runc's shim and ours alike; with ours the interface CNI
//! made reaches the VM, and after the run the pod's namespace is gone
//! (CNI's veth with it: the taps were in it) and nothing else is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, ensure};
use vc_test_support::{CniBridge, unique};

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

/// `ctr run --cni` under both runtimes: the same page fetched from the
/// peer, the same exit code; ours logs the interface brought into the
/// VM (to containerd's log, through the bundle's log FIFO); after each
/// run the bridge has only the peer's port again.
pub fn cni_run(env: &Env) -> Result<()> {
    let _dirs = MadeDirs::ensure(Path::new(CNI_CONF_DIR))?;
    let bridge = CniBridge::new()?;
    let peer = bridge.attach_new(&unique("vcpeer"))?;
    let www = env.containerd.scratch("www");
    let page = format!("served by the peer {}\n", peer.ip);
    std::fs::write(www.join("index.html"), &page)?;
    let _httpd = Background(
        Command::new("nsenter")
            .arg(format!("--net={}", peer.netns.display()))
            .args(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("busybox httpd in the peer's namespace")?,
    );
    let conf = env.containerd.scratch("cni-net.d");
    std::fs::write(conf.join("10-vc-test.conf"), bridge.config())?;
    let alone = ports(&bridge.bridge)?;
    ensure!(alone.len() == 1, "the peer's port alone: {alone:?}");

    // The first try may meet a server still starting; each try is bounded
    // by `timeout` (busybox's static wget crashes on -T).
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do \
           timeout 10 wget -qO- http://{}:8080/index.html && exit 0; sleep 1; done; exit 1",
        peer.ip
    );
    let cmd = ["sh", "-c", script.as_str()];
    let runc = run_with_cni(env, &conf, RUNC, &unique("r-cni"), &cmd)?;
    ensure!(
        ports(&bridge.bridge)? == alone,
        "runc: CNI's veth left on the bridge"
    );
    let id = unique("v-cni");
    let vc = env.leak_checked(&[&id], || run_with_cni(env, &conf, VC, &id, &cmd))?;
    ensure!(runc == vc, "runc: {runc:?}\nvc:   {vc:?}");
    ensure!(vc.stdout == page && vc.code == 0, "{vc:?}");
    ensure!(
        ports(&bridge.bridge)? == alone,
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
