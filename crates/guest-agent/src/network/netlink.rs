//! The guest's links, addresses, routes and neighbours through rtnetlink.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::request::{NeighborRequest, RouteRequest};
use crate::error::{Error, Result};

/// One rtnetlink connection, its reader task ended on drop.
pub struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn failed(
    operation: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> Error {
    let target = target.into();
    move |source| Error::Netlink {
        operation,
        target,
        source,
    }
}

/// The errno of a netlink error answer.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A link's name.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's hardware address.
pub fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// A link's MTU.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// An address message's address (`IFA_ADDRESS`, else `IFA_LOCAL`).
pub fn address_ip(a: &AddressMessage) -> Option<IpAddr> {
    let find = |want_local: bool| {
        a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(ip) if want_local => Some(*ip),
            AddressAttribute::Address(ip) if !want_local => Some(*ip),
            _ => None,
        })
    };
    // A point-to-point address has both; IFA_LOCAL is the interface's own.
    find(true).or_else(|| find(false))
}

impl Netlink {
    /// Opens a connection in this network namespace.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(Error::sys("open a netlink socket"))?;
        let task = tokio::spawn(connection);
        Ok(Netlink { handle, task })
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("list", "links"))
    }

    /// Every address (of `index` only, when given).
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<AddressMessage>> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let all: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(failed("list", "addresses"))?;
        Ok(all
            .into_iter()
            .filter(|a| index.is_none_or(|i| a.header.index == i))
            .collect())
    }

    /// The main table's routes, both families.
    pub async fn routes(&self) -> Result<Vec<RouteMessage>> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let mut routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(failed("list", "routes"))?;
            routes.retain(|r| {
                r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.kind == RouteType::Unicast
            });
            all.extend(routes);
        }
        Ok(all)
    }

    /// The index of the link named `name`.
    pub async fn index_of(&self, name: &str) -> Result<u32> {
        let links = self.links().await?;
        links
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index)
            .ok_or_else(|| Error::LinkNotFound {
                link: name.to_owned(),
            })
    }

    /// Sets a link down or up.
    pub async fn set_up(&self, index: u32, up: bool) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index);
        let message = if up { builder.up() } else { builder.down() }.build();
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(failed(
                if up { "set up" } else { "set down" },
                format!("link {index}"),
            ))
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).name(name).build();
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(failed("rename", format!("link {index} to {name}")))
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(failed("set the MTU of", format!("link {index}")))
    }

    /// Adds an address; one already there is fine.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(failed("add address", format!("{ip}/{prefix}"))),
        }
    }

    /// Removes an address.
    pub async fn del_address(&self, address: AddressMessage) -> Result<()> {
        let what = address_ip(&address)
            .map(|i| i.to_string())
            .unwrap_or_default();
        self.handle
            .address()
            .del(address)
            .execute()
            .await
            .map_err(failed("remove address", what))
    }

    /// Adds a route; one already there (the prefix route of an address) is
    /// fine.
    pub async fn add_route(&self, route: &RouteRequest, index: u32) -> Result<()> {
        let mut b = RouteMessageBuilder::<IpAddr>::new().output_interface(index);
        let m = b.get_mut();
        m.header.address_family = if route.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.scope = RouteScope::from(route.scope);
        m.header.protocol = RouteProtocol::Boot;
        if let Some((ip, len)) = route.dest {
            m.header.destination_prefix_length = len;
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        }
        if let Some(gw) = route.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(src) = route.source {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        let target = match route.dest {
            Some((ip, len)) => format!("{ip}/{len} dev {}", route.device),
            None => format!("default dev {}", route.device),
        };
        match self.handle.route().add(b.build()).execute().await {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(failed("add route", target)),
        }
    }

    /// Removes a route.
    pub async fn del_route(&self, route: RouteMessage) -> Result<()> {
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .map_err(failed("remove", "a route"))
    }

    /// Adds (or replaces) a static neighbour entry.
    pub async fn add_neighbor(&self, n: &NeighborRequest, index: u32) -> Result<()> {
        let state = match n.state {
            0 => NeighbourState::Permanent,
            s => NeighbourState::from(s),
        };
        self.handle
            .neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.lladdr)
            .state(state)
            .replace()
            .execute()
            .await
            .map_err(failed("add neighbour", n.ip.to_string()))
    }
}

/// Whether a link is up.
pub fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}
