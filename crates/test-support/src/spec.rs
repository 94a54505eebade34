//! Container fixtures: busybox root filesystems and OCI specs (and
//! bundles) of busybox containers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// The namespaces of an isolated test container: mount, pid, uts, ipc.
pub const ISOLATED: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
];

/// A busybox tree in `dir/rootfs` ([`vc_guest_image::rootfs::busybox_rootfs`]:
/// every applet, `/etc/passwd`, mount points) plus a `/work` dir for the
/// containers' cwd; returns its path.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    vc_guest_image::rootfs::busybox_rootfs(
        &root,
        Path::new(vc_guest_image::rootfs::DEFAULT_BUSYBOX),
    )
    .expect("a busybox rootfs (apt-get install busybox-static)");
    std::fs::create_dir_all(root.join("work")).expect("creating the rootfs's /work");
    root
}

/// One busybox rootfs shared by the tests of a run, read-only by
/// convention: built once into the cargo target dir (atomically, so
/// concurrent test processes never see half of it).
pub fn shared_busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let target = vc_guest_image::cargo_target_dir();
        let dir = target.join("vc-test-rootfs");
        if !dir.join("bin/busybox").is_file() {
            std::fs::create_dir_all(&target).expect("creating the target dir");
            let tmp = tempfile_in(&target);
            let root = busybox_rootfs(&tmp);
            // Another process may have won the race: its tree is as good.
            if std::fs::rename(&root, &dir).is_err() {
                assert!(dir.join("bin/busybox").is_file(), "no {}", dir.display());
            }
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
}

fn tempfile_in(parent: &Path) -> PathBuf {
    let dir = parent.join(format!(".vc-test-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a build dir for the rootfs");
    dir
}

/// An OCI spec of a busybox container, built up by what a test needs.
///
/// [`ContainerSpec::new`] sets the root, the args and `PATH=/bin`; every
/// field no method sets keeps `oci-spec`'s default (its default mounts,
/// capabilities, rlimits, ...).
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    root: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    hostname: Option<String>,
    version: Option<String>,
    user: Option<(u32, u32, Vec<u32>)>,
    no_rlimits: bool,
    namespaces: Vec<LinuxNamespaceType>,
    mounts: Option<Vec<Mount>>,
    resources: Option<LinuxResources>,
    cgroups_path: Option<String>,
}

impl ContainerSpec {
    /// A container with its root at `root` running `args`, `PATH=/bin`.
    pub fn new(root: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self {
            root: root.into(),
            args: args.iter().map(ToString::to_string).collect(),
            env: vec!["PATH=/bin".to_owned()],
            cwd: None,
            hostname: None,
            version: None,
            user: None,
            no_rlimits: false,
            namespaces: Vec::new(),
            mounts: None,
            resources: None,
            cgroups_path: None,
        }
    }

    /// Adds `KEY=VALUE` to the environment.
    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_owned());
        self
    }

    /// The process's working dir.
    pub fn cwd(mut self, cwd: &str) -> Self {
        self.cwd = Some(cwd.to_owned());
        self
    }

    /// The container's hostname.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_owned());
        self
    }

    /// The spec's `ociVersion`.
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(version.to_owned());
        self
    }

    /// Runs the process as `uid`:`gid` with `additional_gids`.
    pub fn user(mut self, uid: u32, gid: u32, additional_gids: &[u32]) -> Self {
        self.user = Some((uid, gid, additional_gids.to_vec()));
        self
    }

    /// No rlimits (instead of `oci-spec`'s default `RLIMIT_NOFILE` 1024).
    pub fn no_rlimits(mut self) -> Self {
        self.no_rlimits = true;
        self
    }

    /// New mount, pid, uts and ipc namespaces ([`ISOLATED`]).
    pub fn isolated(mut self) -> Self {
        self.namespaces = ISOLATED.to_vec();
        self
    }

    /// No mounts at all (instead of `oci-spec`'s default mounts); the
    /// mounts added after stay.
    pub fn without_default_mounts(mut self) -> Self {
        self.mounts.get_or_insert_with(Vec::new);
        self
    }

    /// Adds a mount; the first one replaces `oci-spec`'s default mounts.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.get_or_insert_with(Vec::new).push(mount);
        self
    }

    /// Adds a `proc` mount at `/proc`.
    pub fn proc_mount(self) -> Self {
        self.mount(
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .expect("a proc mount"),
        )
    }

    /// Adds a tmpfs at `destination` with `options`.
    pub fn tmpfs(self, destination: &str, options: &[&str]) -> Self {
        let mut mount = MountBuilder::default()
            .destination(destination)
            .typ("tmpfs")
            .source("tmpfs");
        if !options.is_empty() {
            mount = mount.options(options.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        self.mount(mount.build().expect("a tmpfs mount"))
    }

    /// Adds a bind mount of the host's `source` at `destination`.
    pub fn bind(self, source: &Path, destination: &str, options: &[&str]) -> Self {
        self.mount(
            MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(source)
                .options(options.iter().map(ToString::to_string).collect::<Vec<_>>())
                .build()
                .expect("a bind mount"),
        )
    }

    /// The container's resources (`linux.resources`).
    pub fn resources(mut self, resources: LinuxResources) -> Self {
        self.resources = Some(resources);
        self
    }

    /// The container's cgroup (`linux.cgroupsPath`): a cgroupfs path or a
    /// systemd `slice:prefix:name`.
    pub fn cgroups_path(mut self, path: &str) -> Self {
        self.cgroups_path = Some(path.to_owned());
        self
    }

    /// The spec.
    pub fn build(self) -> Spec {
        let mut process = ProcessBuilder::default().args(self.args).env(self.env);
        if let Some(cwd) = self.cwd {
            process = process.cwd(cwd);
        }
        if let Some((uid, gid, additional)) = self.user {
            let mut user = UserBuilder::default().uid(uid).gid(gid);
            if !additional.is_empty() {
                user = user.additional_gids(additional);
            }
            process = process.user(user.build().expect("a user"));
        }
        if self.no_rlimits {
            process = process.rlimits(vec![]);
        }
        let mut spec = SpecBuilder::default()
            .root(
                RootBuilder::default()
                    .path(self.root)
                    .build()
                    .expect("a root"),
            )
            .process(process.build().expect("a process"));
        if let Some(version) = self.version {
            spec = spec.version(version);
        }
        if let Some(hostname) = self.hostname {
            spec = spec.hostname(hostname);
        }
        if let Some(mounts) = self.mounts {
            spec = spec.mounts(mounts);
        }
        if !self.namespaces.is_empty() || self.resources.is_some() || self.cgroups_path.is_some() {
            let mut linux = LinuxBuilder::default();
            if !self.namespaces.is_empty() {
                let namespaces = self
                    .namespaces
                    .into_iter()
                    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("namespaces");
                linux = linux.namespaces(namespaces);
            }
            if let Some(resources) = self.resources {
                linux = linux.resources(resources);
            }
            if let Some(path) = self.cgroups_path {
                linux = linux.cgroups_path(path);
            }
            spec = spec.linux(linux.build().expect("a linux section"));
        }
        spec.build().expect("a spec")
    }

    /// Writes the spec as `bundle/config.json` (creating `bundle`) and
    /// returns the bundle dir.
    pub fn save_bundle(self, bundle: &Path) -> PathBuf {
        std::fs::create_dir_all(bundle)
            .unwrap_or_else(|e| panic!("creating bundle {}: {e}", bundle.display()));
        self.build()
            .save(bundle.join("config.json"))
            .unwrap_or_else(|e| panic!("writing {}/config.json: {e}", bundle.display()));
        bundle.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_has_what_was_asked_and_defaults_elsewhere() {
        let spec = ContainerSpec::new("/r", &["echo", "hi"])
            .env("A=b c")
            .cwd("/work")
            .hostname("box")
            .user(1000, 1001, &[7])
            .no_rlimits()
            .isolated()
            .proc_mount()
            .tmpfs("/dev", &["nosuid"])
            .build();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref(), Some(&["echo".into(), "hi".into()][..]));
        assert_eq!(
            p.env().as_deref(),
            Some(&["PATH=/bin".into(), "A=b c".into()][..])
        );
        assert_eq!(p.cwd(), Path::new("/work"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[7][..]));
        assert_eq!(p.rlimits().as_deref(), Some(&[][..]));
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("/r"));
        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(dests, [PathBuf::from("/proc"), PathBuf::from("/dev")]);
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert_eq!(ns.len(), 4);

        let bare = ContainerSpec::new("/r", &["true"])
            .without_default_mounts()
            .build();
        assert_eq!(bare.mounts().as_deref(), Some(&[][..]));

        // Unset fields keep oci-spec's defaults.
        let plain = ContainerSpec::new("/r", &["true"]).build();
        let default = Spec::default();
        assert_eq!(plain.mounts(), default.mounts());
        assert_eq!(plain.hostname(), default.hostname());
        assert_eq!(
            plain.process().as_ref().unwrap().rlimits(),
            default.process().as_ref().unwrap().rlimits()
        );
    }

    #[test]
    fn a_bundle_holds_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = ContainerSpec::new("rootfs", &["true"]).save_bundle(&dir.path().join("b"));
        let spec = Spec::load(bundle.join("config.json")).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }
}
