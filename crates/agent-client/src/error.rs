//! The errors of the agent client.

use std::time::Duration;

use crate::AgentMethod;

/// What went wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The transport could not open a stream (socket missing, refused, ...).
    #[error("connecting to the agent at {target}: {source}")]
    Connect {
        /// The transport address, e.g. `serial:/run/vc/sb/agent.sock`.
        target: String,
        /// The I/O error of the last attempt.
        #[source]
        source: std::io::Error,
    },
    /// The hybrid vsock handshake got something other than `OK <port>`.
    #[error("hybrid vsock handshake with {target} failed: got {reply:?}")]
    Handshake {
        /// The unix socket and port.
        target: String,
        /// What the VMM answered (empty when it closed the connection).
        reply: String,
    },
    /// The agent did not answer a health check before the connect deadline.
    #[error("the agent at {target} did not answer within {waited:?} (last: {last})")]
    ConnectTimeout {
        /// The transport address.
        target: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure seen.
        last: String,
    },
    /// A call did not complete in time.
    #[error("{method} timed out after {timeout:?}")]
    Timeout {
        /// The method that timed out.
        method: AgentMethod,
        /// The per-call timeout.
        timeout: Duration,
    },
    /// The connection closed under the call: the guest (or its VMM) went away.
    #[error("{method}: the agent connection closed (guest gone?)")]
    Disconnected {
        /// The method in flight.
        method: AgentMethod,
    },
    /// The agent answered with an error status.
    #[error("{method} failed in the agent ({code:?}): {message}")]
    Rpc {
        /// The method that failed.
        method: AgentMethod,
        /// The ttrpc/gRPC status code.
        code: ttrpc::Code,
        /// The agent's message.
        message: String,
    },
    /// Another ttrpc failure (encoding, local transport).
    #[error("{method}: ttrpc: {source}")]
    Ttrpc {
        /// The method in flight.
        method: AgentMethod,
        /// The ttrpc error.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent answers but says it does not serve.
    #[error("the agent reports it is not serving")]
    NotServing,
    /// The request could not be built (e.g. the OCI spec has values the
    /// protocol cannot carry).
    #[error("invalid request for {method}: {source}")]
    InvalidRequest {
        /// The method the request was for.
        method: AgentMethod,
        /// Why.
        #[source]
        source: vc_agent_protocol::convert::ConvertError,
    },
    /// This transport or operation is not available here.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),
}

impl AgentError {
    /// Whether the error means the guest is unreachable (as opposed to a
    /// request the agent refused).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            AgentError::Disconnected { .. } | AgentError::Connect { .. }
        )
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, AgentError>;
