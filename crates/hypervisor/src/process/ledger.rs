//! The process ledger: a write-ahead record of the processes spawned for
//! one VM, and their exit statuses, in a directory the caller names.
//!
//! `processes.jsonl` holds one [`ProcessRecord`] per line. Every change is
//! made under an exclusive `flock` and `fsync`ed before it counts: a line
//! is appended (and synced) before the process it names is let go, and the
//! file is rewritten atomically (temporary file, `rename`) to drop lines.
//! A torn last line (a crash mid-append) is ignored, and cut off by the
//! next append; a ledger left with no complete line is removed with the
//! last record.
//!
//! `exit-<pid>` holds the exit status of a process of the ledger once it
//! has been reaped: written by the keeper for an outliving process, by the
//! owner's supervisor for a process that dies with its owner. Its line is
//! `<start time> code <n>` or `<start time> signal <n>`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::FlockOperation;

use super::ProcessRecord;
use crate::error::{Error, Result};
use crate::hypervisor::ExitStatus;

/// The ledger's file name in its directory.
pub const LEDGER_FILE: &str = "processes.jsonl";
/// The exit status files' prefix (`exit-<pid>`).
pub const STATUS_PREFIX: &str = "exit-";
/// How often a lock attempt on a ledger that was replaced meanwhile is
/// retried before giving up.
const LOCK_ATTEMPTS: usize = 100;

/// The processes spawned for one VM: the ledger file
/// [`processes.jsonl`](LEDGER_FILE) and the exit status files
/// ([`exit-<pid>`](STATUS_PREFIX)) in one directory.
///
/// The ledger holds one [`ProcessRecord`] per JSON line. Every change is
/// made under an exclusive `flock` and synced to disk before it counts: a
/// line is appended before the process it names is let go, lines are
/// dropped by an atomic rewrite. A torn last line (its writer died
/// mid-append) is ignored and cut off by the next append. An exit status
/// file holds `<start time> code <n>` or `<start time> signal <n>`.
///
/// Cheap to clone: it is a path. Several processes may use one ledger at
/// once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessLedger {
    dir: PathBuf,
}

impl ProcessLedger {
    /// The ledger in `dir`. Nothing is read or created until used; the
    /// dir must exist before a process is spawned with it.
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ledger file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LEDGER_FILE)
    }

    /// The exit status file of `record`.
    pub fn status_path(&self, record: &ProcessRecord) -> PathBuf {
        self.dir.join(format!("{STATUS_PREFIX}{}", record.pid))
    }

    fn error(&self, source: io::Error) -> Error {
        Error::Ledger {
            path: self.path(),
            source,
        }
    }

    /// Appends `record` and syncs it to disk.
    pub fn add(&self, record: &ProcessRecord) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| self.error(e.into()))?;
        line.push(b'\n');
        let locked = self.lock(true).map_err(|e| self.error(e))?;
        let Some(mut locked) = locked else {
            return Err(self.error(io::ErrorKind::NotFound.into()));
        };
        let bytes = std::fs::read(self.path()).map_err(|e| self.error(e))?;
        let complete = complete_len(&bytes);
        if complete < bytes.len() {
            // A torn line of a creator that died mid-append: cut it off,
            // or the new line would be glued to it.
            locked
                .file
                .set_len(complete as u64)
                .map_err(|e| self.error(e))?;
        }
        let new_file = complete == 0;
        locked.file.write_all(&line).map_err(|e| self.error(e))?;
        locked.file.sync_data().map_err(|e| self.error(e))?;
        if new_file {
            sync_dir(&self.dir).map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Every record, oldest first; none when there is no ledger.
    pub fn records(&self) -> Result<Vec<ProcessRecord>> {
        match std::fs::read(self.path()) {
            Ok(bytes) => parse_lines(&bytes).map_err(|e| self.error(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Drops `record` (same pid and start time) and its exit status file;
    /// removes the ledger file once it is empty.
    pub fn remove(&self, record: &ProcessRecord) -> Result<()> {
        self.remove_where(|r| r.pid == record.pid && r.start_time == record.start_time)?;
        remove_status(&self.status_path(record), record.start_time).map_err(|e| self.error(e))
    }

    fn remove_where(&self, matches: impl Fn(&ProcessRecord) -> bool) -> Result<()> {
        let Some(locked) = self.lock(false).map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let bytes = std::fs::read(self.path()).map_err(|e| self.error(e))?;
        let records = parse_lines(&bytes).map_err(|e| self.error(e))?;
        let kept: Vec<_> = records.iter().filter(|r| !matches(r)).collect();
        if !kept.is_empty() && kept.len() == records.len() {
            return Ok(());
        }
        if kept.is_empty() {
            std::fs::remove_file(self.path()).map_err(|e| self.error(e))?;
        } else {
            let tmp = self.dir.join(format!("{LEDGER_FILE}.tmp"));
            let mut out = Vec::new();
            for record in kept {
                out.extend(serde_json::to_vec(record).map_err(|e| self.error(e.into()))?);
                out.push(b'\n');
            }
            write_synced(&tmp, &out).map_err(|e| self.error(e))?;
            std::fs::rename(&tmp, self.path()).map_err(|e| self.error(e))?;
        }
        drop(locked);
        sync_dir(&self.dir).map_err(|e| self.error(e))
    }

    /// Ends every recorded process that still runs (see
    /// [`terminate`](super::terminate)) and drops the records and exit
    /// status files of those that are gone. Returns the records of
    /// processes that survived `SIGKILL` (they stay in the ledger).
    /// Blocks up to `grace` per process, plus the wait after `SIGKILL`.
    pub fn terminate_all(&self, grace: Duration) -> Result<Vec<ProcessRecord>> {
        let mut survivors = Vec::new();
        for record in self.records()? {
            if super::terminate(&record, grace) {
                self.remove(&record)?;
            } else {
                survivors.push(record);
            }
        }
        // A ledger with no complete line (its creator died mid-append).
        self.remove_where(|_| false)?;
        Ok(survivors)
    }

    /// The exit status of `record`, once its reaper wrote it.
    pub fn exit_status(&self, record: &ProcessRecord) -> Option<ExitStatus> {
        exit_status(&self.dir, record)
    }

    /// Writes the exit status of `record` (its reaper does).
    pub(crate) fn write_exit_status(
        &self,
        record: &ProcessRecord,
        status: ExitStatus,
    ) -> Result<()> {
        let path = self.status_path(record);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let line = format_status(record.start_time, status);
        write_synced(Path::new(&tmp), line.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|source| Error::Ledger { path, source })
    }

    /// Opens the ledger file and takes its lock, making sure the locked
    /// file is still the one at the path (a writer may have replaced or
    /// removed it while we waited). `None` when it does not exist and
    /// `create` is false.
    fn lock(&self, create: bool) -> io::Result<Option<Locked>> {
        let path = self.path();
        for _ in 0..LOCK_ATTEMPTS {
            let file = match OpenOptions::new()
                .read(true)
                .append(true)
                .create(create)
                .open(&path)
            {
                Ok(file) => file,
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
            let locked = Locked { file };
            let current = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let held = locked.file.metadata()?;
            if (held.dev(), held.ino()) == (current.dev(), current.ino()) {
                return Ok(Some(locked));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the ledger kept being replaced while locking it",
        ))
    }
}

/// The locked ledger file; unlocks explicitly when dropped, so that the
/// lock goes even if a forked child still holds a copy of the descriptor.
struct Locked {
    file: File,
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.file, FlockOperation::Unlock);
    }
}

/// The exit status of `record`, read from the status file in the ledger
/// dir `dir`: `None` until its reaper wrote it, or when the file is of
/// another process that had the same pid.
pub fn exit_status(dir: &Path, record: &ProcessRecord) -> Option<ExitStatus> {
    let text = std::fs::read_to_string(dir.join(format!("{STATUS_PREFIX}{}", record.pid))).ok()?;
    let (start_time, status) = parse_status(&text)?;
    (start_time == record.start_time).then_some(status)
}

/// The status line: `<start time> code <n>` or `<start time> signal <n>`
/// (`unknown` when the reaper could not tell).
fn format_status(start_time: u64, status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(code) => format!("{start_time} code {code}\n"),
        ExitStatus::Signal(signal) => format!("{start_time} signal {signal}\n"),
        ExitStatus::Unknown => format!("{start_time} unknown\n"),
    }
}

fn parse_status(text: &str) -> Option<(u64, ExitStatus)> {
    let mut words = text.split_whitespace();
    let start_time = words.next()?.parse().ok()?;
    let status = match (words.next()?, words.next()) {
        ("code", Some(n)) => ExitStatus::Code(n.parse().ok()?),
        ("signal", Some(n)) => ExitStatus::Signal(n.parse().ok()?),
        ("unknown", None) => ExitStatus::Unknown,
        _ => return None,
    };
    Some((start_time, status))
}

/// Removes a status file unless it belongs to another process (another
/// start time).
fn remove_status(path: &Path, start_time: u64) -> io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if parse_status(&text).is_some_and(|(start, _)| start != start_time) {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The length of the complete lines of a ledger.
fn complete_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |end| end + 1)
}

/// The complete lines of a ledger; a torn last line is ignored.
fn parse_lines(bytes: &[u8]) -> io::Result<Vec<ProcessRecord>> {
    bytes[..complete_len(bytes)]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(io::Error::from))
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, start_time: u64) -> ProcessRecord {
        ProcessRecord {
            program: "/bin/sleep".into(),
            pid,
            start_time,
        }
    }

    #[test]
    fn records_are_added_removed_and_the_file_goes_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        assert!(ledger.records().unwrap().is_empty());
        ledger.remove(&record(1, 1)).unwrap();
        ledger.add(&record(10, 100)).unwrap();
        ledger.add(&record(11, 110)).unwrap();
        ledger.add(&record(10, 999)).unwrap();
        assert_eq!(
            ledger.records().unwrap(),
            [record(10, 100), record(11, 110), record(10, 999)]
        );
        ledger.remove(&record(10, 100)).unwrap();
        assert_eq!(
            ledger.records().unwrap(),
            [record(11, 110), record(10, 999)]
        );
        ledger.remove(&record(11, 110)).unwrap();
        ledger.remove(&record(10, 999)).unwrap();
        assert!(!ledger.path().exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary file left"
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        ledger.add(&record(10, 100)).unwrap();
        let mut file = OpenOptions::new().append(true).open(ledger.path()).unwrap();
        file.write_all(br#"{"program":"/bin/sl"#).unwrap();
        assert_eq!(ledger.records().unwrap(), [record(10, 100)]);
        // The next append cuts the torn line off.
        ledger.add(&record(11, 110)).unwrap();
        assert_eq!(
            ledger.records().unwrap(),
            [record(10, 100), record(11, 110)]
        );
        // Torn lines only (or an empty file): removed once emptied.
        std::fs::write(ledger.path(), br#"{"prog"#).unwrap();
        assert!(ledger.records().unwrap().is_empty());
        assert!(ledger.terminate_all(Duration::ZERO).unwrap().is_empty());
        assert!(!ledger.path().exists());
        std::fs::write(ledger.path(), "not json\n").unwrap();
        assert!(matches!(ledger.records(), Err(Error::Ledger { .. })));
    }

    #[test]
    fn exit_statuses_round_trip_and_belong_to_one_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        let r = record(42, 4200);
        assert_eq!(ledger.exit_status(&r), None);
        for status in [
            ExitStatus::Code(7),
            ExitStatus::Signal(9),
            ExitStatus::Unknown,
        ] {
            ledger.write_exit_status(&r, status).unwrap();
            assert_eq!(exit_status(dir.path(), &r), Some(status));
        }
        assert_eq!(ledger.exit_status(&record(42, 1)), None, "pid reused");
        // Another process's status file is left alone.
        ledger.remove(&record(42, 1)).unwrap();
        assert!(ledger.status_path(&r).exists());
        ledger.remove(&r).unwrap();
        assert!(!ledger.status_path(&r).exists());
        assert_eq!(parse_status("12 code"), None);
        assert_eq!(parse_status("12 exited 3"), None);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let ledger = ledger.clone();
                s.spawn(move || {
                    for i in 0..25u32 {
                        let r = record(t * 1000 + i, 1);
                        ledger.add(&r).unwrap();
                        if i % 2 == 0 {
                            ledger.remove(&r).unwrap();
                        }
                    }
                });
            }
        });
        let mut left: Vec<u32> = ledger.records().unwrap().iter().map(|r| r.pid).collect();
        left.sort();
        let mut expected: Vec<u32> = (0..4u32)
            .flat_map(|t| (0..25u32).filter(|i| i % 2 == 1).map(move |i| t * 1000 + i))
            .collect();
        expected.sort();
        assert_eq!(left, expected);
    }
}
