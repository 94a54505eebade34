//! Preconditions: a test that needs root, QEMU, a loop device, ... calls
//! one of these first. A host that lacks something FAILS the test with a
//! message naming every missing piece and how to get it; nothing here
//! ever lets a test pass by skipping.

use std::path::{Path, PathBuf};

use vc_guest_image::{GuestImage, KernelPackage};
use vc_mountinfo::MountInfo;

use crate::image::guest_image_dir;

/// One thing a test needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (cgroupfs writes, mounts, namespaces, VMs).
    Root,
    /// QEMU at [`vc_hypervisor::DEFAULT_QEMU_BINARY`].
    Qemu,
    /// A static busybox at [`vc_guest_image::rootfs::DEFAULT_BUSYBOX`].
    Busybox,
    /// The Debian kernel package the guest images are built from.
    GuestKernel,
    /// The guest image `make guest-image` builds (the static agent as
    /// `/init`) in [`guest_image_dir`].
    GuestImage,
    /// `/dev/net/tun` (tap NICs).
    Tun,
    /// `/dev/loop-control` (loop devices).
    Loop,
    /// A filesystem the host kernel has registered (`/proc/filesystems`).
    Filesystem(&'static str),
    /// A program on `PATH` (or in `/sbin`, `/usr/sbin`), with the Debian
    /// package it comes in.
    Program {
        /// The program's file name.
        name: &'static str,
        /// The Debian package that installs it.
        package: &'static str,
    },
    /// A cgroup v1 controller mounted read-write.
    CgroupV1(&'static str),
    /// A read-write cgroup2 mount.
    Cgroup2,
    /// Debian's CNI plugins (`bridge`, `host-local`) in
    /// [`CNI_PLUGIN_DIR`](crate::CNI_PLUGIN_DIR).
    CniPlugins,
}

/// What a network test needs: root, `/dev/net/tun`, the CNI plugins,
/// `ip` and `tc` (iproute2), `nsenter` (util-linux).
pub const NETWORK_HOST: &[Need] = &[
    Need::Root,
    Need::Tun,
    Need::CniPlugins,
    Need::Program {
        name: "ip",
        package: "iproute2",
    },
    Need::Program {
        name: "tc",
        package: "iproute2",
    },
    Need::Program {
        name: "nsenter",
        package: "util-linux",
    },
];

/// What every VM test needs: root, QEMU, busybox (the test inits and
/// container rootfs), the kernel package the images are built from, and
/// `/dev/net/tun`.
pub const VM_HOST: &[Need] = &[
    Need::Root,
    Need::Qemu,
    Need::Busybox,
    Need::GuestKernel,
    Need::Tun,
];

/// What a test of EROFS layers on loop devices under an overlay needs.
pub const EROFS_HOST: &[Need] = &[
    Need::Root,
    Need::Program {
        name: "mkfs.erofs",
        package: "erofs-utils",
    },
    Need::Loop,
    Need::Filesystem("erofs"),
    Need::Filesystem("overlay"),
];

impl Need {
    /// `None` when the host has it, else what is missing and how to get it.
    pub fn missing(&self) -> Option<String> {
        match *self {
            Need::Root => (!nix::unistd::geteuid().is_root())
                .then(|| "root (run the tests as root, e.g. `sudo make test`)".to_owned()),
            Need::Qemu => file_missing(
                vc_hypervisor::DEFAULT_QEMU_BINARY,
                "apt-get install qemu-system-x86",
            ),
            Need::Busybox => file_missing(
                vc_guest_image::rootfs::DEFAULT_BUSYBOX,
                "apt-get install busybox-static",
            ),
            Need::GuestKernel => KernelPackage::find_installed()
                .err()
                .map(|e| format!("a guest kernel ({e}; apt-get install linux-image-amd64)")),
            Need::GuestImage => GuestImage::open(&guest_image_dir()).err().map(|e| {
                format!(
                    "the guest image in {} ({e}; run `make guest-image`)",
                    guest_image_dir().display()
                )
            }),
            Need::Tun => file_missing("/dev/net/tun", "modprobe tun"),
            Need::Loop => file_missing("/dev/loop-control", "modprobe loop"),
            Need::Filesystem(fs) => (!kernel_has_filesystem(fs))
                .then(|| format!("{fs} in the host kernel (/proc/filesystems; modprobe {fs})")),
            Need::Program { name, package } => {
                (!on_path(name)).then(|| format!("{name} on PATH (apt-get install {package})"))
            }
            Need::CgroupV1(controller) => cgroup_v1_missing(controller),
            Need::CniPlugins => ["bridge", "host-local"]
                .iter()
                .any(|p| !Path::new(crate::CNI_PLUGIN_DIR).join(p).exists())
                .then(|| {
                    format!(
                        "the CNI plugins bridge and host-local in {} (apt-get install containernetworking-plugins)",
                        crate::CNI_PLUGIN_DIR
                    )
                }),
            Need::Cgroup2 => cgroup2_mount()
                .is_none()
                .then(|| "a read-write cgroup2 mount (e.g. /sys/fs/cgroup/unified)".to_owned()),
        }
    }
}

/// Fails the calling test unless the host has every one of `needs`,
/// naming each missing piece.
pub fn require(needs: &[Need]) {
    let mut missing: Vec<String> = Vec::new();
    for need in needs {
        if let Some(m) = need.missing()
            && !missing.contains(&m)
        {
            missing.push(m);
        }
    }
    if missing.is_empty() {
        return;
    }
    let who = match std::thread::current().name() {
        Some("main") | None => "this program".to_owned(),
        Some(test) => format!("test `{test}`"),
    };
    panic!(
        "{who} cannot run on this host; it needs: {} (scripts/install-prereqs.sh installs the packages)",
        missing.join("; ")
    );
}

/// Fails unless the test runs as root.
pub fn require_root() {
    require(&[Need::Root]);
}

/// Fails unless QEMU is installed where the SDK looks for it.
pub fn require_qemu() {
    require(&[Need::Qemu]);
}

/// Fails unless a static busybox is installed.
pub fn require_busybox() {
    require(&[Need::Busybox]);
}

/// Fails unless the Debian kernel package is installed; returns it.
pub fn require_guest_kernel() -> KernelPackage {
    require(&[Need::GuestKernel]);
    KernelPackage::find_installed().expect("checked just above")
}

/// Fails unless `make guest-image` has built the agent image; returns it
/// (`vmlinux` and `initramfs.cpio` in [`guest_image_dir`]).
pub fn require_guest_image() -> GuestImage {
    require(&[Need::GuestImage]);
    GuestImage::open(&guest_image_dir()).expect("checked just above")
}

/// Fails unless the host can boot test VMs ([`VM_HOST`]).
pub fn require_vm_host() {
    require(VM_HOST);
}

/// Fails unless the host can run sandboxes end to end: [`VM_HOST`] and
/// the image of `make guest-image`, which it returns.
pub fn require_sandbox_host() -> GuestImage {
    require(&[VM_HOST, &[Need::GuestImage]].concat());
    GuestImage::open(&guest_image_dir()).expect("checked just above")
}

/// Fails unless the host can make loop devices (root and the loop module).
pub fn require_loop() {
    require(&[Need::Root, Need::Loop]);
}

/// Fails unless the host can make EROFS layers on loop devices and stack
/// them with overlayfs ([`EROFS_HOST`]).
pub fn require_erofs() {
    require(EROFS_HOST);
}

/// Fails unless `program` is on `PATH`; `package` is what installs it.
pub fn require_program(program: &'static str, package: &'static str) {
    require(&[Need::Program {
        name: program,
        package,
    }]);
}

/// Fails unless the test runs as root and each of `controllers` is a
/// read-write cgroup v1 hierarchy.
pub fn require_cgroup_v1(controllers: &[&'static str]) {
    let needs: Vec<Need> = std::iter::once(Need::Root)
        .chain(controllers.iter().map(|&c| Need::CgroupV1(c)))
        .collect();
    require(&needs);
}

/// Fails unless the test runs as root on a host with a read-write cgroup2
/// mount; returns its mount point.
pub fn require_cgroup2() -> PathBuf {
    require(&[Need::Root, Need::Cgroup2]);
    cgroup2_mount().expect("checked just above")
}

fn file_missing(path: &str, how: &str) -> Option<String> {
    (!Path::new(path).exists()).then(|| format!("{path} ({how})"))
}

fn kernel_has_filesystem(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

/// Whether `program` is on `PATH` or in the sbin dirs a root shell has.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join(program).is_file())
}

fn mount_table() -> Vec<MountInfo> {
    vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO)).unwrap_or_default()
}

fn read_write(m: &MountInfo) -> bool {
    m.mount_options.iter().any(|o| o == "rw")
}

fn cgroup_v1_missing(controller: &str) -> Option<String> {
    let table = mount_table();
    let mount = table
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller));
    match mount {
        None => Some(format!(
            "the cgroup v1 {controller} controller mounted (e.g. at /sys/fs/cgroup/{controller})"
        )),
        Some(m) if !read_write(m) => Some(format!(
            "the cgroup v1 {controller} controller read-write ({} is mounted read-only)",
            m.mount_point.display()
        )),
        Some(_) => None,
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    mount_table()
        .into_iter()
        .find(|m| m.fs_type == "cgroup2" && read_write(m))
        .map(|m| m.mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_need_fails_naming_it_and_how_to_get_it() {
        let need = Need::Program {
            name: "vc-no-such-program",
            package: "vc-no-such-package",
        };
        let missing = need.missing().unwrap();
        assert!(missing.contains("vc-no-such-program"), "{missing}");
        assert!(
            missing.contains("apt-get install vc-no-such-package"),
            "{missing}"
        );

        let panic = std::panic::catch_unwind(|| require(&[need, Need::Filesystem("vcnofs")]))
            .expect_err("a missing need must fail the test");
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("vc-no-such-program"), "{message}");
        assert!(message.contains("vcnofs in the host kernel"), "{message}");
        assert!(
            message.contains("a_missing_need_fails_naming_it_and_how_to_get_it"),
            "names the test: {message}"
        );
    }

    #[test]
    fn present_needs_pass() {
        require(&[Need::Program {
            name: "sh",
            package: "dash",
        }]);
        require(&[Need::Filesystem("proc")]);
        assert_eq!(Need::Filesystem("proc").missing(), None);
    }
}
