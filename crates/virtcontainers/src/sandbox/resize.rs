//! The VM follows the pod (Kata's `updateResources`): when a container
//! comes or grows and the containers need more vCPUs or memory than the
//! VM has ([`crate::vm_size`]), they are hot-plugged, brought online in
//! the guest (the agent's `OnlineCPUMem`), and the guest is waited for
//! until it sees them; only then does the caller create or update the
//! container and re-apply the host cgroups, with the vCPU threads read
//! afresh. So the order is hot-plug, online, re-constrain: no quota is
//! raised before the vCPUs that use it run, and the new vCPU threads join
//! the sandbox cgroup as soon as the container is there.
//!
//! Growing is all or nothing: more than the maxima is
//! [`Error::ResourcesAboveMax`] before anything changes, and a failure at
//! any step undoes the steps before it (memory the guest has not onlined
//! is unplugged; vCPUs are unplugged where the hypervisor can, else they
//! stay, offline in the guest, recorded in the VM's state and constrained
//! like every vCPU).
//!
//! When a container leaves or shrinks, vCPUs are unplugged down to what
//! the rest need (where the hypervisor can: QEMU before 8.0 under TCG
//! cannot, and the vCPUs then stay online; the host quota follows the
//! containers regardless). Memory stays, as in Kata: a guest rarely can
//! give back memory it has used.

use std::time::Duration;

use slog::{info, warn};
use vc_agent_client::protocol::agent as pb;
use vc_cgroups_host::plan::ContainerResources;
use vc_hypervisor::VmResources;

use super::Sandbox;
use crate::error::Error;
use crate::guest_metrics::parse_guest_memory;
use crate::persist::SandboxStore;
use crate::plan::{VmSize, container_resources, vm_size};
use crate::state::SandboxState;

const MIB: u64 = 1 << 20;
/// The pause between two looks at whether the guest sees new memory.
const ONLINE_POLL: Duration = Duration::from_millis(100);

/// What a grow changed, for undoing it when a later step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Growth {
    before: VmResources,
    block_mib: u64,
}

impl Sandbox {
    /// The VM's vCPUs and memory now (boot plus hot-plugged) and the most
    /// it can grow to.
    pub fn vm_resources(&self) -> VmResources {
        self.vm.resources()
    }

    /// The VM size `containers` need, checked against the maxima.
    fn wanted_size(&self, containers: &[ContainerResources]) -> Result<VmSize, Error> {
        let base = &self.settings.vm_base;
        let size =
            vm_size(containers, base).map_err(|source| Error::InvalidCgroupsConfig { source })?;
        base.check(size)?;
        Ok(size)
    }

    /// Grows the VM when `containers` need more than it has: hot-plug,
    /// online, wait until the guest sees it, record the VM's new state.
    /// `None` when nothing was needed. On an error everything it did is
    /// undone (see the module doc for what cannot be).
    pub(crate) async fn grow_for(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        containers: &[ContainerResources],
    ) -> Result<Option<Growth>, Error> {
        let wanted = self.wanted_size(containers)?;
        let before = self.vm.resources();
        let more_vcpus = wanted.vcpus > before.vcpus;
        let more_memory = wanted.memory_mib > before.memory_mib;
        if !more_vcpus && !more_memory {
            // vCPUs there but offline in the guest (from a grow undone
            // where they could not be unplugged) come online now; as in
            // Kata, the call is made on every change and returns at once
            // when they are.
            self.online_within(wanted.vcpus, false, None).await?;
            return Ok(None);
        }
        let block_mib = state
            .guest
            .as_ref()
            .map_or(0, |g| g.mem_block_size_bytes / MIB);
        if more_memory && block_mib == 0 {
            return Err(vc_types::Unsupported::new(
                "memory hot-plug",
                "the guest reported no memory block size (GetGuestDetails)",
            )
            .into());
        }
        let growth = Growth { before, block_mib };
        info!(self.logger, "growing the VM"; "vcpus" => format!("{} -> {}", before.vcpus, wanted.vcpus),
            "memory_mib" => format!("{} -> {}", before.memory_mib, wanted.memory_mib.max(before.memory_mib)));
        let grown = self.plug_and_online(wanted, growth).await;
        if let Err(e) = grown {
            self.undo_growth(store, state, growth).await;
            return Err(e);
        }
        self.record_vm(store, state)?;
        Ok(Some(growth))
    }

    async fn plug_and_online(&self, wanted: VmSize, growth: Growth) -> Result<(), Error> {
        let timeout = self.settings.resize_timeout;
        let before = growth.before;
        // The guest's view before, to know when it sees the new memory.
        let guest_before = match wanted.memory_mib > before.memory_mib {
            true => self.guest_memory_total().await,
            false => None,
        };
        if wanted.vcpus > before.vcpus {
            self.vm
                .resize_vcpus(wanted.vcpus, timeout)
                .await
                .map_err(Error::hypervisor("hot-plug vCPUs"))?;
        }
        let mut added_mib = 0;
        if wanted.memory_mib > before.memory_mib {
            let after = self
                .vm
                .resize_memory(wanted.memory_mib, growth.block_mib, timeout)
                .await
                .map_err(Error::hypervisor("hot-plug memory"))?;
            added_mib = after.memory_mib - before.memory_mib;
        }
        let expected_total = guest_before.map(|t| t + added_mib * MIB);
        self.online_within(wanted.vcpus, added_mib > 0, expected_total)
            .await
    }

    /// [`online`](Self::online) within the resize timeout.
    async fn online_within(
        &self,
        vcpus: u32,
        memory: bool,
        expected_total: Option<u64>,
    ) -> Result<(), Error> {
        let timeout = self.settings.resize_timeout;
        tokio::time::timeout(timeout, self.online(vcpus, memory, expected_total))
            .await
            .map_err(|_| Error::Timeout {
                operation: "the guest to bring the hot-plugged vCPUs and memory online",
                timeout,
            })?
    }

    /// Asks the guest to online what was plugged (until `vcpus` CPUs are
    /// online, and every memory block) and, for memory, looks again until
    /// the guest's total reaches `expected_total` bytes.
    async fn online(
        &self,
        vcpus: u32,
        memory: bool,
        expected_total: Option<u64>,
    ) -> Result<(), Error> {
        loop {
            let request = pb::OnlineCPUMemRequest {
                wait: true,
                nb_cpus: vcpus,
                cpu_only: !memory,
                ..Default::default()
            };
            self.agent
                .online_cpu_mem(request)
                .await
                .map_err(Error::agent("OnlineCPUMem"))?;
            // Memory blocks reach the guest's sysfs asynchronously: online
            // again until it counts them all.
            match expected_total {
                Some(expected)
                    if self
                        .guest_memory_total()
                        .await
                        .is_some_and(|t| t < expected) =>
                {
                    tokio::time::sleep(ONLINE_POLL).await;
                }
                _ => return Ok(()),
            }
        }
    }

    /// The guest's `MemTotal` in bytes, `None` when its agent does not say
    /// (an agent without `GetMetrics`: then the online call is trusted).
    async fn guest_memory_total(&self) -> Option<u64> {
        match self.agent.get_metrics().await {
            Ok(text) => parse_guest_memory(&text).map(|m| m.total_bytes),
            Err(e) => {
                warn!(self.logger, "the guest's memory cannot be read"; "error" => crate::error::chain(&e));
                None
            }
        }
    }

    /// Undoes a grow after a later step failed, as far as the hypervisor
    /// can, records the VM as it is then and places its vCPU threads for
    /// the containers `state` has (the caller's change is not in it).
    pub(crate) async fn undo_growth(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
        growth: Growth,
    ) {
        let timeout = self.settings.resize_timeout;
        let before = growth.before;
        if self.vm.resources().memory_mib > before.memory_mib
            && let Err(e) = self
                .vm
                .resize_memory(before.memory_mib, growth.block_mib, timeout)
                .await
        {
            warn!(self.logger, "hot-plugged memory stays in the VM"; "error" => crate::error::chain(&e));
        }
        if self.vm.resources().vcpus > before.vcpus
            && let Err(e) = self.vm.resize_vcpus(before.vcpus, timeout).await
        {
            warn!(self.logger, "hot-plugged vCPUs stay in the VM, offline in the guest"; "error" => crate::error::chain(&e));
        }
        if let Err(e) = self.record_vm(store, state) {
            warn!(self.logger, "the VM's state is not recorded"; "error" => crate::error::chain(&e));
        }
        if self.vm.resources() != before
            && let Err(e) = self.update_cgroups(state).await
        {
            warn!(self.logger, "host cgroups not updated after an undone grow"; "error" => crate::error::chain(&e));
        }
    }

    /// Unplugs the vCPUs the containers of `state` no longer need, where
    /// the hypervisor can; never fails (the containers' change is done):
    /// what stays is logged. Memory stays.
    pub(crate) async fn shrink_to_containers(
        &self,
        store: &SandboxStore,
        state: &mut SandboxState,
    ) {
        let containers = container_resources(state);
        let Ok(wanted) = vm_size(&containers, &self.settings.vm_base) else {
            return;
        };
        let now = self.vm.resources();
        if wanted.vcpus >= now.vcpus {
            return;
        }
        match self
            .vm
            .resize_vcpus(wanted.vcpus, self.settings.resize_timeout)
            .await
        {
            Ok(after) => {
                info!(self.logger, "vCPUs unplugged"; "before" => now.vcpus, "after" => after.vcpus)
            }
            Err(vc_hypervisor::Error::Unsupported(u)) => {
                info!(self.logger, "vCPUs stay"; "vcpus" => now.vcpus, "needed" => wanted.vcpus, "why" => %u)
            }
            Err(e) => {
                warn!(self.logger, "vCPUs not unplugged"; "error" => crate::error::chain(&e));
            }
        }
        if let Err(e) = self.record_vm(store, state) {
            warn!(self.logger, "the VM's state is not recorded"; "error" => crate::error::chain(&e));
        }
    }

    /// Records the VM's state (its hot-plugged vCPUs, memory and devices)
    /// for the processes that attach to it later.
    fn record_vm(&self, store: &SandboxStore, state: &mut SandboxState) -> Result<(), Error> {
        state.resources.vm = Some(
            self.vm
                .save_state()
                .map_err(Error::hypervisor("save the VM's state"))?,
        );
        store.write(state)
    }
}
