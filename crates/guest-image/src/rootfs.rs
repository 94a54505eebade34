//! Container root filesystems for demos and tests, from what the
//! distribution ships.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result, io_err};

/// Where Debian's `busybox-static` installs busybox.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Fills `dir` with a minimal root filesystem: a static `busybox` as
/// `/bin/busybox` with a symlink for each applet it lists, `/etc/passwd`
/// and `/etc/group` naming root, and empty `/proc`, `/sys`, `/dev`,
/// `/tmp` and `/root`. `busybox` must be statically linked (the
/// `busybox-static` package) to run in any container.
pub fn busybox_rootfs(dir: &Path, busybox: &Path) -> Result<()> {
    if !busybox.is_file() {
        return Err(Error::Io {
            op: "find busybox (install busybox-static)",
            path: busybox.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let bin = dir.join("bin");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        let d = dir.join(d);
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    let target = bin.join("busybox");
    std::fs::copy(busybox, &target).map_err(io_err("copy", &target))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err("run", busybox))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = bin.join(applet);
        if applet.is_empty() || applet.contains('/') || link.exists() {
            continue;
        }
        symlink("busybox", &link).map_err(io_err("link", &link))?;
    }
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(io_err("write", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_runnable_tree() {
        let dir = tempfile::tempdir().unwrap();
        busybox_rootfs(dir.path(), Path::new(DEFAULT_BUSYBOX))
            .expect("this test needs /bin/busybox (apt-get install busybox-static)");
        let sh = dir.path().join("bin/sh");
        assert_eq!(std::fs::read_link(&sh).unwrap(), Path::new("busybox"));
        let out = Command::new(&sh).args(["-c", "echo ok"]).output().unwrap();
        assert_eq!(out.stdout, b"ok\n");
        assert!(dir.path().join("proc").is_dir());
        assert!(
            std::fs::read_to_string(dir.path().join("etc/passwd"))
                .unwrap()
                .starts_with("root:")
        );
    }

    #[test]
    fn a_missing_busybox_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            busybox_rootfs(dir.path(), Path::new("/nonexistent/busybox")),
            Err(Error::Io { .. })
        ));
    }
}
