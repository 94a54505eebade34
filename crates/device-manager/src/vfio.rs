//! VFIO devices: which host PCI functions a container's `/dev/vfio/*`
//! nodes stand for, their IOMMU-group siblings, and the order to attach
//! them in.
//!
//! Resolution reads sysfs under a root the caller gives (`/sys` on a
//! host, a fixture tree in tests); [`order`] is pure. The order is:
//!
//! 1. the VFIO control device `/dev/vfio/vfio`;
//! 2. then the IOMMU groups, cold-plugged before hot-plugged, and among
//!    equals by their lowest PCI address (numerically), so the order is
//!    the same on every run whatever order the OCI spec listed them in;
//! 3. the nodes of one group stay together (a group is the unit VFIO
//!    isolates: all its devices go to one VM or none); iommufd device
//!    nodes (`/dev/vfio/devices/vfioN`) of one group are sorted by PCI
//!    address.
//!
//! Each passed-through function carries its siblings: the other devices
//! of its IOMMU group (bridges and unbound functions included), which the
//! guest needs to rebuild the topology.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Unsupported};
use crate::pci::PciAddress;

/// The VFIO container (control) device.
pub const VFIO_CONTROL_PATH: &str = "/dev/vfio/vfio";
/// The driver a device must be bound to for passthrough.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// What a `/dev/vfio` node is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VfioNode {
    /// `/dev/vfio/vfio`: the legacy container device; nothing to pass
    /// through, but the container needs it to open its groups.
    Control,
    /// `/dev/vfio/<N>`: legacy group `N`, all of its devices.
    Group {
        /// The IOMMU group number.
        group: u32,
    },
    /// `/dev/vfio/devices/vfio<N>`: an iommufd character device, one PCI
    /// function.
    Device {
        /// The cdev name, `vfio<N>`.
        name: String,
    },
}

impl VfioNode {
    /// Classifies a host path (pure).
    pub fn from_path(path: &Path) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidVfioPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let text = path.to_str().ok_or_else(|| invalid("not valid UTF-8"))?;
        if text == VFIO_CONTROL_PATH {
            return Ok(Self::Control);
        }
        if let Some(name) = text.strip_prefix("/dev/vfio/devices/") {
            let digits = name.strip_prefix("vfio").unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    "iommufd device nodes are /dev/vfio/devices/vfio<N>",
                ));
            }
            return Ok(Self::Device {
                name: name.to_owned(),
            });
        }
        if let Some(group) = text.strip_prefix("/dev/vfio/") {
            if group.starts_with("noiommu-") {
                return Err(Unsupported::new(
                    format!("VFIO no-IOMMU group {text}"),
                    "no-IOMMU mode gives no DMA isolation and cannot be passed to a VM",
                )
                .into());
            }
            if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
                let group = group
                    .parse()
                    .map_err(|_| invalid("group number out of range"))?;
                return Ok(Self::Group { group });
            }
        }
        Err(invalid(
            "expected /dev/vfio/vfio, /dev/vfio/<group> or /dev/vfio/devices/vfio<N>",
        ))
    }
}

/// A VFIO node a container asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioRequest {
    /// The host node (`/dev/vfio/12`, `/dev/vfio/devices/vfio0`, `/dev/vfio/vfio`).
    pub host_path: PathBuf,
    /// Present at VM start (cold-plugged) rather than hot-plugged.
    pub coldplug: bool,
}

impl VfioRequest {
    /// A hot-plugged node.
    pub fn hotplug(host_path: impl Into<PathBuf>) -> Self {
        Self {
            host_path: host_path.into(),
            coldplug: false,
        }
    }

    /// A cold-plugged node.
    pub fn coldplug(host_path: impl Into<PathBuf>) -> Self {
        Self {
            host_path: host_path.into(),
            coldplug: true,
        }
    }
}

/// A PCI function passed through, with the rest of its IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioFunction {
    /// Its host address.
    pub address: PciAddress,
    /// The other devices of its IOMMU group, sorted.
    pub siblings: Vec<PciAddress>,
}

/// One VFIO node resolved against sysfs: what attaching it passes through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioAttachment {
    /// The host node.
    pub host_path: PathBuf,
    /// What kind of node it is.
    pub node: VfioNode,
    /// Cold-plugged (at VM start) or hot-plugged.
    pub coldplug: bool,
    /// Its IOMMU group (`None` for the control device).
    pub iommu_group: Option<u32>,
    /// The functions to pass through (bound to `vfio-pci`), sorted by
    /// address; empty for the control device.
    pub functions: Vec<VfioFunction>,
}

impl VfioAttachment {
    /// The lowest PCI address among its functions (the sort key of its group).
    pub fn first_address(&self) -> Option<PciAddress> {
        self.functions.iter().map(|f| f.address).min()
    }
}

/// A PCI device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SysPciDevice {
    address: PciAddress,
    driver: Option<String>,
    /// The 24-bit class code (`0x060400` for a PCI-to-PCI bridge).
    class: Option<u32>,
}

impl SysPciDevice {
    fn is_bridge(&self) -> bool {
        self.class.is_some_and(|c| c >> 8 == 0x0604)
    }

    /// VFIO accepts a group only if every member is bound to a VFIO
    /// driver, to pci-stub, to no driver at all, or is a bridge.
    fn keeps_group_viable(&self) -> bool {
        match self.driver.as_deref() {
            None | Some(VFIO_PCI_DRIVER) | Some("pci-stub") => true,
            Some(_) => self.is_bridge(),
        }
    }
}

/// The sysfs files VFIO resolution reads, under a root (`/sys`).
#[derive(Debug, Clone)]
pub struct VfioSysfs {
    root: PathBuf,
}

impl VfioSysfs {
    /// Sysfs mounted at `root` (`/sys` on a host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn sysfs_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Sysfs {
            path: path.to_owned(),
            source,
        }
    }

    /// The last component of a symlink's target (`../../kernel/iommu_groups/12` -> `12`).
    fn link_name(&self, link: &Path) -> Result<String> {
        let target = fs::read_link(link).map_err(Self::sysfs_err(link))?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Sysfs {
                path: link.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("link target {} has no usable name", target.display()),
                ),
            })
    }

    /// The members of IOMMU group `group`, sorted.
    fn group_members(&self, group: u32) -> Result<Vec<PciAddress>> {
        let dir = self
            .root
            .join(format!("kernel/iommu_groups/{group}/devices"));
        let mut members = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Self::sysfs_err(&dir))? {
            let entry = entry.map_err(Self::sysfs_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let address = name.parse().map_err(|_| {
                Error::from(Unsupported::new(
                    format!("IOMMU group {group} member {name}"),
                    "only PCI devices can be passed through",
                ))
            })?;
            members.push(address);
        }
        members.sort();
        Ok(members)
    }

    fn pci_dir(&self, address: PciAddress) -> PathBuf {
        self.root.join(format!("bus/pci/devices/{address}"))
    }

    /// The IOMMU group of a PCI device.
    fn device_group(&self, address: PciAddress) -> Result<u32> {
        let link = self.pci_dir(address).join("iommu_group");
        let name = self.link_name(&link)?;
        name.parse().map_err(|_| Error::Sysfs {
            path: link,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("iommu_group points at {name:?}, not a group number"),
            ),
        })
    }

    fn device(&self, address: PciAddress) -> Result<SysPciDevice> {
        let dir = self.pci_dir(address);
        let driver_link = dir.join("driver");
        let driver = match fs::symlink_metadata(&driver_link) {
            Ok(_) => Some(self.link_name(&driver_link)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::sysfs_err(&driver_link)(e)),
        };
        let class_file = dir.join("class");
        let class = match fs::read_to_string(&class_file) {
            Ok(text) => {
                let text = text.trim();
                Some(
                    u32::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| {
                        Error::Sysfs {
                            path: class_file.clone(),
                            source: std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("class {text:?} is not hex"),
                            ),
                        }
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::sysfs_err(&class_file)(e)),
        };
        Ok(SysPciDevice {
            address,
            driver,
            class,
        })
    }

    /// The PCI function behind an iommufd cdev (`/sys/class/vfio-dev/vfioN/device`).
    fn cdev_function(&self, name: &str) -> Result<PciAddress> {
        let link = self.root.join(format!("class/vfio-dev/{name}/device"));
        let target = self.link_name(&link)?;
        target.parse().map_err(|_| {
            Error::from(Unsupported::new(
                format!("VFIO device {name} ({target})"),
                "only PCI devices can be passed through",
            ))
        })
    }

    /// Resolves one request: its group, the functions it passes through
    /// and their siblings. Checks that the group is viable (no member
    /// bound to a host driver) and that there is something to pass.
    pub fn resolve(&self, request: &VfioRequest) -> Result<VfioAttachment> {
        let node = VfioNode::from_path(&request.host_path)?;
        let (group, wanted) = match &node {
            VfioNode::Control => {
                return Ok(VfioAttachment {
                    host_path: request.host_path.clone(),
                    node,
                    coldplug: request.coldplug,
                    iommu_group: None,
                    functions: Vec::new(),
                });
            }
            VfioNode::Group { group } => (*group, None),
            VfioNode::Device { name } => {
                let address = self.cdev_function(name)?;
                (self.device_group(address)?, Some(address))
            }
        };
        let members = self.group_members(group)?;
        let devices = members
            .iter()
            .map(|a| self.device(*a))
            .collect::<Result<Vec<_>>>()?;
        if let Some(blocker) = devices.iter().find(|d| !d.keeps_group_viable()) {
            return Err(Error::VfioGroupNotViable {
                group,
                device: blocker.address,
                driver: blocker.driver.clone().unwrap_or_default(),
            });
        }
        let passed: Vec<&SysPciDevice> = match wanted {
            Some(address) => {
                let device = devices
                    .iter()
                    .find(|d| d.address == address)
                    .ok_or_else(|| Error::Sysfs {
                        path: self
                            .root
                            .join(format!("kernel/iommu_groups/{group}/devices")),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{address} is not listed in its own IOMMU group {group}"),
                        ),
                    })?;
                if device.driver.as_deref() != Some(VFIO_PCI_DRIVER) {
                    return Err(Error::VfioNothingToAttach {
                        path: request.host_path.clone(),
                    });
                }
                vec![device]
            }
            None => devices
                .iter()
                .filter(|d| d.driver.as_deref() == Some(VFIO_PCI_DRIVER))
                .collect(),
        };
        if passed.is_empty() {
            return Err(Error::VfioNothingToAttach {
                path: request.host_path.clone(),
            });
        }
        let functions = passed
            .iter()
            .map(|d| VfioFunction {
                address: d.address,
                siblings: members
                    .iter()
                    .copied()
                    .filter(|m| *m != d.address)
                    .collect(),
            })
            .collect();
        Ok(VfioAttachment {
            host_path: request.host_path.clone(),
            node,
            coldplug: request.coldplug,
            iommu_group: Some(group),
            functions,
        })
    }
}

/// Resolves `requests` against the sysfs at `sys_root` and puts them in
/// attach order (see the module docs).
pub fn plan(requests: &[VfioRequest], sys_root: &Path) -> Result<Vec<VfioAttachment>> {
    let sysfs = VfioSysfs::new(sys_root);
    let resolved = requests
        .iter()
        .map(|r| sysfs.resolve(r))
        .collect::<Result<Vec<_>>>()?;
    order(resolved)
}

/// Puts resolved attachments in attach order (pure; see the module docs).
///
/// The same node asked for twice is kept once. Errors: one IOMMU group
/// both cold- and hot-plugged ([`Error::VfioMixedPlugMode`]), or opened
/// both as a legacy group and through iommufd device nodes
/// ([`Error::VfioMixedInterfaces`]).
pub fn order(attachments: Vec<VfioAttachment>) -> Result<Vec<VfioAttachment>> {
    let mut control: Option<VfioAttachment> = None;
    // Group -> its nodes; a BTreeMap only for determinism, sorted below.
    let mut groups: BTreeMap<u32, Vec<VfioAttachment>> = BTreeMap::new();
    for a in attachments {
        match a.iommu_group {
            None => {
                control.get_or_insert(a);
            }
            Some(group) => {
                let nodes = groups.entry(group).or_default();
                if let Some(same) = nodes.iter().find(|n| n.host_path == a.host_path) {
                    if same.coldplug != a.coldplug {
                        return Err(Error::VfioMixedPlugMode { group });
                    }
                    continue;
                }
                nodes.push(a);
            }
        }
    }
    let mut units = Vec::with_capacity(groups.len());
    for (group, mut nodes) in groups {
        let coldplug = nodes[0].coldplug;
        if nodes.iter().any(|n| n.coldplug != coldplug) {
            return Err(Error::VfioMixedPlugMode { group });
        }
        let legacy = nodes
            .iter()
            .any(|n| matches!(n.node, VfioNode::Group { .. }));
        if legacy && nodes.len() > 1 {
            return Err(Error::VfioMixedInterfaces { group });
        }
        nodes.sort_by_key(VfioAttachment::first_address);
        let key = (!coldplug, nodes[0].first_address());
        units.push((key, nodes));
    }
    units.sort_by_key(|unit| unit.0);
    Ok(control
        .into_iter()
        .chain(units.into_iter().flat_map(|(_, nodes)| nodes))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_sysfs::FakeSys;

    use crate::test_sysfs::{AUDIO, BRIDGE, GPU, NIC};

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    fn paths(plan: &[VfioAttachment]) -> Vec<&str> {
        plan.iter().map(|a| a.host_path.to_str().unwrap()).collect()
    }

    #[test]
    fn classifies_vfio_nodes() {
        assert_eq!(
            VfioNode::from_path(Path::new("/dev/vfio/vfio")).unwrap(),
            VfioNode::Control
        );
        assert_eq!(
            VfioNode::from_path(Path::new("/dev/vfio/12")).unwrap(),
            VfioNode::Group { group: 12 }
        );
        assert_eq!(
            VfioNode::from_path(Path::new("/dev/vfio/devices/vfio3")).unwrap(),
            VfioNode::Device {
                name: "vfio3".into()
            }
        );
        assert!(matches!(
            VfioNode::from_path(Path::new("/dev/vfio/noiommu-0")),
            Err(Error::Unsupported(_))
        ));
        for bad in [
            "/dev/vfio/",
            "/dev/vfio/x1",
            "/dev/vfio/devices/vfio",
            "/dev/vfio/devices/iommu",
            "/dev/sda",
            "/dev/vfio/99999999999",
        ] {
            assert!(
                matches!(
                    VfioNode::from_path(Path::new(bad)),
                    Err(Error::InvalidVfioPath { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn group_members_and_siblings_come_from_sysfs() {
        let sys = FakeSys::new();
        // A GPU with its audio function behind a bridge, all in group 7.
        sys.device("0000:3b:00.1", 7, Some("vfio-pci"), AUDIO)
            .device("0000:3b:00.0", 7, Some("vfio-pci"), GPU)
            .device("0000:3a:00.0", 7, Some("pcieport"), BRIDGE);
        let a = VfioSysfs::new(sys.root())
            .resolve(&VfioRequest::hotplug("/dev/vfio/7"))
            .unwrap();
        assert_eq!(a.iommu_group, Some(7));
        assert_eq!(a.node, VfioNode::Group { group: 7 });
        let passed: Vec<_> = a.functions.iter().map(|f| f.address).collect();
        assert_eq!(passed, [addr("0000:3b:00.0"), addr("0000:3b:00.1")]);
        assert_eq!(
            a.functions[0].siblings,
            [addr("0000:3a:00.0"), addr("0000:3b:00.1")]
        );
        assert_eq!(
            a.functions[1].siblings,
            [addr("0000:3a:00.0"), addr("0000:3b:00.0")]
        );
    }

    #[test]
    fn iommufd_devices_find_their_group_through_the_pci_device() {
        let sys = FakeSys::new();
        sys.device("0000:5e:00.0", 3, Some("vfio-pci"), NIC)
            .device("0000:5e:00.1", 3, Some("vfio-pci"), NIC)
            .cdev("vfio0", "0000:5e:00.1");
        let a = VfioSysfs::new(sys.root())
            .resolve(&VfioRequest::coldplug("/dev/vfio/devices/vfio0"))
            .unwrap();
        assert_eq!(a.iommu_group, Some(3));
        assert_eq!(a.functions.len(), 1);
        assert_eq!(a.functions[0].address, addr("0000:5e:00.1"));
        assert_eq!(a.functions[0].siblings, [addr("0000:5e:00.0")]);
    }

    #[test]
    fn a_group_with_a_host_driver_is_refused() {
        let sys = FakeSys::new();
        sys.device("0000:01:00.0", 2, Some("vfio-pci"), NIC).device(
            "0000:01:00.1",
            2,
            Some("ixgbe"),
            NIC,
        );
        let err = VfioSysfs::new(sys.root())
            .resolve(&VfioRequest::hotplug("/dev/vfio/2"))
            .unwrap_err();
        match err {
            Error::VfioGroupNotViable {
                group,
                device,
                driver,
            } => {
                assert_eq!(group, 2);
                assert_eq!(device, addr("0000:01:00.1"));
                assert_eq!(driver, "ixgbe");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_with_nothing_bound_to_vfio_pci_is_refused() {
        let sys = FakeSys::new();
        sys.device("0000:01:00.0", 2, None, NIC);
        assert!(matches!(
            VfioSysfs::new(sys.root()).resolve(&VfioRequest::hotplug("/dev/vfio/2")),
            Err(Error::VfioNothingToAttach { .. })
        ));
        // A missing group is a sysfs error naming the path.
        match VfioSysfs::new(sys.root()).resolve(&VfioRequest::hotplug("/dev/vfio/9")) {
            Err(Error::Sysfs { path, .. }) => {
                assert!(path.ends_with("kernel/iommu_groups/9/devices"), "{path:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn fixture_for_ordering() -> FakeSys {
        let sys = FakeSys::new();
        sys.device("0000:af:00.0", 40, Some("vfio-pci"), GPU)
            .device("0000:af:00.1", 40, Some("vfio-pci"), AUDIO)
            .device("0000:3b:00.0", 12, Some("vfio-pci"), GPU)
            .device("0000:0a:00.0", 5, Some("vfio-pci"), NIC)
            .device("0000:10:00.0", 6, Some("vfio-pci"), NIC)
            .device("0000:10:00.1", 6, Some("vfio-pci"), NIC)
            .cdev("vfio1", "0000:10:00.1")
            .cdev("vfio0", "0000:10:00.0");
        sys
    }

    #[test]
    fn control_first_then_cold_then_hot_each_by_pci_address() {
        let sys = fixture_for_ordering();
        let requests = [
            VfioRequest::hotplug("/dev/vfio/40"),
            VfioRequest::hotplug("/dev/vfio/devices/vfio1"),
            VfioRequest::coldplug("/dev/vfio/12"),
            VfioRequest::hotplug("/dev/vfio/5"),
            VfioRequest::hotplug("/dev/vfio/vfio"),
            VfioRequest::hotplug("/dev/vfio/devices/vfio0"),
        ];
        let plan = plan(&requests, sys.root()).unwrap();
        assert_eq!(
            paths(&plan),
            [
                "/dev/vfio/vfio",
                // Cold-plugged before hot-plugged, even with a higher address.
                "/dev/vfio/12",
                // Hot: 0000:0a < 0000:10 (group 6, both cdevs together) < 0000:af.
                "/dev/vfio/5",
                "/dev/vfio/devices/vfio0",
                "/dev/vfio/devices/vfio1",
                "/dev/vfio/40",
            ]
        );
        // The order does not depend on the order asked in.
        let mut reversed = requests.to_vec();
        reversed.reverse();
        assert_eq!(super::plan(&reversed, sys.root()).unwrap(), plan);
    }

    #[test]
    fn duplicates_collapse_and_conflicts_are_typed_errors() {
        let sys = fixture_for_ordering();
        let plan = plan(
            &[
                VfioRequest::hotplug("/dev/vfio/5"),
                VfioRequest::hotplug("/dev/vfio/5"),
                VfioRequest::hotplug("/dev/vfio/vfio"),
                VfioRequest::coldplug("/dev/vfio/vfio"),
            ],
            sys.root(),
        )
        .unwrap();
        assert_eq!(paths(&plan), ["/dev/vfio/vfio", "/dev/vfio/5"]);
        assert!(matches!(
            super::plan(
                &[
                    VfioRequest::hotplug("/dev/vfio/5"),
                    VfioRequest::coldplug("/dev/vfio/5")
                ],
                sys.root()
            ),
            Err(Error::VfioMixedPlugMode { group: 5 })
        ));
        assert!(matches!(
            super::plan(
                &[
                    VfioRequest::coldplug("/dev/vfio/devices/vfio0"),
                    VfioRequest::hotplug("/dev/vfio/devices/vfio1")
                ],
                sys.root()
            ),
            Err(Error::VfioMixedPlugMode { group: 6 })
        ));
        assert!(matches!(
            super::plan(
                &[
                    VfioRequest::hotplug("/dev/vfio/6"),
                    VfioRequest::hotplug("/dev/vfio/devices/vfio1")
                ],
                sys.root()
            ),
            Err(Error::VfioMixedInterfaces { group: 6 })
        ));
    }
}
