//! From a container's rootfs path to its EROFS layer images.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mount_table::{Mount, MountTable, MountTableFile, normalize};
use super::overlay;
use crate::error::{Error, Result};
use crate::info::DeviceInfo;

/// The file name containerd's EROFS snapshotter gives each layer image.
pub const LAYER_FILE_NAME: &str = "layer.erofs";

/// One lower layer of an overlay rootfs, backed by a `layer.erofs` image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsLayer {
    /// The lower dir as the overlay names it (on the host).
    pub lowerdir: PathBuf,
    /// The EROFS image file.
    pub image: PathBuf,
    /// The loop device the host mounted it through, if any (file-backed
    /// EROFS mounts, Linux 6.12+, have none).
    pub loop_device: Option<PathBuf>,
    /// The directory inside the image the lower dir shows, relative
    /// (empty: the image's root, the usual case).
    pub subdir: PathBuf,
}

impl ErofsLayer {
    /// How to register the image with the device manager: a read-only
    /// raw disk.
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo::block(&self.image).read_only()
    }
}

/// What an overlay rootfs over EROFS layers is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsRootfs {
    /// The container's rootfs (the overlay's mount point).
    pub rootfs: PathBuf,
    /// The lower layers, topmost first (overlayfs's order: a file in an
    /// earlier layer hides the same path in later ones).
    pub layers: Vec<ErofsLayer>,
    /// The writable upper dir on the host, if the overlay has one.
    pub upperdir: Option<PathBuf>,
    /// The overlay's work dir on the host, if any.
    pub workdir: Option<PathBuf>,
    /// Overlay options that describe the layers' format (`redirect_dir=`,
    /// `metacopy=`, `index=`, ...); a guest overlay over the same layers
    /// and upper dir needs the same ones.
    pub overlay_features: Vec<String>,
}

impl ErofsRootfs {
    /// The distinct layer images, in layer order (one image can back two
    /// lower dirs; it is attached once).
    pub fn images(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for layer in &self.layers {
            if !out.contains(&layer.image.as_path()) {
                out.push(&layer.image);
            }
        }
        out
    }
}

/// Where the discovery looks: the mount table and sysfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsDiscovery {
    /// The mount table (default: `/proc/self/mountinfo`).
    pub mount_table: MountTableFile,
    /// Where sysfs is mounted (default: `/sys`).
    pub sys_root: PathBuf,
}

impl Default for ErofsDiscovery {
    fn default() -> Self {
        Self {
            mount_table: MountTableFile::default(),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

impl ErofsDiscovery {
    /// Discovery over these files.
    pub fn new(mount_table: MountTableFile, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            mount_table,
            sys_root: sys_root.into(),
        }
    }

    /// Reads the mount table and finds the layers of the overlay mounted
    /// at `rootfs`.
    pub fn discover(&self, rootfs: &Path) -> Result<ErofsRootfs> {
        let table = MountTable::read(&self.mount_table)?;
        discover_in(&table, rootfs, &self.sys_root)
    }
}

/// Finds the layers of the overlay mounted at `rootfs` in `table`,
/// reading loop devices' backing files under `sys_root`.
///
/// Errors, never guesses: the rootfs must be an overlay mount point
/// ([`Error::RootfsNotOverlay`], [`Error::UnsupportedRootfs`]); each lower
/// dir must be on an EROFS mount whose source is a loop device over, or
/// directly, a file named `layer.erofs`, used whole
/// ([`Error::UnsupportedLayer`] otherwise).
pub fn discover_in(table: &MountTable, rootfs: &Path, sys_root: &Path) -> Result<ErofsRootfs> {
    let unsupported_rootfs = |reason: String| Error::UnsupportedRootfs {
        rootfs: rootfs.to_owned(),
        reason,
    };
    let rootfs_norm = normalize(rootfs)
        .ok_or_else(|| unsupported_rootfs("not an absolute path without `..`".into()))?;
    let mount = table
        .mount_of(&rootfs_norm)
        .ok_or_else(|| Error::RootfsNotMounted {
            rootfs: rootfs.to_owned(),
        })?;
    if mount.fs_type != "overlay" {
        return Err(Error::RootfsNotOverlay {
            rootfs: rootfs.to_owned(),
            fs_type: mount.fs_type.clone(),
            mount_point: mount.mount_point.clone(),
        });
    }
    if mount.mount_point != rootfs_norm {
        return Err(unsupported_rootfs(format!(
            "it is a subdirectory of the overlay mounted at {}, not the mount itself",
            mount.mount_point.display()
        )));
    }
    if mount.root.as_deref().is_some_and(|r| r != Path::new("/")) {
        return Err(unsupported_rootfs(
            "it is a bind mount of a subdirectory of an overlay".into(),
        ));
    }
    let layers = overlay::parse(&mount.options).map_err(|e| unsupported_rootfs(e.to_string()))?;
    let resolved = layers
        .lowerdirs
        .iter()
        .map(|lowerdir| resolve_layer(table, lowerdir, sys_root))
        .collect::<Result<Vec<_>>>()?;
    Ok(ErofsRootfs {
        rootfs: rootfs_norm,
        layers: resolved,
        upperdir: layers.upperdir,
        workdir: layers.workdir,
        overlay_features: layers.features,
    })
}

fn resolve_layer(table: &MountTable, lowerdir: &Path, sys_root: &Path) -> Result<ErofsLayer> {
    let unsupported = |reason: String| Error::UnsupportedLayer {
        lowerdir: lowerdir.to_owned(),
        reason,
    };
    let path = normalize(lowerdir).ok_or_else(|| {
        unsupported("not an absolute path without `..` (the overlay resolved it against a cwd we cannot know)".into())
    })?;
    let mount = table
        .mount_of(&path)
        .ok_or_else(|| unsupported("no mount in the mount table covers it".into()))?;
    if mount.fs_type != "erofs" {
        return Err(unsupported(format!(
            "it is on a {} mount of {} at {}",
            mount.fs_type,
            mount.source.display(),
            mount.mount_point.display()
        )));
    }
    if let Some(devices) = mount.option("device") {
        return Err(unsupported(format!(
            "the EROFS image has extra blob devices (device={devices})"
        )));
    }
    let (image, loop_device) = image_of(mount, sys_root).map_err(|e| match e {
        ImageError::Unsupported(reason) => unsupported(reason),
        ImageError::Sysfs(e) => e,
    })?;
    if image.file_name().and_then(|n| n.to_str()) != Some(LAYER_FILE_NAME) {
        return Err(unsupported(format!(
            "its image {} is not a {LAYER_FILE_NAME} file",
            image.display()
        )));
    }
    let inside_mount = path
        .strip_prefix(&mount.mount_point)
        .expect("mount_of returns a covering mount");
    // The mount shows `root` of the image (a bind mount shows a subdirectory).
    let mut subdir = match &mount.root {
        Some(root) => root.strip_prefix("/").unwrap_or(root).to_owned(),
        None => PathBuf::new(),
    };
    if !inside_mount.as_os_str().is_empty() {
        subdir.push(inside_mount);
    }
    Ok(ErofsLayer {
        lowerdir: lowerdir.to_owned(),
        image,
        loop_device,
        subdir,
    })
}

enum ImageError {
    Unsupported(String),
    Sysfs(Error),
}

/// The image file behind an EROFS mount, and its loop device if any.
fn image_of(mount: &Mount, sys_root: &Path) -> Result<(PathBuf, Option<PathBuf>), ImageError> {
    let source = &mount.source;
    let loop_name = source
        .to_str()
        .and_then(|s| s.strip_prefix("/dev/"))
        .filter(|name| {
            name.strip_prefix("loop")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if let Some(name) = loop_name {
        let image = loop_backing_file(sys_root, name).map_err(ImageError::Sysfs)?;
        let image = image.map_err(ImageError::Unsupported)?;
        return Ok((image, Some(source.clone())));
    }
    if source.is_absolute() && !source.starts_with("/dev") {
        // A file-backed EROFS mount (Linux 6.12+): the source is the image.
        return Ok((source.clone(), None));
    }
    Err(ImageError::Unsupported(format!(
        "its source {} is neither a loop device nor an image file",
        source.display()
    )))
}

/// Reads `/sys/block/<name>/loop/backing_file`; the inner error is a
/// reason the loop device cannot stand for its whole file.
fn loop_backing_file(sys_root: &Path, name: &str) -> Result<Result<PathBuf, String>> {
    let dir = sys_root.join("block").join(name).join("loop");
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read(&path).map_err(|source| Error::LoopDevice {
            device: name.to_owned(),
            path,
            source,
        })
    };
    let mut backing = read("backing_file")?;
    // sysfs ends the value with one newline; the path itself is raw bytes.
    if backing.last() == Some(&b'\n') {
        backing.pop();
    }
    const DELETED: &[u8] = b" (deleted)";
    if backing.ends_with(DELETED) {
        return Ok(Err(format!(
            "/dev/{name}'s backing file was deleted ({})",
            String::from_utf8_lossy(&backing)
        )));
    }
    for (file, what) in [("offset", "an offset"), ("sizelimit", "a size limit")] {
        let value = match read(file) {
            Ok(v) => v,
            Err(Error::LoopDevice { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        if String::from_utf8_lossy(&value).trim() != "0" {
            return Ok(Err(format!(
                "/dev/{name} maps only part of its file ({what})"
            )));
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Ok(Ok(PathBuf::from(std::ffi::OsString::from_vec(backing))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture sysfs with loop devices.
    struct FakeSys(tempfile::TempDir);

    impl FakeSys {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        fn loop_dev(&self, name: &str, backing: &[u8], offset: &str) -> &Self {
            let dir = self.root().join("block").join(name).join("loop");
            fs::create_dir_all(&dir).unwrap();
            let mut content = backing.to_vec();
            content.push(b'\n');
            fs::write(dir.join("backing_file"), content).unwrap();
            fs::write(dir.join("offset"), format!("{offset}\n")).unwrap();
            fs::write(dir.join("sizelimit"), "0\n").unwrap();
            fs::write(dir.join("autoclear"), "1\n").unwrap();
            self
        }
    }

    const SNAP: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.erofs/snapshots";

    /// containerd's erofs snapshotter: three committed layers loop-mounted
    /// on `<id>/fs`, one with a space in its path, and the container's
    /// overlay with its upper dir in the active snapshot.
    fn mountinfo() -> String {
        format!(
            "\
22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw
40 22 7:0 / {SNAP}/1/fs ro,relatime - erofs /dev/loop0 ro,user_xattr,acl,cache_strategy=readaround
41 22 7:1 / {SNAP}/2\\040two/fs ro,relatime - erofs /dev/loop1 ro,user_xattr,acl,cache_strategy=readaround
42 22 7:2 / {SNAP}/3/fs ro,relatime - erofs /dev/loop2 ro,user_xattr,acl,cache_strategy=readaround
50 22 0:45 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/rootfs rw,relatime - overlay overlay rw,lowerdir={SNAP}/3/fs:{SNAP}/2\\040two/fs:{SNAP}/1/fs,upperdir={SNAP}/4/fs,workdir={SNAP}/4/work,uuid=on
"
        )
    }

    const ROOTFS: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1/rootfs";

    fn standard_sys() -> FakeSys {
        let sys = FakeSys::new();
        sys.loop_dev("loop0", format!("{SNAP}/1/layer.erofs").as_bytes(), "0")
            .loop_dev("loop1", format!("{SNAP}/2 two/layer.erofs").as_bytes(), "0")
            .loop_dev("loop2", format!("{SNAP}/3/layer.erofs").as_bytes(), "0");
        sys
    }

    #[test]
    fn finds_layers_topmost_first_with_upper_and_work() {
        let sys = standard_sys();
        let table = MountTable::parse_mountinfo(&mountinfo()).unwrap();
        let found = discover_in(&table, Path::new(ROOTFS), sys.root()).unwrap();
        assert_eq!(found.rootfs, Path::new(ROOTFS));
        let images: Vec<String> = found
            .layers
            .iter()
            .map(|l| l.image.display().to_string())
            .collect();
        assert_eq!(
            images,
            [
                format!("{SNAP}/3/layer.erofs"),
                format!("{SNAP}/2 two/layer.erofs"),
                format!("{SNAP}/1/layer.erofs"),
            ]
        );
        assert_eq!(
            found.layers[1].lowerdir,
            Path::new(&format!("{SNAP}/2 two/fs"))
        );
        assert_eq!(
            found.layers[1].loop_device.as_deref(),
            Some(Path::new("/dev/loop1"))
        );
        assert_eq!(found.layers[0].subdir, Path::new(""));
        assert_eq!(found.upperdir, Some(PathBuf::from(format!("{SNAP}/4/fs"))));
        assert_eq!(found.workdir, Some(PathBuf::from(format!("{SNAP}/4/work"))));
        assert_eq!(found.overlay_features, ["uuid=on"]);
        assert_eq!(found.images().len(), 3);
        let info = found.layers[0].device_info();
        assert!(info.read_only);
        // A trailing slash or `.` in the rootfs path names the same mount.
        let again = discover_in(&table, Path::new(&format!("{ROOTFS}/./")), sys.root()).unwrap();
        assert_eq!(again, found);
    }

    #[test]
    fn proc_mounts_gives_the_same_layers() {
        let sys = standard_sys();
        // The same mounts as /proc/mounts writes them.
        let mounts = format!(
            "\
/dev/vda1 / ext4 rw,relatime 0 0
/dev/loop0 {SNAP}/1/fs erofs ro,relatime,user_xattr,acl,cache_strategy=readaround 0 0
/dev/loop1 {SNAP}/2\\040two/fs erofs ro,relatime,user_xattr,acl,cache_strategy=readaround 0 0
/dev/loop2 {SNAP}/3/fs erofs ro,relatime,user_xattr,acl,cache_strategy=readaround 0 0
overlay {ROOTFS} overlay rw,relatime,lowerdir={SNAP}/3/fs:{SNAP}/2\\040two/fs:{SNAP}/1/fs,upperdir={SNAP}/4/fs,workdir={SNAP}/4/work,uuid=on 0 0
"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mounts");
        fs::write(&file, mounts).unwrap();
        let via_mounts = ErofsDiscovery::new(MountTableFile::Mounts(file), sys.root())
            .discover(Path::new(ROOTFS))
            .unwrap();
        let table = MountTable::parse_mountinfo(&mountinfo()).unwrap();
        assert_eq!(
            via_mounts,
            discover_in(&table, Path::new(ROOTFS), sys.root()).unwrap()
        );
    }

    #[test]
    fn escaped_colons_commas_and_backslashes_in_layer_paths() {
        let sys = FakeSys::new();
        sys.loop_dev("loop7", b"/img/a:b,c\\d/layer.erofs", "0");
        // The kernel writes `\` as \134 and `,` as \054 in the table; the
        // overlay's own escapes (`\:`, `\,`) sit underneath.
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 7:7 / /l/a:b,c ro - erofs /dev/loop7 ro
3 1 0:50 / /r rw - overlay overlay rw,lowerdir=/l/a\\134:b\\134\\054c,upperdir=/u,workdir=/w
";
        let table = MountTable::parse_mountinfo(text).unwrap();
        let found = discover_in(&table, Path::new("/r"), sys.root()).unwrap();
        assert_eq!(found.layers[0].lowerdir, Path::new("/l/a:b,c"));
        assert_eq!(
            found.layers[0].image,
            Path::new("/img/a:b,c\\d/layer.erofs")
        );
    }

    #[test]
    fn file_backed_mounts_and_subdirectories() {
        let sys = FakeSys::new();
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:60 / /l/1 ro - erofs /img/1/layer.erofs ro
3 1 0:61 /usr /l/2 ro - erofs /img/2/layer.erofs ro
4 1 0:50 / /r ro - overlay overlay ro,lowerdir=/l/1/sub/dir:/l/2
";
        let table = MountTable::parse_mountinfo(text).unwrap();
        let found = discover_in(&table, Path::new("/r"), sys.root()).unwrap();
        assert_eq!(found.layers[0].image, Path::new("/img/1/layer.erofs"));
        assert_eq!(found.layers[0].loop_device, None);
        assert_eq!(found.layers[0].subdir, Path::new("sub/dir"));
        // A bind mount of /usr of the image: the layer is that directory.
        assert_eq!(found.layers[1].subdir, Path::new("usr"));
        assert_eq!(found.upperdir, None);
        assert_eq!(found.workdir, None);
    }

    #[test]
    fn one_image_under_two_lower_dirs_is_one_device() {
        let sys = FakeSys::new();
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:60 / /l/1 ro - erofs /img/1/layer.erofs ro
3 1 0:60 / /l/2 ro - erofs /img/1/layer.erofs ro
4 1 0:50 / /r ro - overlay overlay ro,lowerdir=/l/1:/l/2
";
        let found = discover_in(
            &MountTable::parse_mountinfo(text).unwrap(),
            Path::new("/r"),
            sys.root(),
        )
        .unwrap();
        assert_eq!(found.layers.len(), 2);
        assert_eq!(found.images(), [Path::new("/img/1/layer.erofs")]);
    }

    fn layer_error(text: &str, sys: &FakeSys) -> (PathBuf, String) {
        let table = MountTable::parse_mountinfo(text).unwrap();
        match discover_in(&table, Path::new("/r"), sys.root()) {
            Err(Error::UnsupportedLayer { lowerdir, reason }) => (lowerdir, reason),
            other => panic!("expected UnsupportedLayer, got {other:?}"),
        }
    }

    #[test]
    fn anything_but_a_whole_layer_erofs_is_unsupported() {
        let sys = FakeSys::new();
        sys.loop_dev("loop0", b"/img/other.img", "0")
            .loop_dev("loop1", b"/img/1/layer.erofs (deleted)", "0")
            .loop_dev("loop2", b"/img/2/layer.erofs", "4096");
        let with_lower = |mount: &str| {
            format!(
                "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n{mount}\n9 1 0:50 / /r rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
            )
        };
        let cases = [
            // A plain directory on the root filesystem (the overlayfs snapshotter).
            ("", "ext4 mount"),
            ("2 1 7:0 / /l ro - erofs /dev/loop0 ro", "not a layer.erofs"),
            ("2 1 7:1 / /l ro - erofs /dev/loop1 ro", "deleted"),
            ("2 1 7:2 / /l ro - erofs /dev/loop2 ro", "only part"),
            ("2 1 0:9 / /l ro - squashfs /dev/loop0 ro", "squashfs"),
            (
                "2 1 0:9 / /l ro - erofs none ro,fsid=abc",
                "neither a loop device",
            ),
            (
                "2 1 259:1 / /l ro - erofs /dev/nvme0n1p1 ro",
                "neither a loop device",
            ),
            (
                "2 1 7:0 / /l ro - erofs /dev/loop0p1 ro",
                "neither a loop device",
            ),
            (
                "2 1 0:9 / /l ro - erofs /img/3/layer.erofs ro,device=/img/3/blob",
                "blob devices",
            ),
        ];
        for (mount, expected) in cases {
            let (lowerdir, reason) = layer_error(&with_lower(mount), &sys);
            assert_eq!(lowerdir, Path::new("/l"));
            assert!(reason.contains(expected), "{mount:?}: {reason}");
        }
        // A relative lower dir cannot be resolved from the table.
        let (_, reason) = layer_error(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n9 1 0:50 / /r rw - overlay overlay rw,lowerdir=l\n",
            &sys,
        );
        assert!(reason.contains("absolute"), "{reason}");
        // A loop device with no sysfs entry is a typed sysfs error.
        let table =
            MountTable::parse_mountinfo(&with_lower("2 1 7:5 / /l ro - erofs /dev/loop5 ro"))
                .unwrap();
        assert!(matches!(
            discover_in(&table, Path::new("/r"), sys.root()),
            Err(Error::LoopDevice { device, .. }) if device == "loop5"
        ));
    }

    #[test]
    fn the_rootfs_must_be_an_overlay_mount_point() {
        let sys = FakeSys::new();
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:50 / /r rw - overlay overlay rw,lowerdir=/l
3 1 0:50 /sub /b rw - overlay overlay rw,lowerdir=/l
4 1 0:51 / /t rw - overlay overlay rw,lowerdir=/a::/data
";
        let table = MountTable::parse_mountinfo(text).unwrap();
        let check = |rootfs: &str| discover_in(&table, Path::new(rootfs), sys.root());
        match check("/srv/rootfs") {
            Err(Error::RootfsNotOverlay {
                fs_type,
                mount_point,
                ..
            }) => {
                assert_eq!(fs_type, "ext4");
                assert_eq!(mount_point, Path::new("/"));
            }
            other => panic!("{other:?}"),
        }
        for (rootfs, reason) in [
            ("/r/x", "subdirectory"),
            ("/b", "bind mount"),
            ("/t", "data-only"),
            ("rootfs", "absolute"),
        ] {
            match check(rootfs) {
                Err(Error::UnsupportedRootfs { reason: r, .. }) => {
                    assert!(r.contains(reason), "{rootfs}: {r}")
                }
                other => panic!("{rootfs}: {other:?}"),
            }
        }
        let empty = MountTable::default();
        assert!(matches!(
            discover_in(&empty, Path::new("/r"), sys.root()),
            Err(Error::RootfsNotMounted { .. })
        ));
        // An unreadable mount table is a typed error.
        let missing = ErofsDiscovery::new(
            MountTableFile::MountInfo("/nonexistent/mountinfo".into()),
            sys.root(),
        );
        assert!(matches!(
            missing.discover(Path::new("/r")),
            Err(Error::MountTable(_))
        ));
    }
}
