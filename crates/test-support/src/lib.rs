//! Test preconditions and fixtures shared by the tests and benches of
//! virtcontainers-rs (unpublished, a dev-dependency only).
//!
//! - **Preconditions** ([`require`], [`require_root`], [`require_vm_host`],
//!   [`require_sandbox_host`], [`require_erofs`], [`require_cgroup_v1`],
//!   ...): a host that lacks something fails the test with a message
//!   naming each missing piece and how to get it. Never a silent pass.
//! - **Guest images**: `make guest-image`'s ([`guest_image_dir`],
//!   [`require_guest_image`]), the static agent built fresh from this tree
//!   ([`agent_binary`], [`agent_image`]), and busybox images with a test
//!   init ([`busybox_image`], [`init_script`]) whose command server
//!   [`GuestShell`] talks to ([`ShellVm`] boots one and connects), also
//!   carrying a host executable with its libraries
//!   ([`busybox_image_with_files`], [`host_binary_files`]).
//! - **Containers**: busybox root filesystems ([`busybox_rootfs`],
//!   [`shared_busybox_rootfs`]) and OCI specs and bundles
//!   ([`ContainerSpec`]); with feature `agent`, requests and a client for
//!   the real agent in a VM (module `agent`).
//! - **Pod networks** as containerd makes them: CNI's `bridge` and
//!   `host-local` plugins run as binaries ([`CniBridge`]), and a
//!   namespace's links, qdiscs and filters for leak checks
//!   ([`netns_snapshot`]).
//! - **Fault injection**: [`QmpFaultProxy`] refuses chosen QMP commands
//!   in front of a real QEMU.
//! - **Host fixtures**: ids ([`unique`]), mounts and EROFS layers undone on
//!   drop ([`HostMounts`], [`make_layer`]), child processes
//!   ([`ChildGuard`]), and leak checks: what is left under a test's dir
//!   ([`leftovers_under`]) and a snapshot of everything the SDK can leave
//!   on the host ([`HostSnapshot`], [`assert_unchanged_since`]).
//! - **VM tests**: [`small_vm_config`] and [`small_vm_options`], one VM test at a time
//!   ([`vm_lock`]), [`runtime`], [`logger`], a log a test reads back
//!   ([`LogCapture`]), how busy a VM's threads are ([`busy_share`]); for the benches, their
//!   arguments ([`bench_args`]) and the bare QEMU baseline
//!   ([`time_bare_boot`]).
//!
//! ```no_run
//! use vc_test_support::{HostSnapshot, InitMode, assert_unchanged_since, busybox_image,
//!     require_vm_host, small_vm_config, small_vm_options, unique, vm_lock};
//!
//! require_vm_host();
//! let _one_vm_at_a_time = vm_lock();
//! let before = HostSnapshot::take();
//! let dir = tempfile::tempdir()?;
//! let image = busybox_image(InitMode::Serve, &[]);
//! let config = small_vm_config(&unique("boot"), image, &dir.path().join("run"));
//! let options = small_vm_options(2);
//! // ... boot `config` with vc_hypervisor::Qemu, talk to it with GuestShell ...
//! # drop((config, options));
//! assert_unchanged_since(&before);
//! # Ok::<(), std::io::Error>(())
//! ```

#[cfg(feature = "agent")]
pub mod agent;
mod bench;
mod cni;
mod host;
mod host_binary;
mod ids;
mod image;
mod init;
mod log_capture;
mod qmp_proxy;
mod require;
mod shell;
mod shell_vm;
mod snapshot;
mod spec;
mod vm;

pub use bench::{bench_args, spawn_bare_qemu, time_bare_boot, wait_ready_line};
pub use cni::{CNI_PLUGIN_DIR, CniAttachment, CniBridge, in_netns, netns_snapshot};
pub use host::{
    ChildGuard, HostMounts, leftovers_under, loop_devices, make_layer, mounts_under, run,
    unmount_under,
};
pub use host_binary::{HOST_BINARY_TOOLS, host_binary_files};
pub use ids::{ID_PREFIX, unique};
pub use image::{
    AGENT_TARGET, GUEST_IMAGE_DIR_NAME, agent_binary, agent_image, busybox_image,
    busybox_image_with_files, guest_image_dir, workspace_root,
};
pub use init::{END, InitMode, READY, SERVING, init_script};
pub use log_capture::{LogCapture, LogLine};
pub use qmp_proxy::QmpFaultProxy;
pub use require::{
    EROFS_HOST, NETWORK_HOST, Need, VM_HOST, on_path, require, require_busybox, require_cgroup_v1,
    require_cgroup2, require_erofs, require_guest_image, require_guest_kernel, require_loop,
    require_program, require_qemu, require_root, require_sandbox_host, require_vm_host,
};
pub use shell::{GuestShell, RUN_TIMEOUT};
pub use shell_vm::ShellVm;
pub use snapshot::{
    Change, HostSnapshot, RUN_VC, Resource, SETTLE, assert_unchanged_since,
    assert_unchanged_since_matching,
};
pub use spec::{ContainerSpec, ISOLATED, busybox_rootfs, shared_busybox_rootfs};
pub use vm::{
    SMALL_VM_MIB, busy_share, discard, logger, runtime, small_vm_config, small_vm_options, vm_lock,
    vm_lock_async,
};
