//! What the examples share: their logger, the guest image's place, the
//! async runtime around `main`, the VM factory `--factory` names, stream
//! copying and error chains.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use slog::{Drain, o};

#[allow(dead_code)] // Only the examples that run terminals use it.
pub mod terminal;
use tokio::io::AsyncWriteExt;

/// Runs `body` on a multi-threaded tokio runtime; an error is printed with
/// its whole cause chain, prefixed by the program's `name`.
pub fn run_main(name: &str, body: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(body) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain: what failed, and why, down to the cause.
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    };
    // A read of stdin may still be pending on a blocking thread: do not
    // wait for the next key to exit.
    runtime.shutdown_background();
    code
}

/// Logs on stderr: warnings, or everything with `debug`.
pub fn logger(debug: bool) -> slog::Logger {
    let level = if debug {
        slog::Level::Debug
    } else {
        slog::Level::Warning
    };
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain.filter_level(level).fuse())
        .build()
        .fuse();
    slog::Logger::root(drain, o!())
}

/// The names `--factory` takes: where a sandbox's VM comes from.
#[allow(dead_code)] // Only the examples that create sandboxes use it.
pub const FACTORIES: [&str; 3] = ["cold", "template", "pool"];

/// The VM factory `--factory` names: a cold boot, a clone of the template
/// `factory init` made, or a VM of the pool `factory serve` keeps (both
/// at their default places).
#[allow(dead_code)] // Only the examples that create sandboxes use it.
pub fn vm_factory(name: &str) -> Arc<dyn virtcontainers::VmFactory> {
    use virtcontainers::{PoolFactory, QemuFactory, TemplateConfig, TemplateFactory};
    match name {
        "template" => Arc::new(TemplateFactory::new(TemplateConfig::default())),
        "pool" => Arc::new(PoolFactory::remote(
            virtcontainers::pool::DEFAULT_POOL_SOCKET,
            virtcontainers::vc_hypervisor::QemuOptions::default(),
        )),
        _ => Arc::new(QemuFactory::default()),
    }
}

/// Where `make guest-image` puts the image.
pub fn image_dir() -> PathBuf {
    vc_guest_image::cargo_target_dir().join("vc-guest-agent-image")
}

/// Copies `from` to `to` until EOF, then flushes.
#[allow(dead_code)] // Only the examples that run containers use it.
pub async fn copy(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    to.flush().await?;
    Ok(())
}

/// A process's exit code as this process's (out of range: 1).
#[allow(dead_code)] // Only the examples that run containers use it.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// An error and its causes, on one line.
#[allow(dead_code)] // Not every example prints errors it does not return.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
