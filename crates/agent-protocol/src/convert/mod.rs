//! Conversions between the protocol's OCI messages ([`crate::oci`]) and the
//! `oci-spec` runtime types.
//!
//! The host converts the bundle's `config.json` (an [`oci_spec::runtime::Spec`])
//! to send it; the guest agent converts it back to create the container.
//! Carried: version, root, hostname, mounts, annotations, the process (user
//! with umask, args, env, cwd, capabilities, rlimits, terminal, console
//! size, no-new-privileges, OOM score, I/O priority, AppArmor and SELinux
//! labels) and the Linux section (ID mappings, sysctls, resources: devices,
//! memory, CPU, pids; cgroups path, namespaces, devices, seccomp, rootfs
//! propagation, masked and read-only paths, mount label, personality).
//! Hooks, block I/O, huge pages, network classes, RDMA, unified cgroup v2
//! keys, time offsets and the scheduler are not carried: the guest runs no
//! host hooks and this agent applies none of those.

mod seccomp;

use std::path::PathBuf;

use oci_spec::runtime as spec;
use protobuf::MessageField;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::oci;
pub use seccomp::{seccomp_from_proto, seccomp_to_proto};

/// A value that one side can express and the other cannot.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A string that names no known enum value (namespace, rlimit,
    /// capability, device type).
    #[error("invalid {field}: {value:?}")]
    InvalidValue {
        /// The spec field, e.g. `process.rlimits.type`.
        field: &'static str,
        /// The value that was given.
        value: String,
    },
    /// A number outside the range of the target field.
    #[error("{field} out of range: {value}")]
    OutOfRange {
        /// The spec field, e.g. `process.oomScoreAdj`.
        field: &'static str,
        /// The value that was given.
        value: i64,
    },
    /// The `oci-spec` builder refused the assembled value.
    #[error("building {what}: {source}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// Why the builder refused it.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// The serde name of an `oci-spec` enum value (`RLIMIT_NOFILE`, `CAP_KILL`, ...).
fn enum_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        // The enums used here all serialize to strings; anything else would
        // be an `oci-spec` change, shown rather than hidden.
        Ok(other) => other.to_string(),
        Err(e) => format!("<unserializable: {e}>"),
    }
}

fn enum_value<T: DeserializeOwned>(field: &'static str, value: &str) -> Result<T, ConvertError> {
    serde_json::from_value(serde_json::Value::String(value.to_owned())).map_err(|_| {
        ConvertError::InvalidValue {
            field,
            value: value.to_owned(),
        }
    })
}

fn caps_to_proto(caps: &Option<spec::Capabilities>) -> Vec<String> {
    let mut names: Vec<String> = caps.iter().flatten().map(enum_name).collect();
    names.sort();
    names
}

fn caps_from_proto(names: &[String]) -> Result<Option<spec::Capabilities>, ConvertError> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| enum_value("process.capabilities", n))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn non_empty_vec<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// Converts a whole spec to its protocol message.
pub fn spec_to_proto(s: &spec::Spec) -> Result<oci::Spec, ConvertError> {
    let mut out = oci::Spec::new();
    out.Version = s.version().clone();
    if let Some(p) = s.process() {
        out.Process = MessageField::some(process_to_proto(p)?);
    }
    if let Some(r) = s.root() {
        let mut root = oci::Root::new();
        root.Path = r.path().display().to_string();
        root.Readonly = r.readonly().unwrap_or(false);
        out.Root = MessageField::some(root);
    }
    out.Hostname = s.hostname().clone().unwrap_or_default();
    out.Mounts = s
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            let mut pm = oci::Mount::new();
            pm.destination = m.destination().display().to_string();
            pm.source = m
                .source()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            pm.type_ = m.typ().clone().unwrap_or_default();
            pm.options = m.options().clone().unwrap_or_default();
            pm
        })
        .collect();
    out.Annotations = s.annotations().clone().unwrap_or_default();
    if let Some(l) = s.linux() {
        out.Linux = MessageField::some(linux_to_proto(l)?);
    }
    Ok(out)
}

/// Converts a protocol spec message back to an `oci-spec` spec.
pub fn spec_from_proto(p: &oci::Spec) -> Result<spec::Spec, ConvertError> {
    let mut out = spec::Spec::default();
    out.set_version(p.Version.clone());
    out.set_process(p.Process.as_ref().map(process_from_proto).transpose()?);
    out.set_root(p.Root.as_ref().map(|r| {
        let mut root = spec::Root::default();
        root.set_path(PathBuf::from(&r.Path));
        root.set_readonly(Some(r.Readonly));
        root
    }));
    out.set_hostname(non_empty(&p.Hostname));
    out.set_mounts(Some(
        p.Mounts
            .iter()
            .map(|m| {
                let mut sm = spec::Mount::default();
                sm.set_destination(PathBuf::from(&m.destination));
                sm.set_source(non_empty(&m.source).map(PathBuf::from));
                sm.set_typ(non_empty(&m.type_));
                sm.set_options(non_empty_vec(&m.options));
                sm
            })
            .collect(),
    ));
    out.set_annotations((!p.Annotations.is_empty()).then(|| p.Annotations.clone()));
    out.set_linux(p.Linux.as_ref().map(linux_from_proto).transpose()?);
    Ok(out)
}

/// Converts a process (the container's or an exec'd one) to its message.
pub fn process_to_proto(p: &spec::Process) -> Result<oci::Process, ConvertError> {
    let mut out = oci::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    if let Some(b) = p.console_size() {
        let mut size = oci::Box::new();
        size.Height = u32::try_from(b.height()).map_err(|_| ConvertError::OutOfRange {
            field: "process.consoleSize.height",
            value: i64::try_from(b.height()).unwrap_or(i64::MAX),
        })?;
        size.Width = u32::try_from(b.width()).map_err(|_| ConvertError::OutOfRange {
            field: "process.consoleSize.width",
            value: i64::try_from(b.width()).unwrap_or(i64::MAX),
        })?;
        out.ConsoleSize = MessageField::some(size);
    }
    let u = p.user();
    let mut user = oci::User::new();
    user.UID = u.uid();
    user.GID = u.gid();
    user.AdditionalGids = u.additional_gids().clone().unwrap_or_default();
    user.Username = u.username().clone().unwrap_or_default();
    user.Umask = u.umask();
    out.User = MessageField::some(user);
    out.Args = p.args().clone().unwrap_or_default();
    out.Env = p.env().clone().unwrap_or_default();
    out.Cwd = p.cwd().display().to_string();
    if let Some(c) = p.capabilities() {
        let mut caps = oci::LinuxCapabilities::new();
        caps.Bounding = caps_to_proto(c.bounding());
        caps.Effective = caps_to_proto(c.effective());
        caps.Inheritable = caps_to_proto(c.inheritable());
        caps.Permitted = caps_to_proto(c.permitted());
        caps.Ambient = caps_to_proto(c.ambient());
        out.Capabilities = MessageField::some(caps);
    }
    out.Rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let mut rl = oci::POSIXRlimit::new();
            rl.Type = enum_name(&r.typ());
            rl.Hard = r.hard();
            rl.Soft = r.soft();
            rl
        })
        .collect();
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    out.ApparmorProfile = p.apparmor_profile().clone().unwrap_or_default();
    out.OOMScoreAdj = p.oom_score_adj().map(i64::from).unwrap_or(0);
    out.SelinuxLabel = p.selinux_label().clone().unwrap_or_default();
    if let Some(io) = p.io_priority() {
        let mut prio = oci::LinuxIOPriority::new();
        prio.Class = enum_name(&io.class());
        prio.Priority = io.priority();
        out.IOPriority = MessageField::some(prio);
    }
    Ok(out)
}

/// Converts a process message back to an `oci-spec` process.
pub fn process_from_proto(p: &oci::Process) -> Result<spec::Process, ConvertError> {
    let mut out = spec::Process::default();
    out.set_terminal(Some(p.Terminal));
    out.set_console_size(
        p.ConsoleSize
            .as_ref()
            .map(|b| {
                spec::BoxBuilder::default()
                    .height(u64::from(b.Height))
                    .width(u64::from(b.Width))
                    .build()
                    .map_err(|source| ConvertError::Build {
                        what: "process.consoleSize",
                        source,
                    })
            })
            .transpose()?,
    );
    let mut user = spec::User::default();
    if let Some(u) = p.User.as_ref() {
        user.set_uid(u.UID);
        user.set_gid(u.GID);
        user.set_additional_gids(non_empty_vec(&u.AdditionalGids));
        user.set_username(non_empty(&u.Username));
        user.set_umask(u.Umask);
    }
    out.set_user(user);
    out.set_args(non_empty_vec(&p.Args));
    out.set_env(Some(p.Env.clone()));
    out.set_cwd(PathBuf::from(&p.Cwd));
    out.set_capabilities(
        p.Capabilities
            .as_ref()
            .map(|c| -> Result<_, ConvertError> {
                let mut caps = spec::LinuxCapabilities::default();
                caps.set_bounding(caps_from_proto(&c.Bounding)?);
                caps.set_effective(caps_from_proto(&c.Effective)?);
                caps.set_inheritable(caps_from_proto(&c.Inheritable)?);
                caps.set_permitted(caps_from_proto(&c.Permitted)?);
                caps.set_ambient(caps_from_proto(&c.Ambient)?);
                Ok(caps)
            })
            .transpose()?,
    );
    out.set_rlimits(Some(
        p.Rlimits
            .iter()
            .map(|r| -> Result<_, ConvertError> {
                spec::PosixRlimitBuilder::default()
                    .typ(enum_value::<spec::PosixRlimitType>(
                        "process.rlimits.type",
                        &r.Type,
                    )?)
                    .hard(r.Hard)
                    .soft(r.Soft)
                    .build()
                    .map_err(|source| ConvertError::Build {
                        what: "process.rlimits",
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
    ));
    out.set_no_new_privileges(Some(p.NoNewPrivileges));
    out.set_apparmor_profile(non_empty(&p.ApparmorProfile));
    out.set_oom_score_adj(if p.OOMScoreAdj == 0 {
        None
    } else {
        Some(
            i32::try_from(p.OOMScoreAdj).map_err(|_| ConvertError::OutOfRange {
                field: "process.oomScoreAdj",
                value: p.OOMScoreAdj,
            })?,
        )
    });
    out.set_selinux_label(non_empty(&p.SelinuxLabel));
    out.set_io_priority(
        p.IOPriority
            .as_ref()
            .map(|io| -> Result<_, ConvertError> {
                spec::LinuxIOPriorityBuilder::default()
                    .class(enum_value::<spec::IOPriorityClass>(
                        "process.ioPriority.class",
                        &io.Class,
                    )?)
                    .priority(io.Priority)
                    .build()
                    .map_err(|source| ConvertError::Build {
                        what: "process.ioPriority",
                        source,
                    })
            })
            .transpose()?,
    );
    Ok(out)
}

fn id_mappings_to_proto(m: &Option<Vec<spec::LinuxIdMapping>>) -> Vec<oci::LinuxIDMapping> {
    m.iter()
        .flatten()
        .map(|m| {
            let mut out = oci::LinuxIDMapping::new();
            out.HostID = m.host_id();
            out.ContainerID = m.container_id();
            out.Size = m.size();
            out
        })
        .collect()
}

fn id_mappings_from_proto(
    m: &[oci::LinuxIDMapping],
) -> Result<Option<Vec<spec::LinuxIdMapping>>, ConvertError> {
    if m.is_empty() {
        return Ok(None);
    }
    m.iter()
        .map(|m| {
            spec::LinuxIdMappingBuilder::default()
                .host_id(m.HostID)
                .container_id(m.ContainerID)
                .size(m.Size)
                .build()
                .map_err(|source| ConvertError::Build {
                    what: "linux.idMappings",
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn linux_to_proto(l: &spec::Linux) -> Result<oci::Linux, ConvertError> {
    let mut out = oci::Linux::new();
    out.UIDMappings = id_mappings_to_proto(l.uid_mappings());
    out.GIDMappings = id_mappings_to_proto(l.gid_mappings());
    out.Sysctl = l.sysctl().clone().unwrap_or_default();
    if let Some(r) = l.resources() {
        out.Resources = MessageField::some(resources_to_proto(r));
    }
    out.CgroupsPath = l
        .cgroups_path()
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    out.Namespaces = l
        .namespaces()
        .iter()
        .flatten()
        .map(|n| {
            let mut ns = oci::LinuxNamespace::new();
            ns.Type = n.typ().to_string();
            ns.Path = n
                .path()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            ns
        })
        .collect();
    out.Devices = l
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            let mut dev = oci::LinuxDevice::new();
            dev.Path = d.path().display().to_string();
            dev.Type = enum_name(&d.typ());
            dev.Major = d.major();
            dev.Minor = d.minor();
            dev.FileMode = d.file_mode().unwrap_or(0);
            dev.UID = d.uid().unwrap_or(0);
            dev.GID = d.gid().unwrap_or(0);
            dev
        })
        .collect();
    out.RootfsPropagation = l.rootfs_propagation().clone().unwrap_or_default();
    out.MaskedPaths = l.masked_paths().clone().unwrap_or_default();
    out.ReadonlyPaths = l.readonly_paths().clone().unwrap_or_default();
    out.MountLabel = l.mount_label().clone().unwrap_or_default();
    if let Some(s) = l.seccomp() {
        out.Seccomp = MessageField::some(seccomp_to_proto(s));
    }
    if let Some(p) = l.personality() {
        let mut pers = oci::LinuxPersonality::new();
        pers.Domain = enum_name(&p.domain());
        pers.Flags = p.flags().clone().unwrap_or_default();
        out.Personality = MessageField::some(pers);
    }
    Ok(out)
}

fn linux_from_proto(l: &oci::Linux) -> Result<spec::Linux, ConvertError> {
    let mut out = spec::Linux::default();
    out.set_uid_mappings(id_mappings_from_proto(&l.UIDMappings)?);
    out.set_gid_mappings(id_mappings_from_proto(&l.GIDMappings)?);
    out.set_sysctl((!l.Sysctl.is_empty()).then(|| l.Sysctl.clone()));
    out.set_resources(l.Resources.as_ref().map(resources_from_proto).transpose()?);
    out.set_cgroups_path(non_empty(&l.CgroupsPath).map(PathBuf::from));
    out.set_namespaces(Some(
        l.Namespaces
            .iter()
            .map(|n| -> Result<_, ConvertError> {
                let typ = spec::LinuxNamespaceType::try_from(n.Type.as_str()).map_err(|_| {
                    ConvertError::InvalidValue {
                        field: "linux.namespaces.type",
                        value: n.Type.clone(),
                    }
                })?;
                let mut ns = spec::LinuxNamespace::default();
                ns.set_typ(typ);
                ns.set_path(non_empty(&n.Path).map(PathBuf::from));
                Ok(ns)
            })
            .collect::<Result<Vec<_>, _>>()?,
    ));
    out.set_devices(
        (!l.Devices.is_empty())
            .then(|| {
                l.Devices
                    .iter()
                    .map(|d| -> Result<_, ConvertError> {
                        let mut dev = spec::LinuxDevice::default();
                        dev.set_path(PathBuf::from(&d.Path));
                        dev.set_typ(enum_value("linux.devices.type", &d.Type)?);
                        dev.set_major(d.Major);
                        dev.set_minor(d.Minor);
                        // Kata's field has no presence: 0 is "not given"
                        // (runtimes then use 0666), never a mode of 0.
                        dev.set_file_mode((d.FileMode != 0).then_some(d.FileMode));
                        dev.set_uid(Some(d.UID));
                        dev.set_gid(Some(d.GID));
                        Ok(dev)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
    );
    out.set_rootfs_propagation(non_empty(&l.RootfsPropagation));
    out.set_masked_paths(Some(l.MaskedPaths.clone()));
    out.set_readonly_paths(Some(l.ReadonlyPaths.clone()));
    out.set_mount_label(non_empty(&l.MountLabel));
    out.set_seccomp(l.Seccomp.as_ref().map(seccomp_from_proto).transpose()?);
    out.set_personality(
        l.Personality
            .as_ref()
            .map(|p| -> Result<_, ConvertError> {
                let mut pers = spec::LinuxPersonality::default();
                pers.set_domain(enum_value("linux.personality.domain", &p.Domain)?);
                pers.set_flags(non_empty_vec(&p.Flags));
                Ok(pers)
            })
            .transpose()?,
    );
    Ok(out)
}

/// Converts container resources (for `CreateContainer` and
/// `UpdateContainer`) to their message.
pub fn resources_to_proto(r: &spec::LinuxResources) -> oci::LinuxResources {
    let mut out = oci::LinuxResources::new();
    out.Devices = r
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            let mut dev = oci::LinuxDeviceCgroup::new();
            dev.Allow = d.allow();
            dev.Type = d.typ().map(|t| enum_name(&t)).unwrap_or_default();
            dev.Major = d.major().unwrap_or(-1);
            dev.Minor = d.minor().unwrap_or(-1);
            dev.Access = d.access().clone().unwrap_or_default();
            dev
        })
        .collect();
    if let Some(m) = r.memory() {
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = m.limit().unwrap_or(0);
        mem.Reservation = m.reservation().unwrap_or(0);
        mem.Swap = m.swap().unwrap_or(0);
        mem.Kernel = m.kernel().unwrap_or(0);
        mem.KernelTCP = m.kernel_tcp().unwrap_or(0);
        mem.Swappiness = m.swappiness().unwrap_or(0);
        mem.DisableOOMKiller = m.disable_oom_killer().unwrap_or(false);
        out.Memory = MessageField::some(mem);
    }
    if let Some(c) = r.cpu() {
        let mut cpu = oci::LinuxCPU::new();
        cpu.Shares = c.shares().unwrap_or(0);
        cpu.Quota = c.quota().unwrap_or(0);
        cpu.Period = c.period().unwrap_or(0);
        cpu.RealtimeRuntime = c.realtime_runtime().unwrap_or(0);
        cpu.RealtimePeriod = c.realtime_period().unwrap_or(0);
        cpu.Cpus = c.cpus().clone().unwrap_or_default();
        cpu.Mems = c.mems().clone().unwrap_or_default();
        out.CPU = MessageField::some(cpu);
    }
    if let Some(p) = r.pids() {
        let mut pids = oci::LinuxPids::new();
        pids.Limit = p.limit();
        out.Pids = MessageField::some(pids);
    }
    out
}

/// Converts a resources message back; zero means "not set", as in Kata.
pub fn resources_from_proto(r: &oci::LinuxResources) -> Result<spec::LinuxResources, ConvertError> {
    fn set<T: PartialEq + Default>(v: T) -> Option<T> {
        (v != T::default()).then_some(v)
    }
    let mut out = spec::LinuxResources::default();
    out.set_devices(
        (!r.Devices.is_empty())
            .then(|| {
                r.Devices
                    .iter()
                    .map(|d| -> Result<_, ConvertError> {
                        let mut dev = spec::LinuxDeviceCgroup::default();
                        dev.set_allow(d.Allow);
                        dev.set_typ(
                            non_empty(&d.Type)
                                .map(|t| enum_value("linux.resources.devices.type", &t))
                                .transpose()?,
                        );
                        dev.set_major((d.Major >= 0).then_some(d.Major));
                        dev.set_minor((d.Minor >= 0).then_some(d.Minor));
                        dev.set_access(non_empty(&d.Access));
                        Ok(dev)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
    );
    out.set_memory(r.Memory.as_ref().map(|m| {
        let mut mem = spec::LinuxMemory::default();
        mem.set_limit(set(m.Limit));
        mem.set_reservation(set(m.Reservation));
        mem.set_swap(set(m.Swap));
        mem.set_kernel(set(m.Kernel));
        mem.set_kernel_tcp(set(m.KernelTCP));
        mem.set_swappiness(set(m.Swappiness));
        mem.set_disable_oom_killer(set(m.DisableOOMKiller));
        mem
    }));
    out.set_cpu(r.CPU.as_ref().map(|c| {
        let mut cpu = spec::LinuxCpu::default();
        cpu.set_shares(set(c.Shares));
        cpu.set_quota(set(c.Quota));
        cpu.set_period(set(c.Period));
        cpu.set_realtime_runtime(set(c.RealtimeRuntime));
        cpu.set_realtime_period(set(c.RealtimePeriod));
        cpu.set_cpus(non_empty(&c.Cpus));
        cpu.set_mems(non_empty(&c.Mems));
        cpu
    }));
    out.set_pids(r.Pids.as_ref().map(|p| {
        let mut pids = spec::LinuxPids::default();
        pids.set_limit(p.Limit);
        pids
    }));
    Ok(out)
}
