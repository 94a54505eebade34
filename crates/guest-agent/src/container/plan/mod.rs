//! From an OCI spec to a launch plan: every path, flag, id and string the
//! child process needs, computed up front. Pure, so it is unit-tested, and
//! so the child (forked from a multi-threaded agent) allocates nothing.

mod linux;
mod mounts;

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use super::mount_options;
use super::seccomp::{self, SeccompProgram};
use crate::error::{Error, Result};
pub use linux::{DeviceNode, IdMaps};

/// The umask of a process whose spec sets none (runc's default).
pub const DEFAULT_UMASK: libc::mode_t = 0o022;

/// The `PATH` used to find the program when the spec's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes bind-mounted from the guest into a container whose `/dev`
/// is a fresh tmpfs.
pub const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What a mount target must be before mounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A directory (the usual case).
    Dir,
    /// A file (binding a file or a device node).
    File,
}

/// One component of a path below the rootfs, so that the child can
/// create what is missing one directory at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathComponent {
    /// The path up to and including this component, relative to the rootfs.
    pub path: CString,
    /// Its parent's path, relative to the rootfs (`.` for the rootfs itself).
    pub parent: CString,
    /// Its name.
    pub name: CString,
}

/// A path below the container's rootfs (never the rootfs itself).
///
/// The child resolves it with `openat2(RESOLVE_IN_ROOT)` from a descriptor
/// of the rootfs: a symlink in the rootfs, whatever it points to, resolves
/// inside the rootfs (as it will for the container after `pivot_root`), so
/// an image cannot make the agent create or mount anything outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRoot {
    /// Its components, outermost first; the last is the path itself.
    pub components: Vec<PathComponent>,
}

impl InRoot {
    /// The path, relative to the rootfs.
    pub fn path(&self) -> &std::ffi::CStr {
        self.components.last().map_or(c".", |c| c.path.as_c_str())
    }
}

/// One `mount(2)` inside the new rootfs, before `pivot_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOp {
    /// The source (`proc`, a device, a guest path for binds).
    pub source: Option<CString>,
    /// The target below the rootfs.
    pub target: InRoot,
    /// Whether the target itself is a directory or a file.
    pub kind: Target,
    /// Filesystem type (`None` for binds).
    pub fstype: Option<CString>,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Filesystem data.
    pub data: Option<CString>,
    /// Propagation flags applied after the mount (0: none).
    pub propagation: libc::c_ulong,
    /// Remount read-only after a bind.
    pub remount_ro: bool,
}

/// Capability sets as kernel bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapsPlan {
    /// Capabilities kept in the bounding set; the others are dropped.
    pub bounding: u64,
    /// Effective set.
    pub effective: u64,
    /// Permitted set.
    pub permitted: u64,
    /// Inheritable set.
    pub inheritable: u64,
    /// Ambient set.
    pub ambient: u64,
}

/// The process part: program, environment, identity, limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    /// `argv`.
    pub argv: Vec<CString>,
    /// `envp` (`KEY=value`).
    pub env: Vec<CString>,
    /// Where to look for `argv[0]`, in order (inside the container).
    pub exe_candidates: Vec<CString>,
    /// Working directory inside the container.
    pub cwd: CString,
    /// User id.
    pub uid: libc::uid_t,
    /// Group id.
    pub gid: libc::gid_t,
    /// Additional group ids.
    pub groups: Vec<libc::gid_t>,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    /// Capabilities, when the spec has them (else left as they are: root's).
    pub caps: Option<CapsPlan>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// Give the process a pty (its slave as stdio and controlling
    /// terminal; the agent holds the master).
    pub terminal: bool,
    /// The initial terminal size, `(rows, columns)`.
    pub console_size: Option<(u16, u16)>,
    /// `process.user.umask` ([`DEFAULT_UMASK`] when unset).
    pub umask: libc::mode_t,
    /// `process.oomScoreAdj`, written by the agent before the process runs.
    pub oom_score_adj: Option<i32>,
    /// `process.ioPriority` as the `ioprio_set(2)` value.
    pub io_priority: Option<libc::c_int>,
    /// The container's `linux.personality`, as the `personality(2)` value.
    pub personality: Option<libc::c_ulong>,
    /// The container's seccomp filter.
    pub seccomp: Option<Arc<SeccompProgram>>,
}

/// The container part: namespaces, rootfs, mounts, hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// `CLONE_NEW*` flags of the namespaces to create.
    pub clone_flags: libc::c_int,
    /// The rootfs, absolute in the agent's view.
    pub rootfs: CString,
    /// Remount the root read-only after `pivot_root`.
    pub readonly_root: bool,
    /// The mounts, in order.
    pub mounts: Vec<MountOp>,
    /// Symlinks `(contents, link)` to create below the rootfs (`/dev/fd`, ...).
    pub symlinks: Vec<(CString, InRoot)>,
    /// The hostname (needs a UTS namespace).
    pub hostname: Option<CString>,
    /// The ID maps of its user namespace (`CLONE_NEWUSER` in `clone_flags`).
    pub user_ns: Option<IdMaps>,
    /// `linux.devices`, made after the mounts.
    pub devices: Vec<DeviceNode>,
    /// `linux.sysctl`: `(/proc/sys path, value)`, written after `pivot_root`.
    pub sysctls: Vec<(CString, CString)>,
    /// `linux.readonlyPaths`, remounted read-only after the sysctls.
    pub readonly_paths: Vec<CString>,
    /// `linux.maskedPaths`, covered last.
    pub masked_paths: Vec<CString>,
    /// `linux.rootfsPropagation` as `MS_*` flags, applied to `/` after
    /// `pivot_root` (0: stays private).
    pub rootfs_propagation: libc::c_ulong,
    /// The container's first process.
    pub process: ProcessPlan,
}

fn invalid(container_id: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason: reason.into(),
    }
}

fn cstring(container_id: &str, what: &str, s: impl Into<Vec<u8>>) -> Result<CString> {
    CString::new(s).map_err(|_| invalid(container_id, format!("{what} contains a NUL byte")))
}

fn path_cstring(container_id: &str, what: &str, p: &Path) -> Result<CString> {
    cstring(
        container_id,
        what,
        p.as_os_str().as_encoded_bytes().to_vec(),
    )
}

/// The absolute `dest` as a path below the rootfs, refusing `..` (so no
/// target escapes the rootfs by its spelling; symlinks are the child's
/// part, see [`InRoot`]) and the rootfs itself.
fn below(container_id: &str, dest: &Path) -> Result<InRoot> {
    if !dest.is_absolute() {
        return Err(invalid(
            container_id,
            format!("mount destination {} is not absolute", dest.display()),
        ));
    }
    let mut components = Vec::new();
    let mut path = PathBuf::new();
    for c in dest.components() {
        match c {
            Component::Normal(name) => {
                let parent = if path.as_os_str().is_empty() {
                    c".".to_owned()
                } else {
                    path_cstring(container_id, "mount destination", &path)?
                };
                path.push(name);
                components.push(PathComponent {
                    path: path_cstring(container_id, "mount destination", &path)?,
                    parent,
                    name: path_cstring(container_id, "mount destination", Path::new(name))?,
                });
            }
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(
                    container_id,
                    format!("mount destination {} has '..'", dest.display()),
                ));
            }
        }
    }
    if components.is_empty() {
        return Err(invalid(
            container_id,
            format!("mount destination {} is the rootfs itself", dest.display()),
        ));
    }
    Ok(InRoot { components })
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

fn cap_mask(container_id: &str, set: &Option<oci_spec::runtime::Capabilities>) -> Result<u64> {
    let mut mask = 0u64;
    for cap in set.iter().flatten() {
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let known = caps::Capability::from_str(&name).map_err(|_| {
            invalid(
                container_id,
                format!("capability {name:?} unknown to this agent"),
            )
        })?;
        mask |= known.bitmask();
    }
    Ok(mask)
}

/// Plans a process (the container's first, or an exec'd one).
pub fn plan_process(container_id: &str, p: &Process) -> Result<ProcessPlan> {
    let args = p.args().clone().unwrap_or_default();
    let Some(program) = args.first() else {
        return Err(invalid(container_id, "process.args is empty"));
    };
    let env = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let exe_candidates = if program.contains('/') {
        vec![cstring(container_id, "process.args[0]", program.as_str())?]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| {
                cstring(
                    container_id,
                    "PATH",
                    format!("{}/{program}", d.trim_end_matches('/')),
                )
            })
            .collect::<Result<_>>()?
    };
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(invalid(
            container_id,
            format!("process.cwd {} is not absolute", cwd.display()),
        ));
    }
    let caps = p
        .capabilities()
        .as_ref()
        .map(|c| -> Result<CapsPlan> {
            Ok(CapsPlan {
                bounding: cap_mask(container_id, c.bounding())?,
                effective: cap_mask(container_id, c.effective())?,
                permitted: cap_mask(container_id, c.permitted())?,
                inheritable: cap_mask(container_id, c.inheritable())?,
                ambient: cap_mask(container_id, c.ambient())?,
            })
        })
        .transpose()?;
    Ok(ProcessPlan {
        argv: args
            .iter()
            .map(|a| cstring(container_id, "process.args", a.as_str()))
            .collect::<Result<_>>()?,
        env: env
            .iter()
            .map(|e| cstring(container_id, "process.env", e.as_str()))
            .collect::<Result<_>>()?,
        exe_candidates,
        cwd: path_cstring(container_id, "process.cwd", cwd)?,
        uid: p.user().uid(),
        gid: p.user().gid(),
        groups: p.user().additional_gids().clone().unwrap_or_default(),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect(),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        terminal: p.terminal().unwrap_or(false),
        console_size: p
            .console_size()
            .map(|b| (clamp_u16(b.height()), clamp_u16(b.width()))),
        umask: p
            .user()
            .umask()
            .map(|m| {
                if m > 0o777 {
                    Err(invalid(
                        container_id,
                        format!("process.user.umask {m:o} (expected at most 0777)"),
                    ))
                } else {
                    Ok(m as libc::mode_t)
                }
            })
            .transpose()?
            .unwrap_or(DEFAULT_UMASK),
        oom_score_adj: p
            .oom_score_adj()
            .map(|o| {
                if (-1000..=1000).contains(&o) {
                    Ok(o)
                } else {
                    Err(invalid(
                        container_id,
                        format!("process.oomScoreAdj {o} (expected -1000 to 1000)"),
                    ))
                }
            })
            .transpose()?,
        io_priority: p
            .io_priority()
            .as_ref()
            .map(|io| linux::io_priority(container_id, io.class(), io.priority()))
            .transpose()?,
        personality: None,
        seccomp: None,
    })
}

fn clamp_u16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// What an exec'd process inherits from its container: the seccomp filter
/// and the personality (as runc does for `runc exec`).
pub fn inherit(process: &mut ProcessPlan, container: &ProcessPlan) {
    process.seccomp = container.seccomp.clone();
    process.personality = container.personality;
}

/// Plans a container from its spec; `rootfs` is where its root filesystem
/// is mounted in the guest (the spec's `root.path`, made absolute).
pub fn plan_container(container_id: &str, spec: &Spec, rootfs: &Path) -> Result<ContainerPlan> {
    let cid = container_id;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(cid, "the spec has no process"))?;
    let mut process = plan_process(cid, process)?;
    if !rootfs.is_absolute() {
        return Err(invalid(
            cid,
            format!("rootfs {} is not absolute", rootfs.display()),
        ));
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let clone_flags = namespaces(cid, &linux)?;

    let hostname = spec.hostname().as_ref().filter(|h| !h.is_empty());
    if hostname.is_some() && clone_flags & libc::CLONE_NEWUTS == 0 {
        return Err(invalid(cid, "hostname set without a uts namespace"));
    }
    let uid_mappings = linux.uid_mappings().clone().unwrap_or_default();
    let gid_mappings = linux.gid_mappings().clone().unwrap_or_default();
    let user_ns = if clone_flags & libc::CLONE_NEWUSER != 0 {
        Some(linux::id_maps(
            cid,
            &uid_mappings,
            &gid_mappings,
            process.uid,
            process.gid,
        )?)
    } else if !uid_mappings.is_empty() || !gid_mappings.is_empty() {
        return Err(invalid(
            cid,
            "linux.uidMappings/gidMappings without a user namespace in linux.namespaces",
        ));
    } else {
        None
    };
    if let Some(profile) = linux.seccomp() {
        process.seccomp = Some(Arc::new(seccomp::compile(cid, profile)?));
    }
    process.personality = linux
        .personality()
        .as_ref()
        .map(|p| linux::personality(cid, p))
        .transpose()?;
    let (mounts, symlinks) = mounts::spec_mounts(cid, spec)?;
    let empty = Vec::new();
    Ok(ContainerPlan {
        clone_flags,
        rootfs: path_cstring(cid, "root.path", rootfs)?,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        symlinks,
        hostname: hostname
            .map(|h| cstring(cid, "hostname", h.as_str()))
            .transpose()?,
        user_ns,
        devices: linux::devices(cid, linux.devices().as_ref().unwrap_or(&empty))?,
        sysctls: linux::sysctls(
            cid,
            &linux.sysctl().clone().unwrap_or_default(),
            clone_flags & libc::CLONE_NEWIPC != 0,
            clone_flags & libc::CLONE_NEWUTS != 0,
        )?,
        readonly_paths: linux::container_paths(
            cid,
            "linux.readonlyPaths",
            linux.readonly_paths().as_ref().unwrap_or(&Vec::new()),
        )?,
        masked_paths: linux::container_paths(
            cid,
            "linux.maskedPaths",
            linux.masked_paths().as_ref().unwrap_or(&Vec::new()),
        )?,
        rootfs_propagation: linux::propagation(cid, linux.rootfs_propagation().as_deref())?,
        process,
    })
}

/// The `CLONE_NEW*` flags of the namespaces the container gets (always a
/// mount namespace: `pivot_root` must not change the agent's).
fn namespaces(cid: &str, linux: &oci_spec::runtime::Linux) -> Result<libc::c_int> {
    let mut clone_flags = libc::CLONE_NEWNS;
    for ns in linux.namespaces().iter().flatten() {
        if ns.path().is_some() {
            // Joining an existing namespace by path: the guest shares the
            // network (and only the network) with the VM for now.
            if ns.typ() == LinuxNamespaceType::Network {
                continue;
            }
            return Err(Error::Unsupported(vc_types::Unsupported::new(
                format!("joining a {} namespace by path", ns.typ()),
                format!(
                    "container {cid:?}: the agent creates namespaces, it joins only the network one"
                ),
            )));
        }
        clone_flags |= match ns.typ() {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            // Shared with the VM for now (the sandbox is the network unit).
            LinuxNamespaceType::Network => 0,
            other => {
                return Err(Error::Unsupported(vc_types::Unsupported::new(
                    format!("the {other} namespace"),
                    format!("container {cid:?}: not implemented by this agent"),
                )));
            }
        };
    }
    Ok(clone_flags)
}

#[cfg(test)]
mod tests;
