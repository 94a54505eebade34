//! What a network namespace holds, read through netlink: the interfaces
//! to carry into the VM (CNI's veths: name, MAC, MTU, addresses), the
//! routes through them, and their static ARP/NDP entries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use serde::{Deserialize, Serialize};
use vc_hypervisor::MacAddress;

use super::netlink::{Netlink, link_name};
use crate::error::Error;

/// An interface of the pod's network namespace that the VM gets a NIC for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Its name in the namespace (and in the guest), e.g. `eth0`.
    pub name: String,
    /// Its index in the namespace.
    pub index: u32,
    /// Its MAC: the guest NIC's too.
    pub mac: MacAddress,
    /// Its MTU: the tap's and the guest NIC's too.
    pub mtu: u32,
    /// Its addresses with prefix lengths (IPv6 link-local ones aside).
    pub addresses: Vec<(IpAddr, u8)>,
    /// The link's kind (`veth`, `macvlan`, ... or empty for a device).
    pub kind: String,
}

/// A route through one of the interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRoute {
    /// Destination prefix; `None` for the default route.
    pub dest: Option<(IpAddr, u8)>,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// The interface's name.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `rtm_scope`.
    pub scope: u8,
    /// Whether it is IPv6.
    pub v6: bool,
}

/// A static ARP/NDP entry on one of the interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkNeighbor {
    /// Its address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: MacAddress,
    /// The interface's name.
    pub device: String,
    /// `NUD_*` state.
    pub state: u16,
}

/// A namespace's interfaces (those the VM gets), routes and neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsScan {
    /// The interfaces, by index.
    pub interfaces: Vec<NetworkInterface>,
    /// Routes through them (the kernel's own prefix routes aside: the
    /// guest makes those from the addresses).
    pub routes: Vec<NetworkRoute>,
    /// Their static neighbours.
    pub neighbors: Vec<NetworkNeighbor>,
}

fn kind_of(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// Whether the VM gets a NIC for `link`: an Ethernet link (a CNI veth, a
/// macvlan, ...), not the loopback, not a bridge, not a tap (the SDK's own
/// are taps).
fn is_endpoint(link: &LinkMessage) -> bool {
    link.header.link_layer_type == LinkLayerType::Ether
        && !matches!(kind_of(link), Some(InfoKind::Tun | InfoKind::Bridge))
}

fn mac_of(link: &LinkMessage) -> Option<MacAddress> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) if m.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(m);
            Some(MacAddress(mac))
        }
        _ => None,
    })
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_of(r: &RouteMessage, name_of: &dyn Fn(u32) -> Option<String>) -> Option<NetworkRoute> {
    let mut route = NetworkRoute {
        dest: None,
        gateway: None,
        device: String::new(),
        source: None,
        scope: r.header.scope.into(),
        v6: r.header.address_family == AddressFamily::Inet6,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                route.dest = Some((route_ip(d)?, r.header.destination_prefix_length))
            }
            RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => route.source = route_ip(s),
            RouteAttribute::Oif(i) => route.device = name_of(*i)?,
            _ => {}
        }
    }
    (!route.device.is_empty()).then_some(route)
}

fn neighbor_of(n: &NeighbourMessage, device: String) -> Option<NetworkNeighbor> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(m);
            Some(MacAddress(mac))
        }
        _ => None,
    })?;
    Some(NetworkNeighbor {
        ip,
        mac,
        device,
        state: n.header.state.into(),
    })
}

impl Netlink {
    /// Reads the namespace. Links named in `skip` (the SDK's own taps) are
    /// left out.
    pub(crate) async fn scan(&self, skip: &BTreeSet<String>) -> Result<NetnsScan, Error> {
        let links = self.links().await?;
        let mut scan = NetnsScan::default();
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.failed("list", "addresses"))?;
        for link in links.iter().filter(|l| is_endpoint(l)) {
            let (Some(name), Some(mac)) = (link_name(link), mac_of(link)) else {
                continue;
            };
            if skip.contains(name) {
                continue;
            }
            let index = link.header.index;
            scan.interfaces.push(NetworkInterface {
                name: name.to_owned(),
                index,
                mac,
                mtu: super::netlink::link_mtu(link).unwrap_or(1500),
                addresses: addresses
                    .iter()
                    .filter(|a| a.header.index == index)
                    .filter_map(|a| Some((address_of(a)?, a.header.prefix_len)))
                    .filter(|(ip, _)| !is_link_local_v6(ip))
                    .collect(),
                kind: kind_of(link).map(|k| k.to_string()).unwrap_or_default(),
            });
        }
        let endpoint_name = |index: u32| {
            scan.interfaces
                .iter()
                .find(|i| i.index == index)
                .map(|i| i.name.clone())
        };
        scan.routes = self
            .main_routes()
            .await?
            .iter()
            .filter(|r| r.header.protocol != RouteProtocol::Kernel)
            .filter_map(|r| route_of(r, &endpoint_name))
            .collect();
        let neighbours: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.failed("list", "neighbours"))?;
        scan.neighbors = neighbours
            .iter()
            .filter_map(|n| neighbor_of(n, endpoint_name(n.header.ifindex)?))
            .collect();
        Ok(scan)
    }

    async fn main_routes(&self) -> Result<Vec<RouteMessage>, Error> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(self.failed("list", "routes"))?;
            all.extend(routes.into_iter().filter(|r| {
                r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.kind == RouteType::Unicast
            }));
        }
        Ok(all)
    }
}
