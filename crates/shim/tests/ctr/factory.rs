//! The VM template (`[factory] enable_template`), made and removed with
//! the shim's own `factory-init` / `factory-destroy`.

use anyhow::{Result, ensure};
use vc_test_support::{HostSnapshot, assert_unchanged_since, unique};

use crate::common::image::IMAGE;
use crate::common::{Env, VC, shim, template_config};

/// `factory-init` makes a template from the configuration; a task run
/// with it is cloned from the template (containerd's log says so) and
/// prints what a cold one prints; `factory-destroy` leaves nothing of the
/// template (no tmpfs, file or process).
pub fn template(env: &Env) -> Result<()> {
    let dir = env.containerd.scratch("factory");
    let template = dir.join("template");
    let config = template_config(&dir, &template)?;
    let before = HostSnapshot::take();
    let status = shim(&config, "factory-status")?;
    ensure!(status.starts_with("no template"), "before init: {status}");
    let made = shim(&config, "factory-init")?;
    ensure!(made.starts_with("template ready"), "init: {made}");
    let status = shim(&config, "factory-status")?;
    ensure!(status.starts_with("template ready"), "after init: {status}");

    let id = unique("v-template");
    let config_arg = config.display().to_string();
    let out = env.leak_checked(&[&id], || {
        env.run_rm(
            VC,
            &id,
            &["--runtime-config-path", &config_arg],
            IMAGE,
            &["echo", "from a clone"],
        )
    })?;
    ensure!(
        out.stdout == "from a clone\n" && out.code == 0,
        "the clone's task: {out:?}"
    );
    let log = env.containerd.log_tail(usize::MAX);
    ensure!(
        log.lines()
            .any(|l| l.contains("VM started from its template") && l.contains(&format!("id: {id}"))),
        "containerd's log does not say the task's VM was cloned from the template:\n{}",
        log.lines()
            .filter(|l| l.contains("template") || l.contains("cold"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let gone = shim(&config, "factory-destroy")?;
    ensure!(gone.contains("removed"), "destroy: {gone}");
    ensure!(!template.exists(), "{} left behind", template.display());
    // No tmpfs, file or process of the template (or of the clone) left.
    assert_unchanged_since(&before);
    Ok(())
}
