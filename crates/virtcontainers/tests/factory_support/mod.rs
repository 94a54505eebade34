//! What the factory tests share: a template factory in a test's directory
//! and what they read from the log.

// Each test uses its own part of this module.
#![allow(dead_code)]

use std::time::Duration;

use vc_test_support::LogCapture;
use virtcontainers::{TemplateConfig, TemplateFactory};

use crate::common::Env;

/// The template factory of `env`'s test: its template under the test's
/// directory.
pub fn template_factory(env: &Env) -> TemplateFactory {
    template_factory_in(env.dir.path())
}

/// A template factory with its template in `<dir>/template`.
pub fn template_factory_in(dir: &std::path::Path) -> TemplateFactory {
    TemplateFactory::new(TemplateConfig {
        dir: dir.join("template"),
        init_timeout: Duration::from_secs(180),
        ..TemplateConfig::default()
    })
}

/// What the factory tests read from a [`LogCapture`].
pub trait CaptureExt {
    /// How many records have `message`.
    fn count(&self, message: &str) -> usize;
    /// Every record, one a line, for a failure's message.
    fn text(&self) -> String;
}

impl CaptureExt for LogCapture {
    fn count(&self, message: &str) -> usize {
        self.with_message(message).len()
    }

    fn text(&self) -> String {
        self.lines()
            .iter()
            .map(|l| format!("{} {} {:?}", l.level, l.message, l.values))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A sandbox config like `Env::config(NineP, ...)`'s, for a process that
/// works in a test's directory `dir` (a child of the test).
pub fn sandbox_in(
    dir: &std::path::Path,
    id: &str,
    containers: Vec<virtcontainers::ContainerConfig>,
) -> virtcontainers::SandboxConfig {
    let image = vc_test_support::require_sandbox_host();
    let mut config = virtcontainers::SandboxConfig::new(
        id.parse().unwrap(),
        virtcontainers::VmConfig::new(&image.vmlinux, &image.initramfs),
    );
    config.paths = virtcontainers::Paths::under(dir);
    config.cgroups = Some(virtcontainers::CgroupsConfig::default());
    config.fs_share.kind = virtcontainers::FsShareKind::NineP;
    config.containers = containers;
    config
}
