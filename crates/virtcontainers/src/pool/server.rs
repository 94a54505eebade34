//! Serving a pool to other processes: one JSON request and one JSON reply
//! per connection, each on a line, over a unix socket only root can open
//! (a request names directories the daemon moves a VM into).

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slog::{info, warn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use vc_hypervisor::{HypervisorConfig, HypervisorState};

use super::{NotTaken, PoolCounts, VmPool, end_orphan};
use crate::error::Error;

/// The longest request line read.
pub(crate) const MAX_LINE: u64 = 1 << 20;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client asks a pool daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PoolRequest {
    /// A VM for a sandbox whose planned VM is `config`: moved into its
    /// runtime and share directories and handed over.
    Take {
        /// The sandbox's planned VM.
        config: Box<HypervisorConfig>,
    },
    /// The pool's counters.
    Status,
}

/// What a pool daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum PoolReply {
    /// The VM, now the client's: adopt it from this state.
    Vm {
        /// Its state.
        state: HypervisorState,
    },
    /// The sandbox's VM differs from the pool's in `field`.
    Mismatch {
        /// The field.
        field: String,
        /// The pool's value.
        pool: String,
        /// The sandbox's value.
        sandbox: String,
    },
    /// No VM became ready in time.
    Empty,
    /// The counters.
    Status {
        /// VMs ready.
        ready: usize,
        /// VMs being started.
        starting: usize,
        /// VMs handed over so far.
        handed_over: u64,
        /// Failed starts so far.
        failed_starts: u64,
    },
    /// The request failed.
    Error {
        /// Why.
        reason: String,
    },
}

impl From<PoolCounts> for PoolReply {
    fn from(c: PoolCounts) -> Self {
        PoolReply::Status {
            ready: c.ready,
            starting: c.starting,
            handed_over: c.handed_over,
            failed_starts: c.failed_starts,
        }
    }
}

impl VmPool {
    /// Serves the pool on `socket` until `shutdown` resolves, then stops
    /// accepting, lets the requests under way finish (bounded), removes
    /// the socket and shuts the pool down ([`VmPool::shutdown`]).
    pub async fn serve(
        self: &Arc<Self>,
        socket: &Path,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(Error::Pool {
                socket: socket.to_owned(),
                reason: "another pool serves this socket".into(),
            });
        }
        let _ = std::fs::remove_file(socket);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(Error::host_io("create directory", dir))?;
        }
        let listener = UnixListener::bind(socket).map_err(Error::host_io("listen on", socket))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::host_io("restrict", socket))?;
        info!(self.logger, "VM pool serving"; "socket" => %socket.display());
        let mut requests = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let pool = self.clone();
                        requests.spawn(async move { pool.answer(stream).await });
                    }
                    Err(e) => warn!(self.logger, "accepting a pool client"; "error" => %e),
                },
                Some(_) = requests.join_next(), if !requests.is_empty() => {}
            }
        }
        drop(listener);
        let _ = std::fs::remove_file(socket);
        let drain = async { while requests.join_next().await.is_some() {} };
        if tokio::time::timeout(self.take_wait + self.start_timeout, drain)
            .await
            .is_err()
        {
            requests.abort_all();
        }
        self.shutdown().await
    }

    /// Reads one request and answers it.
    async fn answer(&self, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let read = tokio::time::timeout(
            REQUEST_TIMEOUT,
            BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE)).read_line(&mut line),
        )
        .await;
        let request = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<PoolRequest>(&line)
                .map_err(|e| format!("not a pool request: {e}")),
            Ok(Ok(_)) => Err("no request".to_owned()),
            Ok(Err(e)) => Err(format!("reading the request: {e}")),
            Err(_) => Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        };
        let (reply, taken) = match request {
            Err(reason) => (PoolReply::Error { reason }, None),
            Ok(PoolRequest::Status) => (self.counts().into(), None),
            Ok(PoolRequest::Take { config }) => match self.take(&config, &self.logger).await {
                Ok(state) => (PoolReply::Vm { state }, Some(config.runtime_dir.clone())),
                Err(NotTaken::Mismatch(m)) => (
                    PoolReply::Mismatch {
                        field: m.field,
                        pool: m.template,
                        sandbox: m.wanted,
                    },
                    None,
                ),
                Err(NotTaken::Empty) => (PoolReply::Empty, None),
                Err(NotTaken::Error(e)) => (
                    PoolReply::Error {
                        reason: crate::error::chain(&e),
                    },
                    None,
                ),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        if let Err(e) = write.write_all(text.as_bytes()).await {
            warn!(self.logger, "answering a pool client"; "error" => %e);
            // A VM moved into a client that is gone: nobody will own it.
            if let Some(runtime_dir) = taken {
                end_orphan(&runtime_dir, &self.logger).await;
            }
        }
    }
}
