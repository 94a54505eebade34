//! vCPU and memory hot-plug through QMP: what
//! [`Hypervisor::resize_vcpus`](crate::Hypervisor::resize_vcpus) and
//! [`Hypervisor::resize_memory`](crate::Hypervisor::resize_memory) do on
//! QEMU.
//!
//! vCPUs go into the free slots of q35's topology that
//! `query-hotpluggable-cpus` lists (up to `-smp maxcpus`), lowest ids
//! first, as a `device_add` of the CPU type QEMU names there. Memory goes
//! in as a `pc-dimm` over a memory backend, within `-m slots=,maxmem=`:
//! a shared memfd when guest RAM is shared (a vhost-user device such as
//! virtio-fs must reach every guest page, the hot-plugged ones too), plain
//! RAM otherwise.
//!
//! QEMU is the truth: every resize first reads back which vCPUs and DIMMs
//! are plugged (another process may have resized the VM since this handle
//! attached), and records them for the saved state.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use vc_types::Unsupported;

use super::commands::{DeviceAdd, ObjectAdd, QueryHotpluggableCpus, QueryMemoryDevices};
use super::{Qemu, Vm};
use crate::accel::ResolvedAccelerator;
use crate::error::{Error, Result};
use crate::hypervisor::VmResources;

/// Memory hot-plug slots of every VM (`-m ...,slots=`).
pub const MEMORY_SLOTS: u32 = 8;
/// How often a vCPU unplug checks whether the guest let go of it.
const UNPLUG_POLL: Duration = Duration::from_millis(50);
const MIB: u64 = 1 << 20;
/// QOM paths of devices added with an id.
const PERIPHERAL: &str = "/machine/peripheral/";
/// The topology ids of a vCPU slot, in the order its device id names them.
const TOPOLOGY: [(&str, &str); 5] = [
    ("socket-id", "s"),
    ("die-id", "d"),
    ("cluster-id", "l"),
    ("core-id", "c"),
    ("thread-id", "t"),
];

/// A hot-plugged vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotpluggedVcpu {
    /// Its QEMU device id (`vcpu-s0-c1-t0`: named after its slot).
    pub id: String,
    /// Its QEMU CPU type (`max-x86_64-cpu`).
    pub driver: String,
    /// Its slot's topology ids (`socket-id`, `core-id`, ...).
    pub props: BTreeMap<String, i64>,
}

/// A hot-plugged DIMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotpluggedDimm {
    /// Its QEMU device id (`dimm0`).
    pub id: String,
    /// The id of its memory backend object (`mem-dimm0`).
    pub memdev: String,
    /// Its size, MiB.
    pub size_mib: u64,
}

/// One vCPU slot as QEMU lists it.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    driver: String,
    props: BTreeMap<String, i64>,
    /// The vCPU in it, if any.
    qom_path: Option<String>,
}

impl Slot {
    /// The device id of a vCPU in this slot.
    fn vcpu_id(&self) -> String {
        let mut id = String::from("vcpu");
        for (key, letter) in TOPOLOGY {
            if let Some(v) = self.props.get(key) {
                id.push_str(&format!("-{letter}{v}"));
            }
        }
        id
    }

    /// Orders slots lowest topology first.
    fn order_key(&self) -> Vec<i64> {
        TOPOLOGY
            .iter()
            .map(|(key, _)| self.props.get(*key).copied().unwrap_or(0))
            .collect()
    }
}

/// Parses `query-hotpluggable-cpus`.
fn parse_slots(answer: &Value) -> Vec<Slot> {
    let Some(list) = answer.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|entry| {
            let driver = entry.get("type")?.as_str()?.to_owned();
            let props = entry
                .get("props")?
                .as_object()?
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                .collect();
            let qom_path = entry
                .get("qom-path")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some(Slot {
                driver,
                props,
                qom_path,
            })
        })
        .collect()
}

/// Parses `query-memory-devices`: the DIMMs that have an id.
fn parse_dimms(answer: &Value) -> Vec<HotpluggedDimm> {
    let Some(list) = answer.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter(|d| d.get("type").and_then(Value::as_str) == Some("dimm"))
        .filter_map(|d| {
            let data = d.get("data")?;
            let memdev = data.get("memdev")?.as_str()?;
            Some(HotpluggedDimm {
                id: data.get("id")?.as_str()?.to_owned(),
                memdev: memdev.trim_start_matches("/objects/").to_owned(),
                size_mib: data.get("size")?.as_u64()? / MIB,
            })
        })
        .collect()
}

/// `recorded` brought in line with what QEMU has (`present`): the order
/// of those still there kept, newcomers appended, the gone dropped.
fn reconcile<T: Clone, K: PartialEq>(
    recorded: &[T],
    present: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut merged: Vec<T> = recorded
        .iter()
        .filter(|r| present.iter().any(|p| key(p) == key(r)))
        .cloned()
        .collect();
    for p in present {
        if !merged.iter().any(|m| key(m) == key(p)) {
            merged.push(p.clone());
        }
    }
    merged
}

/// How much memory to plug to reach `target_mib` from `now_mib`: the
/// difference in whole blocks; `None` when nothing is missing.
pub(crate) fn memory_to_plug(now_mib: u64, target_mib: u64, block_mib: u64) -> Option<u64> {
    let missing = target_mib.checked_sub(now_mib).filter(|&m| m > 0)?;
    Some(missing.div_ceil(block_mib) * block_mib)
}

impl Qemu {
    /// The vCPUs and memory the VM has, from this handle's table.
    pub(super) fn vm_resources(&self, vm: Option<&Vm>) -> VmResources {
        let (vcpus, dimm_mib) = vm.map_or((0, 0), |vm| {
            let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            (
                table.vcpus.len() as u32,
                table.dimms.iter().map(|d| d.size_mib).sum(),
            )
        });
        VmResources {
            vcpus: self.config.vcpus.boot + vcpus,
            max_vcpus: self.config.vcpus.max,
            memory_mib: self.config.memory.boot_mib + dimm_mib,
            max_memory_mib: self.config.memory.max_mib,
        }
    }

    async fn cpu_slots(&self) -> Result<Vec<Slot>> {
        Ok(parse_slots(
            &self.qmp.execute(QueryHotpluggableCpus::default()).await?,
        ))
    }

    /// Reads the plugged vCPUs and DIMMs back from QEMU into the table.
    async fn sync_from_vmm(&self, vm: &Vm) -> Result<Vec<Slot>> {
        let slots = self.cpu_slots().await?;
        let vcpus: Vec<HotpluggedVcpu> = slots
            .iter()
            .filter_map(|s| {
                let id = s.qom_path.as_deref()?.strip_prefix(PERIPHERAL)?;
                Some(HotpluggedVcpu {
                    id: id.to_owned(),
                    driver: s.driver.clone(),
                    props: s.props.clone(),
                })
            })
            .collect();
        let dimms = parse_dimms(&self.qmp.execute(QueryMemoryDevices::default()).await?);
        let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
        table.vcpus = reconcile(&table.vcpus, &vcpus, |v| v.id.clone());
        table.dimms = reconcile(&table.dimms, &dimms, |d| d.id.clone());
        Ok(slots)
    }

    /// QEMU's (major, minor) version, asked once.
    async fn qemu_version(&self) -> Result<(u64, u64)> {
        if let Some(v) = self.version.get() {
            return Ok(*v);
        }
        let info = self.qmp.execute(qapi::qmp::query_version {}).await?;
        let v = (info.qemu.major as u64, info.qemu.minor as u64);
        Ok(*self.version.get_or_init(|| v))
    }

    /// Refuses vCPU unplug where QEMU would corrupt itself.
    async fn check_vcpu_unplug(&self) -> Result<()> {
        if self.accel.accelerator != ResolvedAccelerator::Tcg {
            return Ok(());
        }
        let (major, minor) = self.qemu_version().await?;
        if major >= 8 {
            return Ok(());
        }
        Err(Unsupported::new(
            "vCPU hot-unplug",
            format!(
                "QEMU {major}.{minor} under TCG frees an unplugged vCPU's jump cache while the other \
                 vCPUs may still read it (a use-after-free fixed in QEMU 8.0) and crashes later; \
                 vCPUs can be unplugged under KVM or with QEMU 8.0 or newer"
            ),
        )
        .into())
    }

    /// [`Hypervisor::resize_vcpus`](crate::Hypervisor::resize_vcpus) on QEMU.
    pub(super) async fn resize_vcpus_now(
        &self,
        vcpus: u32,
        timeout: Duration,
    ) -> Result<VmResources> {
        let _one_at_a_time = self.resize_lock.lock().await;
        let vm = self.live_vm("resize the vCPUs of")?;
        let slots = self.sync_from_vmm(&vm).await?;
        let now = self.vm_resources(Some(&vm));
        if vcpus > now.max_vcpus {
            return Err(Error::VcpusAboveMax {
                requested: vcpus,
                max: now.max_vcpus,
            });
        }
        if vcpus > now.vcpus {
            self.plug_vcpus(&vm, slots, vcpus - now.vcpus, timeout)
                .await?;
        } else if vcpus < now.vcpus && now.vcpus > self.config.vcpus.boot {
            self.check_vcpu_unplug().await?;
            let keep = vcpus.max(self.config.vcpus.boot) - self.config.vcpus.boot;
            let ids: Vec<String> = {
                let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
                table
                    .vcpus
                    .iter()
                    .skip(keep as usize)
                    .map(|v| v.id.clone())
                    .collect()
            };
            self.unplug_vcpus(&vm, &ids, timeout).await?;
        }
        let after = self.vm_resources(Some(&vm));
        slog::info!(self.logger, "vCPUs resized"; "before" => now.vcpus, "after" => after.vcpus);
        Ok(after)
    }

    /// Plugs `count` vCPUs into the lowest free slots; on a failure,
    /// unplugs the ones plugged here (where QEMU can) and returns it.
    async fn plug_vcpus(
        &self,
        vm: &Vm,
        slots: Vec<Slot>,
        count: u32,
        timeout: Duration,
    ) -> Result<()> {
        let mut free: Vec<Slot> = slots.into_iter().filter(|s| s.qom_path.is_none()).collect();
        free.sort_by_key(Slot::order_key);
        let mut plugged = Vec::new();
        for slot in free.into_iter().take(count as usize) {
            let id = slot.vcpu_id();
            let mut args = json!({ "driver": slot.driver, "id": id });
            for (k, v) in &slot.props {
                args[k] = json!(v);
            }
            if let Err(e) = self.qmp.execute(DeviceAdd(args)).await {
                slog::warn!(self.logger, "vCPU hot-plug failed"; "vcpu" => &id, "error" => %e);
                self.undo_vcpus(vm, &plugged, timeout).await;
                return Err(e);
            }
            vm.devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .vcpus
                .push(HotpluggedVcpu {
                    id: id.clone(),
                    driver: slot.driver.clone(),
                    props: slot.props.clone(),
                });
            plugged.push(id);
        }
        Ok(())
    }

    /// Unplugs vCPUs this call plugged before it failed; what cannot be
    /// unplugged stays (offline in the guest, recorded).
    async fn undo_vcpus(&self, vm: &Vm, plugged: &[String], timeout: Duration) {
        if plugged.is_empty() {
            return;
        }
        let undone = match self.check_vcpu_unplug().await {
            Ok(()) => self.unplug_vcpus(vm, plugged, timeout).await,
            Err(e) => Err(e),
        };
        if let Err(e) = undone {
            slog::warn!(self.logger, "vCPUs plugged before the failure stay in the VM";
                "vcpus" => plugged.join(","), "error" => %e);
        }
    }

    /// Unplugs the vCPUs `ids`, last first, each within `timeout`.
    async fn unplug_vcpus(&self, vm: &Vm, ids: &[String], timeout: Duration) -> Result<()> {
        for id in ids.iter().rev() {
            self.qmp
                .execute(qapi::qmp::device_del { id: id.clone() })
                .await?;
            // QEMU 7.2 announces only the vCPU's child (its APIC) as
            // deleted: watch the slot instead.
            let path = format!("{PERIPHERAL}{id}");
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let slots = self.cpu_slots().await?;
                if !slots
                    .iter()
                    .any(|s| s.qom_path.as_deref() == Some(path.as_str()))
                {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::UnplugTimeout {
                        id: id.clone(),
                        timeout,
                    });
                }
                tokio::time::sleep(UNPLUG_POLL).await;
            }
            let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            table.vcpus.retain(|v| &v.id != id);
        }
        Ok(())
    }

    /// [`Hypervisor::resize_memory`](crate::Hypervisor::resize_memory) on QEMU.
    pub(super) async fn resize_memory_now(
        &self,
        memory_mib: u64,
        block_mib: u64,
        timeout: Duration,
    ) -> Result<VmResources> {
        if block_mib == 0 || !block_mib.is_power_of_two() {
            return Err(Error::InvalidMemoryBlock { block_mib });
        }
        let _one_at_a_time = self.resize_lock.lock().await;
        let vm = self.live_vm("resize the memory of")?;
        self.sync_from_vmm(&vm).await?;
        let now = self.vm_resources(Some(&vm));
        if let Some(size_mib) = memory_to_plug(now.memory_mib, memory_mib, block_mib) {
            if now.memory_mib + size_mib > now.max_memory_mib {
                return Err(Error::MemoryAboveMax {
                    requested_mib: now.memory_mib + size_mib,
                    max_mib: now.max_memory_mib,
                });
            }
            self.plug_dimm(&vm, size_mib).await?;
        } else if memory_mib < now.memory_mib {
            self.unplug_dimms_above(&vm, memory_mib, timeout).await?;
        }
        let after = self.vm_resources(Some(&vm));
        slog::info!(self.logger, "memory resized"; "before_mib" => now.memory_mib, "after_mib" => after.memory_mib);
        Ok(after)
    }

    /// Plugs one DIMM of `size_mib` over a new memory backend.
    async fn plug_dimm(&self, vm: &Vm, size_mib: u64) -> Result<()> {
        let index = {
            let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            if table.dimms.len() as u32 >= MEMORY_SLOTS {
                return Err(Error::NoFreeMemorySlot {
                    slots: MEMORY_SLOTS,
                });
            }
            (0..)
                .find(|i| !table.dimms.iter().any(|d| d.id == format!("dimm{i}")))
                .unwrap_or(0)
        };
        let (id, memdev) = (format!("dimm{index}"), format!("mem-dimm{index}"));
        let mut backend = json!({ "id": memdev, "size": size_mib * MIB });
        if self.config.memory.shared {
            backend["qom-type"] = json!("memory-backend-memfd");
            backend["share"] = json!(true);
        } else {
            backend["qom-type"] = json!("memory-backend-ram");
        }
        self.qmp.execute(ObjectAdd(backend)).await?;
        let added = self
            .qmp
            .execute(DeviceAdd(
                json!({ "driver": "pc-dimm", "id": id, "memdev": memdev }),
            ))
            .await;
        if let Err(e) = added {
            if let Err(undo) = self.object_del(&memdev).await {
                slog::warn!(self.logger, "removing the memory backend of a failed DIMM failed";
                    "backend" => &memdev, "error" => %undo);
            }
            return Err(e);
        }
        vm.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dimms
            .push(HotpluggedDimm {
                id,
                memdev,
                size_mib,
            });
        Ok(())
    }

    async fn object_del(&self, id: &str) -> Result<()> {
        self.qmp
            .execute(qapi::qmp::object_del { id: id.to_owned() })
            .await
            .map(drop)
    }

    /// Unplugs DIMMs, newest first, while at least `floor_mib` remains.
    async fn unplug_dimms_above(&self, vm: &Vm, floor_mib: u64, timeout: Duration) -> Result<()> {
        loop {
            let last = {
                let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
                table.dimms.last().cloned()
            };
            let Some(dimm) = last else {
                return Ok(());
            };
            if self.vm_resources(Some(vm)).memory_mib - dimm.size_mib < floor_mib {
                return Ok(());
            }
            self.unplug_dimm(&dimm, timeout).await?;
            let mut table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            table.dimms.retain(|d| d.id != dimm.id);
        }
    }

    /// Asks the guest to release a DIMM, waits for QEMU's
    /// `DEVICE_DELETED`, then removes its backend.
    async fn unplug_dimm(&self, dimm: &HotpluggedDimm, timeout: Duration) -> Result<()> {
        let mut events = self.qmp.subscribe().await?;
        let deleted = async {
            self.qmp
                .execute(qapi::qmp::device_del {
                    id: dimm.id.clone(),
                })
                .await?;
            loop {
                match events.recv().await {
                    Ok(qapi::qmp::Event::DEVICE_DELETED { data, .. })
                        if data.device.as_deref() == Some(dimm.id.as_str()) =>
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
        self.qmp.release_if_idle();
        match outcome {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::UnplugTimeout {
                    id: dimm.id.clone(),
                    timeout,
                });
            }
        }
        self.object_del(&dimm.memdev).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOTS: &str = r#"[
        {"props": {"core-id": 3, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "max-x86_64-cpu"},
        {"props": {"core-id": 2, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "type": "max-x86_64-cpu"},
        {"props": {"core-id": 1, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/peripheral/vcpu-s0-c1-t0", "type": "max-x86_64-cpu"},
        {"props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]", "type": "max-x86_64-cpu"}
    ]"#;

    #[test]
    fn slots_parse_and_name_their_vcpu_after_the_topology() {
        let slots = parse_slots(&serde_json::from_str(SLOTS).unwrap());
        assert_eq!(slots.len(), 4);
        assert_eq!(slots[0].driver, "max-x86_64-cpu");
        assert_eq!(slots[0].vcpu_id(), "vcpu-s0-c3-t0");
        assert_eq!(
            slots[2].qom_path.as_deref(),
            Some("/machine/peripheral/vcpu-s0-c1-t0")
        );
        let mut free: Vec<Slot> = slots.into_iter().filter(|s| s.qom_path.is_none()).collect();
        free.sort_by_key(Slot::order_key);
        assert_eq!(free[0].vcpu_id(), "vcpu-s0-c2-t0", "lowest free slot first");
        assert!(parse_slots(&json!({"not": "a list"})).is_empty());
    }

    #[test]
    fn dimms_parse_with_their_backend_id_and_size() {
        let answer = json!([
            {"type": "dimm", "data": {"id": "dimm0", "memdev": "/objects/mem-dimm0", "size": 268435456,
              "addr": 4294967296u64, "slot": 0, "node": 0, "hotplugged": true, "hotpluggable": true}},
            {"type": "dimm", "data": {"memdev": "/objects/anon", "size": 1}},
            {"type": "virtio-mem", "data": {"id": "vm0"}}
        ]);
        assert_eq!(
            parse_dimms(&answer),
            [HotpluggedDimm {
                id: "dimm0".into(),
                memdev: "mem-dimm0".into(),
                size_mib: 256
            }]
        );
    }

    #[test]
    fn the_record_follows_qemu_keeping_its_order() {
        let recorded = ["b", "a", "gone"];
        let present = ["a", "b", "new"];
        assert_eq!(reconcile(&recorded, &present, |s| *s), ["b", "a", "new"]);
    }

    #[test]
    fn memory_is_plugged_in_whole_blocks() {
        assert_eq!(memory_to_plug(256, 512, 128), Some(256));
        assert_eq!(memory_to_plug(256, 300, 128), Some(128));
        assert_eq!(memory_to_plug(256, 256, 128), None);
        assert_eq!(memory_to_plug(512, 256, 128), None);
        assert_eq!(memory_to_plug(250, 251, 128), Some(128));
    }
}
