//! `create_sandbox`: plan, then carry the plan out step by step. Every
//! step records its host resources before making them and registers its
//! undo; a failure unwinds the completed steps in reverse.

mod network;

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use slog::{Logger, debug, info, o};
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::{Agent, AgentConfig};
use vc_hypervisor::Hypervisor;
use vc_hypervisor::accel::ResolvedAccelerator;

use super::cgroups::SandboxCgroups;
use super::{Sandbox, remove_empty_dir, remove_runtime_dir};
use crate::boot::admission::take_slot;
use crate::boot::progress::wait_for_guest;
use crate::boot::{BootSlot, BootVerdict};
use crate::config::SandboxConfig;
use crate::error::{CreateStep, Error};
use crate::factory::VmFactory;
use crate::fs_share::{self, FsShare, ShareKind};
use crate::host_mounts;
use crate::persist::{SandboxStore, Store};
use crate::plan::{SandboxPlan, plan_sandbox};
use crate::state::{GuestInfo, HostResources, SandboxPhase, SandboxState};
use crate::undo::UndoStack;

/// Creates a sandbox.
///
/// First plans it ([`plan_sandbox`]): every configuration error comes
/// back as [`Error::Create`] at [`CreateStep::Plan`] before anything on
/// the host changes. Then carries the plan out: creates its state
/// directory and takes its lock; creates its host cgroups; prepares the
/// filesystem share; boots the VM (from `factory`); places the VMM's
/// threads in the cgroups; connects the agent; reads the guest's details;
/// sets the sandbox up in the guest; creates the configured containers.
///
/// Each completed step registers its undo. A failure undoes them all, in
/// reverse, and returns [`Error::Create`] naming the step: no cgroup,
/// process, mount, socket or state file is left. An id that exists already
/// is [`Error::AlreadyExists`], and nothing of the existing sandbox is
/// touched.
pub async fn create_sandbox(
    config: SandboxConfig,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
) -> Result<Sandbox, Error> {
    let id = config.id.clone();
    let fail = |step: CreateStep, unwind_errors: Vec<(&'static str, Error)>| {
        let id = id.clone();
        move |source: Error| match source {
            // Not a failure to unwind: someone else's sandbox.
            Error::AlreadyExists { .. } => source,
            source => Error::Create {
                sandbox: id,
                step,
                source: Box::new(source),
                unwind_errors,
            },
        }
    };
    let plan = plan_sandbox(&config).map_err(fail(CreateStep::Plan, Vec::new()))?;
    factory
        .check_vm(&plan.vm)
        .map_err(fail(CreateStep::Plan, Vec::new()))?;
    let logger = logger.new(o!("sandbox" => id.to_string()));
    info!(logger, "filesystem share chosen"; "share" => ?plan.share.kind, "reason" => plan.share.reason);

    let mut undo = UndoStack::new(logger.clone());
    let mut creation = Creation {
        plan: &plan,
        factory,
        logger: logger.clone(),
        step: CreateStep::State,
        step_started: Instant::now(),
        network: None,
        share: None,
    };
    match creation.run(&mut undo).await {
        Ok(sandbox) => {
            undo.commit();
            info!(logger, "sandbox created");
            Ok(sandbox)
        }
        Err(e) => {
            let step = creation.step;
            let unwind_errors = undo.unwind().await;
            Err(fail(step, unwind_errors)(e))
        }
    }
}

/// One run of `create_sandbox` carrying out a plan.
struct Creation<'a> {
    plan: &'a SandboxPlan,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
    /// The step in progress, for the error.
    step: CreateStep,
    /// When it began.
    step_started: Instant,
    /// The network, once set up (its NICs go into the VM's config).
    network: Option<crate::network::owner::SandboxNetwork>,
    /// The filesystem share, once prepared. Kept here, not in a step's
    /// locals, so that on a failure it lives through the unwinding: the
    /// guest lets go of the share (DestroySandbox) before its daemon stops.
    share: Option<Box<dyn FsShare>>,
}

/// The sandbox's state, locked, as the steps record into it.
struct Record {
    store: SandboxStore,
    state: SandboxState,
}

impl Record {
    fn write(&self) -> Result<(), Error> {
        self.store.write(&self.state)
    }
}

impl Creation<'_> {
    /// The steps of Kata's `createSandboxFromConfig`, each with its undo.
    async fn run(&mut self, undo: &mut UndoStack) -> Result<Sandbox, Error> {
        self.step = CreateStep::State;
        let mut rec = self.claim_state(undo)?;

        self.enter(CreateStep::Network);
        self.create_network(undo).await?;

        self.enter(CreateStep::Cgroups);
        let cgroups = self.create_cgroups(&rec, undo)?;

        self.enter(CreateStep::FsShare);
        self.share = Some(self.prepare_share(&mut rec, undo).await?);

        self.enter(CreateStep::BootSlot);
        // Held until the agent answers: the boot is what loads the host.
        let slot = self.take_boot_slot().await?;

        self.enter(CreateStep::StartVm);
        let vm = self.start_vm(&mut rec, undo).await?;

        // The VMM's threads are moved into the cgroups while the agent is
        // waited for: neither needs the other, and a clone's or a pool
        // VM's agent answers at once, so done in turn the moves would add
        // their time to every start. The first failure cancels the other.
        self.enter(CreateStep::ConstrainVm);
        let constrain = async {
            let started = Instant::now();
            if let Some(mut cgroups) = cgroups {
                let planned: Vec<_> = self
                    .plan
                    .containers
                    .iter()
                    .map(|c| c.resources.clone())
                    .collect();
                cgroups
                    .update(&planned, vm.as_ref(), &rec.state.resources.helpers)
                    .await
                    .map_err(|e| (CreateStep::ConstrainVm, e))?;
            }
            debug!(self.logger, "create step done"; "step" => ?CreateStep::ConstrainVm,
                   "ms" => started.elapsed().as_millis() as u64, "alongside" => "ConnectAgent");
            Ok(())
        };
        let connect = async {
            self.connect_agent(vm.as_ref())
                .await
                .map_err(|e| (CreateStep::ConnectAgent, e))
        };
        let agent = match tokio::try_join!(constrain, connect) {
            Ok(((), agent)) => agent,
            Err((step, e)) => {
                self.step = step;
                return Err(e);
            }
        };
        // The next step's log line times both, from the start of the pair.
        self.step = CreateStep::ConnectAgent;
        drop(slot);

        self.enter(CreateStep::GuestDetails);
        self.read_guest_details(agent.as_ref(), &mut rec).await?;

        self.enter(CreateStep::GuestNetwork);
        self.configure_guest_network(agent.as_ref()).await?;

        self.enter(CreateStep::GuestSandbox);
        let share = self.share.as_deref().expect("prepared above");
        self.create_guest_sandbox(&agent, share, undo).await?;

        self.enter(CreateStep::Containers);
        let sandbox = self.sandbox(vm, agent);
        self.create_containers(&sandbox, &mut rec, undo).await?;

        rec.state.phase = SandboxPhase::Ready;
        rec.write()?;
        self.enter(CreateStep::Containers);
        *sandbox.share.lock().unwrap_or_else(|e| e.into_inner()) = self.share.take();
        Ok(sandbox)
    }

    /// Starts `step`, logging how long the one before took (where the
    /// time of a sandbox start goes, at debug level).
    fn enter(&mut self, step: CreateStep) {
        debug!(self.logger, "create step done"; "step" => ?self.step,
               "ms" => self.step_started.elapsed().as_millis() as u64);
        self.step = step;
        self.step_started = Instant::now();
    }

    /// The state directory, claimed and locked (held until the sandbox
    /// is created), and the first state: the directories to come.
    fn claim_state(&self, undo: &mut UndoStack) -> Result<Record, Error> {
        let plan = self.plan;
        let store = Store::new(&plan.settings.paths.state_root).create(&plan.id)?;
        let dir = store.dir().to_owned();
        undo.push("state", move || async move {
            std::fs::remove_dir_all(&dir).map_err(Error::host_io("remove", &dir))
        });
        let rec = Record {
            store,
            state: SandboxState {
                id: plan.id.clone(),
                phase: SandboxPhase::Creating,
                owner: crate::process::this_process(),
                settings: plan.settings.clone(),
                resources: HostResources {
                    runtime_dir: Some(plan.runtime_dir.clone()),
                    shared_dir: Some(plan.shared_dir.clone()),
                    ..HostResources::default()
                },
                guest: None,
                containers: Default::default(),
                devices: None,
            },
        };
        rec.write()?;
        Ok(rec)
    }

    /// The host cgroups, recorded (in their owner's own file) before each
    /// directory is made.
    fn create_cgroups(
        &self,
        rec: &Record,
        undo: &mut UndoStack,
    ) -> Result<Option<SandboxCgroups>, Error> {
        let Some(plan) = &self.plan.cgroups else {
            return Ok(None);
        };
        let cgroups = SandboxCgroups::create(rec.store.dir(), plan, &self.logger)?;
        let (dir, logger) = (rec.store.dir().to_owned(), self.logger.clone());
        undo.push("cgroups", move || async move {
            match SandboxCgroups::load(&dir, &logger)? {
                Some(cgroups) => cgroups.delete(),
                None => Ok(()),
            }
        });
        Ok(Some(cgroups))
    }

    /// The share's directories and its daemon (virtio-fs), each recorded
    /// before it is made.
    async fn prepare_share(
        &self,
        rec: &mut Record,
        undo: &mut UndoStack,
    ) -> Result<Box<dyn FsShare>, Error> {
        let plan = self.plan;
        let (runtime_dir, shared_dir) = (plan.runtime_dir.clone(), plan.shared_dir.clone());
        let keep_logs = plan.vm.keep_logs;
        undo.push("share directories", move || async move {
            // The share's directory may only ever be removed when empty (a
            // stale bind mount would expose a container's files); the
            // runtime directory holds nothing but our sockets and logs.
            let shared = remove_empty_dir(&shared_dir);
            let runtime = match keep_logs {
                true => Ok(()),
                false => remove_runtime_dir(&runtime_dir),
            };
            runtime.and(shared)
        });
        for dir in [&plan.runtime_dir, &plan.shared_dir] {
            std::fs::create_dir_all(dir).map_err(Error::host_io("create directory", dir))?;
        }
        let mut share = fs_share::new_share(
            &plan.share.kind,
            plan.shared_dir.clone(),
            &plan.runtime_dir,
            plan.vm.lifetime,
            self.logger.clone(),
        );
        let virtiofs = matches!(plan.share.kind, ShareKind::VirtioFs { .. });
        if virtiofs {
            // virtio-fs makes the directory a mount of itself: recorded first.
            rec.state.resources.mounts.push(plan.shared_dir.clone());
            rec.write()?;
        }
        let helpers = match share.start().await {
            Ok(h) => h,
            Err(e) => {
                if virtiofs {
                    let _ = host_mounts::unmount(&plan.shared_dir);
                }
                return Err(e);
            }
        };
        rec.state.resources.helpers.extend(helpers.clone());
        rec.write()?;
        let shared_dir = plan.shared_dir.clone();
        undo.push("share", move || async move {
            crate::process::terminate_all(helpers, std::time::Duration::from_secs(2)).await;
            if virtiofs {
                host_mounts::unmount(&shared_dir)?;
            }
            Ok(())
        });
        Ok(share)
    }

    /// The VM, booted from the factory, and recorded for other processes.
    async fn start_vm(
        &self,
        rec: &mut Record,
        undo: &mut UndoStack,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        let plan = self.plan;
        let mut config = plan.vm.clone();
        if let Some(network) = &self.network {
            config.devices.extend(network.cold_nics());
        }
        // The factory stops a VM whose start failed: the undo is for a
        // VM that came up.
        let vm = self
            .factory
            .start_vm(config, plan.boot.budget.wall, &self.logger)
            .await?;
        {
            let (vm, timeout) = (vm.clone(), plan.settings.stop_timeout);
            undo.push("vm", move || async move {
                vm.stop(timeout)
                    .await
                    .map_err(Error::hypervisor("stop the VM"))
            });
        }
        rec.state.resources.vm = Some(
            vm.save_state()
                .map_err(Error::hypervisor("save the VM's state"))?,
        );
        rec.state.resources.vmm = vm.vmm_processes().into_iter().next();
        rec.write()?;
        Ok(vm)
    }

    /// A boot slot, when boots are limited; waits for one.
    async fn take_boot_slot(&self) -> Result<Option<BootSlot>, Error> {
        let boot = &self.plan.boot;
        let accel = vc_hypervisor::accel::choose(
            self.plan.vm.accelerator,
            vc_hypervisor::accel::probe_kvm(),
        )
        .map_or(ResolvedAccelerator::Tcg, |c| c.accelerator);
        let cpus = std::thread::available_parallelism()
            .ok()
            .and_then(|n| NonZeroU32::new(u32::try_from(n.get()).unwrap_or(u32::MAX)))
            .unwrap_or(NonZeroU32::MIN);
        let Some(slots) = boot.admission.slots(accel, cpus) else {
            return Ok(None);
        };
        let waited = Instant::now();
        let slot = take_slot(&boot.slot_scope, slots, boot.admission_timeout)
            .await
            .map_err(|source| Error::BootAdmission {
                id: self.plan.id.clone(),
                source,
            })?;
        info!(self.logger, "boot slot taken"; "slot" => slot.index(), "slots" => slots.get(),
              "waited_ms" => waited.elapsed().as_millis() as u64);
        Ok(Some(slot))
    }

    /// The agent, once it answers; waited for by the guest's progress
    /// ([`crate::boot::progress`]), not a fixed time.
    async fn connect_agent(&self, vm: &dyn Hypervisor) -> Result<Arc<dyn Agent>, Error> {
        let budget = self.plan.boot.budget;
        let config = AgentConfig {
            connect_timeout: budget.wall,
            call_timeout: self.plan.settings.agent.call_timeout,
            ..AgentConfig::default()
        };
        let endpoint = vm.agent_endpoint();
        let connect = self.factory.connect_agent(&endpoint, config, &self.logger);
        let vmm = vm.vmm_processes().into_iter().next();
        match wait_for_guest(connect, vmm.as_ref(), budget).await {
            Ok(agent) => agent,
            Err(BootVerdict::VmmExited { pid }) => Err(Error::VmDied {
                id: self.plan.id.clone(),
                pid,
            }),
            Err(verdict) => Err(Error::GuestNotReady {
                id: self.plan.id.clone(),
                source: verdict,
            }),
        }
    }

    async fn read_guest_details(&self, agent: &dyn Agent, rec: &mut Record) -> Result<(), Error> {
        let details = agent
            .get_guest_details(pb::GuestDetailsRequest {
                mem_block_size: true,
                ..Default::default()
            })
            .await
            .map_err(Error::agent("GetGuestDetails"))?;
        rec.state.guest = Some(GuestInfo {
            agent_version: details
                .agent_details
                .as_ref()
                .map(|d| d.version.clone())
                .unwrap_or_default(),
            mem_block_size_bytes: details.mem_block_size_bytes,
        });
        rec.write()
    }

    /// The sandbox in the guest: its hostname and the share's mount.
    async fn create_guest_sandbox(
        &self,
        agent: &Arc<dyn Agent>,
        share: &dyn FsShare,
        undo: &mut UndoStack,
    ) -> Result<(), Error> {
        let request = pb::CreateSandboxRequest {
            hostname: self.plan.hostname.clone(),
            storages: vec![share.guest_storage()],
            dns: self.plan.network.dns.clone(),
            sandbox_id: self.plan.id.to_string(),
            ..Default::default()
        };
        agent
            .create_sandbox(request)
            .await
            .map_err(Error::agent("CreateSandbox"))?;
        let agent = agent.clone();
        undo.push("guest sandbox", move || async move {
            agent
                .destroy_sandbox()
                .await
                .map_err(Error::agent("DestroySandbox"))
        });
        Ok(())
    }

    fn sandbox(&self, vm: Arc<dyn Hypervisor>, agent: Arc<dyn Agent>) -> Sandbox {
        Sandbox {
            id: self.plan.id.clone(),
            store: Store::new(&self.plan.settings.paths.state_root),
            settings: self.plan.settings.clone(),
            devices: super::new_device_registry(&vm, &self.logger),
            vm,
            agent,
            share: Mutex::new(None),
            logger: self.logger.clone(),
        }
    }

    /// The planned containers, each undone on a later failure (the host
    /// cgroups were planned for them from the start).
    async fn create_containers(
        &self,
        sandbox: &Sandbox,
        rec: &mut Record,
        undo: &mut UndoStack,
    ) -> Result<(), Error> {
        for c in &self.plan.containers {
            sandbox
                .create_container_locked(&rec.store, &mut rec.state, &c.config)
                .await?;
            let mounts = rec
                .state
                .containers
                .get(&c.config.id)
                .map(|r| r.mounts.clone())
                .unwrap_or_default();
            let (agent, devices) = (sandbox.agent.clone(), sandbox.devices.clone());
            let id = c.config.id.clone();
            undo.push("container", move || async move {
                let removed = super::container::remove_in_guest(agent.as_ref(), &id).await;
                let released = devices
                    .release_container(&id)
                    .await
                    .map(drop)
                    .map_err(|source| Error::Devices {
                        operation: "release the container's devices",
                        source,
                    });
                super::container::unbind_all(&mounts)?;
                removed.and(released)
            });
        }
        Ok(())
    }
}
