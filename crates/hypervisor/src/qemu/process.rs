//! The QEMU process: spawning it, knowing when it exits, killing it, and
//! telling it apart from a later process that reuses its pid.
//!
//! Everything goes through a pidfd, which names one process for good:
//! signals sent through it never reach a stranger that got the same pid,
//! and it becomes readable when the process exits, which is how the exit
//! is noticed (for our child and for a VMM we attached to alike).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};
use tokio::io::unix::AsyncFd;

use crate::hypervisor::ExitStatus;

type SpawnReply = tokio::sync::oneshot::Sender<io::Result<u32>>;

/// Spawns `command` and returns the child's pid.
///
/// With `kill_on_parent_exit`, the child gets `PR_SET_PDEATHSIG(SIGKILL)`.
/// That signal fires when the *thread* that forked the child exits, not
/// the process, so such children are forked by one dedicated thread that
/// lives as long as the process (tokio's blocking threads come and go).
pub async fn spawn(mut command: Command, kill_on_parent_exit: bool) -> io::Result<u32> {
    if !kill_on_parent_exit {
        return command.spawn().map(|child| child.id());
    }
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes two raw syscalls (prctl, getppid), which are async-signal-safe;
    // it touches no locks or allocations.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died between fork and prctl: then no
            // signal will come, so give up now instead of being orphaned.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let (reply, done) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((command, reply))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    done.await
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// The long-lived thread that forks children with a parent-death signal.
fn spawner() -> &'static Mutex<mpsc::Sender<(Command, SpawnReply)>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(Command, SpawnReply)>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
        std::thread::Builder::new()
            .name("vc-vmm-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The std Child is dropped without waiting: the pidfd owns
                    // the process from here on.
                    let _ = reply.send(command.spawn().map(|child| child.id()));
                }
            })
            .expect("spawning the VMM spawner thread");
        Mutex::new(tx)
    })
}

/// Kills and reaps our child `pid` without a pidfd (only for a child we
/// have not reaped: its pid cannot have been reused).
pub fn kill_and_reap_child(pid: u32) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// The process's start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`): with the pid, it identifies a process for good.
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/pid/stat"))
}

/// Field 22 of a `/proc/<pid>/stat` line (the command may hold spaces and
/// parentheses, so count from the last `)`).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after the comm start at field 3 (state): 22 is the 20th.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Sends SIGKILL through the pidfd. A process that already exited is fine.
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

/// Whether the process behind the pidfd has exited (without reaping).
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

    #[test]
    fn start_time_is_field_22_even_with_odd_comms() {
        let stat =
            "4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 987654 123 45";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
    }

    #[tokio::test]
    async fn child_exit_is_seen_reaped_and_kill_is_safe_after() {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "exit 7"]);
        let pid = spawn(command, true).await.unwrap();
        let pidfd = pidfd_open(pid).unwrap();
        let async_fd = watch(pidfd).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), wait_exit(&async_fd))
            .await
            .unwrap()
            .unwrap();
        let pidfd = async_fd.into_inner();
        assert!(has_exited(&pidfd));
        assert_eq!(try_reap(&pidfd).unwrap(), Some(ExitStatus::Code(7)));
        // Reaped: the pid is gone, and killing through the pidfd is harmless.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        kill(&pidfd).unwrap();
    }

    #[tokio::test]
    async fn kill_ends_a_running_child() {
        let mut command = Command::new("/bin/sleep");
        command.arg("100");
        let pid = spawn(command, false).await.unwrap();
        let pidfd = pidfd_open(pid).unwrap();
        assert!(!has_exited(&pidfd));
        assert_eq!(try_reap(&pidfd).unwrap(), None);
        kill(&pidfd).unwrap();
        let async_fd = watch(pidfd).unwrap();
        wait_exit(&async_fd).await.unwrap();
        assert_eq!(
            try_reap(async_fd.get_ref()).unwrap(),
            Some(ExitStatus::Signal(9))
        );
    }

    #[test]
    fn parent_death_signal_reaches_children_of_exited_threads() {
        // The child is forked by the spawner thread, so the short-lived
        // thread that asked for it can exit without killing it.
        let pid = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut command = Command::new("/bin/sleep");
            command.arg("100");
            rt.block_on(spawn(command, true)).unwrap()
        })
        .join()
        .unwrap();
        let pidfd = pidfd_open(pid).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !has_exited(&pidfd),
            "child died with the thread that requested it"
        );
        kill(&pidfd).unwrap();
        while try_reap(&pidfd).unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
