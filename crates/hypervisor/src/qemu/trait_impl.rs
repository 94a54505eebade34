//! [`Hypervisor`] for [`Qemu`].

use std::time::Duration;

use async_trait::async_trait;

use super::{Phase, Qemu};
use crate::config::{AGENT_CHANNEL_NAME, AgentChannel, HypervisorConfig};
use crate::device::{AttachedDevice, DeviceKind};
use crate::error::{Error, Result};
use crate::hypervisor::{
    AgentEndpoint, Capabilities, ExitWatch, Hypervisor, HypervisorState, VcpuThread, VmResources,
    VmStatus,
};
use crate::process::ProcessRecord;

#[async_trait]
impl Hypervisor for Qemu {
    fn config(&self) -> &HypervisorConfig {
        &self.config
    }

    fn capabilities(&self) -> Capabilities {
        let mut coldplug = vec![
            DeviceKind::Block,
            DeviceKind::Share9p,
            DeviceKind::ShareVirtioFs,
            DeviceKind::Serial,
            DeviceKind::Network,
        ];
        let mut hotplug = vec![DeviceKind::Block, DeviceKind::Serial, DeviceKind::Network];
        if self.config.memory.shared {
            hotplug.push(DeviceKind::ShareVirtioFs);
        }
        if self.host.vfio {
            coldplug.push(DeviceKind::Vfio);
            hotplug.push(DeviceKind::Vfio);
        }
        if self.host.vhost_vsock {
            coldplug.push(DeviceKind::Vsock);
            hotplug.push(DeviceKind::Vsock);
        }
        Capabilities {
            coldplug,
            hotplug,
            vsock: self.host.vhost_vsock,
            pause: true,
        }
    }

    async fn start(&self, timeout: Duration) -> Result<()> {
        {
            let mut phase = self.lock_phase();
            match &*phase {
                Phase::Prepared | Phase::Stopped => *phase = Phase::Starting(None),
                other => {
                    return Err(Error::InvalidState {
                        op: "start",
                        state: other.name(),
                    });
                }
            }
        }
        self.exit_tx.send_replace(None);
        match self.launch(timeout).await {
            Ok(vm) => {
                slog::info!(self.logger, "QEMU running"; "pid" => vm.pid(),
                    "accelerator" => ?self.accel.accelerator, "runtime_dir" => %self.config.runtime_dir.display());
                *self.lock_phase() = Phase::Running(vm);
                Ok(())
            }
            Err(e) => {
                slog::error!(self.logger, "QEMU failed to start"; "error" => %e);
                *self.lock_phase() = Phase::Stopped;
                Err(e)
            }
        }
    }

    async fn stop(&self, timeout: Duration) -> Result<()> {
        let vm = {
            let mut phase = self.lock_phase();
            match std::mem::replace(&mut *phase, Phase::Stopping) {
                // A start whose future was dropped leaves its process here.
                Phase::Running(vm) | Phase::Starting(Some(vm)) => vm,
                Phase::Prepared => {
                    *phase = Phase::Prepared;
                    return Ok(());
                }
                Phase::Stopped => {
                    *phase = Phase::Stopped;
                    return Ok(());
                }
                other => {
                    let state = other.name();
                    *phase = other;
                    return Err(Error::InvalidState { op: "stop", state });
                }
            }
        };
        self.stop_vm(vm, timeout).await
    }

    async fn pause(&self) -> Result<()> {
        self.live_vm("pause")?;
        self.qmp.execute(qapi::qmp::stop {}).await?;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.live_vm("resume")?;
        self.qmp.execute(qapi::qmp::cont {}).await?;
        Ok(())
    }

    async fn check(&self) -> Result<VmStatus> {
        self.live_vm("check")?;
        match self.query_status().await {
            // The process may have died while the command was in flight.
            Err(e) => match *self.exit_tx.borrow() {
                Some(exit) => Err(self.exited_error(exit)),
                None => Err(e),
            },
            ok => ok,
        }
    }

    async fn vcpu_threads(&self) -> Result<Vec<VcpuThread>> {
        self.live_vm("list the vCPUs of")?;
        let cpus = self.qmp.execute(qapi::qmp::query_cpus_fast {}).await?;
        cpus.into_iter()
            .map(|cpu| match cpu {
                qapi::qmp::CpuInfoFast::x86_64(base) | qapi::qmp::CpuInfoFast::i386(base) => {
                    Ok(VcpuThread {
                        cpu: base.cpu_index as u32,
                        tid: base.thread_id as u32,
                    })
                }
                other => Err(Error::UnexpectedVcpuTarget {
                    target: other.target(),
                }),
            })
            .collect()
    }

    fn vmm_pids(&self) -> Vec<u32> {
        self.vmm_processes().iter().map(|p| p.pid).collect()
    }

    fn vmm_processes(&self) -> Vec<ProcessRecord> {
        match &*self.lock_phase() {
            Phase::Running(vm) if self.exit_tx.borrow().is_none() => {
                vec![vm.process.record().clone()]
            }
            _ => Vec::new(),
        }
    }

    fn agent_endpoint(&self) -> AgentEndpoint {
        match self.config.agent_channel {
            AgentChannel::VirtioSerial => AgentEndpoint::VirtioSerial {
                socket: self.config.agent_socket(),
                port_name: AGENT_CHANNEL_NAME.to_owned(),
                extra_sockets: self.config.agent_sockets().into_iter().skip(1).collect(),
            },
            AgentChannel::Vsock { guest_cid, port } => AgentEndpoint::Vsock { guest_cid, port },
        }
    }

    fn devices(&self) -> Vec<AttachedDevice> {
        let mut devices = self.cold_devices();
        if let Phase::Running(vm) = &*self.lock_phase() {
            let table = vm.devices.lock().unwrap_or_else(|e| e.into_inner());
            devices.extend(table.hotplugged.values().cloned());
        }
        devices
    }

    fn exit_watch(&self) -> ExitWatch {
        ExitWatch::new(self.exit_tx.subscribe())
    }

    fn save_state(&self) -> Result<HypervisorState> {
        self.qemu_state()?.to_hypervisor_state()
    }

    fn resources(&self) -> VmResources {
        let vm = self.running_vm("read the size of").ok();
        self.vm_resources(vm.as_deref())
    }

    async fn resize_vcpus(&self, vcpus: u32, timeout: Duration) -> Result<VmResources> {
        self.resize_vcpus_now(vcpus, timeout).await
    }

    async fn resize_memory(
        &self,
        memory_mib: u64,
        block_mib: u64,
        timeout: Duration,
    ) -> Result<VmResources> {
        self.resize_memory_now(memory_mib, block_mib, timeout).await
    }
}
