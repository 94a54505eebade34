//! Support for the real tests: host prerequisites, EROFS layers on loop
//! devices with an overlay over them (as containerd's EROFS snapshotter
//! makes them), a leak check, and a VM booted through vc-hypervisor's
//! QEMU backend whose init is a busybox shell serving commands on the
//! agent channel (not the guest agent: these tests check the disks, not
//! the agent).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache, KernelPackage};
use vc_hypervisor::{HypervisorConfig, QemuOptions};

/// The test init: loads the image's modules (erofs among them), finds
/// the `agent.channel.0` port, and runs each line it reads there as a
/// shell command, answering with the output and `DM-TEST-END <status>`.
pub const TEST_INIT: &str = r#"#!/bin/busybox sh
# vc-device-manager test init: not the guest agent.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  insmod "/lib/modules/vc/$m" || echo "dm-test-init: insmod $m failed"
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
[ -n "$port" ] || { echo "dm-test-init: no agent.channel.0 port"; poweroff -f; }
echo "dm-test-init: serving on $port"
while true; do
  exec 3<>"$port"
  while IFS= read -r line <&3; do
    out=$(sh -c "$line" 2>&1)
    rc=$?
    printf '%s\nDM-TEST-END %s\n' "$out" "$rc" >&3
  done
  exec 3>&-
  sleep 0.1
done
"#;

const END: &str = "DM-TEST-END";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join(binary).is_file())
}

/// Fails the test, naming what is missing, unless the host can make
/// EROFS layers on loop devices.
pub fn require_erofs_host() {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (loop devices and mounts)".to_owned());
    }
    if !on_path("mkfs.erofs") {
        missing.push("mkfs.erofs (apt-get install erofs-utils)".to_owned());
    }
    if !Path::new("/dev/loop-control").exists() {
        missing.push("/dev/loop-control (the loop module)".to_owned());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["erofs", "overlay"] {
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
        {
            missing.push(format!("{fs} in the host kernel (/proc/filesystems)"));
        }
    }
    assert!(
        missing.is_empty(),
        "this test needs: {} (scripts/install-prereqs.sh installs the packages)",
        missing.join("; ")
    );
}

/// Fails the test unless the host can also boot the test VM.
pub fn require_vm_host() {
    require_erofs_host();
    let mut missing = Vec::new();
    if !Path::new(vc_hypervisor::DEFAULT_QEMU_BINARY).exists() {
        missing.push(format!(
            "{} (apt-get install qemu-system-x86)",
            vc_hypervisor::DEFAULT_QEMU_BINARY
        ));
    }
    if !on_path("mkfs.ext4") || !on_path("debugfs") {
        missing.push("mkfs.ext4 and debugfs (apt-get install e2fsprogs)".to_owned());
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

/// Runs a host command; its output if it succeeds.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Host mounts made by a test, unmounted (newest first) when dropped, so
/// a failing test leaves nothing behind either.
#[derive(Default)]
pub struct HostMounts {
    mounted: Vec<PathBuf>,
}

impl HostMounts {
    /// `mount -t erofs -o loop,ro image target`: a read-only loop device
    /// with autoclear, as containerd's mount package sets up for the
    /// EROFS snapshotter; the loop device goes away with the mount.
    pub fn mount_erofs(&mut self, image: &Path, target: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        run(
            "mount",
            &[
                "-t",
                "erofs",
                "-o",
                "loop,ro",
                path_str(image),
                path_str(target),
            ],
        )?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// An overlay at `target`; `lowerdirs` topmost first.
    pub fn mount_overlay(
        &mut self,
        lowerdirs: &[&Path],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        let lower: Vec<&str> = lowerdirs.iter().map(|p| path_str(p)).collect();
        let mut options = format!("lowerdir={}", lower.join(":"));
        if let Some((upper, work)) = upper_work {
            std::fs::create_dir_all(upper)?;
            std::fs::create_dir_all(work)?;
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                path_str(upper),
                path_str(work)
            ));
        }
        run(
            "mount",
            &["-t", "overlay", "overlay", "-o", &options, path_str(target)],
        )?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// A tmpfs at `target`.
    pub fn mount_tmpfs(&mut self, target: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        run("mount", &["-t", "tmpfs", "tmpfs", path_str(target)])?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// Unmounts everything, newest first.
    pub fn unmount_all(&mut self) -> anyhow::Result<()> {
        while let Some(target) = self.mounted.pop() {
            run("umount", &[path_str(&target)])?;
        }
        Ok(())
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if run("umount", &[path_str(&target)]).is_err() {
                let _ = run("umount", &["-l", path_str(&target)]);
            }
        }
    }
}

/// Writes the files of a layer (`path -> content`; a `None` content is a
/// whiteout, the 0:0 character device overlayfs reads as "deleted") and
/// makes `image` from them with mkfs.erofs.
pub fn make_layer(dir: &Path, image: &Path, files: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
    for (path, content) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap())?;
        match content {
            Some(text) => std::fs::write(&file, text)?,
            None => {
                run("mknod", &[path_str(&file), "c", "0", "0"])?;
            }
        }
    }
    std::fs::create_dir_all(image.parent().unwrap())?;
    run("mkfs.erofs", &[path_str(image), path_str(dir)])?;
    Ok(())
}

/// What of a test's is still on the host under `dir`: loop devices
/// backed by a file there, and mounts there.
pub fn leftovers_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(file) = std::fs::read_to_string(&backing)
            && Path::new(file.trim_end()).starts_with(dir)
        {
            out.push(format!(
                "loop device /dev/{} -> {}",
                entry.file_name().to_string_lossy(),
                file.trim_end()
            ));
        }
    }
    let table = vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
        .expect("reading mountinfo");
    for mount in table {
        if mount.mount_point.starts_with(dir) {
            out.push(format!(
                "{} mount at {}",
                mount.fs_type,
                mount.mount_point.display()
            ));
        }
    }
    out
}

/// The test guest image, built once per inputs and cached under target/.
pub fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let kernel = KernelPackage::find_installed().expect("guest kernel");
        // ext4 (a module in Debian's kernel) for the block-volume test.
        let modules = vc_guest_image::DEFAULT_MODULES
            .iter()
            .copied()
            .chain(["ext4"]);
        GuestImageBuilder::new(kernel, TEST_INIT.as_bytes().to_vec())
            .modules(modules)
            .extra_file("/bin/busybox", PathBuf::from("/bin/busybox"), 0o755)
            .build_cached(&ImageCache::in_target_dir())
            .expect("building the test guest image")
    })
}

/// VM tests run one at a time: CI machines have 2 cores.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A VM config for the test image, with its runtime dir under `dir`, and
/// QEMU options with `hotplug_ports` ports.
pub fn vm_config(name: &str, dir: &Path, hotplug_ports: u32) -> (HypervisorConfig, QemuOptions) {
    let image = guest_image();
    let mut config =
        HypervisorConfig::new(name, &image.vmlinux, dir.join("run")).with_initrd(&image.initramfs);
    config.memory.boot_mib = 256;
    config.memory.max_mib = 256;
    let options = QemuOptions {
        hotplug_ports,
        ..QemuOptions::default()
    };
    (config, options)
}

/// A logger the test harness captures.
pub fn logger() -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(slog_term::TestStdoutWriter);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain, slog::o!())
}

/// A runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The host end of the test init's line protocol.
pub struct Guest {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Guest {
    /// Connects to the agent socket and waits until the guest answers.
    pub async fn connect(socket: &Path, timeout: Duration) -> anyhow::Result<Self> {
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
        let mut guest = Self {
            reader: BufReader::new(read),
            writer,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let pong = guest.run_within("echo DM-TEST-PING", left).await?;
        ensure!(pong == "DM-TEST-PING", "ping answered {pong:?}");
        Ok(guest)
    }

    async fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from the guest within {timeout:?}"))??;
        ensure!(n > 0, "the guest closed the channel");
        Ok(line.trim_end_matches('\n').to_owned())
    }

    /// Runs `command` in the guest; returns the output and status.
    pub async fn status_of(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> anyhow::Result<(String, i32)> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let line = self
                .line(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if let Some(rc) = line.strip_prefix(END) {
                return Ok((out.join("\n"), rc.trim().parse()?));
            }
            out.push(line);
        }
    }

    async fn run_within(&mut self, command: &str, timeout: Duration) -> anyhow::Result<String> {
        let (out, rc) = self.status_of(command, timeout).await?;
        ensure!(rc == 0, "guest command {command:?} failed with {rc}: {out}");
        Ok(out)
    }

    /// Runs `command` in the guest; its output if it succeeds.
    pub async fn run(&mut self, command: &str) -> anyhow::Result<String> {
        self.run_within(command, Duration::from_secs(60)).await
    }

    /// Runs `command` until `pred` holds for its output (hot-plug takes a
    /// moment to reach the guest).
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
