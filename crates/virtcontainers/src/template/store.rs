//! A template on disk: its files, its record (written last, atomically:
//! the commit marker), the tmpfs its memory lives on, and how all of it is
//! checked and removed.
//!
//! ```text
//! <dir>/lock            flock(2): exclusive to make or destroy, shared to clone
//! <dir>/memory/         a tmpfs the factory mounts
//! <dir>/memory/ram      the template VM's RAM (the clones map it private)
//! <dir>/state           its device state
//! <dir>/share/          the template VM's (empty) 9p share
//! <dir>/vm/             the template VM's runtime dir while it runs
//! <dir>/template.json   the record: key, sizes, state hash; written last
//! ```
//!
//! Every path is fixed under `<dir>`, and the template VM's process is in
//! the ledger of `<dir>/vm` before it runs: whatever an `init` killed at
//! any instant leaves is found from `<dir>` alone, and the record is
//! written only once everything else is complete and synced.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};
use slog::{Logger, info, warn};
use vc_hypervisor::process::ProcessLedger;

use super::key::TemplateKey;
use crate::error::Error;
use crate::persist::{read_versioned, write_versioned};

/// Room on the memory tmpfs beyond the RAM file.
const TMPFS_SLACK_MIB: u64 = 4;
/// How long the template VM's processes get to exit before SIGKILL.
const PROCESS_GRACE: Duration = Duration::from_secs(2);
/// Most stacked mounts `unmount_all` takes off one mount point.
const MAX_STACKED_MOUNTS: usize = 16;

/// The paths of a template under its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The template in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// The record, written last.
    pub fn record(&self) -> PathBuf {
        self.dir.join("template.json")
    }

    /// The tmpfs mount point.
    pub fn memory_dir(&self) -> PathBuf {
        self.dir.join("memory")
    }

    /// The RAM file.
    pub fn memory_file(&self) -> PathBuf {
        self.memory_dir().join("ram")
    }

    /// The device state.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The template VM's share directory.
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// The template VM's runtime directory.
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }
}

/// What `template.json` records about a complete template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// What a VM must share with the template to be cloned from it.
    pub key: TemplateKey,
    /// When it was saved.
    pub saved_at: SystemTime,
    /// How long booting the template VM to its agent took.
    pub boot_time: Duration,
    /// The RAM file's size in bytes.
    pub memory_bytes: u64,
    /// The device state's size in bytes.
    pub state_bytes: u64,
    /// The device state's xxh3-128 hash.
    pub state_hash: String,
}

/// The state of a template directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateStatus {
    /// No template (nothing on disk).
    Absent,
    /// A complete template, ready to clone.
    Ready(Box<TemplateInfo>),
    /// Something that is not a usable template: an `init` that died
    /// half-way, or files that do not match the record. Never cloned;
    /// `init` rebuilds it, `destroy` removes it.
    Unusable {
        /// What is wrong.
        reason: String,
    },
}

/// The xxh3-128 hash of a file, in hex.
pub fn hash_file(path: &Path) -> Result<String, Error> {
    let mut file = std::fs::File::open(path).map_err(Error::host_io("open", path))?;
    let mut hasher = twox_hash::xxhash3_128::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(Error::host_io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
    }
    Ok(format!("{:032x}", hasher.finish_128()))
}

/// Whether `path` is a mount point of this mount namespace, and of which
/// filesystem type (the topmost mount when stacked).
pub fn mount_type(path: &Path) -> Result<Option<String>, Error> {
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::host_io("resolve", path)(e)),
    };
    let mounts = crate::host_mounts::mount_table()?;
    Ok(mounts
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type))
}

/// Mounts the tmpfs the RAM file lives on, sized for `memory_mib`.
pub fn mount_memory(layout: &Layout, memory_mib: u64) -> Result<(), Error> {
    let dir = layout.memory_dir();
    std::fs::create_dir_all(&dir).map_err(Error::host_io("create directory", &dir))?;
    let options = format!("size={}m,mode=0700", memory_mib + TMPFS_SLACK_MIB);
    mount(
        Some("vc-template"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|errno| Error::HostMount {
        operation: "mount a tmpfs on",
        target: dir.clone(),
        source: errno.into(),
    })
}

/// Takes every mount off `dir`. A tmpfs still mapped by running clones is
/// busy: it is detached (gone from the mount table; its memory is freed
/// when the last clone exits).
pub fn unmount_all(dir: &Path, logger: &Logger) -> Result<(), Error> {
    for _ in 0..MAX_STACKED_MOUNTS {
        if mount_type(dir)?.is_none() {
            return Ok(());
        }
        match umount2(dir, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                warn!(logger, "template memory in use by running clones: detaching it";
                    "dir" => %dir.display());
                umount2(dir, MntFlags::MNT_DETACH).map_err(|e| Error::HostMount {
                    operation: "detach",
                    target: dir.to_owned(),
                    source: e.into(),
                })?;
            }
            Err(e) => {
                return Err(Error::HostMount {
                    operation: "unmount",
                    target: dir.to_owned(),
                    source: e.into(),
                });
            }
        }
    }
    Err(Error::HostMount {
        operation: "unmount every mount stacked on",
        target: dir.to_owned(),
        source: std::io::ErrorKind::Other.into(),
    })
}

/// Writes the record: the commit point of `init`.
pub fn write_record(layout: &Layout, info: &TemplateInfo) -> Result<(), Error> {
    write_versioned(&layout.record(), info)
}

/// What is in the directory, checked: the record, a tmpfs with a RAM file
/// of the recorded size, a device state with the recorded hash.
pub fn status(layout: &Layout) -> Result<TemplateStatus, Error> {
    let info: Option<TemplateInfo> = match read_versioned(&layout.record()) {
        Ok(info) => info,
        Err(Error::StateCorrupt { .. } | Error::UnsupportedStateVersion { .. }) => {
            return Ok(unusable("its record does not parse"));
        }
        Err(e) => return Err(e),
    };
    let Some(info) = info else {
        let leftovers = [
            layout.memory_dir(),
            layout.state(),
            layout.vm_dir(),
            layout.share_dir(),
        ]
        .into_iter()
        .any(|p| p.exists());
        return Ok(match leftovers {
            true => unusable("no record: an init did not finish"),
            false => TemplateStatus::Absent,
        });
    };
    if mount_type(&layout.memory_dir())?.as_deref() != Some("tmpfs") {
        return Ok(unusable("its memory tmpfs is not mounted"));
    }
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    if len(&layout.memory_file()) != Some(info.memory_bytes) {
        return Ok(unusable("its RAM file is missing or of another size"));
    }
    if len(&layout.state()) != Some(info.state_bytes)
        || hash_file(&layout.state()).ok().as_deref() != Some(info.state_hash.as_str())
    {
        return Ok(unusable("its device state does not match its record"));
    }
    Ok(TemplateStatus::Ready(Box::new(info)))
}

fn unusable(reason: &str) -> TemplateStatus {
    TemplateStatus::Unusable {
        reason: reason.to_owned(),
    }
}

/// What `destroy` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestroyReport {
    /// A complete template was there.
    pub had_template: bool,
    /// Processes of an `init` that died, ended.
    pub processes_ended: usize,
    /// Whether the memory tmpfs was mounted (and is not any more).
    pub unmounted: bool,
}

/// Removes everything of the template but its lock file, record first
/// (from then on no clone starts from it): the template VM's processes,
/// the tmpfs, the files. The caller holds the lock exclusively.
pub async fn remove_all(layout: &Layout, logger: &Logger) -> Result<DestroyReport, Error> {
    let mut report = DestroyReport {
        had_template: layout.record().exists(),
        ..DestroyReport::default()
    };
    remove_file(&layout.record())?;
    let ledger = ProcessLedger::open(layout.vm_dir());
    let before = ledger.records().map(|r| r.len()).unwrap_or(0);
    if before > 0 {
        let left = tokio::task::spawn_blocking(move || ledger.terminate_all(PROCESS_GRACE))
            .await
            .map_err(|e| Error::Helper {
                program: layout.vm_dir(),
                reason: format!("ending the template VM panicked: {e}"),
            })?
            .map_err(Error::hypervisor("end the template VM"))?;
        if let Some(p) = left.first() {
            return Err(Error::Helper {
                program: p.program.clone(),
                reason: format!("pid {} survived SIGKILL", p.pid),
            });
        }
        report.processes_ended = before;
        info!(logger, "ended the processes of a template VM"; "count" => before);
    }
    report.unmounted = mount_type(&layout.memory_dir())?.is_some();
    unmount_all(&layout.memory_dir(), logger)?;
    remove_file(&layout.state())?;
    crate::sandbox::remove_runtime_dir(&layout.vm_dir())?;
    for dir in [layout.memory_dir(), layout.share_dir()] {
        crate::sandbox::remove_empty_dir(&dir)?;
    }
    Ok(report)
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host_io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state_bytes: u64, state_hash: String) -> TemplateInfo {
        let file = super::super::key::FileIdentity {
            path: "/k".into(),
            len: 1,
            modified_ns: 1,
            inode: 1,
        };
        let config = vc_hypervisor::HypervisorConfig::new("t", "/k", "/run/t");
        let key = TemplateKey::from_parts(
            &config,
            &vc_hypervisor::QemuOptions::default(),
            file.clone(),
            "QEMU".into(),
            |_| Ok(file.clone()),
        )
        .unwrap();
        TemplateInfo {
            key,
            saved_at: SystemTime::UNIX_EPOCH,
            boot_time: Duration::from_secs(1),
            memory_bytes: 0,
            state_bytes,
            state_hash,
        }
    }

    /// Without a record nothing is usable, whatever else is there; a
    /// record whose files differ is unusable too.
    #[test]
    fn only_a_recorded_complete_template_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("t"));
        assert_eq!(status(&layout).unwrap(), TemplateStatus::Absent);
        std::fs::create_dir_all(layout.dir()).unwrap();
        std::fs::write(layout.state(), b"half").unwrap();
        assert!(matches!(
            status(&layout).unwrap(),
            TemplateStatus::Unusable { reason } if reason.contains("init")
        ));
        std::fs::write(layout.record(), b"{ torn").unwrap();
        assert!(matches!(
            status(&layout).unwrap(),
            TemplateStatus::Unusable { reason } if reason.contains("parse")
        ));
        // A complete record, but no tmpfs under it (this test mounts none).
        let hash = hash_file(&layout.state()).unwrap();
        write_record(&layout, &info(4, hash)).unwrap();
        assert!(matches!(
            status(&layout).unwrap(),
            TemplateStatus::Unusable { reason } if reason.contains("tmpfs")
        ));
    }

    #[test]
    fn hashes_change_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"one").unwrap();
        let a = hash_file(&f).unwrap();
        assert_eq!(a.len(), 32);
        std::fs::write(&f, b"two").unwrap();
        assert_ne!(hash_file(&f).unwrap(), a);
    }
}
