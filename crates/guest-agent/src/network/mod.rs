//! The guest's network, as the host describes it (Kata's
//! `UpdateInterface`, `UpdateRoutes`, `AddARPNeighbors`, `ListInterfaces`,
//! `ListRoutes`), the sandbox's DNS, and the interface statistics of
//! `StatsContainer`. Containers share the VM's network namespace (pod
//! semantics), so this is every container's network.
//!
//! Every request is read whole first ([`request`]): a bad one changes
//! nothing. The NIC of an interface is found by its MAC, which the host
//! gave the virtio-net device; a hot-plugged NIC may take a moment to
//! appear, so the agent waits for it (up to [`LINK_WAIT`]).

pub mod netlink;
pub mod request;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::types;

use self::netlink::{Netlink, address_ip, link_mac, link_mtu, link_name};
use crate::error::{Error, Result};

/// How long `UpdateInterface` waits for the NIC with the requested MAC.
pub const LINK_WAIT: Duration = Duration::from_secs(20);
/// Where the sandbox's `resolv.conf` is written (Kata's path), and bound
/// onto each container's `/etc/resolv.conf`.
pub const SANDBOX_DNS_FILE: &str = "/run/kata-containers/sandbox/resolv.conf";
/// A container's resolver configuration.
pub const CONTAINER_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The sandbox's network state in the agent: its DNS file, once written.
#[derive(Debug, Default)]
pub struct GuestNetwork {
    dns_file: Mutex<Option<PathBuf>>,
}

impl GuestNetwork {
    /// No DNS yet.
    pub fn new() -> GuestNetwork {
        GuestNetwork::default()
    }

    /// Writes the sandbox's resolver lines (`CreateSandbox.dns`, e.g.
    /// `nameserver 10.0.0.10`) to `file`; from then on every container
    /// created gets it as its `/etc/resolv.conf`. No lines: nothing.
    pub fn set_dns(&self, lines: &[String], file: &Path) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(file, text).map_err(Error::io("write", file))?;
        *self.dns_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file.to_owned());
        Ok(())
    }

    /// Adds the sandbox's `resolv.conf` to a container's spec, read-only,
    /// unless the spec mounts its own.
    pub fn add_dns_mount(&self, spec: &mut oci_spec::runtime::Spec) {
        let Some(file) = self
            .dns_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        if mounts
            .iter()
            .any(|m| m.destination() == Path::new(CONTAINER_RESOLV_CONF))
        {
            return;
        }
        let mut mount = oci_spec::runtime::Mount::default();
        mount.set_destination(CONTAINER_RESOLV_CONF.into());
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(file));
        mount.set_options(Some(vec!["rbind".into(), "ro".into()]));
        mounts.push(mount);
        spec.set_mounts(Some(mounts));
    }
}

/// Brings `lo` up (at boot: the guest's own services and the containers
/// need it before any host request).
pub async fn loopback_up() -> Result<()> {
    let nl = Netlink::connect()?;
    let index = nl.index_of("lo").await?;
    nl.set_up(index, true).await
}

/// Waits for the link whose MAC is `mac`.
async fn wait_for_link(nl: &Netlink, mac: &[u8; 6], wait: Duration) -> Result<LinkMessage> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(link) = nl
            .links()
            .await?
            .into_iter()
            .find(|l| link_mac(l) == Some(mac.as_slice()))
        {
            return Ok(link);
        }
        if Instant::now() >= deadline {
            return Err(Error::LinkNotFound {
                link: request::format_mac(mac),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `UpdateInterface`: the NIC with the requested MAC gets its name, MTU
/// and exactly the requested addresses (IPv6 link-local ones aside), and
/// is brought up. Returns the interface as it now is.
pub async fn update_interface(i: &types::Interface) -> Result<types::Interface> {
    let want = request::interface(i)?;
    let nl = Netlink::connect()?;
    let link = wait_for_link(&nl, &want.mac, LINK_WAIT).await?;
    let index = link.header.index;
    if let Some(name) = &want.name
        && link_name(&link) != Some(name.as_str())
    {
        nl.set_up(index, false).await?;
        nl.rename(index, name).await?;
    }
    if let Some(mtu) = want.mtu
        && link_mtu(&link) != Some(mtu)
    {
        nl.set_mtu(index, mtu).await?;
    }
    for a in nl.addresses(Some(index)).await? {
        let Some(ip) = address_ip(&a) else { continue };
        let link_local =
            matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !link_local && !want.addresses.contains(&(ip, a.header.prefix_len)) {
            nl.del_address(a).await?;
        }
    }
    for (ip, prefix) in &want.addresses {
        nl.add_address(index, *ip, *prefix).await?;
    }
    nl.set_up(index, true).await?;
    let link = wait_for_link(&nl, &want.mac, Duration::ZERO).await?;
    describe_link(&nl, &link).await
}

/// `UpdateRoutes`: the routes the host set before (not the kernel's own
/// prefix routes) are replaced by `routes`, those without a gateway first.
pub async fn update_routes(routes: &[types::Route]) -> Result<Vec<types::Route>> {
    let mut want = routes
        .iter()
        .map(request::route)
        .collect::<Result<Vec<_>>>()?;
    request::order_routes(&mut want);
    let nl = Netlink::connect()?;
    for old in nl.routes().await? {
        if old.header.protocol != RouteProtocol::Kernel {
            nl.del_route(old).await?;
        }
    }
    for r in &want {
        let index = nl.index_of(&r.device).await?;
        nl.add_route(r, index).await?;
    }
    list_routes_with(&nl).await
}

/// `AddARPNeighbors`: static neighbour entries, replacing any for the
/// same address.
pub async fn add_neighbors(neighbors: &[types::ARPNeighbor]) -> Result<()> {
    let want = neighbors
        .iter()
        .map(request::neighbor)
        .collect::<Result<Vec<_>>>()?;
    let nl = Netlink::connect()?;
    for n in &want {
        let index = nl.index_of(&n.device).await?;
        nl.add_neighbor(n, index).await?;
    }
    Ok(())
}

/// `ListInterfaces`: every link with its addresses.
pub async fn list_interfaces() -> Result<Vec<types::Interface>> {
    let nl = Netlink::connect()?;
    let mut out = Vec::new();
    for link in nl.links().await? {
        out.push(describe_link(&nl, &link).await?);
    }
    Ok(out)
}

/// `ListRoutes`: the main table's unicast routes.
pub async fn list_routes() -> Result<Vec<types::Route>> {
    let nl = Netlink::connect()?;
    list_routes_with(&nl).await
}

async fn list_routes_with(nl: &Netlink) -> Result<Vec<types::Route>> {
    let links = nl.links().await?;
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.header.index == index)
            .and_then(link_name)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(nl
        .routes()
        .await?
        .iter()
        .map(|r| describe_route(r, &name_of))
        .collect())
}

fn route_ip(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(ip) => ip.to_string(),
        RouteAddress::Inet6(ip) => ip.to_string(),
        _ => String::new(),
    }
}

fn family(v6: bool) -> protobuf::EnumOrUnknown<types::IPFamily> {
    if v6 {
        types::IPFamily::v6.into()
    } else {
        types::IPFamily::v4.into()
    }
}

fn describe_route(r: &RouteMessage, name_of: &dyn Fn(u32) -> String) -> types::Route {
    let mut out = types::Route::new();
    let v6 = r.header.address_family == AddressFamily::Inet6;
    out.family = family(v6);
    out.scope = u8::from(r.header.scope).into();
    out.flags = r.header.flags.bits();
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                out.dest = format!("{}/{}", route_ip(d), r.header.destination_prefix_length)
            }
            RouteAttribute::Gateway(g) => out.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => out.source = route_ip(s),
            RouteAttribute::Oif(i) => out.device = name_of(*i),
            _ => {}
        }
    }
    out
}

async fn describe_link(nl: &Netlink, link: &LinkMessage) -> Result<types::Interface> {
    let mut out = types::Interface::new();
    out.name = link_name(link).unwrap_or_default().to_owned();
    out.device = out.name.clone();
    out.mtu = link_mtu(link).unwrap_or_default().into();
    out.hwAddr = link_mac(link).map(request::format_mac).unwrap_or_default();
    out.raw_flags = link.header.flags.bits();
    out.type_ = match link.header.link_layer_type {
        LinkLayerType::Loopback => "loopback".into(),
        LinkLayerType::Ether => "ether".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    for a in nl.addresses(Some(link.header.index)).await? {
        let Some(ip) = address_ip(&a) else { continue };
        let mut addr = types::IPAddress::new();
        addr.family = family(ip.is_ipv6());
        addr.address = ip.to_string();
        addr.mask = a.header.prefix_len.to_string();
        out.IPAddresses.push(addr);
    }
    Ok(out)
}

/// Per-interface counters for `StatsContainer` (every interface but the
/// loopback: the sandbox's, which its containers share).
pub async fn stats() -> Result<Vec<pb::NetworkStats>> {
    let nl = Netlink::connect()?;
    let mut out = Vec::new();
    for link in nl.links().await? {
        if link.header.link_layer_type == LinkLayerType::Loopback {
            continue;
        }
        let Some(s) = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(s),
            _ => None,
        }) else {
            continue;
        };
        let mut n = pb::NetworkStats::new();
        n.name = link_name(&link).unwrap_or_default().to_owned();
        n.rx_bytes = s.rx_bytes;
        n.rx_packets = s.rx_packets;
        n.rx_errors = s.rx_errors;
        n.rx_dropped = s.rx_dropped;
        n.tx_bytes = s.tx_bytes;
        n.tx_packets = s.tx_packets;
        n.tx_errors = s.tx_errors;
        n.tx_dropped = s.tx_dropped;
        out.push(n);
    }
    Ok(out)
}
