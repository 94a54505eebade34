//! The QMP connection, through the `qapi` crate's async tokio client.
//!
//! One task reads the socket: it completes command responses and forwards
//! QMP events to a broadcast channel (device removal is confirmed by the
//! `DEVICE_DELETED` event). If the connection breaks while QEMU lives, the
//! next command connects again.
//!
//! A QMP monitor serves one client at a time: a second one waits in the
//! socket's backlog until the first hangs up. So a session is held only
//! while a command runs or someone listens for events, and released as
//! soon as it is idle; another process (`attach`, `fetch_sandbox`) then
//! gets its turn within a command's time.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
    /// The session's socket again, for passing fds (SCM_RIGHTS) beside
    /// the commands that the service writes.
    socket: std::os::unix::net::UnixStream,
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
    /// One fd in flight at a time: `getfd` names the last one received.
    passing: tokio::sync::Mutex<()>,
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
            passing: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks that the monitor answers: connects and negotiates
    /// capabilities, then releases the session if nothing else uses it.
    pub async fn connect(&self) -> Result<()> {
        self.session().await.map(drop)?;
        self.release_if_idle();
        Ok(())
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
            let socket = UnixStream::connect(&self.path).await?;
            let again = socket.as_fd().try_clone_to_owned()?;
            let stream = QmpStreamTokio::open(socket).await?;
            Ok::<_, std::io::Error>((stream.negotiate().await?, again))
        };
        let (stream, socket) = tokio::time::timeout(self.timeout, negotiate)
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
            socket: socket.into(),
        })
    }

    /// Hands QEMU a copy of `fd` under `name` (QMP `getfd`), for a later
    /// command to use by name (`netdev_add ... fd=<name>`): the fd goes as
    /// SCM_RIGHTS with one space (JSON whitespace, which the monitor
    /// skips) on the session's socket, then `getfd` names it.
    pub async fn pass_fd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<()> {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        let _one_at_a_time = self.passing.lock().await;
        let session = self.session().await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sent = loop {
            match session.socket.send_with_fd(&b" "[..], fd.as_raw_fd()) {
                Ok(_) => break Ok(()),
                // The socket is non-blocking (tokio's): a full buffer.
                Err(e) if e.errno() == libc::EAGAIN && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    break Err(Error::QmpIo {
                        command: "getfd",
                        source: std::io::Error::from_raw_os_error(e.errno()),
                    });
                }
            }
        };
        // The same session: a hang-up in between would close the fd
        // QEMU holds for the next getfd.
        let named = match sent {
            Ok(()) => {
                let getfd = qapi::qmp::getfd {
                    fdname: name.to_owned(),
                };
                self.execute_on(&session, getfd).await.map(drop)
            }
            Err(e) => Err(e),
        };
        drop(session);
        self.release_if_idle();
        named
    }

    /// Runs `command` within the timeout.
    pub async fn execute<C>(&self, command: C) -> Result<C::Ok>
    where
        C: qapi::qmp::QmpCommand + Send,
    {
        let session = self.session().await?;
        let result = self.execute_on(&session, command).await;
        drop(session);
        self.release_if_idle();
        result
    }

    async fn execute_on<C>(&self, session: &Session, command: C) -> Result<C::Ok>
    where
        C: qapi::qmp::QmpCommand + Send,
    {
        let result = tokio::time::timeout(self.timeout, session.service.execute(command))
            .await
            .map_err(|_| Error::QmpTimeout {
                command: C::NAME,
                timeout: self.timeout,
            })?;
        result.map_err(|e| match e {
            qapi::ExecuteError::Qapi(e) => Error::QmpCommand {
                command: C::NAME,
                class: e.class,
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

    /// Hangs up when no command is in flight and nobody listens for
    /// events, so that another client can use the monitor.
    pub fn release_if_idle(&self) {
        let mut slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let idle = slot
            .as_ref()
            .is_some_and(|s| Arc::strong_count(s) == 1 && s.events.receiver_count() == 0);
        if idle {
            slot.take();
        }
    }

    /// Drops the session (the reader task ends).
    pub fn disconnect(&self) {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
    const RUNNING: &str =
        r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#;

    /// A QMP server that answers capabilities and query-status, emits an
    /// event before each answer, and hangs up after `answers_per_session`.
    fn fake_qemu(listener: UnixListener, answers_per_session: usize) -> Arc<AtomicUsize> {
        let sessions = Arc::new(AtomicUsize::new(0));
        let count = sessions.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write
                    .write_all(format!("{GREETING}\n").as_bytes())
                    .await
                    .unwrap();
                let mut answered = 0;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if line.contains("qmp_capabilities") {
                        r#"{"return": {}}"#
                    } else {
                        RUNNING
                    };
                    if !line.contains("qmp_capabilities") {
                        let event = r#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}"#;
                        write
                            .write_all(format!("{event}\n").as_bytes())
                            .await
                            .unwrap();
                    }
                    write
                        .write_all(format!("{reply}\n").as_bytes())
                        .await
                        .unwrap();
                    if !line.contains("qmp_capabilities") {
                        answered += 1;
                        if answered == answers_per_session {
                            break;
                        }
                    }
                }
            }
        });
        sessions
    }

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    #[tokio::test]
    async fn commands_events_and_reconnect_after_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let sessions = fake_qemu(UnixListener::bind(&path).unwrap(), 1);
        let qmp = Qmp::new(&path, Duration::from_secs(5), logger());
        let mut events = qmp.subscribe().await.unwrap();
        let status = qmp.execute(qapi::qmp::query_status {}).await.unwrap();
        assert!(status.running);
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(event, Event::RESUME { .. }), "{event:?}");
        // The server hung up: once the reader notices, the next command
        // opens a new session.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while qmp.live_session().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session not seen as closed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            qmp.execute(qapi::qmp::query_status {})
                .await
                .unwrap()
                .running
        );
        assert_eq!(sessions.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn missing_socket_and_silent_server_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let qmp = Qmp::new(
            &dir.path().join("none.sock"),
            Duration::from_millis(200),
            logger(),
        );
        assert!(matches!(qmp.connect().await, Err(Error::QmpConnect { .. })));

        // A server that never greets: the connect times out.
        let path = dir.path().join("mute.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let _keep = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let qmp = Qmp::new(&path, Duration::from_millis(200), logger());
        let err = qmp.connect().await.unwrap_err();
        assert!(
            matches!(&err, Error::QmpConnect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
    }
}
