//! The host end of [`InitMode::Serve`](crate::InitMode::Serve)'s line
//! protocol on the agent channel: send a shell command line, read its
//! output up to `VC-TEST-END <status>`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::init::{END, READY};

/// How long [`GuestShell::run`] waits for an answer.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const PING: &str = "VC-TEST-PING";

/// A connection to the test init's command server.
pub struct GuestShell {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl GuestShell {
    /// Connects to the agent socket (retrying until QEMU has made it) and
    /// waits until the guest answers a ping, all within `timeout`.
    ///
    /// Returns the readiness line if the guest wrote one: it does on its
    /// first connection and whenever it notices a reconnect, but a host
    /// that hangs up and reconnects quickly can slip by unnoticed, so the
    /// ping (answered either way) is what proves the channel works.
    pub async fn connect(
        socket: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Option<String>)> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("agent socket {}: {e}", socket.display()),
            }
        };
        let (read, writer) = stream.into_split();
        let mut shell = Self {
            reader: BufReader::new(read),
            writer,
        };
        shell.send(&format!("echo {PING}")).await?;
        let mut ready = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = shell
                .line(left)
                .await?
                .ok_or_else(|| anyhow!("agent channel closed before the guest answered"))?;
            if line.starts_with(READY) {
                ready = Some(line);
            } else if line == PING {
                let end = shell.line(left).await?;
                ensure!(
                    end.as_deref() == Some(&format!("{END} 0")),
                    "ping answered {end:?}"
                );
                return Ok((shell, ready));
            } else {
                bail!("unexpected line from the guest: {line:?}");
            }
        }
    }

    /// The next line, `None` at EOF; an error after `timeout`.
    pub async fn line(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| anyhow!("no line from the guest within {timeout:?}"))??;
        Ok((n > 0).then(|| line.trim_end_matches('\n').to_owned()))
    }

    /// Sends a command line without waiting for the answer.
    pub async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to the agent channel")
    }

    /// Reads one answer within `timeout`: the output lines and the exit
    /// status.
    pub async fn answer(&mut self, timeout: Duration) -> anyhow::Result<(String, i32)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .line(left)
                .await?
                .ok_or_else(|| anyhow!("agent channel closed mid-answer"))?;
            if let Some(rc) = line.strip_prefix(END) {
                return Ok((out.join("\n"), rc.trim().parse()?));
            }
            out.push(line);
        }
    }

    /// Runs `command` in the guest: its output and exit status, whatever
    /// the status.
    pub async fn status_of(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, i32)> {
        self.send(command).await?;
        self.answer(timeout).await
    }

    /// Runs `command` in the guest; its output if it succeeds within
    /// [`RUN_TIMEOUT`].
    pub async fn run(&mut self, command: &str) -> anyhow::Result<String> {
        let (out, rc) = self.status_of(command, RUN_TIMEOUT).await?;
        ensure!(rc == 0, "guest command {command:?} failed with {rc}: {out}");
        Ok(out)
    }

    /// Runs `command` until its output satisfies `pred` (hot-plug events
    /// take a moment to reach the guest), up to `timeout`.
    pub async fn run_until(
        &mut self,
        command: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(command).await?;
            if pred(&out) {
                return Ok(out);
            }
            ensure!(
                Instant::now() < deadline,
                "guest {command:?} still says {out:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
