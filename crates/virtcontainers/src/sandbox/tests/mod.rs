//! `create_sandbox`, `cleanup_container`, `fetch_sandbox` and `reclaim`
//! with a fake VM and agent, and everything else real: host cgroups on the
//! real cgroupfs, bind mounts, state files (root needed). This module holds
//! the fixture; each file beside it tests one operation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxResourcesBuilder, MountBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder,
};
use vc_agent_client::AgentMethod;
use vc_hypervisor::testing::Method;

use super::*;
use vc_test_support::{ChildGuard, require_root, unique, unmount_under};

mod cleanup;
mod create;
mod plan;
mod reclaim;
mod resize;
use crate::config::{
    CgroupHierarchy, CgroupsConfig, ContainerConfig, FsShareConfig, FsShareKind, Paths,
    SandboxConfig, VmConfig,
};
use crate::error::CreateStep;
use crate::state::{ContainerPhase, SandboxPhase};
use crate::testing::MockVmFactory;

pub(super) fn cid(id: &str) -> ContainerId {
    id.parse().unwrap()
}

pub(super) fn logger() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) id: SandboxId,
    pub(super) vmm: ChildGuard,
    pub(super) factory: Arc<MockVmFactory>,
}

impl Fixture {
    pub(super) fn new(tag: &str) -> Self {
        require_root();
        // A sleeping child stands in for the VMM (real cgroups place it).
        let vmm = ChildGuard::sleeper();
        let factory = Arc::new(MockVmFactory::new().with_processes(vmm.pid(), vec![vmm.pid()]));
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            id: unique(tag).parse().unwrap(),
            vmm,
            factory,
        }
    }

    /// `cleanup_container` of `container` in this fixture's sandbox.
    pub(super) async fn cleanup(
        &self,
        container: &str,
        force: bool,
    ) -> Result<CleanupOutcome, Error> {
        cleanup_container(
            &self.paths(),
            &self.id,
            &cid(container),
            force,
            self.factory.clone(),
            logger(),
        )
        .await
    }

    /// Kills the fake VMM and waits until it is dead (a zombie: this test
    /// process does not reap it until the fixture goes).
    pub(super) fn kill_vmm(&self) {
        let pid = self.vmm.pid();
        let start = crate::process::start_time(pid).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::process::is_alive(pid, start) {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGKILL not delivered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(super) fn paths(&self) -> Paths {
        Paths::under(self.dir.path())
    }

    pub(super) fn bundle(&self, name: &str, volume: Option<&Path>) -> ContainerConfig {
        let bundle = self.dir.path().join("bundles").join(name);
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::write(bundle.join("rootfs/bin/marker"), name).unwrap();
        let mut mounts = Vec::new();
        if let Some(v) = volume {
            mounts.push(
                MountBuilder::default()
                    .destination("/data")
                    .source(v)
                    .typ("bind")
                    .options(vec!["rbind".to_owned(), "ro".to_owned()])
                    .build()
                    .unwrap(),
            );
        }
        let cpu = LinuxCpuBuilder::default()
            .quota(50_000i64)
            .period(100_000u64)
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .root(RootBuilder::default().path("rootfs").build().unwrap())
            .process(
                ProcessBuilder::default()
                    .args(vec!["/bin/true".to_owned()])
                    .build()
                    .unwrap(),
            )
            .mounts(mounts)
            .linux(
                LinuxBuilder::default()
                    .resources(LinuxResourcesBuilder::default().cpu(cpu).build().unwrap())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        ContainerConfig {
            id: cid(name),
            bundle,
            spec,
            rootfs_block: None,
        }
    }

    pub(super) fn config(&self, containers: Vec<ContainerConfig>) -> SandboxConfig {
        let images = self.dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("vmlinux"), "").unwrap();
        std::fs::write(images.join("initrd"), "").unwrap();
        let mut config = SandboxConfig::new(
            self.id.clone(),
            VmConfig::new(images.join("vmlinux"), images.join("initrd")),
        );
        config.paths = self.paths();
        config.cgroups = Some(CgroupsConfig {
            cgroups_path: Some(format!("/{}-pod/{}", self.id, self.id)),
            ..CgroupsConfig::default()
        });
        config.fs_share = FsShareConfig {
            kind: FsShareKind::NineP,
            virtiofsd: None,
        };
        config.containers = containers;
        config.lock_timeout = Duration::from_secs(5);
        config
    }

    pub(super) fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let roots = vc_cgroups_host::CgroupRoots::discover().unwrap();
        let mut dirs = Vec::new();
        for (_, point) in roots.v1.iter() {
            for name in [
                format!("{}-pod", self.id),
                format!("virtcontainers_overhead/{}", self.id),
            ] {
                let d = point.join(name);
                if d.exists() {
                    dirs.push(d);
                }
            }
        }
        dirs
    }

    pub(super) fn mounts_under_dir(&self) -> Vec<PathBuf> {
        vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect()
    }

    /// Nothing of the sandbox is left on the host.
    pub(super) fn assert_clean(&self, context: &str) {
        let p = self.paths();
        for d in [
            p.state_root.join(self.id.as_str()),
            p.shared_root.join(self.id.as_str()),
            p.runtime_root.join(self.id.as_str()),
        ] {
            assert!(!d.exists(), "{context}: {} left behind", d.display());
        }
        assert_eq!(
            self.cgroup_dirs(),
            Vec::<PathBuf>::new(),
            "{context}: cgroups left behind"
        );
        assert_eq!(
            self.mounts_under_dir(),
            Vec::<PathBuf>::new(),
            "{context}: mounts left behind"
        );
    }
}

impl Drop for Fixture {
    /// A failed test may leave bind mounts under the temporary directory:
    /// unmount them before it is removed, or the removal would recurse into
    /// their sources.
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}
