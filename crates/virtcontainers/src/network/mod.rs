//! The sandbox's network, Kata's default `tcfilter` model: the VM reaches
//! the pod's network namespace through a tap beside each of the
//! namespace's interfaces.
//!
//! The runtime is handed a network namespace (CNI and containerd make
//! one, with a veth in it), or the SDK makes one with only `lo`
//! ([`NetnsConfig`]). For each interface found there (netlink:
//! addresses, MTU, MAC, routes, static neighbours), the SDK makes a
//! persistent tap in the same namespace with the interface's MTU, an
//! ingress qdisc on both, and a `u32` + `mirred` filter each way, so
//! every frame arriving on one leaves by the other. The VM gets a
//! virtio-net NIC on the tap with the **interface's MAC**, and the guest
//! agent gives it the interface's name, addresses and routes: to the pod,
//! the VM's NIC is its veth.
//!
//! One owner (`SandboxNetwork`, crate-internal) makes all of it and records
//! every piece before making it (`network.json` in the state directory),
//! so a failed create, a delete and a `reclaim` after a kill -9 remove
//! exactly what exists, leaving the namespace as CNI made it. Interfaces
//! that CNI adds after the sandbox started are brought in by
//! [`crate::Sandbox::rescan_network`] (hot-plugged NICs).

mod guest;
mod netlink;
mod netns;
pub(crate) mod owner;
mod plan;
mod record;
mod scan;
mod tc;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use guest::configure;
pub(crate) use plan::plan_network;
pub use plan::{CREATED_NETNS_FILE, NetworkPlan};
pub use record::{EndpointRecord, Made, NetworkRecord};
pub use scan::{NetnsScan, NetworkInterface, NetworkNeighbor, NetworkRoute};

/// Which network namespace the sandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsConfig {
    /// The SDK makes a namespace with only `lo` (bound at
    /// `<state dir>/netns`) and deletes it with the sandbox.
    #[default]
    Create,
    /// This existing namespace (e.g. `/var/run/netns/cni-…`, from CNI or
    /// containerd). The SDK adds its taps and filters to it and removes
    /// exactly those; the namespace and what CNI made stay.
    Path(PathBuf),
    /// No network: the VM gets no NIC (the guest has only `lo`).
    Disabled,
}

/// The sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The namespace.
    pub netns: NetnsConfig,
    /// Lines of the containers' `/etc/resolv.conf` (`nameserver 10.0.0.10`,
    /// `search svc.cluster.local`, ...), sent as `CreateSandbox.dns`;
    /// empty leaves the containers' own.
    pub dns: Vec<String>,
}
