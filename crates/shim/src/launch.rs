//! `start`: finds the shim that serves the task's sandbox, or starts one.
//!
//! containerd runs `start` in the task's bundle and reads everything it
//! prints (stdout and stderr together) as the shim's address, so `start`
//! prints that alone. A pod's containers share their pod's shim: their
//! sandbox id (from the CRI annotations) names the socket, and a second
//! `start` finds the first one's shim listening there. Otherwise `start`
//! listens on the socket itself and hands it to a daemon, this binary
//! again without an action, in the bundle, in a process group of its own
//! and with no stdio, so that containerd's read of `start`'s output ends
//! when `start` exits.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use std::os::unix::process::CommandExt;

use crate::args::Args;
use crate::error::{Error, Result};
use crate::pod::{ContainerKind, bundle_annotations};
use crate::socket::{self, Bound};

/// The file containerd reads a task's shim address back from when it
/// restarts.
pub const ADDRESS_FILE: &str = "address";

/// Returns the address of the shim serving task `args.id` of `bundle`,
/// starting one when its sandbox has none.
pub fn start(args: &Args, bundle: &Path, socket_dir: &Path) -> Result<String> {
    let kind = ContainerKind::from_annotations(&bundle_annotations(bundle)?)?;
    let sandbox = kind.sandbox_id(&args.id)?;
    let path = socket::socket_path(socket_dir, &args.address, &args.namespace, sandbox.as_str());
    let address = socket::address_of(&path);
    match socket::bind(&path)? {
        Bound::Existing => {}
        Bound::New(listener) => {
            if let Err(e) = spawn_daemon(args, bundle, &listener) {
                drop(listener);
                let _ = socket::remove(&path);
                return Err(e);
            }
        }
    }
    write_address(bundle, &address)?;
    Ok(address)
}

/// Runs the daemon with the listening socket inherited.
fn spawn_daemon(
    args: &Args,
    bundle: &Path,
    listener: &std::os::unix::net::UnixListener,
) -> Result<()> {
    let exe = std::env::current_exe().map_err(Error::io("find", "/proc/self/exe"))?;
    // Inherited across exec: the daemon serves on it.
    fcntl(listener, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| Error::Io {
        operation: "let the daemon inherit",
        path: "the shim socket".into(),
        source: e.into(),
    })?;
    Command::new(&exe)
        .args(args.daemon_args(listener.as_raw_fd()))
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of containerd's process group: its signals are not ours.
        .process_group(0)
        .spawn()
        .map_err(Error::io("start the shim daemon", &exe))?;
    Ok(())
}

fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let path = bundle.join(ADDRESS_FILE);
    let tmp = bundle.join(format!(".{ADDRESS_FILE}"));
    std::fs::write(&tmp, address).map_err(Error::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("rename into place", &path))
}
