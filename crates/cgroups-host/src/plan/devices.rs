//! The sandbox cgroup's device rules: the allowlist the planner makes, and
//! the rule language both cgroup versions enforce (the v1 `devices`
//! controller's files, the v2 eBPF program of [`crate::device_filter`]).

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
    /// Every device, character or block (`a`).
    All,
}

impl DeviceKind {
    fn letter(self) -> char {
        match self {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
            DeviceKind::All => 'a',
        }
    }
}

/// A set of device accesses: read (`r`), write (`w`), mknod (`m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceAccess(u8);

impl DeviceAccess {
    /// Reading (`open` for reading).
    pub const READ: DeviceAccess = DeviceAccess(1);
    /// Writing (`open` for writing).
    pub const WRITE: DeviceAccess = DeviceAccess(2);
    /// Creating the node (`mknod`).
    pub const MKNOD: DeviceAccess = DeviceAccess(4);
    /// All three: `rwm`.
    pub const RWM: DeviceAccess = DeviceAccess(7);

    /// Both sets together.
    pub const fn union(self, other: DeviceAccess) -> DeviceAccess {
        DeviceAccess(self.0 | other.0)
    }

    /// Whether every access of `other` is in this set.
    pub const fn contains(self, other: DeviceAccess) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the two sets have an access in common.
    pub const fn intersects(self, other: DeviceAccess) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for DeviceAccess {
    /// The cgroup syntax: the letters of `rwm` in the set, in that order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in [
            (DeviceAccess::READ, 'r'),
            (DeviceAccess::WRITE, 'w'),
            (DeviceAccess::MKNOD, 'm'),
        ] {
            if self.contains(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for DeviceAccess {
    type Err = String;

    /// Parses `rwm`, `r`, `mw`, ...: each letter at most once, not empty.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut access = DeviceAccess(0);
        for c in s.chars() {
            let bit = match c {
                'r' => DeviceAccess::READ,
                'w' => DeviceAccess::WRITE,
                'm' => DeviceAccess::MKNOD,
                _ => return Err(format!("device access {s:?}: {c:?} is not one of r, w, m")),
            };
            if access.contains(bit) {
                return Err(format!("device access {s:?}: {c:?} given twice"));
            }
            access = access.union(bit);
        }
        if access.is_empty() {
            return Err("device access is empty".to_owned());
        }
        Ok(access)
    }
}

impl TryFrom<String> for DeviceAccess {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceAccess> for String {
    fn from(a: DeviceAccess) -> String {
        a.to_string()
    }
}

fn allow_by_default() -> bool {
    true
}

fn rwm() -> DeviceAccess {
    DeviceAccess::RWM
}

/// One device rule, as in the v1 `devices.allow`/`devices.deny` files and
/// the OCI `linux.resources.devices` list: a kind (`c`, `b` or `a`), a major
/// and a minor (each `*` for every number), the accesses it covers, and
/// whether it allows or denies them.
///
/// A list of rules is read as the cgroup v2 device program enforces it
/// ([`permits`]): everything is denied unless a rule matches, and the
/// *last* rule that matches an access decides it. The planner's
/// [`allowlist`] holds only `rwm` allow rules, for which order does not
/// matter and cgroup v1 enforces exactly the same set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Character, block, or both.
    pub kind: DeviceKind,
    /// Major number; `None` is every major (`*`).
    pub major: Option<u32>,
    /// Minor number; `None` is every minor (`*`).
    pub minor: Option<u32>,
    /// The accesses the rule covers (`rwm` when absent from a record).
    #[serde(default = "rwm")]
    pub access: DeviceAccess,
    /// Allow (`true`) or deny the accesses (`true` when absent from a
    /// record).
    #[serde(default = "allow_by_default")]
    pub allow: bool,
}

impl DeviceRule {
    /// Allows `rwm` on one character device.
    pub const fn char(major: u32, minor: u32) -> Self {
        DeviceRule::allow_rwm(DeviceKind::Char, major, Some(minor))
    }

    /// Allows `rwm` on one device, or every minor of a major (`minor`
    /// `None`).
    pub const fn allow_rwm(kind: DeviceKind, major: u32, minor: Option<u32>) -> Self {
        DeviceRule {
            kind,
            major: Some(major),
            minor,
            access: DeviceAccess::RWM,
            allow: true,
        }
    }

    /// Whether this rule decides a request for `access` (one or more of
    /// `rwm` at once, as an `open` for reading and writing asks) to the
    /// device `kind major:minor`: the device is covered, and an allow
    /// rule covers every requested access while a deny rule covers at
    /// least one of them (so a request is never allowed for the sake of an
    /// access that comes with a denied one).
    pub fn matches(&self, kind: DeviceKind, major: u32, minor: u32, access: DeviceAccess) -> bool {
        (self.kind == DeviceKind::All || self.kind == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
            && if self.allow {
                self.access.contains(access)
            } else {
                self.access.intersects(access)
            }
    }

    /// Whether this is an allow rule covering every access (`rwm`) to the
    /// device `kind major:minor`.
    pub fn allows(&self, kind: DeviceKind, major: u32, minor: u32) -> bool {
        self.allow && self.matches(kind, major, minor, DeviceAccess::RWM)
    }

    /// Whether the rule matches every access to every device.
    pub fn matches_everything(&self) -> bool {
        self.kind == DeviceKind::All
            && self.major.is_none()
            && self.minor.is_none()
            && self.access == DeviceAccess::RWM
    }
}

/// Whether `rules` let a process make `access` to the device
/// `kind major:minor` (`kind` is [`DeviceKind::Char`] or
/// [`DeviceKind::Block`]): the last matching rule decides; no match is a
/// denial. This is what the cgroup v2 device program computes.
pub fn permits(
    rules: &[DeviceRule],
    kind: DeviceKind,
    major: u32,
    minor: u32,
    access: DeviceAccess,
) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| r.matches(kind, major, minor, access))
        .is_some_and(|r| r.allow)
}

impl fmt::Display for DeviceRule {
    /// The `devices.allow` / `devices.deny` / `devices.list` syntax, e.g.
    /// `c 1:3 rwm` or `b 7:* r` (whether it allows or denies is not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind.letter(),
            number(self.major),
            number(self.minor),
            self.access
        )
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
        DeviceRule::allow_rwm(DeviceKind::Char, 136, None),
    ),
    (
        "/dev/loop*",
        DeviceRule::allow_rwm(DeviceKind::Block, 7, None),
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
        DeviceRule::allow_rwm(self.kind, self.major, Some(self.minor))
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
            rules.push(DeviceRule::allow_rwm(kind, major, Some(minor)));
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
    fn access_sets_parse_and_print_in_rwm_order() {
        let mw: DeviceAccess = "mw".parse().unwrap();
        assert_eq!(mw, DeviceAccess::MKNOD.union(DeviceAccess::WRITE));
        assert_eq!(mw.to_string(), "wm");
        assert_eq!(DeviceAccess::RWM.to_string(), "rwm");
        assert!(DeviceAccess::RWM.contains(mw));
        assert!(!mw.contains(DeviceAccess::READ));
        for bad in ["", "rr", "rx", "RWM"] {
            assert!(bad.parse::<DeviceAccess>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_print_in_the_cgroup_syntax() {
        let rule = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess::READ,
            allow: false,
        };
        assert_eq!(rule.to_string(), "a *:* r");
        assert_eq!(
            DeviceRule::allow_rwm(DeviceKind::Block, 7, None).to_string(),
            "b 7:* rwm"
        );
        assert!(!rule.matches_everything());
        assert!(
            DeviceRule {
                access: DeviceAccess::RWM,
                ..rule
            }
            .matches_everything()
        );
    }

    #[test]
    fn the_last_matching_rule_decides_and_nothing_matching_is_denied() {
        let (c, b) = (DeviceKind::Char, DeviceKind::Block);
        let (r, w, m) = (DeviceAccess::READ, DeviceAccess::WRITE, DeviceAccess::MKNOD);
        let rules = [
            DeviceRule::allow_rwm(c, 1, None),
            DeviceRule {
                kind: c,
                major: Some(1),
                minor: Some(5),
                access: w.union(m),
                allow: false,
            },
            DeviceRule {
                kind: DeviceKind::All,
                major: None,
                minor: Some(9),
                access: r,
                allow: true,
            },
        ];
        assert!(permits(&rules, c, 1, 3, DeviceAccess::RWM));
        assert!(permits(&rules, c, 1, 5, r));
        assert!(!permits(&rules, c, 1, 5, w));
        // A denied write is not let through with a read.
        assert!(!permits(&rules, c, 1, 5, r.union(w)));
        // Two allow rules do not add up to one request for both accesses.
        let split = [
            DeviceRule {
                access: r,
                ..DeviceRule::char(1, 3)
            },
            DeviceRule {
                access: w,
                ..DeviceRule::char(1, 3)
            },
        ];
        assert!(permits(&split, c, 1, 3, w));
        assert!(!permits(&split, c, 1, 3, r.union(w)));
        assert!(!permits(&rules, c, 1, 5, m));
        assert!(permits(&rules, b, 8, 9, r));
        assert!(!permits(&rules, b, 8, 9, w));
        assert!(!permits(&rules, b, 1, 3, r));
        assert!(!permits(&[], c, 1, 3, r));
    }

    #[test]
    fn records_without_access_or_verdict_read_as_rwm_allow_rules() {
        let old: DeviceRule =
            serde_json::from_str(r#"{"kind":"Block","major":7,"minor":null}"#).unwrap();
        assert_eq!(old, DeviceRule::allow_rwm(DeviceKind::Block, 7, None));
        let rule = DeviceRule {
            access: DeviceAccess::READ.union(DeviceAccess::MKNOD),
            allow: false,
            ..DeviceRule::char(1, 3)
        };
        let json = serde_json::to_string(&rule).unwrap();
        assert!(json.contains(r#""access":"rm""#), "{json}");
        assert_eq!(serde_json::from_str::<DeviceRule>(&json).unwrap(), rule);
        assert!(serde_json::from_str::<DeviceRule>(&json.replace("rm", "rx")).is_err());
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
        assert_eq!(rules.iter().filter(|r| r.major == Some(7)).count(), 1);
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
