//! The network part of planning: the configuration checked against the
//! host (the namespace exists and is one, taps can be made) before
//! anything changes.

use std::path::{Path, PathBuf};

use super::netns::not_a_netns;
use super::{NetnsConfig, NetworkConfig};
use crate::error::Error;

/// Where the SDK binds a namespace it makes, in the sandbox's state
/// directory.
pub const CREATED_NETNS_FILE: &str = "netns";

/// The sandbox's network, planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The namespace (`None`: no network).
    pub netns: Option<PathBuf>,
    /// Whether the SDK makes it (at `netns`) and deletes it.
    pub create_netns: bool,
    /// Resolver lines for the containers' `/etc/resolv.conf`.
    pub dns: Vec<String>,
}

/// Checks `config` for a sandbox whose state lives in `state_dir`.
pub(crate) fn plan_network(config: &NetworkConfig, state_dir: &Path) -> Result<NetworkPlan, Error> {
    for line in &config.dns {
        if line.trim().is_empty() || line.contains(['\n', '\r', '\0']) {
            return Err(Error::InvalidDns { line: line.clone() });
        }
    }
    let (netns, create_netns) = match &config.netns {
        NetnsConfig::Disabled => (None, false),
        NetnsConfig::Create => (Some(state_dir.join(CREATED_NETNS_FILE)), true),
        NetnsConfig::Path(path) => {
            if let Some(reason) = not_a_netns(path) {
                return Err(Error::InvalidNetns {
                    path: path.clone(),
                    reason,
                });
            }
            if !Path::new(vc_hypervisor::tap::TUN_DEVICE).exists() {
                return Err(vc_types::Unsupported::new(
                    "networking through a tap",
                    "this host has no /dev/net/tun (modprobe tun)",
                )
                .into());
            }
            (Some(path.clone()), false)
        }
    };
    Ok(NetworkPlan {
        netns,
        create_netns,
        dns: config.dns.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_namespaces_and_dns_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = NetworkConfig {
            netns: NetnsConfig::Path(dir.path().join("nope")),
            dns: vec![],
        };
        let e = plan_network(&missing, dir.path()).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidNetns { reason, .. } if reason == "does not exist"),
            "{e}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let not_ns = NetworkConfig {
            netns: NetnsConfig::Path(file),
            dns: vec![],
        };
        assert!(matches!(
            plan_network(&not_ns, dir.path()),
            Err(Error::InvalidNetns { .. })
        ));
        let bad_dns = NetworkConfig {
            netns: NetnsConfig::Disabled,
            dns: vec!["nameserver 1.1.1.1\nnameserver 2.2.2.2".into()],
        };
        assert!(matches!(
            plan_network(&bad_dns, dir.path()),
            Err(Error::InvalidDns { .. })
        ));
        let ours = plan_network(&NetworkConfig::default(), dir.path()).unwrap();
        assert_eq!(ours.netns, Some(dir.path().join(CREATED_NETNS_FILE)));
        assert!(ours.create_netns);
        let host = NetworkConfig {
            netns: NetnsConfig::Path("/proc/self/ns/net".into()),
            dns: vec!["nameserver 10.0.0.10".into()],
        };
        let plan = plan_network(&host, dir.path()).unwrap();
        assert!(!plan.create_netns);
        assert_eq!(plan.dns, ["nameserver 10.0.0.10"]);
    }
}
