//! The few `bpf(2)` commands the device filter needs, called directly.
//!
//! Each command takes a pointer to `union bpf_attr` and its size; the
//! structs here are the leading members of the union's member for that
//! command (`include/uapi/linux/bpf.h`). The kernel reads `size` bytes and
//! treats the members it knows beyond them as zero.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::program::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs on one cgroup, all of which must
/// allow an access; what runc attaches with, so that a replacement can be
/// attached before the old program is detached.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The program's name, as `bpftool prog` shows it (15 bytes at most).
const PROG_NAME: &[u8; 10] = b"vc_devices";

/// The `BPF_PROG_LOAD` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` / `BPF_PROG_DETACH` member.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` member.
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` member.
#[repr(C)]
#[derive(Default)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Calls `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
///
/// `T` must be the `bpf_attr` member for `cmd`, and every pointer it holds
/// must be valid for what the kernel does with it during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the size passed is its own.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd() as u32
}

/// Loads a device program; with `log`, the verifier writes its log there.
pub(crate) fn load(insns: &[Insn], license: &CStr, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let code: Vec<[u8; 8]> = insns.iter().map(|i| i.to_bytes()).collect();
    let mut name = [0u8; 16];
    name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(code.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: `attr` is the PROG_LOAD member; `code`, `license` and the log
    // buffer outlive the call, and the log size is the buffer's.
    let raw = unsafe { bpf(BPF_PROG_LOAD, &mut attr)? };
    // SAFETY: on success the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// Attaches `prog` to the cgroup `cgroup` (a directory fd), beside the
/// programs already there.
pub(crate) fn attach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: fd(cgroup),
        attach_bpf_fd: fd(prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: `attr` is the PROG_ATTACH member and holds no pointers.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// Detaches `prog` from the cgroup `cgroup`.
pub(crate) fn detach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: fd(cgroup),
        attach_bpf_fd: fd(prog),
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: `attr` is the PROG_DETACH member and holds no pointers.
    unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(drop)
}

/// The ids of the device programs attached to the cgroup itself (not
/// those it inherits).
pub(crate) fn query(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 16];
    loop {
        let mut attr = ProgQuery {
            target_fd: fd(cgroup),
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the PROG_QUERY member; `prog_ids` points to
        // `prog_cnt` writable u32s that outlive the call.
        match unsafe { bpf(BPF_PROG_QUERY, &mut attr) } {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // More programs than room: the kernel says how many.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() =>
            {
                ids.resize(attr.prog_cnt as usize, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A file descriptor for the program with kernel id `id`.
pub(crate) fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdById {
        prog_id: id,
        ..Default::default()
    };
    // SAFETY: `attr` is the GET_FD_BY_ID member and holds no pointers.
    let raw = unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)? };
    // SAFETY: on success the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}
