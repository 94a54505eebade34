//! Host PCI addresses (`domain:bus:device.function`), ordered numerically.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A host PCI address as sysfs writes it: `0000:3b:00.0`.
///
/// Ordering is numeric, field by field (domain, bus, device, function),
/// so `0000:02:00.0` sorts before `0000:10:00.0` and a five-digit domain
/// (`10000:00:00.0`, as VMD creates) after every four-digit one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddress {
    /// The address in the exact `DDDD:BB:SS.F` form QEMU's `vfio-pci`
    /// `host=` property takes, if the domain fits four hex digits.
    pub fn to_qemu_host(&self) -> Option<String> {
        (self.domain <= 0xffff).then(|| self.to_string())
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a PCI address (expected domain:bus:device.function in hex, e.g. 0000:3b:00.0)"
)]
pub struct ParsePciAddressError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for PciAddress {
    type Err = ParsePciAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePciAddressError {
            input: s.to_owned(),
        };
        let hex = |part: &str, max_len: usize| {
            if part.is_empty()
                || part.len() > max_len
                || !part.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        let mut parts = s.split(':');
        let (Some(domain), Some(bus), Some(slot), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let (device, function) = slot.split_once('.').ok_or_else(err)?;
        let domain = hex(domain, 8)?;
        let bus = hex(bus, 2)?;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(Self {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sysfs_addresses() {
        let a: PciAddress = "0000:3b:1f.7".parse().unwrap();
        assert_eq!(
            a,
            PciAddress {
                domain: 0,
                bus: 0x3b,
                device: 0x1f,
                function: 7
            }
        );
        assert_eq!(a.to_string(), "0000:3b:1f.7");
        assert_eq!(a.to_qemu_host().as_deref(), Some("0000:3b:1f.7"));
        let vmd: PciAddress = "10000:e1:00.0".parse().unwrap();
        assert_eq!(vmd.to_string(), "10000:e1:00.0");
        assert_eq!(vmd.to_qemu_host(), None);
        for bad in [
            "",
            "0000:3b:00",
            "3b:00.0",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "0000:3bb:00.0",
            "0000:3b:00.0:1",
            "0000:zz:00.0",
            "0000:3b:00.0 ",
            "ff000000.gpu",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_numerically_not_as_text() {
        // As text, "10000:..." would sort before "ffff:...".
        let mut v: Vec<PciAddress> = [
            "10000:00:00.0",
            "ffff:00:00.0",
            "0000:10:00.0",
            "0000:02:00.1",
            "0000:02:00.0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        v.sort();
        let printed: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                "0000:02:00.0",
                "0000:02:00.1",
                "0000:10:00.0",
                "ffff:00:00.0",
                "10000:00:00.0"
            ]
        );
        let json = serde_json::to_string(&v[0]).unwrap();
        assert_eq!(json, "\"0000:02:00.0\"");
        assert_eq!(serde_json::from_str::<PciAddress>(&json).unwrap(), v[0]);
    }
}
