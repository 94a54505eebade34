//! A pool of booted VMs (Kata's VMCache): [`VmPool`] keeps `size` VMs
//! shaped like a prototype sandbox's booted (or cloned from a template)
//! and ready, hands one over per sandbox, and starts the next in the
//! background. [`PoolFactory`] is the [`VmFactory`](crate::VmFactory) that takes from a pool
//! in this process ([`PoolFactory::local`]) or from one another process
//! serves over a unix socket ([`VmPool::serve`], [`PoolFactory::remote`]).
//!
//! The sandbox that receives a VM owns it as if it had booted it: the VM's
//! runtime and share directories are moved to the sandbox's own (so the
//! pool's directory must be on the same filesystem as the sandboxes'
//! runtime and share roots), its state is the sandbox's like any other
//! VM's, and [`crate::fetch_sandbox`], [`crate::reclaim`] and dropping the
//! [`crate::Sandbox`] work as they do for a VM booted in place. One
//! difference: a VM another process (a pool daemon) started is not a
//! child of the process that receives it, so if that process is killed
//! (SIGKILL, no chance to stop it) a VM of a sandbox that should die with
//! it lives on until [`crate::reclaim_stale`] ends it.
//!
//! A sandbox whose VM does not match the pool's (the fields of
//! [`crate::template::TemplateKey`], and a lifetime the pool's VMs cannot
//! have) boots cold, the log naming the field. When the pool is empty a
//! take waits up to [`PoolConfig::take_wait`] for the start under way (it
//! began when the last VM was taken, so it ends before a cold boot
//! would), then boots cold. Template sandboxes' rules hold for pools of
//! clones: 9p share or block rootfs, not virtio-fs.
//!
//! The pool's VMs boot in the background: every thread of their VMM is
//! in the `SCHED_IDLE` CPU class until it is handed over, so a refill
//! that starts as a sandbox takes its VM only uses CPU time no sandbox
//! wants (on a busy host the refill takes longer instead). That needs
//! `CAP_SYS_NICE`, which moving a thread back to the normal class
//! requires; without it the pool's VMs boot at normal priority.
//!
//! [`VmPool::shutdown`] stops every VM the pool holds (not those it handed
//! over). A pool whose process is killed leaves VMs that die with it, or,
//! for a pool serving other processes (its VMs outlive it), VMs the next
//! pool started on the same directory ends first.

mod client;
mod core;
mod qemu;
mod server;
mod warm_up;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use slog::{Logger, info, warn};
use vc_hypervisor::process::ProcessLedger;
use vc_hypervisor::{
    Hypervisor, HypervisorConfig, HypervisorState, ProcessLifetime, Qemu, QemuOptions,
};

pub use self::client::status as remote_status;
pub use self::core::PoolCounts;
pub use self::server::{PoolReply, PoolRequest};

use self::core::Core;
use self::qemu::{HandOverError, QemuSpawner, hand_over, lifetime_fits, remove_slot};
use crate::config::SandboxConfig;
use crate::dir_lock::DirLock;
use crate::error::Error;
use crate::factory::{QemuFactory, plug_nics, split_nics};
use crate::persist::LockMode;
use crate::plan::plan_sandbox;
use crate::template::{KeyMismatch, TemplateConfig, TemplateFactory, TemplateKey};

/// Where a served pool listens by default ([`VmPool::serve`],
/// [`PoolFactory::remote`]).
pub const DEFAULT_POOL_SOCKET: &str = "/run/vc/pool.sock";

/// Where a pool keeps its VMs by default (beside the default runtime and
/// share roots, on the same filesystem).
pub const DEFAULT_POOL_DIR: &str = "/run/vc/pool";

/// [`PoolConfig::refill_delay`] by default: a sandbox start from a pool VM
/// takes well under a second, even under TCG.
pub const DEFAULT_REFILL_DELAY: Duration = Duration::from_secs(1);

/// How a pool is made.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The pool's directory ([`DEFAULT_POOL_DIR`]): one per pool, on the
    /// filesystem of the sandboxes' runtime and share roots.
    pub dir: PathBuf,
    /// How many VMs to keep ready.
    pub size: usize,
    /// The sandboxes the pool serves, as [`crate::plan_sandbox`] sees
    /// them: their VM's shape (sizes, kernel, share) and lifetime.
    pub prototype: SandboxConfig,
    /// The QEMU options of the pool's VMs (and of the cold boots of the
    /// sandboxes it cannot serve).
    pub qemu: QemuOptions,
    /// Clone the VMs from this template when it is usable and matches
    /// (boot them otherwise).
    pub template: Option<TemplateConfig>,
    /// Whether the VMs outlive this process: a pool that serves other
    /// processes ([`VmPool::serve`]) hands over VMs that must not die when
    /// the pool does. Default: they die with it (and with the sandboxes of
    /// this process that took them).
    pub outlive_owner: bool,
    /// How long a take waits for a VM when the pool is empty.
    pub take_wait: Duration,
    /// How long after a take the pool waits before it starts the next VM
    /// (unless a take is waiting for one): the sandbox that took a VM
    /// starts first. Even at idle CPU priority a boot slows the host's
    /// other work (shared caches, and the host's own CPUs may be
    /// shared), and a sandbox start is the moment that latency counts.
    pub refill_delay: Duration,
    /// A container run to its end in each VM before it joins the pool
    /// (for instance `true` in the image your sandboxes use), through the
    /// calls a sandbox makes; then removed, nothing of it left in the VM
    /// or the pool's directory. Under TCG a VM's first container costs
    /// about twice its next ones (guest code is translated on first use);
    /// the warm-up pays that while the VM waits in the pool instead of
    /// during a sandbox start. Its rootfs and mounts are shared into the
    /// VM as a sandbox container's are (writable, as they would be); its
    /// output is read and dropped; a non-zero exit is logged, not an
    /// error. Default: none.
    pub warm_up: Option<crate::config::ContainerConfig>,
}

impl PoolConfig {
    /// A pool of `size` VMs for sandboxes like `prototype`, in
    /// [`DEFAULT_POOL_DIR`], booted cold, dying with this process.
    pub fn new(prototype: SandboxConfig, size: usize) -> Self {
        PoolConfig {
            dir: DEFAULT_POOL_DIR.into(),
            size,
            prototype,
            qemu: QemuOptions::default(),
            template: None,
            outlive_owner: false,
            take_wait: Duration::from_secs(60),
            refill_delay: DEFAULT_REFILL_DELAY,
            warm_up: None,
        }
    }
}

/// A pool of booted VMs (see the [module](self) docs).
pub struct VmPool {
    core: Arc<Core<QemuSpawner>>,
    key: TemplateKey,
    lifetime: ProcessLifetime,
    take_wait: Duration,
    start_timeout: Duration,
    dir: PathBuf,
    lock: DirLock,
    logger: Logger,
}

impl std::fmt::Debug for VmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmPool")
            .field("dir", &self.dir)
            .field("counts", &self.core.counts())
            .finish_non_exhaustive()
    }
}

impl VmPool {
    /// Checks the prototype (and the warm-up container), takes the pool's directory (one pool per
    /// directory), ends what a pool killed there left, and starts filling
    /// the pool in the background.
    pub async fn start(config: PoolConfig, logger: Logger) -> Result<Arc<Self>, Error> {
        let plan = plan_sandbox(&config.prototype)?;
        if let Some(container) = &config.warm_up {
            // A warm-up that cannot run is an error now, not a pool that
            // never fills.
            crate::plan::plan_container(container)?;
        }
        let lifetime = match config.outlive_owner {
            true => ProcessLifetime::OutlivesOwner,
            false => config.prototype.lifetime.into(),
        };
        let mut base = plan.vm;
        base.lifetime = lifetime;
        let lock_path = config.dir.join("lock");
        let lock = DirLock::try_acquire(&lock_path, LockMode::Exclusive)?.ok_or_else(|| {
            Error::FactoryLockTimeout {
                path: lock_path.clone(),
                timeout: Duration::ZERO,
            }
        })?;
        check_same_filesystem(&config.dir, &config.prototype)?;
        reclaim_slots(&config.dir, &logger).await?;
        let key = TemplateKey::of(&base, &config.qemu).await?;
        let logger = logger.new(slog::o!("pool" => config.dir.display().to_string()));
        let spawner = QemuSpawner {
            dir: config.dir.clone(),
            base,
            options: config.qemu.clone(),
            template: config.template.clone().map(TemplateFactory::new),
            start_timeout: config.prototype.vm.start_timeout,
            background: crate::process::can_leave_idle_class(),
            warm_up: config.warm_up.clone(),
            logger: logger.clone(),
        };
        info!(logger, "VM pool starting"; "size" => config.size, "lifetime" => ?lifetime,
            "template" => config.template.as_ref().map(|t| t.dir.display().to_string()));
        Ok(Arc::new(VmPool {
            core: Core::start(spawner, config.size, config.refill_delay, logger.clone()),
            key,
            lifetime,
            take_wait: config.take_wait,
            start_timeout: config.prototype.vm.start_timeout,
            dir: config.dir,
            lock,
            logger,
        }))
    }

    /// Its counters.
    pub fn counts(&self) -> PoolCounts {
        self.core.counts()
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a VM for `wanted` (a sandbox's planned VM) and moves it into
    /// place: the state to adopt it from ([`Qemu::adopt`]), or why not
    /// (logged; the caller boots cold).
    pub async fn take(
        &self,
        wanted: &HypervisorConfig,
        logger: &Logger,
    ) -> Result<HypervisorState, NotTaken> {
        let key = TemplateKey::of_compared_to(wanted, &self.core.spawner().options, &self.key)
            .await
            .map_err(NotTaken::Error)?;
        if let Some(m) = self.key.first_difference(&key) {
            warn!(logger, "VM does not match the pool: booting cold";
                "field" => &m.field, "pool" => &m.template, "sandbox" => &m.wanted);
            return Err(NotTaken::Mismatch(m));
        }
        if !lifetime_fits(self.lifetime, wanted.lifetime) {
            let m = KeyMismatch {
                field: "lifetime".into(),
                template: format!("{:?}", self.lifetime),
                wanted: format!("{:?}", wanted.lifetime),
            };
            warn!(logger, "VM does not match the pool: booting cold"; "field" => &m.field);
            return Err(NotTaken::Mismatch(m));
        }
        let Some(vm) = self.core.take(self.take_wait).await else {
            warn!(logger, "VM pool empty: booting cold"; "waited" => ?self.take_wait);
            return Err(NotTaken::Empty);
        };
        match hand_over(vm, wanted) {
            Ok(state) => {
                info!(logger, "VM taken from the pool"; "counts" => ?self.core.counts());
                Ok(state)
            }
            Err(HandOverError { vm, error }) => {
                warn!(logger, "handing over a pool VM failed"; "error" => crate::error::chain(&error));
                if let Some(vm) = vm {
                    self.core.put_back(*vm).await;
                }
                Err(NotTaken::Error(error))
            }
        }
    }

    /// Stops every VM the pool holds (and the one being started) and
    /// removes its directory. VMs it handed over are not its any more.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.core.shutdown(self.start_timeout).await;
        reclaim_slots(&self.dir, &self.logger).await?;
        self.lock.remove_file()?;
        crate::sandbox::remove_empty_dir(&self.dir)
    }
}

/// Why a pool did not hand a VM over.
#[derive(Debug)]
pub enum NotTaken {
    /// The sandbox's VM differs from the pool's.
    Mismatch(KeyMismatch),
    /// No VM became ready in time.
    Empty,
    /// Something failed (logged).
    Error(Error),
}

/// Refuses a pool whose VMs could not be moved into the prototype's
/// sandboxes' directories (`rename(2)` stays within one filesystem).
fn check_same_filesystem(dir: &Path, prototype: &SandboxConfig) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let device = |path: &Path| -> Result<u64, Error> {
        // The nearest existing ancestor: the roots may not exist yet.
        let existing = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        std::fs::metadata(existing)
            .map(|m| m.dev())
            .map_err(Error::host_io("read", existing))
    };
    let ours = device(dir)?;
    for root in [&prototype.paths.runtime_root, &prototype.paths.shared_root] {
        if device(root)? != ours {
            return Err(vc_types::Unsupported::new(
                "a VM pool on another filesystem than its sandboxes' directories",
                format!(
                    "{} and {} are on different filesystems: VMs are handed over by rename(2)",
                    dir.display(),
                    root.display()
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Ends the VMs a pool left in `dir` (recorded in each slot's ledger)
/// and removes their slots.
async fn reclaim_slots(dir: &Path, logger: &Logger) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for slot in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let ledger = ProcessLedger::open(slot.join("vm"));
        let left =
            tokio::task::spawn_blocking(move || ledger.terminate_all(Duration::from_secs(2)))
                .await
                .map_err(|e| Error::Helper {
                    program: slot.clone(),
                    reason: format!("ending a pool VM panicked: {e}"),
                })?
                .map_err(Error::hypervisor("end a pool VM"))?;
        if let Some(p) = left.first() {
            return Err(Error::Helper {
                program: p.program.clone(),
                reason: format!("pid {} survived SIGKILL", p.pid),
            });
        }
        remove_slot(&slot, logger);
    }
    Ok(())
}

/// Where a [`PoolFactory`] takes its VMs from.
#[derive(Debug, Clone)]
enum Source {
    Local(Arc<VmPool>),
    Remote(PathBuf),
}

/// A [`VmFactory`](crate::VmFactory) that takes each sandbox's VM from a pool (in this
/// process, or served by another), booting cold when the pool cannot
/// serve it.
#[derive(Debug, Clone)]
pub struct PoolFactory {
    source: Source,
    cold: QemuFactory,
    /// How long a request to a pool daemon may take.
    remote_timeout: Duration,
}

impl PoolFactory {
    /// Takes from `pool`, in this process.
    pub fn local(pool: Arc<VmPool>) -> Self {
        PoolFactory {
            cold: QemuFactory::new(pool.core.spawner().options.clone()),
            remote_timeout: pool.take_wait + pool.start_timeout,
            source: Source::Local(pool),
        }
    }

    /// Takes from the pool served at `socket` ([`VmPool::serve`]); boots
    /// cold with `qemu` when it cannot.
    pub fn remote(socket: impl Into<PathBuf>, qemu: QemuOptions) -> Self {
        PoolFactory {
            source: Source::Remote(socket.into()),
            cold: QemuFactory::new(qemu),
            remote_timeout: Duration::from_secs(120),
        }
    }

    async fn take(&self, wanted: &HypervisorConfig, logger: &Logger) -> Option<HypervisorState> {
        match &self.source {
            Source::Local(pool) => pool.take(wanted, logger).await.ok(),
            Source::Remote(socket) => {
                client::take(socket, wanted, self.remote_timeout, logger).await
            }
        }
    }
}

crate::factory::impl_vm_factory_with_cold_fallback! {
    PoolFactory {
        /// A VM from the pool, owned by the caller from now on; a cold boot
        /// when the pool cannot serve `config`.
        async fn start_vm(
            &self,
            config: HypervisorConfig,
            timeout: Duration,
            logger: &Logger,
        ) -> Result<Arc<dyn Hypervisor>, Error> {
            let mut bare = config.clone();
            let nics = split_nics(&mut bare);
            let Some(state) = self.take(&bare, logger).await else {
                return self.cold.start_vm(config, timeout, logger).await;
            };
            match Qemu::adopt(state, logger.clone()).await {
                Ok(vm) => plug_nics(Arc::new(vm), nics, logger).await,
                Err(e) => {
                    // Moved into the sandbox's runtime dir, owned by nobody:
                    // end it from its ledger there.
                    end_orphan(&config.runtime_dir, logger).await;
                    Err(Error::hypervisor("take over a VM from the pool")(e))
                }
            }
        }

    }
}

/// Ends whatever the ledger of `runtime_dir` records (a VM handed over
/// that nobody took).
pub(crate) async fn end_orphan(runtime_dir: &Path, logger: &Logger) {
    let ledger = ProcessLedger::open(runtime_dir);
    let ended =
        tokio::task::spawn_blocking(move || ledger.terminate_all(Duration::from_secs(2))).await;
    if !matches!(ended, Ok(Ok(ref left)) if left.is_empty()) {
        warn!(logger, "a VM handed over by the pool may still run"; "runtime_dir" => %runtime_dir.display());
    }
}
