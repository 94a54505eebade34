//! The host side of the guest agent protocol.
//!
//! - [`Agent`]: the async operations a sandbox needs from its guest agent
//!   (Kata's `AgentService` and `Health`: containers, processes, stdio,
//!   stats, guest details, ...);
//! - [`TtrpcAgent`]: the real implementation, ttrpc over a [`Transport`]:
//!   connects with retries until the guest answers (bounded by
//!   [`AgentConfig::connect_timeout`]), bounds every call by
//!   [`AgentConfig::call_timeout`] (except the ones that wait for a process by
//!   design), and fails every call with [`AgentError::Disconnected`] the
//!   moment the connection closes (QEMU died) instead of hanging;
//! - [`Transport`]: virtio-serial (QEMU's unix-socket chardev, the default
//!   here), vsock and hybrid vsock (`CONNECT <port>` handshake);
//! - [`ProcessOutput`]: a process's stdout/stderr as an `AsyncRead`;
//! - `testing::FakeAgent` (feature `testing`): a complete in-memory agent
//!   for the unit tests of the layers above.
//!
//! This crate knows nothing of the hypervisor: the embedder passes the
//! socket path (or CID) its VMM exposes.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use tokio::io::AsyncReadExt;
//! use vc_agent_client::{Agent, AgentConfig, OutputStream, ProcessOutput, Transport, TtrpcAgent};
//!
//! # async fn run(logger: slog::Logger) -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Transport::Serial { socket: "/run/vc/sb1/agent.sock".into() };
//! let agent = Arc::new(TtrpcAgent::connect(transport, AgentConfig::default(), &logger).await?);
//! agent.check().await?;
//! // ... create_container / start_container, then:
//! let mut out = ProcessOutput::new(agent.clone(), "c1", "c1", OutputStream::Stdout);
//! let mut text = String::new();
//! out.read_to_string(&mut text).await?;
//! let status = agent.wait_process("c1", "c1").await?;
//! println!("{text} (exit {status})");
//! # Ok(()) }
//! ```

mod agent;
mod error;
mod stdio;
pub mod transport;
mod ttrpc_agent;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use agent::{Agent, AgentMethod};
pub use error::{AgentError, Result};
pub use stdio::{OutputStream, ProcessOutput};
pub use transport::Transport;
pub use ttrpc_agent::{AgentConfig, TtrpcAgent};
pub use vc_agent_protocol as protocol;
/// The signal type of [`Agent::signal_process`] (from `vc-types`).
pub use vc_types::Signal;

#[cfg(test)]
mod tests;
