//! What a VM must share with a template to be cloned from it: the
//! [`TemplateKey`], and which field differs when it does not match.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vc_hypervisor::{Accelerator, AgentChannel, Device, HypervisorConfig, QemuOptions};

use crate::error::Error;

/// How long `qemu --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A file as the key sees it: replaced or rewritten, it is another file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// The path.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its modification time, nanoseconds since the Epoch.
    pub modified_ns: i128,
    /// Its inode number (a file replaced by rename gets a new one).
    pub inode: u64,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(path).map_err(Error::host_io("read", path))?;
        Ok(FileIdentity {
            path: path.to_owned(),
            len: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        })
    }
}

/// Everything that must be the same in a template VM and a VM cloned from
/// it: the VMM (binary and version), the machine (type, firmware,
/// accelerator, vCPUs, memory, hot-plug ports), what was booted (kernel,
/// initrd, root image, command line), the agent channel, and the devices
/// present when the template was saved (the host paths a clone brings
/// itself, such as its 9p share's directory, left out).
///
/// A VM whose key differs boots cold; [`TemplateKey::first_difference`]
/// names the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    /// The QEMU binary.
    pub qemu: FileIdentity,
    /// What `qemu --version` prints first.
    pub qemu_version: String,
    /// The machine type.
    pub machine: String,
    /// The firmware, if QEMU gets one.
    pub firmware: Option<FileIdentity>,
    /// The accelerator asked for.
    pub accelerator: Accelerator,
    /// The kernel.
    pub kernel: FileIdentity,
    /// The initrd.
    pub initrd: Option<FileIdentity>,
    /// The root image and its filesystem.
    pub image: Option<(FileIdentity, String)>,
    /// The kernel command line.
    pub kernel_params: String,
    /// vCPUs at boot.
    pub vcpus: u32,
    /// vCPUs the VM can grow to.
    pub max_vcpus: u32,
    /// Memory at boot, MiB.
    pub memory_mib: u64,
    /// Memory the VM can grow to, MiB.
    pub max_memory_mib: u64,
    /// Whether guest RAM is asked to be shared (virtio-fs).
    pub shared_memory: bool,
    /// The agent channel.
    pub agent_channel: AgentChannel,
    /// The agent ports.
    pub agent_ports: u32,
    /// PCIe root ports for hot-plug.
    pub hotplug_ports: u32,
    /// The devices at boot, without the host paths each clone brings.
    pub devices: Vec<Value>,
}

/// A field in which a VM's key differs from the template's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The field (`memory_mib`, `kernel`, ...).
    pub field: String,
    /// The template's value.
    pub template: String,
    /// The VM's value.
    pub wanted: String,
}

impl TemplateKey {
    /// The key of a VM of `config` started by QEMU with `options`: reads
    /// the files' metadata and asks the QEMU binary its version (once per
    /// binary per process).
    pub async fn of(config: &HypervisorConfig, options: &QemuOptions) -> Result<Self, Error> {
        let qemu = FileIdentity::of(&options.binary)?;
        let version = qemu_version(&qemu).await?;
        Self::from_parts(config, options, qemu, version, FileIdentity::of)
    }

    /// [`of`](Self::of), to compare with `known` (a template's or a
    /// pool's key): when the QEMU binary is the very file `known` was made
    /// with (path, size, modification time and inode), its version is
    /// `known`'s, and QEMU is not run. Each `qemu --version` is a process
    /// start (about 20 ms here), paid by every process that clones (a
    /// shim per pod, a CLI per command).
    pub async fn of_compared_to(
        config: &HypervisorConfig,
        options: &QemuOptions,
        known: &TemplateKey,
    ) -> Result<Self, Error> {
        let qemu = FileIdentity::of(&options.binary)?;
        let version = match qemu == known.qemu {
            true => known.qemu_version.clone(),
            false => qemu_version(&qemu).await?,
        };
        Self::from_parts(config, options, qemu, version, FileIdentity::of)
    }

    /// The key from already known pieces (`identify` reads a file's
    /// identity): the pure part of [`of`](Self::of).
    pub fn from_parts(
        config: &HypervisorConfig,
        options: &QemuOptions,
        qemu: FileIdentity,
        qemu_version: String,
        identify: impl Fn(&Path) -> Result<FileIdentity, Error>,
    ) -> Result<Self, Error> {
        let firmware = options.firmware_path().map(|p| identify(&p)).transpose()?;
        let initrd = config.initrd.as_deref().map(&identify).transpose()?;
        let image = match &config.image {
            Some(image) => Some((identify(&image.path)?, image.fs_type.clone())),
            None => None,
        };
        Ok(TemplateKey {
            qemu,
            qemu_version,
            machine: options.machine.qemu_name().to_owned(),
            firmware,
            accelerator: config.accelerator,
            kernel: identify(&config.kernel)?,
            initrd,
            image,
            kernel_params: config.kernel_params.to_string(),
            vcpus: config.vcpus.boot,
            max_vcpus: config.vcpus.max,
            memory_mib: config.memory.boot_mib,
            max_memory_mib: config.memory.max_mib,
            shared_memory: config.memory.shared,
            agent_channel: config.agent_channel.clone(),
            agent_ports: config.agent_ports,
            hotplug_ports: options.hotplug_ports,
            devices: config.devices.iter().map(device_shape).collect(),
        })
    }

    /// The first field (in declaration order) where `wanted` differs
    /// from this template's key, `None` when they match.
    pub fn first_difference(&self, wanted: &TemplateKey) -> Option<KeyMismatch> {
        // Destructured whole, so that a new field cannot be left out.
        let TemplateKey {
            qemu,
            qemu_version,
            machine,
            firmware,
            accelerator,
            kernel,
            initrd,
            image,
            kernel_params,
            vcpus,
            max_vcpus,
            memory_mib,
            max_memory_mib,
            shared_memory,
            agent_channel,
            agent_ports,
            hotplug_ports,
            devices,
        } = self;
        let fields: [(&str, Value, Value); 18] = [
            ("qemu", json(qemu), json(&wanted.qemu)),
            (
                "qemu_version",
                json(qemu_version),
                json(&wanted.qemu_version),
            ),
            ("machine", json(machine), json(&wanted.machine)),
            ("firmware", json(firmware), json(&wanted.firmware)),
            ("accelerator", json(accelerator), json(&wanted.accelerator)),
            ("kernel", json(kernel), json(&wanted.kernel)),
            ("initrd", json(initrd), json(&wanted.initrd)),
            ("image", json(image), json(&wanted.image)),
            (
                "kernel_params",
                json(kernel_params),
                json(&wanted.kernel_params),
            ),
            ("vcpus", json(vcpus), json(&wanted.vcpus)),
            ("max_vcpus", json(max_vcpus), json(&wanted.max_vcpus)),
            ("memory_mib", json(memory_mib), json(&wanted.memory_mib)),
            (
                "max_memory_mib",
                json(max_memory_mib),
                json(&wanted.max_memory_mib),
            ),
            (
                "shared_memory",
                json(shared_memory),
                json(&wanted.shared_memory),
            ),
            (
                "agent_channel",
                json(agent_channel),
                json(&wanted.agent_channel),
            ),
            ("agent_ports", json(agent_ports), json(&wanted.agent_ports)),
            (
                "hotplug_ports",
                json(hotplug_ports),
                json(&wanted.hotplug_ports),
            ),
            ("devices", json(devices), json(&wanted.devices)),
        ];
        fields
            .into_iter()
            .find(|(_, ours, theirs)| ours != theirs)
            .map(|(field, ours, theirs)| KeyMismatch {
                field: field.to_owned(),
                template: ours.to_string(),
                wanted: theirs.to_string(),
            })
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A device as the template holds it: what the guest sees, without the
/// host paths a clone supplies itself (its 9p share's directory, the
/// sockets in its runtime directory).
pub fn device_shape(device: &Device) -> Value {
    let mut value = serde_json::to_value(device).unwrap_or(Value::Null);
    let clone_owned: &[&str] = match device {
        Device::SharedDir(_) => &["host_path", "socket"],
        Device::Serial(_) => &["socket"],
        _ => &[],
    };
    strip_fields(&mut value, clone_owned);
    value
}

fn strip_fields(value: &mut Value, names: &[&str]) {
    match value {
        Value::Object(map) => {
            for name in names {
                map.remove(*name);
            }
            map.values_mut().for_each(|v| strip_fields(v, names));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip_fields(v, names)),
        _ => {}
    }
}

/// The first line of `<qemu> --version`, cached per binary identity.
async fn qemu_version(qemu: &FileIdentity) -> Result<String, Error> {
    type Versions = HashMap<(PathBuf, u64, i128), String>;
    static CACHE: Mutex<Option<Versions>> = Mutex::new(None);
    let id = (qemu.path.clone(), qemu.inode, qemu.modified_ns);
    if let Some(v) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|c| c.get(&id))
    {
        return Ok(v.clone());
    }
    let run = tokio::process::Command::new(&qemu.path)
        .arg("--version")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .map_err(|_| Error::Timeout {
            operation: "qemu --version",
            timeout: VERSION_TIMEOUT,
        })?
        .map_err(Error::host_io("run", &qemu.path))?;
    let version = String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(id, version.clone());
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vc_hypervisor::{ShareBackend, SharedDir};

    fn file(path: &str) -> FileIdentity {
        FileIdentity {
            path: path.into(),
            len: 10,
            modified_ns: 1,
            inode: 7,
        }
    }

    fn share(host: &str) -> Device {
        Device::SharedDir(SharedDir {
            id: "share0".into(),
            mount_tag: "vcshared".into(),
            backend: ShareBackend::NineP {
                host_path: host.into(),
                read_only: false,
            },
        })
    }

    fn key(config: &HypervisorConfig) -> TemplateKey {
        let options = QemuOptions {
            firmware: vc_hypervisor::Firmware::QemuDefault,
            ..QemuOptions::default()
        };
        TemplateKey::from_parts(config, &options, file("/qemu"), "QEMU 7.2".into(), |p| {
            Ok(file(&p.to_string_lossy()))
        })
        .unwrap()
    }

    fn config(name: &str, runtime: &str, share_dir: &str) -> HypervisorConfig {
        let mut c = HypervisorConfig::new(name, "/img/vmlinux", runtime).with_initrd("/img/initrd");
        c.devices.push(share(share_dir));
        c
    }

    /// Names, runtime dirs and share directories are each clone's own;
    /// everything else must match.
    #[test]
    fn a_clones_own_paths_do_not_count() {
        let template = key(&config("template", "/run/t/vm", "/run/t/share"));
        let sandbox = key(&config("sb-1", "/run/vc/vm/sb-1", "/run/vc/shared/sb-1"));
        assert_eq!(template.first_difference(&sandbox), None);
        assert_eq!(template, sandbox);
    }

    #[test]
    fn the_first_differing_field_is_named() {
        let base = config("t", "/run/t", "/s");
        let template = key(&base);
        let mut bigger = base.clone();
        bigger.memory.boot_mib = 1024;
        bigger.memory.max_mib = 1024;
        let m = template.first_difference(&key(&bigger)).unwrap();
        assert_eq!(m.field, "memory_mib");
        assert_eq!((m.template.as_str(), m.wanted.as_str()), ("512", "1024"));
        let mut cpus = base.clone();
        cpus.vcpus.boot = 2;
        cpus.vcpus.max = 2;
        assert_eq!(
            template.first_difference(&key(&cpus)).unwrap().field,
            "vcpus"
        );
        let mut params = base.clone();
        params.kernel_params = vc_hypervisor::KernelParams::parse("quiet").unwrap();
        assert_eq!(
            template.first_difference(&key(&params)).unwrap().field,
            "kernel_params"
        );
        let mut other_kernel = base.clone();
        other_kernel.kernel = "/img/vmlinux-2".into();
        assert_eq!(
            template
                .first_difference(&key(&other_kernel))
                .unwrap()
                .field,
            "kernel"
        );
        let mut more_devices = base.clone();
        more_devices
            .devices
            .push(Device::Serial(vc_hypervisor::SerialPort {
                id: "log".into(),
                name: "log.0".into(),
                socket: "/run/log.sock".into(),
            }));
        assert_eq!(
            template
                .first_difference(&key(&more_devices))
                .unwrap()
                .field,
            "devices"
        );
        let mut read_only = base.clone();
        read_only.devices = vec![Device::SharedDir(SharedDir {
            id: "share0".into(),
            mount_tag: "vcshared".into(),
            backend: ShareBackend::NineP {
                host_path: "/s".into(),
                read_only: true,
            },
        })];
        assert_eq!(
            template.first_difference(&key(&read_only)).unwrap().field,
            "devices"
        );
    }

    #[test]
    fn a_replaced_file_is_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"one").unwrap();
        let before = FileIdentity::of(&path).unwrap();
        assert_eq!(FileIdentity::of(&path).unwrap(), before);
        std::fs::write(dir.path().join("new"), b"two").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        assert_ne!(FileIdentity::of(&path).unwrap(), before);
        assert!(matches!(
            FileIdentity::of(&dir.path().join("missing")),
            Err(Error::HostIo { .. })
        ));
    }

    #[tokio::test]
    async fn the_qemu_version_is_its_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"QEMU emulator version 7.2.0 $1\"\necho more\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let id = FileIdentity::of(&fake).unwrap();
        assert_eq!(
            qemu_version(&id).await.unwrap(),
            "QEMU emulator version 7.2.0 --version"
        );
        // Cached: the binary is not asked again.
        std::fs::remove_file(&fake).unwrap();
        assert!(qemu_version(&id).await.is_ok());
    }

    #[tokio::test]
    async fn the_qemu_a_key_was_made_with_is_not_asked_its_version_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (fake, asked) = (dir.path().join("qemu"), dir.path().join("asked"));
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho asked >> {}\necho \"QEMU emulator version 7.2.0\"\n",
                asked.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel").unwrap();
        let config = HypervisorConfig::new("t", &kernel, dir.path().join("run"));
        let options = QemuOptions {
            binary: fake.clone(),
            firmware: vc_hypervisor::Firmware::QemuDefault,
            ..QemuOptions::default()
        };
        let known = TemplateKey::from_parts(
            &config,
            &options,
            FileIdentity::of(&fake).unwrap(),
            "QEMU emulator version 7.2.0 (the template's)".into(),
            FileIdentity::of,
        )
        .unwrap();
        let key = TemplateKey::of_compared_to(&config, &options, &known)
            .await
            .unwrap();
        assert_eq!(key, known);
        assert!(!asked.exists(), "QEMU was run");
        // Another binary (here: rewritten in place) is asked.
        std::fs::write(&fake, std::fs::read(&fake).unwrap()).unwrap();
        let key = TemplateKey::of_compared_to(&config, &options, &known)
            .await
            .unwrap();
        assert_eq!(key.qemu_version, "QEMU emulator version 7.2.0");
        assert!(asked.exists(), "QEMU was not run");
        assert_eq!(known.first_difference(&key).unwrap().field, "qemu");
    }
}
