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
    /// dirs, a `local` volume), removed with their contents after the unmount.
    scratch: Vec<PathBuf>,
    /// Whether there is a mount to undo (`local` storages have none).
    mounted: bool,
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
        match fs::remove_dir(d) {
            Ok(()) => {}
            // Gone already (a `local` volume removed with its contents).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => break,
        }
    }
}

/// Kata's `driver_options` key naming a directory the agent creates before
/// it mounts an overlay (its upper and work dirs).
pub const OVERLAY_CREATE_DIR: &str = "io.katacontainers.volume.overlayfs.create_directory";
/// Kata's option asking for a writable overlay with guest-local upper and
/// work dirs below [`KATA_CONTAINER_BASE`]`/<container id>`.
pub const OVERLAY_RW: &str = "io.katacontainers.fs-opt.overlay-rw";
/// Where Kata's agent keeps per-container directories.
pub const KATA_CONTAINER_BASE: &str = "/run/kata-containers";
/// The set-group-id bit an `fsgid` directory gets (new files inherit the group).
const MODE_SETGID: u32 = 0o2000;

fn invalid(container_id: &str, reason: String) -> Error {
    Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason,
    }
}

/// Takes `fsgid=<gid>` out of `options` (Kata's fsGroup of a volume, no
/// mount option): the rest, and the gid.
fn take_fsgid(container_id: &str, options: &[String]) -> Result<(Vec<String>, Option<u32>)> {
    let mut gid = None;
    let mut rest = Vec::new();
    for o in options {
        match o.strip_prefix("fsgid=") {
            Some(v) => {
                gid = Some(v.parse().map_err(|_| {
                    invalid(
                        container_id,
                        format!("storage option fsgid={v:?} is not a gid"),
                    )
                })?)
            }
            None => rest.push(o.clone()),
        }
    }
    Ok((rest, gid))
}

/// Gives `dir` the group `gid` and the set-group-id bit, then `mode` when
/// given (Kata's fsGroup handling).
fn apply_fsgid(dir: &Path, gid: Option<u32>, mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(Error::io("chown", dir))?;
    }
    let current = fs::metadata(dir)
        .map_err(Error::io("stat", dir))?
        .permissions()
        .mode();
    let mut mode = mode.unwrap_or(current & 0o7777);
    if gid.is_some() {
        mode |= MODE_SETGID;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(Error::io("chmod", dir))
}

/// Kata's `local` driver: a guest-local directory at the mount point, no
/// mount; `mode=<octal>` and `fsgid=<gid>` options set its permissions.
fn local_storage(container_id: &str, s: &Storage, target: PathBuf) -> Result<MountedStorage> {
    let (rest, gid) = take_fsgid(container_id, &s.options)?;
    let mut mode = None;
    for o in &rest {
        if let Some(m) = o.strip_prefix("mode=") {
            mode = Some(u32::from_str_radix(m, 8).map_err(|_| {
                invalid(
                    container_id,
                    format!("local storage mode {m:?} is not octal"),
                )
            })?);
        }
    }
    let created = create_dirs(&target)?;
    if let Err(e) = apply_fsgid(&target, gid, mode) {
        remove_dirs(&created);
        return Err(e);
    }
    // A directory made here is the volume itself: it goes, with what the
    // containers wrote, when the storage does.
    let scratch = if created.last() == Some(&target) {
        vec![target.clone()]
    } else {
        Vec::new()
    };
    Ok(MountedStorage {
        target,
        created,
        scratch,
        mounted: false,
    })
}

/// The directories an overlay storage wants made first: Kata's
/// `driver_options` (`OVERLAY_CREATE_DIR=<dir>`), the upper and work dirs
/// of an `OVERLAY_RW` overlay (added to `options`), and the upper and work
/// dirs its options name.
fn overlay_dirs(
    container_id: &str,
    s: &Storage,
    options: &mut Vec<String>,
) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in &s.driver_options {
        if let Some(dir) = d
            .strip_prefix(OVERLAY_CREATE_DIR)
            .and_then(|r| r.strip_prefix('='))
        {
            dirs.push(dir.into());
        }
    }
    if s.options.iter().any(|o| o == OVERLAY_RW) {
        let base = Path::new(KATA_CONTAINER_BASE).join(container_id);
        options.push(format!("upperdir={}", base.join("upper").display()));
        options.push(format!("workdir={}", base.join("work").display()));
    }
    for o in options.iter() {
        if let Some(dir) = o
            .strip_prefix("upperdir=")
            .or_else(|| o.strip_prefix("workdir="))
        {
            dirs.push(dir.into());
        }
    }
    for dir in &dirs {
        if !dir.is_absolute()
            || dir
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(invalid(
                container_id,
                format!("overlay dir {} is not a clean absolute path", dir.display()),
            ));
        }
    }
    Ok(dirs)
}

/// Mounts `s` at its mount point, creating it if needed, as Kata's agent
/// reads each driver: `9p` and `virtio-fs` shares by tag, `blk` by device
/// path or PCI path, `overlayfs` (its upper and work dirs made first, see
/// [`OVERLAY_CREATE_DIR`] and [`OVERLAY_RW`]), `ephemeral` (a tmpfs;
/// `fsgid=` is taken out of the mount options and applied to it), `local`
/// (a directory, no mount; `mode=` and `fsgid=`). Options Kata addresses
/// to the agent (`io.katacontainers.*`) never reach `mount(2)`. On failure
/// nothing is left: no mount, no directory it made.
pub fn mount_storage(container_id: &str, s: &Storage) -> Result<MountedStorage> {
    let target = PathBuf::from(&s.mount_point);
    if !target.is_absolute() || s.mount_point.contains("..") {
        return Err(invalid(
            container_id,
            format!(
                "storage mount point {:?} is not a clean absolute path",
                s.mount_point
            ),
        ));
    }
    if s.driver == "local" {
        return local_storage(container_id, s, target);
    }
    let fstype = match (s.driver.as_str(), s.fstype.as_str()) {
        ("overlayfs", _) => "overlay".to_owned(),
        (_, t) if !t.is_empty() => t.to_owned(),
        ("9p", _) => "9p".to_owned(),
        ("virtio-fs", _) => "virtiofs".to_owned(),
        ("ephemeral", _) => "tmpfs".to_owned(),
        (d, _) => {
            return Err(invalid(
                container_id,
                format!("storage driver {d:?} without fstype"),
            ));
        }
    };
    let (mut options, fsgid) = if s.driver == "ephemeral" {
        take_fsgid(container_id, &s.options)?
    } else {
        (s.options.clone(), None)
    };
    if fstype == "9p" && !options.iter().any(|o| o.starts_with("trans=")) {
        options.push("trans=virtio".into());
    }
    // An overlay's upper and work dirs are guest-local and made here.
    let mut scratch = Vec::new();
    if s.driver == "overlayfs" {
        for dir in overlay_dirs(container_id, s, &mut options)? {
            if !dir.exists() {
                if let Err(e) = fs::create_dir_all(&dir) {
                    remove_scratch(&scratch);
                    return Err(Error::io("creating overlay dir", &dir)(e));
                }
                scratch.push(dir);
            }
        }
    }
    options.retain(|o| !o.starts_with("io.katacontainers."));
    let source = match s.driver.as_str() {
        // A hot-plugged disk named by its PCI path, or a device node.
        "blk" if !s.source.starts_with('/') => {
            match find_pci_disk(Path::new("/sys"), Path::new("/dev"), &s.source, DISK_WAIT) {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(e) => {
                    remove_scratch(&scratch);
                    return Err(e);
                }
            }
        }
        _ if s.source.is_empty() => fstype.clone(),
        _ => s.source.clone(),
    };
    let created = match create_dirs(&target) {
        Ok(c) => c,
        Err(e) => {
            remove_scratch(&scratch);
            return Err(e);
        }
    };
    let m = MountedStorage {
        target,
        created,
        scratch,
        mounted: true,
    };
    let res =
        mount_now(&s.driver, &source, &m.target, &fstype, &options).and_then(|()| match fsgid {
            Some(gid) => apply_fsgid(&m.target, Some(gid), None).inspect_err(|_| {
                let _ = umount2(&m.target, MntFlags::MNT_DETACH);
            }),
            None => Ok(()),
        });
    if let Err(e) = res {
        remove_dirs(&m.created);
        remove_scratch(&m.scratch);
        return Err(e);
    }
    Ok(m)
}

/// The `mount(2)` of a storage; a disk just hot-plugged may still be
/// settling (ENXIO), and a 9p channel is busy (EBUSY) until the previous
/// mount of its tag is really gone (storages are detached lazily: the
/// last process of the container that held it may still be exiting):
/// both are retried until [`DISK_WAIT`].
fn mount_now(
    driver: &str,
    source: &str,
    target: &Path,
    fstype: &str,
    options: &[String],
) -> Result<()> {
    let opts = mount_options::parse(options);
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        let r = mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::from_bits_truncate(opts.flags),
            data,
        );
        match r {
            Err(nix::errno::Errno::ENXIO) if driver == "blk" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(nix::errno::Errno::EBUSY) if fstype == "9p" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => {
                return r.map_err(|e| Error::Io {
                    operation: "mounting storage",
                    path: target.to_owned(),
                    source: std::io::Error::from(e),
                });
            }
        }
    }
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
    if m.mounted {
        umount2(&m.target, MntFlags::MNT_DETACH).map_err(|e| Error::Io {
            operation: "unmounting storage",
            path: m.target.clone(),
            source: std::io::Error::from(e),
        })?;
    }
    remove_scratch(&m.scratch);
    remove_dirs(&m.created);
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

    /// Needs root (chown, mount).
    #[test]
    fn local_storage_is_a_directory_with_mode_and_fsgid() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol/local");
        let mut s = Storage::new();
        s.driver = "local".into();
        s.mount_point = target.display().to_string();
        s.options = vec!["mode=0770".into(), "fsgid=2000".into()];
        let m = mount_storage("c1", &s).unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o2770);
        assert_eq!(meta.gid(), 2000);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&format!(" {} ", target.display())),
            "local mounts nothing"
        );
        std::fs::write(target.join("data"), "x").unwrap();
        unmount_storage(&m).unwrap();
        assert!(
            !dir.path().join("vol").exists(),
            "the volume and its dirs go"
        );

        s.options = vec!["fsgid=nope".into()];
        assert!(matches!(
            mount_storage("c1", &s),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(!dir.path().join("vol").exists());
    }

    /// Needs root (mount).
    #[test]
    fn ephemeral_storage_takes_fsgid_out_of_the_mount_options() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("eph");
        let mut s = tmpfs_storage(&target);
        s.options = vec!["fsgid=3000".into(), "size=1m".into(), "mode=0750".into()];
        let m = mount_storage("c1", &s).unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(meta.gid(), 3000);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o2750);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.contains(&format!(" {} ", target.display())))
            .expect("a tmpfs at the mount point");
        assert!(
            line.contains("size=1024k") && !line.contains("fsgid"),
            "{line}"
        );
        unmount_storage(&m).unwrap();
        assert!(!target.exists());
    }

    /// Needs root (mount).
    #[test]
    fn overlay_dirs_come_from_driver_options_and_the_rw_marker() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        std::fs::create_dir_all(&lower).unwrap();
        let up = dir.path().join("made/upper");
        let work = dir.path().join("made/work");
        let mut s = Storage::new();
        s.driver = "overlayfs".into();
        s.source = "overlay".into();
        s.fstype = "overlay".into();
        s.mount_point = dir.path().join("root").display().to_string();
        s.driver_options = vec![
            format!("{OVERLAY_CREATE_DIR}={}", up.display()),
            format!("{OVERLAY_CREATE_DIR}={}", work.display()),
        ];
        s.options = vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", up.display()),
            format!("workdir={}", work.display()),
            "index=off".into(),
        ];
        let m = mount_storage("c1", &s).unwrap();
        std::fs::write(dir.path().join("root/new"), "x").unwrap();
        assert!(up.join("new").exists());
        unmount_storage(&m).unwrap();
        assert!(!up.exists() && !work.exists());

        // The rw marker: upper and work below /run/kata-containers/<cid>,
        // and the marker itself never reaches mount(2).
        let mut s = s.clone();
        s.driver_options.clear();
        s.options = vec![format!("lowerdir={}", lower.display()), OVERLAY_RW.into()];
        let cid = format!("vc-test-{}", std::process::id());
        let m = mount_storage(&cid, &s).unwrap();
        let base = Path::new(KATA_CONTAINER_BASE).join(&cid);
        std::fs::write(dir.path().join("root/rw"), "x").unwrap();
        assert!(base.join("upper/rw").exists());
        unmount_storage(&m).unwrap();
        assert!(!base.join("upper").exists());
        let _ = std::fs::remove_dir(&base);
    }
}
