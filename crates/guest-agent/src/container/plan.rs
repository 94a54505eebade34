//! From an OCI spec to a launch plan: every path, flag, id and string the
//! child process needs, computed up front. Pure, so it is unit-tested, and
//! so the child (forked from a multi-threaded agent) allocates nothing.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use super::mount_options;
use crate::error::{Error, Result};

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
    /// Allocate a terminal (not supported: refused at planning).
    pub terminal: bool,
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
    if p.terminal().unwrap_or(false) {
        return Err(Error::Unsupported(format!(
            "container {container_id:?}: process.terminal (a pty) is not supported by this agent yet"
        )));
    }
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
        terminal: false,
    })
}

/// Plans a container from its spec; `rootfs` is where its root filesystem
/// is mounted in the guest (the spec's `root.path`, made absolute).
pub fn plan_container(container_id: &str, spec: &Spec, rootfs: &Path) -> Result<ContainerPlan> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(container_id, "the spec has no process"))?;
    let process = plan_process(container_id, process)?;
    if !rootfs.is_absolute() {
        return Err(invalid(
            container_id,
            format!("rootfs {} is not absolute", rootfs.display()),
        ));
    }

    let mut clone_flags = 0;
    let linux = spec.linux().as_ref();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        if ns.path().is_some() {
            // Joining an existing namespace by path: the guest shares the
            // network (and only the network) with the VM for now.
            if ns.typ() == LinuxNamespaceType::Network {
                continue;
            }
            return Err(Error::Unsupported(format!(
                "container {container_id:?}: joining a {} namespace by path",
                ns.typ()
            )));
        }
        clone_flags |= match ns.typ() {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            // Shared with the VM for now (the sandbox is the network unit).
            LinuxNamespaceType::Network => 0,
            other => {
                return Err(Error::Unsupported(format!(
                    "container {container_id:?}: {other} namespace"
                )));
            }
        };
    }
    // pivot_root needs a private mount namespace: the agent's must not change.
    clone_flags |= libc::CLONE_NEWNS;

    let hostname = spec.hostname().as_ref().filter(|h| !h.is_empty());
    if hostname.is_some() && clone_flags & libc::CLONE_NEWUTS == 0 {
        return Err(invalid(
            container_id,
            "hostname set without a uts namespace",
        ));
    }

    let mut mounts = Vec::new();
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        let target = below(container_id, m.destination())?;
        let opts = mount_options::parse(&m.options().clone().unwrap_or_default());
        let fstype = m
            .typ()
            .clone()
            .filter(|t| !t.is_empty() && t != "bind")
            // The guest runs the unified hierarchy only: a v1 `cgroup`
            // mount (every default spec has one at /sys/fs/cgroup) becomes
            // cgroup2, as runc does on unified hosts.
            .map(|t| {
                if t == "cgroup" {
                    "cgroup2".to_owned()
                } else {
                    t
                }
            });
        let is_bind = opts.is_bind() || m.typ().as_deref() == Some("bind");
        if m.destination() == Path::new("/dev") && fstype.as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        // A bind of a file gets a file as its target.
        let kind = match m.source() {
            Some(src) if is_bind && src.is_file() => Target::File,
            _ => Target::Dir,
        };
        let mut flags = opts.flags;
        if is_bind {
            flags |= libc::MS_BIND;
        }
        mounts.push(MountOp {
            source: m
                .source()
                .as_ref()
                .map(|s| path_cstring(container_id, "mount source", s))
                .transpose()?,
            target,
            kind,
            fstype: if is_bind {
                None
            } else {
                fstype
                    .map(|t| cstring(container_id, "mount type", t))
                    .transpose()?
            },
            // The kernel ignores MS_RDONLY on the first bind: remount after.
            flags: if is_bind {
                flags & !libc::MS_RDONLY
            } else {
                flags
            },
            data: (!opts.data.is_empty())
                .then(|| cstring(container_id, "mount options", opts.data.clone()))
                .transpose()?,
            propagation: opts.propagation,
            remount_ro: is_bind && opts.is_readonly(),
        });
    }

    let mut symlinks = Vec::new();
    if dev_is_tmpfs {
        for dev in DEFAULT_DEVICES {
            let path = format!("/dev/{dev}");
            mounts.push(MountOp {
                source: Some(cstring(container_id, "device", path.as_str())?),
                target: below(container_id, Path::new(&path))?,
                kind: Target::File,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                propagation: 0,
                remount_ro: false,
            });
        }
        for (contents, link) in [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ] {
            symlinks.push((
                cstring(container_id, "symlink", contents)?,
                below(container_id, &Path::new("/dev").join(link))?,
            ));
        }
    }

    Ok(ContainerPlan {
        clone_flags,
        rootfs: path_cstring(container_id, "root.path", rootfs)?,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        symlinks,
        hostname: hostname
            .map(|h| cstring(container_id, "hostname", h.as_str()))
            .transpose()?,
        process,
    })
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, PosixRlimitBuilder, ProcessBuilder,
        RootBuilder, SpecBuilder, UserBuilder,
    };

    use super::*;

    fn spec_with(process: Process, ns: &[LinuxNamespaceType]) -> Spec {
        SpecBuilder::default()
            .hostname("box")
            .root(RootBuilder::default().path("rootfs").build().unwrap())
            .process(process)
            .mounts(vec![
                MountBuilder::default()
                    .destination("/proc")
                    .typ("proc")
                    .source("proc")
                    .build()
                    .unwrap(),
                MountBuilder::default()
                    .destination("/dev")
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(vec!["nosuid".to_string(), "mode=755".into()])
                    .build()
                    .unwrap(),
                MountBuilder::default()
                    .destination("/data/in")
                    .typ("bind")
                    .source("/srv")
                    .options(vec!["rbind".to_string(), "ro".into()])
                    .build()
                    .unwrap(),
            ])
            .linux(
                LinuxBuilder::default()
                    .namespaces(
                        ns.iter()
                            .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
                            .collect::<Vec<_>>(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn process(args: &[&str]) -> Process {
        ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(vec!["PATH=/bin:/usr/bin".to_string(), "X=1".into()])
            .cwd("/work")
            .user(
                UserBuilder::default()
                    .uid(1000u32)
                    .gid(100u32)
                    .additional_gids(vec![5u32])
                    .build()
                    .unwrap(),
            )
            .rlimits(vec![
                PosixRlimitBuilder::default()
                    .typ(PosixRlimitType::RlimitNofile)
                    .soft(512u64)
                    .hard(1024u64)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap()
    }

    const ALL_NS: [LinuxNamespaceType; 5] = [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
    ];

    #[test]
    fn plans_namespaces_mounts_and_process() {
        let spec = spec_with(process(&["sh", "-c", "true"]), &ALL_NS);
        let plan = plan_container("c1", &spec, Path::new("/run/c1/rootfs")).unwrap();
        assert_eq!(
            plan.clone_flags,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC
        );
        assert_eq!(plan.hostname.as_deref(), Some(c"box"));
        assert_eq!(plan.rootfs.as_c_str(), c"/run/c1/rootfs");
        let targets: Vec<_> = plan
            .mounts
            .iter()
            .map(|m| m.target.path().to_str().unwrap())
            .collect();
        // Relative to the rootfs: the child resolves them inside it.
        assert_eq!(&targets[..3], ["proc", "dev", "data/in"]);
        // /dev is a tmpfs: the basic devices are bound in after it.
        assert_eq!(targets[3], "dev/null");
        assert_eq!(plan.symlinks[0].1.path(), c"dev/fd");
        assert_eq!(plan.mounts.len(), 3 + DEFAULT_DEVICES.len());
        let bind = &plan.mounts[2];
        assert_eq!(bind.fstype, None);
        assert!(
            bind.remount_ro && bind.flags & libc::MS_RDONLY == 0 && bind.flags & libc::MS_BIND != 0
        );
        assert_eq!(
            bind.target.components,
            [
                PathComponent {
                    path: c"data".to_owned(),
                    parent: c".".to_owned(),
                    name: c"data".to_owned()
                },
                PathComponent {
                    path: c"data/in".to_owned(),
                    parent: c"data".to_owned(),
                    name: c"in".to_owned()
                },
            ]
        );
        assert_eq!(plan.mounts[1].data.as_deref(), Some(c"mode=755"));

        let p = &plan.process;
        assert_eq!(
            p.exe_candidates,
            vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
        );
        assert_eq!((p.uid, p.gid, p.groups.clone()), (1000, 100, vec![5]));
        assert_eq!(
            p.rlimits,
            vec![(libc::RLIMIT_NOFILE as libc::c_int, 512, 1024)]
        );
        assert_eq!(p.cwd.as_c_str(), c"/work");
    }

    #[test]
    fn the_default_specs_v1_cgroup_mount_becomes_cgroup2() {
        let mut spec = spec_with(process(&["true"]), &ALL_NS);
        spec.set_mounts(Some(oci_spec::runtime::get_default_mounts()));
        let plan = plan_container("c1", &spec, Path::new("/r")).unwrap();
        let cgroup = plan
            .mounts
            .iter()
            .find(|m| m.target.path() == c"sys/fs/cgroup")
            .unwrap();
        assert_eq!(cgroup.fstype.as_deref(), Some(c"cgroup2"));
        assert!(cgroup.flags & libc::MS_RDONLY != 0);
    }

    #[test]
    fn a_path_program_is_used_as_is() {
        let p = plan_process("c", &process(&["/opt/app", "x"])).unwrap();
        assert_eq!(p.exe_candidates, vec![c"/opt/app".to_owned()]);
    }

    #[test]
    fn bad_specs_are_refused_with_reasons() {
        let err = plan_process("c", &process(&[])).unwrap_err();
        assert!(err.to_string().contains("process.args is empty"), "{err}");

        let spec = spec_with(process(&["sh"]), &[LinuxNamespaceType::Mount]);
        let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
        assert!(
            err.to_string()
                .contains("hostname set without a uts namespace"),
            "{err}"
        );

        let spec = spec_with(process(&["sh"]), &ALL_NS);
        let err = plan_container("c", &spec, Path::new("relative")).unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }));

        let mut spec = spec_with(process(&["sh"]), &ALL_NS);
        spec.set_mounts(Some(vec![
            MountBuilder::default()
                .destination("/../../etc")
                .typ("tmpfs")
                .build()
                .unwrap(),
        ]));
        let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
        spec.set_mounts(Some(vec![
            MountBuilder::default()
                .destination("/./")
                .typ("tmpfs")
                .build()
                .unwrap(),
        ]));
        let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
        assert!(err.to_string().contains("the rootfs itself"), "{err}");

        let spec = spec_with(
            process(&["sh"]),
            &[LinuxNamespaceType::User, LinuxNamespaceType::Uts],
        );
        assert!(matches!(
            plan_container("c", &spec, Path::new("/r")),
            Err(Error::Unsupported(_))
        ));

        let mut p = process(&["sh"]);
        p.set_terminal(Some(true));
        assert!(matches!(plan_process("c", &p), Err(Error::Unsupported(_))));

        let mut p = process(&["sh"]);
        p.set_env(Some(vec!["A=\0".into()]));
        assert!(
            plan_process("c", &p)
                .unwrap_err()
                .to_string()
                .contains("NUL")
        );
    }

    #[test]
    fn capabilities_become_masks() {
        let mut p = process(&["sh"]);
        let caps: oci_spec::runtime::Capabilities = [
            oci_spec::runtime::Capability::Kill,
            oci_spec::runtime::Capability::Chown,
        ]
        .into_iter()
        .collect();
        let mut lc = oci_spec::runtime::LinuxCapabilities::default();
        lc.set_bounding(Some(caps.clone()));
        lc.set_effective(Some(caps));
        lc.set_permitted(None);
        lc.set_inheritable(None);
        lc.set_ambient(None);
        p.set_capabilities(Some(lc));
        let plan = plan_process("c", &p).unwrap();
        let want = caps::Capability::CAP_KILL.bitmask() | caps::Capability::CAP_CHOWN.bitmask();
        let caps = plan.caps.unwrap();
        assert_eq!(caps.bounding, want);
        assert_eq!(caps.effective, want);
        assert_eq!(caps.permitted, 0);
    }
}
