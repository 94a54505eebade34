//! `containerd-shim-vc-v2 factory-init | factory-status | factory-destroy`:
//! the VM template of `[factory]` (Kata's `kata-runtime factory`), made
//! from the shim's own configuration so that its sandboxes match it.

use slog::Logger;
use virtcontainers::{TemplateStatus, template::DestroyReport};

use crate::config::{self, ShimConfig};
use crate::error::{Error, Result};

/// What to do with the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateAction {
    /// Make it (replacing any previous one).
    Init,
    /// Say whether there is one and what it was made from.
    Status,
    /// Remove it, with its memory.
    Destroy,
}

/// Carries out `action` on the template of the configuration found as the
/// [`config`] module says; returns what to print.
pub async fn run(action: TemplateAction, logger: &Logger) -> Result<String> {
    let loaded = config::load(None)?;
    run_with(&loaded.config, action, logger).await
}

/// Carries out `action` on the template of `config`.
pub async fn run_with(
    config: &ShimConfig,
    action: TemplateAction,
    logger: &Logger,
) -> Result<String> {
    let factory = config.template();
    let dir = factory.config().dir.display().to_string();
    let sdk = |operation: &str| {
        let operation = format!("{operation} the template in {dir}");
        move |e: virtcontainers::Error| Error::Sandbox {
            operation,
            source: Box::new(e),
        }
    };
    match action {
        TemplateAction::Init => {
            let prototype = config.template_prototype()?;
            let info = factory
                .init(&prototype, logger)
                .await
                .map_err(sdk("make"))?;
            Ok(format!(
                "template ready in {dir}: booted in {:?}, {} MiB of guest memory{}",
                info.boot_time,
                info.memory_bytes >> 20,
                if config.factory.enable_template {
                    ""
                } else {
                    " (unused until [factory] enable_template = true)"
                }
            ))
        }
        TemplateAction::Status => Ok(match factory.status().map_err(sdk("read"))? {
            TemplateStatus::Absent => format!("no template in {dir}"),
            TemplateStatus::Ready(info) => format!(
                "template ready in {dir}: saved {} s ago, {} MiB of guest memory",
                info.saved_at.elapsed().map_or(0, |d| d.as_secs()),
                info.memory_bytes >> 20
            ),
            TemplateStatus::Unusable { reason } => {
                format!("unusable template in {dir} (factory-init rebuilds it): {reason}")
            }
        }),
        TemplateAction::Destroy => {
            let report: DestroyReport = factory.destroy(logger).await.map_err(sdk("remove"))?;
            Ok(if report.had_template {
                format!("template in {dir} removed")
            } else {
                format!("no template in {dir}; nothing left of one")
            })
        }
    }
}
