//! The pod's network namespace, as containerd's callers expect it.
//!
//! Which namespace: the one the sandbox's OCI spec names (CRI made it and
//! ran CNI in it: `linux.namespaces` network with a path), a new one when
//! the spec asks for a new network namespace (`ctr run`: the SDK makes it
//! and deletes it with the sandbox), none when the spec shares the host's
//! (a VM cannot: it gets no NIC) or `internetworking_model = "none"`.
//!
//! `ctr run --cni` runs CNI on `/proc/<pid>/ns/net` of the pid Create
//! returned, between Create and Start. A VM's processes are not host
//! processes, and QEMU runs in the host's namespace (the SDK hands it tap
//! descriptors), so the shim keeps a [`Holder`]: a small process of its
//! own inside the pod's namespace, whose pid it reports. At Start the
//! shim rescans the namespace so that the interface CNI made reaches the
//! VM before the container's process runs.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use virtcontainers::NetnsConfig;
use virtcontainers::oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// The holder's `argv[0]`, so that it is told from a shim in `ps`.
pub const HOLDER_NAME: &str = "vc-netns-holder";

/// How long the holder may take to exit once told to.
const HOLDER_EXIT: Duration = Duration::from_secs(5);

/// The namespace a sandbox's spec asks for.
pub fn requested(spec: &Spec) -> NetnsConfig {
    let network = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| nss.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
    match network {
        Some(ns) => match ns.path() {
            Some(path) if !path.as_os_str().is_empty() => NetnsConfig::Path(path.clone()),
            _ => NetnsConfig::Create,
        },
        None => NetnsConfig::Disabled,
    }
}

/// A process of the shim's parked in the pod's network namespace: its
/// pid is the one containerd is given. It exits when its stdin closes,
/// that is when the shim ends it or the shim dies (even by SIGKILL: the
/// pipe's only writer is the shim, and the pipe is close-on-exec in it).
#[derive(Debug)]
pub struct Holder {
    child: Child,
    /// Closing it tells the holder to go.
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Starts the holder in the namespace bound at `netns`; `id` (the
    /// sandbox's) is on its command line.
    pub fn spawn(netns: &Path, id: &str) -> Result<Holder> {
        let exe = std::env::current_exe().map_err(Error::io("find", "/proc/self/exe"))?;
        let ns = std::fs::File::open(netns).map_err(Error::io("open the netns", netns))?;
        let mut command = Command::new(&exe);
        command
            .arg0(HOLDER_NAME)
            .args(["-id", id, "netns-holder"])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and
        // only makes the setns(2) system call on a descriptor opened
        // above: no allocation, no lock, async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .map_err(Error::io("start the netns holder in", netns))?;
        let stdin = child.stdin.take();
        Ok(Holder { child, stdin })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells it to go and reaps it (SIGKILL if it lingers).
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + HOLDER_EXIT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.end();
        }
    }
}

/// The holder's body (`netns-holder`): waits for its stdin to close.
pub fn hold() -> std::process::ExitCode {
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => return std::process::ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return std::process::ExitCode::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtcontainers::oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, SpecBuilder,
    };

    fn spec(network: Option<Option<&str>>) -> Spec {
        let mut namespaces = vec![
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()
                .unwrap(),
        ];
        if let Some(path) = network {
            let mut ns = LinuxNamespaceBuilder::default();
            ns = ns.typ(LinuxNamespaceType::Network);
            if let Some(p) = path {
                ns = ns.path(p);
            }
            namespaces.push(ns.build().unwrap());
        }
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(namespaces)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn the_spec_says_which_namespace() {
        assert_eq!(
            requested(&spec(Some(Some("/var/run/netns/cni-1")))),
            NetnsConfig::Path("/var/run/netns/cni-1".into()),
            "CRI's namespace"
        );
        assert_eq!(requested(&spec(Some(None))), NetnsConfig::Create, "ctr run");
        assert_eq!(
            requested(&spec(None)),
            NetnsConfig::Disabled,
            "the host's network"
        );
    }
}
