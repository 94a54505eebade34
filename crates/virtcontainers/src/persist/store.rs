//! On-disk sandbox state: one directory per sandbox, a lock file, and a
//! versioned JSON state written atomically.
//!
//! ```text
//! <root>/<sandbox id>/lock        flock(2): shared to read, exclusive to change
//! <root>/<sandbox id>/state.json  {"version": 1, ...}
//! ```
//!
//! The lock lives inside the directory it protects. Removing a sandbox
//! unlinks the lock file while holding it; a process that was waiting for
//! the lock notices (the file it locked is no longer the one at the path)
//! and reports the sandbox gone instead of acting on a deleted one.
//!
//! A sandbox directory never exists without its lock file, not even for
//! the instant a `kill -9` could freeze: it is made under a claim name no
//! reader lists (`.claim-<pid>-<n>`), its lock file made and locked there,
//! then renamed in place (`renameat2(RENAME_NOREPLACE)`). A claim its
//! maker died with is removed by [`Store::remove_stale_claims`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{AT_FDCWD, Flock, FlockArg, RenameFlags, renameat2};
use serde::Serialize;
use serde::de::DeserializeOwned;

use vc_types::SandboxId;

use super::file::{read_versioned, write_versioned};
use crate::error::Error;

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const LOCK_POLL: Duration = Duration::from_millis(10);
/// The name prefix of a directory being claimed (not a valid sandbox id).
const CLAIM_PREFIX: &str = ".claim-";
/// Tells apart the claims of one process.
static CLAIMS: AtomicU64 = AtomicU64::new(0);

/// Shared (read) or exclusive (change) access to one sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Several readers at once.
    Shared,
    /// One writer, no readers.
    Exclusive,
}

/// The directory holding every sandbox's state.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One sandbox's state directory, locked for as long as this lives.
#[derive(Debug)]
pub struct SandboxStore {
    id: SandboxId,
    dir: PathBuf,
    mode: LockMode,
    _lock: Flock<File>,
}

impl Store {
    /// A store rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory of sandbox `id`.
    pub fn sandbox_dir(&self, id: &SandboxId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Claims a new sandbox directory and locks it exclusively. Fails with
    /// [`Error::AlreadyExists`] when the directory exists (the caller
    /// decides whether its owner is alive).
    pub fn create(&self, id: &SandboxId) -> Result<SandboxStore, Error> {
        std::fs::create_dir_all(&self.root).map_err(|source| Error::StateIo {
            path: self.root.clone(),
            source,
        })?;
        let dir = self.sandbox_dir(id);
        if dir.exists() {
            return Err(Error::AlreadyExists { id: id.clone() });
        }
        let claim = self.root.join(format!(
            "{CLAIM_PREFIX}{}-{}",
            std::process::id(),
            CLAIMS.fetch_add(1, Ordering::Relaxed)
        ));
        // The claim's name is this process's: whatever is there is ours
        // to remove when claiming fails (best effort: the error that
        // matters is the claim's).
        let lock = match lock_new_dir(&claim) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&claim);
                return Err(e);
            }
        };
        if let Err(errno) = renameat2(
            AT_FDCWD,
            &claim,
            AT_FDCWD,
            &dir,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            let _ = std::fs::remove_dir_all(&claim);
            return Err(match errno {
                nix::errno::Errno::EEXIST => Error::AlreadyExists { id: id.clone() },
                errno => Error::StateIo {
                    path: dir,
                    source: errno.into(),
                },
            });
        }
        Ok(SandboxStore {
            id: id.clone(),
            dir,
            mode: LockMode::Exclusive,
            _lock: lock,
        })
    }

    /// Opens an existing sandbox's state and locks it, waiting at most
    /// `timeout` for the lock.
    pub async fn open(
        &self,
        id: &SandboxId,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<SandboxStore, Error> {
        let dir = self.sandbox_dir(id);
        let lock_path = dir.join(LOCK_FILE);
        let deadline = Instant::now() + timeout;
        loop {
            let file = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound { id: id.clone() });
                }
                Err(source) => {
                    return Err(Error::StateIo {
                        path: lock_path,
                        source,
                    });
                }
            };
            let arg = match mode {
                LockMode::Shared => FlockArg::LockSharedNonblock,
                LockMode::Exclusive => FlockArg::LockExclusiveNonblock,
            };
            match Flock::lock(file, arg) {
                Ok(lock) => {
                    // The sandbox may have been removed while we waited: then
                    // the file we hold is no longer the one at the path.
                    if !same_file(&lock, &lock_path) {
                        return Err(Error::NotFound { id: id.clone() });
                    }
                    return Ok(SandboxStore {
                        id: id.clone(),
                        dir,
                        mode,
                        _lock: lock,
                    });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(Error::LockTimeout {
                            id: id.clone(),
                            path: lock_path,
                            timeout,
                        });
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                Err((_, errno)) => {
                    return Err(Error::StateIo {
                        path: lock_path,
                        source: errno.into(),
                    });
                }
            }
        }
    }

    /// The root's entries; `None` before the root exists.
    fn entries(&self) -> Result<Option<std::fs::ReadDir>, Error> {
        match std::fs::read_dir(&self.root) {
            Ok(entries) => Ok(Some(entries)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::StateIo {
                path: self.root.clone(),
                source,
            }),
        }
    }

    /// Removes the claims (directories being made, see the module doc)
    /// of processes that died before finishing them: those whose lock is
    /// free, or that have no lock file and whose process is gone. Returns
    /// how many it removed.
    pub fn remove_stale_claims(&self) -> Result<usize, Error> {
        let Some(entries) = self.entries()? else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(CLAIM_PREFIX) else {
                continue;
            };
            let path = entry.path();
            let stale = match OpenOptions::new().write(true).open(path.join(LOCK_FILE)) {
                // Held while its maker lives (and until the rename).
                Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
                Err(_) => {
                    let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
                    pid.is_none_or(|pid| {
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
                    })
                }
            };
            if stale {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(Error::StateIo { path, source }),
                }
            }
        }
        Ok(removed)
    }

    /// Ids of the sandboxes with a state directory.
    /// (Directories whose name is not a valid sandbox id are not ours and
    /// are skipped.)
    pub fn list(&self) -> Result<Vec<SandboxId>, Error> {
        let Some(entries) = self.entries()? else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<SandboxId> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| SandboxId::new(name).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn same_file(lock: &Flock<File>, path: &Path) -> bool {
    match (lock.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(current)) => held.ino() == current.ino() && held.dev() == current.dev(),
        _ => false,
    }
}

impl SandboxStore {
    /// The sandbox id.
    pub fn id(&self) -> &SandboxId {
        &self.id
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How it is locked.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Whether a state has been written.
    pub fn has_state(&self) -> bool {
        self.dir.join(STATE_FILE).exists()
    }

    /// Reads the state, checking its version.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.read_file(STATE_FILE)?.ok_or_else(|| Error::NotFound {
            id: self.id.clone(),
        })
    }

    /// Writes the state atomically (see [`write_versioned`]).
    pub fn write<T: Serialize>(&self, state: &T) -> Result<(), Error> {
        self.write_file(STATE_FILE, state)
    }

    /// Reads another record file of the sandbox (a resource owner's),
    /// `None` when it was never written.
    pub fn read_file<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        read_versioned(&self.dir.join(name))
    }

    /// Writes another record file of the sandbox atomically.
    pub fn write_file<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        debug_assert_eq!(
            self.mode,
            LockMode::Exclusive,
            "writing under a shared lock"
        );
        write_versioned(&self.dir.join(name), value)
    }

    /// Removes the state directory (state, lock and all). The lock is held
    /// until the directory is gone.
    pub fn remove(self) -> Result<(), Error> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::StateIo {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}

/// Makes directory `dir` with a lock file inside, locked exclusively.
fn lock_new_dir(dir: &Path) -> Result<Flock<File>, Error> {
    std::fs::create_dir(dir).map_err(|source| Error::StateIo {
        path: dir.to_owned(),
        source,
    })?;
    let lock_path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| Error::StateIo {
            path: lock_path.clone(),
            source,
        })?;
    // Nobody else knows the claim's name yet: this cannot block.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| Error::StateIo {
        path: lock_path,
        source: errno.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::STATE_VERSION;

    fn sb1() -> SandboxId {
        "sb1".parse().unwrap()
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        n: u32,
        name: String,
    }

    #[test]
    fn a_claim_leaves_no_claim_directory_behind() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let first = store.create(&sb1()).unwrap();
        assert!(matches!(
            store.create(&sb1()),
            Err(Error::AlreadyExists { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["sb1"]);
        assert!(first.dir().join(LOCK_FILE).exists());
    }

    #[test]
    fn stale_claims_are_removed_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        // A maker that died after locking (the lock is free now), one that
        // died before making the lock file (no such pid), one that lives.
        let unlocked = root.path().join(".claim-1-0");
        drop(lock_new_dir(&unlocked).unwrap());
        let bare = root.path().join(format!(".claim-{}-0", i32::MAX));
        std::fs::create_dir(&bare).unwrap();
        let live = root
            .path()
            .join(format!(".claim-{}-999", std::process::id()));
        let _held = lock_new_dir(&live).unwrap();
        assert_eq!(store.remove_stale_claims().unwrap(), 2);
        assert!(!unlocked.exists() && !bare.exists());
        assert!(live.exists());
        assert!(store.list().unwrap().is_empty(), "claims are not sandboxes");
    }

    #[tokio::test]
    async fn write_then_read_round_trips_with_a_version() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let s = store.create(&sb1()).unwrap();
        assert!(!s.has_state());
        s.write(&S {
            n: 1,
            name: "x".into(),
        })
        .unwrap();
        let text = std::fs::read_to_string(s.dir().join("state.json")).unwrap();
        assert!(
            text.contains(&format!("\"version\": {STATE_VERSION}")),
            "{text}"
        );
        assert_eq!(
            s.read::<S>().unwrap(),
            S {
                n: 1,
                name: "x".into()
            }
        );
        assert!(!s.dir().join("state.json.tmp").exists());
        drop(s);
        let again = store
            .open(&sb1(), LockMode::Shared, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(again.read::<S>().unwrap().n, 1);
        assert_eq!(store.list().unwrap(), ["sb1"]);
    }

    #[tokio::test]
    async fn creating_an_existing_sandbox_is_already_exists() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let _s = store.create(&sb1()).unwrap();
        assert!(matches!(
            store.create(&sb1()),
            Err(Error::AlreadyExists { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_versions_and_garbage_are_typed_errors() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let s = store.create(&sb1()).unwrap();
        std::fs::write(
            s.dir().join("state.json"),
            r#"{"version": 99, "state": {}}"#,
        )
        .unwrap();
        assert!(matches!(
            s.read::<S>(),
            Err(Error::UnsupportedStateVersion {
                found: 99,
                supported: STATE_VERSION,
                ..
            })
        ));
        std::fs::write(s.dir().join("state.json"), "{not json").unwrap();
        assert!(matches!(s.read::<S>(), Err(Error::StateCorrupt { .. })));
    }

    #[tokio::test]
    async fn exclusive_excludes_and_times_out() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let writer = store.create(&sb1()).unwrap();
        let waited = store
            .open(&sb1(), LockMode::Shared, Duration::from_millis(50))
            .await;
        assert!(
            matches!(waited, Err(Error::LockTimeout { .. })),
            "{waited:?}"
        );
        drop(writer);
        let r1 = store
            .open(&sb1(), LockMode::Shared, Duration::from_secs(1))
            .await
            .unwrap();
        let r2 = store
            .open(&sb1(), LockMode::Shared, Duration::from_secs(1))
            .await
            .unwrap();
        let w = store
            .open(&sb1(), LockMode::Exclusive, Duration::from_millis(50))
            .await;
        assert!(matches!(w, Err(Error::LockTimeout { .. })));
        drop((r1, r2));
        store
            .open(&sb1(), LockMode::Exclusive, Duration::from_secs(1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiter_sees_a_removed_sandbox_as_not_found() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let owner = store.create(&sb1()).unwrap();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .open(&sb1(), LockMode::Exclusive, Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        owner.remove().unwrap();
        let got = waiter.await.unwrap();
        assert!(matches!(got, Err(Error::NotFound { .. })), "{got:?}");
        assert!(!root.path().join("sb1").exists());
        assert!(store.list().unwrap().is_empty());
    }
}
