//! Host processes the sandbox started (helpers), identified by pid and
//! start time so that a pid reused by an unrelated process is never
//! signalled.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::state::HelperRecord;
use std::time::{Duration, Instant};

/// The start time of `pid` (`/proc/<pid>/stat` field 22), or `None` when
/// it does not exist.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    vc_hypervisor::qemu::process::start_time(pid).ok()
}

/// Whether the process recorded as `pid` started at `start` still runs.
/// A zombie is dead: it runs nothing, and when it is another process's
/// child this process cannot even reap it.
pub(crate) fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let zombie = matches!(after.split_whitespace().next(), Some("Z" | "X"));
    !zombie && vc_hypervisor::qemu::process::parse_start_time(&stat) == Some(start)
}

/// This process, as a record (pid and start time).
pub(crate) fn this_process() -> Option<HelperRecord> {
    let pid = std::process::id();
    Some(HelperRecord {
        program: std::env::current_exe().unwrap_or_default(),
        pid,
        start_time: start_time(pid)?,
    })
}

/// `pid` and every process descending from it (a daemon that forks, as
/// virtiofsd's namespace sandbox does, must be placed whole).
pub(crate) fn with_descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let child: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                    Some((child, parse_ppid(&stat)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// Field 4 (the parent pid) of a `/proc/<pid>/stat` line.
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn pidfd_signal(fd: &OwnedFd, signal: i32) -> bool {
    // SAFETY: pidfd_send_signal takes a valid pidfd, a signal number, a
    // null siginfo and flags 0; no memory is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Ends the process `pid` if it is still the one started at `start`:
/// SIGTERM, then SIGKILL after `grace`. Returns once it is gone (reaped by
/// us if it was our child) or `grace` twice over has passed.
pub(crate) fn terminate(pid: u32, start: u64, grace: Duration) -> bool {
    let Ok(fd) = vc_hypervisor::qemu::process::pidfd_open(pid) else {
        return true;
    };
    // With the pidfd open the pid cannot be recycled under us: check that
    // it is still the process we started. A zombie is gone: it runs
    // nothing, and another process's zombie is not ours to reap.
    if !is_alive(pid, start) {
        return true;
    }
    pidfd_signal(&fd, libc::SIGTERM);
    let gone = |deadline: Instant| {
        while Instant::now() < deadline {
            if !is_alive(pid, start) {
                // Ours to reap when it is our child.
                reap(pid);
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    };
    if gone(Instant::now() + grace) {
        return true;
    }
    pidfd_signal(&fd, libc::SIGKILL);
    gone(Instant::now() + grace)
}

/// Ends each recorded process (see [`terminate`]) off the async runtime;
/// returns those that survived SIGKILL.
pub(crate) async fn terminate_all(
    records: Vec<HelperRecord>,
    grace: Duration,
) -> Vec<HelperRecord> {
    let mut left = Vec::new();
    for r in records {
        let (pid, start) = (r.pid, r.start_time);
        let gone = tokio::task::spawn_blocking(move || terminate(pid, start, grace))
            .await
            .unwrap_or(false);
        if !gone {
            left.push(r);
        }
    }
    left
}

/// Reaps `pid` if it is an exited child of ours (a zombie keeps its
/// /proc entry); does nothing otherwise.
fn reap(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_tree() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & sleep 100 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tree = Vec::new();
        while Instant::now() < deadline {
            tree = with_descendants(sh.id());
            if tree.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tree.len(), 3, "{tree:?}");
        assert_eq!(tree[0], sh.id());
        assert_eq!(parse_ppid("9 (a) b) S 42 9 9"), Some(42));
        for p in &tree[1..] {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        sh.wait().unwrap();
    }

    #[test]
    fn terminates_only_the_process_it_started() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        assert!(terminate(pid, start + 1, Duration::from_millis(100)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "a different start time is another process"
        );
        assert!(terminate(pid, start, Duration::from_secs(2)));
        assert!(start_time(pid).is_none());
        assert!(
            terminate(pid, start, Duration::from_millis(10)),
            "gone is fine"
        );
    }
}
