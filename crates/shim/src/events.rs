//! Task events to containerd, in the order they happen.
//!
//! containerd gives the shim its ttrpc address in `TTRPC_ADDRESS`; events
//! are forwarded there (`containerd.services.events.ttrpc.v1.Events/
//! Forward`), each in an envelope with the namespace and topic, the event
//! packed in an `Any` whose type URL is the event's full protobuf name
//! (what containerd decodes it by). Without that address (an old
//! containerd), each event goes through the publish binary containerd
//! named:
//!
//! ```text
//! PUBLISH_BINARY --address ADDRESS publish --topic TOPIC --namespace NS
//! ```
//!
//! with the `Any` on its stdin. One task sends them all, in order; a failed send is retried a
//! few times, then dropped with an error logged, never blocking the task
//! API.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageFull};
use slog::{Logger, debug, error, warn};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::protocol::ttrpc_events::{Envelope, ForwardRequest};
use crate::protocol::ttrpc_events_ttrpc::EventsClient;

/// The topics of task events.
pub mod topic {
    /// A task was created.
    pub const CREATE: &str = "/tasks/create";
    /// A task was started.
    pub const START: &str = "/tasks/start";
    /// A process exited.
    pub const EXIT: &str = "/tasks/exit";
    /// A task or exec process was deleted.
    pub const DELETE: &str = "/tasks/delete";
    /// A container was killed for lack of memory.
    pub const OOM: &str = "/tasks/oom";
    /// An exec process was added.
    pub const EXEC_ADDED: &str = "/tasks/exec-added";
    /// An exec process was started.
    pub const EXEC_STARTED: &str = "/tasks/exec-started";
    /// A task was paused.
    pub const PAUSED: &str = "/tasks/paused";
    /// A task was resumed.
    pub const RESUMED: &str = "/tasks/resumed";
}

/// How long one forward may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times an event is tried.
const ATTEMPTS: u32 = 5;

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// containerd's ttrpc socket (`TTRPC_ADDRESS`).
    Ttrpc(PathBuf),
    /// The publish binary, with containerd's main socket.
    Binary {
        /// The binary (`containerd`).
        program: PathBuf,
        /// containerd's address.
        address: String,
    },
    /// Nowhere (tests that do not look at events).
    Discard,
}

/// Sends events to containerd from a task of its own.
pub struct Publisher {
    tx: mpsc::UnboundedSender<Queued>,
    namespace: String,
    worker: JoinHandle<()>,
}

/// What the sending task is given.
enum Queued {
    /// An event to send.
    Event(Envelope),
    /// Answer once everything before is sent (or dropped).
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher of namespace `namespace`'s events to `sink`.
    pub fn new(sink: Sink, namespace: String, logger: Logger) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(forward_all(sink, rx, logger));
        Publisher {
            tx,
            namespace,
            worker,
        }
    }

    /// Queues `event` under `topic`.
    pub fn publish(&self, topic: &str, event: &impl MessageFull) {
        let mut envelope = Envelope::new();
        envelope.timestamp = Some(timestamp(SystemTime::now())).into();
        envelope.namespace = self.namespace.clone();
        envelope.topic = topic.to_owned();
        envelope.event = Some(pack(event)).into();
        // The worker ends only when this publisher is dropped.
        let _ = self.tx.send(Queued::Event(envelope));
    }

    /// Waits (at most `timeout`) until every event queued so far was sent
    /// or given up on.
    pub async fn flush(&self, timeout: Duration) {
        let (done, sent) = oneshot::channel();
        if self.tx.send(Queued::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(timeout, sent).await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

/// `event` in an `Any` named as containerd's type registry names it: the
/// message's full protobuf name, no URL prefix.
pub fn pack<E: MessageFull>(event: &E) -> Any {
    let mut any = Any::new();
    any.type_url = E::descriptor().full_name().to_owned();
    // Encoding a generated message into a Vec cannot fail.
    any.value = event.write_to_bytes().unwrap_or_default();
    any
}

/// A protobuf timestamp of `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    ts
}

async fn forward_all(sink: Sink, mut rx: mpsc::UnboundedReceiver<Queued>, logger: Logger) {
    let mut client: Option<EventsClient> = None;
    while let Some(queued) = rx.recv().await {
        let envelope = match queued {
            Queued::Event(e) => e,
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = match &sink {
                Sink::Discard => Ok(()),
                Sink::Ttrpc(path) => forward(path, &mut client, &envelope).await,
                Sink::Binary { program, address } => run_publish(program, address, &envelope).await,
            };
            match sent {
                Ok(()) => {
                    debug!(logger, "event published"; "topic" => &envelope.topic);
                    break;
                }
                Err(e) if attempt < ATTEMPTS => {
                    warn!(logger, "event not published; retrying"; "topic" => &envelope.topic, "error" => &e);
                    client = None;
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                Err(e) => {
                    error!(logger, "event dropped"; "topic" => &envelope.topic, "error" => e);
                    break;
                }
            }
        }
    }
}

async fn forward(
    path: &std::path::Path,
    client: &mut Option<EventsClient>,
    envelope: &Envelope,
) -> Result<(), String> {
    if client.is_none() {
        let address = format!("unix://{}", path.display());
        let c = ttrpc::r#async::Client::connect(&address)
            .await
            .map_err(|e| format!("connect to {address}: {e}"))?;
        *client = Some(EventsClient::new(c));
    }
    let Some(c) = client.as_ref() else {
        return Err("no client".into());
    };
    let mut request = ForwardRequest::new();
    request.envelope = Some(envelope.clone()).into();
    let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
    c.forward(ctx, &request)
        .await
        .map(drop)
        .map_err(|e| format!("forward: {e}"))
}

async fn run_publish(program: &PathBuf, address: &str, envelope: &Envelope) -> Result<(), String> {
    let data = envelope
        .event
        .as_ref()
        .map(|a| a.write_to_bytes().unwrap_or_default())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(program)
        .args(["--address", address, "publish", "--topic", &envelope.topic])
        .args(["--namespace", &envelope.namespace])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {}: {e}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&data)
            .await
            .map_err(|e| format!("write the event: {e}"))?;
    }
    let out = tokio::time::timeout(FORWARD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{} did not exit in time", program.display()))?
        .map_err(|e| format!("wait for {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::events::TaskExit;

    #[test]
    fn events_are_packed_under_their_protobuf_name() {
        let mut exit = TaskExit::new();
        exit.container_id = "c".into();
        exit.exit_status = 7;
        let any = pack(&exit);
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back, exit);
        let metrics = crate::protocol::cgroups_v1::Metrics::new();
        assert_eq!(pack(&metrics).type_url, "io.containerd.cgroups.v1.Metrics");
    }

    #[test]
    fn timestamps_keep_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
    }
}
