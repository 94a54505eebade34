//! A container's devices: the rootfs when it is a block device or an
//! overlay over EROFS layers, and block volumes. They are hot-plugged as
//! virtio-blk disks through the sandbox's device manager, and the agent
//! mounts them from their PCI paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxDeviceType;

use slog::{Logger, debug};
use vc_agent_client::protocol::agent::{self as pb, Storage};
use vc_device_manager::erofs::{ErofsDiscovery, GuestOverlayPlan};
use vc_device_manager::{DeviceInfo, DeviceManager, GuestDevice, GuestLocation};

use vc_types::ContainerId;

use crate::config::ContainerConfig;
use crate::error::Error;
use crate::mounts::{GuestMount, classify};

/// Where a container's device-backed rootfs is mounted in the guest.
pub const GUEST_ROOTFS_DIR: &str = "/run/vc/rootfs";
/// Where EROFS layer disks and the overlay's writable dirs live in the guest.
pub const GUEST_LAYERS_DIR: &str = "/run/vc/layers";
/// Where block volumes are mounted in the guest.
pub const GUEST_VOLUMES_DIR: &str = "/run/vc/volumes";

/// What a container's devices give its guest side.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContainerDevices {
    /// Device ids, registered for the container (recorded before attaching).
    pub ids: Vec<String>,
    /// Storages the agent mounts, in order, before the container.
    pub storages: Vec<Storage>,
    /// The rootfs's guest path, when a device carries it.
    pub rootfs: Option<String>,
    /// Spec mount index -> guest path of its block volume.
    pub volumes: BTreeMap<usize, String>,
    /// The host block devices of `linux.devices`, as the agent finds them
    /// (Kata's `CreateContainerRequest.devices`: type `blk`, the PCI path).
    pub nodes: Vec<pb::Device>,
}

/// Kata's `driver_options` key naming a directory its agent makes before
/// mounting an overlay.
const OVERLAY_CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory";

/// Kata's device type of a virtio-blk disk the agent finds by PCI path.
const DRIVER_BLK_PCI: &str = "blk";

/// A `linux.devices` block device of the host, passed to the container.
struct HostNode {
    /// The entry's path in the container.
    container_path: PathBuf,
    /// The host's device node.
    host_path: PathBuf,
}

/// What carries the rootfs, worked out before anything is attached.
enum Plan {
    /// A block-device rootfs image.
    BlockRootfs { info: DeviceInfo, fs_type: String },
    /// An overlay over EROFS layers.
    Erofs(vc_device_manager::erofs::ErofsRootfs),
}

fn dm_err(operation: &'static str) -> impl FnOnce(vc_device_manager::Error) -> Error {
    move |source| Error::Devices { operation, source }
}

fn blk(
    source: &GuestDevice,
    fstype: &str,
    read_only: bool,
    mount_point: String,
) -> Result<Storage, Error> {
    let GuestLocation::VirtioBlk { pci_path, .. } = &source.location else {
        return Err(vc_types::Unsupported::new(
            "a container disk that is not virtio-blk",
            format!("device {} is attached as {:?}", source.id, source.location),
        )
        .into());
    };
    let mut s = Storage::new();
    s.driver = "blk".into();
    s.source = pci_path.to_string();
    s.fstype = fstype.into();
    if read_only {
        s.options = vec!["ro".into()];
    }
    s.mount_point = mount_point;
    Ok(s)
}

/// What the container's devices are, worked out before anything is
/// registered or attached.
struct DevicePlan {
    rootfs: Option<Plan>,
    /// Spec mount index and the block volume it names.
    volumes: Vec<(usize, GuestMount)>,
    /// The host block devices of `linux.devices`.
    nodes: Vec<HostNode>,
}

/// Registers and attaches the container's devices, returning what the
/// guest needs. `record` is called with the registered ids before the
/// first attach (write-ahead). On failure the container's devices are
/// released again.
pub(crate) async fn attach(
    dm: &DeviceManager,
    cfg: &ContainerConfig,
    logger: &Logger,
    record: impl FnOnce(&[String]) -> Result<(), Error>,
) -> Result<ContainerDevices, Error> {
    let id = &cfg.id;
    let plan = plan_devices(cfg, logger)?;
    // Register everything first: a bad path fails before any hot-plug.
    let registered = register(dm, &plan)?;
    let ids: Vec<String> = registered
        .rootfs
        .iter()
        .chain(&registered.volumes)
        .chain(&registered.nodes)
        .cloned()
        .collect();
    if ids.is_empty() {
        return Ok(ContainerDevices::default());
    }
    record(&ids)?;
    let attached = match dm.attach_all(&ids, id).await {
        Ok(a) => a,
        Err(e) => {
            let _ = dm.release_container(id).await;
            return Err(dm_err("attach the container's devices")(e));
        }
    };
    let (rootfs_disks, rest) = attached.split_at(registered.rootfs.len());
    let (volume_disks, node_disks) = rest.split_at(registered.volumes.len());
    let mut out = ContainerDevices {
        ids,
        ..Default::default()
    };
    let built = rootfs_storages(&plan, id, rootfs_disks, &mut out)
        .and_then(|()| volume_storages(&plan, id, volume_disks, &mut out))
        .and_then(|()| node_devices(&plan, node_disks, &mut out));
    if let Err(e) = built {
        let _ = dm.release_container(id).await;
        return Err(e);
    }
    Ok(out)
}

/// What carries the rootfs (a block image, EROFS layers, or the share)
/// and which mounts are block volumes.
fn plan_devices(cfg: &ContainerConfig, logger: &Logger) -> Result<DevicePlan, Error> {
    let rootfs = match &cfg.rootfs_block {
        Some(b) => Some(Plan::BlockRootfs {
            info: DeviceInfo::block(&b.image),
            fs_type: b.fs_type.clone(),
        }),
        None => match ErofsDiscovery::default().discover(&cfg.rootfs()?) {
            Ok(found) => Some(Plan::Erofs(found)),
            // Not an overlay over EROFS layers (a plain directory, an
            // overlay over directories, ...): the share carries it.
            Err(
                why @ (vc_device_manager::Error::Unsupported(_)
                | vc_device_manager::Error::RootfsNotMounted { .. }
                | vc_device_manager::Error::RootfsNotOverlay { .. }
                | vc_device_manager::Error::UnsupportedRootfs { .. }
                | vc_device_manager::Error::UnsupportedLayer { .. }),
            ) => {
                debug!(logger, "rootfs goes through the share"; "container" => %cfg.id, "why" => %why);
                None
            }
            Err(e) => return Err(dm_err("discover the container's EROFS layers")(e)),
        },
    };
    let volumes = cfg
        .spec
        .mounts()
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| (i, classify(m, &[])))
        .filter(|(_, g)| matches!(g, GuestMount::Block { .. }))
        .collect();
    let nodes = host_nodes(cfg, Path::new("/sys"))?;
    Ok(DevicePlan {
        rootfs,
        volumes,
        nodes,
    })
}

/// The host block devices the spec's `linux.devices` name, found by their
/// numbers (`/sys/dev/block/<major>:<minor>`), as Kata finds them.
/// Character devices need nothing from the host: the guest makes the node
/// with the same numbers (its kernel numbers them as the host's does).
fn host_nodes(cfg: &ContainerConfig, sys: &Path) -> Result<Vec<HostNode>, Error> {
    let entries = cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    let mut nodes = Vec::new();
    for d in entries.iter().filter(|d| d.typ() == LinuxDeviceType::B) {
        let numbers = format!("{}:{}", d.major(), d.minor());
        let uevent = sys.join("dev/block").join(&numbers).join("uevent");
        let name = std::fs::read_to_string(&uevent)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
            })
            .ok_or_else(|| Error::InvalidSpec {
                container: cfg.id.clone(),
                reason: format!(
                    "linux.devices {}: the host has no block device {numbers}",
                    d.path().display()
                ),
            })?;
        nodes.push(HostNode {
            container_path: d.path().clone(),
            host_path: Path::new("/dev").join(name),
        });
    }
    Ok(nodes)
}

/// What the agent needs to find each `linux.devices` disk.
fn node_devices(
    plan: &DevicePlan,
    disks: &[GuestDevice],
    out: &mut ContainerDevices,
) -> Result<(), Error> {
    for (node, disk) in plan.nodes.iter().zip(disks) {
        let GuestLocation::VirtioBlk { pci_path, .. } = &disk.location else {
            return Err(vc_types::Unsupported::new(
                "a linux.devices block device that is not virtio-blk",
                format!("device {} is attached as {:?}", disk.id, disk.location),
            )
            .into());
        };
        out.nodes.push(pb::Device {
            id: pci_path.to_string(),
            type_: DRIVER_BLK_PCI.into(),
            container_path: node.container_path.display().to_string(),
            ..Default::default()
        });
    }
    Ok(())
}

/// The ids of a container's registered devices, by what they carry.
struct Registered {
    rootfs: Vec<String>,
    volumes: Vec<String>,
    nodes: Vec<String>,
}

/// Registers the rootfs devices, the block volumes and the `linux.devices`
/// disks, in that order.
fn register(dm: &DeviceManager, plan: &DevicePlan) -> Result<Registered, Error> {
    let mut rootfs_ids = Vec::new();
    match &plan.rootfs {
        Some(Plan::BlockRootfs { info, .. }) => {
            rootfs_ids.push(
                dm.register(info.clone())
                    .map_err(dm_err("register the rootfs image"))?,
            );
        }
        Some(Plan::Erofs(found)) => {
            for image in found.images() {
                let info = DeviceInfo::block(image).read_only();
                rootfs_ids.push(
                    dm.register(info)
                        .map_err(dm_err("register an EROFS layer"))?,
                );
            }
        }
        None => {}
    }
    let mut volume_ids = Vec::new();
    for (_, g) in &plan.volumes {
        if let GuestMount::Block {
            source, read_only, ..
        } = g
        {
            let mut info = DeviceInfo::block(source);
            if *read_only {
                info = info.read_only();
            }
            volume_ids.push(
                dm.register(info)
                    .map_err(dm_err("register a block volume"))?,
            );
        }
    }
    let mut node_ids = Vec::new();
    for node in &plan.nodes {
        node_ids.push(
            dm.register(DeviceInfo::block(&node.host_path))
                .map_err(dm_err("register a linux.devices block device"))?,
        );
    }
    Ok(Registered {
        rootfs: rootfs_ids,
        volumes: volume_ids,
        nodes: node_ids,
    })
}

/// The storages that mount the rootfs from its attached disks.
fn rootfs_storages(
    plan: &DevicePlan,
    id: &ContainerId,
    disks: &[GuestDevice],
    out: &mut ContainerDevices,
) -> Result<(), Error> {
    let guest_rootfs = format!("{GUEST_ROOTFS_DIR}/{id}");
    match &plan.rootfs {
        Some(Plan::BlockRootfs { fs_type, .. }) => {
            out.storages
                .push(blk(&disks[0], fs_type, false, guest_rootfs.clone())?);
        }
        Some(Plan::Erofs(found)) => {
            erofs_storages(found, id, disks, &guest_rootfs, out)?;
        }
        None => return Ok(()),
    }
    out.rootfs = Some(guest_rootfs);
    Ok(())
}

/// EROFS layers, each a read-only disk, stacked by an overlay in the
/// guest over a writable tmpfs.
fn erofs_storages(
    found: &vc_device_manager::erofs::ErofsRootfs,
    id: &ContainerId,
    disks: &[GuestDevice],
    guest_rootfs: &str,
    out: &mut ContainerDevices,
) -> Result<(), Error> {
    let layers = Path::new(GUEST_LAYERS_DIR).join(id.as_str());
    let overlay =
        GuestOverlayPlan::new(found, disks, &layers).map_err(dm_err("plan the guest overlay"))?;
    for disk in &overlay.disks {
        let guest = disks
            .iter()
            .find(|d| d.id == disk.device_id)
            .expect("the plan pairs each disk with an attached device");
        out.storages.push(blk(
            guest,
            "erofs",
            true,
            disk.mount_point.display().to_string(),
        )?);
    }
    // The overlay's writable dirs live on a tmpfs of their own: the
    // guest's root (the initramfs) cannot be an upper dir.
    let rw = layers.join("rw");
    let mut scratch = Storage::new();
    scratch.driver = "ephemeral".into();
    scratch.source = "tmpfs".into();
    scratch.fstype = "tmpfs".into();
    scratch.mount_point = rw.display().to_string();
    out.storages.push(scratch);
    let mut s = Storage::new();
    s.driver = "overlayfs".into();
    s.source = "overlay".into();
    s.fstype = "overlay".into();
    s.options = vec![
        overlay.lowerdir_option(),
        format!("upperdir={}", rw.join("upper").display()),
        format!("workdir={}", rw.join("work").display()),
    ];
    s.options.extend(overlay.features.iter().cloned());
    // A Kata agent makes an overlay's dirs only when asked to, this way.
    s.driver_options = ["upper", "work"]
        .iter()
        .map(|d| format!("{OVERLAY_CREATE_DIR}={}", rw.join(d).display()))
        .collect();
    s.mount_point = guest_rootfs.to_owned();
    out.storages.push(s);
    Ok(())
}

/// The storages that mount the block volumes from their attached disks.
fn volume_storages(
    plan: &DevicePlan,
    id: &ContainerId,
    disks: &[GuestDevice],
    out: &mut ContainerDevices,
) -> Result<(), Error> {
    for ((index, g), disk) in plan.volumes.iter().zip(disks) {
        if let GuestMount::Block {
            fs_type, read_only, ..
        } = g
        {
            let at = format!("{GUEST_VOLUMES_DIR}/{id}/{index}");
            out.storages
                .push(blk(disk, fs_type, *read_only, at.clone())?);
            out.volumes.insert(*index, at);
        }
    }
    Ok(())
}
