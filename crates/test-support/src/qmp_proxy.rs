//! Fault injection in front of a real QEMU: [`QmpFaultProxy`] takes the
//! place of a running VM's QMP socket and refuses the commands a test
//! chooses, the way QEMU refuses a command it cannot carry out (a
//! `GenericError` answer); everything else reaches QEMU unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Which commands to refuse: given a command (`{"execute": .., "arguments": ..}`).
pub type Refuse = dyn Fn(&Value) -> bool + Send + Sync;

/// A QMP proxy in place of a VM's socket; [`remove`](Self::remove) (or
/// drop) puts the real socket back.
pub struct QmpFaultProxy {
    socket: PathBuf,
    real: PathBuf,
    accept: JoinHandle<()>,
    refused: Arc<AtomicUsize>,
}

impl QmpFaultProxy {
    /// Moves the QMP socket at `socket` aside (QEMU keeps listening on it
    /// under the new name) and serves in its place: each client is relayed
    /// to QEMU, and a command for which `refuse` says yes is answered
    /// `GenericError` without reaching QEMU.
    pub fn install(
        socket: &Path,
        refuse: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let real = socket.with_extension("real");
        std::fs::rename(socket, &real).with_context(|| format!("moving {}", socket.display()))?;
        let listener = match UnixListener::bind(socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::rename(&real, socket);
                return Err(e).context("binding the proxy socket");
            }
        };
        let refuse: Arc<Refuse> = Arc::new(refuse);
        let refused = Arc::new(AtomicUsize::new(0));
        let (to, count) = (real.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (to, refuse, count) = (to.clone(), refuse.clone(), count.clone());
                tokio::spawn(async move {
                    if let Ok(qemu) = UnixStream::connect(&to).await {
                        relay(client, qemu, refuse, count).await;
                    }
                });
            }
        });
        Ok(Self {
            socket: socket.to_owned(),
            real,
            accept,
            refused,
        })
    }

    /// How many commands were refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Stops serving and puts QEMU's socket back in place.
    pub fn remove(self) -> anyhow::Result<()> {
        self.restore()
    }

    fn restore(&self) -> anyhow::Result<()> {
        self.accept.abort();
        if self.real.exists() {
            let _ = std::fs::remove_file(&self.socket);
            std::fs::rename(&self.real, &self.socket)
                .with_context(|| format!("restoring {}", self.socket.display()))?;
        }
        Ok(())
    }
}

impl Drop for QmpFaultProxy {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// Relays one client: QEMU's lines to the client as they come, the
/// client's commands to QEMU unless refused.
async fn relay(
    client: UnixStream,
    qemu: UnixStream,
    refuse: Arc<Refuse>,
    refused: Arc<AtomicUsize>,
) {
    let (client_read, client_write) = client.into_split();
    let (qemu_read, mut qemu_write) = qemu.into_split();
    let client_write = Arc::new(Mutex::new(client_write));
    let to_client = client_write.clone();
    let down = tokio::spawn(async move {
        let mut lines = BufReader::new(qemu_read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut w = to_client.lock().await;
            if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut lines = BufReader::new(client_read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let command: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if refuse(&command) {
            refused.fetch_add(1, Ordering::SeqCst);
            let mut answer = json!({ "error": { "class": "GenericError", "desc": "refused by the test's QMP proxy" } });
            if let Some(id) = command.get("id") {
                answer["id"] = id.clone();
            }
            let mut w = client_write.lock().await;
            if w.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
                break;
            }
            continue;
        }
        if qemu_write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    down.abort();
}
