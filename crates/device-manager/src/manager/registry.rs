//! [`DeviceManager`]: the [`DeviceManager`] over a hypervisor's hot-plug.
//!
//! The table sits behind a `std` mutex held only for bookkeeping, never
//! across an `.await`. A hot-plug or unplug marks its record busy, runs
//! as a spawned task (so a caller that gives up cannot leave a device
//! half-plugged and the record stuck), and completes by updating the
//! record; others who want the same device wait for that and then look
//! again. A [`Transition`] guard puts the record back the way it was if
//! the task fails, panics or is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use vc_types::ContainerId;

use tokio::sync::watch;
use vc_hypervisor::{AttachedDevice, Device, DeviceHotplug};

use super::record::{
    Attachment, PlugKind, Record, Slot, hypervisor_devices, id_prefix, location_of,
};
use super::state::{DeviceManagerState, DeviceRecord, STATE_VERSION};
use super::{DetachOutcome, DeviceStatus, ReconcileReport, RegistryConfig};
use crate::error::{Error, Result};
use crate::guest::GuestDevice;
use crate::info::{DeviceInfo, HostDevice};

/// A sandbox's devices: registered once per host device, attached to the
/// VM when the first container needs them and detached when the last one
/// lets go.
///
/// Object-safe (`Arc<dyn DeviceManager>`); every method takes `&self` and
/// may be called from several tasks at once. Two containers attaching the
/// same device at the same time get one hot-plug between them; a detach
/// racing an attach of the same device is serialized after it.
///
/// The device registry of one sandbox's VM.
///
/// Cheap to clone (clones share the registry). Needs a tokio runtime:
/// hot-plugs and unplugs run as spawned tasks.
#[derive(Clone)]
pub struct DeviceManager {
    inner: Arc<Inner>,
}

struct Inner {
    hotplug: Arc<dyn DeviceHotplug>,
    config: RegistryConfig,
    logger: slog::Logger,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    records: BTreeMap<String, Record>,
    /// Canonical host path (or VFIO node) -> id.
    by_identity: HashMap<PathBuf, String>,
    next_index: u64,
}

impl fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.inner.lock();
        f.debug_struct("DeviceManager")
            .field("config", &self.inner.config)
            .field("devices", &table.records.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unplugs what a failed hot-plug had added, newest first. Failures
    /// are logged: the hot-plug's own error is the one to report.
    async fn unwind(&self, id: &str, plugged: &[AttachedDevice]) {
        for attached in plugged.iter().rev() {
            let hid = attached.device.id();
            if let Err(e) = self.hotplug.unplug(hid, self.config.unplug_timeout).await {
                slog::error!(self.logger, "undoing a partial hot-plug failed; the device stays in the VM";
                    "device" => id, "hypervisor_device" => hid, "error" => %e);
            }
        }
    }

    /// Unplugs one hypervisor device; one the VM no longer has counts as unplugged.
    async fn unplug_one(&self, hid: &str) -> vc_hypervisor::Result<()> {
        match self.hotplug.unplug(hid, self.config.unplug_timeout).await {
            Err(vc_hypervisor::Error::DeviceNotFound { .. }) => {
                slog::warn!(self.logger, "device already gone from the VM"; "hypervisor_device" => hid);
                Ok(())
            }
            other => other,
        }
    }
}

/// An in-flight transition of one record. Dropped without
/// [`finish`](Self::finish), it puts `fallback` back into the record;
/// either way it then closes `done`, which wakes the waiters.
struct Transition {
    inner: Arc<Inner>,
    id: String,
    fallback: Option<Slot>,
    done: Option<watch::Sender<()>>,
}

impl Transition {
    /// Marks `record` busy and returns the guard that will end it.
    fn begin(inner: &Arc<Inner>, record: &mut Record) -> Self {
        let (done, busy) = watch::channel(());
        let fallback = std::mem::replace(&mut record.slot, Slot::Busy(busy));
        Self {
            inner: inner.clone(),
            id: record.id.clone(),
            fallback: Some(fallback),
            done: Some(done),
        }
    }

    /// Completes the transition: `f` updates the record (and must leave
    /// it not busy).
    fn finish<T>(mut self, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        let out = {
            let mut table = self.inner.lock();
            table.records.get_mut(&self.id).map(f)
        };
        self.fallback = None;
        out
    }
}

impl Drop for Transition {
    fn drop(&mut self) {
        if let Some(slot) = self.fallback.take() {
            let mut table = self.inner.lock();
            if let Some(record) = table.records.get_mut(&self.id) {
                record.slot = slot;
            }
        }
        // Only now, with the record settled, wake the waiters.
        drop(self.done.take());
    }
}

enum AttachStep {
    Done(GuestDevice),
    Wait(watch::Receiver<()>),
    Plug(Transition, Vec<Device>, HostDevice),
}

enum DetachStep {
    Done(DetachOutcome),
    Wait(watch::Receiver<()>),
    Unplug(Box<(Transition, Attachment, HostDevice)>),
}

impl DeviceManager {
    /// An empty registry that attaches through `hotplug` (the VM's
    /// hypervisor: an `Arc<dyn Hypervisor>` coerces to it).
    pub fn new(
        hotplug: Arc<dyn DeviceHotplug>,
        config: RegistryConfig,
        logger: slog::Logger,
    ) -> Self {
        Self::from_table(hotplug, config, logger, Table::default())
    }

    fn from_table(
        hotplug: Arc<dyn DeviceHotplug>,
        config: RegistryConfig,
        logger: slog::Logger,
        table: Table,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hotplug,
                config,
                logger,
                table: Mutex::new(table),
            }),
        }
    }

    /// Rebuilds a registry from a saved state (in another process) and
    /// [`reconcile`](DeviceManager::reconcile)s it with the devices the VM
    /// has now (`Hypervisor::devices()`).
    pub async fn restore(
        state: DeviceManagerState,
        hotplug: Arc<dyn DeviceHotplug>,
        config: RegistryConfig,
        logger: slog::Logger,
        vm_devices: &[AttachedDevice],
    ) -> Result<(Self, ReconcileReport)> {
        if state.version != STATE_VERSION {
            return Err(Error::InvalidSavedState {
                reason: format!(
                    "version {} (this build reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        let mut table = Table {
            next_index: state.next_index,
            ..Table::default()
        };
        for saved in state.devices {
            let identity = saved.host.identity(&saved.info);
            if table.records.contains_key(&saved.id) || table.by_identity.contains_key(&identity) {
                return Err(Error::InvalidSavedState {
                    reason: format!("device {} or its host path is recorded twice", saved.id),
                });
            }
            let slot = match saved.attachment {
                Some(a) if !saved.in_flight => Slot::Attached(a),
                _ => Slot::Detached,
            };
            table.by_identity.insert(identity, saved.id.clone());
            table.records.insert(
                saved.id.clone(),
                Record {
                    id: saved.id,
                    info: saved.info,
                    host: saved.host,
                    users: saved.users,
                    slot,
                },
            );
        }
        let registry = Self::from_table(hotplug, config, logger, table);
        let report = registry.reconcile(vm_devices).await?;
        Ok((registry, report))
    }

    /// The configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    fn not_found(id: &str) -> Error {
        Error::DeviceNotFound { id: id.to_owned() }
    }

    /// Hot-plugs the devices of a record in a task that owns the transition.
    async fn plug(
        inner: Arc<Inner>,
        transition: Transition,
        container_id: ContainerId,
        devices: Vec<Device>,
        host: HostDevice,
    ) -> Result<GuestDevice> {
        let id = transition.id.clone();
        let mut plugged = Vec::with_capacity(devices.len());
        for device in devices {
            match inner.hotplug.hotplug(device).await {
                Ok(attached) => plugged.push(attached),
                Err(source) => {
                    inner.unwind(&id, &plugged).await;
                    slog::warn!(inner.logger, "hot-plug failed; the device stays detached";
                        "device" => &id, "error" => %source);
                    return Err(Error::Hotplug { id, source });
                }
            }
        }
        let location = match location_of(&id, &host, &plugged) {
            Ok(location) => location,
            Err(e) => {
                inner.unwind(&id, &plugged).await;
                return Err(e);
            }
        };
        let attachment = Attachment {
            devices: plugged,
            plug: PlugKind::Hot,
            location,
        };
        slog::info!(inner.logger, "device hot-plugged";
            "device" => &id, "container" => &container_id, "location" => ?attachment.location);
        transition
            .finish(|record| {
                let guest = record.guest_device(&attachment);
                record.slot = Slot::Attached(attachment);
                record.add_user(&container_id);
                guest
            })
            .ok_or(Error::DeviceNotFound { id })
    }

    /// Unplugs the devices of a record in a task that owns the transition.
    async fn unplug(
        inner: Arc<Inner>,
        mut transition: Transition,
        container_id: ContainerId,
        attachment: Attachment,
        host: HostDevice,
    ) -> Result<DetachOutcome> {
        let id = transition.id.clone();
        let mut remaining = attachment.devices.clone();
        for attached in attachment.devices.iter().rev() {
            let hid = attached.device.id();
            if let Err(source) = inner.unplug_one(hid).await {
                // What is still plugged stays attached, and the reference held.
                let location = location_of(&id, &host, &remaining)
                    .unwrap_or_else(|_| attachment.location.clone());
                transition.fallback = Some(Slot::Attached(Attachment {
                    devices: remaining,
                    plug: PlugKind::Hot,
                    location,
                }));
                slog::warn!(inner.logger, "unplug failed; the device stays attached";
                    "device" => &id, "error" => %source);
                return Err(Error::Unplug { id, source });
            }
            remaining.retain(|d| d.device.id() != hid);
        }
        slog::info!(inner.logger, "device unplugged"; "device" => &id, "container" => &container_id);
        transition
            .finish(|record| {
                record.slot = Slot::Detached;
                record.remove_user(&container_id);
            })
            .ok_or(Error::DeviceNotFound { id })?;
        Ok(DetachOutcome::Unplugged)
    }

    fn interrupted(id: &str, e: tokio::task::JoinError) -> Error {
        Error::Interrupted {
            id: id.to_owned(),
            reason: if e.is_panic() {
                "the hypervisor call panicked".into()
            } else {
                "the runtime is shutting down".into()
            },
        }
    }
}

impl DeviceManager {
    /// Registers a device and returns its id; the same host device
    /// registered again with the same settings returns the same id.
    /// Inspects the host (the file, or sysfs for VFIO) but attaches nothing.
    pub fn register(&self, info: DeviceInfo) -> Result<String> {
        // Inspect outside the lock: it reads the filesystem.
        let host = HostDevice::inspect(&info, &self.inner.config.sys_root)?;
        let identity = host.identity(&info);
        let mut table = self.inner.lock();
        if let Some(id) = table.by_identity.get(&identity) {
            let existing = &table.records[id];
            let same = existing.info.device_type == info.device_type
                && existing.info.read_only == info.read_only
                && existing.info.driver_options == info.driver_options;
            return if same {
                Ok(id.clone())
            } else {
                Err(Error::RegisteredDifferently {
                    path: info.host_path,
                    id: id.clone(),
                })
            };
        }
        // One PCI function can be reached through its group node and its
        // iommufd node: passing it twice would fail in the VMM.
        if let HostDevice::Vfio(new) = &host {
            for record in table.records.values() {
                let HostDevice::Vfio(old) = &record.host else {
                    continue;
                };
                if let Some(f) = new
                    .functions
                    .iter()
                    .find(|f| old.functions.iter().any(|o| o.address == f.address))
                {
                    return Err(Error::InvalidDeviceInfo {
                        path: info.host_path,
                        reason: format!(
                            "{} is registered already through {} as device {}",
                            f.address,
                            record.info.host_path.display(),
                            record.id
                        ),
                    });
                }
            }
        }
        let id = format!("{}-{}", id_prefix(info.device_type), table.next_index);
        table.next_index += 1;
        slog::debug!(self.inner.logger, "device registered";
            "device" => &id, "host_path" => %info.host_path.display());
        table.by_identity.insert(identity, id.clone());
        table.records.insert(
            id.clone(),
            Record {
                id: id.clone(),
                info,
                host,
                users: BTreeMap::new(),
                slot: Slot::Detached,
            },
        );
        Ok(id)
    }

    /// Forgets a device that no container holds and that is not attached.
    pub fn unregister(&self, id: &str) -> Result<()> {
        let mut table = self.inner.lock();
        let record = table.records.get(id).ok_or_else(|| Self::not_found(id))?;
        if !matches!(record.slot, Slot::Detached) || !record.users.is_empty() {
            return Err(Error::DeviceInUse {
                id: id.to_owned(),
                users: record.ref_count(),
            });
        }
        let identity = record.host.identity(&record.info);
        table.records.remove(id);
        table.by_identity.remove(&identity);
        Ok(())
    }

    /// A device by id.
    pub fn device(&self, id: &str) -> Option<DeviceStatus> {
        self.inner.lock().records.get(id).map(Record::status)
    }

    /// A device by the host path it was registered with (or another name
    /// of the same file).
    pub fn find_by_host_path(&self, host_path: &Path) -> Option<DeviceStatus> {
        let canonical = std::fs::canonicalize(host_path).ok();
        let table = self.inner.lock();
        let id = table
            .records
            .values()
            .find(|r| r.info.host_path == host_path)
            .map(|r| &r.id)
            .or_else(|| table.by_identity.get(host_path))
            .or_else(|| canonical.as_ref().and_then(|c| table.by_identity.get(c)))?;
        table.records.get(id).map(Record::status)
    }

    /// All devices, by id.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        self.inner
            .lock()
            .records
            .values()
            .map(Record::status)
            .collect()
    }

    /// Takes a reference to device `id` for `container_id`, hot-plugging
    /// it first if no container holds it; returns where the guest finds
    /// it. A failed hot-plug leaves the registry as it was. A caller that
    /// stops waiting does not stop the hot-plug: it completes and the
    /// reference is taken, for the caller's undo to [`detach`](Self::detach)
    /// (or [`release_container`](Self::release_container)).
    pub async fn attach(&self, id: &str, container_id: &ContainerId) -> Result<GuestDevice> {
        loop {
            let step = {
                let mut table = self.inner.lock();
                let record = table
                    .records
                    .get_mut(id)
                    .ok_or_else(|| Self::not_found(id))?;
                match &record.slot {
                    Slot::Attached(attachment) => {
                        let guest = record.guest_device(attachment);
                        record.add_user(container_id);
                        AttachStep::Done(guest)
                    }
                    Slot::Busy(done) => AttachStep::Wait(done.clone()),
                    Slot::Detached => {
                        let devices = hypervisor_devices(id, &record.info, &record.host)?;
                        if devices.is_empty() {
                            let attachment = Attachment {
                                devices: Vec::new(),
                                plug: PlugKind::Local,
                                location: location_of(id, &record.host, &[])?,
                            };
                            let guest = record.guest_device(&attachment);
                            record.slot = Slot::Attached(attachment);
                            record.add_user(container_id);
                            AttachStep::Done(guest)
                        } else {
                            let transition = Transition::begin(&self.inner, record);
                            AttachStep::Plug(transition, devices, record.host.clone())
                        }
                    }
                }
            };
            match step {
                AttachStep::Done(guest) => {
                    slog::debug!(self.inner.logger, "device reference taken";
                        "device" => id, "container" => container_id);
                    return Ok(guest);
                }
                AttachStep::Wait(mut done) => {
                    // Closed when the transition ends; then look again.
                    let _ = done.changed().await;
                }
                AttachStep::Plug(transition, devices, host) => {
                    let task = tokio::spawn(Self::plug(
                        self.inner.clone(),
                        transition,
                        container_id.to_owned(),
                        devices,
                        host,
                    ));
                    return task.await.map_err(|e| Self::interrupted(id, e))?;
                }
            }
        }
    }

    /// Drops one reference of `container_id` to device `id`, unplugging
    /// the device when it was the last. A failed unplug leaves the
    /// device attached and the reference held.
    pub async fn detach(&self, id: &str, container_id: &ContainerId) -> Result<DetachOutcome> {
        let not_attached = || Error::NotAttachedBy {
            id: id.to_owned(),
            container_id: container_id.to_owned(),
        };
        loop {
            let step = {
                let mut table = self.inner.lock();
                let record = table
                    .records
                    .get_mut(id)
                    .ok_or_else(|| Self::not_found(id))?;
                match &record.slot {
                    // Wait first: the container's own attach may be in flight.
                    Slot::Busy(done) => DetachStep::Wait(done.clone()),
                    _ if !record.users.contains_key(container_id) => return Err(not_attached()),
                    Slot::Detached => return Err(not_attached()),
                    Slot::Attached(_) if record.ref_count() > 1 => {
                        record.remove_user(container_id);
                        DetachStep::Done(DetachOutcome::StillInUse {
                            ref_count: record.ref_count(),
                        })
                    }
                    Slot::Attached(attachment) => match attachment.plug {
                        PlugKind::Local => {
                            record.remove_user(container_id);
                            record.slot = Slot::Detached;
                            DetachStep::Done(DetachOutcome::Released)
                        }
                        PlugKind::Cold => {
                            record.remove_user(container_id);
                            DetachStep::Done(DetachOutcome::Released)
                        }
                        PlugKind::Hot => {
                            let attachment = attachment.clone();
                            let host = record.host.clone();
                            let transition = Transition::begin(&self.inner, record);
                            DetachStep::Unplug(Box::new((transition, attachment, host)))
                        }
                    },
                }
            };
            match step {
                DetachStep::Done(outcome) => {
                    slog::debug!(self.inner.logger, "device reference dropped";
                        "device" => id, "container" => container_id, "outcome" => ?outcome);
                    return Ok(outcome);
                }
                DetachStep::Wait(mut done) => {
                    let _ = done.changed().await;
                }
                DetachStep::Unplug(job) => {
                    let (transition, attachment, host) = *job;
                    let task = tokio::spawn(Self::unplug(
                        self.inner.clone(),
                        transition,
                        container_id.to_owned(),
                        attachment,
                        host,
                    ));
                    return task.await.map_err(|e| Self::interrupted(id, e))?;
                }
            }
        }
    }

    /// Attaches `ids` in order for `container_id`; if one fails, the ones
    /// attached by this call are detached again and the error returned.
    pub async fn attach_all(
        &self,
        ids: &[String],
        container_id: &ContainerId,
    ) -> Result<Vec<GuestDevice>> {
        let mut done: Vec<&str> = Vec::with_capacity(ids.len());
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.attach(id, container_id).await {
                Ok(guest) => {
                    done.push(id);
                    out.push(guest);
                }
                Err(e) => {
                    for attached in done.iter().rev() {
                        // The original error is the one to report; an
                        // undo failure keeps the reference (see detach).
                        let _ = self.detach(attached, container_id).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Drops every reference `container_id` holds (for a container that
    /// is deleted or died). Carries on past failures; returns the ids
    /// released.
    pub async fn release_container(&self, container_id: &ContainerId) -> Result<Vec<String>> {
        let held: Vec<(String, u32)> = self
            .inner
            .lock()
            .records
            .values()
            .filter_map(|r| r.users.get(container_id).map(|n| (r.id.clone(), *n)))
            .collect();
        let mut released = Vec::new();
        let mut failed = Vec::new();
        let mut first_error = None;
        for (id, count) in held {
            let mut ok = true;
            for _ in 0..count {
                match self.detach(&id, container_id).await {
                    Ok(_) => {}
                    // Dropped meanwhile by another caller: nothing left to do.
                    Err(Error::NotAttachedBy { .. }) => break,
                    Err(e) => {
                        ok = false;
                        first_error.get_or_insert(e);
                        break;
                    }
                }
            }
            if ok {
                released.push(id);
            } else {
                failed.push(id);
            }
        }
        match first_error {
            None => Ok(released),
            Some(source) => Err(Error::Release {
                container_id: container_id.to_owned(),
                failed,
                source: Box::new(source),
            }),
        }
    }

    /// The hypervisor devices to cold-plug (put in the VM's config before
    /// it starts) for registered devices `ids`. After the VM started,
    /// [`reconcile`](Self::reconcile) with its device list marks them
    /// attached; containers then [`attach`](Self::attach) them as usual.
    pub fn coldplug_devices(&self, ids: &[String]) -> Result<Vec<Device>> {
        let table = self.inner.lock();
        let mut out = Vec::new();
        for id in ids {
            let record = table.records.get(id).ok_or_else(|| Self::not_found(id))?;
            if !matches!(record.slot, Slot::Detached) {
                return Err(Error::DeviceInUse {
                    id: id.clone(),
                    users: record.ref_count(),
                });
            }
            out.extend(hypervisor_devices(id, &record.info, &record.host)?);
        }
        Ok(out)
    }

    /// Makes the registry agree with the devices the VM has
    /// (`Hypervisor::devices()`): registered devices the VM has are
    /// attached (with the VM's addresses), those it lacks are detached,
    /// and leftovers of interrupted transitions are unplugged. For
    /// cold-plug and for a registry restored in another process; call it
    /// before the registry is shared.
    pub async fn reconcile(&self, vm_devices: &[AttachedDevice]) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        // What each record expects in the VM, taken under the lock.
        let candidates: Vec<(String, Vec<Device>, HostDevice, bool, bool)> = {
            let table = self.inner.lock();
            let mut out = Vec::new();
            for record in table.records.values() {
                if matches!(record.slot, Slot::Busy(_)) {
                    continue;
                }
                let expected = hypervisor_devices(&record.id, &record.info, &record.host)?;
                if expected.is_empty() {
                    continue;
                }
                let was_attached = matches!(record.slot, Slot::Attached(_));
                out.push((
                    record.id.clone(),
                    expected,
                    record.host.clone(),
                    was_attached,
                    record.users.is_empty(),
                ));
            }
            out
        };
        for (id, expected, host, was_attached, unused) in candidates {
            let present: Vec<AttachedDevice> = expected
                .iter()
                .filter_map(|e| vm_devices.iter().find(|d| d.device.id() == e.id()))
                .cloned()
                .collect();
            let hot = present.iter().all(|d| d.hotplugged);
            let slot = if present.len() == expected.len() && !(hot && unused) {
                let attachment = Attachment {
                    plug: if hot { PlugKind::Hot } else { PlugKind::Cold },
                    location: location_of(&id, &host, &present)?,
                    devices: present,
                };
                if !was_attached {
                    report.adopted.push(id.clone());
                }
                Slot::Attached(attachment)
            } else if present.is_empty() {
                if was_attached || !unused {
                    report.lost.push(id.clone());
                }
                Slot::Detached
            } else {
                // Partly there, or hot-plugged with nobody holding it: an
                // interrupted transition. Remove what is there.
                for d in present.iter().filter(|d| d.hotplugged).rev() {
                    if let Err(e) = self.inner.unplug_one(d.device.id()).await {
                        slog::error!(self.inner.logger, "removing a leftover device failed";
                            "device" => &id, "hypervisor_device" => d.device.id(), "error" => %e);
                        return Err(Error::Unplug { id, source: e });
                    }
                }
                report.cleaned.push(id.clone());
                Slot::Detached
            };
            let mut table = self.inner.lock();
            if let Some(record) = table.records.get_mut(&id) {
                if matches!(slot, Slot::Detached) {
                    record.users.clear();
                }
                record.slot = slot;
            }
        }
        if report != ReconcileReport::default() {
            slog::info!(self.inner.logger, "device registry reconciled with the VM";
                "adopted" => ?report.adopted, "lost" => ?report.lost, "cleaned" => ?report.cleaned);
        }
        Ok(report)
    }

    /// The state to persist, for [`DeviceManager::restore`] in another
    /// process.
    pub fn save_state(&self) -> DeviceManagerState {
        let table = self.inner.lock();
        DeviceManagerState {
            version: STATE_VERSION,
            next_index: table.next_index,
            devices: table
                .records
                .values()
                .map(DeviceRecord::from_record)
                .collect(),
        }
    }
}
