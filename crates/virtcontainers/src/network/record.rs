//! What the network's owner records, in `<state dir>/network.json`: the
//! namespace, and for each interface carried into the VM what the SDK
//! made for it, every item written before it is made (write-ahead), so a
//! process killed at any instant leaves a record from which any process
//! can remove exactly what exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::scan::{NetworkInterface, NetworkNeighbor, NetworkRoute};

/// The record's file in the sandbox's state directory.
pub(crate) const RECORD_FILE: &str = "network.json";

/// Something the SDK made in the namespace for one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Made {
    /// The persistent tap (its qdiscs and filters go with it).
    Tap,
    /// The tap's ingress qdisc.
    TapIngress,
    /// The veth's ingress qdisc (its filter goes with it).
    VethIngress,
    /// The filter redirecting the veth's frames to the tap.
    VethRedirect,
    /// The filter redirecting the tap's frames to the veth.
    TapRedirect,
}

/// One interface of the namespace and its tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// The interface (CNI's veth) as scanned.
    pub interface: NetworkInterface,
    /// The tap beside it.
    pub tap: String,
    /// The id of the VM's NIC on the tap.
    pub nic_id: String,
    /// Whether the NIC was hot-plugged (after the VM started).
    pub hotplugged: bool,
    /// What was made for it, in order; each recorded before it is made.
    pub made: Vec<Made>,
    /// The veth's transmit queue length before the SDK touched it: an
    /// ingress qdisc on a queueless veth gives it the default (1000), so
    /// it is put back when the qdisc goes.
    #[serde(default)]
    pub veth_txqlen: Option<u32>,
}

/// The sandbox's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The namespace in use.
    pub netns: Option<PathBuf>,
    /// Whether the SDK makes (made) it, and so deletes it: recorded
    /// before it is made.
    pub created_netns: bool,
    /// The interfaces carried into the VM.
    pub endpoints: Vec<EndpointRecord>,
    /// The routes the guest was given.
    pub routes: Vec<NetworkRoute>,
    /// The static neighbours the guest was given.
    pub neighbors: Vec<NetworkNeighbor>,
}
