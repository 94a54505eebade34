//! The hypervisor layer of virtcontainers-rs: the [`Hypervisor`] trait,
//! its real backend [`Qemu`], the accelerator probe and the kernel
//! command-line builder.
//!
//! # Pieces
//!
//! - [`HypervisorConfig`] says what a VM is made of (kernel, initrd, vCPUs,
//!   memory, devices, runtime dir, ...), validated with typed
//!   [`ConfigError`]s before anything starts.
//! - [`Hypervisor`] and [`DeviceHotplug`] are the async, object-safe traits
//!   the upper layers program against (`Arc<dyn Hypervisor>`).
//! - [`Qemu`] runs `qemu-system-x86_64` (machine `q35`, PVH direct boot of an
//!   uncompressed `vmlinux`, `-nodefaults`, qboot firmware when installed)
//!   as a supervised process driven over QMP with the `qapi` crate; what
//!   only QEMU understands is in [`QemuOptions`]. Its state serializes
//!   ([`Hypervisor::save_state`], an opaque [`HypervisorState`]) so that
//!   another process can [`Qemu::attach`] to the running VM.
//! - [`process`] spawns the VMM and helpers so that a crash of their
//!   creator at any instant leaves nothing unrecorded (a write-ahead
//!   [`process::ProcessLedger`] in the runtime dir), lets them die with
//!   their owner or outlive it ([`process::ProcessLifetime`]), and makes
//!   their exit status readable by every process.
//! - [`accel`] picks KVM when it can run a stock guest, else TCG; a PVM host
//!   (`/sys/module/kvm_pvm`) counts as "cannot".
//! - [`KernelParamsBuilder`] assembles base parameters, systemd masks, debug and
//!   trace switches, `agent.*` parameters, user overrides.
//! - `testing::MockHypervisor` (feature `testing`) is a complete fake that
//!   records calls and fails any method on request.
//!
//! # Runtime needs
//!
//! The async methods run on tokio with I/O and time enabled
//! (`Builder::enable_all`). The runtime dir holds `qmp.sock`,
//! `console.sock` (the guest's serial console, also logged to
//! `console.log`), `agent.sock` (the agent channel), `qemu.log`
//! (QEMU's stderr) and the process ledger (`processes.jsonl`,
//! `exit-<pid>`); a stop removes them (logs are kept with `keep_logs`).
//!
//! # Example
//!
//! Building and checking a config (what runs before any process):
//!
//! ```
//! use vc_hypervisor::{ConfigError, HypervisorConfig, KernelParams, KernelParamsBuilder};
//!
//! let params = KernelParamsBuilder::new()
//!     .agent("log", "debug")
//!     .extra(KernelParams::parse("console=hvc0").unwrap())
//!     .build();
//! assert_eq!(params.get("console"), Some(Some("hvc0")));
//!
//! let mut config = HypervisorConfig::new("sandbox-1", "/nonexistent/vmlinux", "/run/vc/sandbox-1");
//! config.kernel_params = params;
//! assert!(matches!(config.validate(), Err(ConfigError::KernelNotFound { .. })));
//! ```
//!
//! Booting a VM (needs QEMU, a guest image and root for some devices):
//!
//! ```no_run
//! use std::time::Duration;
//! use vc_hypervisor::{
//!     BlockDevice, Device, DeviceHotplug, Hypervisor, HypervisorConfig, Qemu, QemuOptions,
//! };
//!
//! # async fn run() -> vc_hypervisor::Result<()> {
//! let logger = slog::Logger::root(slog::Discard, slog::o!());
//! let config = HypervisorConfig::new("sandbox-1", "/var/lib/vc/vmlinux", "/run/vc/sandbox-1")
//!     .with_initrd("/var/lib/vc/initramfs.cpio");
//! let vm = Qemu::new(config, QemuOptions::default(), logger)?;
//! vm.start(Duration::from_secs(30)).await?;
//! println!("vCPU threads: {:?}", vm.vcpu_threads().await?);
//! let disk = vm.hotplug(Device::Block(BlockDevice::new("disk1", "/var/lib/vc/disk.img"))).await?;
//! println!("the guest finds the disk at {:?}", disk.address);
//! vm.stop(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```

pub mod accel;
mod config;
mod device;
mod error;
mod hypervisor;
mod kernel_params;
pub mod process;
pub mod qemu;
pub mod tap;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{
    AGENT_CHANNEL_NAME, Accelerator, AgentChannel, HypervisorConfig, MAX_AGENT_PORTS, MAX_NAME_LEN,
    MAX_VCPUS, MIN_MEMORY_MIB, MemoryConfig, RootImage, SUN_PATH_MAX, VcpuConfig, agent_port_name,
    check_socket_path,
};
pub use device::{
    AttachedDevice, BlockDevice, BlockFormat, Device, DeviceKind, GuestAddress, MacAddress,
    NetworkDevice, PciPath, SerialPort, ShareBackend, SharedDir, VfioDevice, VsockDevice,
};
pub use error::{ConfigError, Error, KvmUnusable, Result};
pub use hypervisor::{
    AgentEndpoint, Capabilities, DeviceHotplug, ExitStatus, ExitWatch, Hypervisor, HypervisorState,
    VcpuThread, VmExit, VmResources, VmStatus,
};
pub use kernel_params::{
    AGENT_PREFIX, KernelParam, KernelParams, KernelParamsBuilder, SYSTEMD_MASKED_UNITS,
};
pub use process::{ProcessLifetime, ProcessRecord};
pub use qemu::{
    DEFAULT_QEMU_BINARY, Firmware, HotpluggedDimm, HotpluggedVcpu, MEMORY_SLOTS, MachineType,
    QBOOT_FIRMWARE, Qemu, QemuOptions, QemuOptionsError, QemuState,
};
/// "This host or backend cannot do that" (shared by every crate of the SDK).
pub use vc_types::Unsupported;
