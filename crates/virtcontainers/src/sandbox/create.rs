//! `create_sandbox`: every step records its host resources before making
//! them, and registers its undo; a failure unwinds in reverse.

use std::path::Path;
use std::sync::{Arc, Mutex};

use slog::{Logger, info, o};
use vc_agent_client::AgentConfig;
use vc_agent_client::protocol::agent as pb;
use vc_cgroups_host::plan::{CgroupLocation, SandboxCgroupConfig};
use vc_cgroups_host::{
    CgroupManager, CgroupRoots, CgroupsState, HostCgroups, SandboxTasks, VmBaseSize,
};
use vc_hypervisor::{
    AgentChannel, Hypervisor, HypervisorConfig, KernelParams, KernelParamsBuilder, MemoryConfig,
    VcpuConfig,
};

use vc_device_manager::DeviceManager;

use super::{Sandbox, cgroups_manager, remove_empty_dir, remove_runtime_dir};
use crate::config::SandboxConfig;
use crate::error::{CreateStep, Error};
use crate::factory::VmFactory;
use crate::fs_share::{self, FsShare, ShareKind};
use crate::host_mounts;
use crate::persist::{SandboxStore, Store};
use crate::state::{
    CgroupsRecord, GuestInfo, HostResources, PersistedSettings, SandboxPhase, SandboxState,
};
use crate::undo::UndoStack;

/// Creates a sandbox: validates `config`; creates its state directory and
/// takes its lock; sets up its host cgroups; prepares the filesystem
/// share; boots the VM (from `factory`); moves the VMM's threads into the
/// cgroups; connects the agent; sets the sandbox up in the guest; creates
/// the configured containers.
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
    let fail = |step: CreateStep| {
        let id = id.clone();
        move |source: Error| match source {
            // Not a failure to unwind: someone else's sandbox.
            Error::AlreadyExists { .. } => source,
            source => Error::Create {
                sandbox: id,
                step,
                source: Box::new(source),
            },
        }
    };
    config.validate().map_err(fail(CreateStep::Validate))?;
    let logger = logger.new(o!("sandbox" => id.clone()));
    let share_kind =
        fs_share::resolve(&config.fs_share, &logger).map_err(fail(CreateStep::Validate))?;

    let mut undo = UndoStack::new(logger.clone());
    let mut creation = Creation {
        config: &config,
        factory,
        logger: logger.clone(),
        share_kind,
        step: CreateStep::State,
    };
    match creation.run(&mut undo).await {
        Ok(sandbox) => {
            undo.commit();
            info!(logger, "sandbox created");
            Ok(sandbox)
        }
        Err(e) => {
            let step = creation.step;
            undo.unwind().await;
            Err(fail(step)(e))
        }
    }
}

struct Creation<'a> {
    config: &'a SandboxConfig,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
    share_kind: ShareKind,
    /// The step in progress, for the error.
    step: CreateStep,
}

impl Creation<'_> {
    async fn run(&mut self, undo: &mut UndoStack) -> Result<Sandbox, Error> {
        let config = self.config;
        let id = config.id.clone();
        let paths = &config.paths;
        let store = Store::new(&paths.state_root);

        // State directory and lock (held until the sandbox is created).
        self.step = CreateStep::State;
        let sstore = store.create(&id)?;
        let dir = sstore.dir().to_owned();
        undo.push("state", move || async move {
            std::fs::remove_dir_all(&dir).map_err(Error::host_io("remove", &dir))
        });
        let vm_base = VmBaseSize {
            default_vcpus: config.vm.default_vcpus,
            default_memory_mib: config.vm.default_memory_mib,
            max_vcpus: Some(config.vm.max_vcpus),
        };
        let mut state = SandboxState {
            id: id.clone(),
            phase: SandboxPhase::Creating,
            settings: PersistedSettings {
                paths: paths.clone(),
                agent: config.agent,
                share: self.share_kind.clone(),
                cgroups: config.cgroups.clone(),
                vm_base,
                stop_timeout: config.vm.stop_timeout,
                lock_timeout: config.lock_timeout,
            },
            resources: HostResources {
                runtime_dir: Some(paths.runtime_root.join(&id)),
                shared_dir: Some(paths.shared_root.join(&id)),
                ..HostResources::default()
            },
            guest: None,
            containers: Default::default(),
            devices: None,
        };
        sstore.write(&state)?;

        self.step = CreateStep::Cgroups;
        self.create_cgroups(&sstore, &mut state, undo)?;

        self.step = CreateStep::FsShare;
        let share = self.prepare_share(&sstore, &mut state, undo).await?;

        self.step = CreateStep::StartVm;
        let vm = self
            .start_vm(&sstore, &mut state, share.as_ref(), undo)
            .await?;

        self.step = CreateStep::ConstrainVm;
        if state.resources.cgroups.is_some() {
            super::update_cgroups(vm.as_ref(), &self.logger, &sstore, &mut state).await?;
        }

        self.step = CreateStep::ConnectAgent;
        let agent = self
            .factory
            .connect_agent(
                &vm.agent_endpoint(),
                AgentConfig {
                    connect_timeout: config.vm.start_timeout,
                    call_timeout: config.agent.call_timeout,
                    ..AgentConfig::default()
                },
                &self.logger,
            )
            .await?;
        let mut sandbox = Sandbox {
            id: id.clone(),
            store,
            settings: state.settings.clone(),
            vm: vm.clone(),
            agent,
            devices: super::new_device_registry(&vm, &self.logger),
            share: Mutex::new(None),
            logger: self.logger.clone(),
        };

        self.step = CreateStep::GuestDetails;
        let details = sandbox
            .agent
            .get_guest_details(pb::GuestDetailsRequest {
                mem_block_size: true,
                ..Default::default()
            })
            .await
            .map_err(Error::agent("GetGuestDetails"))?;
        state.guest = Some(GuestInfo {
            agent_version: details
                .agent_details
                .as_ref()
                .map(|d| d.version.clone())
                .unwrap_or_default(),
            mem_block_size_bytes: details.mem_block_size_bytes,
        });
        sstore.write(&state)?;

        self.step = CreateStep::GuestSandbox;
        let request = pb::CreateSandboxRequest {
            hostname: config.hostname.clone().unwrap_or_else(|| id.clone()),
            storages: vec![share.guest_storage()],
            sandbox_id: id.clone(),
            ..Default::default()
        };
        sandbox
            .agent
            .create_sandbox(request)
            .await
            .map_err(Error::agent("CreateSandbox"))?;
        let agent = sandbox.agent.clone();
        undo.push("guest sandbox", move || async move {
            agent
                .destroy_sandbox()
                .await
                .map_err(Error::agent("DestroySandbox"))
        });

        self.step = CreateStep::Containers;
        for c in &config.containers {
            sandbox
                .create_container_locked(&sstore, &mut state, c)
                .await?;
            let mounts = state
                .containers
                .get(&c.id)
                .map(|r| r.mounts.clone())
                .unwrap_or_default();
            let (agent, devices, cid) =
                (sandbox.agent.clone(), sandbox.devices.clone(), c.id.clone());
            undo.push("container", move || async move {
                let removed = super::container::remove_in_guest(agent.as_ref(), &cid).await;
                let released = devices
                    .release_container(&cid)
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

        // The containers' resources now count: re-aggregate the cgroups.
        if state.resources.cgroups.is_some() && !config.containers.is_empty() {
            sandbox.update_cgroups(&sstore, &mut state).await?;
        }

        state.phase = SandboxPhase::Ready;
        sstore.write(&state)?;
        *sandbox.share.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(share);
        Ok(sandbox)
    }

    fn create_cgroups(
        &self,
        sstore: &SandboxStore,
        state: &mut SandboxState,
        undo: &mut UndoStack,
    ) -> Result<(), Error> {
        let Some(cg) = &self.config.cgroups else {
            return Ok(());
        };
        let roots = CgroupRoots::discover().map_err(Error::cgroups("find the cgroup mounts"))?;
        let version = roots.preferred_version();
        let mut planner = SandboxCgroupConfig::new(&self.config.id, cg.driver, version);
        if let Some(path) = &cg.cgroups_path {
            planner.location = CgroupLocation::CgroupsPath(path.clone());
        }
        planner.sandbox_cgroup_only = cg.sandbox_cgroup_only;
        planner.overhead = cg.overhead;
        planner.vmm_devices =
            vc_cgroups_host::host_devices::discover_vmm_devices(Path::new("/dev"));
        let containers: Vec<_> = self
            .config
            .containers
            .iter()
            .map(|c| super::resources_of(&c.id, &c.spec, false))
            .collect();
        let plan = vc_cgroups_host::plan(&planner, &containers).map_err(Error::cgroups("plan"))?;
        // Write-ahead: the paths are on disk before any directory exists.
        let mut record = CgroupsRecord {
            config: planner,
            version,
            roots: roots.clone(),
            state: CgroupsState {
                plan: Some(plan.clone()),
                ..CgroupsState::default()
            },
        };
        state.resources.cgroups = Some(record.clone());
        sstore.write(state)?;
        let mut manager = HostCgroups::new(cg.driver, version, &roots, self.logger.clone())
            .map_err(Error::cgroups("open the cgroup hierarchy"))?;
        let tasks = SandboxTasks {
            runtime: cg.sandbox_cgroup_only.then(std::process::id),
            ..Default::default()
        };
        let applied = manager.apply(&plan, &tasks);
        record.state = manager.state().clone();
        if applied.is_err() {
            // The applier unwound itself.
            state.resources.cgroups = None;
            sstore.write(state)?;
        }
        applied.map_err(Error::cgroups("create"))?;
        state.resources.cgroups = Some(record.clone());
        sstore.write(state)?;
        let logger = self.logger.clone();
        undo.push("cgroups", move || async move {
            let mut manager = cgroups_manager(&record, &logger)?;
            manager.delete().map_err(Error::cgroups("delete"))
        });
        Ok(())
    }

    async fn prepare_share(
        &self,
        sstore: &SandboxStore,
        state: &mut SandboxState,
        undo: &mut UndoStack,
    ) -> Result<Box<dyn FsShare>, Error> {
        let runtime_dir = state.resources.runtime_dir.clone().unwrap_or_default();
        let shared_dir = state.resources.shared_dir.clone().unwrap_or_default();
        {
            let (runtime_dir, shared_dir) = (runtime_dir.clone(), shared_dir.clone());
            let keep_logs = self.config.vm.debug;
            undo.push("share directories", move || async move {
                // The share's directory may only ever be removed when empty
                // (a stale bind mount would expose a container's files);
                // the runtime directory holds nothing but our sockets and
                // logs.
                let shared = remove_empty_dir(&shared_dir);
                let runtime = if keep_logs {
                    Ok(())
                } else {
                    remove_runtime_dir(&runtime_dir)
                };
                runtime.and(shared)
            });
        }
        for dir in [&runtime_dir, &shared_dir] {
            std::fs::create_dir_all(dir).map_err(Error::host_io("create directory", dir))?;
        }
        let mut share = fs_share::new_share(
            &self.share_kind,
            shared_dir.clone(),
            &runtime_dir,
            self.logger.clone(),
        );
        let virtiofs = matches!(self.share_kind, ShareKind::VirtioFs { .. });
        if virtiofs {
            // virtio-fs makes the directory a mount of itself: recorded first.
            state.resources.mounts.push(shared_dir.clone());
            sstore.write(state)?;
        }
        let helpers = match share.start().await {
            Ok(h) => h,
            Err(e) => {
                if virtiofs {
                    let _ = host_mounts::unmount(&shared_dir);
                }
                return Err(e);
            }
        };
        state.resources.helpers.extend(helpers.clone());
        sstore.write(state)?;
        undo.push("share", move || async move {
            crate::process::terminate_all(helpers, std::time::Duration::from_secs(2)).await;
            if virtiofs {
                host_mounts::unmount(&shared_dir)?;
            }
            Ok(())
        });
        Ok(share)
    }

    async fn start_vm(
        &self,
        sstore: &SandboxStore,
        state: &mut SandboxState,
        share: &dyn FsShare,
        undo: &mut UndoStack,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        let config = self.config;
        let containers: Vec<_> = config
            .containers
            .iter()
            .map(|c| super::resources_of(&c.id, &c.spec, false))
            .collect();
        let size = vc_cgroups_host::vm_size(&containers, &state.settings.vm_base)
            .map_err(Error::cgroups("size the VM"))?;
        let runtime_dir = state.resources.runtime_dir.clone().unwrap_or_default();
        let mut hc = HypervisorConfig::new(&config.id, &config.vm.kernel, &runtime_dir)
            .with_initrd(&config.vm.initrd);
        hc.accelerator = config.vm.accelerator;
        hc.vcpus = VcpuConfig {
            boot: size.vcpus,
            max: config.vm.max_vcpus.max(size.vcpus),
        };
        hc.memory = MemoryConfig {
            boot_mib: size.memory_mib,
            max_mib: size.memory_mib,
            shared: share.needs_shared_memory(),
        };
        hc.agent_channel = AgentChannel::VirtioSerial;
        hc.devices.push(share.device());
        hc.keep_logs = config.vm.debug;
        let mut params = KernelParamsBuilder::new();
        if config.vm.debug {
            params = params.debug(true).agent("log", "debug");
        }
        let extra = KernelParams::parse(&config.vm.kernel_params.join(" ")).map_err(|e| {
            Error::InvalidConfig {
                what: format!("vm.kernel_params: {e}"),
            }
        })?;
        hc.kernel_params = params.extra(extra).build();
        let vm = self.factory.new_vm(hc, &self.logger)?;
        let started = vm.start(config.vm.start_timeout).await;
        {
            let vm = vm.clone();
            let timeout = config.vm.stop_timeout;
            undo.push("vm", move || async move {
                vm.stop(timeout)
                    .await
                    .map_err(Error::hypervisor("stop the VM"))
            });
        }
        started.map_err(Error::hypervisor("start the VM"))?;
        state.resources.vm = Some(
            vm.save_state()
                .map_err(Error::hypervisor("save the VM's state"))?,
        );
        state.resources.vmm = vm.vmm_processes().into_iter().next().map(Into::into);
        sstore.write(state)?;
        Ok(vm)
    }
}
