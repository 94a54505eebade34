//! The QEMU command line for a config (pure: no I/O, unit-tested).
//!
//! `-device` and `-blockdev` take JSON, which needs no escaping; the
//! options that only take QEMU's `key=value,...` syntax (`-chardev`,
//! `-fsdev`, `-netdev`, `-object`) get their values' commas doubled.

use std::path::Path;

use serde_json::{Value, json};

use crate::accel::ResolvedAccelerator;
use crate::config::{AgentChannel, HypervisorConfig, agent_port_name};
use crate::device::{
    BlockDevice, BlockFormat, Device, NetworkDevice, SerialPort, ShareBackend, SharedDir,
};
use crate::error::ConfigError;
use crate::kernel_params::KernelParams;
use crate::qemu::{QemuOptions, files, slots};

/// QEMU id of the virtio-serial controller.
pub const VIRTIO_SERIAL_ID: &str = "vserial0";
/// QEMU id of the root image disk.
pub const ROOT_IMAGE_ID: &str = "rootimg";

/// Doubles commas, QEMU's escape inside option values.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// A path as a UTF-8 string (QEMU's command line and JSON need one).
pub fn path_str(path: &Path) -> Result<&str, ConfigError> {
    path.to_str().ok_or_else(|| ConfigError::NonUtf8Path {
        path: path.to_owned(),
    })
}

fn pci_addr(slot: u8) -> String {
    format!("{slot:#04x}")
}

/// The kernel command line QEMU passes: the config's, plus `root=` for a
/// root image and, under TCG, `init_on_free=1`, each unless the config
/// sets it.
///
/// Why `init_on_free` under TCG: TCG write-protects every guest page that
/// holds translated code, so each store to such a page takes a slow path
/// until the page's last translation is gone. A guest that zeroes a page
/// when it reuses it (`clear_page`, one byte store at a time) then pays
/// that path thousands of times per page that once held code. Measured in
/// a pool VM after its warm-up container: 200 ms of `clear_page` before a
/// new container's first byte (45 ms with the flag, as in a fresh VM).
/// With `init_on_free` the guest zeroes pages as it frees them, when the
/// container that ran there ends, and an allocation writes nothing more.
/// KVM has no such path, so its command line is left alone.
pub fn kernel_params(config: &HypervisorConfig, accelerator: ResolvedAccelerator) -> KernelParams {
    let mut params = config.kernel_params.clone();
    if accelerator == ResolvedAccelerator::Tcg {
        params.set_default("init_on_free", Some("1"));
    }
    if let Some(image) = &config.image {
        params
            .set_default("root", Some("/dev/vda"))
            .set_default("rootfstype", Some(image.fs_type.as_str()))
            .set_default("ro", None::<&str>);
    }
    params
}

/// The `-blockdev` JSON of a disk: a protocol node (file or host device)
/// under a format node named `node`.
pub fn blockdev_json(block: &BlockDevice, node: &str) -> Result<Value, ConfigError> {
    let driver = if is_block_device(&block.path) {
        "host_device"
    } else {
        "file"
    };
    let format = match block.format {
        BlockFormat::Raw => "raw",
        BlockFormat::Qcow2 => "qcow2",
    };
    Ok(json!({
        "driver": format,
        "node-name": node,
        "read-only": block.read_only,
        "cache": { "direct": block.direct_io, "no-flush": false },
        "file": {
            "driver": driver,
            "filename": path_str(&block.path)?,
            "aio": "threads",
            "cache": { "direct": block.direct_io, "no-flush": false },
        },
    }))
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// The `-device` JSON of a virtio-blk disk on `bus` at `addr`.
pub fn block_device_json(block: &BlockDevice, node: &str, bus: &str, addr: u8) -> Value {
    json!({
        "driver": "virtio-blk-pci",
        "id": block.id,
        "drive": node,
        "serial": block.serial.as_deref().unwrap_or(&block.id),
        "bus": bus,
        "addr": pci_addr(addr),
    })
}

/// The block node name of disk `id`.
pub fn block_node(id: &str) -> String {
    format!("drive-{id}")
}

/// The chardev id of device `id`.
pub fn chardev_id(id: &str) -> String {
    format!("chr-{id}")
}

/// The netdev id of device `id`.
pub fn netdev_id(id: &str) -> String {
    format!("net-{id}")
}

/// The fsdev id of device `id`.
pub fn fsdev_id(id: &str) -> String {
    format!("fsdev-{id}")
}

/// The `-device` JSON of a virtio-net NIC.
pub fn net_device_json(net: &NetworkDevice, bus: &str, addr: u8) -> Value {
    json!({
        "driver": "virtio-net-pci",
        "id": net.id,
        "netdev": netdev_id(&net.id),
        "mac": net.mac.to_string(),
        // No iPXE option ROM: the kernel is booted directly.
        "romfile": "",
        "bus": bus,
        "addr": pci_addr(addr),
    })
}

/// The `-device` JSON of a virtio-serial port.
pub fn serial_port_json(port: &SerialPort) -> Value {
    json!({
        "driver": "virtserialport",
        "id": port.id,
        "bus": format!("{VIRTIO_SERIAL_ID}.0"),
        "chardev": chardev_id(&port.id),
        "name": port.name,
    })
}

/// The `-device` JSON of a virtio-fs share.
pub fn virtio_fs_json(share: &SharedDir, queue_size: u16, bus: &str, addr: u8) -> Value {
    json!({
        "driver": "vhost-user-fs-pci",
        "id": share.id,
        "chardev": chardev_id(&share.id),
        "tag": share.mount_tag,
        "queue-size": queue_size,
        "bus": bus,
        "addr": pci_addr(addr),
    })
}

fn device_arg(args: &mut Vec<String>, json: Value) {
    args.push("-device".into());
    args.push(json.to_string());
}

/// Appends the arguments of one cold-plugged device at root-bus `slot`
/// (ignored for serial ports).
/// The cold-plugged NICs, in the order their taps' files are passed to
/// QEMU: the n-th has fd [`FIRST_PASSED_FD`](crate::process::FIRST_PASSED_FD)` + n`.
pub fn cold_nics(config: &HypervisorConfig) -> Vec<&NetworkDevice> {
    config
        .devices
        .iter()
        .filter_map(|d| match d {
            Device::Network(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn cold_device(
    args: &mut Vec<String>,
    device: &Device,
    slot: u8,
    tap_fd: std::os::fd::RawFd,
) -> Result<(), ConfigError> {
    const ROOT_BUS: &str = "pcie.0";
    match device {
        Device::Block(block) => {
            let node = block_node(&block.id);
            args.push("-blockdev".into());
            args.push(blockdev_json(block, &node)?.to_string());
            device_arg(args, block_device_json(block, &node, ROOT_BUS, slot));
        }
        Device::SharedDir(share) => match &share.backend {
            ShareBackend::NineP {
                host_path,
                read_only,
            } => {
                args.push("-fsdev".into());
                args.push(format!(
                    "local,id={},path={},security_model=none,multidevs=remap{}",
                    fsdev_id(&share.id),
                    escape(path_str(host_path)?),
                    if *read_only { ",readonly=on" } else { "" }
                ));
                device_arg(
                    args,
                    json!({
                        "driver": "virtio-9p-pci",
                        "id": share.id,
                        "fsdev": fsdev_id(&share.id),
                        "mount_tag": share.mount_tag,
                        "bus": ROOT_BUS,
                        "addr": pci_addr(slot),
                    }),
                );
            }
            ShareBackend::VirtioFs { socket, queue_size } => {
                args.push("-chardev".into());
                args.push(format!(
                    "socket,id={},path={}",
                    chardev_id(&share.id),
                    escape(path_str(socket)?)
                ));
                device_arg(args, virtio_fs_json(share, *queue_size, ROOT_BUS, slot));
            }
        },
        Device::Serial(port) => {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id={},path={},server=on,wait=off",
                chardev_id(&port.id),
                escape(path_str(&port.socket)?)
            ));
            device_arg(args, serial_port_json(port));
        }
        Device::Network(net) => {
            // The tap's file is passed to QEMU (the hypervisor opened it in
            // the tap's namespace): fd `tap_fd`. No vhost: a host without
            // /dev/vhost-net makes QEMU 7.2 abort on vhost=on.
            args.push("-netdev".into());
            args.push(format!(
                "tap,id={},fd={tap_fd},vhost=off",
                netdev_id(&net.id),
            ));
            device_arg(args, net_device_json(net, ROOT_BUS, slot));
        }
        Device::Vfio(vfio) => device_arg(
            args,
            json!({ "driver": "vfio-pci", "id": vfio.id, "host": vfio.host_bdf, "bus": ROOT_BUS, "addr": pci_addr(slot) }),
        ),
        Device::Vsock(vsock) => device_arg(
            args,
            json!({ "driver": "vhost-vsock-pci", "id": vsock.id, "guest-cid": vsock.guest_cid, "bus": ROOT_BUS, "addr": pci_addr(slot) }),
        ),
    }
    Ok(())
}

/// The cold-plugged devices with their root-bus slots (`None` for serial
/// ports), root image first.
pub fn cold_layout(config: &HypervisorConfig) -> Vec<(Device, Option<u8>)> {
    let mut nth = 0;
    let mut next_slot = || {
        let slot = slots::cold_slot(nth);
        nth += 1;
        slot
    };
    let mut layout = Vec::new();
    if let Some(image) = &config.image {
        let mut disk = BlockDevice::new(ROOT_IMAGE_ID, &image.path);
        disk.read_only = true;
        layout.push((Device::Block(disk), Some(next_slot())));
    }
    if let AgentChannel::Vsock { guest_cid, .. } = config.agent_channel {
        let vsock = crate::device::VsockDevice {
            id: "vsock0".into(),
            guest_cid,
        };
        layout.push((Device::Vsock(vsock), Some(next_slot())));
    }
    for device in &config.devices {
        let slot = device.is_pci().then(&mut next_slot);
        layout.push((device.clone(), slot));
    }
    layout
}

/// The full argument list (without the binary).
pub fn build(
    config: &HypervisorConfig,
    options: &QemuOptions,
    accelerator: ResolvedAccelerator,
    firmware: Option<&Path>,
) -> Result<Vec<String>, ConfigError> {
    let mut args: Vec<String> = Vec::new();
    machine_args(&mut args, config, options, accelerator, firmware)?;
    boot_args(&mut args, config, accelerator)?;
    control_args(&mut args, config)?;
    let mut tap_fd = crate::process::FIRST_PASSED_FD;
    for (device, slot) in cold_layout(config) {
        cold_device(&mut args, &device, slot.unwrap_or(0), tap_fd)?;
        if matches!(device, Device::Network(_)) {
            tap_fd += 1;
        }
    }
    hotplug_port_args(&mut args, options);
    Ok(args)
}

fn push(args: &mut Vec<String>, items: &[&str]) {
    args.extend(items.iter().map(|s| (*s).to_owned()));
}

/// The machine, accelerator, CPUs, memory and firmware.
fn machine_args(
    args: &mut Vec<String>,
    config: &HypervisorConfig,
    options: &QemuOptions,
    accelerator: ResolvedAccelerator,
    firmware: Option<&Path>,
) -> Result<(), ConfigError> {
    push(
        args,
        &["-name", &format!("{},debug-threads=on", config.name)],
    );
    let mut machine = format!(
        "{},sata=off,smbus=off,vmport=off",
        options.machine.qemu_name()
    );
    let memory_backend = memory_backend(config)?;
    if memory_backend.is_some() {
        machine.push_str(",memory-backend=mem0");
    }
    push(args, &["-machine", &machine]);
    match accelerator {
        ResolvedAccelerator::Kvm => push(args, &["-accel", "kvm", "-cpu", "host"]),
        // `max` offers the guest every feature TCG emulates (x86-64-v2 and
        // up), which some container userlands require.
        ResolvedAccelerator::Tcg => push(args, &["-accel", "tcg,thread=multi", "-cpu", "max"]),
    }
    push(
        args,
        &[
            "-smp",
            &format!("{},maxcpus={}", config.vcpus.boot, config.vcpus.max),
        ],
    );
    let mut memory = format!("{}M", config.memory.boot_mib);
    if config.memory.max_mib > config.memory.boot_mib {
        memory.push_str(&format!(
            ",slots={},maxmem={}M",
            super::MEMORY_SLOTS,
            config.memory.max_mib
        ));
    }
    push(args, &["-m", &memory]);
    if let Some(backend) = memory_backend {
        push(args, &["-object", &backend]);
    }
    if let Some(firmware) = firmware {
        push(args, &["-bios", path_str(firmware)?]);
    }
    push(
        args,
        &[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ],
    );
    Ok(())
}

/// The `-object` of guest RAM when it is not QEMU's anonymous memory: a
/// memory file (VM templating: `share=on` writes the template, `share=off`
/// maps it copy-on-write), or a shared memfd (virtio-fs).
pub fn memory_backend(config: &HypervisorConfig) -> Result<Option<String>, ConfigError> {
    let size = config.memory.boot_mib;
    Ok(match &config.memory_file {
        Some(file) => Some(format!(
            "memory-backend-file,id=mem0,size={size}M,mem-path={},share={}",
            escape(path_str(&file.path)?),
            if file.shared { "on" } else { "off" }
        )),
        None if config.memory.shared => Some(format!(
            "memory-backend-memfd,id=mem0,size={size}M,share=on"
        )),
        None => None,
    })
}

/// The kernel, initrd and command line.
fn boot_args(
    args: &mut Vec<String>,
    config: &HypervisorConfig,
    accelerator: ResolvedAccelerator,
) -> Result<(), ConfigError> {
    push(args, &["-kernel", path_str(&config.kernel)?]);
    if let Some(initrd) = &config.initrd {
        push(args, &["-initrd", path_str(initrd)?]);
    }
    push(
        args,
        &["-append", &kernel_params(config, accelerator).to_string()],
    );
    Ok(())
}

/// QMP, the logged console, and the agent's virtio-serial ports.
fn control_args(args: &mut Vec<String>, config: &HypervisorConfig) -> Result<(), ConfigError> {
    push(
        args,
        &[
            "-chardev",
            &format!(
                "socket,id=qmp,path={},server=on,wait=off",
                escape(path_str(&files::qmp_socket(config))?)
            ),
            "-mon",
            "chardev=qmp,mode=control",
        ],
    );
    // The console is logged to a file whether or not anyone is connected.
    push(
        args,
        &[
            "-chardev",
            &format!(
                "socket,id=console,path={},server=on,wait=off,logfile={}",
                escape(path_str(&config.console_socket())?),
                escape(path_str(&config.console_log())?)
            ),
            "-serial",
            "chardev:console",
        ],
    );
    device_arg(
        args,
        json!({ "driver": "virtio-serial-pci", "id": VIRTIO_SERIAL_ID, "bus": "pcie.0", "addr": pci_addr(slots::VIRTIO_SERIAL_SLOT) }),
    );
    for (index, socket) in (0u32..).zip(config.agent_sockets()) {
        let (chardev, port) = match index {
            0 => ("agent".to_owned(), "agent-port".to_owned()),
            i => (format!("agent-{i}"), format!("agent-port-{i}")),
        };
        args.push("-chardev".into());
        args.push(format!(
            "socket,id={chardev},path={},server=on,wait=off",
            escape(path_str(&socket)?)
        ));
        device_arg(
            args,
            json!({ "driver": "virtserialport", "id": port, "bus": format!("{VIRTIO_SERIAL_ID}.0"), "chardev": chardev, "name": agent_port_name(index) }),
        );
    }
    Ok(())
}

/// The PCIe root ports hot-plugged devices go on.
fn hotplug_port_args(args: &mut Vec<String>, options: &QemuOptions) {
    for index in 0..options.hotplug_ports {
        device_arg(
            args,
            json!({
                "driver": "pcie-root-port",
                "id": slots::port_id(index),
                "bus": "pcie.0",
                "addr": pci_addr(slots::port_slot(index)),
                "chassis": 1,
                "slot": index,
                // virtio devices behind a PCIe port are modern-only: no I/O BARs.
                "io-reserve": 0,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RootImage;
    use crate::device::{MacAddress, VfioDevice};

    fn config() -> HypervisorConfig {
        HypervisorConfig::new("vm-1", "/img/vmlinux", "/run/vc/vm-1")
            .with_initrd("/img/initramfs.cpio")
    }

    fn options() -> QemuOptions {
        QemuOptions {
            hotplug_ports: 2,
            ..QemuOptions::default()
        }
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn devices(args: &[String]) -> Vec<Value> {
        value_after(args, "-device")
            .into_iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn base_line_boots_pvh_without_defaults_or_reboot() {
        let args = build(
            &config(),
            &options(),
            ResolvedAccelerator::Tcg,
            Some(Path::new("/fw/qboot.rom")),
        )
        .unwrap();
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert_eq!(value_after(&args, "-name"), ["vm-1,debug-threads=on"]);
        assert_eq!(
            value_after(&args, "-machine"),
            ["q35,sata=off,smbus=off,vmport=off"]
        );
        assert_eq!(value_after(&args, "-accel"), ["tcg,thread=multi"]);
        assert_eq!(value_after(&args, "-kernel"), ["/img/vmlinux"]);
        assert_eq!(value_after(&args, "-initrd"), ["/img/initramfs.cpio"]);
        assert_eq!(value_after(&args, "-bios"), ["/fw/qboot.rom"]);
        assert_eq!(value_after(&args, "-smp"), ["1,maxcpus=1"]);
        assert_eq!(value_after(&args, "-m"), ["512M"]);
        assert_eq!(
            value_after(&args, "-append"),
            [format!("{} init_on_free=1", config().kernel_params)]
        );
        assert_eq!(value_after(&args, "-mon"), ["chardev=qmp,mode=control"]);
        let chardevs = value_after(&args, "-chardev");
        assert!(chardevs.contains(&"socket,id=qmp,path=/run/vc/vm-1/qmp.sock,server=on,wait=off"));
        assert!(
            chardevs.contains(&"socket,id=agent,path=/run/vc/vm-1/agent.sock,server=on,wait=off")
        );
        assert!(chardevs.iter().any(|c| c.starts_with("socket,id=console,")
            && c.contains("logfile=/run/vc/vm-1/console.log")));
    }

    #[test]
    fn tcg_guests_zero_pages_on_free_unless_the_config_says_otherwise() {
        let append = |c: &HypervisorConfig, accel| {
            let args = build(c, &options(), accel, None).unwrap();
            KernelParams::parse(value_after(&args, "-append")[0]).unwrap()
        };
        let tcg = append(&config(), ResolvedAccelerator::Tcg);
        assert_eq!(tcg.get("init_on_free"), Some(Some("1")));
        let kvm = append(&config(), ResolvedAccelerator::Kvm);
        assert_eq!(kvm.get("init_on_free"), None, "KVM has no slow path");
        let mut own = config();
        own.kernel_params.push("init_on_free", Some("0"));
        let tcg = append(&own, ResolvedAccelerator::Tcg);
        assert_eq!(tcg.get_all("init_on_free").collect::<Vec<_>>(), [Some("0")]);
    }

    #[test]
    fn agent_port_and_hotplug_ports() {
        let args = build(&config(), &options(), ResolvedAccelerator::Kvm, None).unwrap();
        assert_eq!(value_after(&args, "-accel"), ["kvm"]);
        assert_eq!(value_after(&args, "-cpu"), ["host"]);
        assert!(value_after(&args, "-bios").is_empty());
        let devs = devices(&args);
        let port = devs
            .iter()
            .find(|d| d["driver"] == "virtserialport")
            .unwrap();
        assert_eq!(port["name"], "agent.channel.0");
        assert_eq!(port["bus"], "vserial0.0");
        let ports: Vec<_> = devs
            .iter()
            .filter(|d| d["driver"] == "pcie-root-port")
            .collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0]["id"], "hp0");
        assert_eq!(ports[0]["addr"], "0x10");
        assert_eq!(ports[1]["addr"], "0x11");
        assert_ne!(ports[0]["slot"], ports[1]["slot"]);
    }

    #[test]
    fn one_socket_and_port_per_agent_port() {
        let mut c = config();
        c.agent_ports = 3;
        let args = build(&c, &options(), ResolvedAccelerator::Kvm, None).unwrap();
        let names: Vec<String> = devices(&args)
            .iter()
            .filter(|d| d["driver"] == "virtserialport")
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            ["agent.channel.0", "agent.channel.1", "agent.channel.2"]
        );
        let chardevs = value_after(&args, "-chardev");
        for (i, socket) in c.agent_sockets().iter().enumerate() {
            assert!(
                chardevs
                    .iter()
                    .any(|d| d.contains(&format!("path={}", socket.display()))),
                "port {i}: {chardevs:?}"
            );
        }
        assert!(c.agent_sockets()[2].ends_with("agent-2.sock"));
        c.agent_ports = 0;
        assert!(matches!(
            c.validate(),
            Err(crate::ConfigError::AgentPorts { ports: 0, .. })
        ));
    }

    #[test]
    fn cold_devices_get_consecutive_slots_and_escaped_paths() {
        let mut c = config();
        c.image = Some(RootImage {
            path: "/img/root.erofs".into(),
            fs_type: "erofs".into(),
        });
        c.memory.shared = true;
        c.devices = vec![
            Device::Block(BlockDevice::new("disk0", "/img/a,b.img")),
            Device::SharedDir(SharedDir {
                id: "share0".into(),
                mount_tag: "rootfs".into(),
                backend: ShareBackend::NineP {
                    host_path: "/srv/a,b".into(),
                    read_only: true,
                },
            }),
            Device::Serial(SerialPort {
                id: "log0".into(),
                name: "log.0".into(),
                socket: "/run/vc/vm-1/log.sock".into(),
            }),
            Device::Network(NetworkDevice {
                id: "eth0".into(),
                tap: "tap0".into(),
                mac: MacAddress([0x52, 0x54, 0, 1, 2, 3]),
                netns: Some("/run/netns/pod".into()),
            }),
            Device::Vfio(VfioDevice {
                id: "gpu0".into(),
                host_bdf: "0000:3b:00.0".into(),
            }),
        ];
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        let devs = devices(&args);
        let addr = |id: &str| devs.iter().find(|d| d["id"] == id).unwrap()["addr"].clone();
        assert_eq!(addr(ROOT_IMAGE_ID), "0x03");
        assert_eq!(addr("disk0"), "0x04");
        assert_eq!(addr("share0"), "0x05");
        assert_eq!(addr("eth0"), "0x06");
        assert_eq!(addr("gpu0"), "0x07");
        let log = devs.iter().find(|d| d["id"] == "log0").unwrap();
        assert_eq!(log["name"], "log.0");
        assert!(log.get("addr").is_none());
        assert!(value_after(&args, "-fsdev")[0].contains("path=/srv/a,,b,"));
        assert!(value_after(&args, "-fsdev")[0].ends_with(",readonly=on"));
        let blockdevs: Vec<Value> = value_after(&args, "-blockdev")
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(blockdevs[1]["file"]["filename"], "/img/a,b.img");
        assert_eq!(blockdevs[0]["read-only"], true);
        assert_eq!(
            value_after(&args, "-netdev"),
            ["tap,id=net-eth0,fd=6,vhost=off"]
        );
        assert_eq!(
            value_after(&args, "-machine"),
            ["q35,sata=off,smbus=off,vmport=off,memory-backend=mem0"]
        );
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-memfd,id=mem0,size=512M,share=on"]
        );
        let append = value_after(&args, "-append")[0];
        assert!(
            append.ends_with("root=/dev/vda rootfstype=erofs ro"),
            "{append}"
        );
    }

    #[test]
    fn a_memory_file_backs_guest_ram_shared_or_private() {
        let mut c = config();
        c.memory_file = Some(crate::config::MemoryFile {
            path: "/run/tmpl,1/memory".into(),
            shared: true,
        });
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        assert_eq!(
            value_after(&args, "-object"),
            ["memory-backend-file,id=mem0,size=512M,mem-path=/run/tmpl,,1/memory,share=on"]
        );
        assert!(value_after(&args, "-machine")[0].ends_with(",memory-backend=mem0"));
        c.memory_file.as_mut().unwrap().shared = false;
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        assert!(value_after(&args, "-object")[0].ends_with(",share=off"));
        c.memory_file = None;
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        assert!(value_after(&args, "-object").is_empty());
        assert!(!value_after(&args, "-machine")[0].contains("memory-backend"));
    }

    #[test]
    fn memory_hotplug_and_vcpus() {
        let mut c = config();
        c.vcpus.boot = 2;
        c.vcpus.max = 4;
        c.memory.max_mib = 2048;
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        assert_eq!(value_after(&args, "-smp"), ["2,maxcpus=4"]);
        assert_eq!(value_after(&args, "-m"), ["512M,slots=8,maxmem=2048M"]);
    }

    #[test]
    fn vsock_agent_channel_replaces_the_serial_port() {
        let mut c = config();
        c.agent_channel = AgentChannel::Vsock {
            guest_cid: 5,
            port: 1024,
        };
        let args = build(&c, &options(), ResolvedAccelerator::Tcg, None).unwrap();
        let devs = devices(&args);
        assert!(!devs.iter().any(|d| d["driver"] == "virtserialport"));
        let vsock = devs
            .iter()
            .find(|d| d["driver"] == "vhost-vsock-pci")
            .unwrap();
        assert_eq!(vsock["guest-cid"], 5);
    }

    #[test]
    fn non_utf8_paths_are_rejected() {
        use std::os::unix::ffi::OsStrExt;
        let mut c = config();
        c.kernel = std::ffi::OsStr::from_bytes(b"/img/\xff").into();
        assert!(matches!(
            build(&c, &options(), ResolvedAccelerator::Tcg, None),
            Err(ConfigError::NonUtf8Path { .. })
        ));
    }
}
