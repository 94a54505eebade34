//! How each OCI mount of a container reaches the guest.
//!
//! Pure: the classification looks at the mount and at the host's mount
//! table (passed in, so tests use fixtures).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;
use vc_mountinfo::MountInfo;

/// Filesystems that live on a disk: a mount of one of these types (not a
/// bind) is a block volume.
pub const DISK_FILESYSTEMS: [&str; 6] = ["ext4", "ext3", "ext2", "xfs", "btrfs", "erofs"];

/// The path component Kubernetes gives emptyDir volumes on the host:
/// `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`.
pub const K8S_EMPTY_DIR: &str = "kubernetes.io~empty-dir";

/// Where a mount's content comes from in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMount {
    /// A Kubernetes emptyDir on disk: a directory local to the guest, shared
    /// by the sandbox's containers, gone with the sandbox. Nothing crosses
    /// the VM boundary.
    LocalDir {
        /// The volume's name (the last path component on the host).
        name: String,
    },
    /// A memory-backed (`medium: Memory`) emptyDir: a tmpfs in the guest.
    Ephemeral {
        /// The volume's name.
        name: String,
    },
    /// A host path bind-mounted into the container: shared into the guest
    /// through the sandbox's filesystem share.
    Shared {
        /// The host path.
        source: PathBuf,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A filesystem on a block device or disk image (`type` is a disk
    /// filesystem, not a bind): the image is hot-plugged as a virtio-blk
    /// disk and the guest mounts it.
    Block {
        /// The host block device or image file.
        source: PathBuf,
        /// Its filesystem.
        fs_type: String,
        /// Mounted read-only.
        read_only: bool,
    },
    /// A mount the guest makes by itself (`proc`, `sysfs`, `tmpfs`,
    /// `devpts`, `mqueue`, `cgroup`, ...): passed to the agent as it is.
    Guest,
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_read_only(m: &Mount) -> bool {
    m.options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o == "ro"))
}

/// The emptyDir volume name in a host path, if it is one.
fn empty_dir_name(source: &Path) -> Option<String> {
    let mut components = source.components().rev();
    let name = components.next()?.as_os_str().to_str()?.to_owned();
    let parent = components.next()?.as_os_str();
    (parent == K8S_EMPTY_DIR).then_some(name)
}

/// Decides how `mount` reaches the guest. `host_mounts` is the host's mount
/// table (`/proc/self/mountinfo`): a memory-medium emptyDir is the one the
/// kubelet mounted a tmpfs on.
///
/// As in Kata, a Kubernetes emptyDir is recognised by its source path
/// whatever the mount's type (Kata's `isEphemeralStorage` and
/// `isHostEmptyDir` look at the source only).
pub fn classify(mount: &Mount, host_mounts: &[MountInfo]) -> GuestMount {
    if let Some(source) = mount.source()
        && let Some(name) = empty_dir_name(source)
    {
        let on_tmpfs = host_mounts
            .iter()
            .any(|m| m.mount_point == *source && m.fs_type == "tmpfs");
        return if on_tmpfs {
            GuestMount::Ephemeral { name }
        } else {
            GuestMount::LocalDir { name }
        };
    }
    if !is_bind(mount) {
        return match (mount.typ().as_deref(), mount.source()) {
            (Some(t), Some(source)) if DISK_FILESYSTEMS.contains(&t) => GuestMount::Block {
                source: source.clone(),
                fs_type: t.to_owned(),
                read_only: is_read_only(mount),
            },
            _ => GuestMount::Guest,
        };
    }
    let Some(source) = mount.source() else {
        return GuestMount::Guest;
    };
    GuestMount::Shared {
        source: source.clone(),
        read_only: is_read_only(mount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn bind(source: &str, ro: bool) -> Mount {
        let mut options = vec!["rbind".to_owned()];
        if ro {
            options.push("ro".to_owned());
        }
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(source)
            .options(options)
            .build()
            .unwrap()
    }

    fn table() -> Vec<MountInfo> {
        vc_mountinfo::parse_mountinfo(
            "50 25 0:60 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw\n",
        )
        .unwrap()
    }

    #[test]
    fn empty_dirs_become_guest_local_or_tmpfs() {
        let disk = bind(
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/scratch",
            false,
        );
        assert_eq!(
            classify(&disk, &table()),
            GuestMount::LocalDir {
                name: "scratch".into()
            }
        );
        let memory = bind(
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache",
            false,
        );
        assert_eq!(
            classify(&memory, &table()),
            GuestMount::Ephemeral {
                name: "cache".into()
            }
        );
        // Kata's reading: the source path decides, whatever the type.
        let typed = MountBuilder::default()
            .destination("/cache")
            .typ("tmpfs")
            .source("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache")
            .build()
            .unwrap();
        assert_eq!(
            classify(&typed, &table()),
            GuestMount::Ephemeral {
                name: "cache".into()
            }
        );
    }

    #[test]
    fn other_binds_are_shared_and_keep_read_only() {
        assert_eq!(
            classify(&bind("/srv/config", true), &table()),
            GuestMount::Shared {
                source: "/srv/config".into(),
                read_only: true
            }
        );
        let bind_option_only = MountBuilder::default()
            .destination("/x")
            .source("/srv/x")
            .options(vec!["bind".to_owned()])
            .build()
            .unwrap();
        assert!(matches!(
            classify(&bind_option_only, &table()),
            GuestMount::Shared {
                read_only: false,
                ..
            }
        ));
        // A directory merely named like the volume plugin is not an emptyDir.
        assert!(matches!(
            classify(&bind("/srv/kubernetes.io~empty-dir", false), &table()),
            GuestMount::Shared { .. }
        ));
    }

    #[test]
    fn disk_filesystems_are_block_volumes() {
        let ext4 = MountBuilder::default()
            .destination("/data")
            .typ("ext4")
            .source("/var/lib/volumes/v1.img")
            .options(vec!["ro".to_owned()])
            .build()
            .unwrap();
        assert_eq!(
            classify(&ext4, &table()),
            GuestMount::Block {
                source: "/var/lib/volumes/v1.img".into(),
                fs_type: "ext4".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn kernel_filesystems_stay_in_the_guest() {
        let proc = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        assert_eq!(classify(&proc, &table()), GuestMount::Guest);
    }
}
