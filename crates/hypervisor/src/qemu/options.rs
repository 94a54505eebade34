//! What only the QEMU backend understands: [`QemuOptions`] and their
//! validation.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::qemu::slots;

/// Where Debian's `qemu-system-x86` installs QEMU.
pub const DEFAULT_QEMU_BINARY: &str = "/usr/bin/qemu-system-x86_64";
/// The minimal firmware QEMU ships (qboot): much faster than SeaBIOS for a
/// direct kernel boot, and it runs no option ROMs.
pub const QBOOT_FIRMWARE: &str = "/usr/share/qemu/qboot.rom";

/// The virtual machine model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineType {
    /// `q35` (PCIe, ACPI). Hot-plug goes through PCIe root ports with ACPI
    /// hot-plug, so unplug is quick; HPET and the ACPI PM timer give the
    /// guest a reliable clock under TCG.
    #[default]
    Q35,
}

impl MachineType {
    /// The QEMU machine name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Q35 => "q35",
        }
    }
}

/// The firmware QEMU runs before jumping to the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// qboot ([`QBOOT_FIRMWARE`]) when installed, else QEMU's default.
    #[default]
    Auto,
    /// QEMU's default (SeaBIOS).
    QemuDefault,
    /// This file (`-bios`).
    Path(PathBuf),
}

/// The QEMU backend's own options, beside the backend-neutral
/// [`HypervisorConfig`](crate::HypervisorConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuOptions {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// Machine model.
    pub machine: MachineType,
    /// Firmware.
    pub firmware: Firmware,
    /// PCIe root ports reserved for hot-plug (one device each).
    pub hotplug_ports: u32,
}

impl Default for QemuOptions {
    /// Debian's QEMU ([`DEFAULT_QEMU_BINARY`]), q35, automatic firmware,
    /// 8 hot-plug ports.
    fn default() -> Self {
        Self {
            binary: PathBuf::from(DEFAULT_QEMU_BINARY),
            machine: MachineType::Q35,
            firmware: Firmware::Auto,
            hotplug_ports: 8,
        }
    }
}

/// QEMU options that cannot start a VM. Returned by
/// [`QemuOptions::validate`] before anything is created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QemuOptionsError {
    /// The QEMU binary is missing or not executable.
    #[error("QEMU binary {path} not found or not executable (install qemu-system-x86)")]
    BinaryNotFound {
        /// The configured binary.
        path: PathBuf,
    },
    /// The firmware file does not exist.
    #[error("firmware {path} is not a file")]
    FirmwareNotFound {
        /// The configured firmware.
        path: PathBuf,
    },
    /// More hot-plug ports than the root bus has slots for.
    #[error("{requested} hot-plug ports exceed the {limit} PCI slots available")]
    TooManyHotplugPorts {
        /// How many were configured.
        requested: u32,
        /// The limit.
        limit: usize,
    },
}

impl QemuOptions {
    /// Checks that the binary and firmware exist and the ports fit.
    pub fn validate(&self) -> Result<(), QemuOptionsError> {
        if !is_executable(&self.binary) {
            return Err(QemuOptionsError::BinaryNotFound {
                path: self.binary.clone(),
            });
        }
        if let Firmware::Path(path) = &self.firmware
            && !path.is_file()
        {
            return Err(QemuOptionsError::FirmwareNotFound { path: path.clone() });
        }
        if self.hotplug_ports as usize > slots::HOTPLUG_PORT_SLOTS {
            return Err(QemuOptionsError::TooManyHotplugPorts {
                requested: self.hotplug_ports,
                limit: slots::HOTPLUG_PORT_SLOTS,
            });
        }
        Ok(())
    }

    /// The firmware file QEMU gets (`-bios`), `None` for QEMU's default.
    pub fn firmware_path(&self) -> Option<PathBuf> {
        match &self.firmware {
            Firmware::Auto => Some(PathBuf::from(QBOOT_FIRMWARE)).filter(|p| p.is_file()),
            Firmware::QemuDefault => None,
            Firmware::Path(path) => Some(path.clone()),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> QemuOptions {
        QemuOptions {
            // Any executable stands in for QEMU: validation only checks it exists.
            binary: PathBuf::from("/bin/sh"),
            ..QemuOptions::default()
        }
    }

    #[test]
    fn defaults_are_debians_qemu_on_q35() {
        let d = QemuOptions::default();
        assert_eq!(d.binary, Path::new(DEFAULT_QEMU_BINARY));
        assert_eq!(d.machine, MachineType::Q35);
        assert_eq!(d.firmware, Firmware::Auto);
        assert_eq!(d.hotplug_ports, 8);
        options().validate().unwrap();
    }

    #[test]
    fn missing_files_and_too_many_ports_are_named() {
        let mut o = options();
        o.binary = "/nonexistent/qemu-system-x86_64".into();
        assert_eq!(
            o.validate(),
            Err(QemuOptionsError::BinaryNotFound {
                path: "/nonexistent/qemu-system-x86_64".into()
            })
        );
        let mut o = options();
        o.firmware = Firmware::Path("/nonexistent/bios".into());
        assert!(matches!(
            o.validate(),
            Err(QemuOptionsError::FirmwareNotFound { .. })
        ));
        assert_eq!(o.firmware_path(), Some(PathBuf::from("/nonexistent/bios")));
        let mut o = options();
        o.hotplug_ports = 100;
        assert!(matches!(
            o.validate(),
            Err(QemuOptionsError::TooManyHotplugPorts { .. })
        ));
        o.firmware = Firmware::QemuDefault;
        assert_eq!(o.firmware_path(), None);
    }

    #[test]
    fn options_round_trip_through_json() {
        let o = options();
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<QemuOptions>(&json).unwrap(), o);
    }
}
