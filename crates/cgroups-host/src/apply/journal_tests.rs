//! The journal on this host's real cgroupfs (root needed): the state is
//! recorded before every change, so a manager rebuilt from the record
//! deletes exactly what exists.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
};
use vc_test_support::unique;

use super::test_support::{leftovers, require_root_v1, v1_config};
use super::*;
use crate::plan::{ContainerResources, plan};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn container(id: &str) -> ContainerResources {
    let cpu = LinuxCpuBuilder::default()
        .quota(50_000i64)
        .period(100_000u64)
        .cpus("0")
        .build()
        .unwrap();
    let res = LinuxResourcesBuilder::default()
        .cpu(cpu)
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
        .build()
        .unwrap();
    ContainerResources::new(id, res)
}

/// The journal sees the plan and every directory before it exists, so a
/// manager rebuilt from the last record (another process, after a kill -9
/// anywhere in apply) deletes exactly what was made, parents included.
#[test]
fn v1_journal_records_every_directory_before_it_is_made() {
    let roots = require_root_v1();
    let id = unique("journal");
    let config = v1_config(&id, false);
    let plan = plan(&config, &[container("a")]).unwrap();
    let records: std::sync::Arc<std::sync::Mutex<Vec<CgroupsState>>> = Default::default();
    let seen = records.clone();
    let journal = move |state: &CgroupsState| -> Result<(), JournalError> {
        if seen.lock().unwrap().is_empty() {
            // The first record comes before any mkdir of this apply.
            for dir in &state.created {
                assert!(
                    !dir.exists(),
                    "{} made before it was recorded",
                    dir.display()
                );
            }
        }
        seen.lock().unwrap().push(state.clone());
        Ok(())
    };
    let mut m = HostCgroups::new(CgroupDriver::Cgroupfs, CgroupVersion::V1, &roots, logger())
        .unwrap()
        .with_journal(Box::new(journal));
    m.apply(&plan, &SandboxTasks::default()).unwrap();

    let first = records.lock().unwrap()[0].clone();
    assert_eq!(
        first.plan.as_ref(),
        Some(&plan),
        "the plan is recorded first"
    );
    let made = leftovers(&roots.v1, &id);
    assert!(!made.is_empty());
    for dir in &made {
        assert!(
            first.created.contains(dir),
            "{} was not recorded",
            dir.display()
        );
    }

    // Another process, after a crash, has only the first record: it is
    // enough to remove everything, the parents too.
    let mut reclaimer = HostCgroups::from_state(
        CgroupDriver::Cgroupfs,
        CgroupVersion::V1,
        &roots,
        logger(),
        first,
    )
    .unwrap();
    reclaimer.delete().unwrap();
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}

#[test]
fn v1_a_journal_that_fails_stops_apply_before_any_change() {
    let roots = require_root_v1();
    let id = unique("journal-fail");
    let plan = plan(&v1_config(&id, false), &[]).unwrap();
    let journal = |_: &CgroupsState| -> Result<(), JournalError> { Err("disk full".into()) };
    let mut m = CgroupfsV1::new(roots.v1.clone(), logger()).with_journal(Box::new(journal));
    let err = m.apply(&plan, &SandboxTasks::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Journal { sandbox, .. } if sandbox == id.as_str()),
        "{err:?}"
    );
    assert_eq!(leftovers(&roots.v1, &id), Vec::<PathBuf>::new());
}
