//! The shim's errors, and the ttrpc status each one answers containerd
//! with: containerd turns the status code back into its own error kinds
//! (`errdefs.FromGRPC`), so "not found", "already exists", "failed
//! precondition" and "not implemented" must come back as those codes.

use std::path::PathBuf;

use ttrpc::Code;
use virtcontainers::vc_types;

/// What can go wrong in the shim.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SDK refused or failed an operation.
    #[error("{operation}")]
    Sandbox {
        /// What the shim was doing.
        operation: String,
        /// The SDK's error (boxed: it is large).
        #[source]
        source: Box<virtcontainers::Error>,
    },
    /// An id containerd sent is not one the SDK accepts.
    #[error("invalid id {id:?}")]
    InvalidId {
        /// The id as sent.
        id: String,
        /// Why it is not valid.
        #[source]
        source: vc_types::IdError,
    },
    /// No task (or exec process) by that id in this shim.
    #[error("{what} not found")]
    NotFound {
        /// The task or process, named.
        what: String,
    },
    /// A task or exec process by that id exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// The task or process, named.
        what: String,
    },
    /// The operation does not apply in the task's current state.
    #[error("cannot {operation} {what}: it is {state}")]
    WrongState {
        /// What was asked.
        operation: &'static str,
        /// The task or process, named.
        what: String,
        /// Its state.
        state: String,
    },
    /// A request that cannot be carried out as sent.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// Why.
        reason: String,
    },
    /// Something containerd asked for that this shim does not do.
    #[error(transparent)]
    Unsupported(#[from] vc_types::Unsupported),
    /// The configuration file is missing, unreadable or invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The guest image (kernel and initramfs) is nowhere the shim looks.
    #[error(
        "no guest image: set hypervisor.qemu.kernel and initrd in the configuration, \
         or put vmlinux and initramfs.cpio in one of {searched:?} (`make guest-image`, \
         `make install-shim`)"
    )]
    NoGuestImage {
        /// The directories searched.
        searched: Vec<PathBuf>,
    },
    /// A host operation (a file, a FIFO, a mount, a socket) failed.
    #[error("{operation} {path}")]
    Io {
        /// What was done.
        operation: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A mount of containerd's rootfs, or its unmount, failed.
    #[error("{operation} {target}")]
    Mount {
        /// Mount or unmount.
        operation: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// A protobuf message did not encode or decode.
    #[error("{what}")]
    Protobuf {
        /// Which message.
        what: &'static str,
        /// The codec's error.
        #[source]
        source: protobuf::Error,
    },
    /// A JSON document (an OCI process or resources sent by containerd,
    /// the bundle's state file) did not parse.
    #[error("{what}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// The shim's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an SDK error with what the shim was doing.
    pub fn sandbox(operation: impl Into<String>) -> impl FnOnce(virtcontainers::Error) -> Error {
        let operation = operation.into();
        move |source| Error::Sandbox {
            operation,
            source: Box::new(source),
        }
    }

    /// Wraps an I/O error with the operation and path.
    pub fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            operation,
            path,
            source,
        }
    }

    /// The ttrpc status code containerd maps back to its error kinds.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound { .. } => Code::NOT_FOUND,
            Error::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Error::WrongState { .. } => Code::FAILED_PRECONDITION,
            Error::InvalidId { .. }
            | Error::InvalidRequest { .. }
            | Error::Json { .. }
            | Error::Protobuf { .. } => Code::INVALID_ARGUMENT,
            Error::Unsupported(_) => Code::UNIMPLEMENTED,
            Error::Sandbox { source, .. } => sdk_code(source),
            Error::Config { .. } | Error::NoGuestImage { .. } => Code::FAILED_PRECONDITION,
            Error::Io { .. } | Error::Mount { .. } => Code::INTERNAL,
        }
    }
}

/// The code of an SDK error, by its kind (never by its text).
fn sdk_code(e: &virtcontainers::Error) -> Code {
    use virtcontainers::Error as E;
    match e {
        E::NotFound { .. } | E::ContainerNotFound { .. } => Code::NOT_FOUND,
        E::AlreadyExists { .. } | E::ContainerExists { .. } => Code::ALREADY_EXISTS,
        E::WrongState { .. } => Code::FAILED_PRECONDITION,
        E::InvalidId(_)
        | E::InvalidVmConfig { .. }
        | E::InvalidCgroupsConfig { .. }
        | E::InvalidHostname { .. }
        | E::InvalidBundle { .. }
        | E::BundleConfig { .. }
        | E::InvalidSpec { .. } => Code::INVALID_ARGUMENT,
        E::Unsupported(_) => Code::UNIMPLEMENTED,
        E::Timeout { .. } | E::LockTimeout { .. } => Code::DEADLINE_EXCEEDED,
        E::Create { source, .. } => sdk_code(source),
        _ => Code::INTERNAL,
    }
}

/// An error and its causes, on one line (for logs and ttrpc messages).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_error_kinds_come_back_as_their_codes() {
        let missing = Error::NotFound {
            what: "task \"a\"".into(),
        };
        assert_eq!(missing.code(), Code::NOT_FOUND);
        let unsupported = Error::from(vc_types::Unsupported::new("checkpoint", "a VM"));
        assert_eq!(unsupported.code(), Code::UNIMPLEMENTED);
        let sdk = Error::sandbox("delete")(virtcontainers::Error::WrongState {
            operation: "delete",
            subject: "container \"a\"".into(),
            state: "running".into(),
        });
        assert_eq!(sdk.code(), Code::FAILED_PRECONDITION);
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(sdk) else {
            panic!("not a status");
        };
        assert_eq!(status.code(), Code::FAILED_PRECONDITION);
        assert!(status.message().contains("running"), "{}", status.message());
    }
}
