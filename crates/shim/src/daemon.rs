//! The shim daemon: serves the task API on the socket `start` handed it,
//! until containerd shuts it down (`Shutdown` with no task left) or it
//! gets SIGTERM/SIGINT; then it stops its sandbox, if one is left, and
//! removes its socket.
//!
//! Its logs go to the `log` FIFO containerd made in the bundle (containerd
//! copies them into its own log); stderr is pointed there too, so a
//! panic's message lands beside them.

use std::fs::OpenOptions;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use slog::{Drain, Logger, info, o};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::args::Args;
use crate::events::{Publisher, Sink};
use crate::service::Service;

/// containerd's environment variable with its ttrpc socket.
pub const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

/// How long queued events may take to be sent at exit.
const EVENT_FLUSH: Duration = Duration::from_secs(5);

/// Points stderr at the bundle's `log` FIFO, when containerd reads it.
pub fn log_to_containerd() {
    let opened = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    if let Ok(fifo) = opened {
        // Blocking again: a slow reader slows the log thread, never drops
        // a line silently.
        let _ = nix::fcntl::fcntl(
            &fifo,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
        let _ = nix::unistd::dup2_stderr(&fifo);
    }
}

/// A logger writing to stderr from a thread of its own.
pub fn logger(debug: bool) -> Logger {
    let level = if debug {
        slog::Level::Debug
    } else {
        slog::Level::Info
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain.filter_level(level).fuse())
        .chan_size(4096)
        .build()
        .fuse();
    Logger::root(drain, o!("runtime" => "io.containerd.vc.v2"))
}

/// The listening socket: inherited from `start`, or bound at `--socket`.
fn listener(args: &Args) -> anyhow::Result<UnixListener> {
    match (args.socket_fd, &args.socket) {
        (Some(fd), _) => {
            // SAFETY: `start` made this descriptor a listening unix socket
            // and let this process inherit it; nothing else in this process
            // knows of it, so it is owned here alone.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // Inherited without close-on-exec; the processes this shim
            // starts (QEMU, virtiofsd, the netns holder) must not keep it.
            nix::fcntl::fcntl(
                &owned,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .context("mark the shim socket close-on-exec")?;
            Ok(UnixListener::from(owned))
        }
        (None, Some(path)) => {
            UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))
        }
        (None, None) => anyhow::bail!("no socket: run by `start`, or give --socket"),
    }
}

/// Serves until told to stop; returns once the sandbox is gone.
pub async fn serve(args: Args, logger: Logger) -> anyhow::Result<()> {
    let listener = listener(&args)?;
    let socket_path: PathBuf = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from))
        .unwrap_or_default();
    listener.set_nonblocking(true).context("the shim socket")?;
    let sink = match std::env::var(TTRPC_ADDRESS_ENV) {
        Ok(a) if !a.is_empty() => Sink::Ttrpc(a.trim_start_matches("unix://").into()),
        _ => Sink::Binary {
            program: args.publish_binary.clone(),
            address: args.address.clone(),
        },
    };
    let publisher = Arc::new(Publisher::new(sink, args.namespace.clone(), logger.clone()));
    let exit = Arc::new(Notify::new());
    let service = Service::new(
        publisher.clone(),
        exit.clone(),
        socket_path.clone(),
        logger.clone(),
    );
    let listener = ttrpc::r#async::transport::Listener::try_from(listener)
        .context("serving the shim socket")?;
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(listener)
        .register_service(service.services());
    server.start().await.context("starting the task API")?;
    info!(logger, "serving"; "namespace" => &args.namespace, "socket" => %socket_path.display());

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        () = exit.notified() => info!(logger, "shut down by containerd"),
        _ = term.recv() => info!(logger, "SIGTERM: shutting down"),
        _ = int.recv() => info!(logger, "SIGINT: shutting down"),
    }
    // First, so that a `delete` containerd runs once the connection drops
    // sees this shim gone.
    if !socket_path.as_os_str().is_empty() {
        let _ = crate::socket::retire(&socket_path);
    }
    service.teardown().await;
    // Let the Shutdown answer leave before the connections close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = server.shutdown().await;
    publisher.flush(EVENT_FLUSH).await;
    Ok(())
}
