//! Host processes the sandbox started (helpers), identified by pid and
//! start time so that a pid reused by an unrelated process is never
//! signalled. The work is `vc_hypervisor::process`'s; this maps the
//! sandbox state's [`HelperRecord`]s onto its records.

use std::time::Duration;

use vc_hypervisor::process::{self, ProcessRecord};

use crate::state::HelperRecord;

pub(crate) use vc_hypervisor::process::with_descendants;

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

/// The start time of `pid` (`/proc/<pid>/stat` field 22), or `None` when
/// it does not exist.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    process::start_time(pid).ok()
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
