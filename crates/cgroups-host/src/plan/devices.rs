//! The sandbox cgroup's device allowlist (cgroup v1 `devices` controller).

use std::fmt;
use std::path::PathBuf;

use oci_spec::runtime::LinuxDeviceType;
use serde::{Deserialize, Serialize};

use super::resources::ContainerResources;
use crate::error::Error;

/// The kind of device a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// Character device (`c`).
    Char,
    /// Block device (`b`).
    Block,
}

impl DeviceKind {
    fn letter(self) -> char {
        match self {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        }
    }
}

/// One allowlist entry: a device (or all minors of a major) with `rwm`
/// access, written to `devices.allow` as `c 1:3 rwm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number; `None` is every minor (`*`).
    pub minor: Option<u32>,
}

impl DeviceRule {
    /// A character device.
    pub const fn char(major: u32, minor: u32) -> Self {
        DeviceRule {
            kind: DeviceKind::Char,
            major,
            minor: Some(minor),
        }
    }

    /// Whether this rule allows the device `kind major:minor`.
    pub fn allows(&self, kind: DeviceKind, major: u32, minor: u32) -> bool {
        self.kind == kind && self.major == major && self.minor.is_none_or(|m| m == minor)
    }
}

impl fmt::Display for DeviceRule {
    /// The `devices.allow` / `devices.list` syntax, e.g. `c 1:3 rwm`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            Some(minor) => write!(f, "{} {}:{} rwm", self.kind.letter(), self.major, minor),
            None => write!(f, "{} {}:* rwm", self.kind.letter(), self.major),
        }
    }
}

/// The basic character devices every process expects: `/dev/null`,
/// `/dev/zero`, `/dev/full`, `/dev/random`, `/dev/urandom`, `/dev/tty` and
/// `/dev/console` (major and minor numbers fixed by the kernel's
/// `devices.txt`).
pub const BASIC_DEVICES: [(&str, DeviceRule); 7] = [
    ("/dev/null", DeviceRule::char(1, 3)),
    ("/dev/zero", DeviceRule::char(1, 5)),
    ("/dev/full", DeviceRule::char(1, 7)),
    ("/dev/random", DeviceRule::char(1, 8)),
    ("/dev/urandom", DeviceRule::char(1, 9)),
    ("/dev/tty", DeviceRule::char(5, 0)),
    ("/dev/console", DeviceRule::char(5, 1)),
];

/// What the runtime itself needs when it runs inside the sandbox cgroup
/// (`sandbox_cgroup_only`): `/dev/ptmx` and the pty slaves (for consoles),
/// every loop device and `/dev/loop-control` (for EROFS layers).
pub const RUNTIME_DEVICES: [(&str, DeviceRule); 4] = [
    ("/dev/ptmx", DeviceRule::char(5, 2)),
    (
        "/dev/pts/*",
        DeviceRule {
            kind: DeviceKind::Char,
            major: 136,
            minor: None,
        },
    ),
    (
        "/dev/loop*",
        DeviceRule {
            kind: DeviceKind::Block,
            major: 7,
            minor: None,
        },
    ),
    ("/dev/loop-control", DeviceRule::char(10, 237)),
];

/// A device node present on the host, found by
/// [`crate::host_devices::discover_vmm_devices`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDevice {
    /// The node, e.g. `/dev/kvm`.
    pub path: PathBuf,
    /// Character or block.
    pub kind: DeviceKind,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl HostDevice {
    /// The rule that allows exactly this device.
    pub fn rule(&self) -> DeviceRule {
        DeviceRule {
            kind: self.kind,
            major: self.major,
            minor: Some(self.minor),
        }
    }
}

/// The sandbox cgroup's allowlist: the basic devices, the VMM's devices
/// present on the host, the containers' own device nodes, and the
/// runtime's devices when it runs in the sandbox cgroup. Sorted, no
/// duplicates. Stopped containers' devices stay allowed: the VMM may still
/// hold them open until they are unplugged.
pub fn allowlist(
    vmm_devices: &[HostDevice],
    containers: &[ContainerResources],
    sandbox_cgroup_only: bool,
) -> Result<Vec<DeviceRule>, Error> {
    let mut rules: Vec<DeviceRule> = BASIC_DEVICES.iter().map(|(_, r)| *r).collect();
    rules.extend(vmm_devices.iter().map(HostDevice::rule));
    if sandbox_cgroup_only {
        rules.extend(RUNTIME_DEVICES.iter().map(|(_, r)| *r));
    }
    for c in containers {
        for d in &c.devices {
            let kind = match d.typ() {
                LinuxDeviceType::B => DeviceKind::Block,
                // `u` is an unbuffered character device; `p` (FIFO) and `a`
                // need no device-cgroup access from the VMM.
                LinuxDeviceType::C | LinuxDeviceType::U => DeviceKind::Char,
                LinuxDeviceType::P | LinuxDeviceType::A => continue,
            };
            let invalid = || Error::InvalidDevice {
                container: c.id.clone(),
                path: d.path().clone(),
                major: d.major(),
                minor: d.minor(),
            };
            let major = u32::try_from(d.major()).map_err(|_| invalid())?;
            let minor = u32::try_from(d.minor()).map_err(|_| invalid())?;
            rules.push(DeviceRule {
                kind,
                major,
                minor: Some(minor),
            });
        }
    }
    rules.sort();
    rules.dedup();
    // A rule with a specific minor is redundant beside a wildcard for its major.
    let wildcards: Vec<DeviceRule> = rules
        .iter()
        .filter(|r| r.minor.is_none())
        .copied()
        .collect();
    rules.retain(|r| {
        r.minor.is_none()
            || !wildcards
                .iter()
                .any(|w| w.kind == r.kind && w.major == r.major)
    });
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxResources};

    fn kvm() -> HostDevice {
        HostDevice {
            path: "/dev/kvm".into(),
            kind: DeviceKind::Char,
            major: 10,
            minor: 232,
        }
    }

    fn container_with_device(typ: LinuxDeviceType, major: i64, minor: i64) -> ContainerResources {
        let mut c = ContainerResources::new("c1", LinuxResources::default());
        c.devices.push(
            LinuxDeviceBuilder::default()
                .path("/dev/xvda")
                .typ(typ)
                .major(major)
                .minor(minor)
                .build()
                .unwrap(),
        );
        c
    }

    #[test]
    fn basic_devices_are_always_allowed() {
        let rules = allowlist(&[], &[], false).unwrap();
        let text: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm"
            ]
        );
    }

    #[test]
    fn vmm_and_container_devices_are_added() {
        let rules = allowlist(
            &[kvm()],
            &[container_with_device(LinuxDeviceType::B, 8, 16)],
            false,
        )
        .unwrap();
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Char, 10, 232)));
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Block, 8, 16)));
        assert!(!rules.iter().any(|r| r.allows(DeviceKind::Block, 8, 17)));
        // Not in sandbox_cgroup_only mode: no loop devices, no ptmx.
        assert!(!rules.iter().any(|r| r.allows(DeviceKind::Block, 7, 0)));
        assert!(!rules.iter().any(|r| r.allows(DeviceKind::Char, 5, 2)));
    }

    #[test]
    fn sandbox_cgroup_only_adds_ptmx_and_loop_devices() {
        let rules = allowlist(&[], &[], true).unwrap();
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Char, 5, 2)));
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Char, 136, 4)));
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Block, 7, 0)));
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Block, 7, 63)));
        assert!(rules.iter().any(|r| r.allows(DeviceKind::Char, 10, 237)));
        assert!(rules.iter().any(|r| r.to_string() == "b 7:* rwm"));
    }

    #[test]
    fn duplicates_and_rules_covered_by_wildcards_are_dropped() {
        let rules = allowlist(
            &[kvm(), kvm()],
            &[
                container_with_device(LinuxDeviceType::B, 7, 3),
                container_with_device(LinuxDeviceType::C, 1, 3),
            ],
            true,
        )
        .unwrap();
        let mut sorted = rules.clone();
        sorted.dedup();
        assert_eq!(sorted, rules);
        assert_eq!(rules.iter().filter(|r| r.major == 7).count(), 1);
        assert_eq!(
            rules
                .iter()
                .filter(|r| **r == DeviceRule::char(1, 3))
                .count(),
            1
        );
    }

    #[test]
    fn fifo_entries_need_no_rule_and_negative_numbers_are_rejected() {
        let base = allowlist(&[], &[], false).unwrap();
        let with_fifo = allowlist(
            &[],
            &[container_with_device(LinuxDeviceType::P, 0, 0)],
            false,
        )
        .unwrap();
        assert_eq!(base, with_fifo);
        assert!(matches!(
            allowlist(
                &[],
                &[container_with_device(LinuxDeviceType::C, -1, 0)],
                false
            ),
            Err(Error::InvalidDevice { major: -1, .. })
        ));
    }
}
