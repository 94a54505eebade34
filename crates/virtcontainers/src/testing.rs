//! A fake VM and agent for unit tests of code built on this crate
//! (feature `testing`): [`MockVmFactory`] hands `create_sandbox` a
//! `MockHypervisor` and a `FakeAgent`, records what it made, and fails on
//! request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use slog::Logger;
use vc_agent_client::testing::FakeAgent;
use vc_agent_client::{Agent, AgentConfig};
use vc_hypervisor::testing::{Method, MockHypervisor};
use vc_hypervisor::{AgentEndpoint, Hypervisor, HypervisorConfig, HypervisorState};

use crate::error::Error;
use crate::factory::{QemuFactory, VmFactory};

/// A [`VmFactory`] of fakes.
#[derive(Debug, Default)]
pub struct MockVmFactory {
    agent: Arc<FakeAgent>,
    processes: Mutex<Option<(u32, Vec<u32>)>>,
    vm_failures: Mutex<Vec<Method>>,
    vms: Mutex<Vec<MockHypervisor>>,
    fail_connect: AtomicBool,
}

impl MockVmFactory {
    /// A factory whose VMs report this process as their VMM, and whose
    /// agent answers everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// VMs report `vmm_pid` and `vcpu_tids` as their processes (a test
    /// with real cgroups gives a child process of its own here).
    pub fn with_processes(self, vmm_pid: u32, vcpu_tids: Vec<u32>) -> Self {
        *self.processes.lock().unwrap_or_else(|e| e.into_inner()) = Some((vmm_pid, vcpu_tids));
        self
    }

    /// The next VM made or attached fails its first call of `method`.
    pub fn fail_vm(&self, method: Method) {
        self.vm_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(method);
    }

    /// Connecting to the agent fails (`true`) or works.
    pub fn fail_connect(&self, fail: bool) {
        self.fail_connect.store(fail, Ordering::Relaxed);
    }

    /// The fake agent every VM's connection gets.
    pub fn agent(&self) -> &Arc<FakeAgent> {
        &self.agent
    }

    /// Handles to the VMs made so far (new and attached), oldest first.
    pub fn vms(&self) -> Vec<MockHypervisor> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn keep(&self, vm: MockHypervisor) -> Arc<dyn Hypervisor> {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(vm.clone());
        Arc::new(vm)
    }
}

#[async_trait]
impl VmFactory for MockVmFactory {
    fn new_vm(
        &self,
        config: HypervisorConfig,
        _logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        let mut vm = MockHypervisor::new(config);
        if let Some((pid, tids)) = self
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            vm = vm.with_processes(pid, tids);
        }
        for method in self
            .vm_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            vm.fail_next(method);
        }
        Ok(self.keep(vm))
    }

    async fn attach_vm(
        &self,
        state: HypervisorState,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        if state.backend != MockHypervisor::BACKEND {
            return QemuFactory::default().attach_vm(state, logger).await;
        }
        let vm = MockHypervisor::from_state(&state)
            .map_err(Error::hypervisor("attach to the running VM"))?;
        if !vm.is_running() {
            return Ok(Arc::new(vm));
        }
        for method in self
            .vm_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            vm.fail_next(method);
        }
        Ok(self.keep(vm))
    }

    async fn connect_agent(
        &self,
        _endpoint: &AgentEndpoint,
        _config: AgentConfig,
        _logger: &Logger,
    ) -> Result<Arc<dyn Agent>, Error> {
        if self.fail_connect.load(Ordering::Relaxed) {
            return Err(Error::Agent {
                operation: "connect",
                source: vc_agent_client::AgentError::ConnectTimeout {
                    target: "mock".into(),
                    waited: std::time::Duration::ZERO,
                    last: "injected failure".into(),
                },
            });
        }
        Ok(self.agent.clone())
    }
}
