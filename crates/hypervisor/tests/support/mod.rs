//! Test support for VM tests: a tiny init for the guest, the image built
//! with it, a client for the line protocol it serves on the agent
//! channel, and checks that the host can run the tests at all.
//!
//! The tiny init is a busybox shell script; the real guest agent replaces
//! it in the SDK. It follows the initramfs contract of `vc-guest-image`:
//! it loads `/lib/modules/vc/load-order`, finds the virtio-serial port
//! named `agent.channel.0`, writes a readiness line, then runs each line
//! it receives as a shell command and answers with the output and
//! `VC-TEST-END <status>`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache, KernelPackage};
use vc_hypervisor::{HypervisorConfig, QemuOptions};

/// The first line the guest writes once it serves.
pub const READY: &str = "VC-TEST-READY";
/// The line that ends each answer: `VC-TEST-END <exit status>`.
pub const END: &str = "VC-TEST-END";

pub const TINY_INIT: &str = r#"#!/bin/busybox sh
# vc-hypervisor test init: not the guest agent.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  insmod "/lib/modules/vc/$m" || echo "vc-test-init: insmod $m failed"
done < /lib/modules/vc/load-order
port=""
for _ in $(seq 1 200); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = agent.channel.0 ] && port="/dev/${p##*/}"
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  port=""
  sleep 0.05
done
if [ -z "$port" ]; then
  echo "vc-test-init: no agent.channel.0 port"
  poweroff -f
fi
echo "vc-test-init: serving on $port"
while true; do
  exec 3<>"$port"
  # Blocks until the host connects to the channel.
  echo "VC-TEST-READY $(cat /proc/uptime)" >&3
  while IFS= read -r line <&3; do
    out=$(sh -c "$line" 2>&1)
    rc=$?
    printf '%s\nVC-TEST-END %s\n' "$out" "$rc" >&3
  done
  exec 3>&-
  sleep 0.1
done
"#;

/// Fails the test, naming what the host lacks, unless it can run VMs.
pub fn require_vm_host() {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root (run the tests as root)".to_owned());
    }
    if !Path::new(vc_hypervisor::DEFAULT_QEMU_BINARY).exists() {
        missing.push(format!(
            "{} (apt-get install qemu-system-x86)",
            vc_hypervisor::DEFAULT_QEMU_BINARY
        ));
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun (the tap NIC hot-plug)".to_owned());
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (apt-get install busybox-static)".to_owned());
    }
    if let Err(e) = KernelPackage::find_installed() {
        missing.push(format!("a guest kernel: {e}"));
    }
    assert!(
        missing.is_empty(),
        "this VM test needs: {} (scripts/install-prereqs.sh installs the packages)",
        missing.join("; ")
    );
}

/// The guest image with the tiny init, built once per inputs and cached
/// in the target dir.
pub fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let kernel = KernelPackage::find_installed().expect("guest kernel");
        GuestImageBuilder::new(kernel, TINY_INIT.as_bytes().to_vec())
            .extra_file("/bin/busybox", PathBuf::from("/bin/busybox"), 0o755)
            .build_cached(&ImageCache::in_target_dir())
            .expect("building the test guest image")
    })
}

/// VM tests run one at a time: the CI machine has 2 cores.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A logger whose output the test harness captures.
pub fn logger() -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(slog_term::TestStdoutWriter);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

/// A config for the test image with its runtime dir under `dir`.
pub fn config(name: &str, dir: &Path) -> HypervisorConfig {
    let image = guest_image();
    let mut config =
        HypervisorConfig::new(name, &image.vmlinux, dir.join("run")).with_initrd(&image.initramfs);
    config.memory.boot_mib = 256;
    config.memory.max_mib = 256;
    config
}

/// The QEMU options of the test VMs: Debian's QEMU, 2 hot-plug ports.
pub fn options() -> QemuOptions {
    QemuOptions {
        hotplug_ports: 2,
        ..QemuOptions::default()
    }
}

/// A multi-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The host end of the tiny init's line protocol.
pub struct GuestChannel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl GuestChannel {
    /// Connects to the agent socket and waits until the guest answers.
    ///
    /// Returns the readiness line if the guest wrote one: it does on its
    /// first connection and whenever it notices a reconnect, but a host
    /// that hangs up and reconnects quickly can slip by unnoticed, so a
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
                Err(e) => anyhow::bail!("agent socket {}: {e}", socket.display()),
            }
        };
        let (read, writer) = stream.into_split();
        let mut channel = Self {
            reader: BufReader::new(read),
            writer,
        };
        channel.send("echo VC-TEST-PING").await?;
        let mut ready = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = channel
                .line(left)
                .await?
                .ok_or_else(|| anyhow::anyhow!("agent channel closed before the guest answered"))?;
            if line.starts_with(READY) {
                ready = Some(line);
            } else if line == "VC-TEST-PING" {
                let end = channel.line(left).await?;
                anyhow::ensure!(
                    end.as_deref() == Some("VC-TEST-END 0"),
                    "ping answered {end:?}"
                );
                return Ok((channel, ready));
            } else {
                anyhow::bail!("unexpected line from the guest: {line:?}");
            }
        }
    }

    /// The next line, `None` at EOF; an error after `timeout`.
    pub async fn line(&mut self, timeout: Duration) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| anyhow::anyhow!("no line from the guest within {timeout:?}"))??;
        Ok((n > 0).then(|| line.trim_end_matches('\n').to_owned()))
    }

    /// Sends a command line without waiting for the answer.
    pub async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        Ok(())
    }

    /// Reads one answer: the output lines and the exit status.
    pub async fn answer(&mut self, timeout: Duration) -> anyhow::Result<(String, i32)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .line(left)
                .await?
                .ok_or_else(|| anyhow::anyhow!("agent channel closed mid-answer"))?;
            if let Some(rc) = line.strip_prefix(END) {
                return Ok((out.join("\n"), rc.trim().parse()?));
            }
            out.push(line);
        }
    }

    /// Runs `command` in the guest; returns its output if it succeeds.
    pub async fn run(&mut self, command: &str) -> anyhow::Result<String> {
        self.send(command).await?;
        let (out, rc) = self.answer(Duration::from_secs(30)).await?;
        anyhow::ensure!(rc == 0, "guest command {command:?} failed with {rc}: {out}");
        Ok(out)
    }

    /// Runs `command` until its output satisfies `pred` (hot-plug events
    /// take a moment in the guest), up to `timeout`.
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
            anyhow::ensure!(
                Instant::now() < deadline,
                "guest {command:?} still says {out:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
