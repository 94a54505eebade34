//! The guest agent of virtcontainers-rs: PID 1 inside the sandbox VM.
//!
//! The binary (`vc-guest-agent`, built static) is the initramfs's `/init`:
//! it makes its root pivotable (so containers get `pivot_root`, see
//! [`guest::make_root_pivotable`]), mounts the pseudo filesystems, loads the bundled kernel modules
//! (`/lib/modules/vc/load-order`), mounts cgroup2 for the containers, finds
//! the virtio-serial port named `agent.channel.0` and serves the agent
//! protocol (Kata-compatible ttrpc, [`vc_agent_protocol`]) on it, one ttrpc
//! connection per host connection, for as long as the VM runs; when the VM
//! has a vsock device it also serves on vsock port [`VSOCK_PORT`], where a
//! Kata runtime looks for its agent. It reaps
//! every child and never exits; a bad request gets a ttrpc error.
//!
//! This library holds the logic, so that most of it is tested on a host:
//! - [`container`]: containers from their OCI spec (written on `nix`/`libc`
//!   after evaluating youki's `libcontainer`; the module doc says why) — a
//!   pure [`container::plan`] and the clone/exec machinery;
//! - [`service`]: the ttrpc services over a [`container::Sandbox`];
//! - [`network`]: interfaces, routes, neighbours and DNS as the host
//!   describes them, applied through netlink;
//! - [`reaper`], [`cgroup`], [`oom`], [`storage`], [`guest`], [`resources`]
//!   (CPU and memory onlining, memory metrics), [`channel`], [`clone_state`]
//!   (fresh entropy and clock for a VM cloned from a template).
//!
//! Kernel parameters it reads: `agent.log=<error|warn|info|debug>`,
//! `agent.channel=<port name>`, `agent.cgroups=0`.
//!
//! # Example
//!
//! Serving the protocol on a unix socket (what the tests do on a host):
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use vc_guest_agent::{Agent, reaper::ReapMode};
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let agent = Agent::new(ReapMode::Registered, None, logger)?;
//! let mut server = agent.serve_unix("/run/my-agent.sock").await?;
//! // ... connect with vc-agent-client, then:
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod cgroup;
pub mod channel;
pub mod clone_state;
pub mod container;
pub mod devices;
pub mod error;
pub mod guest;
pub mod network;
pub mod oom;
pub mod reaper;
pub mod resources;
pub mod service;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slog::{Logger, info};
use tokio::task::JoinHandle;

pub use error::{Error, Result};

/// The vsock port Kata's agent listens on, and so ours.
pub const VSOCK_PORT: u32 = 1024;

/// The ttrpc address of a vsock listener on `port` for any CID.
pub fn vsock_address(port: u32) -> String {
    format!("vsock://-1:{port}")
}

/// Whether the guest has a vsock device (`dev/vsock` exists once the
/// virtio vsock transport bound to one).
pub fn has_vsock(dev: &Path) -> bool {
    dev.join("vsock").exists()
}

/// The agent: its sandbox, its reaper task and its services.
pub struct Agent {
    sandbox: Arc<container::Sandbox>,
    service: Arc<service::AgentService>,
    reaper: JoinHandle<()>,
    logger: Logger,
}

impl Agent {
    /// Starts the reaper and builds the services. Call within a tokio runtime.
    pub fn new(
        mode: reaper::ReapMode,
        cgroup_root: Option<PathBuf>,
        logger: Logger,
    ) -> Result<Agent> {
        let reaper = reaper::Reaper::new(mode);
        let task = reaper
            .clone()
            .run()
            .map_err(Error::sys("installing the SIGCHLD handler"))?;
        let sandbox = Arc::new(container::Sandbox::new(
            reaper,
            container::SandboxConfig { cgroup_root },
            logger.clone(),
        ));
        let service = service::AgentService::new(sandbox.clone(), logger.clone());
        Ok(Agent {
            sandbox,
            service,
            reaper: task,
            logger,
        })
    }

    /// The containers.
    pub fn sandbox(&self) -> &Arc<container::Sandbox> {
        &self.sandbox
    }

    /// Serves on a unix socket (tests, or a debug channel).
    pub async fn serve_unix(
        &self,
        path: impl AsRef<Path>,
    ) -> anyhow::Result<ttrpc::r#async::Server> {
        let addr = format!("unix://{}", path.as_ref().display());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&addr)?
            .register_service(self.service.services());
        server.start().await?;
        Ok(server)
    }

    /// Serves on vsock port `port` (any CID): Kata's runtimes reach their
    /// agent only there ([`VSOCK_PORT`]), when the VM has a vsock device.
    pub async fn serve_vsock(&self, port: u32) -> anyhow::Result<ttrpc::r#async::Server> {
        let mut server = ttrpc::r#async::Server::new()
            .bind(&vsock_address(port))?
            .register_service(self.service.services());
        server.start().await?;
        Ok(server)
    }

    /// Serves on the virtio-serial port at `path`, one ttrpc connection per
    /// host connection; returns only if the server fails to start.
    pub async fn serve_serial(&self, path: &Path) -> anyhow::Result<ttrpc::r#async::Server> {
        let port = Arc::new(channel::SerialPort::open(path)?);
        let logger = self.logger.clone();
        let sessions = futures::stream::unfold(None::<Arc<channel::SessionEnd>>, move |previous| {
            let port = port.clone();
            let logger = logger.clone();
            async move {
                if let Some(end) = previous {
                    end.wait().await;
                    info!(logger, "host disconnected; waiting for the next connection");
                }
                match port.next_session().await {
                    Ok(session) => {
                        info!(logger, "host connected");
                        let end = session.end();
                        Some((Ok(session), Some(end)))
                    }
                    // The listener logs it and asks again, after a
                    // pause (nothing was handed out: no end to wait for).
                    Err(e) => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other(e)), None))
                    }
                }
            }
        });
        let listener = ttrpc::r#async::transport::Listener::new(sessions);
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener)
            .register_service(self.service.services());
        server.start().await?;
        Ok(server)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

#[cfg(test)]
mod tests;
