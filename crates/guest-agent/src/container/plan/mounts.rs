//! The spec's `mounts`, and what a tmpfs `/dev` gets besides (the basic
//! devices bound from the guest, the `/dev/fd`, stdio and `ptmx` links).

use std::ffi::CString;
use std::path::Path;

use oci_spec::runtime::Spec;

use super::{
    DEFAULT_DEVICES, InRoot, MountOp, Target, below, cstring, mount_options, path_cstring,
};
use crate::error::Result;

/// Symlinks `(contents, link)` to make below the rootfs.
pub type Symlinks = Vec<(CString, InRoot)>;

/// One spec mount as a `mount(2)`; `true` when it is a tmpfs on `/dev`.
fn mount_op(cid: &str, m: &oci_spec::runtime::Mount) -> Result<(MountOp, bool)> {
    let mut dev_tmpfs = false;
    let target = below(cid, m.destination())?;
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
        dev_tmpfs = true;
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
    let op = MountOp {
        source: m
            .source()
            .as_ref()
            .map(|s| path_cstring(cid, "mount source", s))
            .transpose()?,
        target,
        kind,
        fstype: if is_bind {
            None
        } else {
            fstype.map(|t| cstring(cid, "mount type", t)).transpose()?
        },
        // The kernel ignores MS_RDONLY on the first bind: remount after.
        flags: if is_bind {
            flags & !libc::MS_RDONLY
        } else {
            flags
        },
        data: (!opts.data.is_empty())
            .then(|| cstring(cid, "mount options", opts.data.clone()))
            .transpose()?,
        propagation: opts.propagation,
        remount_ro: is_bind && opts.is_readonly(),
    };
    Ok((op, dev_tmpfs))
}

/// The mounts and symlinks of a container, in order.
pub fn spec_mounts(cid: &str, spec: &Spec) -> Result<(Vec<MountOp>, Symlinks)> {
    let mut mounts = Vec::new();
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        let (op, dev_tmpfs) = mount_op(cid, m)?;
        dev_is_tmpfs |= dev_tmpfs;
        mounts.push(op);
    }

    let mut symlinks = Vec::new();
    if dev_is_tmpfs {
        for dev in DEFAULT_DEVICES {
            let path = format!("/dev/{dev}");
            mounts.push(MountOp {
                source: Some(cstring(cid, "device", path.as_str())?),
                target: below(cid, Path::new(&path))?,
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
            // The container's own devpts instance (when it mounts one at
            // /dev/pts) serves ptys: runc's link.
            ("pts/ptmx", "ptmx"),
        ] {
            symlinks.push((
                cstring(cid, "symlink", contents)?,
                below(cid, &Path::new("/dev").join(link))?,
            ));
        }
    }

    Ok((mounts, symlinks))
}
