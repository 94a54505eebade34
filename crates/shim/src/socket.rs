//! The shim's ttrpc socket: one per sandbox (so per pod), at a path
//! derived from containerd's address, the namespace and the sandbox id,
//! so that `start` for a pod's second container finds the pod's shim.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the sockets live (a directory only root can enter).
pub const SOCKET_DIR: &str = "/run/vc/shim";

/// The socket of the shim serving sandbox `sandbox` of containerd
/// `address`, namespace `namespace`: a fixed-length name (socket paths
/// are limited to 107 bytes) from a hash of the three.
pub fn socket_path(dir: &Path, address: &str, namespace: &str, sandbox: &str) -> PathBuf {
    let key = format!("{address}\0{namespace}\0{sandbox}");
    let hash = twox_hash::XxHash3_128::oneshot(key.as_bytes());
    dir.join(format!("{hash:032x}.sock"))
}

/// The address containerd is given for a socket path.
pub fn address_of(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// What [`bind`] found.
#[derive(Debug)]
pub enum Bound {
    /// No shim served there: a new listening socket.
    New(UnixListener),
    /// A live shim serves there already.
    Existing,
}

/// Listens on `path`, unless a live shim does already. A socket file left
/// by a dead shim is replaced.
pub fn bind(path: &Path) -> Result<Bound> {
    // An exiting shim removes the directory when it is empty: make it
    // again if that happened between our mkdir and bind.
    let mut attempts = 0;
    let bound = loop {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
            restrict(dir)?;
        }
        attempts += 1;
        match UnixListener::bind(path) {
            Err(e) if e.kind() == ErrorKind::NotFound && attempts < 3 => continue,
            other => break other,
        }
    };
    match bound {
        Ok(l) => Ok(Bound::New(l)),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            if is_served(path) {
                return Ok(Bound::Existing);
            }
            remove(path)?;
            UnixListener::bind(path)
                .map(Bound::New)
                .map_err(Error::io("listen on", path))
        }
        Err(e) => Err(Error::io("listen on", path)(e)),
    }
}

/// Only root may reach the shims' sockets.
fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::io("set the mode of", dir))
}

/// Whether a shim answers on `path`.
pub fn is_served(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Removes a socket file (gone already is fine).
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a socket file for good (its shim is gone), and its directory
/// when it was the last socket there ([`bind`] makes it again if a shim
/// starting meanwhile loses it).
pub fn retire(path: &Path) -> Result<()> {
    remove(path)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_fixed_per_sandbox_and_short() {
        let dir = Path::new(SOCKET_DIR);
        let a = socket_path(dir, "/run/containerd/containerd.sock", "k8s.io", "pod1");
        assert_eq!(
            a,
            socket_path(dir, "/run/containerd/containerd.sock", "k8s.io", "pod1")
        );
        assert_ne!(
            a,
            socket_path(dir, "/run/containerd/containerd.sock", "default", "pod1")
        );
        assert_ne!(a, socket_path(dir, "/other.sock", "k8s.io", "pod1"));
        let long = "x".repeat(76);
        let path = socket_path(dir, &long.repeat(3), &long, &long);
        assert!(path.as_os_str().len() < 100, "{}", path.display());
        assert!(address_of(&a).starts_with("unix:///run/vc/shim/"));
    }

    #[test]
    fn a_live_socket_is_found_and_a_dead_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("a.sock");
        let Bound::New(live) = bind(&path).unwrap() else {
            panic!("a fresh path must bind");
        };
        assert!(matches!(bind(&path).unwrap(), Bound::Existing));
        drop(live);
        // The file stays after its listener is gone: a dead shim's.
        assert!(path.exists());
        assert!(matches!(bind(&path).unwrap(), Bound::New(_)));
        retire(&path).unwrap();
        retire(&path).unwrap();
        assert!(!path.exists());
        assert!(
            !path.parent().unwrap().exists(),
            "the last socket's directory"
        );
    }
}
