//! Builds what a sandbox VM boots: an uncompressed kernel (`vmlinux`) for
//! PVH direct boot, and a cpio initramfs whose `/init` is the guest agent.
//!
//! Everything comes from packages the distribution ships: the kernel from
//! Debian's `linux-image-*-amd64` (see [`KernelPackage`]), unpacked from its
//! xz-compressed bzImage; the modules the guest needs, with their
//! dependencies resolved from each module's `.modinfo` `depends=` field
//! (the package carries no `modules.dep`); and the init binary you give.
//! Images are cached by a key over all inputs ([`ImageCache`]) and
//! published atomically, so concurrent builders and readers are safe.
//!
//! # The initramfs layout (a contract with the guest agent)
//!
//! | Path | What |
//! |------|------|
//! | `/init` | the init binary given to the builder, mode 0755; runs as PID 1 |
//! | `/dev/console` | char device 5:1, so PID 1 has stdio before devtmpfs is mounted |
//! | `/dev`, `/proc`, `/sys`, `/run`, `/tmp` | empty mount points |
//! | `/lib/modules/vc/<name>.ko` | the bundled modules, uncompressed, canonical names (`_`, not `-`) |
//! | `/lib/modules/vc/load-order` | the `.ko` file names, one per line, each after all its dependencies |
//! | extra files | wherever [`GuestImageBuilder::extra_file`] put them |
//!
//! Modules built into the kernel (`modules.builtin`) are not bundled. The
//! init loads the modules by reading `load-order` top to bottom and calling
//! `finit_module`/`insmod` on each file (no `modprobe`, no `modules.dep`).
//!
//! Conventions the init follows to talk to the host:
//! - the agent channel is a virtio-serial port named
//!   [`AGENT_CHANNEL_NAME`] (`agent.channel.0`); the guest finds its device
//!   by reading `/sys/class/virtio-ports/*/name` and opening `/dev/<port>`;
//! - kernel parameters with the `agent.` prefix (`agent.log=debug`) are for
//!   the init/agent, read from `/proc/cmdline`;
//! - the kernel console is the first serial port (`console=ttyS0`), which
//!   the host captures.
//!
//! # Example
//!
//! Assembling an initramfs in memory (what the builder does, minus the
//! kernel):
//!
//! ```
//! use vc_guest_image::{Initramfs, read_archive};
//!
//! let mut fs = Initramfs::new();
//! fs.file("/init", b"#!/bin/sh\necho hi\n".to_vec(), 0o755)?;
//! let bytes = fs.write_to(Vec::new())?;
//! let entries = read_archive(&bytes[..]).unwrap();
//! assert!(entries.iter().any(|e| e.name == "init" && e.mode == 0o100755));
//! # Ok::<(), vc_guest_image::Error>(())
//! ```
//!
//! Building (or reusing) a full image from the installed kernel:
//!
//! ```no_run
//! use vc_guest_image::{GuestImageBuilder, ImageCache, KernelPackage};
//!
//! let kernel = KernelPackage::find_installed()?;
//! let image = GuestImageBuilder::new(kernel, std::path::PathBuf::from("target/release/vc-guest-agent"))
//!     .extra_file("/bin/busybox", std::path::PathBuf::from("/bin/busybox"), 0o755)
//!     .build_cached(&ImageCache::in_target_dir())?;
//! println!("boot {} with {}", image.vmlinux.display(), image.initramfs.display());
//! # Ok::<(), vc_guest_image::Error>(())
//! ```
//!
//! The same from the command line:
//! `cargo run -p vc-guest-image -- --out DIR [--init PATH] [--module NAME]... [--file IMAGE_PATH=HOST_PATH[:MODE]]...`

mod builder;
mod cache;
mod error;
mod initramfs;
mod kernel;
pub mod modules;
pub mod rootfs;
pub mod vmlinux;

pub use builder::{
    ExtraFile, GuestImage, GuestImageBuilder, INITRAMFS_FILE, MANIFEST_FILE, Manifest, VMLINUX_FILE,
};
pub use cache::{CACHE_DIR_NAME, ImageCache, cargo_target_dir};
pub use error::{Error, Result};
pub use initramfs::{
    ArchivedEntry, Entry, EntryKind, FileSource, Initramfs, normalize_image_path, read_archive,
};
pub use kernel::{DEFAULT_BOOT_DIR, DEFAULT_MODULES_ROOT, KERNEL_PACKAGE, KernelPackage};
pub use modules::DEFAULT_MODULES;

/// Path of the init binary in the image.
pub const INIT_PATH: &str = "/init";
/// Dir of the bundled modules in the image.
pub const MODULES_DIR: &str = "/lib/modules/vc";
/// The load-order file: module file names, one per line, dependencies first.
pub const LOAD_ORDER_PATH: &str = "/lib/modules/vc/load-order";
/// Name of the virtio-serial port that carries the agent protocol.
pub const AGENT_CHANNEL_NAME: &str = "agent.channel.0";
