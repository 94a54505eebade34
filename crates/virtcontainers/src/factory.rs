//! How a sandbox gets its VM and its agent connection: the [`VmFactory`]
//! seam, and the one place that knows VMM backends. [`QemuFactory`] boots
//! a fresh QEMU VM per sandbox with its [`QemuOptions`];
//! [`crate::TemplateFactory`] (VM templating) and [`crate::PoolFactory`]
//! (a pool of booted VMs) plug in here, and tests inject fakes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use slog::Logger;
use vc_agent_client::{Agent, AgentConfig, Transport, TtrpcAgent};
use vc_hypervisor::{
    AgentEndpoint, Device, Hypervisor, HypervisorConfig, HypervisorState, Qemu, QemuOptions,
};

use crate::error::Error;

/// `impl VmFactory for $ty { ... }` for a factory that starts VMs its own
/// way (a clone, a VM from a pool) and leaves the rest to the cold
/// factory it falls back to, its field `cold`: checking and preparing a
/// VM, taking one over from its state, connecting to its agent. The
/// block holds the factory's own methods (`start_vm`).
macro_rules! impl_vm_factory_with_cold_fallback {
    ($ty:ty { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl crate::factory::VmFactory for $ty {
            fn check_vm(
                &self,
                config: &vc_hypervisor::HypervisorConfig,
            ) -> Result<(), crate::error::Error> {
                self.cold.check_vm(config)
            }

            fn new_vm(
                &self,
                config: vc_hypervisor::HypervisorConfig,
                logger: &slog::Logger,
            ) -> Result<std::sync::Arc<dyn vc_hypervisor::Hypervisor>, crate::error::Error> {
                self.cold.new_vm(config, logger)
            }

            async fn attach_vm(
                &self,
                state: vc_hypervisor::HypervisorState,
                logger: &slog::Logger,
            ) -> Result<std::sync::Arc<dyn vc_hypervisor::Hypervisor>, crate::error::Error> {
                self.cold.attach_vm(state, logger).await
            }

            async fn connect_agent(
                &self,
                endpoint: &vc_hypervisor::AgentEndpoint,
                config: vc_agent_client::AgentConfig,
                logger: &slog::Logger,
            ) -> Result<std::sync::Arc<dyn vc_agent_client::Agent>, crate::error::Error> {
                self.cold.connect_agent(endpoint, config, logger).await
            }

            $($own)*
        }
    };
}
pub(crate) use impl_vm_factory_with_cold_fallback;

/// Provides a sandbox's VM and agent.
#[async_trait]
pub trait VmFactory: Send + Sync {
    /// Checks, before anything is created, what this factory adds to a VM
    /// config of its own (a backend's options: binary, firmware, ...).
    /// The default has nothing to check.
    fn check_vm(&self, config: &HypervisorConfig) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// A VM for `config`, prepared (validated, accelerator chosen) but not
    /// started.
    fn new_vm(
        &self,
        config: HypervisorConfig,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error>;

    /// A running VM for `config`: booted, cloned from a template, or taken
    /// from a pool of running VMs, as the factory does it. The default
    /// prepares one with [`new_vm`](Self::new_vm) and starts it. Returns
    /// once the VMM runs (the agent may still be coming up: see
    /// [`connect_agent`](Self::connect_agent)); on failure nothing of the
    /// VM is left.
    async fn start_vm(
        &self,
        config: HypervisorConfig,
        timeout: Duration,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        let vm = self.new_vm(config, logger)?;
        start_or_stop(vm, timeout, logger).await
    }

    /// Takes over a running VM from its saved state (another process
    /// started it). A state of a backend this factory does not run is a
    /// typed error (`vc_hypervisor::Error::WrongBackend`).
    async fn attach_vm(
        &self,
        state: HypervisorState,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error>;

    /// Connects to the agent of a started VM, retrying until it answers or
    /// `config.connect_timeout` passes.
    async fn connect_agent(
        &self,
        endpoint: &AgentEndpoint,
        config: AgentConfig,
        logger: &Logger,
    ) -> Result<Arc<dyn Agent>, Error>;
}

/// Starts `vm`; if that fails, stops what the start left (a process that
/// came up but never answered) and returns the start's error.
pub(crate) async fn start_or_stop(
    vm: Arc<dyn Hypervisor>,
    timeout: Duration,
    logger: &Logger,
) -> Result<Arc<dyn Hypervisor>, Error> {
    match vm.start(timeout).await {
        Ok(()) => Ok(vm),
        Err(e) => {
            if let Err(stop) = vm.stop(STOP_AFTER_FAILED_START).await {
                slog::warn!(logger, "stopping a VM that failed to start"; "error" => %stop);
            }
            Err(Error::hypervisor("start the VM")(e))
        }
    }
}

/// Takes the NICs out of `config`. A VM made ahead of its sandbox (a
/// template's clone, a pool's VM) was made without them: it gets them
/// hot-plugged once it runs ([`plug_nics`]), so a sandbox with a network
/// still matches.
pub(crate) fn split_nics(config: &mut HypervisorConfig) -> Vec<Device> {
    let (nics, others) = std::mem::take(&mut config.devices)
        .into_iter()
        .partition(|d| matches!(d, Device::Network(_)));
    config.devices = others;
    nics
}

/// Hot-plugs `nics` into a VM made ahead of its sandbox; on failure stops
/// the VM (nothing of it is left, as [`VmFactory::start_vm`] promises).
pub(crate) async fn plug_nics(
    vm: Arc<dyn Hypervisor>,
    nics: Vec<Device>,
    logger: &Logger,
) -> Result<Arc<dyn Hypervisor>, Error> {
    for nic in nics {
        let id = nic.id().to_owned();
        if let Err(e) = vm.hotplug(nic).await {
            if let Err(stop) = vm.stop(STOP_AFTER_FAILED_START).await {
                slog::warn!(logger, "stopping a VM whose NIC was not plugged"; "error" => %stop);
            }
            return Err(Error::hypervisor("hot-plug a NIC")(e));
        }
        slog::debug!(logger, "NIC hot-plugged into a VM made ahead"; "nic" => id);
    }
    Ok(vm)
}

/// How long a VM that failed to start gets to quit before it is killed.
const STOP_AFTER_FAILED_START: Duration = Duration::from_secs(5);

/// Boots a new QEMU VM for every sandbox and talks ttrpc to its agent.
/// [`QemuFactory::default`] runs Debian's QEMU with the default
/// [`QemuOptions`].
#[derive(Debug, Clone, Default)]
pub struct QemuFactory {
    options: QemuOptions,
}

impl QemuFactory {
    /// A factory whose VMs run with `options` (QEMU binary, machine,
    /// firmware, hot-plug ports).
    pub fn new(options: QemuOptions) -> Self {
        Self { options }
    }

    /// The QEMU options of the VMs it makes.
    pub fn options(&self) -> &QemuOptions {
        &self.options
    }
}

/// The agent transport for a hypervisor's agent endpoint.
pub fn transport_for(endpoint: &AgentEndpoint) -> Transport {
    match endpoint {
        AgentEndpoint::VirtioSerial {
            socket,
            extra_sockets,
            ..
        } if !extra_sockets.is_empty() => Transport::SerialPool {
            sockets: std::iter::once(socket.clone())
                .chain(extra_sockets.iter().cloned())
                .collect(),
        },
        AgentEndpoint::VirtioSerial { socket, .. } => Transport::Serial {
            socket: socket.clone(),
        },
        AgentEndpoint::Vsock { guest_cid, port } => Transport::Vsock {
            cid: *guest_cid,
            port: *port,
        },
        AgentEndpoint::HybridVsock { socket, port } => Transport::HybridVsock {
            socket: socket.clone(),
            port: *port,
        },
    }
}

#[async_trait]
impl VmFactory for QemuFactory {
    fn check_vm(&self, _config: &HypervisorConfig) -> Result<(), Error> {
        self.options
            .validate()
            .map_err(|e| Error::hypervisor("check the QEMU options")(e.into()))
    }

    fn new_vm(
        &self,
        config: HypervisorConfig,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        let vm = Qemu::new(config, self.options.clone(), logger.clone())
            .map_err(Error::hypervisor("prepare the VM"))?;
        Ok(Arc::new(vm))
    }

    async fn attach_vm(
        &self,
        state: HypervisorState,
        logger: &Logger,
    ) -> Result<Arc<dyn Hypervisor>, Error> {
        // The saved state carries the options the VM was started with.
        let vm = Qemu::attach(state, logger.clone())
            .await
            .map_err(Error::hypervisor("attach to the running VM"))?;
        Ok(Arc::new(vm))
    }

    async fn connect_agent(
        &self,
        endpoint: &AgentEndpoint,
        config: AgentConfig,
        logger: &Logger,
    ) -> Result<Arc<dyn Agent>, Error> {
        let agent = TtrpcAgent::connect(transport_for(endpoint), config, logger)
            .await
            .map_err(Error::agent("connect"))?;
        Ok(Arc::new(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FsShareConfig, FsShareKind, Paths, SandboxConfig, VmConfig};
    use crate::error::CreateStep;

    /// A QEMU binary the factory cannot run is a planning error: nothing
    /// exists on the host when `create_sandbox` returns.
    #[tokio::test]
    async fn the_factorys_qemu_options_are_checked_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initrd) = (dir.path().join("vmlinux"), dir.path().join("initrd"));
        std::fs::write(&kernel, "").unwrap();
        std::fs::write(&initrd, "").unwrap();
        let mut config =
            SandboxConfig::new("qemu-opts".parse().unwrap(), VmConfig::new(kernel, initrd));
        config.paths = Paths::under(dir.path().join("root"));
        config.cgroups = None;
        config.fs_share = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        let factory = QemuFactory::new(QemuOptions {
            binary: "/nonexistent/qemu-system-x86_64".into(),
            ..QemuOptions::default()
        });
        let logger = Logger::root(slog::Discard, slog::o!());
        let r = crate::create_sandbox(config, Arc::new(factory), logger).await;
        assert!(
            matches!(
                &r,
                Err(Error::Create { step: CreateStep::Plan, source, .. }) if matches!(
                    **source,
                    Error::Hypervisor {
                        source: vc_hypervisor::Error::InvalidQemuOptions(
                            vc_hypervisor::QemuOptionsError::BinaryNotFound { .. }
                        ),
                        ..
                    }
                )
            ),
            "{r:?}"
        );
        assert!(!dir.path().join("root").exists(), "something was made");
        QemuFactory::default()
            .check_vm(&HypervisorConfig::new("vm", "/k", "/run/vm"))
            .unwrap();
    }
}
