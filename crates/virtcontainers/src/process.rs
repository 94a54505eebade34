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
