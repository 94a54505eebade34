//! The runtime dir: preparing it before start, reading log tails for
//! errors, and removing what the backend created.
//!
//! Besides the config's neutral files (console, agent sockets), QEMU
//! keeps `qmp.sock` (its monitor) and `qemu.log` (its stdout and stderr)
//! there, and the process ledger (`processes.jsonl`, `exit-<pid>`).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::config::HypervisorConfig;
use crate::device::Device;
use crate::error::{Error, Result};

/// How much of a log's end goes into errors and log lines.
const TAIL_BYTES: u64 = 4096;

/// The QMP socket.
pub fn qmp_socket(config: &HypervisorConfig) -> PathBuf {
    config.runtime_dir.join("qmp.sock")
}

/// QEMU's stdout and stderr.
pub fn qemu_log(config: &HypervisorConfig) -> PathBuf {
    config.runtime_dir.join("qemu.log")
}

/// Sockets QEMU listens on for this config (it creates them, we remove them).
pub fn listening_sockets(config: &HypervisorConfig) -> Vec<PathBuf> {
    let mut sockets = vec![qmp_socket(config), config.console_socket()];
    sockets.extend(config.agent_sockets());
    for device in &config.devices {
        if let Device::Serial(port) = device {
            sockets.push(port.socket.clone());
        }
    }
    sockets
}

/// Creates the runtime dir if needed (returns whether it did), refuses a
/// dir whose QMP socket answers (a live VMM), and removes stale sockets.
pub fn prepare_runtime_dir(config: &HypervisorConfig) -> Result<bool> {
    let dir = &config.runtime_dir;
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| Error::RuntimeDir {
        path: dir.clone(),
        source,
    })?;
    if UnixStream::connect(qmp_socket(config)).is_ok() {
        return Err(Error::RuntimeDirInUse { path: dir.clone() });
    }
    for socket in listening_sockets(config) {
        remove_if_exists(&socket)?;
    }
    Ok(created)
}

/// Removes what the backend created in the runtime dir: sockets, the
/// extra `sockets`, the logs unless kept, and the dir itself if the
/// backend created it and it is now empty.
pub fn cleanup_runtime_dir(
    config: &HypervisorConfig,
    extra: &[PathBuf],
    created_dir: bool,
) -> Result<()> {
    let mut first_err = None;
    let mut paths = listening_sockets(config);
    paths.extend_from_slice(extra);
    // Agent clients mark the port they hold with `<socket>.lock`.
    paths.extend(config.agent_sockets().iter().map(|s| {
        let mut name = s.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }));
    if !config.keep_logs {
        paths.push(config.console_log());
        paths.push(qemu_log(config));
    }
    for path in paths {
        if let Err(e) = remove_if_exists(&path) {
            first_err.get_or_insert(e);
        }
    }
    if created_dir && !config.keep_logs {
        // Not empty means someone else put files there: leave it.
        let _ = std::fs::remove_dir(&config.runtime_dir);
    }
    first_err.map_or(Ok(()), Err)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::RuntimeDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The last few KiB of a log file, lossily decoded ("" if unreadable).
pub fn tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> HypervisorConfig {
        HypervisorConfig::new("vm", "/k", dir.join("run"))
    }

    #[test]
    fn prepare_creates_dir_and_removes_stale_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        assert!(prepare_runtime_dir(&c).unwrap());
        // A stale socket file (nobody listening) is removed.
        let stale = std::os::unix::net::UnixListener::bind(qmp_socket(&c)).unwrap();
        drop(stale);
        assert!(qmp_socket(&c).exists());
        assert!(!prepare_runtime_dir(&c).unwrap());
        assert!(!qmp_socket(&c).exists());
    }

    #[test]
    fn prepare_refuses_a_live_qmp_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        std::fs::create_dir_all(&c.runtime_dir).unwrap();
        let _live = std::os::unix::net::UnixListener::bind(qmp_socket(&c)).unwrap();
        assert!(matches!(
            prepare_runtime_dir(&c),
            Err(Error::RuntimeDirInUse { .. })
        ));
        assert!(
            qmp_socket(&c).exists(),
            "a live VMM's socket must not be touched"
        );
    }

    #[test]
    fn cleanup_removes_ours_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        prepare_runtime_dir(&c).unwrap();
        for p in [
            qmp_socket(&c),
            c.console_log(),
            qemu_log(&c),
            c.agent_socket(),
        ] {
            std::fs::write(p, b"x").unwrap();
        }
        cleanup_runtime_dir(&c, &[], true).unwrap();
        assert!(!c.runtime_dir.exists());

        c.keep_logs = true;
        prepare_runtime_dir(&c).unwrap();
        std::fs::write(qemu_log(&c), b"log").unwrap();
        std::fs::write(c.runtime_dir.join("theirs"), b"x").unwrap();
        cleanup_runtime_dir(&c, &[], true).unwrap();
        assert!(qemu_log(&c).exists() && c.runtime_dir.join("theirs").exists());
    }

    #[test]
    fn tail_reads_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        std::fs::write(&log, format!("{}END", "x".repeat(10_000))).unwrap();
        let t = tail(&log);
        assert_eq!(t.len() as u64, TAIL_BYTES);
        assert!(t.ends_with("END"));
        assert_eq!(tail(&tmp.path().join("missing")), "");
    }
}
