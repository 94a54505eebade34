//! The `linux` section beyond namespaces and mounts, planned as runc reads
//! it: user-namespace ID maps, device nodes, masked and read-only paths,
//! sysctls, rootfs propagation, personality, and the process's I/O
//! priority. Unknown fields are ignored (as runc does); a value that is
//! there but wrong is an [`Error::InvalidRequest`] naming the field.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Component, Path};

use oci_spec::runtime::{
    IOPriorityClass, LinuxDevice, LinuxDeviceType, LinuxIdMapping, LinuxPersonality,
    LinuxPersonalityDomain,
};

use super::{InRoot, below, cstring, invalid};
use crate::error::Result;

/// The kernel's limit of lines in a `uid_map`/`gid_map` (since Linux 4.15).
const MAX_MAP_LINES: usize = 340;

/// The contents of `/proc/<pid>/uid_map` and `gid_map` for a container
/// with its own user namespace, written by the agent before the container's
/// process goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// `uid_map`: `container-id host-id size` lines.
    pub uid_map: String,
    /// `gid_map`.
    pub gid_map: String,
    /// Whether uid 0 and gid 0 are mapped: the child then becomes root of
    /// the namespace before building the rootfs (as runc's nsexec), so
    /// that what it creates has mapped owners.
    pub root_mapped: bool,
}

/// Whether `id` is inside one of `maps`' container ranges.
fn mapped(maps: &[LinuxIdMapping], id: u32) -> bool {
    maps.iter().any(|m| {
        let start = u64::from(m.container_id());
        (start..start + u64::from(m.size())).contains(&u64::from(id))
    })
}

fn map_text(cid: &str, field: &str, maps: &[LinuxIdMapping]) -> Result<String> {
    if maps.is_empty() {
        return Err(invalid(
            cid,
            format!("a user namespace needs {field} (none given)"),
        ));
    }
    if maps.len() > MAX_MAP_LINES {
        return Err(invalid(
            cid,
            format!(
                "{field}: {} ranges (the kernel takes {MAX_MAP_LINES})",
                maps.len()
            ),
        ));
    }
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (i, m) in maps.iter().enumerate() {
        if m.size() == 0 {
            return Err(invalid(cid, format!("{field}[{i}] has size 0")));
        }
        if end(m.container_id(), m.size()) > 1 << 32 || end(m.host_id(), m.size()) > 1 << 32 {
            return Err(invalid(
                cid,
                format!("{field}[{i}] goes past id 4294967295"),
            ));
        }
        for (j, n) in maps.iter().enumerate().take(i) {
            let overlap =
                |a: u32, b: u32| u64::from(a) < end(b, n.size()) && u64::from(b) < end(a, m.size());
            if overlap(m.container_id(), n.container_id()) || overlap(m.host_id(), n.host_id()) {
                return Err(invalid(cid, format!("{field}[{i}] overlaps {field}[{j}]")));
            }
        }
    }
    Ok(maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect())
}

/// The ID maps of a user namespace, checked as the kernel and runc check
/// them; `uid`/`gid` (the process's) must be mapped.
pub fn id_maps(
    cid: &str,
    uid_mappings: &[LinuxIdMapping],
    gid_mappings: &[LinuxIdMapping],
    uid: u32,
    gid: u32,
) -> Result<IdMaps> {
    let maps = IdMaps {
        uid_map: map_text(cid, "linux.uidMappings", uid_mappings)?,
        gid_map: map_text(cid, "linux.gidMappings", gid_mappings)?,
        root_mapped: mapped(uid_mappings, 0) && mapped(gid_mappings, 0),
    };
    if !mapped(uid_mappings, uid) {
        return Err(invalid(
            cid,
            format!("process.user.uid {uid} is not mapped by linux.uidMappings"),
        ));
    }
    if !mapped(gid_mappings, gid) {
        return Err(invalid(
            cid,
            format!("process.user.gid {gid} is not mapped by linux.gidMappings"),
        ));
    }
    Ok(maps)
}

/// One `linux.devices` node made in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Where, below the rootfs.
    pub target: InRoot,
    /// Its directory, made when missing (`dev/net` for `/dev/net/tun`).
    pub dir: Option<InRoot>,
    /// File type and permission bits (`S_IFCHR | 0o666`, ...).
    pub mode: libc::mode_t,
    /// Its device number.
    pub dev: libc::dev_t,
    /// Owner.
    pub uid: libc::uid_t,
    /// Group.
    pub gid: libc::gid_t,
    /// The same device in the guest (its spec path), bound in instead of
    /// `mknod` in a user namespace, where `mknod` is not allowed (as runc).
    pub guest_path: CString,
}

/// Plans `linux.devices`: paths below `/dev`, a known type, and the
/// permission bits (0666 when the spec gives none, as runc).
pub fn devices(cid: &str, devices: &[LinuxDevice]) -> Result<Vec<DeviceNode>> {
    devices
        .iter()
        .map(|d| {
            let path = d.path();
            let what = format!("linux.devices {}", path.display());
            if !path.starts_with("/dev/") || path.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(cid, format!("{what}: not a path below /dev")));
            }
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                LinuxDeviceType::A => {
                    return Err(invalid(
                        cid,
                        format!("{what}: type \"a\" is not a node type"),
                    ));
                }
            };
            let perm = d.file_mode().filter(|m| *m != 0).unwrap_or(0o666);
            if perm & !0o7777 != 0 && perm & libc::S_IFMT != kind {
                return Err(invalid(
                    cid,
                    format!(
                        "{what}: fileMode {perm:o} does not match type {}",
                        d.typ().as_str()
                    ),
                ));
            }
            let number = |n: i64, which: &str| {
                u32::try_from(n)
                    .map_err(|_| invalid(cid, format!("{what}: {which} number {n} out of range")))
            };
            let (major, minor) = if kind == libc::S_IFIFO {
                (0, 0)
            } else {
                (number(d.major(), "major")?, number(d.minor(), "minor")?)
            };
            let target = below(cid, path)?;
            let dir = (target.components.len() > 1).then(|| InRoot {
                components: target.components[..target.components.len() - 1].to_vec(),
            });
            Ok(DeviceNode {
                target,
                dir,
                mode: kind | (perm & 0o7777),
                dev: libc::makedev(major, minor),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
                guest_path: cstring(
                    cid,
                    "linux.devices.path",
                    path.as_os_str().as_encoded_bytes(),
                )?,
            })
        })
        .collect()
}

/// `maskedPaths` or `readonlyPaths`: absolute container paths (resolved
/// inside the container, after `pivot_root`, as runc does).
pub fn container_paths(cid: &str, field: &str, paths: &[String]) -> Result<Vec<CString>> {
    paths
        .iter()
        .map(|p| {
            let path = Path::new(p);
            if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                return Err(invalid(
                    cid,
                    format!("{field} {p:?} is not a clean absolute path"),
                ));
            }
            cstring(cid, field, p.as_str())
        })
        .collect()
}

/// `linux.sysctl` as `(/proc/sys/... path, value)`, sorted by key. The
/// namespaced ones need their namespace, as runc checks: IPC keys
/// (`kernel.msg*`, `kernel.sem`, `kernel.shm*`, `fs.mqueue.*`) an IPC
/// namespace, `kernel.hostname`/`kernel.domainname` a UTS one. `net.*`
/// keys set the sandbox's network namespace, which the container shares;
/// other keys set the guest kernel, which is the sandbox's own (Kata
/// allows them too).
pub fn sysctls(
    cid: &str,
    sysctl: &HashMap<String, String>,
    ipc_ns: bool,
    uts_ns: bool,
) -> Result<Vec<(CString, CString)>> {
    let mut keys: Vec<_> = sysctl.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let valid = !key.is_empty()
                && key
                    .split(['.', '/'])
                    .all(|c| !c.is_empty() && c != ".." && c != ".");
            if !valid {
                return Err(invalid(cid, format!("linux.sysctl key {key:?}")));
            }
            let ipc = key.starts_with("fs.mqueue.")
                || key.starts_with("kernel.msg")
                || key.starts_with("kernel.shm")
                || key == "kernel.sem";
            if ipc && !ipc_ns {
                return Err(invalid(
                    cid,
                    format!("linux.sysctl {key:?} needs an ipc namespace"),
                ));
            }
            if (key == "kernel.hostname" || key == "kernel.domainname") && !uts_ns {
                return Err(invalid(
                    cid,
                    format!("linux.sysctl {key:?} needs a uts namespace"),
                ));
            }
            // The kernel's own spelling: dots are separators.
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            Ok((
                cstring(cid, "linux.sysctl key", path)?,
                cstring(cid, "linux.sysctl value", sysctl[key].as_str())?,
            ))
        })
        .collect()
}

/// `linux.rootfsPropagation` as `MS_*` flags; empty is none.
pub fn propagation(cid: &str, value: Option<&str>) -> Result<libc::c_ulong> {
    Ok(match value.unwrap_or("") {
        "" => 0,
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        other => {
            return Err(invalid(
                cid,
                format!(
                    "linux.rootfsPropagation {other:?} (expected [r]private, [r]slave, [r]shared or [r]unbindable)"
                ),
            ));
        }
    })
}

/// `linux.personality` as the `personality(2)` argument.
pub fn personality(cid: &str, p: &LinuxPersonality) -> Result<libc::c_ulong> {
    let mut persona: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    for flag in p.flags().iter().flatten() {
        persona |= match flag.as_str() {
            "UNAME26" => 0x002_0000,
            "ADDR_NO_RANDOMIZE" => 0x004_0000,
            "FDPIC_FUNCPTRS" => 0x008_0000,
            "MMAP_PAGE_ZERO" => 0x010_0000,
            "ADDR_COMPAT_LAYOUT" => 0x020_0000,
            "READ_IMPLIES_EXEC" => 0x040_0000,
            "ADDR_LIMIT_32BIT" => 0x080_0000,
            "SHORT_INODE" => 0x100_0000,
            "WHOLE_SECONDS" => 0x200_0000,
            "STICKY_TIMEOUTS" => 0x400_0000,
            "ADDR_LIMIT_3GB" => 0x800_0000,
            other => {
                return Err(invalid(cid, format!("linux.personality flag {other:?}")));
            }
        };
    }
    Ok(persona)
}

/// `process.ioPriority` as the `ioprio_set(2)` value (class << 13 | level).
pub fn io_priority(cid: &str, class: IOPriorityClass, priority: i64) -> Result<libc::c_int> {
    if !(0..=7).contains(&priority) {
        return Err(invalid(
            cid,
            format!("process.ioPriority.priority {priority} (expected 0 to 7)"),
        ));
    }
    let class = match class {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    Ok((class << 13) | priority as libc::c_int)
}
