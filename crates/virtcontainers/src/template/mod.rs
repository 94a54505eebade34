//! VM templating (Kata's template factory, opt-in): boot a VM once, save
//! it, and start the next VMs from the saved state instead of booting
//! them.
//!
//! [`TemplateFactory::init`] boots a VM shaped like the sandboxes to come
//! (a prototype [`SandboxConfig`]) with its RAM in a file on a tmpfs the
//! factory mounts, waits for its agent, saves its device state and stops
//! it. [`TemplateFactory`] as a [`VmFactory`] then starts each sandbox's VM
//! from that state, mapping the RAM file private: pages a clone only reads
//! stay shared between all clones (in the page cache, counted once), pages
//! it writes become its own. Each clone gets fresh entropy
//! (`ReseedRandomDev`) and the host's time (`SetGuestDateTime`) before it
//! is handed over. A sandbox whose VM does not match the template
//! ([`TemplateKey`]) boots cold, and the log names the field that differs;
//! so does one started while there is no usable template.
//!
//! The template lives on disk and serves every process: the next CLI
//! call, another shim. Its record is written last and atomically, so an
//! `init` killed at any point leaves an unusable template that is never
//! cloned, and that the next `init` (or `destroy`) clears.
//!
//! # What a clone brings itself
//!
//! The agent channel's sockets (its own runtime directory), the 9p share
//! (the device is in the template, its host directory is the clone's own,
//! and the guest mounts it only after the clone resumes), hot-plugged
//! devices and NICs. virtio-fs needs guest memory shared with
//! `virtiofsd`, which a private copy-on-write mapping is not: template
//! sandboxes use the 9p share ([`crate::FsShareKind::NineP`]) or block
//! rootfs; a virtio-fs sandbox never matches and boots cold.
//!
//! # Security
//!
//! Clones share the template's memory pages until they write them. That
//! is the page-sharing side channel of CVE-2015-2877 (KSM): a clone can
//! learn, by timing its writes, whether another clone still shares a page.
//! The guest kernel's and agent's memory is the template's in every
//! clone, address-space layout randomization included: the clones of one
//! template are not independent of one another. Templates are opt-in for
//! that reason; use them for workloads that trust each other, and never
//! share one template between tenants. The random generator is reseeded
//! in every clone, so keys made after the clone starts differ.

mod init;
mod key;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slog::{Logger, info, warn};
use vc_agent_client::{Agent, AgentConfig, TtrpcAgent};
use vc_hypervisor::{AgentEndpoint, Hypervisor, HypervisorConfig, MemoryFile, QemuOptions};

pub use key::{FileIdentity, KeyMismatch, TemplateKey};
pub use store::{DestroyReport, TemplateInfo, TemplateStatus};

use self::store::Layout;
use crate::config::SandboxConfig;
use crate::dir_lock::DirLock;
use crate::error::Error;
use crate::factory::{QemuFactory, VmFactory, plug_nics, split_nics, transport_for};
use crate::persist::LockMode;

/// Where a template lives by default.
pub const DEFAULT_TEMPLATE_DIR: &str = "/run/vc/template";
/// Bytes of host entropy each clone gets.
pub const RESEED_BYTES: usize = 64;

/// Where a template lives and how its VMs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateConfig {
    /// The template's directory ([`DEFAULT_TEMPLATE_DIR`]).
    pub dir: PathBuf,
    /// The QEMU options of the template VM, its clones, and the VMs booted
    /// cold when a sandbox does not match.
    pub qemu: QemuOptions,
    /// How long making the template may take (boot, agent, save).
    pub init_timeout: Duration,
    /// How long `init` and `destroy` wait for another process making or
    /// destroying the same template.
    pub lock_timeout: Duration,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig {
            dir: DEFAULT_TEMPLATE_DIR.into(),
            qemu: QemuOptions::default(),
            init_timeout: Duration::from_secs(120),
            lock_timeout: Duration::from_secs(30),
        }
    }
}

/// A [`VmFactory`] that starts VMs from a template when they match it and
/// boots them otherwise (see the [module](self) docs).
#[derive(Debug)]
pub struct TemplateFactory {
    config: TemplateConfig,
    layout: Layout,
    cold: QemuFactory,
}

impl TemplateFactory {
    /// A factory for the template at `config.dir` (made or not yet).
    pub fn new(config: TemplateConfig) -> Self {
        TemplateFactory {
            layout: Layout::new(&config.dir),
            cold: QemuFactory::new(config.qemu.clone()),
            config,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &TemplateConfig {
        &self.config
    }

    /// Makes the template for sandboxes shaped like `prototype` (its VM
    /// config, share and containers' resources: what
    /// [`crate::plan_sandbox`] makes of it), replacing any template or
    /// leftover of a failed `init` in the directory. On failure nothing is
    /// left: no VM, no mount, no file.
    pub async fn init(
        &self,
        prototype: &SandboxConfig,
        logger: &Logger,
    ) -> Result<TemplateInfo, Error> {
        let vm = init::template_vm_config(prototype, &self.layout)?;
        let lock = self.lock().await?;
        let cleared = store::remove_all(&self.layout, logger).await?;
        if cleared != DestroyReport::default() {
            info!(logger, "replacing the previous template"; "previous" => ?cleared);
        }
        match self.build(vm, logger).await {
            Ok(info) => Ok(info),
            Err(e) => {
                if let Err(cleanup) = store::remove_all(&self.layout, logger).await {
                    warn!(logger, "cleaning up a failed template init"; "error" => crate::error::chain(&cleanup));
                }
                let _ = lock.remove_file();
                let _ = std::fs::remove_dir(self.layout.dir());
                Err(e)
            }
        }
    }

    /// The template's state, checked (see [`TemplateStatus`]).
    pub fn status(&self) -> Result<TemplateStatus, Error> {
        store::status(&self.layout)
    }

    /// Removes the template: its record first (no clone starts from it
    /// afterwards), the processes of an `init` that died, the tmpfs (a
    /// tmpfs still mapped by running clones is detached: its memory goes
    /// with the last of them) and every file, the directory included.
    pub async fn destroy(&self, logger: &Logger) -> Result<DestroyReport, Error> {
        let lock = self.lock().await?;
        let report = store::remove_all(&self.layout, logger).await?;
        lock.remove_file()?;
        crate::sandbox::remove_empty_dir(self.layout.dir())?;
        info!(logger, "VM template destroyed"; "dir" => %self.layout.dir().display(), "report" => ?report);
        Ok(report)
    }

    async fn lock(&self) -> Result<DirLock, Error> {
        DirLock::acquire(
            &self.layout.lock(),
            LockMode::Exclusive,
            self.config.lock_timeout,
        )
        .await
    }

    /// How to start a clone of the template for `config`: the clone's
    /// config (the template's RAM file mapped private) and the device state
    /// to start it from, the template kept (shared lock) until the plan is
    /// dropped. `None` (logged why) when there is no usable template or
    /// `config` does not match it.
    pub(crate) async fn clone_plan(
        &self,
        config: &HypervisorConfig,
        logger: &Logger,
    ) -> Result<Option<ClonePlan>, Error> {
        // Nothing made on the host for a template that is not there.
        if !self.layout.record().exists() {
            warn!(logger, "no VM template: booting cold"; "dir" => %self.layout.dir().display());
            return Ok(None);
        }
        let Some(lock) = DirLock::try_acquire(&self.layout.lock(), LockMode::Shared)? else {
            warn!(logger, "VM template being made or destroyed: booting cold");
            return Ok(None);
        };
        let info = match store::status(&self.layout)? {
            TemplateStatus::Ready(info) => *info,
            TemplateStatus::Absent => {
                warn!(logger, "no VM template: booting cold");
                return Ok(None);
            }
            TemplateStatus::Unusable { reason } => {
                warn!(logger, "VM template unusable: booting cold"; "reason" => reason);
                return Ok(None);
            }
        };
        let wanted = TemplateKey::of_compared_to(config, &self.config.qemu, &info.key).await?;
        if let Some(m) = info.key.first_difference(&wanted) {
            warn!(logger, "VM does not match the template: booting cold";
                "field" => &m.field, "template" => &m.template, "sandbox" => &m.wanted);
            return Ok(None);
        }
        let mut clone = config.clone();
        clone.memory_file = Some(MemoryFile {
            path: self.layout.memory_file(),
            shared: false,
        });
        Ok(Some(ClonePlan {
            config: clone,
            state: self.layout.state(),
            _lock: lock,
        }))
    }

    /// A clone of the template for `config`, its agent refreshed; `None`
    /// (logged why) when there is no usable template or it does not match.
    async fn clone_vm(
        &self,
        config: &HypervisorConfig,
        timeout: Duration,
        logger: &Logger,
    ) -> Result<Option<Arc<dyn Hypervisor>>, Error> {
        let Some(plan) = self.clone_plan(config, logger).await? else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        let vm = self.cold.new_vm(plan.config.clone(), logger)?;
        vm.start_from_state(&plan.state, timeout)
            .await
            .map_err(Error::hypervisor("start the VM from its template"))?;
        drop(plan);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = refresh(&vm.agent_endpoint(), left, logger).await {
            let _ = vm.stop(Duration::from_secs(5)).await;
            return Err(e);
        }
        Ok(Some(vm))
    }
}

/// How to start one clone (see [`TemplateFactory::clone_plan`]).
pub(crate) struct ClonePlan {
    /// The clone's config.
    pub(crate) config: HypervisorConfig,
    /// The device state to start it from.
    pub(crate) state: PathBuf,
    _lock: DirLock,
}

/// What no clone may keep from its template: host entropy into the
/// guest's random pool, the host's time into its clock.
pub(crate) async fn refresh(
    endpoint: &AgentEndpoint,
    timeout: Duration,
    logger: &Logger,
) -> Result<(), Error> {
    let config = AgentConfig {
        connect_timeout: timeout,
        ..AgentConfig::default()
    };
    let agent = TtrpcAgent::connect(transport_for(endpoint), config, logger)
        .await
        .map_err(Error::agent("connect to the cloned VM's agent"))?;
    refresh_agent(&agent).await
}

/// [`refresh`] over a connected agent.
pub(crate) async fn refresh_agent(agent: &dyn Agent) -> Result<(), Error> {
    let mut seed = [0u8; RESEED_BYTES];
    let random = std::path::Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(random).map_err(Error::host_io("open", random))?,
        &mut seed,
    )
    .map_err(Error::host_io("read", random))?;
    agent
        .reseed_random_dev(&seed)
        .await
        .map_err(Error::agent("ReseedRandomDev"))?;
    agent
        .set_guest_date_time(SystemTime::now())
        .await
        .map_err(Error::agent("SetGuestDateTime"))
}

crate::factory::impl_vm_factory_with_cold_fallback! {
    TemplateFactory {
        /// A clone when the template is usable and matches, else a cold boot;
        /// a clone that fails to come up is logged and replaced by a cold boot.
        /// A clone's NICs are hot-plugged once it runs (the template has
        /// none).
        async fn start_vm(
            &self,
            config: HypervisorConfig,
            timeout: Duration,
            logger: &Logger,
        ) -> Result<Arc<dyn Hypervisor>, Error> {
            let started = Instant::now();
            let mut bare = config.clone();
            let nics = split_nics(&mut bare);
            match self.clone_vm(&bare, timeout, logger).await {
                Ok(Some(vm)) => {
                    info!(logger, "VM started from its template"; "took" => ?started.elapsed());
                    return plug_nics(vm, nics, logger).await;
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(logger, "cloning the VM template failed: booting cold"; "error" => crate::error::chain(&e));
                }
            }
            let left = timeout.saturating_sub(started.elapsed());
            self.cold.start_vm(config, left, logger).await
        }

    }
}
