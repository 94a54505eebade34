//! Host processes the sandbox started (helpers), identified by pid and
//! start time so that a pid reused by an unrelated process is never
//! signalled. The work is `vc_hypervisor::process`'s; this maps the
//! sandbox state's [`HelperRecord`]s onto its records.

use std::time::Duration;

use vc_hypervisor::process::{self, ProcessRecord};

use crate::config::SandboxLifetime;
use crate::state::HelperRecord;

pub(crate) use vc_hypervisor::process::{is_alive, with_descendants};

impl From<HelperRecord> for ProcessRecord {
    fn from(r: HelperRecord) -> Self {
        ProcessRecord {
            program: r.program,
            pid: r.pid,
            start_time: r.start_time,
        }
    }
}

impl From<ProcessRecord> for HelperRecord {
    fn from(r: ProcessRecord) -> Self {
        HelperRecord {
            program: r.program,
            pid: r.pid,
            start_time: r.start_time,
        }
    }
}

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
pub(crate) fn this_process() -> Option<HelperRecord> {
    let pid = std::process::id();
    Some(HelperRecord {
        program: std::env::current_exe().unwrap_or_default(),
        pid,
        start_time: start_time(pid)?,
    })
}

/// Ends each recorded process (`vc_hypervisor::process::terminate`: a
/// zombie or a reused pid counts as gone) off the async runtime; returns
/// those that survived SIGKILL.
pub(crate) async fn terminate_all(
    records: Vec<HelperRecord>,
    grace: Duration,
) -> Vec<HelperRecord> {
    let mut left = Vec::new();
    for r in records {
        let record = ProcessRecord::from(r.clone());
        let gone = tokio::task::spawn_blocking(move || process::terminate(&record, grace))
            .await
            .unwrap_or(false);
        if !gone {
            left.push(r);
        }
    }
    left
}
