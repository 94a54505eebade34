//! A lock file that the VM factory's on-disk things (a template, a pool's
//! directory) are guarded by across processes: `flock(2)`, shared or
//! exclusive, waited for up to a timeout. Removing what it guards unlinks
//! the lock file while holding it; a process that was waiting notices that
//! the file it locked is no longer the one at the path, and locks the new
//! one instead.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::Error;
use crate::persist::LockMode;

const POLL: Duration = Duration::from_millis(10);

/// A held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl DirLock {
    /// Locks `path` (created if missing, with its directory), waiting up
    /// to `timeout`; [`Error::FactoryLockTimeout`] after that.
    pub(crate) async fn acquire(
        path: &Path,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(lock) = Self::try_acquire(path, mode)? {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(Error::FactoryLockTimeout {
                    path: path.to_owned(),
                    timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Locks `path` if nobody holds it in a conflicting mode, `None`
    /// otherwise (no wait).
    pub(crate) fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<Self>, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::host_io("create directory", dir))?;
        }
        // A lock file unlinked while we waited is retried a few times.
        for _ in 0..100 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(Error::host_io("open", path))?;
            let arg = match mode {
                LockMode::Shared => FlockArg::LockSharedNonblock,
                LockMode::Exclusive => FlockArg::LockExclusiveNonblock,
            };
            match Flock::lock(file, arg) {
                Ok(lock) if same_file(&lock, path) => {
                    return Ok(Some(DirLock {
                        path: path.to_owned(),
                        _lock: lock,
                    }));
                }
                Ok(_) => continue,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => return Err(Error::host_io("lock", path)(errno.into())),
            }
        }
        Ok(None)
    }

    /// Unlinks the lock file, keeping the lock: the next locker makes a
    /// new one.
    pub(crate) fn remove_file(&self) -> Result<(), Error> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::host_io("remove", &self.path)(e)),
        }
    }
}

fn same_file(lock: &Flock<File>, path: &Path) -> bool {
    match (lock.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(current)) => held.ino() == current.ino() && held.dev() == current.dev(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_waits_shared_shares_and_a_removed_file_is_remade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lock");
        let a = DirLock::acquire(&path, LockMode::Shared, POLL)
            .await
            .unwrap();
        let b = DirLock::try_acquire(&path, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(
            DirLock::try_acquire(&path, LockMode::Exclusive)
                .unwrap()
                .is_none()
        );
        let err = DirLock::acquire(&path, LockMode::Exclusive, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FactoryLockTimeout { .. }), "{err}");
        drop((a, b));
        let x = DirLock::acquire(&path, LockMode::Exclusive, POLL)
            .await
            .unwrap();
        x.remove_file().unwrap();
        assert!(!path.exists());
        // The holder still excludes nobody on the new file.
        let y = DirLock::try_acquire(&path, LockMode::Exclusive).unwrap();
        assert!(y.is_some() && path.exists());
    }
}
