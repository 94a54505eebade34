//! The handle of a spawned or attached process of a ledger.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{POLL, ProcessLedger, ProcessRecord, stat};
use crate::error::{Error, Result};
use crate::hypervisor::ExitStatus;

/// How long, after an outliving process exited, to wait for its keeper to
/// write the exit status.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// A process of a ledger, spawned here or attached to by pid and start
/// time: wait for it, read its exit status, end it.
///
/// Dropping the handle does nothing to the process.
#[derive(Debug)]
pub struct ProcessHandle {
    record: ProcessRecord,
    pidfd: OwnedFd,
    ledger: ProcessLedger,
    child: bool,
}

impl ProcessHandle {
    /// The handle of a process just spawned.
    pub(super) fn new(
        record: ProcessRecord,
        pidfd: OwnedFd,
        ledger: ProcessLedger,
        child: bool,
    ) -> Self {
        Self {
            record,
            pidfd,
            ledger,
            child,
        }
    }

    /// A handle on the running process of `record` (of `ledger`), e.g. in
    /// another process than its creator. A process that is gone or a
    /// zombie is [`Error::ProcessNotRunning`]; a pid that now names
    /// another process is [`Error::PidReused`].
    pub fn attach(ledger: &ProcessLedger, record: ProcessRecord) -> Result<Self> {
        let gone = || Error::ProcessNotRunning {
            program: record.program.clone(),
            pid: record.pid,
        };
        let pidfd = super::pidfd_open(record.pid).map_err(|_| gone())?;
        // Opened first, checked second (see `terminate`).
        let stat = stat::read(record.pid).map_err(|_| gone())?;
        if stat.start_time != record.start_time {
            return Err(Error::PidReused {
                pid: record.pid,
                expected: record.start_time,
                found: stat.start_time,
            });
        }
        if stat.has_exited() {
            return Err(gone());
        }
        Ok(Self {
            child: stat.ppid == std::process::id(),
            record,
            pidfd,
            ledger: ledger.clone(),
        })
    }

    /// The process.
    pub fn record(&self) -> &ProcessRecord {
        &self.record
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// The ledger it is in.
    pub fn ledger(&self) -> &ProcessLedger {
        &self.ledger
    }

    /// Whether it is a child of this process (which must reap it).
    pub fn is_child(&self) -> bool {
        self.child
    }

    /// The pidfd naming it.
    pub fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Whether it has exited (a zombie has).
    pub fn has_exited(&self) -> bool {
        super::has_exited(&self.pidfd)
    }

    /// Sends `SIGKILL`; a process that already exited is fine.
    pub fn kill(&self) -> io::Result<()> {
        super::kill(&self.pidfd)
    }

    /// Its exit status if it has exited: a child is reaped here and its
    /// status written next to the ledger; otherwise the status its reaper
    /// wrote is read ([`ExitStatus::Unknown`] until it is there).
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        if !self.has_exited() {
            return Ok(None);
        }
        if self.child {
            match super::try_reap(&self.pidfd)? {
                None => return Ok(None),
                // Reaped by another handle of this process: read its file.
                Some(ExitStatus::Unknown) => {}
                Some(status) => {
                    let _ = self.ledger.write_exit_status(&self.record, status);
                    return Ok(Some(status));
                }
            }
        }
        Ok(Some(
            self.ledger
                .exit_status(&self.record)
                .unwrap_or(ExitStatus::Unknown),
        ))
    }

    /// Waits for the exit (needs a tokio runtime with I/O enabled) and
    /// returns its status, as [`try_wait`](Self::try_wait). Waits a
    /// moment for the reaper of a process that is not our child to write
    /// the status, else returns [`ExitStatus::Unknown`].
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        let watched = super::watch(self.pidfd.try_clone()?)?;
        super::wait_exit(&watched).await?;
        let deadline = Instant::now() + STATUS_WAIT;
        loop {
            let status = self.try_wait()?;
            match status {
                Some(status) if status != ExitStatus::Unknown => return Ok(status),
                _ if Instant::now() >= deadline => return Ok(ExitStatus::Unknown),
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Ends the process (`SIGTERM`, then `SIGKILL` after `grace`), reaps
    /// it if it is our child and writes its status. Blocks; returns
    /// whether it is gone.
    pub fn terminate(&self, grace: Duration) -> bool {
        let keeper = if self.child {
            None
        } else {
            super::keeper_of(self.record.pid)
        };
        match super::terminate_pidfd(&self.pidfd, grace) {
            Some(ExitStatus::Unknown) => {
                if let Some(keeper) = keeper {
                    super::wait_keeper(&keeper);
                }
                true
            }
            Some(status) => {
                if self.child {
                    let _ = self.ledger.write_exit_status(&self.record, status);
                }
                true
            }
            None => false,
        }
    }

    /// Ends a process that failed to start and drops its record (after
    /// its keeper, if any, wrote the status file that goes with it).
    pub(super) fn discard(self) {
        let _ = self.kill();
        if self.child {
            super::wait_reaped(&self.pidfd, super::KILL_WAIT);
        } else {
            let deadline = Instant::now() + STATUS_WAIT;
            while self.ledger.exit_status(&self.record).is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        let _ = self.ledger.remove(&self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{ProcessLifetime, ProcessSpec, spawn};

    async fn wait(handle: &ProcessHandle) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("no exit within 10 s")
            .unwrap()
    }

    #[tokio::test]
    async fn attach_refuses_the_dead_and_the_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        let handle = spawn(
            ProcessSpec::new("sleep").arg("100"),
            ProcessLifetime::DiesWithOwner,
            &ledger,
        )
        .await
        .unwrap();
        let mut other = handle.record().clone();
        other.start_time += 1;
        assert!(matches!(
            ProcessHandle::attach(&ledger, other),
            Err(Error::PidReused { .. })
        ));
        let attached = ProcessHandle::attach(&ledger, handle.record().clone()).unwrap();
        assert!(attached.is_child(), "same parent: ours to reap");
        handle.kill().unwrap();
        // The zombie (reaped by no one yet) is refused.
        while !handle.has_exited() {
            tokio::time::sleep(POLL).await;
        }
        assert!(matches!(
            ProcessHandle::attach(&ledger, handle.record().clone()),
            Err(Error::ProcessNotRunning { .. })
        ));
        // Whichever handle reaps, both see the status.
        assert_eq!(wait(&attached).await, ExitStatus::Signal(9));
        assert_eq!(wait(&handle).await, ExitStatus::Signal(9));
    }
}
