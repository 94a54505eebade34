//! Profiles compiled, then loaded for real in a forked child on the host,
//! which checks what its system calls get.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Act, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator as Op, LinuxSyscall, LinuxSyscallBuilder,
};

use super::*;

#[path = "../../../tests/docker_profile/mod.rs"]
mod docker_profile;

fn rule(names: &[&str], action: Act, errno: Option<u32>) -> LinuxSyscall {
    let mut b = LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    b.build().unwrap()
}

fn profile(default: Act, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(default)
        .syscalls(rules)
        .build()
        .unwrap()
}

/// Forks; the child loads `program` and returns `body()`'s value as its
/// exit code. Returns the wait status. The child only makes system calls.
fn in_child(program: &SeccompProgram, body: impl FnOnce() -> i32) -> libc::c_int {
    // SAFETY: the child runs only system calls (load, then `body`'s) and
    // `_exit`s; it touches no lock of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match program.load() {
            Ok(()) => body(),
            Err(e) => 200 + e.min(50),
        };
        // SAFETY: ends the child only.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn exit_code(status: libc::c_int) -> i32 {
    assert!(libc::WIFEXITED(status), "killed: status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// The errno of a failed call, or 0.
fn errno_of(ret: libc::c_long) -> i32 {
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn mkdir_errno() -> i32 {
    // SAFETY: mkdir of a path below a directory that does not exist.
    errno_of(unsafe { libc::mkdir(c"/nonexistent-vc-dir/x".as_ptr(), 0o755) } as libc::c_long)
}

#[test]
fn errno_rules_answer_with_their_errno() {
    let p = compile(
        "c1",
        &profile(
            Act::ScmpActAllow,
            vec![rule(&["mkdir", "mkdirat"], Act::ScmpActErrno, None)],
        ),
    )
    .unwrap();
    // Unfiltered, the path's parent is missing: ENOENT. Filtered: EPERM.
    assert_eq!(mkdir_errno(), libc::ENOENT);
    assert_eq!(exit_code(in_child(&p, mkdir_errno)), libc::EPERM);

    let p = compile(
        "c1",
        &profile(
            Act::ScmpActAllow,
            vec![rule(
                &["mkdir", "mkdirat"],
                Act::ScmpActErrno,
                Some(libc::EROFS as u32),
            )],
        ),
    )
    .unwrap();
    assert_eq!(exit_code(in_child(&p, mkdir_errno)), libc::EROFS);
}

#[test]
fn the_default_errno_applies_to_everything_not_allowed() {
    let mut prof = profile(
        Act::ScmpActErrno,
        vec![rule(
            &["exit", "exit_group", "getpid"],
            Act::ScmpActAllow,
            None,
        )],
    );
    prof.set_default_errno_ret(Some(libc::ENOSYS as u32));
    let p = compile("c1", &prof).unwrap();
    let status = in_child(&p, || {
        // SAFETY: plain system calls.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        // SAFETY: as above.
        let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
        if pid <= 0 {
            return 1;
        }
        errno_of(ppid)
    });
    assert_eq!(exit_code(status), libc::ENOSYS);
}

#[test]
fn kill_actions_kill_with_sigsys() {
    for act in [
        Act::ScmpActKill,
        Act::ScmpActKillThread,
        Act::ScmpActKillProcess,
        Act::ScmpActTrap,
    ] {
        let p = compile(
            "c1",
            &profile(Act::ScmpActAllow, vec![rule(&["getppid"], act, None)]),
        )
        .unwrap();
        let status = in_child(&p, || {
            // SAFETY: a plain system call (that the filter kills).
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "{act:?}: status {status:#x}"
        );
    }
}

#[test]
fn log_and_allow_let_the_call_through() {
    let mut prof = profile(
        Act::ScmpActAllow,
        vec![rule(&["getppid"], Act::ScmpActLog, None)],
    );
    prof.set_flags(Some(vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagLog,
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    ]));
    let p = compile("c1", &prof).unwrap();
    assert_eq!(p.flags, FLAG_LOG | FLAG_TSYNC | FLAG_SPEC_ALLOW);
    // SAFETY: a plain system call.
    let ppid = unsafe { libc::getpid() };
    let status = in_child(&p, || {
        // SAFETY: as above.
        (unsafe { libc::syscall(libc::SYS_getppid) } == libc::c_long::from(ppid)) as i32
    });
    assert_eq!(exit_code(status), 1);
}

fn getpriority_errno(which: libc::c_int) -> i32 {
    // SAFETY: a plain system call.
    errno_of(unsafe { libc::syscall(libc::SYS_getpriority, which, 0) })
}

#[test]
fn argument_conditions_and_masked_eq() {
    let arg = |index: usize, value: u64, two: Option<u64>, op| {
        let mut b = LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op);
        if let Some(t) = two {
            b = b.value_two(t);
        }
        b.build().unwrap()
    };
    let mut masked = rule(
        &["getpriority"],
        Act::ScmpActErrno,
        Some(libc::EACCES as u32),
    );
    // (which & 0xfe) == 0: PRIO_PROCESS (0) and PRIO_PGRP (1), not PRIO_USER (2).
    masked.set_args(Some(vec![arg(0, 0xfe, Some(0), Op::ScmpCmpMaskedEq)]));
    let p = compile("c1", &profile(Act::ScmpActAllow, vec![masked])).unwrap();
    let status = in_child(&p, || {
        let got = [0, 1, 2].map(getpriority_errno);
        (got == [libc::EACCES, libc::EACCES, 0]) as i32
    });
    assert_eq!(exit_code(status), 1);

    // Two conditions on one argument: either matches (runc's rule).
    let mut either = rule(
        &["getpriority"],
        Act::ScmpActErrno,
        Some(libc::EACCES as u32),
    );
    either.set_args(Some(vec![
        arg(0, 0, None, Op::ScmpCmpEq),
        arg(0, 2, None, Op::ScmpCmpEq),
    ]));
    let p = compile("c1", &profile(Act::ScmpActAllow, vec![either])).unwrap();
    let status = in_child(&p, || {
        let got = [0, 1, 2].map(getpriority_errno);
        (got == [libc::EACCES, 0, libc::EACCES]) as i32
    });
    assert_eq!(exit_code(status), 1);

    // Conditions on two arguments: both must hold; GT, NE, LE.
    let mut both = rule(
        &["getpriority"],
        Act::ScmpActErrno,
        Some(libc::EACCES as u32),
    );
    both.set_args(Some(vec![
        arg(0, 0, None, Op::ScmpCmpGt),
        arg(1, 7, None, Op::ScmpCmpNe),
    ]));
    let p = compile("c1", &profile(Act::ScmpActAllow, vec![both])).unwrap();
    let status = in_child(&p, || {
        let got = [0, 1, 2].map(getpriority_errno);
        (got == [0, libc::EACCES, libc::EACCES]) as i32
    });
    assert_eq!(exit_code(status), 1);
}

#[test]
fn other_architectures_are_added() {
    let mut prof = profile(
        Act::ScmpActAllow,
        vec![rule(&["mkdir"], Act::ScmpActErrno, None)],
    );
    prof.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    let multi = compile("c1", &prof).unwrap();
    prof.set_architectures(None);
    let native = compile("c1", &prof).unwrap();
    // The x86 and x32 tables make the program longer.
    assert!(
        multi.insns.len() > native.insns.len(),
        "{} vs {}",
        multi.insns.len(),
        native.insns.len()
    );
    assert_eq!(exit_code(in_child(&multi, mkdir_errno)), libc::EPERM);
}

#[test]
fn dockers_default_profile_loads_and_denies_unshare() {
    let p = compile("c1", &docker_profile::docker_default()).unwrap();
    let status = in_child(&p, || {
        // SAFETY: plain system calls.
        let userns = errno_of(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long);
        // A user namespace through clone's flags is refused too.
        // SAFETY: as above; the filter answers before the kernel acts.
        let cloned = errno_of(unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                0,
                0,
                0,
                0,
            )
        });
        // SAFETY: as above.
        let pid_ok = unsafe { libc::syscall(libc::SYS_getpid) } > 0;
        if pid_ok && userns == libc::EPERM && cloned == libc::EPERM {
            0
        } else {
            1
        }
    });
    assert_eq!(exit_code(status), 0);
}

#[test]
fn unknown_syscall_names_are_left_out_and_reported() {
    let p = compile(
        "c1",
        &profile(
            Act::ScmpActAllow,
            vec![rule(
                &["mkdir", "no_such_syscall_vc"],
                Act::ScmpActErrno,
                None,
            )],
        ),
    )
    .unwrap();
    assert_eq!(p.unknown_syscalls, ["no_such_syscall_vc"]);
    assert_eq!(exit_code(in_child(&p, mkdir_errno)), libc::EPERM);
}

#[test]
fn profiles_the_agent_cannot_apply_are_errors() {
    let bad_index = {
        let mut r = rule(&["read"], Act::ScmpActErrno, None);
        r.set_args(Some(vec![
            LinuxSeccompArgBuilder::default()
                .index(6usize)
                .value(1u64)
                .op(Op::ScmpCmpEq)
                .build()
                .unwrap(),
        ]));
        r
    };
    for (what, rules) in [
        ("argument index 6", vec![bad_index]),
        ("without names", vec![rule(&[], Act::ScmpActErrno, None)]),
        (
            "does not fit in 16 bits",
            vec![rule(&["read"], Act::ScmpActErrno, Some(70_000))],
        ),
    ] {
        match compile("c1", &profile(Act::ScmpActAllow, rules)) {
            Err(Error::InvalidRequest { reason, .. }) => assert!(reason.contains(what), "{reason}"),
            other => panic!("{what}: expected InvalidRequest, got {other:?}"),
        }
    }
    assert!(matches!(
        compile(
            "c1",
            &profile(
                Act::ScmpActAllow,
                vec![rule(&["read"], Act::ScmpActNotify, None)]
            )
        ),
        Err(Error::Unsupported(_))
    ));
    let mut prof = profile(Act::ScmpActAllow, vec![]);
    prof.set_flags(Some(vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
    ]));
    assert!(matches!(compile("c1", &prof), Err(Error::Unsupported(_))));
}
