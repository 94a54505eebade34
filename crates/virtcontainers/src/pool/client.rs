//! Taking a VM from a pool another process serves ([`super::VmPool::serve`]).

use std::path::Path;
use std::time::Duration;

use slog::{Logger, info, warn};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vc_hypervisor::{HypervisorConfig, HypervisorState};

use super::end_orphan;
use super::server::{MAX_LINE, PoolReply, PoolRequest};

/// Asks the daemon at `socket` for a VM for `wanted`; `None` (logged why)
/// when it has none for it or cannot be reached. After a failure
/// mid-request, whatever the daemon may have moved into `wanted`'s runtime
/// dir is ended.
pub(crate) async fn take(
    socket: &Path,
    wanted: &HypervisorConfig,
    timeout: Duration,
    logger: &Logger,
) -> Option<HypervisorState> {
    let asked = std::sync::atomic::AtomicBool::new(false);
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut line = serde_json::to_string(&PoolRequest::Take {
            config: Box::new(wanted.clone()),
        })?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        asked.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut reply = String::new();
        BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_LINE))
            .read_line(&mut reply)
            .await?;
        Ok::<_, std::io::Error>(serde_json::from_str::<PoolReply>(&reply)?)
    };
    let reply = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {timeout:?}"),
            };
            warn!(logger, "VM pool unreachable: booting cold"; "socket" => %socket.display(), "error" => error);
            if asked.load(std::sync::atomic::Ordering::Relaxed) {
                end_orphan(&wanted.runtime_dir, logger).await;
            }
            return None;
        }
    };
    match reply {
        PoolReply::Vm { state } => {
            info!(logger, "VM taken from the pool"; "socket" => %socket.display());
            Some(state)
        }
        PoolReply::Mismatch {
            field,
            pool,
            sandbox,
        } => {
            warn!(logger, "VM does not match the pool: booting cold";
                "field" => field, "pool" => pool, "sandbox" => sandbox);
            None
        }
        PoolReply::Empty => {
            warn!(logger, "VM pool empty: booting cold");
            None
        }
        PoolReply::Status { .. } | PoolReply::Error { .. } => {
            warn!(logger, "VM pool refused: booting cold"; "reply" => ?reply);
            None
        }
    }
}

/// The counters of the pool served at `socket`.
pub async fn status(socket: &Path, timeout: Duration) -> Result<PoolReply, crate::Error> {
    let pool_error = |reason: String| crate::Error::Pool {
        socket: socket.to_owned(),
        reason,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut line = serde_json::to_string(&PoolRequest::Status)?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_LINE))
            .read_line(&mut reply)
            .await?;
        Ok::<_, std::io::Error>(serde_json::from_str::<PoolReply>(&reply)?)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| pool_error(format!("no answer within {timeout:?}")))?
        .map_err(|e| pool_error(e.to_string()))
}
