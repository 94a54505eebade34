//! The device manager of virtcontainers-rs: the devices a sandbox's
//! containers use, attached to its VM once and shared.
//!
//! # Pieces
//!
//! - [`DeviceManager`] keeps a sandbox's devices over the hypervisor's
//!   [`DeviceHotplug`](vc_hypervisor::DeviceHotplug), which is the seam
//!   its tests fake (`MockHypervisor`). A
//!   device is registered from a [`DeviceInfo`] (host path, [`DeviceType`]
//!   block / VFIO / char, read-only, [`DriverOptions`]), attached by the
//!   first container that needs it and detached when the last lets go.
//!   Each attach returns a [`GuestDevice`]: where the guest finds it (PCI
//!   path and virtio-blk serial for a disk; per-function PCI paths and
//!   IOMMU-group siblings for VFIO). Two containers racing to attach one
//!   device cause one hot-plug; a failed hot-plug leaves the registry as
//!   it was. The registry's state serializes
//!   ([`DeviceManager::save_state`]) so another process can
//!   [`DeviceManager::restore`] it.
//! - [`erofs`] finds the EROFS layer images under a container's overlay
//!   rootfs (containerd's EROFS snapshotter), from a mount table and sysfs
//!   given as paths, and plans the guest overlay over the attached disks.
//! - [`vfio`] resolves `/dev/vfio` nodes to PCI functions through sysfs
//!   (its root given as a path) and orders them for attaching.
//!
//! # Example
//!
//! A container's disk, attached through a hypervisor (here the mock one;
//! a sandbox passes its `Arc<dyn Hypervisor>`):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vc_device_manager::{
//!     DetachOutcome, DeviceInfo, DeviceManager, GuestLocation, RegistryConfig,
//! };
//! use vc_hypervisor::{Hypervisor, HypervisorConfig, testing::MockHypervisor};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vm = MockHypervisor::new(HypervisorConfig::new("vm", "/vmlinux", "/run/vm"));
//! vm.start(Duration::from_secs(1)).await?;
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let devices = DeviceManager::new(Arc::new(vm.clone()), RegistryConfig::default(), logger);
//!
//! let image = tempfile::NamedTempFile::new()?;
//! let id = devices.register(DeviceInfo::block(image.path()).read_only())?;
//! let (app, sidecar) = ("app".parse()?, "sidecar".parse()?);
//! let guest = devices.attach(&id, &app).await?;
//! let GuestLocation::VirtioBlk { pci_path, serial } = &guest.location else { unreachable!() };
//! println!("the guest finds {id} at PCI path {pci_path} with serial {serial}");
//!
//! // A second container shares the disk: no second hot-plug.
//! devices.attach(&id, &sidecar).await?;
//! assert_eq!(devices.detach(&id, &app).await?, DetachOutcome::StillInUse { ref_count: 1 });
//! assert_eq!(devices.detach(&id, &sidecar).await?, DetachOutcome::Unplugged);
//! assert!(vm.devices().is_empty());
//! # Ok(()) }
//! ```
//!
//! Finding the layers of a container whose rootfs the EROFS snapshotter
//! mounted (needs the real mount):
//!
//! ```no_run
//! use std::path::Path;
//! use vc_device_manager::erofs::ErofsDiscovery;
//!
//! let rootfs = ErofsDiscovery::default() // /proc/self/mountinfo and /sys
//!     .discover(Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io/app/rootfs"))?;
//! for layer in &rootfs.layers {
//!     println!("{} <- {}", layer.lowerdir.display(), layer.image.display());
//! }
//! # Ok::<(), vc_device_manager::Error>(())
//! ```

pub mod erofs;
mod error;
mod guest;
mod info;
mod manager;
mod pci;
#[cfg(test)]
mod test_sysfs;
pub mod vfio;

pub use error::{Error, Result, Unsupported};
pub use guest::{GuestDevice, GuestLocation, GuestVfioFunction};
pub use info::{DeviceInfo, DeviceType, DriverOptions, HostDevice};
pub use manager::{
    Attachment, DetachOutcome, DeviceManager, DeviceManagerState, DeviceRecord, DeviceState,
    DeviceStatus, PlugKind, ReconcileReport, RegistryConfig, STATE_VERSION,
};
pub use pci::{ParsePciAddressError, PciAddress};
