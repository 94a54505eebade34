//! EROFS layers of a container rootfs made by containerd's EROFS
//! snapshotter, found from the host's mount table, so the sandbox can
//! hand each `layer.erofs` to the VM as a read-only disk instead of
//! sharing the mounted files.
//!
//! The snapshotter keeps each committed layer as
//! `<root>/snapshots/<id>/layer.erofs`, mounts it read-only on
//! `<id>/fs` through a loop device (or directly, on kernels with
//! file-backed EROFS), and gives the container an overlay:
//! `lowerdir=<n>/fs:...:<1>/fs,upperdir=<active>/fs,workdir=<active>/work`.
//! [`ErofsDiscovery`] walks that back: the overlay at the rootfs path,
//! each lower dir's mount, each mount's loop device, each loop device's
//! backing file. It reads only the files it is given (a mount table and a
//! sysfs root), so it is tested on fixtures.
//!
//! [`GuestOverlayPlan`] then says how the guest rebuilds the rootfs from
//! the attached disks.

mod discovery;
mod guest;
mod mount_table;
mod overlay;

pub use discovery::{ErofsDiscovery, ErofsLayer, ErofsRootfs, LAYER_FILE_NAME, discover_in};
pub use guest::{GuestLayerDisk, GuestOverlayPlan};
pub use mount_table::{Mount, MountTable, MountTableFile, normalize};
