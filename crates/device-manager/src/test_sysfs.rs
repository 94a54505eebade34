//! A fixture sysfs tree for tests: PCI devices, IOMMU groups, iommufd
//! cdevs, laid out as the kernel does (symlinks and all).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Class codes.
pub const GPU: u32 = 0x030000;
pub const AUDIO: u32 = 0x040300;
pub const BRIDGE: u32 = 0x060400;
pub const NIC: u32 = 0x020000;

/// A fixture sysfs tree, laid out as the kernel does (symlinks and all).
pub(crate) struct FakeSys {
    dir: tempfile::TempDir,
}

impl FakeSys {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Adds PCI device `bdf` in IOMMU group `group`, bound to `driver`.
    pub fn device(&self, bdf: &str, group: u32, driver: Option<&str>, class: u32) -> &Self {
        let root = self.root();
        let real = root.join(format!("devices/pci0000:00/{bdf}"));
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("class"), format!("0x{class:06x}\n")).unwrap();
        let group_dir = root.join(format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&group_dir).unwrap();
        symlink(
            format!("../../../../devices/pci0000:00/{bdf}"),
            group_dir.join(bdf),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            real.join("iommu_group"),
        )
        .unwrap();
        if let Some(driver) = driver {
            fs::create_dir_all(root.join(format!("bus/pci/drivers/{driver}"))).unwrap();
            symlink(
                format!("../../../../bus/pci/drivers/{driver}"),
                real.join("driver"),
            )
            .unwrap();
        }
        let bus = root.join("bus/pci/devices");
        fs::create_dir_all(&bus).unwrap();
        symlink(format!("../../../devices/pci0000:00/{bdf}"), bus.join(bdf)).unwrap();
        self
    }

    /// Adds iommufd cdev `name` for `bdf`.
    pub fn cdev(&self, name: &str, bdf: &str) -> &Self {
        let root = self.root();
        let dir = root.join(format!("devices/pci0000:00/{bdf}/vfio-dev/{name}"));
        fs::create_dir_all(&dir).unwrap();
        // The kernel's link climbs out of vfio-dev/<name> to the PCI device.
        symlink(format!("../../../{bdf}"), dir.join("device")).unwrap();
        let class = root.join("class/vfio-dev");
        fs::create_dir_all(&class).unwrap();
        symlink(
            format!("../../devices/pci0000:00/{bdf}/vfio-dev/{name}"),
            class.join(name),
        )
        .unwrap();
        self
    }
}
