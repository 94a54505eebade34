//! Fixtures for the applier's tests on the real cgroupfs (beyond
//! `vc-test-support`'s preconditions and ids): a multi-threaded stand-in
//! for a VMM, and cgroup inspection through /proc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vc_test_support::ChildGuard;

use super::{CgroupRoots, V1Mounts};
use crate::plan::{CgroupDriver, CgroupLocation, CgroupVersion, SandboxCgroupConfig};

/// Env var telling the re-executed test binary to act as a fake VMM with
/// this many extra threads.
const FAKE_VMM_THREADS: &str = "VC_CGROUPS_TEST_FAKE_VMM_THREADS";
const FAKE_VMM_TEST: &str = "apply::test_support::fake_vmm_process";

/// The controllers the v1 tests check.
pub(crate) const CHECKED: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "devices"];

/// Fails the test, naming what is missing, unless we are root on a host
/// with a writable cgroup v1 hierarchy for each checked controller.
pub(crate) fn require_root_v1() -> CgroupRoots {
    vc_test_support::require_cgroup_v1(&CHECKED);
    CgroupRoots::discover().expect("reading /proc/self/mountinfo")
}

/// A cgroupfs v1 config whose cgroups live under test-private parents.
pub(crate) fn v1_config(id: &str, sandbox_cgroup_only: bool) -> SandboxCgroupConfig {
    SandboxCgroupConfig {
        location: CgroupLocation::Parent(format!("/{id}-parent")),
        overhead_parent: format!("/{id}-overhead"),
        sandbox_cgroup_only,
        ..SandboxCgroupConfig::new(
            id.parse().unwrap(),
            CgroupDriver::Cgroupfs,
            CgroupVersion::V1,
        )
    }
}

/// Directories named after `id` in any v1 controller (there must be none
/// once a test is done).
pub(crate) fn leftovers(mounts: &V1Mounts, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for (_, point) in mounts.iter() {
        let Ok(entries) = std::fs::read_dir(point) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(id) {
                found.push(e.path());
            }
        }
    }
    found
}

/// The cgroup path of thread `tid` of `pid` in the hierarchy of
/// `controller` (`""` for cgroup v2).
pub(crate) fn cgroup_of(pid: u32, tid: u32, controller: &str) -> String {
    super::tasks::thread_cgroup(pid, tid, controller)
        .unwrap_or_else(|| panic!("{pid}/{tid} has no {controller:?} cgroup"))
}

/// Reads a control file, trimmed.
pub(crate) fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A child process that is killed and reaped on drop.
pub(crate) struct Process(pub(crate) ChildGuard);

impl Process {
    /// `sleep` as a stand-in for a helper or runtime process.
    pub(crate) fn sleeper() -> Self {
        Process(ChildGuard::sleeper())
    }

    /// A fake VMM: this test binary re-executed with `threads` extra
    /// threads that sleep. Returns once all threads exist.
    pub(crate) fn fake_vmm(threads: usize) -> Self {
        let child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([FAKE_VMM_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(FAKE_VMM_THREADS, threads.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("re-executing the test binary as a fake VMM");
        let process = Process(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        // libtest itself runs the test on a thread of its own: wait for ours.
        while process.threads().len() < threads + 2 {
            assert!(
                Instant::now() < deadline,
                "fake VMM did not start its threads"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The process's thread ids, main thread first.
    pub(crate) fn threads(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort();
        tids
    }

    /// The threads other than the main one.
    pub(crate) fn worker_threads(&self) -> Vec<u32> {
        self.threads()
            .into_iter()
            .filter(|&t| t != self.pid())
            .collect()
    }
}

/// The body of the fake VMM when re-executed; as a plain test, a check that
/// the fixture really makes a multi-threaded process.
#[test]
fn fake_vmm_process() {
    if let Ok(n) = std::env::var(FAKE_VMM_THREADS) {
        let n: usize = n.parse().expect("thread count");
        for _ in 0..n {
            std::thread::spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            });
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let vmm = Process::fake_vmm(4);
    assert!(vmm.threads().len() >= 5, "{:?}", vmm.threads());
    assert_eq!(vmm.threads()[0], vmm.pid());
}
