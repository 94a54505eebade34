//! A process's stdio through containerd's FIFOs.
//!
//! containerd (its client: `ctr`, the CRI) makes a FIFO per stream and
//! reads the output ones before it asks for the process. The shim opens
//! an output FIFO read-write, as runc's shim keeps a reader of its own:
//! a client that goes away (`ctr run -d`) then never makes the
//! container's writes fail, and the client sees EOF when the shim closes
//! it after the process's output ended. The stdin FIFO is opened for
//! reading without blocking and read only once a writer came (the
//! kernel reports readiness then), so "no client yet" is not mistaken
//! for EOF; the client closing it closes the process's stdin.
//!
//! Stream addresses may also be `file://PATH` (appended to); containerd's
//! `binary://` log drivers are not supported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use virtcontainers::vc_types::Unsupported;
use virtcontainers::{ContainerId, ExecId, ProcessIo, Sandbox};

use crate::error::{Error, Result};

/// A process's stdio as containerd gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// The stdin FIFO, or empty.
    pub stdin: String,
    /// The stdout FIFO (or `file://` URI), or empty.
    pub stdout: String,
    /// The stderr FIFO (or `file://` URI), or empty; unused on a terminal.
    pub stderr: String,
    /// Whether the process runs on a terminal (its output is all on
    /// stdout).
    pub terminal: bool,
}

/// Where one stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
}

fn target(uri: &str) -> Result<Target> {
    if uri.is_empty() {
        return Ok(Target::None);
    }
    match uri.split_once("://") {
        None => Ok(Target::Fifo(uri.into())),
        Some(("fifo", path)) => Ok(Target::Fifo(path.into())),
        Some(("file", path)) => Ok(Target::File(path.into())),
        Some((scheme, _)) => Err(Unsupported::new(
            format!("{scheme}:// stdio"),
            "containerd-shim-vc-v2 writes to FIFOs and file:// paths only",
        )
        .into()),
    }
}

impl StdioPaths {
    /// Checks every stream's address (before anything is created).
    pub fn check(&self) -> Result<()> {
        for uri in [&self.stdin, &self.stdout, &self.stderr] {
            target(uri)?;
        }
        if matches!(target(&self.stdin)?, Target::File(_)) {
            return Err(Error::InvalidRequest {
                reason: format!(
                    "stdin {:?} is a file:// URI: stdin must be a FIFO",
                    self.stdin
                ),
            });
        }
        Ok(())
    }
}

type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Opens an output stream's target (before the process starts, so that
/// a bad one fails the start, not the output).
async fn open_output(uri: &str) -> Result<Option<Writer>> {
    match target(uri)? {
        Target::None => Ok(None),
        Target::Fifo(path) => {
            let sender = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&path)
                .map_err(Error::io("open the output FIFO", &path))?;
            Ok(Some(Box::new(sender)))
        }
        Target::File(path) => {
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(Error::io("open the output file", &path))?;
            Ok(Some(Box::new(file)))
        }
    }
}

/// The opened outputs of a process, ready to be pumped.
pub struct Outputs {
    stdout: Option<Writer>,
    stderr: Option<Writer>,
    stdin: Option<pipe::Receiver>,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs").finish_non_exhaustive()
    }
}

/// Opens the streams of `paths`.
pub async fn open(paths: &StdioPaths) -> Result<Outputs> {
    let stdout = open_output(&paths.stdout).await?;
    let stderr = match paths.terminal {
        true => None,
        false => open_output(&paths.stderr).await?,
    };
    let stdin = match target(&paths.stdin)? {
        Target::Fifo(path) => Some(
            pipe::OpenOptions::new()
                .open_receiver(&path)
                .map_err(Error::io("open the stdin FIFO", &path))?,
        ),
        Target::None | Target::File(_) => None,
    };
    Ok(Outputs {
        stdout,
        stderr,
        stdin,
    })
}

/// The copying tasks of one process.
pub struct Pumps {
    output: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    /// Ends the stdin copy (containerd's `CloseIO`).
    pub close_stdin: Arc<Notify>,
}

impl std::fmt::Debug for Pumps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pumps").finish_non_exhaustive()
    }
}

/// Which process of the sandbox a pump serves.
#[derive(Debug, Clone)]
pub struct ProcessRef {
    /// The container.
    pub container: ContainerId,
    /// The exec process, or `None` for the container's own.
    pub exec: Option<ExecId>,
}

/// Starts copying `io` to `outputs` and containerd's stdin to the process.
pub fn pump(
    sandbox: Arc<Sandbox>,
    process: ProcessRef,
    io: ProcessIo,
    outputs: Outputs,
    logger: &Logger,
) -> Pumps {
    let mut output = Vec::new();
    if let Some(w) = outputs.stdout {
        output.push(tokio::spawn(copy_out(io.stdout, w, logger.clone())));
    }
    if let Some(w) = outputs.stderr {
        output.push(tokio::spawn(copy_out(io.stderr, w, logger.clone())));
    }
    let close_stdin = Arc::new(Notify::new());
    let stdin = outputs.stdin.map(|rx| {
        tokio::spawn(copy_in(
            rx,
            sandbox,
            process,
            close_stdin.clone(),
            logger.clone(),
        ))
    });
    Pumps {
        output,
        stdin,
        close_stdin,
    }
}

impl Pumps {
    /// Waits (at most `timeout`) for the output to be copied to its end
    /// after the process exited, then stops every copy: a background
    /// child still holding the output must not hold the exit back.
    pub async fn finish(self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for mut task in self.output {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some(stdin) = self.stdin {
            stdin.abort();
        }
    }
}

async fn copy_out(mut from: impl AsyncRead + Unpin, mut to: Writer, logger: Logger) {
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => debug!(logger, "output copied"; "bytes" => n),
        Err(e) => warn!(logger, "output copy ended"; "error" => %e),
    }
    let _ = to.flush().await;
}

async fn copy_in(
    rx: pipe::Receiver,
    sandbox: Arc<Sandbox>,
    process: ProcessRef,
    close: Arc<Notify>,
    logger: Logger,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let (id, exec) = (&process.container, process.exec.as_ref());
    loop {
        let closing = tokio::select! {
            ready = rx.readable() => match ready {
                Ok(()) => false,
                Err(_) => break,
            },
            () = close.notified() => true,
        };
        let mut ended = false;
        // Everything readable now; after CloseIO, that is the rest.
        loop {
            match rx.try_read(&mut buf) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    if let Err(e) = write_all(&sandbox, id, exec, &buf[..n]).await {
                        warn!(logger, "stdin not delivered"; "error" => crate::error::chain(&e));
                        ended = true;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if ended || closing {
            break;
        }
    }
    if let Err(e) = sandbox.close_stdin(id, exec).await {
        debug!(logger, "stdin not closed"; "error" => crate::error::chain(&e));
    }
}

async fn write_all(
    sandbox: &Sandbox,
    id: &ContainerId,
    exec: Option<&ExecId>,
    mut data: &[u8],
) -> Result<()> {
    while !data.is_empty() {
        let n = sandbox
            .write_stdin(id, exec, data)
            .await
            .map_err(Error::sandbox("write the process's stdin"))?;
        if n == 0 {
            return Err(Error::InvalidRequest {
                reason: "the process's stdin takes no more".into(),
            });
        }
        data = &data[n.min(data.len())..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn stream_addresses() {
        assert_eq!(target("").unwrap(), Target::None);
        assert_eq!(
            target("/run/containerd/fifo/1/x-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            target("file:///var/log/x.log").unwrap(),
            Target::File("/var/log/x.log".into())
        );
        assert!(matches!(
            target("binary:///usr/bin/logger?x=1"),
            Err(Error::Unsupported(_))
        ));
        let paths = StdioPaths {
            stdin: "file:///tmp/in".into(),
            ..StdioPaths::default()
        };
        assert!(matches!(paths.check(), Err(Error::InvalidRequest { .. })));
    }

    #[tokio::test]
    async fn an_output_fifo_whose_reader_left_does_not_fail_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader at all: the open still succeeds.
        let mut w = open_output(fifo.to_str().unwrap()).await.unwrap().unwrap();
        w.write_all(b"hello").await.unwrap();
        let mut reader = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        drop(reader);
        w.write_all(b"again").await.unwrap();
        // The reader sees EOF once the shim closes its end.
        let mut reader = pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        drop(w);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"again");
    }
}
