//! Host processes the sandbox started (helpers), identified by pid and
//! start time so that a pid reused by an unrelated process is never
//! signalled. The work is `vc_hypervisor::process`'s; this maps the
//! sandbox state's [`ProcessRecord`]s onto its records.

use std::time::Duration;

use vc_hypervisor::process;

use crate::config::SandboxLifetime;
use crate::state::ProcessRecord;

pub(crate) use vc_hypervisor::process::{is_alive, with_descendants};

impl From<SandboxLifetime> for vc_hypervisor::ProcessLifetime {
    fn from(lifetime: SandboxLifetime) -> Self {
        match lifetime {
            SandboxLifetime::DiesWithOwner => Self::DiesWithOwner,
            SandboxLifetime::UntilDeleted => Self::OutlivesOwner,
        }
    }
}

/// The start time of `pid` (`/proc/<pid>/stat` field 22), or `None` when
/// it does not exist.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    process::start_time(pid).ok()
}

/// This process, as a record (pid and start time).
pub(crate) fn this_process() -> Option<ProcessRecord> {
    let pid = std::process::id();
    Some(ProcessRecord {
        program: std::env::current_exe().unwrap_or_default(),
        pid,
        start_time: start_time(pid)?,
    })
}

/// Ends each recorded process (`vc_hypervisor::process::terminate`: a
/// zombie or a reused pid counts as gone) off the async runtime; returns
/// those that survived SIGKILL.
pub(crate) async fn terminate_all(
    records: Vec<ProcessRecord>,
    grace: Duration,
) -> Vec<ProcessRecord> {
    let mut left = Vec::new();
    for r in records {
        let record = r.clone();
        let gone = tokio::task::spawn_blocking(move || process::terminate(&record, grace))
            .await
            .unwrap_or(false);
        if !gone {
            left.push(r);
        }
    }
    left
}

/// Whether this process may move a thread out of `SCHED_IDLE` again
/// (`CAP_SYS_NICE`; without it the kernel refuses, whatever the nice
/// value: `can_nice` against an `RLIMIT_NICE` of 0).
pub(crate) fn can_leave_idle_class() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// Puts every thread of `pid` in the `SCHED_IDLE` class (`background`:
/// it runs only on a CPU that has nothing else to do) or back in the
/// normal one. Threads made meanwhile inherit their creator's class, so
/// passes repeat until one finds no thread it had not set.
pub(crate) fn set_background(pid: u32, background: bool) -> std::io::Result<()> {
    let policy = if background {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    let mut done = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let mut found_new = false;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Some(tid) = task?
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            if !done.insert(tid) {
                continue;
            }
            found_new = true;
            // SAFETY: sched_setscheduler only reads `param`, which lives
            // through the call; a tid that is gone is an error, not UB.
            if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
                let e = std::io::Error::last_os_error();
                // A thread that ended meanwhile needs nothing.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
        if !found_new {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tid: i32) -> i32 {
        // SAFETY: sched_getscheduler takes a plain tid.
        unsafe { libc::sched_getscheduler(tid) }
    }

    fn threads(pid: u32) -> Vec<i32> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| t.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_process_goes_to_the_background_and_back_with_all_its_threads() {
        assert!(
            can_leave_idle_class(),
            "this test needs CAP_SYS_NICE (run it as root)"
        );
        // Four threads, as a VMM has several.
        let script = "import threading, time\n\
            [threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(3)]\n\
            time.sleep(30)";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .spawn()
            .expect("python3");
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads(pid).len() < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "python3 made no threads"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        set_background(pid, true).unwrap();
        assert!(threads(pid).iter().all(|&t| policy(t) == libc::SCHED_IDLE));
        set_background(pid, false).unwrap();
        assert!(threads(pid).iter().all(|&t| policy(t) == libc::SCHED_OTHER));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(set_background(pid, true).is_err(), "a process that is gone");
    }
}
