//! The guest's side of the network: the scanned interfaces, routes and
//! neighbours as the agent protocol's messages (Kata's `types`), sent with
//! `UpdateInterface`, `UpdateRoutes` and `AddARPNeighbors`.

use vc_agent_client::Agent;
use vc_agent_client::protocol::{protobuf, types};
use vc_hypervisor::GuestAddress;

use super::record::{EndpointRecord, NetworkRecord};
use super::scan::{NetworkNeighbor, NetworkRoute};
use crate::error::Error;

fn family(v6: bool) -> protobuf::EnumOrUnknown<types::IPFamily> {
    if v6 {
        types::IPFamily::v6.into()
    } else {
        types::IPFamily::v4.into()
    }
}

/// The interface message of an endpoint: found in the guest by the veth's
/// MAC, named and addressed as the veth; `address` is its NIC's PCI path
/// when hot-plugged.
pub(crate) fn interface(e: &EndpointRecord, address: Option<&GuestAddress>) -> types::Interface {
    let i = &e.interface;
    let mut out = types::Interface::new();
    out.device = i.name.clone();
    out.name = i.name.clone();
    out.mtu = i.mtu.into();
    out.hwAddr = i.mac.to_string();
    out.type_ = i.kind.clone();
    if let Some(GuestAddress::Pci { path }) = address {
        out.devicePath = path.to_string();
    }
    for (ip, prefix) in &i.addresses {
        let mut a = types::IPAddress::new();
        a.family = family(ip.is_ipv6());
        a.address = ip.to_string();
        a.mask = prefix.to_string();
        out.IPAddresses.push(a);
    }
    out
}

fn route(r: &NetworkRoute) -> types::Route {
    let mut out = types::Route::new();
    if let Some((ip, len)) = r.dest {
        out.dest = format!("{ip}/{len}");
    }
    if let Some(gw) = r.gateway {
        out.gateway = gw.to_string();
    }
    if let Some(src) = r.source {
        out.source = src.to_string();
    }
    out.device = r.device.clone();
    out.scope = r.scope.into();
    out.family = family(r.v6);
    out
}

fn neighbor(n: &NetworkNeighbor) -> types::ARPNeighbor {
    let mut out = types::ARPNeighbor::new();
    let mut to = types::IPAddress::new();
    to.family = family(n.ip.is_ipv6());
    to.address = n.ip.to_string();
    out.toIPAddress = protobuf::MessageField::some(to);
    out.device = n.device.clone();
    out.lladdr = n.mac.to_string();
    out.state = n.state.into();
    out
}

/// Configures `endpoints` in the guest, then the routes and neighbours of
/// `record` (routes after every interface they go through).
pub(crate) async fn configure(
    agent: &dyn Agent,
    record: &NetworkRecord,
    endpoints: &[(EndpointRecord, Option<GuestAddress>)],
) -> Result<(), Error> {
    for (e, address) in endpoints {
        agent
            .update_interface(interface(e, address.as_ref()))
            .await
            .map_err(Error::agent("UpdateInterface"))?;
    }
    if record.endpoints.is_empty() {
        return Ok(());
    }
    agent
        .update_routes(record.routes.iter().map(route).collect())
        .await
        .map_err(Error::agent("UpdateRoutes"))?;
    if !record.neighbors.is_empty() {
        agent
            .add_arp_neighbors(record.neighbors.iter().map(neighbor).collect())
            .await
            .map_err(Error::agent("AddARPNeighbors"))?;
    }
    Ok(())
}
