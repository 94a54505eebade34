//! Host processes of a VM (the VMM, helpers such as `virtiofsd`): started
//! so that a crash of their creator at any instant leaves nothing
//! unrecorded, watched through pidfds, ended without ever signalling a
//! stranger that reused their pid, and never left as zombies of a process
//! that will not reap them.
//!
//! # Lifetimes
//!
//! [`ProcessLifetime::DiesWithOwner`] (the shim model): the process is a
//! child of its creator, forked by one long-lived spawner thread with
//! `PR_SET_PDEATHSIG(SIGKILL)` (the signal follows the forking *thread*,
//! so the thread must live as long as the process). The creator reaps it
//! ([`ProcessHandle::try_wait`] / [`ProcessHandle::wait`]).
//!
//! [`ProcessLifetime::OutlivesOwner`] (the CLI model): the process must
//! survive its creator and must never become a zombie of a live process
//! that will not reap it. It is started through a keeper, as Podman's
//! conmon does: the creator forks an intermediate child that forks the
//! keeper and exits at once (the creator reaps it right away, so the
//! keeper is re-parented to init, or to the nearest child subreaper,
//! which must then reap it); the keeper starts a session of its own,
//! closes every descriptor it inherited (a copy would keep the creator's
//! sockets and `flock`ed state files alive), forks and execs the program,
//! waits for it, writes its exit status next to the ledger and exits.
//! The keeper is a fork of the creator that never execs: it shares the
//! creator's memory copy-on-write and keeps what it had at fork once the
//! creator is gone, so keep creators of outliving processes lean (a CLI).
//!
//! # Write-ahead
//!
//! Every spawn goes through a [`ProcessLedger`] in a directory the caller
//! names (the VM's runtime dir). The program waits at a *gate* before it
//! execs; the creator records `{program, pid, start time}` in the ledger
//! and syncs it to disk, and only then opens the gate. If the creator dies
//! first, the gate reads end-of-file and the program exits without
//! running. So after a `SIGKILL` of the creator at any instant, the
//! program either never ran or is in the ledger, and
//! [`ProcessLedger::terminate_all`] finds it.
//!
//! # Exit status
//!
//! For both lifetimes the exit status lands in a file next to the ledger
//! (written by the keeper, or by the owner when it reaps its child), so
//! any process can read it with [`exit_status`].
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use vc_hypervisor::process::{self, ProcessLedger, ProcessLifetime, ProcessSpec};
//!
//! # async fn run() -> vc_hypervisor::Result<()> {
//! let ledger = ProcessLedger::open("/run/vc/vm-1");
//! let spec = ProcessSpec::new("/usr/bin/sleep").arg("60");
//! let sleeper = process::spawn(spec, ProcessLifetime::OutlivesOwner, &ledger).await?;
//! assert!(ledger.records()?.contains(sleeper.record()));
//! // Later, in any process:
//! let survivors = ledger.terminate_all(Duration::from_secs(2))?;
//! assert!(survivors.is_empty());
//! # Ok(())
//! # }
//! ```

mod child;
mod handle;
mod ledger;
mod spawn;
mod stat;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

pub use self::handle::ProcessHandle;
pub use self::ledger::{LEDGER_FILE, ProcessLedger, STATUS_PREFIX, exit_status};
pub use self::spawn::{FIRST_PASSED_FD, MAX_PASSED_FDS, ProcessSpec, spawn};
pub use self::stat::{cpu_time, is_alive, start_time, thread_cpu_time, with_descendants};
use crate::hypervisor::ExitStatus;

/// How long to wait for a process to be gone after `SIGKILL`.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for a keeper to record the exit of its program.
const KEEPER_WAIT: Duration = Duration::from_secs(2);
/// The keeper's process name (`/proc/<pid>/comm`).
pub const KEEPER_NAME: &str = "vc-keeper";
/// Pause between checks while waiting for an exit to become reapable.
const POLL: Duration = Duration::from_millis(5);

/// Whether a process dies with the process that started it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessLifetime {
    /// Killed when its owner (the creating process) dies, and reaped by
    /// it: the containerd-shim model, where the owner lives as long as
    /// the sandbox.
    #[default]
    DiesWithOwner,
    /// Lives on after its creator exits, until it is stopped: the CLI
    /// model (`create`, then `start` and `delete` from later processes).
    /// Started through a keeper that reaps it and records its exit status.
    OutlivesOwner,
}

/// A spawned process, identified for good by its pid and start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The program it runs.
    pub program: PathBuf,
    /// Its pid.
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22), so that a reused pid
    /// is never taken for it.
    pub start_time: u64,
}

impl ProcessRecord {
    /// Whether the process is alive (see [`is_alive`]).
    pub fn is_alive(&self) -> bool {
        is_alive(self.pid, self.start_time)
    }

    /// The CPU time it has used (see [`cpu_time`]); `None` once gone.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        cpu_time(self.pid, self.start_time)
    }
}

/// Ends the process of `record` if it still runs: `SIGTERM`, then
/// `SIGKILL` after `grace`, both through a pidfd. Returns `true` once it
/// is gone: exited (a zombie counts: reaped here if it is our child),
/// never there, or its pid now belongs to another process (which is left
/// alone). `false` if it survived `SIGKILL` for a few seconds. When a
/// keeper watches it, returns once the keeper has recorded its exit
/// status.
pub fn terminate(record: &ProcessRecord, grace: Duration) -> bool {
    let Ok(pidfd) = pidfd_open(record.pid) else {
        return true;
    };
    // Opened first, checked second: if the start time still matches, the
    // pidfd names our process, and signals through it reach no one else.
    if !record.is_alive() {
        let _ = try_reap(&pidfd);
        return true;
    }
    let keeper = keeper_of(record.pid);
    let gone = terminate_pidfd(&pidfd, grace).is_some();
    if let (true, Some(keeper)) = (gone, keeper) {
        wait_keeper(&keeper);
    }
    gone
}

/// A pidfd on the keeper of `pid` (its parent, named `vc-keeper`), if it
/// has one.
pub(crate) fn keeper_of(pid: u32) -> Option<OwnedFd> {
    let parent = stat::read(pid).ok()?.ppid;
    let keeper = pidfd_open(parent).ok()?;
    // Checked after opening, as for the program: the pidfd names it.
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    (comm.trim_end() == KEEPER_NAME && stat::read(pid).ok()?.ppid == parent).then_some(keeper)
}

/// Waits (bounded) for a keeper to exit: it does right after writing its
/// program's exit status.
pub(crate) fn wait_keeper(keeper: &OwnedFd) {
    poll_readable(keeper, KEEPER_WAIT);
}

/// `SIGTERM`, wait up to `grace`, `SIGKILL`, wait; reaps our child.
/// Returns the exit (`Unknown` when not ours to reap), or `None` if the
/// process is still there.
pub(crate) fn terminate_pidfd(pidfd: &OwnedFd, grace: Duration) -> Option<ExitStatus> {
    for (signal, limit) in [(Signal::TERM, grace), (Signal::KILL, KILL_WAIT)] {
        if let Err(e) = rustix::process::pidfd_send_signal(pidfd, signal)
            && e != rustix::io::Errno::SRCH
        {
            return None;
        }
        if let Some(status) = wait_reaped(pidfd, limit) {
            return Some(status);
        }
    }
    None
}

/// Waits up to `limit` for the process to exit, then reaps it if it is
/// our child. The pidfd turns readable at exit, a moment before the
/// zombie can be reaped, hence the retries.
fn wait_reaped(pidfd: &OwnedFd, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if has_exited(pidfd) {
            match try_reap(pidfd) {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(_) => return Some(ExitStatus::Unknown),
            }
        } else {
            let left = deadline.saturating_duration_since(Instant::now());
            poll_readable(pidfd, left.min(Duration::from_millis(100)));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn poll_readable(fd: &OwnedFd, timeout: Duration) {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `SIGKILL` through the pidfd. A process that already exited is fine.
pub fn kill(pidfd: &OwnedFd) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the process if it is our child and has exited. `Ok(None)`: still
/// running. `Ok(Some(Unknown))`: not our child (or already reaped).
pub fn try_reap(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    match rustix::process::waitid(
        WaitId::PidFd(pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    ) {
        Ok(None) => Ok(None),
        Ok(Some(status)) => Ok(Some(if let Some(sig) = status.terminating_signal() {
            ExitStatus::Signal(sig)
        } else {
            ExitStatus::Code(status.exit_status().unwrap_or(0))
        })),
        Err(rustix::io::Errno::CHILD) => Ok(Some(ExitStatus::Unknown)),
        Err(e) => Err(e.into()),
    }
}

/// Whether the process behind the pidfd has exited (without reaping; a
/// zombie has exited).
pub fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    matches!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
}

/// Registers the pidfd with the tokio reactor (readable = exited).
pub fn watch(pidfd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
    // and refers to the same pidfd for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// Waits until the process behind the pidfd exits.
pub async fn wait_exit(pidfd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    // A pidfd polls readable once the process has exited, and stays so.
    let _ready = pidfd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stat::read(pid).unwrap().has_exited() {
            assert!(Instant::now() < deadline, "child never exited");
            std::thread::sleep(POLL);
        }
        // Not reaped: /proc still shows it, with its start time.
        assert_eq!(start_time(pid).unwrap(), start);
        assert!(!is_alive(pid, start), "a zombie is dead for us");
        let record = ProcessRecord {
            program: "/bin/true".into(),
            pid,
            start_time: start,
        };
        assert!(!record.is_alive());
        // terminate() counts it as gone and reaps our zombie.
        assert!(terminate(&record, Duration::from_millis(10)));
        assert!(start_time(pid).is_err(), "the zombie was not reaped");
        assert!(child.try_wait().is_err(), "std can no longer reap it");
    }

    #[test]
    fn terminates_only_the_process_it_started() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        let record = |start_time| ProcessRecord {
            program: "sleep".into(),
            pid,
            start_time,
        };
        assert!(terminate(&record(start + 1), Duration::from_millis(100)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "a different start time is another process"
        );
        assert!(terminate(&record(start), Duration::from_secs(2)));
        assert!(start_time(pid).is_err());
        assert!(
            terminate(&record(start), Duration::from_millis(10)),
            "gone is fine"
        );
    }

    #[test]
    fn sigterm_is_tried_first_and_sigkill_follows() {
        // Reaped through the pidfd, not std's handle.
        #[allow(clippy::zombie_processes)]
        let ignores_term = Command::new("/bin/sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(ignores_term.id()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let status = terminate_pidfd(&pidfd, Duration::from_millis(300));
        assert_eq!(status, Some(ExitStatus::Signal(9)));
        assert!(started.elapsed() >= Duration::from_millis(300));

        let mut polite = Command::new("sleep").arg("100").spawn().unwrap();
        let pidfd = pidfd_open(polite.id()).unwrap();
        assert_eq!(
            terminate_pidfd(&pidfd, Duration::from_secs(5)),
            Some(ExitStatus::Signal(15))
        );
        assert!(polite.try_wait().is_err(), "already reaped");
    }

    #[tokio::test]
    async fn child_exit_is_seen_reaped_and_kill_is_safe_after() {
        // Reaped through the pidfd, not std's handle.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let pidfd = pidfd_open(pid).unwrap();
        let async_fd = watch(pidfd).unwrap();
        tokio::time::timeout(Duration::from_secs(10), wait_exit(&async_fd))
            .await
            .unwrap()
            .unwrap();
        let pidfd = async_fd.into_inner();
        assert!(has_exited(&pidfd));
        assert_eq!(
            wait_reaped(&pidfd, Duration::from_secs(1)),
            Some(ExitStatus::Code(7))
        );
        // Reaped: the pid is gone, and killing through the pidfd is harmless.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        kill(&pidfd).unwrap();
    }
}
