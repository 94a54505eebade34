//! From a container's OCI bundle to what the guest gets: the host bind
//! mounts into the sandbox share, the guest's spec (paths rewritten to
//! where things are inside the VM) and the storages the agent mounts.
//! Pure: the host mount table is passed in.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use vc_agent_client::protocol::agent::Storage;
use vc_mountinfo::MountInfo;

use vc_types::ContainerId;

use crate::config::ContainerConfig;
use crate::devices::ContainerDevices;
use crate::error::Error;
use crate::fs_share::GUEST_SHARED_DIR;
use crate::mounts::{GuestMount, classify};

/// Where guest-local emptyDir volumes live in the guest.
pub const GUEST_LOCAL_DIR: &str = "/run/vc/local";
/// Where memory-backed emptyDir volumes are mounted in the guest.
pub const GUEST_EPHEMERAL_DIR: &str = "/run/vc/ephemeral";

/// One bind mount to make on the host, into the sandbox share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostBind {
    /// The host path.
    pub source: PathBuf,
    /// Where it goes, inside the share's host directory.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// What creating a container needs, worked out before anything is done.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContainerLayout {
    /// Host bind mounts, rootfs first.
    pub binds: Vec<HostBind>,
    /// The spec the agent gets.
    pub spec: Spec,
    /// Storages the agent mounts before creating the container.
    pub storages: Vec<Storage>,
    /// Hot-plugged devices the agent finds and puts in the spec
    /// (`linux.devices` disks).
    pub devices: Vec<vc_agent_client::protocol::agent::Device>,
}

fn guest_path(container: &ContainerId, rel: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container}/{rel}")
}

/// Lays out container `cfg` in a sandbox whose share exports `shared_dir`;
/// what `devices` carries (a rootfs, block volumes) does not go through
/// the share, and their storages come first.
pub(crate) fn layout(
    cfg: &ContainerConfig,
    shared_dir: &Path,
    host_mounts: &[MountInfo],
    devices: &ContainerDevices,
) -> Result<ContainerLayout, Error> {
    let id = &cfg.id;
    let host_container_dir = shared_dir.join(id.as_str());
    let mut binds = Vec::new();
    let guest_root = match &devices.rootfs {
        Some(guest) => guest.clone(),
        None => {
            binds.push(HostBind {
                source: cfg.rootfs()?,
                target: host_container_dir.join("rootfs"),
                read_only: false,
            });
            guest_path(id, "rootfs")
        }
    };
    let mut spec = cfg.spec.clone();
    let mut root = spec.root().clone().ok_or_else(|| Error::InvalidSpec {
        container: id.clone(),
        reason: "no root".into(),
    })?;
    root.set_path(PathBuf::from(guest_root));
    spec.set_root(Some(root));

    let mut storages: Vec<Storage> = devices.storages.clone();
    let mut mounts: Vec<Mount> = Vec::new();
    for (i, m) in spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let mut place = MountPlacement {
            id,
            host_container_dir: &host_container_dir,
            devices,
            binds: &mut binds,
            storages: &mut storages,
        };
        mounts.push(place.rewrite(i, m, host_mounts)?);
    }
    spec.set_mounts(Some(mounts));
    strip_host_only(id, &mut spec)?;
    Ok(ContainerLayout {
        binds,
        spec,
        storages,
        devices: devices.nodes.clone(),
    })
}

/// Where one container's mounts go, and what they add on the way.
struct MountPlacement<'a> {
    id: &'a ContainerId,
    host_container_dir: &'a Path,
    devices: &'a ContainerDevices,
    binds: &'a mut Vec<HostBind>,
    storages: &'a mut Vec<Storage>,
}

impl MountPlacement<'_> {
    /// Mount `i` of the spec, rewritten to where its source is in the
    /// guest: a block volume's disk, a bind into the share, a guest-local
    /// or memory-backed directory, or left as is for kernel filesystems.
    fn rewrite(
        &mut self,
        i: usize,
        mut m: Mount,
        host_mounts: &[MountInfo],
    ) -> Result<Mount, Error> {
        let id = self.id;
        match classify(&m, host_mounts) {
            GuestMount::Guest => {}
            GuestMount::Block { .. } => {
                let guest = self
                    .devices
                    .volumes
                    .get(&i)
                    .ok_or_else(|| Error::InvalidSpec {
                        container: id.clone(),
                        reason: format!(
                            "block volume {} was not attached",
                            m.destination().display()
                        ),
                    })?;
                m.set_source(Some(PathBuf::from(guest)));
                m.set_typ(Some("bind".into()));
                let mut options = m.options().clone().unwrap_or_default();
                options.retain(|o| o != "bind" && o != "rbind");
                options.push("rbind".into());
                m.set_options(Some(options));
            }
            GuestMount::Shared { source, read_only } => {
                let rel = format!("mounts/{i}");
                self.binds.push(HostBind {
                    source,
                    target: self.host_container_dir.join(&rel),
                    read_only,
                });
                m.set_source(Some(PathBuf::from(guest_path(id, &rel))));
                m.set_typ(Some("bind".into()));
            }
            GuestMount::LocalDir { name } => {
                let dir = format!("{GUEST_LOCAL_DIR}/{name}");
                push_storage(self.storages, "local", "", "", &dir);
                m.set_source(Some(PathBuf::from(dir)));
                m.set_typ(Some("bind".into()));
            }
            GuestMount::Ephemeral { name } => {
                let dir = format!("{GUEST_EPHEMERAL_DIR}/{name}");
                push_storage(self.storages, "ephemeral", "tmpfs", "tmpfs", &dir);
                m.set_source(Some(PathBuf::from(dir)));
                m.set_typ(Some("bind".into()));
            }
        }
        Ok(m)
    }
}

/// The container's cgroup inside the guest for its `linux.cgroupsPath`:
/// a cgroupfs path as is, a systemd `slice:prefix:name` as the cgroupfs
/// path systemd would give it (the guest has no systemd; runc shows the
/// same path in `/proc/self/cgroup`). A path that could leave the
/// hierarchy is refused before anything is made.
pub(crate) fn guest_cgroups_path(id: &ContainerId, path: &str) -> Result<String, Error> {
    let invalid = |reason: String| Error::InvalidSpec {
        container: id.clone(),
        reason: format!("linux.cgroupsPath {path:?}: {reason}"),
    };
    let parsed = if !path.starts_with('/') && path.split(':').count() == 3 {
        vc_cgroups_host::plan::SystemdCgroupPath::parse(path)
            .map(|p| p.cgroup_path().clone())
            .map_err(|e| invalid(crate::error::chain(&e)))?
    } else {
        vc_cgroups_host::plan::CgroupPath::parse(path)
            .map_err(|e| invalid(crate::error::chain(&e)))?
    };
    if parsed.is_root() {
        return Err(invalid("names the cgroup root".into()));
    }
    Ok(parsed.as_str().to_owned())
}

/// Drops what only means something on the host: hooks (host binaries)
/// and the network namespace (the VM is the network boundary: containers
/// share the guest's namespace, which holds the sandbox's interfaces); the
/// cgroup path becomes the guest's form of it.
fn strip_host_only(id: &ContainerId, spec: &mut Spec) -> Result<(), Error> {
    spec.set_hooks(None);
    if let Some(linux) = spec.linux().clone() {
        let mut linux = linux;
        if let Some(path) = linux.cgroups_path().clone() {
            let guest = guest_cgroups_path(id, &path.to_string_lossy())?;
            linux.set_cgroups_path(Some(PathBuf::from(guest)));
        }
        if let Some(ns) = linux.namespaces().clone() {
            linux.set_namespaces(Some(
                ns.into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect(),
            ));
        }
        spec.set_linux(Some(linux));
    }
    Ok(())
}

fn push_storage(
    storages: &mut Vec<Storage>,
    driver: &str,
    fstype: &str,
    source: &str,
    mount_point: &str,
) {
    if storages.iter().any(|s| s.mount_point == mount_point) {
        return;
    }
    let mut s = Storage::new();
    s.driver = driver.into();
    s.fstype = fstype.into();
    s.source = source.into();
    s.mount_point = mount_point.into();
    storages.push(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, ProcessBuilder, RootBuilder, SpecBuilder,
    };

    fn config(mounts: Vec<Mount>) -> ContainerConfig {
        let spec = SpecBuilder::default()
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(true)
                    .build()
                    .unwrap(),
            )
            .process(
                ProcessBuilder::default()
                    .args(vec!["sh".to_owned()])
                    .build()
                    .unwrap(),
            )
            .mounts(mounts)
            .linux(
                LinuxBuilder::default()
                    .cgroups_path("/kubepods/pod1/c1")
                    .namespaces(vec![
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Network)
                            .path("/proc/1/ns/net")
                            .build()
                            .unwrap(),
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Pid)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        ContainerConfig {
            id: "c1".parse().unwrap(),
            bundle: "/bundles/c1".into(),
            spec,
            rootfs_block: None,
        }
    }

    fn bind(src: &str, dst: &str) -> Mount {
        MountBuilder::default()
            .source(src)
            .destination(dst)
            .typ("bind")
            .options(vec!["rbind".to_owned(), "ro".to_owned()])
            .build()
            .unwrap()
    }

    #[test]
    fn rootfs_and_binds_go_through_the_share() {
        let proc_mount = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        let cfg = config(vec![proc_mount.clone(), bind("/srv/data", "/data")]);
        let l = layout(
            &cfg,
            Path::new("/run/vc/shared/sb1"),
            &[],
            &ContainerDevices::default(),
        )
        .unwrap();
        assert_eq!(
            l.binds,
            vec![
                HostBind {
                    source: "/bundles/c1/rootfs".into(),
                    target: "/run/vc/shared/sb1/c1/rootfs".into(),
                    read_only: false,
                },
                HostBind {
                    source: "/srv/data".into(),
                    target: "/run/vc/shared/sb1/c1/mounts/1".into(),
                    read_only: true,
                },
            ]
        );
        let root = l.spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/vc/shared/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let mounts = l.spec.mounts().as_ref().unwrap();
        assert_eq!(mounts[0], proc_mount);
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/run/vc/shared/c1/mounts/1"))
        );
        assert_eq!(mounts[1].destination(), Path::new("/data"));
        assert!(l.storages.is_empty());
    }

    #[test]
    fn device_backed_rootfs_and_volumes_skip_the_share() {
        let volume = MountBuilder::default()
            .destination("/data")
            .typ("ext4")
            .source("/img/v.img")
            .build()
            .unwrap();
        let mut devices = ContainerDevices {
            rootfs: Some("/run/vc/rootfs/c1".into()),
            ..Default::default()
        };
        devices.volumes.insert(0, "/run/vc/volumes/c1/0".into());
        let mut s = Storage::new();
        s.driver = "blk".into();
        devices.storages.push(s);
        let l = layout(&config(vec![volume]), Path::new("/s"), &[], &devices).unwrap();
        assert!(l.binds.is_empty());
        assert_eq!(
            l.spec.root().as_ref().unwrap().path(),
            Path::new("/run/vc/rootfs/c1")
        );
        let m = &l.spec.mounts().as_ref().unwrap()[0];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/vc/volumes/c1/0"))
        );
        assert_eq!(m.typ().as_deref(), Some("bind"));
        assert_eq!(l.storages.len(), 1);
        // A block volume that was not attached is an error, not a guess.
        let unattached = MountBuilder::default()
            .destination("/data")
            .typ("xfs")
            .source("/img/w.img")
            .build()
            .unwrap();
        assert!(matches!(
            layout(
                &config(vec![unattached]),
                Path::new("/s"),
                &[],
                &ContainerDevices::default()
            ),
            Err(Error::InvalidSpec { .. })
        ));
    }

    #[test]
    fn host_only_settings_are_dropped_and_the_cgroup_path_kept() {
        let l = layout(
            &config(vec![]),
            Path::new("/s"),
            &[],
            &ContainerDevices::default(),
        )
        .unwrap();
        let linux = l.spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kubepods/pod1/c1")),
            "the cgroup path is the guest's too"
        );
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(types, [LinuxNamespaceType::Pid]);
    }

    #[test]
    fn cgroup_paths_become_the_guest_form_or_are_refused() {
        let id = ContainerId::new("c1").unwrap();
        let guest = |p: &str| guest_cgroups_path(&id, p);
        assert_eq!(guest("kubepods//pod1/./c1").unwrap(), "/kubepods/pod1/c1");
        assert_eq!(
            guest("kubepods-besteffort-pod1.slice:cri-containerd:c1").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-c1.scope"
        );
        assert_eq!(
            guest(":docker:c1").unwrap(),
            "/system.slice/docker-c1.scope"
        );
        for bad in ["/pod/../../x", "/", "/sys/fs/cgroup/x", "a:b:c/d"] {
            match guest(bad) {
                Err(Error::InvalidSpec { container, reason }) => {
                    assert_eq!(container, id);
                    assert!(reason.contains(bad), "{reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_dirs_become_storages_once() {
        let table = vc_mountinfo::parse_mountinfo(
            "50 25 0:60 / /k/pods/u/volumes/kubernetes.io~empty-dir/mem rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        let cfg = config(vec![
            bind("/k/pods/u/volumes/kubernetes.io~empty-dir/scratch", "/a"),
            bind("/k/pods/u/volumes/kubernetes.io~empty-dir/scratch", "/b"),
            bind("/k/pods/u/volumes/kubernetes.io~empty-dir/mem", "/c"),
        ]);
        let l = layout(&cfg, Path::new("/s"), &table, &ContainerDevices::default()).unwrap();
        assert_eq!(l.binds.len(), 1, "only the rootfs crosses the share");
        let points: Vec<_> = l
            .storages
            .iter()
            .map(|s| (s.driver.as_str(), s.mount_point.as_str()))
            .collect();
        assert_eq!(
            points,
            [
                ("local", "/run/vc/local/scratch"),
                ("ephemeral", "/run/vc/ephemeral/mem")
            ]
        );
        let sources: Vec<_> = l
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                PathBuf::from("/run/vc/local/scratch"),
                PathBuf::from("/run/vc/local/scratch"),
                PathBuf::from("/run/vc/ephemeral/mem")
            ]
        );
    }
}
