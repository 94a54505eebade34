//! The protocol's network messages read into checked values (pure: no
//! netlink, unit-tested): a bad MAC, address, prefix or route is an
//! `InvalidNetwork` error before anything in the guest changes.

use std::net::IpAddr;

use vc_agent_protocol::types;

use crate::error::{Error, Result};

/// An interface as `UpdateInterface` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRequest {
    /// The NIC's MAC: how the guest finds it.
    pub mac: [u8; 6],
    /// Its new name (`None`: keep the kernel's).
    pub name: Option<String>,
    /// Its MTU (`None`: keep it).
    pub mtu: Option<u32>,
    /// Its addresses, with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A route as `UpdateRoutes` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    /// Destination prefix; `None` for the default route.
    pub dest: Option<(IpAddr, u8)>,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// The interface's name.
    pub device: String,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `rtm_scope` (0 universe, 253 link, 254 host).
    pub scope: u8,
    /// Whether it is IPv6.
    pub v6: bool,
}

/// A static neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighborRequest {
    /// Its address.
    pub ip: IpAddr,
    /// Its link-layer address.
    pub lladdr: [u8; 6],
    /// The interface's name.
    pub device: String,
    /// `NUD_*` state (0: permanent).
    pub state: u16,
}

fn invalid(reason: String) -> Error {
    Error::InvalidNetwork { reason }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| invalid(format!("MAC {text:?} is not six bytes aa:bb:..")))?;
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| invalid(format!("MAC {text:?} is not hexadecimal")))?;
    }
    if parts.next().is_some() {
        return Err(invalid(format!("MAC {text:?} is longer than six bytes")));
    }
    Ok(mac)
}

/// Writes a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| invalid(format!("{what} {text:?} is not an IP address")))
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Parses `address` and `mask` (a prefix length) of an [`types::IPAddress`].
pub fn parse_address(a: &types::IPAddress) -> Result<(IpAddr, u8)> {
    let ip = parse_ip(&a.address, "address")?;
    let prefix = match a.mask.as_str() {
        "" => max_prefix(&ip),
        m => m
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max_prefix(&ip))
            .ok_or_else(|| invalid(format!("prefix length {m:?} of {ip} is out of range")))?,
    };
    Ok((ip, prefix))
}

/// Parses a prefix `a.b.c.d/n` (a bare address is a host route).
pub fn parse_prefix(text: &str) -> Result<(IpAddr, u8)> {
    let (ip, len) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip = parse_ip(ip, "route destination")?;
    let prefix = match len {
        None => max_prefix(&ip),
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max_prefix(&ip))
            .ok_or_else(|| invalid(format!("route destination {text:?}: bad prefix length")))?,
    };
    Ok((ip, prefix))
}

/// Reads an `UpdateInterface` request.
pub fn interface(i: &types::Interface) -> Result<InterfaceRequest> {
    let mac = parse_mac(&i.hwAddr)?;
    if i.name.len() > 15 || i.name.contains(['/', ' ', '\0']) {
        return Err(invalid(format!("{:?} is not an interface name", i.name)));
    }
    let mtu = match i.mtu {
        0 => None,
        m => Some(
            u32::try_from(m)
                .ok()
                .filter(|m| (68..=65535).contains(m))
                .ok_or_else(|| invalid(format!("MTU {m} is out of range")))?,
        ),
    };
    let addresses = i
        .IPAddresses
        .iter()
        .map(parse_address)
        .collect::<Result<_>>()?;
    Ok(InterfaceRequest {
        mac,
        name: (!i.name.is_empty()).then(|| i.name.clone()),
        mtu,
        addresses,
    })
}

/// Reads a route of an `UpdateRoutes` request.
pub fn route(r: &types::Route) -> Result<RouteRequest> {
    let dest = match r.dest.as_str() {
        "" | "default" => None,
        d => Some(parse_prefix(d)?),
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => Some(parse_ip(g, "gateway")?),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(parse_ip(s, "source")?),
    };
    if r.device.is_empty() {
        return Err(invalid(format!("route to {:?} names no device", r.dest)));
    }
    let v6 = match (dest, gateway) {
        (Some((d, _)), _) => d.is_ipv6(),
        (None, Some(g)) => g.is_ipv6(),
        (None, None) => r.family.enum_value() == Ok(types::IPFamily::v6),
    };
    if gateway.is_some_and(|g| g.is_ipv6() != v6) {
        return Err(invalid(format!(
            "route to {:?}: the gateway's family differs",
            r.dest
        )));
    }
    let scope = u8::try_from(r.scope)
        .map_err(|_| invalid(format!("route scope {} is out of range", r.scope)))?;
    Ok(RouteRequest {
        dest,
        gateway,
        device: r.device.clone(),
        source,
        scope,
        v6,
    })
}

/// Reads a neighbour of an `AddARPNeighbors` request.
pub fn neighbor(n: &types::ARPNeighbor) -> Result<NeighborRequest> {
    let to = n
        .toIPAddress
        .as_ref()
        .ok_or_else(|| invalid("an ARP neighbour without an address".into()))?;
    let ip = parse_ip(&to.address, "neighbour")?;
    if n.device.is_empty() {
        return Err(invalid(format!("neighbour {ip} names no device")));
    }
    let state = u16::try_from(n.state)
        .map_err(|_| invalid(format!("neighbour state {} is out of range", n.state)))?;
    Ok(NeighborRequest {
        ip,
        lladdr: parse_mac(&n.lladdr)?,
        device: n.device.clone(),
        state,
    })
}

/// Orders routes as the kernel needs them: those without a gateway (the
/// on-link prefixes a gateway is reached through) first.
pub fn order_routes(routes: &mut [RouteRequest]) {
    routes.sort_by_key(|r| r.gateway.is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, m: &str) -> types::IPAddress {
        let mut x = types::IPAddress::new();
        x.address = a.into();
        x.mask = m.into();
        x
    }

    #[test]
    fn interfaces_are_checked_whole() {
        let mut i = types::Interface::new();
        i.hwAddr = "02:42:AC:11:00:02".into();
        i.name = "eth0".into();
        i.mtu = 1450;
        i.IPAddresses.push(addr("10.88.0.5", "16"));
        i.IPAddresses.push(addr("fd00::5", "64"));
        let r = interface(&i).unwrap();
        assert_eq!(r.mac, [2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(r.name.as_deref(), Some("eth0"));
        assert_eq!(r.mtu, Some(1450));
        assert_eq!(
            r.addresses,
            [
                ("10.88.0.5".parse().unwrap(), 16),
                ("fd00::5".parse().unwrap(), 64)
            ]
        );
        assert_eq!(format_mac(&r.mac), "02:42:ac:11:00:02");
        for (field, bad) in [
            ("mac", "02:42:ac:11:00"),
            ("mac", "zz:42:ac:11:00:02"),
            ("mask", "33"),
            ("address", "10.88.0"),
            ("name", "a-name-that-is-too-long"),
            ("mtu", "10"),
        ] {
            let mut b = i.clone();
            match field {
                "mac" => b.hwAddr = bad.into(),
                "mask" => b.IPAddresses[0].mask = bad.into(),
                "address" => b.IPAddresses[0].address = bad.into(),
                "name" => b.name = bad.into(),
                _ => b.mtu = 10,
            }
            assert!(
                matches!(interface(&b), Err(Error::InvalidNetwork { .. })),
                "{field} {bad}"
            );
        }
    }

    #[test]
    fn routes_default_prefixes_and_order() {
        let mut gw = types::Route::new();
        gw.gateway = "10.88.0.1".into();
        gw.device = "eth0".into();
        let mut link = types::Route::new();
        link.dest = "10.88.0.0/16".into();
        link.device = "eth0".into();
        link.scope = 253;
        let mut routes = vec![route(&gw).unwrap(), route(&link).unwrap()];
        assert_eq!(routes[0].dest, None);
        assert_eq!(routes[0].gateway, Some("10.88.0.1".parse().unwrap()));
        order_routes(&mut routes);
        assert_eq!(routes[0].dest, Some(("10.88.0.0".parse().unwrap(), 16)));
        assert_eq!(routes[0].scope, 253);
        assert_eq!(routes[1].dest, None);
        let mut v6 = types::Route::new();
        v6.dest = "fd00::/64".into();
        v6.device = "eth0".into();
        assert!(route(&v6).unwrap().v6);
        v6.gateway = "10.0.0.1".into();
        assert!(route(&v6).is_err(), "mixed families");
        let mut nodev = types::Route::new();
        nodev.dest = "10.0.0.0/8".into();
        assert!(route(&nodev).is_err());
        nodev.device = "eth0".into();
        nodev.dest = "10.0.0.0/40".into();
        assert!(route(&nodev).is_err());
    }

    #[test]
    fn neighbours_need_address_mac_and_device() {
        let mut n = types::ARPNeighbor::new();
        n.toIPAddress = protobuf::MessageField::some(addr("10.88.0.1", ""));
        n.lladdr = "02:00:00:00:00:01".into();
        n.device = "eth0".into();
        let r = neighbor(&n).unwrap();
        assert_eq!(r.ip, "10.88.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.lladdr, [2, 0, 0, 0, 0, 1]);
        n.lladdr = "nope".into();
        assert!(neighbor(&n).is_err());
        n.toIPAddress = protobuf::MessageField::none();
        assert!(neighbor(&n).is_err());
    }
}
