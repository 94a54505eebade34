//! Pod networks made the way containerd makes them: a named network
//! namespace (`ip netns add`), then Debian's CNI plugins run as CNI
//! binaries (`bridge` with `host-local` IPAM, `CNI_COMMAND=ADD`, the
//! network's JSON config on stdin). Everything is undone on drop (CNI
//! `DEL`, the namespace, the bridge), and every name and subnet is the
//! test's own, so tests on one host do not meet.
//!
//! And what a leak check of a namespace compares: its links, qdiscs and
//! filters as `ip` and `tc` print them ([`netns_snapshot`]).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, anyhow, ensure};

use crate::host::run;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// A bridge network on the host (`bridge` plugin, `isGateway`, no
/// masquerade) with its own /24 and IPAM state; the bridge is deleted on
/// drop.
#[derive(Debug)]
pub struct CniBridge {
    /// The bridge's name on the host.
    pub bridge: String,
    /// The network's /24 (`10.A.B.0`).
    pub subnet: Ipv4Addr,
    ipam_dir: tempfile::TempDir,
}

/// One namespace attached to a [`CniBridge`]: CNI's veth in it, named
/// `ifname`; detached (CNI `DEL`) and, when it made the namespace,
/// deleted on drop.
#[derive(Debug)]
pub struct CniAttachment {
    /// The namespace's path (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// The namespace's name.
    pub name: String,
    /// The interface CNI made in it.
    pub ifname: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC, as CNI reported it.
    pub mac: String,
    /// The network's gateway (the bridge's address on the host).
    pub gateway: Ipv4Addr,
    config: String,
    owns_netns: bool,
}

fn next_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl CniBridge {
    /// A new bridge network, unique to this test.
    pub fn new() -> anyhow::Result<Self> {
        let n = next_id();
        let pid = std::process::id();
        let bridge = format!("vcbr{}x{n}", pid % 100_000);
        // 10.200-249.x.0/24: one per process and bridge.
        let subnet = Ipv4Addr::new(
            10,
            200 + (pid % 50) as u8,
            (pid / 50 % 200) as u8 + n as u8,
            0,
        );
        Ok(CniBridge {
            bridge,
            subnet,
            ipam_dir: tempfile::tempdir()?,
        })
    }

    /// The gateway, `.1` of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// The network's CNI configuration (JSON), as the plugins get it on
    /// stdin and as a `.conf` file in a CNI configuration directory
    /// (`/etc/cni/net.d`) says it.
    pub fn config(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.bridge,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": format!("{}/24", self.subnet) }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir.path(),
            },
        })
        .to_string()
    }

    /// Makes namespace `name` (`ip netns add`) and attaches it as `eth0`.
    pub fn attach_new(&self, name: &str) -> anyhow::Result<CniAttachment> {
        run("ip", &["netns", "add", name])?;
        let netns = Path::new("/run/netns").join(name);
        let attached = self.attach(&netns, "eth0");
        match attached {
            Ok(mut a) => {
                a.owns_netns = true;
                Ok(a)
            }
            Err(e) => {
                let _ = run("ip", &["netns", "del", name]);
                Err(e)
            }
        }
    }

    /// Attaches an existing namespace as `ifname` (CNI `ADD`).
    pub fn attach(&self, netns: &Path, ifname: &str) -> anyhow::Result<CniAttachment> {
        let config = self.config();
        let name = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = cni("ADD", &config, netns, &name, ifname)?;
        let result: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("CNI result is not JSON: {out}"))?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("no address in the CNI result: {out}"))?;
        let mac = result["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == ifname)
            .and_then(|i| i["mac"].as_str())
            .ok_or_else(|| anyhow!("no {ifname} in the CNI result: {out}"))?
            .to_owned();
        Ok(CniAttachment {
            netns: netns.to_owned(),
            name,
            ifname: ifname.to_owned(),
            ip,
            mac,
            gateway: self.gateway(),
            config,
            owns_netns: false,
        })
    }
}

impl Drop for CniBridge {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

impl Drop for CniAttachment {
    fn drop(&mut self) {
        let _ = cni("DEL", &self.config, &self.netns, &self.name, &self.ifname);
        if self.owns_netns {
            let _ = run("ip", &["netns", "del", &self.name]);
        }
    }
}

/// Runs the `bridge` plugin with `command`; its stdout.
fn cni(
    command: &str,
    config: &str,
    netns: &Path,
    id: &str,
    ifname: &str,
) -> anyhow::Result<String> {
    let plugin = Path::new(CNI_PLUGIN_DIR).join("bridge");
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(config.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "CNI {command} failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Runs `program args` inside the network namespace at `netns`; its
/// stdout.
pub fn in_netns(netns: &Path, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net={}", netns.display());
    let mut all = vec![net.as_str(), program];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// A namespace's links, qdiscs and filters as `ip` and `tc` print them
/// (no counters, no carrier state): what a leak check compares before
/// and after.
pub fn netns_snapshot(netns: &Path) -> String {
    let mut text = String::new();
    let links = in_netns(netns, "ip", &["-o", "-d", "link", "show"]).unwrap_or_default();
    text.push_str(&without_carrier(&links));
    text.push_str(&in_netns(netns, "tc", &["qdisc", "show"]).unwrap_or_default());
    for line in links.lines() {
        // "2: eth0@if7: <...": the name, without the peer.
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or(""))
        else {
            continue;
        };
        for dir in ["ingress", "egress"] {
            let filters =
                in_netns(netns, "tc", &["filter", "show", "dev", name, dir]).unwrap_or_default();
            text.push_str(&format!("filters {name} {dir}:\n{filters}"));
        }
    }
    text
}

/// `links` with what the kernel updates on its own after the fact left
/// out: a tap's carrier and operational state follow the fd attached to
/// it, and the kernel publishes the change up to a second later.
fn without_carrier(links: &str) -> String {
    links
        .lines()
        .map(|line| {
            let line = line.replace("NO-CARRIER,", "");
            let mut words: Vec<&str> = line.split(' ').collect();
            let state = words.iter().position(|w| *w == "state");
            if let Some(i) = state.filter(|i| i + 1 < words.len()) {
                words[i + 1] = "-";
            }
            words.join(" ") + "\n"
        })
        .collect()
}
