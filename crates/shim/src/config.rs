//! The shim's configuration: a TOML file in the spirit of Kata's
//! `configuration.toml` (same section and key names where they mean the
//! same), turned into the SDK's [`SandboxConfig`] and [`QemuFactory`].
//!
//! Where it is found, first match wins:
//! 1. the runtime options' `ConfigPath` (containerd's
//!    `runtimeoptions.v1.Options`: CRI's `options.ConfigPath`, `ctr run
//!    --runtime-config-path`): this file must exist;
//! 2. the file named by the `VC_SHIM_CONFIG` environment variable;
//! 3. `/etc/virtcontainers/configuration.toml`;
//! 4. `/usr/share/virtcontainers/configuration.toml`;
//! 5. none: the built-in defaults.
//!
//! The guest image, unless the file names it: `vmlinux` and
//! `initramfs.cpio` in `../vc-guest-agent-image` beside the shim binary
//! (the binary in `target/<profile>/` after `make guest-image`), else in
//! `/usr/share/virtcontainers` (`make install-shim`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use virtcontainers::vc_hypervisor::{Accelerator, QemuOptions};
use virtcontainers::vc_types;
use virtcontainers::{
    AgentSettings, CgroupsConfig, ContainerConfig, FsShareConfig, FsShareKind, NetnsConfig,
    NetworkConfig, Paths, QemuFactory, SandboxConfig, SandboxId, SandboxLifetime, TemplateConfig,
    TemplateFactory, VmConfig, VmFactory,
};

use crate::error::{Error, Result};

/// The environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "VC_SHIM_CONFIG";

/// The configuration files looked for when none is named.
pub const CONFIG_PATHS: [&str; 2] = [
    "/etc/virtcontainers/configuration.toml",
    "/usr/share/virtcontainers/configuration.toml",
];

/// Where `make install-shim` puts the guest image.
pub const INSTALLED_IMAGE_DIR: &str = "/usr/share/virtcontainers";

/// The guest kernel's file name in an image directory.
pub const KERNEL_FILE: &str = "vmlinux";
/// The initramfs's file name in an image directory.
pub const INITRD_FILE: &str = "initramfs.cpio";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShimConfig {
    /// `[hypervisor.qemu]`.
    pub hypervisor: HypervisorSection,
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[runtime]`.
    pub runtime: RuntimeSection,
    /// `[factory]`.
    pub factory: FactorySection,
}

/// `[factory]`: how VMs are made (Kata's names). With `enable_template`,
/// each sandbox's VM is cloned from the template made by
/// `containerd-shim-vc-v2 factory-init` (the SDK's [`TemplateFactory`]:
/// guest memory shared copy-on-write between sandboxes, opt-in for that
/// reason; the guest RNG is reseeded in every clone); a sandbox that does
/// not match the template, or when there is none, boots cold and the log
/// says why. Template sandboxes share files over 9p: clones map guest
/// memory privately, which virtio-fs cannot use.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactorySection {
    /// Clone VMs from the template instead of booting them cold.
    pub enable_template: bool,
    /// Where the template lives (default: `<state_dir>/template`).
    pub template_path: Option<PathBuf>,
}

/// `[hypervisor]`: one backend, QEMU.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorSection {
    /// `[hypervisor.qemu]`.
    pub qemu: QemuSection,
}

/// How the containers' files reach the guest (`shared_fs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SharedFs {
    /// virtio-fs when `virtiofsd` is installed, else virtio-9p.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// virtio-fs (`virtiofsd`).
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    /// virtio-9p (built into QEMU).
    #[serde(rename = "virtio-9p")]
    NineP,
}

/// `[hypervisor.qemu]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuSection {
    /// The QEMU binary.
    pub path: Option<PathBuf>,
    /// The guest kernel (uncompressed `vmlinux`).
    pub kernel: Option<PathBuf>,
    /// The initramfs whose `/init` is the guest agent.
    pub initrd: Option<PathBuf>,
    /// `auto` (KVM when it can run the guest, else TCG), `kvm` or `tcg`.
    pub accelerator: Accelerator,
    /// vCPUs for the guest itself, beside the containers' CPU limits.
    pub default_vcpus: u32,
    /// Upper bound on vCPUs; 0 is the host's CPUs.
    pub default_maxvcpus: u32,
    /// Upper bound on memory (MiB) the VM may grow to by hot-plug as
    /// containers come; 0 is the host's memory.
    pub default_maxmemory: u64,
    /// Memory (MiB) for the guest itself, beside the containers' limits.
    pub default_memory: u64,
    /// Extra kernel parameters, space separated.
    pub kernel_params: String,
    /// `auto`, `virtio-fs` or `virtio-9p`.
    pub shared_fs: SharedFs,
    /// The `virtiofsd` binary; unset searches the usual places.
    pub virtio_fs_daemon: Option<PathBuf>,
    /// PCIe root ports kept for hot-plug (disks, NICs).
    pub hotplug_ports: u32,
    /// Guest agent debug logs and the guest console kept.
    pub enable_debug: bool,
}

impl Default for QemuSection {
    fn default() -> Self {
        let vm = VmConfig::new("", "");
        QemuSection {
            path: None,
            kernel: None,
            initrd: None,
            accelerator: Accelerator::Auto,
            default_vcpus: vm.default_vcpus,
            default_maxvcpus: 0,
            default_maxmemory: 0,
            default_memory: vm.default_memory_mib,
            kernel_params: String::new(),
            shared_fs: SharedFs::Auto,
            virtio_fs_daemon: None,
            hotplug_ports: QemuOptions::default().hotplug_ports,
            enable_debug: false,
        }
    }
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// Seconds each agent call may take (waits for processes excepted).
    pub call_timeout: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            call_timeout: AgentSettings::default().call_timeout.as_secs(),
        }
    }
}

/// How the VM reaches the pod's network (`internetworking_model`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Internetworking {
    /// Kata's tc filter model: a tap beside each interface of the pod's
    /// network namespace, redirected both ways.
    #[default]
    Tcfilter,
    /// No network for the VM.
    None,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSection {
    /// The shim's debug logs (also `containerd -l debug`).
    pub enable_debug: bool,
    /// Everything of a sandbox, the shim included, in the sandbox cgroup
    /// (no overhead cgroup).
    pub sandbox_cgroup_only: bool,
    /// Host cgroups for the sandbox; off leaves them to the caller.
    pub host_cgroups: bool,
    /// How the VM reaches the pod's network.
    pub internetworking_model: Internetworking,
    /// The SDK's directory for sandbox state, VM runtime dirs and shares.
    pub state_dir: PathBuf,
    /// Seconds a container is given to exit after SIGTERM when its pod
    /// is torn down.
    pub stop_timeout: u64,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            enable_debug: false,
            sandbox_cgroup_only: false,
            host_cgroups: true,
            internetworking_model: Internetworking::Tcfilter,
            state_dir: PathBuf::from("/run/vc"),
            stop_timeout: 5,
        }
    }
}

/// A configuration and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The settings.
    pub config: ShimConfig,
    /// The file read, or `None` for the built-in defaults.
    pub path: Option<PathBuf>,
}

/// Finds and reads the configuration (see the module doc for the order).
pub fn load(explicit: Option<&Path>) -> Result<Loaded> {
    if let Some(path) = explicit {
        return read(path);
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return read(Path::new(&path));
    }
    for path in CONFIG_PATHS {
        if Path::new(path).exists() {
            return read(Path::new(path));
        }
    }
    Ok(Loaded {
        config: ShimConfig::default(),
        path: None,
    })
}

/// Reads one file.
pub fn read(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let config = parse(&text).map_err(|reason| Error::Config {
        path: path.to_owned(),
        reason,
    })?;
    Ok(Loaded {
        config,
        path: Some(path.to_owned()),
    })
}

/// Parses a configuration's text; the error names the key and line.
pub fn parse(text: &str) -> std::result::Result<ShimConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

impl ShimConfig {
    /// The SDK's directories.
    pub fn paths(&self) -> Paths {
        Paths::under(&self.runtime.state_dir)
    }

    /// Whether debug logs are asked for anywhere in the file.
    pub fn debug(&self) -> bool {
        self.runtime.enable_debug || self.hypervisor.qemu.enable_debug
    }

    /// The QEMU options: the configured binary and hot-plug ports.
    pub fn factory_options(&self) -> QemuOptions {
        let mut options = QemuOptions::default();
        if let Some(path) = &self.hypervisor.qemu.path {
            options.binary = path.clone();
        }
        options.hotplug_ports = self.hypervisor.qemu.hotplug_ports;
        options
    }

    /// The VM factory: QEMU with [`ShimConfig::factory_options`], through
    /// the template when `[factory] enable_template`.
    pub fn factory(&self) -> Arc<dyn VmFactory> {
        if self.factory.enable_template {
            Arc::new(self.template())
        } else {
            Arc::new(QemuFactory::new(self.factory_options()))
        }
    }

    /// The template factory of `[factory]` (whether enabled or not: what
    /// `factory-init`, `factory-status` and `factory-destroy` act on).
    pub fn template(&self) -> TemplateFactory {
        TemplateFactory::new(TemplateConfig {
            dir: self
                .factory
                .template_path
                .clone()
                .unwrap_or_else(|| self.runtime.state_dir.join("template")),
            qemu: self.factory_options(),
            ..TemplateConfig::default()
        })
    }

    /// The sandbox the template is made from: this configuration's VM with
    /// no container, so that the shim's sandboxes match it.
    pub fn template_prototype(&self) -> Result<SandboxConfig> {
        let id = "vc-template-prototype".parse().expect("a valid sandbox id");
        self.sandbox(id, Vec::new(), None, NetnsConfig::Disabled)
    }

    /// The VM of a sandbox; the guest image found as the module doc says.
    pub fn vm(&self) -> Result<VmConfig> {
        let q = &self.hypervisor.qemu;
        let (kernel, initrd) = match (&q.kernel, &q.initrd) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            (k, i) => {
                let dir = find_image_dir(&image_dirs())?;
                (
                    k.clone().unwrap_or_else(|| dir.join(KERNEL_FILE)),
                    i.clone().unwrap_or_else(|| dir.join(INITRD_FILE)),
                )
            }
        };
        let mut vm = VmConfig::new(kernel, initrd);
        vm.accelerator = q.accelerator;
        vm.default_vcpus = q.default_vcpus;
        vm.default_memory_mib = q.default_memory;
        if q.default_maxvcpus > 0 {
            vm.max_vcpus = q.default_maxvcpus;
        }
        if q.default_maxmemory > 0 {
            vm.max_memory_mib = q.default_maxmemory;
        }
        vm.kernel_params = q.kernel_params.split_whitespace().map(Into::into).collect();
        vm.debug = q.enable_debug;
        Ok(vm)
    }

    /// A sandbox `id` with `containers`, its host cgroups under
    /// `cgroups_path` (the OCI `linux.cgroupsPath` of its first
    /// container), in network namespace `netns` (none when
    /// `internetworking_model = "none"`), dying with this shim.
    pub fn sandbox(
        &self,
        id: SandboxId,
        containers: Vec<ContainerConfig>,
        cgroups_path: Option<String>,
        netns: NetnsConfig,
    ) -> Result<SandboxConfig> {
        let template = self.factory.enable_template;
        if template && self.hypervisor.qemu.shared_fs == SharedFs::VirtioFs {
            return Err(vc_types::Unsupported::new(
                "factory.enable_template with shared_fs = \"virtio-fs\"",
                "template clones map guest memory privately and virtio-fs needs it shared: \
                 use shared_fs = \"virtio-9p\" (the default with a template)",
            )
            .into());
        }
        let mut config = SandboxConfig::new(id, self.vm()?);
        config.paths = self.paths();
        config.lifetime = SandboxLifetime::DiesWithOwner;
        config.cgroups = self.runtime.host_cgroups.then(|| CgroupsConfig {
            cgroups_path,
            sandbox_cgroup_only: self.runtime.sandbox_cgroup_only,
            ..CgroupsConfig::default()
        });
        config.fs_share = FsShareConfig {
            kind: match self.hypervisor.qemu.shared_fs {
                SharedFs::Auto if template => FsShareKind::NineP,
                SharedFs::Auto => FsShareKind::Auto,
                SharedFs::VirtioFs => FsShareKind::VirtioFs,
                SharedFs::NineP => FsShareKind::NineP,
            },
            virtiofsd: self.hypervisor.qemu.virtio_fs_daemon.clone(),
        };
        config.agent = AgentSettings {
            call_timeout: Duration::from_secs(self.agent.call_timeout.max(1)),
        };
        config.network = NetworkConfig {
            netns: match self.runtime.internetworking_model {
                Internetworking::Tcfilter => netns,
                Internetworking::None => NetnsConfig::Disabled,
            },
            dns: Vec::new(),
        };
        config.containers = containers;
        Ok(config)
    }

    /// How long a container may take to exit after SIGTERM.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.runtime.stop_timeout)
    }
}

/// The directories searched for the guest image: beside the binary
/// (`target/<profile>/../vc-guest-agent-image`), then the installed one.
pub fn image_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent().and_then(Path::parent)
    {
        dirs.push(dir.join("vc-guest-agent-image"));
    }
    dirs.push(PathBuf::from(INSTALLED_IMAGE_DIR));
    dirs
}

/// The first of `dirs` holding both image files.
pub fn find_image_dir(dirs: &[PathBuf]) -> Result<PathBuf> {
    dirs.iter()
        .find(|d| d.join(KERNEL_FILE).is_file() && d.join(INITRD_FILE).is_file())
        .cloned()
        .ok_or_else(|| Error::NoGuestImage {
            searched: dirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[hypervisor.qemu]
path = "/opt/qemu/bin/qemu-system-x86_64"
kernel = "/srv/vc/vmlinux"
initrd = "/srv/vc/initramfs.cpio"
accelerator = "tcg"
default_vcpus = 2
default_maxvcpus = 4
default_maxmemory = 2048
default_memory = 512
kernel_params = "quiet  debug_foo=1"
shared_fs = "virtio-9p"
hotplug_ports = 4
enable_debug = true

[agent]
call_timeout = 12

[runtime]
sandbox_cgroup_only = true
internetworking_model = "none"
state_dir = "/run/vc-test"
stop_timeout = 2
"#;

    #[test]
    fn every_key_of_the_example_lands_in_the_sdk_config() {
        let config = parse(EXAMPLE).unwrap();
        let sandbox = config
            .sandbox(
                "pod".parse().unwrap(),
                Vec::new(),
                Some("/k8s/pod".into()),
                NetnsConfig::Create,
            )
            .unwrap();
        assert_eq!(
            sandbox.network.netns,
            NetnsConfig::Disabled,
            "internetworking_model = none"
        );
        assert_eq!(sandbox.vm.kernel, PathBuf::from("/srv/vc/vmlinux"));
        assert_eq!(sandbox.vm.initrd, PathBuf::from("/srv/vc/initramfs.cpio"));
        assert_eq!(sandbox.vm.accelerator, Accelerator::Tcg);
        assert_eq!(
            (sandbox.vm.default_vcpus, sandbox.vm.max_vcpus),
            (2, 4),
            "vCPUs"
        );
        assert_eq!(sandbox.vm.default_memory_mib, 512);
        assert_eq!(sandbox.vm.max_memory_mib, 2048);
        assert_eq!(sandbox.vm.kernel_params, ["quiet", "debug_foo=1"]);
        assert!(sandbox.vm.debug);
        assert_eq!(sandbox.fs_share.kind, FsShareKind::NineP);
        assert_eq!(sandbox.agent.call_timeout, Duration::from_secs(12));
        let cgroups = sandbox.cgroups.unwrap();
        assert!(cgroups.sandbox_cgroup_only);
        assert_eq!(cgroups.cgroups_path.as_deref(), Some("/k8s/pod"));
        assert_eq!(sandbox.paths, Paths::under("/run/vc-test"));
        assert_eq!(sandbox.lifetime, SandboxLifetime::DiesWithOwner);
        assert_eq!(config.runtime.internetworking_model, Internetworking::None);
        assert_eq!(config.stop_timeout(), Duration::from_secs(2));
        let factory_options = QemuOptions {
            binary: "/opt/qemu/bin/qemu-system-x86_64".into(),
            hotplug_ports: 4,
            ..QemuOptions::default()
        };
        assert_eq!(config.factory_options(), factory_options);
    }

    /// The shipped example is what a user copies: it must parse, and say
    /// the built-in defaults (its guest image paths aside).
    #[test]
    fn the_shipped_configuration_says_the_defaults() {
        let text = include_str!("../configuration.toml");
        let mut shipped = parse(text).unwrap();
        assert_eq!(
            shipped.hypervisor.qemu.kernel.take(),
            Some(Path::new(INSTALLED_IMAGE_DIR).join(KERNEL_FILE))
        );
        assert_eq!(
            shipped.hypervisor.qemu.initrd.take(),
            Some(Path::new(INSTALLED_IMAGE_DIR).join(INITRD_FILE))
        );
        assert_eq!(
            shipped.hypervisor.qemu.path.take(),
            Some(QemuOptions::default().binary)
        );
        assert_eq!(shipped, ShimConfig::default());
    }

    #[test]
    fn a_template_factory_shares_over_9p_and_refuses_virtio_fs() {
        // A guest image named, so that none is looked for.
        let image = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n";
        let sandbox = |text: &str| {
            parse(&format!("{image}{text}")).unwrap().sandbox(
                "pod".parse().unwrap(),
                Vec::new(),
                None,
                NetnsConfig::Create,
            )
        };
        let config = sandbox("[factory]\nenable_template = true\n").unwrap();
        assert_eq!(config.fs_share.kind, FsShareKind::NineP);
        let err =
            sandbox("shared_fs = \"virtio-fs\"\n[factory]\nenable_template = true\n").unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        let config = parse("[runtime]\nstate_dir = \"/x\"\n").unwrap();
        assert_eq!(config.template().config().dir, Path::new("/x/template"));
        let config = parse("[factory]\ntemplate_path = \"/t\"\n").unwrap();
        assert_eq!(config.template().config().dir, Path::new("/t"));
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, ShimConfig::default());
        assert_eq!(config.paths(), Paths::default());
        assert!(config.runtime.host_cgroups);
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it() {
        let err = parse("[hypervisor.qemu]\ndefault_memroy = 1\n").unwrap_err();
        assert!(err.contains("default_memroy"), "{err}");
        let err = parse("[hypervisor.qemu]\nshared_fs = \"nfs\"\n").unwrap_err();
        assert!(err.contains("nfs"), "{err}");
    }

    #[test]
    fn a_named_file_that_does_not_exist_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/vc.toml"))).unwrap_err();
        assert!(
            matches!(&err, Error::Config { path, .. } if path == Path::new("/nonexistent/vc.toml")),
            "{err:?}"
        );
    }

    #[test]
    fn the_guest_image_is_the_first_directory_holding_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (half, full) = (dir.path().join("half"), dir.path().join("full"));
        std::fs::create_dir_all(&half).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(half.join(KERNEL_FILE), "").unwrap();
        std::fs::write(full.join(KERNEL_FILE), "").unwrap();
        std::fs::write(full.join(INITRD_FILE), "").unwrap();
        let dirs = [half.clone(), full.clone()];
        assert_eq!(find_image_dir(&dirs).unwrap(), full);
        let err = find_image_dir(&dirs[..1]).unwrap_err();
        assert!(
            matches!(&err, Error::NoGuestImage { searched } if searched == std::slice::from_ref(&half))
        );
    }
}
