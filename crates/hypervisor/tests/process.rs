//! The process module with real processes: the write-ahead gate under
//! `SIGKILL` of the creator at random instants, outliving processes and
//! their exit status seen from another process, and the keeper's
//! descriptors.
//!
//! Creators run as re-executions of this test binary (the ignored
//! `creator_role` test, selected by environment variables), so that they
//! can be killed or exit while this process watches.

mod reexec;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reexec::{Creator, eventually, line_from};

use vc_hypervisor::ExitStatus;
use vc_hypervisor::process::{
    self, KEEPER_NAME, ProcessLedger, ProcessLifetime, ProcessRecord, ProcessSpec,
};

/// Which role a re-executed test binary plays.
const ROLE: &str = "VC_PROCESS_TEST_ROLE";
/// The ledger dir of the role.
const DIR: &str = "VC_PROCESS_TEST_DIR";
/// `dies` or `outlives`.
const LIFETIME: &str = "VC_PROCESS_TEST_LIFETIME";
/// A value unique to one creator, found in the environment of every
/// process it forks (and of the programs they exec).
const MARKER: &str = "VC_PROCESS_TEST_MARKER";
/// Most processes one spawning creator starts.
const MAX_SPAWNS: usize = 40;

/// The entry point of re-executed creators; does nothing in a normal run.
#[test]
#[ignore = "entry point of the creator processes the other tests re-execute"]
fn creator_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let lifetime = match std::env::var(LIFETIME).unwrap().as_str() {
        "dies" => ProcessLifetime::DiesWithOwner,
        _ => ProcessLifetime::OutlivesOwner,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ledger = ProcessLedger::open(&dir);
    match role.as_str() {
        // Spawns sleepers back to back until killed.
        "spawn-loop" => rt.block_on(async {
            reexec::say("ready");
            for _ in 0..MAX_SPAWNS {
                let spec = ProcessSpec::new("sleep").arg("1000");
                process::spawn(spec, lifetime, &ledger).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
        }),
        // Starts one process, says which, and exits.
        "spawn-and-exit" => rt.block_on(async {
            let spec = ProcessSpec::new("/bin/sh").args(["-c", "sleep 1; exit 7"]);
            let handle = process::spawn(spec, lifetime, &ledger).await.unwrap();
            reexec::say(&serde_json::to_string(handle.record()).unwrap());
        }),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Re-executes this test binary as a creator.
fn creator(role: &str, dir: &Path, lifetime: ProcessLifetime, marker: &str) -> Creator {
    let lifetime = match lifetime {
        ProcessLifetime::DiesWithOwner => "dies",
        ProcessLifetime::OutlivesOwner => "outlives",
    };
    reexec::creator(&[
        (ROLE, OsStr::new(role)),
        (DIR, dir.as_os_str()),
        (LIFETIME, OsStr::new(lifetime)),
        (MARKER, OsStr::new(marker)),
    ])
}

/// A live process of this test, as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    session: u32,
    start_time: u64,
    comm: String,
    argv0: String,
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Every live (not zombie) process whose environment holds `marker`.
fn marked(marker: &str) -> Vec<Proc> {
    let needle = format!("{MARKER}={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if matches!(fields[0].as_str(), "Z" | "X") {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        found.push(Proc {
            pid,
            ppid: fields[1].parse().unwrap(),
            session: fields[3].parse().unwrap(),
            start_time: fields[19].parse().unwrap(),
            comm: std::fs::read_to_string(entry.path().join("comm"))
                .unwrap_or_default()
                .trim_end()
                .to_owned(),
            argv0: String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap_or(&[]))
                .into_owned(),
        });
    }
    found
}

/// Kills a creator at a random instant of its spawn loop, many times, for
/// each lifetime: every program that ran is in the ledger (the gate), no
/// half-spawned child lingers, and the ledger ends them all.
#[test]
fn a_creator_killed_at_any_instant_leaves_nothing_unrecorded() {
    let tmp = tempfile::tempdir().unwrap();
    for lifetime in [
        ProcessLifetime::DiesWithOwner,
        ProcessLifetime::OutlivesOwner,
    ] {
        let mut unstarted_records = 0;
        let mut recorded_programs = 0;
        for round in 0..30 {
            let dir = tmp.path().join(format!("{lifetime:?}-{round}"));
            std::fs::create_dir(&dir).unwrap();
            let marker = format!("{}-{lifetime:?}-{round}", std::process::id());
            let mut child = creator("spawn-loop", &dir, lifetime, &marker);
            line_from(&mut child, |l| l == "ready");
            // A random instant within the first few spawns.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            std::thread::sleep(Duration::from_micros(u64::from(nanos % 20_000)));
            child.0.kill().unwrap();
            child.0.wait().unwrap();

            let ledger = ProcessLedger::open(&dir);
            let mut running = 0;
            eventually(Duration::from_secs(5), || {
                running = 0;
                let records: BTreeSet<(u32, u64)> = ledger
                    .records()
                    .unwrap()
                    .iter()
                    .map(|r| (r.pid, r.start_time))
                    .collect();
                let procs = marked(&marker);
                for p in &procs {
                    let program = p.argv0 == "sleep";
                    let keeper = p.comm == KEEPER_NAME
                        && procs.iter().any(|c| c.ppid == p.pid && c.argv0 == "sleep");
                    if program && !records.contains(&(p.pid, p.start_time)) {
                        return Err(format!("round {round}: unrecorded program running: {p:?}"));
                    }
                    if !program && !keeper {
                        return Err(format!("round {round}: half-spawned child lingers: {p:?}"));
                    }
                    if program && lifetime == ProcessLifetime::DiesWithOwner {
                        return Err(format!("round {round}: survived its owner: {p:?}"));
                    }
                    running += usize::from(program);
                }
                Ok(())
            });
            recorded_programs += running;
            unstarted_records += ledger.records().unwrap().len() - running;

            assert!(
                ledger
                    .terminate_all(Duration::from_secs(2))
                    .unwrap()
                    .is_empty(),
                "round {round}: survivors"
            );
            eventually(Duration::from_secs(5), || {
                match marked(&marker).as_slice() {
                    [] => Ok(()),
                    left => Err(format!("round {round}: left running: {left:?}")),
                }
            });
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "round {round}: files left: {left:?}");
        }
        println!(
            "{lifetime:?}: {recorded_programs} recorded programs outlived their killed creator, \
             {unstarted_records} records of programs not running (never let go, or killed with their owner)"
        );
    }
}

/// An outliving process survives its creator's exit, runs under a keeper
/// in a session of its own, and its exit status is readable here.
#[test]
fn an_outliving_process_survives_its_creator_and_reports_its_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = format!("{}-survivor", std::process::id());
    let mut child = creator(
        "spawn-and-exit",
        tmp.path(),
        ProcessLifetime::OutlivesOwner,
        &marker,
    );
    let creator_pid = child.0.id();
    let line = line_from(&mut child, |l| l.starts_with('{'));
    let record: ProcessRecord = serde_json::from_str(&line).unwrap();
    assert!(child.0.wait().unwrap().success());
    assert!(
        record.is_alive(),
        "the process died with its creator: {record:?}"
    );
    let procs = marked(&marker);
    let program = procs.iter().find(|p| p.pid == record.pid).unwrap();
    let keeper = procs.iter().find(|p| p.pid == program.ppid).unwrap();
    assert_eq!(keeper.comm, KEEPER_NAME);
    assert_eq!(keeper.session, keeper.pid, "the keeper leads a session");
    assert_ne!(keeper.ppid, creator_pid);
    assert_eq!(
        ProcessLedger::open(tmp.path()).records().unwrap(),
        std::slice::from_ref(&record)
    );

    eventually(Duration::from_secs(10), || {
        if record.is_alive() {
            return Err("still running".into());
        }
        match process::exit_status(tmp.path(), &record) {
            Some(status) => {
                assert_eq!(status, ExitStatus::Code(7));
                Ok(())
            }
            None => Err("no exit status".into()),
        }
    });
    // Reaped by its keeper, which is gone too: no zombie anywhere.
    eventually(Duration::from_secs(5), || {
        match marked(&marker).as_slice() {
            [] => Ok(()),
            left => Err(format!("left: {left:?}")),
        }
    });
    assert!(!Path::new(&format!("/proc/{}", record.pid)).exists());
    ProcessLedger::open(tmp.path()).remove(&record).unwrap();
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// The keeper keeps only its program's stdio, the gate and the ledger
/// dir: not the creator's files (nor their locks); the program keeps only
/// its stdio.
#[tokio::test]
async fn the_keeper_holds_no_descriptor_of_its_creator() {
    let tmp = tempfile::tempdir().unwrap();
    let locked_path = tmp.path().join("state.lock");
    let locked = std::fs::File::create(&locked_path).unwrap();
    rustix::fs::flock(&locked, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let ledger = ProcessLedger::open(&dir);
    let log = std::fs::File::create(tmp.path().join("log")).unwrap();
    let spec = ProcessSpec::new("sleep").arg("100").stderr(log);
    let handle = process::spawn(spec, ProcessLifetime::OutlivesOwner, &ledger)
        .await
        .unwrap();
    let keeper = stat_fields(handle.pid()).unwrap()[1]
        .parse::<u32>()
        .unwrap();

    let fds = |pid: u32| -> Vec<(u32, PathBuf)> {
        let mut fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let fd = e.file_name().to_string_lossy().parse().unwrap();
                (fd, std::fs::read_link(e.path()).unwrap())
            })
            .collect();
        fds.sort();
        fds
    };
    let keeper_fds = fds(keeper);
    let numbers: Vec<u32> = keeper_fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 5], "{keeper_fds:?}");
    assert!(
        keeper_fds.iter().all(|(_, target)| target != &locked_path),
        "{keeper_fds:?}"
    );
    assert_eq!(keeper_fds[4].1, dir);
    assert_eq!(keeper_fds[2].1, tmp.path().join("log"));
    let program_fds: Vec<u32> = fds(handle.pid()).iter().map(|(fd, _)| *fd).collect();
    assert_eq!(program_fds, [0, 1, 2]);
    // The creator's lock is its own: another open file can take it once
    // the creator lets go (a keeper holding a copy would keep it for good;
    // other tests' children may hold one for the instant between their
    // fork and their exec).
    drop(locked);
    let again = std::fs::File::open(&locked_path).unwrap();
    eventually(Duration::from_secs(2), || {
        rustix::fs::flock(&again, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| format!("the creator's lock is still held by a copy of it: {e}"))
    });

    assert!(
        ledger
            .terminate_all(Duration::from_secs(2))
            .unwrap()
            .is_empty()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// A program of either lifetime finds itself in the ledger when it runs.
#[tokio::test]
async fn a_program_is_in_the_ledger_before_it_runs() {
    for lifetime in [
        ProcessLifetime::DiesWithOwner,
        ProcessLifetime::OutlivesOwner,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(tmp.path());
        let seen = tmp.path().join("seen");
        // `$$` is the shell's pid: the program's own.
        let script = r#"grep -c "\"pid\":$$," "$1" > "$2""#;
        let spec = ProcessSpec::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(ledger.path())
            .arg(&seen);
        let handle = process::spawn(spec, lifetime, &ledger).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, ExitStatus::Code(0), "{lifetime:?}");
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), "1\n");
        ledger.remove(handle.record()).unwrap();
    }
}

/// A program that joins a cgroup is in it before its first instruction:
/// here it reads its own `/proc/self/cgroup` at once, for both lifetimes
/// (the outliving one is forked by its keeper).
#[tokio::test]
async fn a_program_joins_its_cgroup_before_it_runs() {
    vc_test_support::require_cgroup_v1(&["memory"]);
    let memory = Path::new("/sys/fs/cgroup/memory");
    for lifetime in [
        ProcessLifetime::DiesWithOwner,
        ProcessLifetime::OutlivesOwner,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let name = vc_test_support::unique("join");
        let cgroup = memory.join(&name);
        std::fs::create_dir(&cgroup).unwrap();
        let out = tmp.path().join("cgroup.txt");
        let spec = ProcessSpec::new("/bin/sh")
            .args(["-c", &format!("cat /proc/self/cgroup > {}", out.display())])
            .join_cgroup(cgroup.join("cgroup.procs"));
        let ledger = ProcessLedger::open(tmp.path());
        let handle = process::spawn(spec, lifetime, &ledger).await.unwrap();
        eventually(Duration::from_secs(10), || {
            match std::fs::read_to_string(&out) {
                Ok(s) if s.contains(&name) => Ok(()),
                other => Err(format!("{lifetime:?}: {other:?}")),
            }
        });
        let seen = std::fs::read_to_string(&out).unwrap();
        assert!(
            seen.lines()
                .any(|l| l.ends_with(&format!(":memory:/{name}"))),
            "{lifetime:?}: {seen}"
        );
        drop(handle);
        eventually(Duration::from_secs(10), || {
            match std::fs::read_to_string(cgroup.join("cgroup.procs")) {
                Ok(s) if s.trim().is_empty() => Ok(()),
                other => Err(format!("still in the cgroup: {other:?}")),
            }
        });
        std::fs::remove_dir(&cgroup).unwrap();
    }
    // A cgroup that cannot be joined fails the spawn, and nothing runs.
    let tmp = tempfile::tempdir().unwrap();
    let spec = ProcessSpec::new("sleep")
        .arg("1000")
        .join_cgroup(memory.join("vc-no-such-cgroup/cgroup.procs"));
    let ledger = ProcessLedger::open(tmp.path());
    let err = process::spawn(spec, ProcessLifetime::DiesWithOwner, &ledger)
        .await
        .unwrap_err();
    assert!(matches!(err, vc_hypervisor::Error::Spawn { .. }), "{err}");
    assert!(ledger.records().unwrap().is_empty(), "no record left");
}
