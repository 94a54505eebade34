//! The errors of the guest agent, and their ttrpc status codes.

use std::io;
use std::path::PathBuf;

/// What went wrong serving a request. Every variant names the container,
/// process or path concerned; the host sees the message in the ttrpc status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or its OCI spec is not usable.
    #[error("invalid request for container {container_id:?}: {reason}")]
    InvalidRequest {
        /// The container the request was for.
        container_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A container with that id exists already.
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    /// No container with that id.
    #[error("no container {0:?}")]
    ContainerNotFound(String),
    /// A process with that id exists already in the container.
    #[error("process {exec_id:?} already exists in container {container_id:?}")]
    ProcessExists {
        /// The container.
        container_id: String,
        /// The process.
        exec_id: String,
    },
    /// No such process in the container.
    #[error("no process {exec_id:?} in container {container_id:?}")]
    ProcessNotFound {
        /// The container.
        container_id: String,
        /// The process.
        exec_id: String,
    },
    /// The container is not in a state that allows the operation.
    #[error("container {container_id:?} is {state}: cannot {operation}")]
    BadState {
        /// The container.
        container_id: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// Setting up the container's process failed at `step` (in the child,
    /// before the user's program ran).
    #[error("container {container_id:?}: {step}{detail} failed: {source}")]
    Setup {
        /// The container.
        container_id: String,
        /// The setup step (e.g. `pivot_root`, `executable lookup`).
        step: &'static str,
        /// More about where it failed (the mount's destination), or empty.
        detail: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// An operation on a path failed.
    #[error("{operation} {path}: {source}", path = path.display())]
    Io {
        /// What was done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A system call without a path failed.
    #[error("{operation}: {source}")]
    Sys {
        /// What was done.
        operation: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The process's stdin was closed already.
    #[error("stdin of {container_id}/{exec_id} is closed")]
    StdinClosed {
        /// The container.
        container_id: String,
        /// The process.
        exec_id: String,
    },
    /// A network request that cannot be applied as given (a bad MAC,
    /// address, prefix, MTU or route).
    #[error("invalid network request: {reason}")]
    InvalidNetwork {
        /// What is wrong.
        reason: String,
    },
    /// No link with that name or MAC (a NIC that never appeared).
    #[error("no network link {link}")]
    LinkNotFound {
        /// The name or MAC looked for.
        link: String,
    },
    /// A netlink request failed.
    #[error("netlink: cannot {operation} {target}")]
    Netlink {
        /// What was done.
        operation: &'static str,
        /// On what.
        target: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Hot-plugged CPUs did not come online in time.
    #[error("{online} CPUs online after {waited:?}, {wanted} wanted")]
    OnlineTimeout {
        /// How many should have been online.
        wanted: u32,
        /// How many were.
        online: u32,
        /// How long the agent looked.
        waited: std::time::Duration,
    },
    /// Not supported by this agent or this guest.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),
}

impl Error {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            operation,
            path,
            source,
        }
    }

    pub(crate) fn sys(operation: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Sys { operation, source }
    }

    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Error::InvalidRequest { .. } | Error::InvalidNetwork { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            Error::LinkNotFound { .. } => ttrpc::Code::NOT_FOUND,
            Error::ContainerExists(_) | Error::ProcessExists { .. } => ttrpc::Code::ALREADY_EXISTS,
            Error::ContainerNotFound(_) | Error::ProcessNotFound { .. } => ttrpc::Code::NOT_FOUND,
            Error::BadState { .. } | Error::StdinClosed { .. } => ttrpc::Code::FAILED_PRECONDITION,
            Error::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::OnlineTimeout { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            Error::Setup { .. } | Error::Io { .. } | Error::Sys { .. } | Error::Netlink { .. } => {
                ttrpc::Code::INTERNAL
            }
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
