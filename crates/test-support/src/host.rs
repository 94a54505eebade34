//! Host fixtures: commands, mounts (EROFS layers on loop devices, overlay,
//! tmpfs) undone on drop, what a test left under its dir, and child
//! processes that die with the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, ensure};

/// Runs a host command; its stdout if it succeeds.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Host mounts made by a test, unmounted (newest first) when dropped, so
/// a failing test leaves nothing behind either.
#[derive(Debug, Default)]
pub struct HostMounts {
    mounted: Vec<PathBuf>,
}

impl HostMounts {
    /// `mount -t erofs -o loop,ro image target`: a read-only loop device
    /// with autoclear, as containerd's mount package sets up for the
    /// EROFS snapshotter; the loop device goes away with the mount.
    pub fn mount_erofs(&mut self, image: &Path, target: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        run(
            "mount",
            &[
                "-t",
                "erofs",
                "-o",
                "loop,ro",
                path_str(image),
                path_str(target),
            ],
        )?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// An overlay at `target`; `lowerdirs` topmost first.
    pub fn mount_overlay(
        &mut self,
        lowerdirs: &[&Path],
        upper_work: Option<(&Path, &Path)>,
        target: &Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        let lower: Vec<&str> = lowerdirs.iter().map(|p| path_str(p)).collect();
        let mut options = format!("lowerdir={}", lower.join(":"));
        if let Some((upper, work)) = upper_work {
            std::fs::create_dir_all(upper)?;
            std::fs::create_dir_all(work)?;
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                path_str(upper),
                path_str(work)
            ));
        }
        run(
            "mount",
            &["-t", "overlay", "overlay", "-o", &options, path_str(target)],
        )?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// A tmpfs at `target`.
    pub fn mount_tmpfs(&mut self, target: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        run("mount", &["-t", "tmpfs", "tmpfs", path_str(target)])?;
        self.mounted.push(target.to_owned());
        Ok(())
    }

    /// Unmounts everything, newest first.
    pub fn unmount_all(&mut self) -> anyhow::Result<()> {
        while let Some(target) = self.mounted.pop() {
            run("umount", &[path_str(&target)])?;
        }
        Ok(())
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if run("umount", &[path_str(&target)]).is_err() {
                let _ = run("umount", &["-l", path_str(&target)]);
            }
        }
    }
}

/// Writes the files of a layer into `dir` (`path -> content`; a `None`
/// content is a whiteout, the 0:0 character device overlayfs reads as
/// "deleted") and makes the EROFS image `image` from them with mkfs.erofs.
pub fn make_layer(dir: &Path, image: &Path, files: &[(&str, Option<&str>)]) -> anyhow::Result<()> {
    for (path, content) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a layer file has a parent"))?;
        match content {
            Some(text) => std::fs::write(&file, text)?,
            None => {
                run("mknod", &[path_str(&file), "c", "0", "0"])?;
            }
        }
    }
    std::fs::create_dir_all(image.parent().expect("an image path has a parent"))?;
    run("mkfs.erofs", &[path_str(image), path_str(dir)])?;
    Ok(())
}

/// The loop devices with a backing file, `(device, backing file)`.
pub fn loop_devices() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = entry.path().join("loop/backing_file");
        if let Ok(file) = std::fs::read_to_string(&backing) {
            out.push((
                format!("/dev/{}", entry.file_name().to_string_lossy()),
                PathBuf::from(file.trim_end()),
            ));
        }
    }
    out.sort();
    out
}

/// The mount points at or under `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
        .expect("reading /proc/self/mountinfo")
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// What of a test's is still on the host under `dir`: loop devices
/// backed by a file there, and mounts there (empty when it cleaned up).
pub fn leftovers_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = loop_devices()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(dir))
        .map(|(dev, backing)| format!("loop device {dev} -> {}", backing.display()))
        .collect();
    let table = vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
        .expect("reading /proc/self/mountinfo");
    for mount in table {
        if mount.mount_point.starts_with(dir) {
            out.push(format!(
                "{} mount at {}",
                mount.fs_type,
                mount.mount_point.display()
            ));
        }
    }
    out
}

/// Detaches every mount at or under `dir`, deepest first: a failed test's
/// fixture calls it before removing `dir`, so that the removal cannot
/// recurse into a bind mount's source.
pub fn unmount_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A child process killed and reaped when dropped: a stand-in for a VMM
/// or a helper whose pid a test hands to the code under test.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// `sleep 1000`.
    pub fn sleeper() -> Self {
        ChildGuard(
            Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("spawning sleep"),
        )
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
