//! The QMP connection, through the `qapi` crate's async tokio client.
//!
//! One task reads the socket: it completes command responses and forwards
//! QMP events to a broadcast channel (device removal is confirmed by the
//! `DEVICE_DELETED` event). If the connection breaks while QEMU lives, the
//! next command connects again: QMP accepts a new client once the old one
//! is gone, which is also how another process attaches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp::Event;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

type Service = QapiService<QmpStreamTokio<WriteHalf<UnixStream>>>;

/// One live QMP session.
struct Session {
    service: Service,
    events: broadcast::Sender<Event>,
    reader: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A QMP client that reconnects when its session breaks.
pub struct Qmp {
    path: PathBuf,
    timeout: Duration,
    logger: slog::Logger,
    session: Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// A client for the socket at `path`; commands time out after `timeout`.
    pub fn new(path: &Path, timeout: Duration, logger: slog::Logger) -> Self {
        Self {
            path: path.to_owned(),
            timeout,
            logger,
            session: Mutex::new(None),
        }
    }

    /// Connects now (once), negotiating capabilities.
    pub async fn connect(&self) -> Result<()> {
        self.session().await.map(drop)
    }

    async fn session(&self) -> Result<Arc<Session>> {
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        let session = Arc::new(self.open().await?);
        let mut slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            // Another caller reconnected meanwhile: use theirs.
            Some(existing) if !existing.reader.is_finished() => Ok(existing.clone()),
            _ => {
                *slot = Some(session.clone());
                Ok(session)
            }
        }
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        let slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().filter(|s| !s.reader.is_finished()).cloned()
    }

    async fn open(&self) -> Result<Session> {
        let connect_err = |source| Error::QmpConnect {
            path: self.path.clone(),
            source,
        };
        let negotiate = async {
            let stream = QmpStreamTokio::open_uds(&self.path).await?;
            stream.negotiate().await
        };
        let stream = tokio::time::timeout(self.timeout, negotiate)
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (service, mut events) = stream.into_parts();
        // Let dropping the service end the reader (see QapiEvents::release).
        let _ = events.release();
        let (tx, _) = broadcast::channel(64);
        let forward = tx.clone();
        let logger = self.logger.clone();
        let reader = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        slog::debug!(logger, "QMP event"; "event" => ?event);
                        let _ = forward.send(event);
                    }
                    Err(e) => {
                        slog::warn!(logger, "QMP stream error"; "error" => %e);
                        break;
                    }
                }
            }
        });
        Ok(Session {
            service,
            events: tx,
            reader,
        })
    }

    /// Runs `command` within the timeout.
    pub async fn execute<C>(&self, command: C) -> Result<C::Ok>
    where
        C: qapi::qmp::QmpCommand + Send,
    {
        let session = self.session().await?;
        let result = tokio::time::timeout(self.timeout, session.service.execute(command))
            .await
            .map_err(|_| Error::QmpTimeout {
                command: C::NAME,
                timeout: self.timeout,
            })?;
        result.map_err(|e| match e {
            qapi::ExecuteError::Qapi(e) => Error::QmpCommand {
                command: C::NAME,
                class: format!("{:?}", e.class),
                desc: e.desc,
            },
            qapi::ExecuteError::Io(source) => Error::QmpIo {
                command: C::NAME,
                source,
            },
        })
    }

    /// A receiver of the QMP events from now on.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Event>> {
        Ok(self.session().await?.events.subscribe())
    }

    /// Drops the session (the reader task ends).
    pub fn disconnect(&self) {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
