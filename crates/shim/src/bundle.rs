//! What the shim leaves in a task's bundle directory for a later `delete`
//! (after the shim died, `delete` runs with nothing but the bundle): the
//! sandbox the task ran in, where the SDK keeps that sandbox's state, and
//! the pid containerd was given. containerd removes the bundle directory
//! after `delete`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use virtcontainers::{Paths, SandboxId};

use crate::error::{Error, Result};

/// The file's name in the bundle.
pub const RECORD_FILE: &str = "vc-shim.json";

/// The task's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// The sandbox the task's container is in.
    pub sandbox: SandboxId,
    /// The SDK's directories for it.
    pub paths: Paths,
    /// The pid containerd was given for the task.
    pub pid: u32,
    /// The shim's socket.
    pub socket: PathBuf,
}

impl BundleRecord {
    /// Writes the record into `bundle` (atomically: a crash leaves the old
    /// one or none).
    pub fn write(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(RECORD_FILE);
        let tmp = bundle.join(format!(".{RECORD_FILE}"));
        let text = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            what: format!("bundle record {}", path.display()),
            source,
        })?;
        std::fs::write(&tmp, text).map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io("rename into place", &path))
    }

    /// The record in `bundle`, or `None` when the task never got far
    /// enough to write one.
    pub fn read(bundle: &Path) -> Result<Option<BundleRecord>> {
        let path = bundle.join(RECORD_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| Error::Json {
                what: format!("bundle record {}", path.display()),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), None);
        let record = BundleRecord {
            sandbox: "pod1".parse().unwrap(),
            paths: Paths::under("/run/vc"),
            pid: 42,
            socket: "/run/vc/shim/x.sock".into(),
        };
        record.write(dir.path()).unwrap();
        assert_eq!(BundleRecord::read(dir.path()).unwrap(), Some(record));
        std::fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        assert!(matches!(
            BundleRecord::read(dir.path()),
            Err(Error::Json { .. })
        ));
    }
}
