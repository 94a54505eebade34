//! Making a template: boot a VM with its RAM in a shared file on the
//! template's tmpfs, wait for its agent, let go of it, save its device
//! state, stop it, and write the record last.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slog::{Logger, info};
use vc_agent_client::{Agent, AgentConfig, TtrpcAgent};
use vc_hypervisor::{
    Device, Hypervisor, HypervisorConfig, MemoryFile, ProcessLifetime, ShareBackend,
};

use super::TemplateFactory;
use super::key::TemplateKey;
use super::store::{self, Layout, TemplateInfo};
use crate::config::SandboxConfig;
use crate::error::Error;
use crate::factory::{VmFactory, transport_for};
use crate::fs_share::ShareKind;
use crate::plan::plan_sandbox;

/// The template VM's name (QEMU's `-name`).
const TEMPLATE_VM_NAME: &str = "vc-template";
/// How long the guest gets to notice that the host hung up before its
/// state is saved: a clone must not wake up inside the template's agent
/// session.
const HANG_UP_GRACE: Duration = Duration::from_millis(500);
/// How long the template VM gets to quit once saved.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The template VM's config: what `prototype`'s sandboxes boot, with its
/// files in the template's directory and its RAM in the shared memory
/// file. Only a 9p share can be templated: a clone maps the template's
/// memory private, and virtio-fs needs shared memory.
pub(super) fn template_vm_config(
    prototype: &SandboxConfig,
    layout: &Layout,
) -> Result<HypervisorConfig, Error> {
    let plan = plan_sandbox(prototype)?;
    if let ShareKind::VirtioFs { .. } = plan.share.kind {
        return Err(vc_types::Unsupported::new(
            "a VM template of a virtio-fs sandbox",
            "clones map the template's memory privately and virtio-fs needs shared memory: \
             use the 9p share (FsShareKind::NineP) or block rootfs",
        )
        .into());
    }
    let mut vm = plan.vm;
    vm.name = TEMPLATE_VM_NAME.into();
    vm.runtime_dir = layout.vm_dir();
    // Dies with the process making it: an init killed at any point leaves
    // no VM running.
    vm.lifetime = ProcessLifetime::DiesWithOwner;
    vm.keep_logs = false;
    for device in &mut vm.devices {
        if let Device::SharedDir(share) = device
            && let ShareBackend::NineP { host_path, .. } = &mut share.backend
        {
            *host_path = layout.share_dir();
        }
    }
    vm.memory_file = Some(MemoryFile {
        path: layout.memory_file(),
        shared: true,
    });
    Ok(vm)
}

impl TemplateFactory {
    /// The steps of `init` after the old template is gone; the caller
    /// cleans up on failure.
    pub(super) async fn build(
        &self,
        vm_config: HypervisorConfig,
        logger: &Logger,
    ) -> Result<TemplateInfo, Error> {
        let layout = &self.layout;
        let deadline = Instant::now() + self.config.init_timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        for dir in [layout.dir().to_owned(), layout.share_dir()] {
            std::fs::create_dir_all(&dir).map_err(Error::host_io("create directory", &dir))?;
        }
        store::mount_memory(layout, vm_config.memory.boot_mib)?;
        let key = TemplateKey::of(&vm_config, &self.config.qemu).await?;
        let booted = Instant::now();
        let vm = self.cold.start_vm(vm_config, left(), logger).await?;
        let saved = self.boot_and_save(vm.as_ref(), left(), logger).await;
        let stopped = vm
            .stop(STOP_TIMEOUT)
            .await
            .map_err(Error::hypervisor("stop the template VM"));
        let boot_time = saved?;
        stopped?;
        let state = layout.state();
        std::fs::File::open(&state)
            .and_then(|f| f.sync_all())
            .map_err(Error::host_io("sync", &state))?;
        let len = |p: &std::path::Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(Error::host_io("read", p))
        };
        let info = TemplateInfo {
            key,
            saved_at: SystemTime::now(),
            boot_time,
            memory_bytes: len(&layout.memory_file())?,
            state_bytes: len(&state)?,
            state_hash: store::hash_file(&state)?,
        };
        store::write_record(layout, &info)?;
        info!(logger, "VM template saved"; "dir" => %layout.dir().display(),
            "boot_to_agent" => ?boot_time, "total" => ?booted.elapsed(),
            "state_bytes" => info.state_bytes);
        Ok(info)
    }

    /// Waits for the agent, hangs up, saves the device state; returns how
    /// long the boot to the agent took.
    async fn boot_and_save(
        &self,
        vm: &dyn Hypervisor,
        timeout: Duration,
        logger: &Logger,
    ) -> Result<Duration, Error> {
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        let config = AgentConfig {
            connect_timeout: timeout,
            ..AgentConfig::default()
        };
        let agent: Arc<dyn Agent> = Arc::new(
            TtrpcAgent::connect(transport_for(&vm.agent_endpoint()), config, logger)
                .await
                .map_err(Error::agent("connect to the template VM's agent"))?,
        );
        agent
            .check()
            .await
            .map_err(Error::agent("check the template VM's agent"))?;
        let boot_time = started.elapsed();
        drop(agent);
        tokio::time::sleep(HANG_UP_GRACE).await;
        vm.save_device_state(
            &self.layout.state(),
            deadline.saturating_duration_since(Instant::now()),
        )
        .await
        .map_err(Error::hypervisor("save the template VM's device state"))?;
        Ok(boot_time)
    }
}
