//! The process part of the child: stdio (pipes or the pty slave), session
//! and controlling terminal, rlimits, program lookup, cwd, I/O priority,
//! personality, `no_new_privs`, seccomp (when loaded early), capabilities,
//! ids and umask.

use std::ffi::CStr;
use std::ptr;

use super::sys::check;
use super::{ChildContext, Step};
use crate::container::plan::ProcessPlan;

/// Everything from the process plan up to (not including) `execve` and the
/// late seccomp load; returns the program path chosen.
pub fn setup_process<'a>(
    ctx: &ChildContext<'a>,
    tty_slave: Option<std::os::fd::RawFd>,
) -> Result<&'a CStr, (Step, i32)> {
    let p = ctx.process;
    // The agent ignores SIGPIPE (Rust's runtime does); the program must not
    // inherit that, nor any blocked signal.
    // SAFETY: resetting a disposition to default and clearing the mask of
    // this single-threaded child.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
    }
    match tty_slave {
        Some(slave) => {
            for target in [0, 1, 2] {
                // SAFETY: `slave` is the open pty slave; dup2 clears close-on-exec on the copy.
                check(unsafe { libc::dup2(slave, target) }).map_err(|e| (Step::Stdio, e))?;
            }
        }
        None => {
            for (fd, target) in ctx.stdio.iter().zip([0, 1, 2]) {
                // SAFETY: `fd` is an open pipe end; dup2 clears close-on-exec on the copy.
                check(unsafe { libc::dup2(*fd, target) }).map_err(|e| (Step::Stdio, e))?;
            }
        }
    }
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map_err(|e| (Step::Setsid, e))?;
    if tty_slave.is_some() {
        // SAFETY: stdin is the pty slave; makes it this session's terminal.
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map_err(|e| (Step::Console, e))?;
    }
    for &(resource, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit; the resource number comes from libc's constants.
        check(unsafe { libc::setrlimit(resource as _, &lim) }).map_err(|e| (Step::Rlimit, e))?;
    }
    let mut exe = None;
    for cand in &p.exe_candidates {
        // SAFETY: `cand` is NUL-terminated.
        if unsafe { libc::access(cand.as_ptr(), libc::X_OK) } == 0 {
            exe = Some(cand.as_c_str());
            break;
        }
    }
    let exe = exe.ok_or((Step::ExecutableLookup, libc::ENOENT))?;
    // SAFETY: `cwd` is NUL-terminated.
    check(unsafe { libc::chdir(p.cwd.as_ptr()) }).map_err(|e| (Step::Cwd, e))?;
    if let Some(prio) = p.io_priority {
        // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, value) with integers.
        check(unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, prio) as libc::c_int })
            .map_err(|e| (Step::IoPriority, e))?;
    }
    if let Some(persona) = p.personality {
        // SAFETY: personality(2) with an integer argument.
        check(unsafe { libc::personality(persona) }).map_err(|e| (Step::Personality, e))?;
    }
    if p.no_new_privileges {
        // SAFETY: plain prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(|e| (Step::NoNewPrivileges, e))?;
    }
    // Without no_new_privs loading a filter needs CAP_SYS_ADMIN: load it
    // before the capabilities go (runc's order); with it, last before exec.
    if let Some(filter) = p.seccomp.as_deref()
        && !p.no_new_privileges
    {
        filter.load().map_err(|e| (Step::Seccomp, e))?;
    }
    set_identity(p)?;
    Ok(exe)
}

/// Capabilities and ids: bounding set, groups, gid, uid, then the
/// capability sets and the ambient ones; last the umask.
fn set_identity(p: &ProcessPlan) -> Result<(), (Step, i32)> {
    if let Some(caps) = &p.caps {
        for cap in 0..64u64 {
            if caps.bounding & (1 << cap) == 0 {
                // SAFETY: plain prctl; EINVAL past the kernel's last capability is expected.
                match check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }) {
                    Ok(()) | Err(libc::EINVAL) => {}
                    Err(e) => return Err((Step::CapabilityBounding, e)),
                }
            }
        }
        // SAFETY: plain prctl; keeps permitted caps across setuid.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
            .map_err(|e| (Step::Capabilities, e))?;
    }
    // Raw system calls, not glibc's wrappers: those apply the change to
    // every thread glibc knows of (the "setxid" broadcast) and wait for
    // each to answer; after a raw clone of a multi-threaded agent those
    // threads do not exist in the child, so the static agent hung there
    // forever. The child has one thread: the per-thread call is the whole
    // process.
    // SAFETY: `groups` is a valid slice of gid_t of the given length.
    check(unsafe {
        libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) as libc::c_int
    })
    .map_err(|e| (Step::Setgroups, e))?;
    // SAFETY: plain integer arguments (real, effective, saved: all the same).
    check(unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) as libc::c_int })
        .map_err(|e| (Step::Setgid, e))?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) as libc::c_int })
        .map_err(|e| (Step::Setuid, e))?;
    if let Some(caps) = &p.caps {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        }; // _LINUX_CAPABILITY_VERSION_3
        let split = |m: u64| (m as u32, (m >> 32) as u32);
        let (e0, e1) = split(caps.effective);
        let (p0, p1) = split(caps.permitted);
        let (i0, i1) = split(caps.inheritable);
        let data = [
            Data {
                effective: e0,
                permitted: p0,
                inheritable: i0,
            },
            Data {
                effective: e1,
                permitted: p1,
                inheritable: i1,
            },
        ];
        // SAFETY: capset(2) with a v3 header and the two data words it expects.
        check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int })
            .map_err(|e| (Step::Capabilities, e))?;
        for cap in 0..64u64 {
            if caps.ambient & (1 << cap) != 0 {
                // SAFETY: plain prctl with integer arguments.
                check(unsafe {
                    libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0)
                })
                .map_err(|e| (Step::Capabilities, e))?;
            }
        }
    }
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(p.umask) };
    Ok(())
}

/// Root of a new user namespace whose maps the agent wrote: ids 0, no
/// supplementary groups (raw calls: see `set_identity`).
pub fn become_root() -> Result<(), i32> {
    // SAFETY: plain integer arguments; an empty group list.
    check(unsafe {
        libc::syscall(libc::SYS_setgroups, 0, ptr::null::<libc::gid_t>()) as libc::c_int
    })?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) as libc::c_int })?;
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) as libc::c_int })
}
