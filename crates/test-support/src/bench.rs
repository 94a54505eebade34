//! What the end-to-end benches share: their arguments, and the bare
//! baseline (the SDK's QEMU command line started by hand).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

use crate::host::ChildGuard;
use crate::init::READY;

/// The numbers a bench was given (`cargo bench ... -- 5 10`), or `None`
/// when cargo runs the bench target without `--bench` (`cargo test
/// --benches`, `cargo test --all-targets`): an end-to-end bench has
/// nothing to do then.
pub fn bench_args() -> Option<Vec<usize>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter()
        .any(|a| a == "--bench")
        .then(|| args.iter().filter_map(|a| a.parse().ok()).collect())
}

/// QEMU started by hand with `args` (the SDK's command line for the same
/// config), stdio to `/dev/null`, killed on drop: the benches' bare
/// baseline.
pub fn spawn_bare_qemu(binary: &Path, args: &[String]) -> ChildGuard {
    ChildGuard(
        Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display())),
    )
}

/// Connects to the agent socket (retrying until QEMU has made it) and
/// waits for the guest's first line, which must be [`READY`]; within
/// `timeout`. Returns the time it took.
pub async fn wait_ready_line(socket: &Path, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(_) if start.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => bail!("agent socket {}: {e}", socket.display()),
        }
    };
    let mut line = String::new();
    let left = timeout.saturating_sub(start.elapsed());
    tokio::time::timeout(left, BufReader::new(stream).read_line(&mut line))
        .await
        .ok()
        .with_context(|| format!("the guest wrote no line within {timeout:?}"))??;
    ensure!(line.starts_with(READY), "the guest's first line: {line:?}");
    Ok(start.elapsed())
}

/// The bare baseline of one boot: QEMU started by hand with `args` until
/// the guest's first line ([`READY`]), then killed and its `run_dir`
/// (holding `agent.sock`) removed. Returns the time from spawn to the line.
pub async fn time_bare_boot(
    binary: &Path,
    args: &[String],
    run_dir: &Path,
    timeout: Duration,
) -> Duration {
    std::fs::create_dir_all(run_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", run_dir.display()));
    let start = Instant::now();
    let qemu = spawn_bare_qemu(binary, args);
    wait_ready_line(&run_dir.join("agent.sock"), timeout)
        .await
        .expect("the bare guest never wrote its line");
    let boot = start.elapsed();
    drop(qemu);
    std::fs::remove_dir_all(run_dir)
        .unwrap_or_else(|e| panic!("removing {}: {e}", run_dir.display()));
    boot
}
