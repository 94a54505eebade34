//! `vc-guest-agent`: the sandbox VM's init. See the library's crate doc.
//!
//! As PID 1 it sets up the guest and serves on the virtio-serial port; run
//! by hand it serves on `--listen <unix socket path>` (for debugging).

use std::path::Path;
use std::time::Duration;

use slog::{Drain, Level, Logger, error, info, o, warn};
use vc_guest_agent::{Agent, guest, reaper::ReapMode};

fn logger(level: &str) -> Logger {
    let level = match level {
        "error" => Level::Error,
        "warn" => Level::Warning,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        _ => Level::Info,
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain).build().fuse();
    Logger::root(
        drain.filter_level(level).fuse(),
        o!("agent" => env!("CARGO_PKG_VERSION")),
    )
}

async fn run_init(log: &Logger) -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = guest::parse_cmdline(&cmdline);
    let (loaded, failures) = guest::load_modules(Path::new(guest::MODULES_DIR));
    info!(log, "kernel modules loaded"; "count" => loaded);
    for e in failures {
        warn!(log, "module: {e}");
    }
    let cgroup_root = if params.cgroups {
        match guest::setup_cgroups(Path::new("/sys/fs/cgroup")) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(log, "containers run without cgroups: {e}");
                None
            }
        }
    } else {
        None
    };
    if let Err(e) = vc_guest_agent::network::loopback_up().await {
        warn!(log, "lo not up: {e}");
    }
    let agent = Agent::new(ReapMode::All, cgroup_root, log.clone())?;
    let port = vc_guest_agent::channel::wait_for_port(
        Path::new("/sys"),
        &params.channel,
        Duration::from_secs(10),
    )
    .await?;
    let mut servers = vec![agent.serve_serial(&port).await?];
    info!(log, "serving"; "port" => %port.display());
    // The other agent ports (agent.channel.1, ...): one per host process
    // talking to the agent at the same time. They were probed with the
    // first one.
    let prefix = params
        .channel
        .trim_end_matches(|c: char| c.is_ascii_digit());
    for (name, extra) in vc_guest_agent::channel::find_ports_with_prefix(Path::new("/sys"), prefix)
    {
        if name == params.channel {
            continue;
        }
        match agent.serve_serial(&extra).await {
            Ok(server) => {
                info!(log, "serving"; "port" => %extra.display(), "name" => name);
                servers.push(server);
            }
            Err(e) => warn!(log, "not serving an extra agent port"; "port" => name, "error" => %e),
        }
    }
    // Kata's runtimes connect only over vsock, port 1024.
    if vc_guest_agent::has_vsock(Path::new("/dev")) {
        match agent.serve_vsock(vc_guest_agent::VSOCK_PORT).await {
            Ok(server) => {
                info!(log, "serving"; "vsock port" => vc_guest_agent::VSOCK_PORT);
                servers.push(server);
            }
            Err(e) => warn!(log, "not serving on vsock"; "error" => %e),
        }
    }
    // PID 1 never returns.
    std::future::pending::<()>().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let pid1 = std::process::id() == 1;
    let mut mount_errors = Vec::new();
    if pid1 {
        if let Err(e) = guest::make_root_pivotable() {
            mount_errors.push(e);
        }
        mount_errors.extend(guest::mount_pseudo_filesystems());
    }
    let params =
        guest::parse_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let log = logger(&params.log_level);
    for e in mount_errors {
        warn!(log, "{e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(log, "no runtime: {e}");
            return halt(pid1);
        }
    };
    if pid1 {
        loop {
            if let Err(e) = rt.block_on(run_init(&log)) {
                error!(log, "agent failed, retrying in 1 s: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!(
            "usage: vc-guest-agent --listen <unix socket path>   (as PID 1 it serves the virtio-serial port)"
        );
        return std::process::ExitCode::from(2);
    };
    let res = rt.block_on(async {
        let agent = Agent::new(ReapMode::Registered, None, log.clone())?;
        let _server = agent.serve_unix(path).await?;
        info!(log, "serving"; "socket" => path);
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// PID 1 must not exit (the kernel panics): park instead.
fn halt(pid1: bool) -> std::process::ExitCode {
    if pid1 {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::process::ExitCode::FAILURE
}
