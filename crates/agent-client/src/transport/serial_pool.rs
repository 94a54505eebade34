//! Several virtio-serial agent ports, one per concurrent host process.
//!
//! A QEMU socket chardev serves one client at a time; a second client
//! waits, unserved, until the first hangs up. So a VM gets a few agent
//! ports (`agent.channel.0`, `agent.channel.1`, ...), and each host process
//! takes the first one free, marking it with an exclusive lock on
//! `<socket>.lock` held for as long as the stream lives (the kernel drops
//! it when the process dies).

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::AgentStream;
use crate::AgentError;

/// The lock file that marks `socket` as taken.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A stream on one port, holding that port's lock.
struct Held {
    stream: UnixStream,
    _lock: File,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connects to the first port whose lock is free.
pub(super) async fn dial(sockets: &[PathBuf]) -> crate::Result<AgentStream> {
    let target = || {
        format!(
            "serial-pool:{}",
            sockets
                .first()
                .map(|s| s.display().to_string())
                .unwrap_or_default()
        )
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no agent ports");
    for socket in sockets {
        let lock_file = lock_path(socket);
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
        {
            Ok(f) => f,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                last = io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "all {} agent ports are in use by other processes",
                        sockets.len()
                    ),
                );
                continue;
            }
            Err(TryLockError::Error(e)) => {
                last = e;
                continue;
            }
        }
        match UnixStream::connect(socket).await {
            Ok(stream) => {
                return Ok(Box::new(Held {
                    stream,
                    _lock: lock,
                }));
            }
            Err(e) => last = e,
        }
    }
    Err(AgentError::Connect {
        target: target(),
        source: last,
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;
    use crate::Transport;

    fn echo(listener: UnixListener) {
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1];
                    while s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn each_stream_takes_a_free_port_and_frees_it_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sockets: Vec<PathBuf> = (0..2)
            .map(|i| dir.path().join(format!("agent-{i}.sock")))
            .collect();
        for s in &sockets {
            echo(UnixListener::bind(s).unwrap());
        }
        let pool = Transport::SerialPool {
            sockets: sockets.clone(),
        };
        let mut first = pool.dial().await.unwrap();
        let second = pool.dial().await.unwrap();
        let third = pool.dial().await;
        match third {
            Err(AgentError::Connect { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::WouldBlock, "{source}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a third stream on two ports"),
        }
        first.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        first.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
        drop(second);
        pool.dial().await.expect("the freed port is taken again");
        assert!(lock_path(&sockets[0]).exists());
    }

    #[tokio::test]
    async fn missing_ports_are_connect_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Transport::SerialPool {
            sockets: vec![dir.path().join("none.sock")],
        };
        assert!(matches!(pool.dial().await, Err(AgentError::Connect { .. })));
    }
}
