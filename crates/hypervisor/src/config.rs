//! What a VM is made of: [`HypervisorConfig`] and its validation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::device::{Device, ShareBackend};
use crate::error::ConfigError;
use crate::kernel_params::{KernelParams, KernelParamsBuilder};
use crate::process::ProcessLifetime;

/// Name of the virtio-serial port of the agent channel (the guest looks it
/// up in `/sys/class/virtio-ports/*/name`).
pub const AGENT_CHANNEL_NAME: &str = "agent.channel.0";
/// Less memory than this and the Debian kernel plus an initramfs do not boot.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
pub const SUN_PATH_MAX: usize = 107;
/// vCPU limit of the q35 machine with the default x2APIC-less CPU model.
pub const MAX_VCPUS: u32 = 255;
/// Most virtio-serial agent ports a VM gets.
pub const MAX_AGENT_PORTS: u32 = 16;
/// Longest name or id accepted: [`vc_types::MAX_ID_LEN`], so that every
/// valid sandbox id is a valid VM name.
pub const MAX_NAME_LEN: usize = vc_types::MAX_ID_LEN;

/// Which accelerator runs the guest's CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// KVM when it can run a stock guest kernel, else TCG.
    #[default]
    Auto,
    /// KVM, or an error when the host cannot do it.
    Kvm,
    /// TCG (software emulation, multi-threaded).
    Tcg,
}

/// How the agent in the guest is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentChannel {
    /// A virtio-serial port named [`AGENT_CHANNEL_NAME`]; QEMU listens on
    /// `agent.sock` in the runtime dir.
    #[default]
    VirtioSerial,
    /// vhost-vsock with this guest CID; the agent listens on `port`.
    Vsock {
        /// Guest context id (>= 3, unique on the host).
        guest_cid: u32,
        /// The agent's vsock port.
        port: u32,
    },
}

/// The name the guest sees for agent port `index` (`agent.channel.<index>`).
pub fn agent_port_name(index: u32) -> String {
    format!("agent.channel.{index}")
}

/// vCPU counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuConfig {
    /// vCPUs at boot.
    pub boot: u32,
    /// vCPUs the VM can grow to with hot-plug.
    pub max: u32,
}

/// Guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// MiB at boot.
    pub boot_mib: u64,
    /// MiB the VM can grow to with hot-plug (>= boot).
    pub max_mib: u64,
    /// Back guest memory with a shared memfd, as vhost-user devices
    /// (virtio-fs) need.
    pub shared: bool,
}

/// A root filesystem image given to the guest as a read-only disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootImage {
    /// The image file.
    pub path: PathBuf,
    /// Its filesystem (`ext4`, `erofs`), for `rootfstype=`.
    pub fs_type: String,
}

/// Everything needed to start one VM, whatever the backend.
///
/// Build one with [`HypervisorConfig::new`] and adjust the public fields;
/// [`validate`](Self::validate) checks it (backends validate before
/// starting, too). What only one backend understands lives in that
/// backend's options (e.g. [`QemuOptions`](crate::QemuOptions)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorConfig {
    /// VM name (the sandbox id): the VMM's process name, log context.
    pub name: String,
    /// Uncompressed kernel (`vmlinux` with a PVH entry).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Root filesystem image (read-only disk), instead of or besides the initrd.
    pub image: Option<RootImage>,
    /// The guest kernel command line (see [`KernelParamsBuilder`]).
    pub kernel_params: KernelParams,
    /// vCPUs.
    pub vcpus: VcpuConfig,
    /// Memory.
    pub memory: MemoryConfig,
    /// Accelerator.
    pub accelerator: Accelerator,
    /// The agent channel.
    pub agent_channel: AgentChannel,
    /// Per-VM dir for sockets and logs (created if missing; the backend
    /// removes what it created there when the VM stops).
    pub runtime_dir: PathBuf,
    /// Devices present from boot.
    pub devices: Vec<Device>,
    /// virtio-serial agent ports (`agent.channel.0` to `agent.channel.<n-1>`,
    /// sockets [`agent_sockets`](Self::agent_sockets)): one per host
    /// process talking to the agent at the same time, since a QEMU socket
    /// chardev serves one client at a time. At least 1.
    pub agent_ports: u32,
    /// Whether the VMM dies with the process that starts it (the default)
    /// or outlives it until stopped, to be attached to from later
    /// processes (see [`ProcessLifetime`]).
    pub lifetime: ProcessLifetime,
    /// Keep the console and VMM logs in the runtime dir after stop.
    pub keep_logs: bool,
    /// Limit for each command on the VMM's control channel (QMP for QEMU).
    pub control_timeout: Duration,
    /// `cgroup.procs` files the VMM joins before it runs, so that what it
    /// uses from its first instruction is charged there (a process's
    /// memory stays charged where it was touched when the process moves
    /// later): e.g. the sandbox's memory cgroup, for guest RAM charged to
    /// the pod.
    #[serde(default)]
    pub spawn_cgroups: Vec<PathBuf>,
}

impl HypervisorConfig {
    /// A config with defaults: 1 vCPU, 512 MiB, automatic accelerator,
    /// the virtio-serial agent channel with 4 ports, a VMM that dies with
    /// its creator, and the base kernel parameters.
    pub fn new(
        name: impl Into<String>,
        kernel: impl Into<PathBuf>,
        runtime_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            kernel: kernel.into(),
            initrd: None,
            image: None,
            kernel_params: KernelParamsBuilder::new().build(),
            vcpus: VcpuConfig { boot: 1, max: 1 },
            memory: MemoryConfig {
                boot_mib: 512,
                max_mib: 512,
                shared: false,
            },
            accelerator: Accelerator::Auto,
            agent_channel: AgentChannel::VirtioSerial,
            runtime_dir: runtime_dir.into(),
            devices: Vec::new(),
            agent_ports: 4,
            lifetime: ProcessLifetime::DiesWithOwner,
            keep_logs: false,
            control_timeout: Duration::from_secs(10),
            spawn_cgroups: Vec::new(),
        }
    }

    /// Sets the initrd.
    pub fn with_initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// The serial console socket (QEMU also logs it to [`console_log`](Self::console_log)).
    pub fn console_socket(&self) -> PathBuf {
        self.runtime_dir.join("console.sock")
    }

    /// The guest console log.
    pub fn console_log(&self) -> PathBuf {
        self.runtime_dir.join("console.log")
    }

    /// The agent channel's first socket (virtio-serial port
    /// [`AGENT_CHANNEL_NAME`]).
    pub fn agent_socket(&self) -> PathBuf {
        self.runtime_dir.join("agent.sock")
    }

    /// Every agent port's socket, port 0 first: `agent.sock`, then
    /// `agent-1.sock`, ... (virtio-serial only; empty for vsock).
    pub fn agent_sockets(&self) -> Vec<PathBuf> {
        if self.agent_channel != AgentChannel::VirtioSerial {
            return Vec::new();
        }
        (0..self.agent_ports.max(1))
            .map(|i| match i {
                0 => self.agent_socket(),
                i => self.runtime_dir.join(format!("agent-{i}.sock")),
            })
            .collect()
    }

    /// Checks the config: files exist, counts and sizes are sane, names
    /// are safe for a VMM's command line, socket paths fit `sun_path`.
    /// Backends check the sockets of their own control channel, and what
    /// their machine can hold.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("VM name", &self.name)?;
        if self.agent_ports == 0 || self.agent_ports > MAX_AGENT_PORTS {
            return Err(ConfigError::AgentPorts {
                ports: self.agent_ports,
                max: MAX_AGENT_PORTS,
            });
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelNotFound {
                path: self.kernel.clone(),
            });
        }
        match (&self.initrd, &self.image) {
            (None, None) => return Err(ConfigError::NoBootMedia),
            (Some(initrd), _) if !initrd.is_file() => {
                return Err(ConfigError::InitrdNotFound {
                    path: initrd.clone(),
                });
            }
            (_, Some(image)) if !image.path.is_file() => {
                return Err(ConfigError::ImageNotFound {
                    path: image.path.clone(),
                });
            }
            _ => {}
        }
        if self.vcpus.boot == 0 {
            return Err(ConfigError::ZeroVcpus);
        }
        if self.vcpus.max < self.vcpus.boot || self.vcpus.max > MAX_VCPUS {
            return Err(ConfigError::InvalidVcpus {
                boot: self.vcpus.boot,
                max: self.vcpus.max,
                limit: MAX_VCPUS,
            });
        }
        if self.memory.boot_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.memory.boot_mib,
                min: MIN_MEMORY_MIB,
            });
        }
        if self.memory.max_mib < self.memory.boot_mib {
            return Err(ConfigError::MaxMemoryBelowBoot {
                boot: self.memory.boot_mib,
                max: self.memory.max_mib,
            });
        }
        if !self.runtime_dir.is_absolute() {
            return Err(ConfigError::RuntimeDirNotAbsolute {
                path: self.runtime_dir.clone(),
            });
        }
        let mut sockets = vec![self.console_socket()];
        sockets.extend(self.agent_sockets());
        let mut ids = HashSet::new();
        for device in &self.devices {
            check_device(device)?;
            if !ids.insert(device.id()) {
                return Err(ConfigError::DuplicateDeviceId {
                    id: device.id().to_owned(),
                });
            }
            match device {
                Device::Serial(port) => sockets.push(port.socket.clone()),
                Device::SharedDir(share) => {
                    if let ShareBackend::VirtioFs { socket, .. } = &share.backend {
                        if !self.memory.shared {
                            return Err(ConfigError::VirtioFsNeedsSharedMemory {
                                id: share.id.clone(),
                            });
                        }
                        sockets.push(socket.clone());
                    }
                }
                _ => {}
            }
        }
        for socket in &sockets {
            check_socket_path(socket)?;
        }
        Ok(())
    }
}

/// Checks one device's fields (names, paths); shared by cold- and hot-plug.
pub(crate) fn check_device(device: &Device) -> Result<(), ConfigError> {
    check_name("device id", device.id())?;
    let missing = |path: &Path| ConfigError::DevicePathNotFound {
        id: device.id().to_owned(),
        path: path.to_owned(),
    };
    match device {
        Device::Block(block) => {
            if !block.path.exists() {
                return Err(missing(&block.path));
            }
            if let Some(serial) = &block.serial {
                check_name("disk serial", serial)?;
            }
        }
        Device::SharedDir(share) => {
            check_name("mount tag", &share.mount_tag)?;
            if let ShareBackend::NineP { host_path, .. } = &share.backend
                && !host_path.is_dir()
            {
                return Err(missing(host_path));
            }
        }
        Device::Serial(port) => {
            check_name("serial port name", &port.name)?;
            check_socket_path(&port.socket)?;
        }
        Device::Network(net) => {
            // IFNAMSIZ is 16 with the NUL.
            if net.tap.is_empty() || net.tap.len() > 15 || !net.tap.chars().all(is_name_char) {
                return Err(ConfigError::InvalidName {
                    what: "tap name",
                    value: net.tap.clone(),
                    reason: "1 to 15 characters of [A-Za-z0-9._-]",
                });
            }
            if let Some(netns) = &net.netns
                && !netns.exists()
            {
                return Err(missing(netns));
            }
        }
        Device::Vfio(vfio) => {
            let valid = vfio.host_bdf.len() == 12
                && vfio.host_bdf.chars().enumerate().all(|(i, c)| {
                    matches!(i, 4 | 7) && c == ':' || i == 10 && c == '.' || c.is_ascii_hexdigit()
                });
            if !valid {
                return Err(ConfigError::InvalidName {
                    what: "PCI address",
                    value: vfio.host_bdf.clone(),
                    reason: "expected DDDD:BB:SS.F",
                });
            }
        }
        Device::Vsock(vsock) => {
            if vsock.guest_cid < 3 {
                return Err(ConfigError::InvalidName {
                    what: "vsock guest CID",
                    value: vsock.guest_cid.to_string(),
                    reason: "CIDs 0-2 are reserved",
                });
            }
        }
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Names end up inside QEMU option strings (`id=...,name=...`), where `,`
/// and `=` would change the meaning: allow a safe set only.
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 76 bytes"));
    }
    if !value.chars().all(is_name_char) {
        return Err(invalid("only [A-Za-z0-9._-] allowed"));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit"));
    }
    Ok(())
}

/// Checks that `path` fits `sun_path`.
pub fn check_socket_path(path: &Path) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(ConfigError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{BlockDevice, SerialPort, SharedDir};

    struct Fixture {
        _dir: tempfile::TempDir,
        config: HypervisorConfig,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let initrd = dir.path().join("initramfs.cpio");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        let config =
            HypervisorConfig::new("vm-1", kernel, dir.path().join("run")).with_initrd(initrd);
        Fixture { _dir: dir, config }
    }

    #[test]
    fn defaults_are_valid() {
        fixture().config.validate().unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let f = fixture();
        let mut c = f.config.clone();
        c.kernel = "/nonexistent/vmlinux".into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::KernelNotFound {
                path: "/nonexistent/vmlinux".into()
            })
        );
        let mut c = f.config.clone();
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InitrdNotFound { .. })
        ));
        let mut c = f.config.clone();
        c.initrd = None;
        assert_eq!(c.validate(), Err(ConfigError::NoBootMedia));
    }

    #[test]
    fn cpu_and_memory_limits() {
        let f = fixture();
        let mut c = f.config.clone();
        c.vcpus = VcpuConfig { boot: 0, max: 0 };
        assert_eq!(c.validate(), Err(ConfigError::ZeroVcpus));
        c.vcpus = VcpuConfig { boot: 2, max: 1 };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidVcpus {
                boot: 2,
                max: 1,
                ..
            })
        ));
        c.vcpus = VcpuConfig { boot: 1, max: 1000 };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidVcpus { .. })
        ));
        let mut c = f.config.clone();
        c.memory.boot_mib = 64;
        c.memory.max_mib = 64;
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemoryTooSmall {
                mib: 64,
                min: MIN_MEMORY_MIB
            })
        );
        let mut c = f.config.clone();
        c.memory.max_mib = 256;
        assert_eq!(
            c.validate(),
            Err(ConfigError::MaxMemoryBelowBoot {
                boot: 512,
                max: 256
            })
        );
    }

    #[test]
    fn socket_paths_must_fit_sun_path() {
        let f = fixture();
        let mut c = f.config.clone();
        c.runtime_dir = PathBuf::from(format!("/run/{}", "x".repeat(100)));
        let err = c.validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::SocketPathTooLong { len, max: SUN_PATH_MAX, .. } if *len > SUN_PATH_MAX),
            "{err}"
        );
        // 107 bytes fit, 108 do not.
        assert!(check_socket_path(Path::new(&format!("/{}", "a".repeat(106)))).is_ok());
        assert!(check_socket_path(Path::new(&format!("/{}", "a".repeat(107)))).is_err());
        let mut c = f.config.clone();
        c.runtime_dir = "relative/run".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RuntimeDirNotAbsolute { .. })
        ));
    }

    #[test]
    fn names_and_devices() {
        let f = fixture();
        for bad in ["", "a,b", "a=b", "-x", "a b", &"x".repeat(MAX_NAME_LEN + 1)] {
            let mut c = f.config.clone();
            c.name = bad.to_owned();
            assert!(
                matches!(c.validate(), Err(ConfigError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        let disk = f.config.kernel.clone();
        let mut c = f.config.clone();
        c.devices = vec![
            Device::Block(BlockDevice::new("d0", &disk)),
            Device::Block(BlockDevice::new("d0", &disk)),
        ];
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateDeviceId { id: "d0".into() })
        );
        c.devices = vec![Device::Block(BlockDevice::new("d0", "/nonexistent.img"))];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DevicePathNotFound { .. })
        ));
        c.devices = vec![Device::SharedDir(SharedDir {
            id: "fs".into(),
            mount_tag: "tag".into(),
            backend: ShareBackend::VirtioFs {
                socket: "/run/vfs.sock".into(),
                queue_size: 1024,
            },
        })];
        assert_eq!(
            c.validate(),
            Err(ConfigError::VirtioFsNeedsSharedMemory { id: "fs".into() })
        );
        c.memory.shared = true;
        c.validate().unwrap();
        c.devices = vec![Device::Serial(SerialPort {
            id: "s".into(),
            name: "port,evil".into(),
            socket: "/run/s.sock".into(),
        })];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidName {
                what: "serial port name",
                ..
            })
        ));
    }

    #[test]
    fn every_valid_sandbox_id_is_a_valid_vm_name() {
        let f = fixture();
        let longest: vc_types::SandboxId = "s".repeat(vc_types::MAX_ID_LEN).parse().unwrap();
        for id in [longest.as_str(), "ab", "0.x_y-z"] {
            let id: vc_types::SandboxId = id.parse().unwrap();
            let mut c = f.config.clone();
            c.name = id.to_string();
            c.validate().unwrap();
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = fixture().config;
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<HypervisorConfig>(&json).unwrap(), c);
    }
}
