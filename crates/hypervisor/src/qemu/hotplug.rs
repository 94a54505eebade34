//! Hot-plug and unplug through QMP.
//!
//! A PCI device goes into slot 0 behind a free PCIe root port (ACPI
//! hot-plug), so its guest PCI path is `<port slot>/00`. Each kind is
//! added in steps (backend, then device); a failed step removes what the
//! earlier ones added. Unplug asks the guest to release the device and
//! waits for QEMU's `DEVICE_DELETED` event before removing the backend.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::cmdline::{self, block_node, chardev_id, netdev_id};
use super::commands::{BlockdevAdd, ChardevAdd, DeviceAdd, NetdevAdd};
use super::{Qemu, no_vfio, no_vhost_vsock, slots};
use crate::config::check_device;
use crate::device::{AttachedDevice, Device, GuestAddress, NetworkDevice, ShareBackend};
use crate::error::{Error, Result};
use crate::hypervisor::DeviceHotplug;
use vc_types::Unsupported;

/// Opens a NIC's tap in its network namespace, off the async threads
/// (the namespace is entered by a thread of its own).
pub(super) async fn open_tap(net: &NetworkDevice) -> Result<OwnedFd> {
    let (tap, netns) = (net.tap.clone(), net.netns.clone());
    let opened = tokio::task::spawn_blocking(move || crate::tap::open(&tap, netns.as_deref()))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    opened.map_err(|source| Error::TapOpen {
        id: net.id.clone(),
        tap: net.tap.clone(),
        source,
    })
}

impl Qemu {
    /// Runs `undo` after a failed step, logging (not returning) its error:
    /// the step's error is the one the caller needs.
    async fn undo<F>(&self, what: &str, undo: F)
    where
        F: std::future::Future<Output = Result<()>>,
    {
        if let Err(e) = undo.await {
            slog::error!(self.logger, "undoing a failed hot-plug step failed"; "step" => what, "error" => %e);
        }
    }

    async fn plug_pci(&self, device: &Device, port: u32) -> Result<()> {
        let bus = slots::port_id(port);
        match device {
            Device::Block(block) => {
                let node = block_node(&block.id);
                self.qmp
                    .execute(BlockdevAdd(cmdline::blockdev_json(block, &node)?))
                    .await?;
                let added = self
                    .qmp
                    .execute(DeviceAdd(cmdline::block_device_json(block, &node, &bus, 0)))
                    .await;
                if let Err(e) = added {
                    self.undo("blockdev-del", self.blockdev_del(&node)).await;
                    return Err(e);
                }
            }
            Device::Network(net) => {
                let netdev = netdev_id(&net.id);
                let tap = open_tap(net).await?;
                let fdname = format!("fd-{}", net.id);
                self.qmp.pass_fd(&fdname, tap.as_fd()).await?;
                drop(tap);
                let backend = self
                    .qmp
                    .execute(NetdevAdd(json!({
                        "type": "tap", "id": netdev, "fd": fdname, "vhost": false,
                    })))
                    .await;
                if let Err(e) = backend {
                    // Normally taken by netdev_add; not after every failure.
                    let _ = self.qmp.execute(qapi::qmp::closefd { fdname }).await;
                    return Err(e);
                }
                let added = self
                    .qmp
                    .execute(DeviceAdd(cmdline::net_device_json(net, &bus, 0)))
                    .await;
                if let Err(e) = added {
                    self.undo("netdev_del", self.netdev_del(&netdev)).await;
                    return Err(e);
                }
            }
            Device::SharedDir(share) => match &share.backend {
                ShareBackend::VirtioFs { socket, queue_size } => {
                    if !self.config.memory.shared {
                        return Err(Unsupported::new(
                            "virtio-fs",
                            "the VM's memory is not shared (set memory.shared at start)",
                        )
                        .into());
                    }
                    let chardev = chardev_id(&share.id);
                    self.chardev_add(&chardev, cmdline::path_str(socket)?, false)
                        .await?;
                    let added = self
                        .qmp
                        .execute(DeviceAdd(cmdline::virtio_fs_json(
                            share,
                            *queue_size,
                            &bus,
                            0,
                        )))
                        .await;
                    if let Err(e) = added {
                        self.undo("chardev-remove", self.chardev_remove(&chardev))
                            .await;
                        return Err(e);
                    }
                }
                ShareBackend::NineP { .. } => unreachable!("refused before a port is taken"),
            },
            Device::Vfio(vfio) => {
                self.qmp
                    .execute(DeviceAdd(json!({
                        "driver": "vfio-pci", "id": vfio.id, "host": vfio.host_bdf, "bus": bus, "addr": "0x0",
                    })))
                    .await?;
            }
            Device::Vsock(vsock) => {
                self.qmp
                    .execute(DeviceAdd(json!({
                        "driver": "vhost-vsock-pci", "id": vsock.id, "guest-cid": vsock.guest_cid, "bus": bus, "addr": "0x0",
                    })))
                    .await?;
            }
            Device::Serial(_) => unreachable!("serial ports are not PCI devices"),
        }
        Ok(())
    }

    async fn chardev_add(&self, id: &str, path: &str, server: bool) -> Result<()> {
        let mut data =
            json!({ "addr": { "type": "unix", "data": { "path": path } }, "server": server });
        if server {
            data["wait"] = json!(false);
        }
        self.qmp
            .execute(ChardevAdd(
                json!({ "id": id, "backend": { "type": "socket", "data": data } }),
            ))
            .await?;
        Ok(())
    }

    async fn chardev_remove(&self, id: &str) -> Result<()> {
        self.qmp
            .execute(qapi::qmp::chardev_remove { id: id.to_owned() })
            .await
            .map(drop)
    }

    async fn blockdev_del(&self, node: &str) -> Result<()> {
        self.qmp
            .execute(qapi::qmp::blockdev_del {
                node_name: node.to_owned(),
            })
            .await
            .map(drop)
    }

    async fn netdev_del(&self, id: &str) -> Result<()> {
        self.qmp
            .execute(qapi::qmp::netdev_del { id: id.to_owned() })
            .await
            .map(drop)
    }

    /// Removes the backend of an unplugged device.
    async fn remove_backend(&self, device: &Device) -> Result<()> {
        match device {
            Device::Block(block) => self.blockdev_del(&block_node(&block.id)).await,
            Device::Network(net) => self.netdev_del(&netdev_id(&net.id)).await,
            Device::Serial(port) => {
                self.chardev_remove(&chardev_id(&port.id)).await?;
                match std::fs::remove_file(&port.socket) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::RuntimeDir {
                        path: port.socket.clone(),
                        source: e,
                    }),
                    _ => Ok(()),
                }
            }
            Device::SharedDir(share) => self.chardev_remove(&chardev_id(&share.id)).await,
            Device::Vfio(_) | Device::Vsock(_) => Ok(()),
        }
    }

    fn check_hotpluggable(&self, device: &Device) -> Result<()> {
        match device {
            Device::SharedDir(share) if matches!(share.backend, ShareBackend::NineP { .. }) => {
                Err(Unsupported::new(
                    "hot-plug of 9p shares",
                    "QEMU has no QMP command to add an fsdev; configure 9p shares at boot",
                )
                .into())
            }
            Device::Vsock(_) if !self.host.vhost_vsock => Err(no_vhost_vsock().into()),
            Device::Vfio(_) if !self.host.vfio => Err(no_vfio().into()),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl DeviceHotplug for Qemu {
    async fn hotplug(&self, device: Device) -> Result<AttachedDevice> {
        check_device(&device)?;
        self.check_hotpluggable(&device)?;
        let vm = self.live_vm("hot-plug a device into")?;
        let id = device.id().to_owned();
        let cold = self.cold_devices().iter().any(|d| d.device.id() == id);
        // Reserve the id (and a port) first, so concurrent hot-plugs of the
        // same id or the last port cannot both proceed.
        let port = {
            let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            if cold || table.hotplugged.contains_key(&id) || table.pending.contains(&id) {
                return Err(Error::DeviceExists { id });
            }
            let port = if device.is_pci() {
                Some(table.ports.take(&id).ok_or(Error::NoFreeHotplugPort {
                    ports: table.ports.len(),
                })?)
            } else {
                None
            };
            table.pending.insert(id.clone());
            port
        };
        let result = match (&device, port) {
            (Device::Serial(port_dev), _) => {
                let chardev = chardev_id(&port_dev.id);
                match self
                    .chardev_add(&chardev, cmdline::path_str(&port_dev.socket)?, true)
                    .await
                {
                    Ok(()) => {
                        let added = self
                            .qmp
                            .execute(DeviceAdd(cmdline::serial_port_json(port_dev)))
                            .await;
                        if added.is_err() {
                            self.undo("chardev-remove", self.chardev_remove(&chardev))
                                .await;
                        }
                        added.map(drop)
                    }
                    Err(e) => Err(e),
                }
            }
            (device, Some(port)) => self.plug_pci(device, port).await,
            (_, None) => unreachable!("PCI devices always get a port"),
        };
        let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
        table.pending.remove(&id);
        if let Err(e) = result {
            table.ports.release(&id);
            slog::warn!(self.logger, "hot-plug failed"; "device" => &id, "error" => %e);
            return Err(e);
        }
        let address = match (&device, port) {
            (Device::Serial(p), _) => GuestAddress::SerialPort {
                name: p.name.clone(),
            },
            (_, port) => GuestAddress::Pci {
                path: slots::hotplug_path(port.unwrap_or(0)),
            },
        };
        let attached = AttachedDevice {
            device,
            address,
            hotplugged: true,
        };
        table.hotplugged.insert(id.clone(), attached.clone());
        slog::info!(self.logger, "device hot-plugged"; "device" => &id, "address" => ?attached.address);
        Ok(attached)
    }

    async fn unplug(&self, id: &str, timeout: Duration) -> Result<()> {
        let vm = self.live_vm("unplug a device from")?;
        let attached = {
            let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            table.hotplugged.get(id).cloned()
        };
        let Some(attached) = attached else {
            if self.cold_devices().iter().any(|d| d.device.id() == id) {
                return Err(Unsupported::new(
                    format!("unplugging cold-plugged device {id}"),
                    "devices on the root bus are not hot-pluggable",
                )
                .into());
            }
            return Err(Error::DeviceNotFound { id: id.to_owned() });
        };
        let mut events = self.qmp.subscribe().await?;
        self.qmp
            .execute(qapi::qmp::device_del { id: id.to_owned() })
            .await?;
        let deleted = async {
            loop {
                match events.recv().await {
                    Ok(qapi::qmp::Event::DEVICE_DELETED { data, .. })
                        if data.device.as_deref() == Some(id) =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        return Err(Error::QmpIo {
                            command: "device_del",
                            source: std::io::ErrorKind::UnexpectedEof.into(),
                        });
                    }
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, deleted).await;
        // No longer listening: let the session go once idle.
        drop(events);
        self.qmp.release_if_idle();
        match outcome {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::UnplugTimeout {
                    id: id.to_owned(),
                    timeout,
                });
            }
        }
        let removed = self.remove_backend(&attached.device).await;
        let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
        table.hotplugged.remove(id);
        table.ports.release(id);
        drop(table);
        slog::info!(self.logger, "device unplugged"; "device" => id);
        removed
    }
}
