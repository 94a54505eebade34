//! The spec's seccomp profile (`linux.seccomp`): compiled to a BPF program
//! by the agent when it plans the container, loaded by the container's
//! process as runc does it: with `noNewPrivileges`, last before `execve`;
//! without it (loading then needs `CAP_SYS_ADMIN`), before the process
//! drops its capabilities and changes its ids. Exec'd processes get the
//! container's profile too.
//!
//! A profile the agent cannot apply is an error of the request (`CreateContainer`
//! fails with `INVALID_ARGUMENT`, or `UNIMPLEMENTED` for `SCMP_ACT_NOTIFY`),
//! never skipped. As runc does, a syscall name that libseccomp does not know
//! (one newer than the library) is left out of the filter, so that a
//! profile written for a newer kernel, Docker's default among them, still
//! loads; the names are returned to be logged.
//!
//! # Why libseccomp and not `seccompiler`
//!
//! The compiler is the C libseccomp (2.5, through the `libseccomp` crate),
//! linked statically: Debian's `libseccomp-dev` ships `libseccomp.a`, which
//! links into the `+crt-static` agent with no extra toolchain
//! (`.cargo/config.toml` sets `LIBSECCOMP_LINK_TYPE=static`). rust-vmm's
//! pure-Rust `seccompiler` was the other candidate and cannot express an
//! OCI profile: one filter has a single match action (an OCI profile mixes
//! `ALLOW`, `ERRNO` with several errnos, `KILL`, ...), it targets only the
//! native architecture (OCI `architectures` adds `x86` and `x32`, each with
//! its own syscall numbers) and it has no name table for every
//! architecture. libseccomp is what runc, crun and Kata's agent use, so the
//! same profile means the same filter.
//!
//! The filter is exported to memory in the agent (which may allocate); the
//! child, cloned from a multi-threaded agent, only passes the ready program
//! to `seccomp(2)`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};

use crate::error::{Error, Result};

/// `SECCOMP_FILTER_FLAG_TSYNC`.
const FLAG_TSYNC: libc::c_ulong = 1;
/// `SECCOMP_FILTER_FLAG_LOG`.
const FLAG_LOG: libc::c_ulong = 2;
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
const FLAG_SPEC_ALLOW: libc::c_ulong = 4;
/// The kernel's `BPF_MAXINSNS`.
const MAX_INSNS: usize = 4096;
/// The highest argument index of a syscall.
const MAX_ARG_INDEX: usize = 5;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

/// A compiled profile, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompProgram {
    /// The filter.
    pub insns: Vec<Insn>,
    /// `SECCOMP_FILTER_FLAG_*` from the profile's `flags`.
    pub flags: libc::c_ulong,
    /// Syscall names libseccomp does not know, left out (see the module doc).
    pub unknown_syscalls: Vec<String>,
}

impl SeccompProgram {
    /// Installs the filter on the calling thread's process: a single
    /// system call, no allocation (safe to call in the cloned child).
    /// Returns the errno on failure.
    pub fn load(&self) -> std::result::Result<(), i32> {
        let prog = libc::sock_fprog {
            // At most MAX_INSNS, checked when compiled.
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `prog` points to `len` instructions laid out as
        // `sock_filter` (same repr(C) layout), alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        } else {
            Ok(())
        }
    }
}

fn invalid(container_id: &str, reason: String) -> Error {
    Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason: format!("linux.seccomp: {reason}"),
    }
}

fn unsupported(what: &'static str, reason: &'static str) -> Error {
    Error::Unsupported(vc_types::Unsupported::new(what, reason))
}

/// An errno (or trace message) as the kernel's 16-bit return data; unset is
/// EPERM, as in runc.
fn errno_of(container_id: &str, what: &str, errno: Option<u32>) -> Result<i32> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    u16::try_from(errno).map(i32::from).map_err(|_| {
        invalid(
            container_id,
            format!("{what} {errno} does not fit in 16 bits"),
        )
    })
}

fn action(
    container_id: &str,
    what: &str,
    act: LinuxSeccompAction,
    errno: Option<u32>,
) -> Result<ScmpAction> {
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno_of(container_id, what, errno)?),
        LinuxSeccompAction::ScmpActTrace => {
            let msg = errno_of(container_id, what, errno)?;
            ScmpAction::Trace(msg as u16)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(unsupported(
                "seccomp SCMP_ACT_NOTIFY",
                "the guest runs no seccomp agent to hand the notifications to",
            ));
        }
    })
}

fn condition(container_id: &str, name: &str, arg: &LinuxSeccompArg) -> Result<ScmpArgCompare> {
    if arg.index() > MAX_ARG_INDEX {
        return Err(invalid(
            container_id,
            format!(
                "syscall {name}: argument index {} (a syscall has 6 arguments, 0 to 5)",
                arg.index()
            ),
        ));
    }
    let index = arg.index() as u32;
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return Ok(ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            ));
        }
    };
    Ok(ScmpArgCompare::new(index, op, arg.value()))
}

fn flag(container_id: &str, f: LinuxSeccompFilterFlag) -> Result<libc::c_ulong> {
    let _ = container_id;
    match f {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => Ok(FLAG_LOG),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => Ok(FLAG_SPEC_ALLOW),
        // The process is single-threaded when it loads the filter: TSYNC
        // changes nothing, and the kernel accepts it.
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => Ok(FLAG_TSYNC),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => Err(unsupported(
            "seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
            "it applies to SCMP_ACT_NOTIFY listeners, which this agent does not support",
        )),
    }
}

/// Adds one syscall entry of the profile (every name in it) to `ctx`.
/// Returns the names libseccomp does not know.
fn add_rule(
    ctx: &mut ScmpFilterContext,
    container_id: &str,
    default: ScmpAction,
    rule: &LinuxSyscall,
) -> Result<Vec<String>> {
    if rule.names().is_empty() || rule.names().iter().any(String::is_empty) {
        return Err(invalid(
            container_id,
            "a syscalls entry without names".into(),
        ));
    }
    let first = &rule.names()[0];
    let act = action(
        container_id,
        &format!("errnoRet of {first}"),
        rule.action(),
        rule.errno_ret(),
    )?;
    let args = rule.args().clone().unwrap_or_default();
    let conditions: Vec<ScmpArgCompare> = args
        .iter()
        .map(|a| condition(container_id, first, a))
        .collect::<Result<_>>()?;
    // As runc: the default action again is redundant (and libseccomp refuses it).
    if act == default {
        return Ok(Vec::new());
    }
    // As runc: several conditions on one argument are alternatives (one
    // rule each); conditions on distinct arguments must all hold (one rule).
    let mut per_index = [0usize; MAX_ARG_INDEX + 1];
    for a in &args {
        per_index[a.index()] += 1;
    }
    let groups: Vec<Vec<ScmpArgCompare>> = if per_index.iter().any(|n| *n > 1) {
        conditions.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conditions]
    };
    let mut unknown = Vec::new();
    for name in rule.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            unknown.push(name.clone());
            continue;
        };
        for group in &groups {
            let added = if group.is_empty() {
                ctx.add_rule(act, syscall)
            } else {
                ctx.add_rule_conditional(act, syscall, group)
            };
            added.map_err(|e| invalid(container_id, format!("syscall {name}: {e}")))?;
        }
    }
    Ok(unknown)
}

/// Compiles `profile` for the container `container_id`.
pub fn compile(container_id: &str, profile: &LinuxSeccomp) -> Result<SeccompProgram> {
    let default = action(
        container_id,
        "defaultErrnoRet",
        profile.default_action(),
        profile.default_errno_ret(),
    )?;
    let mut ctx = ScmpFilterContext::new(default)
        .map_err(|e| invalid(container_id, format!("creating the filter: {e}")))?;
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let scmp = ScmpArch::from_str(&name).map_err(|_| {
            invalid(
                container_id,
                format!("architecture {name} is unknown to libseccomp"),
            )
        })?;
        let present = ctx.is_arch_present(scmp).unwrap_or(false);
        if !present {
            ctx.add_arch(scmp)
                .map_err(|e| invalid(container_id, format!("architecture {name}: {e}")))?;
        }
    }
    let mut flags = 0;
    for f in profile.flags().iter().flatten() {
        flags |= flag(container_id, *f)?;
    }
    let syscalls = profile.syscalls().clone().unwrap_or_default();
    // As runc: libseccomp's binary-tree layout for long profiles (Docker's
    // default has hundreds of names); a library without it builds the
    // linear layout, which is as correct.
    if syscalls.len() > 32 {
        let _ = ctx.set_ctl_optimize(2);
    }
    let mut unknown_syscalls = Vec::new();
    for rule in &syscalls {
        unknown_syscalls.extend(add_rule(&mut ctx, container_id, default, rule)?);
    }
    let insns = export(&ctx).map_err(|e| invalid(container_id, format!("exporting: {e}")))?;
    if insns.is_empty() || insns.len() > MAX_INSNS {
        return Err(invalid(
            container_id,
            format!(
                "the filter has {} instructions (the kernel takes 1 to {MAX_INSNS})",
                insns.len()
            ),
        ));
    }
    Ok(SeccompProgram {
        insns,
        flags,
        unknown_syscalls,
    })
}

/// The filter's BPF program, through a memfd (libseccomp 2.5 exports to a
/// file descriptor only).
fn export(ctx: &ScmpFilterContext) -> std::io::Result<Vec<Insn>> {
    // SAFETY: memfd_create with a NUL-terminated name and plain flags.
    let fd = unsafe { libc::memfd_create(c"vc-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    ctx.export_bpf(&file).map_err(std::io::Error::other)?;
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    const SIZE: usize = std::mem::size_of::<Insn>();
    if bytes.len() % SIZE != 0 {
        return Err(std::io::Error::other(format!(
            "{} bytes is not a whole number of instructions",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(SIZE)
        .map(|c| Insn {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests;
