//! The agent's end of the virtio-serial channel.
//!
//! The port is a character device, already "connected" from the agent's
//! side; the host's connection comes and goes with the QEMU chardev socket.
//! The kernel reports a host that is not connected as `POLLHUP` (and reads
//! return end of file). Each host connection becomes one ttrpc connection:
//! a [`Session`] that ends at the hang-up, after which the listener waits
//! for the host to come back and hands the same port out as a new session.
//!
//! Each session registers its own duplicate of the port's descriptor with
//! the reactor. tokio keeps a registration's "closed" readiness forever once
//! seen, and a hang-up is seen as closed: a registration that outlived one
//! made every later read look ready, and a session after a reconnect spun
//! on `EAGAIN`, one guest CPU at 100 % for as long as the host stayed
//! connected (every template clone and pool VM, whose first host is gone).
//! A session also ends when its registration sees the hang-up, whatever a
//! read would return then: a host that reconnects at once must not be
//! served by the session of the one that left.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// Finds the device of the virtio port named `name`
/// (`<sys>/class/virtio-ports/vportNpM/name` → `/dev/vportNpM`).
pub fn find_port(sys: &Path, name: &str) -> Result<PathBuf> {
    let dir = sys.join("class/virtio-ports");
    let entries = fs::read_dir(&dir).map_err(Error::io("listing", &dir))?;
    for e in entries.flatten() {
        if fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name) {
            return Ok(Path::new("/dev").join(e.file_name()));
        }
    }
    Err(Error::Io {
        operation: "finding the virtio port",
        path: dir.join(format!("*/name = {name}")),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// The virtio ports whose name is `<prefix><number>`, by name, e.g. every
/// `agent.channel.N`: the host may give several agent ports, one per
/// process talking to the agent at the same time.
pub fn find_ports_with_prefix(sys: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let dir = sys.join("class/virtio-ports");
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = fs::read_to_string(e.path().join("name")).ok()?;
                    let name = name.trim();
                    let n = name.strip_prefix(prefix)?;
                    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| (name.to_owned(), Path::new("/dev").join(e.file_name())))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Waits until a virtio port named `name` shows up (the driver may still
/// be probing), up to `timeout`.
pub async fn wait_for_port(sys: &Path, name: &str, timeout: Duration) -> Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match find_port(sys, name) {
            Ok(p) if p.exists() => return Ok(p),
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(p) => {
                return Err(Error::io("waiting for", p)(io::Error::from(
                    io::ErrorKind::NotFound,
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

fn poll_now(fd: &OwnedFd) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd with a zero timeout.
    unsafe { libc::poll(&mut pfd, 1, 0) };
    pfd.revents
}

/// How often a hung-up port is looked at for a host again. A hung-up port
/// is always "ready" (`POLLHUP`), so readiness cannot say when the host is
/// back. It also bounds the wait for a session's end, which is woken by
/// the end itself.
const RECHECK: Duration = Duration::from_millis(20);

/// The end of a [`Session`]: a flag, and a wake-up for whoever waits for
/// it (the listener, which hands out the next session only then).
#[derive(Debug, Default)]
pub struct SessionEnd {
    ended: AtomicBool,
    wake: Notify,
}

impl SessionEnd {
    fn set(&self) {
        self.ended.store(true, Ordering::Release);
        // `notify_one` keeps the wake-up for a waiter that comes later.
        self.wake.notify_one();
    }

    /// Whether the session has ended.
    pub fn is_set(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Returns once the session has ended.
    pub async fn wait(&self) {
        while !self.is_set() {
            let _ = tokio::time::timeout(RECHECK, self.wake.notified()).await;
        }
    }
}

/// The open port.
pub struct SerialPort {
    fd: OwnedFd,
    path: PathBuf,
}

impl SerialPort {
    /// Opens the port (non-blocking, close-on-exec).
    pub fn open(path: &Path) -> Result<SerialPort> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_nonblock()
            .open(path)
            .map_err(Error::io("opening", path))?;
        Ok(SerialPort {
            fd: OwnedFd::from(file),
            path: path.to_owned(),
        })
    }

    /// Waits for a host to be connected and returns the session for this
    /// connection, on a fresh registration of the port (see the module
    /// docs for why).
    pub async fn next_session(&self) -> Result<Session> {
        while poll_now(&self.fd) & libc::POLLHUP != 0 {
            tokio::time::sleep(RECHECK).await;
        }
        let dup = self
            .fd
            .try_clone()
            .map_err(Error::io("duplicating", &self.path))?;
        // SAFETY: the AsyncFd owns `dup`, a descriptor of its own that
        // stays open and is deregistered before it closes (on drop).
        let fd = unsafe { AsyncFd::register(dup) }
            .map_err(|e| Error::io("registering", &self.path)(e.into()))?;
        Ok(Session {
            fd,
            end: Arc::new(SessionEnd::default()),
        })
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
    }
}

/// One host connection over the port: ends (end of file, then errors) at
/// the first hang-up, so that the ttrpc connection on it closes.
pub struct Session {
    fd: AsyncFd<OwnedFd>,
    end: Arc<SessionEnd>,
}

impl Session {
    fn io<T>(
        &self,
        cx: &mut Context<'_>,
        interest: tokio::io::Interest,
        mut op: impl FnMut(libc::c_int) -> isize,
    ) -> Poll<io::Result<T>>
    where
        T: TryFrom<isize>,
    {
        loop {
            if self.end.is_set() {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            let mut guard = ready!(if interest == tokio::io::Interest::READABLE {
                self.fd.poll_read_ready(cx)
            } else {
                self.fd.poll_write_ready(cx)
            })?;
            if guard.ready().is_read_closed() || guard.ready().is_write_closed() {
                // This registration saw a hang-up: the host of this session
                // is gone, even when another one has connected since (its
                // bytes are for the next session, not this one).
                self.end.set();
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::BrokenPipe)));
            }
            let n = op(self.fd.get_ref().as_fd().as_raw_fd());
            if n >= 0 {
                return Poll::Ready(T::try_from(n).map_err(|_| io::Error::other("size")));
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Poll::Ready(Err(err));
        }
    }
}

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.end.is_set() {
            return Poll::Ready(Ok(()));
        }
        let unfilled = buf.initialize_unfilled();
        let (ptr, len) = (unfilled.as_mut_ptr(), unfilled.len());
        // SAFETY: reads into the initialized, unfilled part of `buf`.
        let res = ready!(
            self.io::<usize>(cx, tokio::io::Interest::READABLE, |fd| unsafe {
                libc::read(fd, ptr.cast(), len)
            })
        );
        match res {
            Ok(0) => {
                // The host hung up: this session is over.
                self.end.set();
                Poll::Ready(Ok(()))
            }
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                self.end.set();
                Poll::Ready(Err(e))
            }
        }
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        // SAFETY: writes from `data`, valid for its length.
        self.io::<usize>(cx, tokio::io::Interest::WRITABLE, |fd| unsafe {
            libc::write(fd, data.as_ptr().cast(), data.len())
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end.set();
        Poll::Ready(Ok(()))
    }
}

impl Session {
    /// Whether the host hung up on this session.
    pub fn has_ended(&self) -> bool {
        self.end.is_set()
    }

    /// This session's end, to wait for.
    pub fn end(&self) -> Arc<SessionEnd> {
        self.end.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, name) in [
            ("vport0p0", "org.qemu.console"),
            ("vport0p1", "agent.channel.0"),
        ] {
            let d = sys.path().join("class/virtio-ports").join(dev);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_port(sys.path(), "agent.channel.0").unwrap(),
            Path::new("/dev/vport0p1")
        );
        assert!(find_port(sys.path(), "other").is_err());
        let d = sys.path().join("class/virtio-ports/vport0p2");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("name"), "agent.channel.1\n").unwrap();
        let ports = find_ports_with_prefix(sys.path(), "agent.channel.");
        assert_eq!(
            ports,
            [
                ("agent.channel.0".to_owned(), PathBuf::from("/dev/vport0p1")),
                ("agent.channel.1".to_owned(), PathBuf::from("/dev/vport0p2")),
            ]
        );
    }
}
