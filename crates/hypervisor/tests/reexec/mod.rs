//! Re-executing this test binary as another process (a "creator" that
//! starts something, then exits or is killed while the test watches).
//!
//! A test file declares an ignored test named [`ROLE_TEST`] that reads its
//! role from the environment and exits when done; [`creator`] runs it.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The name of the role entry point each test file declares.
pub const ROLE_TEST: &str = "creator_role";

/// A re-executed creator, killed if a failing test lets go of it.
pub struct Creator(pub Child);

impl Drop for Creator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs this test binary's [`ROLE_TEST`] in a new process with `envs`;
/// its stdout is piped.
pub fn creator<K: AsRef<OsStr>, V: AsRef<OsStr>>(envs: &[(K, V)]) -> Creator {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", ROLE_TEST, "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .stdout(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    Creator(command.spawn().unwrap())
}

/// Prints a line the parent can find with [`line_from`]: on a line of
/// its own (the test harness prints before it).
pub fn say(line: &str) {
    println!("\n{line}");
}

/// Reads the creator's stdout up to the first line that `wanted` accepts.
pub fn line_from(child: &mut Creator, wanted: impl Fn(&str) -> bool) -> String {
    let out = child.0.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "the creator exited before it said anything useful");
        if wanted(line.trim_end()) {
            return line.trim_end().to_owned();
        }
    }
}

/// Waits up to `limit` for the creator to exit.
pub fn wait_exit(child: &mut Creator, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the creator did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Ok`, up to `limit`; panics with its
/// last complaint.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => panic!("{why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
