//! `containerd-shim-vc-v2`: a containerd shim v2 (runtime type
//! `io.containerd.vc.v2`) that runs each pod, or each lone container, in
//! a lightweight VM, built on the public API of the `virtcontainers` SDK
//! alone — the SDK's flagship embedder, and how containerd and Kubernetes
//! (through a `RuntimeClass`) run containers in VMs.
//!
//! # What containerd sees
//!
//! - `start` ([`launch`]) prints the address of the shim serving the
//!   task's sandbox, starting one (a daemon: this binary without an
//!   action) unless the task is a container of a pod whose shim runs;
//! - the daemon ([`daemon`]) serves containerd's **task API v2**
//!   ([`service`]): Create, Start, State, Delete, Pids, Pause, Resume,
//!   Kill, Exec, ResizePty, CloseIO, Update, Wait, Stats, Connect,
//!   Shutdown; Checkpoint answers "not implemented"; and publishes the
//!   task events ([`events`]);
//! - `delete` ([`cleanup`]) frees what a dead shim left (its sandbox is
//!   reclaimed from the SDK's persisted state).
//!
//! The pod's network namespace ([`netns`]) is CRI's, or one the SDK makes
//! for `ctr run`; a process of the shim's parked in it gives containerd a
//! pid to run CNI on (`ctr run --cni`), and Start brings what CNI made
//! into the VM.
//!
//! A pod ([`pod`]: the CRI annotations) is one VM served by one shim; its
//! sandbox ("pause") container runs nothing in the guest. Stdio goes
//! through containerd's FIFOs ([`stdio`]), terminals included; stats are
//! cgroup v1 metrics in containerd's format ([`metrics`]). The TOML
//! configuration ([`config`]) follows Kata's `configuration.toml`;
//! `factory-init`, `factory-status` and `factory-destroy` ([`template`])
//! manage the VM template sandboxes are cloned from when `[factory]
//! enable_template` (as `kata-runtime factory` does).
//!
//! # Why the protocol is generated here
//!
//! containerd 1.6 (Debian 12's) speaks only task API **v2**. The Rust
//! `containerd-shim` crates serve v3 from 0.12 on; 0.11 serves v2 but
//! brings a second `ttrpc` and a second `oci-spec` into the build. The
//! workspace already generates the Kata agent protocol with
//! `ttrpc-codegen`, so this crate does the same for the handful of
//! containerd protos it needs ([`protocol`]: the v2 task service, the
//! task events, containerd's ttrpc events service, the runtime options
//! and cgroup v1 metrics), written with containerd's package, message
//! and field names and numbers: one ttrpc, one protobuf, one OCI spec
//! crate, and the exact protocol containerd 1.6 and 2.x accept.
//!
//! # Example
//!
//! The configuration a shim reads, turned into the SDK's sandbox config:
//!
//! ```
//! use containerd_shim_vc_v2::config;
//!
//! let config = config::parse(r#"
//!     [hypervisor.qemu]
//!     kernel = "/usr/share/virtcontainers/vmlinux"
//!     initrd = "/usr/share/virtcontainers/initramfs.cpio"
//!     default_memory = 512
//!     shared_fs = "virtio-9p"
//! "#)?;
//! let netns = virtcontainers::NetnsConfig::Path("/var/run/netns/cni-1".into());
//! let sandbox = config.sandbox("pod-1".parse()?, Vec::new(), None, netns.clone())?;
//! assert_eq!(sandbox.vm.default_memory_mib, 512);
//! assert_eq!(sandbox.network.netns, netns);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod args;
pub mod bundle;
pub mod cleanup;
pub mod config;
pub mod daemon;
pub mod error;
pub mod events;
pub mod launch;
pub mod metrics;
pub mod netns;
pub mod pod;
pub mod protocol;
pub mod rootfs;
pub mod service;
pub mod socket;
pub mod stdio;
pub mod template;
