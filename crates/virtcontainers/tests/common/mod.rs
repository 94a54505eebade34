//! What the end-to-end test files share: a sandbox test's environment
//! (its directories, the guest image, the host as it was) and small
//! helpers.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use tokio::io::AsyncReadExt;
use vc_guest_image::GuestImage;
use vc_test_support::{
    ContainerSpec, HostSnapshot, assert_unchanged_since_matching, require_sandbox_host,
    shared_busybox_rootfs, unique, unmount_under,
};
use virtcontainers::{
    CgroupsConfig, ContainerConfig, ContainerId, FsShareConfig, FsShareKind, Paths, SandboxConfig,
    SandboxId, VmConfig,
};

/// A logger that drops everything.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A container id.
pub fn cid(id: &str) -> ContainerId {
    id.parse().unwrap()
}

/// One sandbox's test: its id, its temporary directory (state, runtime
/// and share roots under it), the guest image, and the host as it was.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub id: SandboxId,
    pub image: GuestImage,
    before: HostSnapshot,
}

impl Env {
    pub fn new(tag: &str) -> Self {
        let image = require_sandbox_host();
        Env {
            before: HostSnapshot::take(),
            dir: tempfile::Builder::new()
                .prefix("vce2e")
                .tempdir_in("/tmp")
                .unwrap(),
            id: unique(tag).parse().unwrap(),
            image,
        }
    }

    pub fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    /// A busybox container running `args` in its own mount, pid, uts and
    /// ipc namespaces, with `/proc`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> ContainerConfig {
        self.bundle_of(name, ContainerSpec::new(shared_busybox_rootfs(), args))
    }

    /// Like [`Env::bundle`], from `spec` as a test built it.
    pub fn bundle_of(&self, name: &str, spec: ContainerSpec) -> ContainerConfig {
        let bundle = spec
            .hostname(name)
            .cwd("/")
            .without_default_mounts()
            .proc_mount()
            .isolated()
            .save_bundle(&self.dir.path().join("bundles").join(name));
        ContainerConfig::from_bundle(cid(name), &bundle).unwrap()
    }

    pub fn config(&self, share: FsShareKind, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let mut config = SandboxConfig::new(
            self.id.clone(),
            VmConfig::new(&self.image.vmlinux, &self.image.initramfs),
        );
        config.paths = self.paths();
        config.cgroups = Some(CgroupsConfig::default());
        config.fs_share = FsShareConfig {
            kind: share,
            virtiofsd: None,
        };
        config.containers = containers;
        config
    }

    /// Nothing of this sandbox is left on the host: no state, runtime or
    /// share directory, and nothing naming it or its directory among the
    /// host's cgroups, mounts, loop devices and QEMU/virtiofsd processes.
    pub fn assert_clean(&self) {
        let p = self.paths();
        for d in [
            p.state_root.join(self.id.as_str()),
            p.shared_root.join(self.id.as_str()),
            p.runtime_root.join(self.id.as_str()),
        ] {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert_unchanged_since_matching(&self.before, &[self.id.as_str(), &dir]);
    }
}

impl Drop for Env {
    /// A failed test may leave its sandbox: reclaim it, then unmount what
    /// is left under the temporary directory before it is removed, or the
    /// removal would recurse into the shared rootfs.
    fn drop(&mut self) {
        if self.paths().state_root.join(self.id.as_str()).exists() {
            let (paths, id) = (self.paths(), self.id.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(virtcontainers::reclaim(&paths, &id, logger()))
            })
            .join();
        }
        unmount_under(self.dir.path());
    }
}

/// Reads a stream to its end.
pub async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    s
}
