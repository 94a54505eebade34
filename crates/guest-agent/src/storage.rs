//! Storages the host asks for (Kata's `Storage`): a 9p or virtio-fs share
//! by mount tag, a block device by path or by the PCI path of a
//! hot-plugged virtio-blk disk (`blk`), an overlay over earlier storages
//! (`overlayfs`), a tmpfs. Mounted before the container is created, in
//! order; unmounted in reverse when it is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use vc_agent_protocol::agent::Storage;

use crate::container::mount_options;
use crate::error::{Error, Result};

/// A mounted storage: its mount point and the directories made for it.
#[derive(Debug)]
pub struct MountedStorage {
    /// The mount point.
    pub target: PathBuf,
    /// The directories created for it, outermost first (removed again by
    /// [`unmount_storage`]).
    created: Vec<PathBuf>,
    /// Guest-local directories made for it (an overlay's upper and work
    /// dirs), removed with their contents after the unmount.
    scratch: Vec<PathBuf>,
}

/// How long a hot-plugged disk may take to show up in the guest.
pub const DISK_WAIT: Duration = Duration::from_secs(10);

/// The node in `dev` (`/dev`) of the virtio-blk disk at PCI path
/// `pci_path` (slots from the root bus in hex, `10/00` behind a root port
/// or `05` on the root bus), waiting up to `timeout` for the kernel to
/// probe it.
pub fn find_pci_disk(sys: &Path, dev: &Path, pci_path: &str, timeout: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(dev) = pci_disk_now(sys, dev, pci_path) {
            return Ok(dev);
        }
        if Instant::now() >= deadline {
            return Err(Error::Io {
                operation: "finding the disk at PCI path",
                path: PathBuf::from(pci_path),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pci_disk_now(sys: &Path, dev_dir: &Path, pci_path: &str) -> Option<PathBuf> {
    let slots: Vec<u8> = pci_path
        .split('/')
        .map(|s| u8::from_str_radix(s, 16).ok())
        .collect::<Option<_>>()?;
    let first = slots.first()?;
    let mut dir = sys.join(format!("bus/pci/devices/0000:00:{first:02x}.0"));
    for slot in &slots[1..] {
        let suffix = format!(":{slot:02x}.0");
        dir = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("0000:") && n.ends_with(&suffix))
            })?;
    }
    let virtio = fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("virtio"))
        })?;
    let disk = fs::read_dir(virtio.join("block")).ok()?.flatten().next()?;
    // Listed in sysfs before the disk is fully added: wait for its node
    // and its size too.
    let size = fs::read_to_string(disk.path().join("size")).ok()?;
    if size.trim().parse::<u64>().ok()? == 0 {
        return None;
    }
    let dev = dev_dir.join(disk.file_name());
    dev.exists().then_some(dev)
}

/// Creates `dir` and its missing ancestors; returns those it created,
/// outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    let mut created = Vec::new();
    for d in missing {
        match fs::create_dir(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(Error::io("creating storage mount point", &d)(e));
            }
        }
    }
    Ok(created)
}

/// Removes the directories `created` (innermost first) while they are empty.
fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// Mounts `s` at its mount point, creating it if needed. On failure
/// nothing is left: no mount, no directory it made.
pub fn mount_storage(container_id: &str, s: &Storage) -> Result<MountedStorage> {
    let invalid = |reason: String| Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason,
    };
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() || s.mount_point.contains("..") {
        return Err(invalid(format!(
            "storage mount point {:?} is not a clean absolute path",
            s.mount_point
        )));
    }
    let fstype = match (s.driver.as_str(), s.fstype.as_str()) {
        ("overlayfs", _) => "overlay".to_owned(),
        (_, t) if !t.is_empty() => t.to_owned(),
        ("9p", _) => "9p".to_owned(),
        ("virtio-fs", _) => "virtiofs".to_owned(),
        ("ephemeral", _) | ("local", _) => "tmpfs".to_owned(),
        (d, _) => return Err(invalid(format!("storage driver {d:?} without fstype"))),
    };
    let mut options = s.options.clone();
    if fstype == "9p" && !options.iter().any(|o| o.starts_with("trans=")) {
        options.push("trans=virtio".into());
    }
    let source = match s.driver.as_str() {
        // A hot-plugged disk named by its PCI path, or a device node.
        "blk" if !s.source.starts_with('/') => {
            find_pci_disk(Path::new("/sys"), Path::new("/dev"), &s.source, DISK_WAIT)?
                .to_string_lossy()
                .into_owned()
        }
        _ if s.source.is_empty() => fstype.clone(),
        _ => s.source.clone(),
    };
    // An overlay's upper and work dirs are guest-local and made here.
    let mut scratch = Vec::new();
    if s.driver == "overlayfs" {
        for o in &options {
            if let Some(dir) = o
                .strip_prefix("upperdir=")
                .or_else(|| o.strip_prefix("workdir="))
            {
                let dir = PathBuf::from(dir);
                if !dir.is_absolute()
                    || dir
                        .components()
                        .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(invalid(format!(
                        "overlay dir {} is not a clean absolute path",
                        dir.display()
                    )));
                }
                if !dir.exists() {
                    fs::create_dir_all(&dir).map_err(Error::io("creating overlay dir", &dir))?;
                    scratch.push(dir);
                }
            }
        }
    }
    let opts = mount_options::parse(&options);
    let created = match create_dirs(&target) {
        Ok(c) => c,
        Err(e) => {
            remove_scratch(&scratch);
            return Err(e);
        }
    };
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let deadline = Instant::now() + DISK_WAIT;
    let mounted = loop {
        let r = mount(
            Some(source.as_str()),
            &target,
            Some(fstype.as_str()),
            MsFlags::from_bits_truncate(opts.flags),
            data,
        );
        // A disk just hot-plugged may still be settling (ENXIO).
        match r {
            Err(nix::errno::Errno::ENXIO) if s.driver == "blk" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r,
        }
    };
    mounted.map_err(|e| {
        remove_dirs(&created);
        remove_scratch(&scratch);
        Error::Io {
            operation: "mounting storage",
            path: target.clone(),
            source: std::io::Error::from(e),
        }
    })?;
    Ok(MountedStorage {
        target,
        created,
        scratch,
    })
}

fn remove_scratch(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// Detaches a storage mount (lazily: a process still holding it does not
/// keep the container from being removed), then removes the directories
/// made for it.
pub fn unmount_storage(m: &MountedStorage) -> Result<()> {
    umount2(&m.target, MntFlags::MNT_DETACH).map_err(|e| Error::Io {
        operation: "unmounting storage",
        path: m.target.clone(),
        source: std::io::Error::from(e),
    })?;
    remove_dirs(&m.created);
    remove_scratch(&m.scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs_storage(mount_point: &Path) -> Storage {
        let mut s = Storage::new();
        s.driver = "ephemeral".into();
        s.mount_point = mount_point.display().to_string();
        s
    }

    /// Needs root (mount).
    #[test]
    fn finds_a_disk_by_pci_path_in_a_sysfs_fixture() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let disk = |dir: PathBuf, name: &str, size: &str| {
            let d = dir.join("block").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("size"), size).unwrap();
        };
        let port = sys.path().join("bus/pci/devices/0000:00:10.0");
        disk(port.join("0000:01:00.0/virtio3"), "vdb", "2048\n");
        disk(
            sys.path().join("bus/pci/devices/0000:00:05.0/virtio1"),
            "vda",
            "8\n",
        );
        disk(
            sys.path().join("bus/pci/devices/0000:00:06.0/virtio2"),
            "vdc",
            "0\n",
        );
        for n in ["vda", "vdb", "vdc"] {
            std::fs::write(dev.path().join(n), "").unwrap();
        }
        let t = Duration::from_millis(50);
        let find = |p| find_pci_disk(sys.path(), dev.path(), p, t);
        assert_eq!(find("10/00").unwrap(), dev.path().join("vdb"));
        assert_eq!(find("05").unwrap(), dev.path().join("vda"));
        assert!(find("06").is_err(), "a disk of size 0 is still being added");
        assert!(find("11/00").is_err());
        assert!(find("zz").is_err());
        std::fs::remove_file(dev.path().join("vdb")).unwrap();
        assert!(find("10/00").is_err(), "no node yet");
    }

    /// Needs root (mount).
    #[test]
    fn overlay_storage_makes_and_removes_its_upper_and_work_dirs() {
        vc_test_support::require_root();
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::write(lower.join("f"), "from lower").unwrap();
        let rw = dir.path().join("rw");
        let mut s = Storage::new();
        s.driver = "overlayfs".into();
        s.source = "overlay".into();
        s.mount_point = dir.path().join("root").display().to_string();
        s.options = vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}/upper", rw.display()),
            format!("workdir={}/work", rw.display()),
        ];
        let m = mount_storage("c1", &s).unwrap();
        let root = dir.path().join("root");
        assert_eq!(
            std::fs::read_to_string(root.join("f")).unwrap(),
            "from lower"
        );
        std::fs::write(root.join("g"), "new").unwrap();
        assert!(rw.join("upper/g").exists());
        unmount_storage(&m).unwrap();
        assert!(!root.exists() && !rw.join("upper").exists() && !rw.join("work").exists());
        assert!(!lower.join("g").exists());
    }

    #[test]
    fn mount_and_unmount_leave_nothing_behind() {
        vc_test_support::require_root();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vc/c1/rootfs");
        let m = mount_storage("c1", &tmpfs_storage(&target)).unwrap();
        std::fs::write(target.join("on-tmpfs"), "x").unwrap();
        unmount_storage(&m).unwrap();
        assert!(!dir.path().join("vc").exists(), "mount point left behind");

        // A failed mount removes the directories it made.
        let mut bad = tmpfs_storage(&target);
        bad.driver = "9p".into();
        bad.source = "no-such-tag".into();
        bad.fstype = "no-such-fs".into();
        let err = mount_storage("c1", &bad).unwrap_err();
        assert!(err.to_string().contains("mounting storage"), "{err}");
        assert!(!dir.path().join("vc").exists(), "mount point left behind");

        // An existing mount point is kept.
        std::fs::create_dir_all(&target).unwrap();
        let m = mount_storage("c1", &tmpfs_storage(&target)).unwrap();
        unmount_storage(&m).unwrap();
        assert!(target.is_dir());
    }
}
