//! A process's stdio pipes on the agent side, each owned by a small task:
//! requests go in over a channel, so no lock is held while a read waits.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The largest read served at once.
const MAX_READ: usize = 1 << 20;

/// stdout or stderr: reads end with an empty answer at end of file.
#[derive(Debug)]
pub struct OutputPipe {
    requests: mpsc::Sender<(u32, oneshot::Sender<io::Result<Vec<u8>>>)>,
    task: JoinHandle<()>,
}

impl OutputPipe {
    /// Takes the read end of a pipe.
    pub fn new(fd: OwnedFd) -> io::Result<OutputPipe> {
        Ok(OutputPipe::spawn(pipe::Receiver::from_owned_fd(fd)?))
    }

    /// Takes (a copy of) a pty master, already non-blocking. The kernel
    /// answers EIO once the slave side is closed by all: read as end of
    /// file.
    pub fn from_tty(fd: OwnedFd) -> io::Result<OutputPipe> {
        Ok(OutputPipe::spawn(pipe::Receiver::from_owned_fd_unchecked(
            fd,
        )?))
    }

    fn spawn(mut rx: pipe::Receiver) -> OutputPipe {
        let (requests, mut incoming) =
            mpsc::channel::<(u32, oneshot::Sender<io::Result<Vec<u8>>>)>(4);
        let task = tokio::spawn(async move {
            let mut eof = false;
            while let Some((len, reply)) = incoming.recv().await {
                if eof {
                    let _ = reply.send(Ok(Vec::new()));
                    continue;
                }
                let mut buf = vec![0u8; (len as usize).clamp(1, MAX_READ)];
                let res = match rx.read(&mut buf).await {
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
                    other => other,
                }
                .map(|n| {
                    eof = n == 0;
                    buf.truncate(n);
                    buf
                });
                let _ = reply.send(res);
            }
        });
        OutputPipe { requests, task }
    }

    /// Reads at most `len` bytes; empty at end of file.
    pub async fn read(&self, len: u32) -> io::Result<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((len, tx))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        rx.await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?
    }
}

impl Drop for OutputPipe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum InputRequest {
    Write(Vec<u8>, oneshot::Sender<io::Result<usize>>),
    Close(oneshot::Sender<()>),
}

/// stdin: writes, then close (the process reads end of file).
#[derive(Debug)]
pub struct InputPipe {
    requests: mpsc::Sender<InputRequest>,
    task: JoinHandle<()>,
}

impl InputPipe {
    /// Takes the write end of a pipe.
    pub fn new(fd: OwnedFd) -> io::Result<InputPipe> {
        Ok(InputPipe::spawn(pipe::Sender::from_owned_fd(fd)?))
    }

    /// Takes (a copy of) a pty master, already non-blocking: what is
    /// written is the terminal's input. Closing it drops only this copy
    /// (a terminal has no end of file to send; runc and Kata behave alike).
    pub fn from_tty(fd: OwnedFd) -> io::Result<InputPipe> {
        Ok(InputPipe::spawn(pipe::Sender::from_owned_fd_unchecked(fd)?))
    }

    fn spawn(mut tx: pipe::Sender) -> InputPipe {
        let (requests, mut incoming) = mpsc::channel::<InputRequest>(4);
        let task = tokio::spawn(async move {
            while let Some(req) = incoming.recv().await {
                match req {
                    InputRequest::Write(data, reply) => {
                        let res = tx.write_all(&data).await.map(|()| data.len());
                        let _ = reply.send(res);
                    }
                    InputRequest::Close(reply) => {
                        drop(tx);
                        let _ = reply.send(());
                        // Later writes find the channel closed.
                        return;
                    }
                }
            }
        });
        InputPipe { requests, task }
    }

    /// Writes all of `data`; `BrokenPipe` once closed.
    pub async fn write(&self, data: Vec<u8>) -> io::Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(InputRequest::Write(data, tx))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        rx.await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?
    }

    /// Closes the pipe (idempotent).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(InputRequest::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl Drop for InputPipe {
    fn drop(&mut self) {
        self.task.abort();
    }
}
