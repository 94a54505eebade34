//! Network namespaces as files: the one CNI hands the runtime (checked,
//! never changed but for what the SDK adds to it), or one the SDK makes
//! (`ip netns add` style: a fresh namespace bind-mounted on a file) and
//! deletes with the sandbox.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::error::Error;

/// `NS_GET_NSTYPE` (`linux/nsfs.h`): which kind of namespace an nsfs
/// file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Why `path` is not a network namespace, or `None` when it is one.
pub(crate) fn not_a_netns(path: &Path) -> Option<String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("does not exist".into());
        }
        Err(e) => return Some(format!("cannot be opened: {e}")),
    };
    // SAFETY: NS_GET_NSTYPE takes no argument and only answers.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    match kind {
        k if k == libc::CLONE_NEWNET => None,
        k if k >= 0 => Some("is a namespace, but not a network namespace".into()),
        _ => Some("is not a namespace file (nsfs)".into()),
    }
}

/// Makes a new network namespace bound on `path` (a new file: an
/// existing one is an error, never reused). Its `lo` is brought up later,
/// with netlink. On failure nothing is left at `path`.
pub(crate) fn create(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::host_io("create directory", dir))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::host_io("create the netns file", path))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            // Only this thread moves to the new namespace; it ends here.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let own = format!("/proc/self/task/{tid}/ns/net");
            mount(
                Some(own.as_str()),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .join()
        .unwrap_or(Err(nix::errno::Errno::EINVAL))
    });
    if let Err(errno) = made {
        let _ = std::fs::remove_file(path);
        return Err(Error::HostMount {
            operation: "bind a new network namespace on",
            target: path.to_owned(),
            source: errno.into(),
        });
    }
    Ok(())
}

/// Deletes a namespace [`create`] made: unbinds it (the namespace goes
/// once nothing else holds it) and removes the file. One already gone is
/// fine.
pub(crate) fn delete(path: &Path) -> Result<(), Error> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(errno) => {
            return Err(Error::HostMount {
                operation: "unbind the network namespace",
                target: path.to_owned(),
                source: errno.into(),
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::host_io("remove the netns file", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_checked_and_deleted() {
        vc_test_support::require_root();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        assert_eq!(not_a_netns(&path).as_deref(), Some("does not exist"));
        create(&path).unwrap();
        assert_eq!(not_a_netns(&path), None);
        assert!(create(&path).is_err(), "an existing file is never reused");
        assert_eq!(not_a_netns(&path), None, "the failed create left it alone");
        let mine = std::fs::metadata("/proc/self/ns/net").unwrap();
        let made = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(mine.ino(), made.ino(), "a new namespace, not ours");
        delete(&path).unwrap();
        assert!(!path.exists());
        delete(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(not_a_netns(&path).unwrap().contains("not a namespace"));
        assert!(
            not_a_netns(Path::new("/proc/self/ns/uts"))
                .unwrap()
                .contains("not a network namespace")
        );
    }
}
