//! A process's stdout or stderr as an [`AsyncRead`], pumped from the agent
//! with `ReadStdout`/`ReadStderr`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

use crate::{Agent, AgentError};

/// Which output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// `ReadStdout`.
    Stdout,
    /// `ReadStderr`.
    Stderr,
}

/// The bytes asked for per read call.
const CHUNK: u32 = 32 * 1024;
/// How much may sit in the pipe before the pump waits for the reader.
const PIPE: usize = 64 * 1024;

/// A process's output as an [`AsyncRead`]: end of file when the process has
/// closed it; an error (of kind `ConnectionAborted` wrapping the
/// [`AgentError`]) when the agent fails or goes away.
///
/// It owns the task that pumps the stream: dropping the reader stops it.
pub struct ProcessOutput {
    pipe: DuplexStream,
    pump: JoinHandle<()>,
    error: Arc<Mutex<Option<AgentError>>>,
}

impl ProcessOutput {
    /// Starts pumping `which` of process `exec_id` in `container_id`. Must be
    /// called within a tokio runtime.
    pub fn new(
        agent: Arc<dyn Agent>,
        container_id: &str,
        exec_id: &str,
        which: OutputStream,
    ) -> ProcessOutput {
        let (mut tx, rx) = tokio::io::duplex(PIPE);
        let error = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&error);
        let (cid, eid) = (container_id.to_owned(), exec_id.to_owned());
        let pump = tokio::spawn(async move {
            loop {
                let res = match which {
                    OutputStream::Stdout => agent.read_stdout(&cid, &eid, CHUNK).await,
                    OutputStream::Stderr => agent.read_stderr(&cid, &eid, CHUNK).await,
                };
                match res {
                    Ok(data) if data.is_empty() => break,
                    Ok(data) => {
                        if tx.write_all(&data).await.is_err() {
                            break; // reader gone
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = failed.lock() {
                            *slot = Some(e);
                        }
                        break;
                    }
                }
            }
        });
        ProcessOutput {
            pipe: rx,
            pump,
            error,
        }
    }
}

impl AsyncRead for ProcessOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.pipe).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && buf.filled().len() == before
            && let Some(e) = self.error.lock().ok().and_then(|mut e| e.take())
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)));
        }
        res
    }
}

impl Drop for ProcessOutput {
    fn drop(&mut self) {
        self.pump.abort();
    }
}
