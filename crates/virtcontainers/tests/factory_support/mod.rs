//! What the factory tests share: a template factory in a test's directory
//! and a logger whose lines the test can read.

// Each test uses its own part of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A slog drain keeping every record as one line: `LEVEL message k=v ...`.
#[derive(Clone, Default)]
pub struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    pub fn new() -> Self {
        Self::default()
    }

    /// A logger into this capture.
    pub fn logger(&self) -> slog::Logger {
        slog::Logger::root(self.clone(), slog::o!())
    }

    /// Every line so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

struct Line(String);

impl slog::Serializer for Line {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut line = Line(format!(
            "{} {}",
            record.level().as_short_str(),
            record.msg()
        ));
        let _ = slog::KV::serialize(&record.kv(), record, &mut line);
        let _ = slog::KV::serialize(values, record, &mut line);
        self.lines.lock().unwrap().push(line.0);
        Ok(())
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
