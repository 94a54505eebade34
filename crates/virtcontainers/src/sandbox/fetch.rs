//! Reaching a sandbox from its persisted state: [`fetch_sandbox`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{Logger, o};
use vc_agent_client::AgentConfig;
use vc_types::SandboxId;

use super::Sandbox;
use crate::config::Paths;
use crate::error::Error;
use crate::factory::VmFactory;
use crate::persist::{LockMode, Store};
use crate::state::{SandboxPhase, SandboxState};

/// A handle to a running sandbox created by another process (or by this
/// one): reconnects to its VM and its agent.
pub async fn fetch_sandbox(
    paths: &Paths,
    id: &SandboxId,
    factory: Arc<dyn VmFactory>,
    logger: Logger,
) -> Result<Sandbox, Error> {
    let logger = logger.new(o!("sandbox" => id.to_string()));
    let store = Store::new(&paths.state_root);
    let state: SandboxState = {
        let s = store
            .open(id, LockMode::Shared, Duration::from_secs(10))
            .await?;
        s.read()?
    };
    connect(store, state, factory.as_ref(), logger).await
}

pub(super) async fn connect(
    store: Store,
    state: SandboxState,
    factory: &dyn VmFactory,
    logger: Logger,
) -> Result<Sandbox, Error> {
    if state.effective_phase() == SandboxPhase::VmDied {
        return Err(Error::VmDied {
            id: state.id.clone(),
            pid: state.resources.vmm.as_ref().map_or(0, |v| v.pid),
        });
    }
    let vm_state = match (state.phase, &state.resources.vm) {
        (SandboxPhase::Ready | SandboxPhase::Running | SandboxPhase::Paused, Some(vm)) => {
            vm.clone()
        }
        (phase, _) => {
            return Err(Error::WrongState {
                operation: "fetch",
                subject: format!("sandbox \"{}\"", state.id),
                state: format!("{phase:?}").to_lowercase(),
            });
        }
    };
    let vm = factory.attach_vm(vm_state, &logger).await?;
    let agent = factory
        .connect_agent(
            &vm.agent_endpoint(),
            AgentConfig {
                connect_timeout: Duration::from_secs(10),
                call_timeout: state.settings.agent.call_timeout,
                ..AgentConfig::default()
            },
            &logger,
        )
        .await?;
    let devices = match state.devices.clone() {
        Some(saved) => {
            let (registry, report) = vc_device_manager::DeviceManager::restore(
                saved,
                vm.clone(),
                vc_device_manager::RegistryConfig::default(),
                logger.clone(),
                &vm.devices(),
            )
            .await
            .map_err(|source| Error::Devices {
                operation: "restore the device registry",
                source,
            })?;
            slog::debug!(logger, "device registry restored"; "report" => ?report);
            Arc::new(registry)
        }
        None => super::new_device_registry(&vm, &logger),
    };
    Ok(Sandbox {
        id: state.id.clone(),
        store,
        settings: state.settings.clone(),
        vm,
        agent,
        devices,
        share: Mutex::new(None),
        logger,
    })
}
