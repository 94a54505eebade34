//! The transports that carry the agent protocol: each yields one connected
//! byte stream for the ttrpc client.
//!
//! | transport | host side | guest side |
//! |---|---|---|
//! | [`Transport::Serial`] | the unix socket of QEMU's `virtserialport` chardev | `/dev/vportNpM` named `agent.channel.0` |
//! | [`Transport::SerialPool`] | the first free of several such sockets | `agent.channel.<n>` |
//! | [`Transport::Vsock`] | `AF_VSOCK` to the guest's CID (needs `/dev/vhost-vsock`) | a vsock listener |
//! | [`Transport::HybridVsock`] | a VMM's unix socket + `CONNECT <port>\n` / `OK <n>\n` | a vsock listener |

mod hybrid_vsock;
mod serial;
mod serial_pool;
mod vsock;

use std::fmt;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

pub use hybrid_vsock::handshake as hybrid_vsock_handshake;
pub use serial_pool::lock_path as serial_pool_lock_path;

/// The vsock port the agent listens on by default (Kata's too).
pub const DEFAULT_AGENT_VSOCK_PORT: u32 = 1024;

/// A connected, bidirectional byte stream to the agent.
pub trait Connection: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Connection for T {}

/// A boxed [`Connection`], what every transport yields.
pub type AgentStream = Box<dyn Connection>;

/// Where the agent is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// virtio-serial: the unix socket QEMU serves for the
    /// `agent.channel.0` port (`-chardev socket,server=on,...`). The default
    /// where the host has no `/dev/vhost-vsock`.
    Serial {
        /// The chardev's unix socket.
        socket: PathBuf,
    },
    /// Several virtio-serial agent ports: the stream takes the first one no
    /// other process holds (a QEMU socket serves one client at a time),
    /// marked by an exclusive lock on `<socket>.lock` for the stream's
    /// life.
    SerialPool {
        /// The ports' unix sockets, in order of preference.
        sockets: Vec<PathBuf>,
    },
    /// vsock (`vhost-vsock-pci`): the guest's context id and the agent's port.
    Vsock {
        /// The guest's CID (3 or more).
        cid: u32,
        /// The agent's port, usually [`DEFAULT_AGENT_VSOCK_PORT`].
        port: u32,
    },
    /// Hybrid vsock (Firecracker, Cloud Hypervisor, Dragonball): a unix
    /// socket of the VMM and a `CONNECT <port>` handshake.
    HybridVsock {
        /// The VMM's vsock unix socket.
        socket: PathBuf,
        /// The agent's port, usually [`DEFAULT_AGENT_VSOCK_PORT`].
        port: u32,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Serial { socket } => write!(f, "serial:{}", socket.display()),
            Transport::SerialPool { sockets } => {
                let first = sockets
                    .first()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default();
                write!(
                    f,
                    "serial-pool:{first} (+{})",
                    sockets.len().saturating_sub(1)
                )
            }
            Transport::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Transport::HybridVsock { socket, port } => {
                write!(f, "hvsock:{}:{port}", socket.display())
            }
        }
    }
}

impl Transport {
    /// Opens one stream to the agent. No retry here: the caller
    /// ([`crate::TtrpcAgent::connect`]) retries until its deadline.
    pub async fn dial(&self) -> crate::Result<AgentStream> {
        match self {
            Transport::Serial { socket } => serial::dial(socket).await,
            Transport::SerialPool { sockets } => serial_pool::dial(sockets).await,
            Transport::Vsock { cid, port } => vsock::dial(*cid, *port).await,
            Transport::HybridVsock { socket, port } => hybrid_vsock::dial(socket, *port).await,
        }
    }
}
