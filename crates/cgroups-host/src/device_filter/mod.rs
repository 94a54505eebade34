//! The cgroup v2 device allowlist: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` generated from the plan's device rules,
//! loaded with `bpf(2)` and attached to the sandbox cgroup.
//!
//! cgroup v2 has no `devices` controller; the kernel instead runs the
//! device programs attached to a process's cgroup (and its ancestors) on
//! every `open` and `mknod` of a device node, and refuses with `EPERM`
//! what one of them denies. runc, crun and youki all generate that program
//! from the container's rules; so does this module, in the same shape
//! ([`program`]), and attaches it with `BPF_F_ALLOW_MULTI` as runc does.
//!
//! # Why hand-assembled
//!
//! The program is a dozen instruction kinds in a fixed pattern, generated
//! at run time from data, with no maps, helpers or BTF. The crates that
//! load eBPF are built around compiled objects: `aya` loads ELF objects
//! made by a BPF toolchain (`bpf-linker`) and brings an object-file parser
//! along; `libbpf-rs` wraps the C libbpf (built from source with libelf and
//! zlib, awkward in a static binary) and also expects objects compiled with
//! clang. Neither helps with a program made from a rule list, and both are
//! far heavier than the ~20 lines of encoding needed here. runc
//! (through `cilium/ebpf`'s assembler), crun (a C array of instructions)
//! and youki (`rbpf`'s instruction builder, `libbpf-sys` for the syscalls)
//! likewise emit the instructions themselves. The five `bpf(2)` commands
//! used are called directly through `libc::syscall`; nothing is needed at
//! build time, and static binaries link as usual.
//!
//! # Lifetime
//!
//! A program attached to a cgroup stays until it is detached or the cgroup
//! is removed, whoever holds the file descriptor; nothing needs recording
//! beyond the cgroup itself. [`install`] attaches the new program before it
//! detaches the old ones, so the cgroup is never without a filter during an
//! update (while both are attached, an access needs both to allow it).
//!
//! ```
//! use vc_cgroups_host::device_filter::device_program;
//! use vc_cgroups_host::plan::DeviceRule;
//!
//! // Allow /dev/null (c 1:3), deny everything else.
//! let program = device_program(&[DeviceRule::char(1, 3)]);
//! let listing: Vec<String> = program.iter().map(ToString::to_string).collect();
//! assert_eq!(&listing[6..9], ["if r2 != 0x2 goto +4", "if r4 != 0x1 goto +3", "if r5 != 0x3 goto +2"]);
//! assert_eq!(listing.last().unwrap(), "exit");
//! ```

#[cfg(test)]
mod interpret;
pub mod program;
mod syscall;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

pub use program::{Insn, device_program, program_bytes};

use crate::error::Error;
use crate::plan::DeviceRule;

/// The license the programs are loaded under (this crate's); they call no
/// GPL-only helper.
const LICENSE: &std::ffi::CStr = c"Apache-2.0";

/// Size of the buffer for the verifier's log when a load fails.
const VERIFIER_LOG_SIZE: usize = 64 * 1024;

fn open_cgroup(dir: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)?;
    Ok(file.into())
}

/// Loads the program for `rules`; on failure, loads it again with the
/// verifier's log on, to say why.
fn load(dir: &Path, rules: &[DeviceRule]) -> Result<OwnedFd, Error> {
    let insns = device_program(rules);
    syscall::load(&insns, LICENSE, None).map_err(|source| {
        let mut log = vec![0u8; VERIFIER_LOG_SIZE];
        let _ = syscall::load(&insns, LICENSE, Some(&mut log));
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        Error::LoadDeviceProgram {
            path: dir.to_owned(),
            log: String::from_utf8_lossy(&log[..end]).into_owned(),
            source,
        }
    })
}

/// Makes the cgroup v2 directory `dir` enforce `rules` (see
/// [`crate::plan::permits`]) for every process in it and below: loads the
/// program, attaches it, then detaches every other device program attached
/// to `dir` itself. On error the programs attached before stay.
pub fn install(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let attach_error = |source| Error::AttachDeviceProgram {
        path: dir.to_owned(),
        source,
    };
    let program = load(dir, rules)?;
    let cgroup = open_cgroup(dir).map_err(attach_error)?;
    let old = syscall::query(cgroup.as_fd()).map_err(attach_error)?;
    syscall::attach(cgroup.as_fd(), program.as_fd()).map_err(attach_error)?;
    detach_all(dir, &cgroup, &old)
}

/// Detaches every device program attached to the cgroup v2 directory
/// `dir` itself. A missing directory has none.
pub fn remove(dir: &Path) -> Result<(), Error> {
    let cgroup = match open_cgroup(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::AttachDeviceProgram {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let ids = syscall::query(cgroup.as_fd()).map_err(|source| Error::AttachDeviceProgram {
        path: dir.to_owned(),
        source,
    })?;
    detach_all(dir, &cgroup, &ids)
}

/// The kernel ids of the device programs attached to the cgroup v2
/// directory `dir` itself.
pub fn attached(dir: &Path) -> Result<Vec<u32>, Error> {
    let cgroup = open_cgroup(dir).map_err(|source| Error::AttachDeviceProgram {
        path: dir.to_owned(),
        source,
    })?;
    syscall::query(cgroup.as_fd()).map_err(|source| Error::AttachDeviceProgram {
        path: dir.to_owned(),
        source,
    })
}

/// Whether the kernel still has the program with this id.
#[cfg(test)]
pub(crate) fn loaded(id: u32) -> bool {
    syscall::prog_by_id(id).is_ok()
}

fn detach_all(dir: &Path, cgroup: &OwnedFd, ids: &[u32]) -> Result<(), Error> {
    for &id in ids {
        let detached =
            syscall::prog_by_id(id).and_then(|prog| syscall::detach(cgroup.as_fd(), prog.as_fd()));
        match detached {
            // Gone already (detached by someone else in between).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(Error::DetachDeviceProgram {
                    path: dir.to_owned(),
                    program: id,
                    source,
                });
            }
            Ok(()) => {}
        }
    }
    Ok(())
}
