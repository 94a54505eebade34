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

/// Env var telling the re-executed test binary to act as a device prober.
const DEVICE_PROBE: &str = "VC_CGROUPS_TEST_DEVICE_PROBE";
const DEVICE_PROBE_TEST: &str = "apply::test_support::device_probe_process";
/// The prefix of the prober's answers (libtest writes its own lines too).
const PROBE_ANSWER: &str = "PROBE-ERRNO ";
/// The prefix of the line naming the prober's worker thread.
const PROBE_WORKER: &str = "PROBE-WORKER ";

/// A process that opens and makes device nodes when asked, to see what
/// the device rules of its cgroup let it do: this test binary
/// re-executed. A worker thread of its own does the probing, so that it
/// can be placed apart from the process (as a vCPU thread is). Killed and
/// reaped on drop.
pub(crate) struct Prober {
    process: Process,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    worker: u32,
}

impl Prober {
    pub(crate) fn spawn() -> Self {
        use std::process::Stdio;
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                DEVICE_PROBE_TEST,
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DEVICE_PROBE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-executing the test binary as a device prober");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut prober = Prober {
            process: Process(ChildGuard(child)),
            stdin,
            stdout,
            worker: 0,
        };
        prober.worker = prober.read_marked(PROBE_WORKER);
        prober
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The thread that opens and makes the nodes.
    pub(crate) fn worker(&self) -> u32 {
        self.worker
    }

    /// The number after the next `marker` the prober writes.
    fn read_marked<T: std::str::FromStr>(&mut self, marker: &str) -> T {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("reading the prober");
            assert!(n > 0, "the prober exited before writing {marker:?}");
            // libtest may have started the line with the test's name.
            if let Some(at) = line.find(marker)
                && let Ok(value) = line[at + marker.len()..].trim().parse()
            {
                return value;
            }
        }
    }

    fn ask(&mut self, request: &str) -> i32 {
        use std::io::Write;
        writeln!(self.stdin, "{request}").expect("writing to the prober");
        self.read_marked(PROBE_ANSWER)
    }

    /// Opens `path` for reading and writing: 0, or the errno.
    pub(crate) fn open(&mut self, path: &str) -> i32 {
        self.ask(&format!("open {path}"))
    }

    /// Makes the character device node `major:minor` at `path` (removing
    /// it again): 0, or the errno.
    pub(crate) fn mknod(&mut self, path: &Path, major: u32, minor: u32) -> i32 {
        self.ask(&format!("mknod {} {major} {minor}", path.display()))
    }
}

fn probe(request: &str) -> i32 {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let words: Vec<&str> = request.split_whitespace().collect();
    match words.as_slice() {
        ["open", path] => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_or_else(errno, |_| 0),
        ["mknod", path, major, minor] => {
            let dev = nix::sys::stat::makedev(major.parse().unwrap(), minor.parse().unwrap());
            let made = nix::sys::stat::mknod(
                *path,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                dev,
            );
            let _ = std::fs::remove_file(path);
            made.map_or_else(|e| e as i32, |()| 0)
        }
        _ => panic!("unknown probe request {request:?}"),
    }
}

/// The body of the device prober when re-executed; as a plain test, a
/// check that the prober answers.
#[test]
fn device_probe_process() {
    use std::io::BufRead;
    if std::env::var_os(DEVICE_PROBE).is_some() {
        let worker = std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            println!("{PROBE_WORKER}{}", unsafe { libc::gettid() });
            for line in std::io::stdin().lock().lines() {
                let line = line.expect("reading a probe request");
                println!("{PROBE_ANSWER}{}", probe(&line));
            }
        });
        worker.join().expect("the prober's worker");
        return;
    }
    let mut prober = Prober::spawn();
    assert!(
        Path::new(&format!("/proc/{}/task/{}", prober.pid(), prober.worker())).exists(),
        "the worker is a thread of the prober"
    );
    assert_ne!(prober.worker(), prober.pid());
    assert_eq!(prober.open("/dev/null"), 0);
    assert_eq!(prober.open("/nonexistent"), libc::ENOENT);
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
