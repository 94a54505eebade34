//! The error type of this crate.

use std::io;
use std::path::PathBuf;

use crate::pci::PciAddress;

/// A request that needs something this host, this device or this crate
/// does not support (the one shape every crate of the SDK uses).
pub use vc_types::Unsupported;

/// Everything the device manager, the EROFS discovery and the VFIO
/// planner can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request needs something that is not supported.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),

    /// A [`DeviceInfo`](crate::DeviceInfo) that cannot describe a device.
    #[error("invalid device {path}: {reason}")]
    InvalidDeviceInfo {
        /// The host path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The host device or image cannot be inspected.
    #[error("inspecting host device {path}")]
    HostDevice {
        /// The host path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The host path is registered already, with a different description.
    #[error("{path} is registered already as device {id} with different settings")]
    RegisteredDifferently {
        /// The host path.
        path: PathBuf,
        /// The existing device's id.
        id: String,
    },

    /// No device with this id is registered.
    #[error("no device {id} is registered")]
    DeviceNotFound {
        /// The id.
        id: String,
    },

    /// The container does not hold the device.
    #[error("container {container_id} has not attached device {id}")]
    NotAttachedBy {
        /// The device id.
        id: String,
        /// The container.
        container_id: vc_types::ContainerId,
    },

    /// The device is attached or in use and cannot be unregistered.
    #[error("device {id} is in use ({users} references) or attached")]
    DeviceInUse {
        /// The device id.
        id: String,
        /// How many references containers hold.
        users: u32,
    },

    /// The hypervisor could not hot-plug the device; whatever part of it
    /// was plugged has been unplugged again.
    #[error("hot-plugging device {id}")]
    Hotplug {
        /// The device id.
        id: String,
        /// The hypervisor's error.
        #[source]
        source: vc_hypervisor::Error,
    },

    /// The hypervisor could not unplug the device; it stays attached and
    /// the container keeps its reference.
    #[error("unplugging device {id}")]
    Unplug {
        /// The device id.
        id: String,
        /// The hypervisor's error.
        #[source]
        source: vc_hypervisor::Error,
    },

    /// The task driving a hot-plug or unplug panicked or was cancelled.
    #[error("the transition of device {id} was interrupted: {reason}")]
    Interrupted {
        /// The device id.
        id: String,
        /// What happened.
        reason: String,
    },

    /// Some devices of a container could not be released.
    #[error("releasing devices of container {container_id}: {} failed", failed.join(", "))]
    Release {
        /// The container.
        container_id: vc_types::ContainerId,
        /// The devices still held.
        failed: Vec<String>,
        /// The first failure.
        #[source]
        source: Box<Error>,
    },

    /// A saved state this version cannot use.
    #[error("saved device manager state: {reason}")]
    InvalidSavedState {
        /// What is wrong.
        reason: String,
    },

    /// A mount table cannot be read or parsed.
    #[error("reading the mount table")]
    MountTable(#[from] vc_mountinfo::Error),

    /// No mount covers the container's rootfs path.
    #[error("rootfs {rootfs} is not on any mount in the mount table")]
    RootfsNotMounted {
        /// The rootfs path.
        rootfs: PathBuf,
    },

    /// The container's rootfs is not an overlay mount.
    #[error("rootfs {rootfs} is a {fs_type} mount (at {mount_point}), not overlay")]
    RootfsNotOverlay {
        /// The rootfs path.
        rootfs: PathBuf,
        /// The type of the mount it is on.
        fs_type: String,
        /// Where that mount is.
        mount_point: PathBuf,
    },

    /// The rootfs is an overlay, but not one the guest can rebuild.
    #[error("rootfs {rootfs}: {reason}")]
    UnsupportedRootfs {
        /// The rootfs path.
        rootfs: PathBuf,
        /// Why.
        reason: String,
    },

    /// A lower dir of the rootfs overlay is not an EROFS `layer.erofs`.
    #[error("lower dir {lowerdir} is not an EROFS layer: {reason}")]
    UnsupportedLayer {
        /// The lower dir.
        lowerdir: PathBuf,
        /// Why.
        reason: String,
    },

    /// A loop device's attributes cannot be read from sysfs.
    #[error("reading loop device {device} ({path})")]
    LoopDevice {
        /// The loop device (`loop3`).
        device: String,
        /// The sysfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A `/dev/vfio` path that is not a VFIO node.
    #[error("{path} is not a VFIO device node: {reason}")]
    InvalidVfioPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A sysfs file VFIO resolution needs is missing or unreadable.
    #[error("reading sysfs {path}")]
    Sysfs {
        /// The file or link.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A member of the IOMMU group is bound to a host driver, so VFIO
    /// refuses the whole group.
    #[error(
        "IOMMU group {group} is not viable: {device} is bound to {driver} (bind it to vfio-pci or unbind it)"
    )]
    VfioGroupNotViable {
        /// The group.
        group: u32,
        /// The blocking device.
        device: PciAddress,
        /// Its driver.
        driver: String,
    },

    /// No function of the node is bound to `vfio-pci`.
    #[error("{path}: no device is bound to vfio-pci, nothing to pass through")]
    VfioNothingToAttach {
        /// The VFIO node.
        path: PathBuf,
    },

    /// One IOMMU group asked for both cold- and hot-plugged.
    #[error("IOMMU group {group} is asked for both cold- and hot-plugged")]
    VfioMixedPlugMode {
        /// The group.
        group: u32,
    },

    /// One IOMMU group asked for both as a legacy group and through
    /// iommufd device nodes.
    #[error("IOMMU group {group} is asked for both as /dev/vfio/{group} and as iommufd devices")]
    VfioMixedInterfaces {
        /// The group.
        group: u32,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
