//! VM templating over QEMU's migration: the template VM's device state is
//! migrated to a file, its RAM stays in its shared memory file
//! (`x-ignore-shared` leaves it out of the stream), and a clone starts
//! with `-incoming defer` on a private mapping of that file and loads the
//! device state back.
//!
//! QEMU 7.2 has no `file:` migration URI (it came in 8.2); `exec:` runs a
//! shell command whose stdout (saving) or stdin (loading) carries the
//! stream, as Kata's templates do, so the state file's path is quoted for
//! `/bin/sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use qapi::qmp::{MigrationCapability, MigrationCapabilityStatus, MigrationStatus};

use super::Qemu;
use super::cmdline::path_str;
use crate::error::{Error, Result};
use crate::hypervisor::ExitWatch;

/// Pause between two `query-migrate` polls.
const POLL: Duration = Duration::from_millis(5);
/// How long a monitor that hung up may take to show as QEMU's exit.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// `s` as one word for `/bin/sh`: in single quotes, each `'` closed,
/// escaped and reopened.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The migration URI that writes the stream to `path`.
pub fn save_uri(path: &Path) -> Result<String> {
    Ok(format!("exec:cat > {}", shell_quote(path_str(path)?)))
}

/// The migration URI that reads the stream from `path`.
pub fn load_uri(path: &Path) -> Result<String> {
    Ok(format!("exec:cat {}", shell_quote(path_str(path)?)))
}

impl Qemu {
    /// Pauses the VM and migrates its device state to `path`, RAM left out
    /// (it is the shared memory file).
    pub(super) async fn save_device_state_to(&self, path: &Path, timeout: Duration) -> Result<()> {
        self.live_vm("save the device state of")?;
        if !self.config.memory_file.as_ref().is_some_and(|f| f.shared) {
            return Err(vc_types::Unsupported::new(
                "saving the device state of a VM whose RAM is not a shared memory file",
                "start the VM with memory_file shared: the state would carry all of its RAM",
            )
            .into());
        }
        let deadline = Instant::now() + timeout;
        let uri = save_uri(path)?;
        self.qmp.execute(qapi::qmp::stop {}).await?;
        self.ignore_shared_memory().await?;
        self.qmp
            .execute(qapi::qmp::migrate {
                uri: Some(uri),
                channels: None,
                detach: None,
                resume: None,
            })
            .await?;
        let saved = self
            .wait_migration("save the device state to", path, deadline, timeout)
            .await;
        if saved.is_err() {
            let _ = self.qmp.execute(qapi::qmp::migrate_cancel {}).await;
        }
        saved?;
        slog::info!(self.logger, "device state saved"; "path" => %path.display());
        Ok(())
    }

    /// Loads the device state at `path` into a QEMU started with
    /// `-incoming defer -S`, then lets the vCPUs run.
    pub(super) async fn load_device_state(
        &self,
        path: &Path,
        deadline: Instant,
        limit: Duration,
    ) -> Result<()> {
        let uri = load_uri(path)?;
        self.ignore_shared_memory().await?;
        self.qmp
            .execute(qapi::qmp::migrate_incoming {
                uri: Some(uri),
                channels: None,
                exit_on_error: None,
            })
            .await?;
        self.wait_migration("load the device state from", path, deadline, limit)
            .await?;
        self.qmp.execute(qapi::qmp::cont {}).await?;
        Ok(())
    }

    /// `x-ignore-shared`: shared RAM blocks (the memory file) are neither
    /// sent nor expected; both ends must set it.
    async fn ignore_shared_memory(&self) -> Result<()> {
        self.qmp
            .execute(qapi::qmp::migrate_set_capabilities {
                capabilities: vec![MigrationCapabilityStatus {
                    capability: MigrationCapability::x_ignore_shared,
                    state: true,
                }],
            })
            .await?;
        Ok(())
    }

    /// Polls `query-migrate` until the migration completes, fails, QEMU
    /// exits (a failed load makes it exit) or `deadline` passes.
    async fn wait_migration(
        &self,
        operation: &'static str,
        path: &Path,
        deadline: Instant,
        limit: Duration,
    ) -> Result<()> {
        let failed = |reason: String| Error::Migration {
            operation,
            path: path.to_owned(),
            reason,
        };
        loop {
            if let Some(exit) = *self.exit_tx.borrow() {
                return Err(self.exited_error(exit));
            }
            let info = match self.qmp.execute(qapi::qmp::query_migrate {}).await {
                Ok(info) => info,
                // The monitor dies with a QEMU that quits on a failed load;
                // its exit is published a moment later.
                Err(e) => {
                    let mut exit = ExitWatch::new(self.exit_tx.subscribe());
                    return match tokio::time::timeout(EXIT_GRACE, exit.wait()).await {
                        Ok(Some(exit)) => Err(self.exited_error(exit)),
                        _ => Err(e),
                    };
                }
            };
            match info.status {
                Some(MigrationStatus::completed) => return Ok(()),
                Some(status @ (MigrationStatus::failed | MigrationStatus::cancelled)) => {
                    let desc = info.error_desc.unwrap_or_default();
                    return Err(failed(format!("migration {status:?}: {desc}")));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("migration timed out after {limit:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_paths_are_one_shell_word() {
        assert_eq!(shell_quote("/run/a b"), "'/run/a b'");
        assert_eq!(shell_quote("/run/it's"), r"'/run/it'\''s'");
        assert_eq!(
            save_uri(Path::new("/run/t/state")).unwrap(),
            "exec:cat > '/run/t/state'"
        );
        assert_eq!(
            load_uri(Path::new("/run/$(x)/state")).unwrap(),
            "exec:cat '/run/$(x)/state'"
        );
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/run/\xff"));
        assert!(save_uri(bad).is_err());
    }

    /// What `sh -c` makes of the quoted word is the path itself.
    #[test]
    fn the_shell_reads_back_the_path() {
        for path in ["/tmp/plain", "/tmp/it's here", "/tmp/$HOME;`x`\"y\""] {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(path)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), path);
        }
    }
}
