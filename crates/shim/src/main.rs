//! `containerd-shim-vc-v2`: containerd's runtime `io.containerd.vc.v2`.
//! See the `containerd_shim_vc_v2` library for what it does.

use std::io::Write;
use std::process::ExitCode;

use containerd_shim_vc_v2::args::{Action, Args};
use containerd_shim_vc_v2::template::TemplateAction;
use containerd_shim_vc_v2::{cleanup, daemon, launch, netns, socket};
use protobuf::Message;

fn main() -> ExitCode {
    let args = match Args::parse_from_go(std::env::args_os()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match args.action {
        Some(Action::Start) => start(&args),
        Some(Action::Delete) => delete(&args),
        Some(Action::NetnsHolder) => netns::hold(),
        Some(Action::FactoryInit) => template(&args, TemplateAction::Init),
        Some(Action::FactoryStatus) => template(&args, TemplateAction::Status),
        Some(Action::FactoryDestroy) => template(&args, TemplateAction::Destroy),
        None => serve(args),
    }
}

/// Prints the address alone: containerd reads stdout and stderr together.
fn start(args: &Args) -> ExitCode {
    let bundle = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return fail("start", &e),
    };
    match launch::start(args, &bundle, std::path::Path::new(socket::SOCKET_DIR)) {
        Ok(address) => {
            print!("{address}");
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(e) => fail("start", &e),
    }
}

/// Writes the `DeleteResponse` to stdout; warnings go to stderr, which
/// containerd logs.
fn delete(args: &Args) -> ExitCode {
    let bundle = match args.bundle.clone().map_or_else(std::env::current_dir, Ok) {
        Ok(b) => b,
        Err(e) => return fail("delete", &e),
    };
    let logger = daemon::logger(args.debug);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return fail("delete", &e),
    };
    let response = runtime.block_on(cleanup::delete(&bundle, &logger));
    drop(logger);
    match response.map(|r| r.write_to_bytes()) {
        Ok(Ok(bytes)) => {
            let mut out = std::io::stdout();
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail("delete", &e),
        Err(e) => fail("delete", &e),
    }
}

/// An administrator's command: what it did on stdout, errors on stderr.
fn template(args: &Args, action: TemplateAction) -> ExitCode {
    let logger = daemon::logger(args.debug);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return fail("factory", &e),
    };
    let result = runtime.block_on(containerd_shim_vc_v2::template::run(action, &logger));
    drop(logger);
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => fail("factory", &e),
    }
}

fn serve(args: Args) -> ExitCode {
    daemon::log_to_containerd();
    // Every line names its shim: containerd's log mixes all of them.
    let logger = daemon::logger(args.debug).new(slog::o!("id" => args.id.clone()));
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => return fail("serve", &e),
    };
    let result = runtime.block_on(daemon::serve(args, logger.clone()));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::error!(logger, "shim failed"; "error" => format!("{e:#}"));
            drop(logger);
            eprintln!("containerd-shim-vc-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Two workers: the shim waits on the VM, it does not compute.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn fail(action: &str, e: &dyn std::error::Error) -> ExitCode {
    eprintln!(
        "containerd-shim-vc-v2 {action}: {}",
        containerd_shim_vc_v2::error::chain(e)
    );
    ExitCode::FAILURE
}
