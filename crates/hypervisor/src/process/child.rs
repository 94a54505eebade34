//! What runs in forked children, between `fork` and `exec` or `_exit`.
//!
//! The creator is multi-threaded (tokio), so a forked child may only make
//! async-signal-safe calls until it execs: no allocation, no locks, no
//! panics, no Rust I/O. Everything here works on a [`ChildPlan`] prepared
//! before the fork, on stack buffers, and on raw libc calls.
//!
//! Channels (both `AF_UNIX` stream socket pairs, so that a write to a
//! creator that died is `EPIPE` with `MSG_NOSIGNAL`, never a `SIGPIPE`):
//! - the **gate**: the program waits for [`GATE_OPEN`] before it execs;
//!   end of file (the creator died or gave up before recording it) makes
//!   it exit without running anything;
//! - the **report**: children tell the creator the program's pid (the
//!   keeper), a failed fork or a failed exec, as 5-byte messages (a tag
//!   and a native-endian `i32`). End of file after the gate opened means
//!   the exec succeeded (the report socket is close-on-exec).

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::os::fd::RawFd;

use super::stat;

/// Report tag: the keeper's child, the program, has this pid.
pub(super) const TAG_PID: u8 = b'P';
/// Report tag: `chdir` or `execve` failed with this errno.
pub(super) const TAG_EXEC: u8 = b'X';
/// Report tag: a `fork` or the fd setup failed with this errno.
pub(super) const TAG_FORK: u8 = b'F';
/// What the creator writes to open the gate: one byte for the program,
/// one left for the keeper to learn that the program was recorded.
pub(super) const GATE_OPEN: &[u8; 2] = b"GG";
/// Exit code of a program whose gate closed before it was let go.
pub(super) const GATE_CLOSED_EXIT: c_int = 125;
/// Exit code of a child that failed to set up or exec.
pub(super) const SETUP_FAILED_EXIT: c_int = 127;

/// The gate's fd in the program (and the keeper).
pub(super) const FD_GATE: RawFd = 3;
/// The report's fd in the program (and the keeper).
pub(super) const FD_REPORT: RawFd = 4;
/// The ledger dir's fd in the keeper.
pub(super) const FD_DIR: RawFd = 5;
/// The first fd passed on to the program (`ProcessSpec::pass_fd`): the
/// program keeps fds from here on across its exec.
pub const FIRST_PASSED_FD: RawFd = 6;
/// Most fds passed on to the program.
pub const MAX_PASSED_FDS: usize = 16;
/// Most fds a child keeps: stdin, stdout, stderr, gate, report, dir (a
/// placeholder where there is no keeper), and the passed ones.
pub(super) const MAX_FDS: usize = FIRST_PASSED_FD as usize + MAX_PASSED_FDS;
/// The keeper's process name ([`KEEPER_NAME`](super::KEEPER_NAME)).
pub(super) const KEEPER_COMM: &CStr = c"vc-keeper";
/// Highest signal number on Linux (`NSIG - 1`).
const MAX_SIGNAL: c_int = 64;

/// Everything a forked child needs, prepared before the fork.
pub(super) struct ChildPlan<'a> {
    /// The program, resolved to a path.
    pub program: &'a CStr,
    /// NULL-terminated `argv`.
    pub argv: &'a [*const c_char],
    /// NULL-terminated `envp`.
    pub envp: &'a [*const c_char],
    /// Directory the program runs in (the keeper itself runs in `/`).
    pub cwd: Option<&'a CStr>,
    /// The creator's fds that become fds `0..nfds` in the child.
    pub fds: [RawFd; MAX_FDS],
    /// How many of `fds` are used.
    pub nfds: usize,
    /// Lowest fd number above every source and target fd.
    pub dup_base: RawFd,
    /// Highest fd to close one by one where `close_range` is missing.
    pub fd_limit: c_uint,
    /// The creator's pid (a child whose parent changed gives up).
    pub creator: libc::pid_t,
}

/// The program of a [`DiesWithOwner`](super::ProcessLifetime) spawn,
/// forked by the creator's long-lived spawner thread: dies with it
/// (`PR_SET_PDEATHSIG`), leaves the creator's session (a Ctrl-C at the
/// terminal, or `timeout`/a service manager signalling the creator's
/// process group, is the creator's to handle, not the VMM's), sets up its
/// fds, waits at the gate, execs.
///
/// # Safety
/// Call only in a freshly forked child; `plan` must be valid.
pub(super) unsafe fn run_owned_program(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls on prepared data follow.
    unsafe {
        reset_signals();
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // The creator may have died between fork and prctl: then no
        // signal will come, so give up now instead of being orphaned.
        if libc::getppid() != plan.creator {
            libc::_exit(GATE_CLOSED_EXIT);
        }
        libc::setsid();
        install_fds(plan);
        gate_and_exec(plan)
    }
}

/// The intermediate child of an [`OutlivesOwner`](super::ProcessLifetime)
/// spawn: forks the keeper and exits at once, so that the creator reaps it
/// promptly and the keeper is re-parented away from the creator.
///
/// # Safety
/// Call only in a freshly forked child; `plan` must be valid.
pub(super) unsafe fn run_intermediate(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls on prepared data follow.
    unsafe {
        reset_signals();
        match libc::fork() {
            -1 => {
                send_report(plan.fds[FD_REPORT as usize], TAG_FORK, errno());
                libc::_exit(SETUP_FAILED_EXIT)
            }
            0 => run_keeper(plan),
            _ => libc::_exit(0),
        }
    }
}

/// The keeper (Podman's conmon is the model): a session of its own, no fd
/// of the creator, forks the program, reports its pid, waits for it and
/// writes its exit status next to the ledger, then exits.
unsafe fn run_keeper(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls on prepared data follow.
    unsafe {
        libc::setsid();
        install_fds(plan);
        // The name tells `terminate` that a status is coming.
        libc::prctl(libc::PR_SET_NAME, KEEPER_COMM.as_ptr(), 0, 0, 0);
        // Pin no mount of the creator's working directory.
        libc::chdir(c"/".as_ptr());
        let pid = libc::fork();
        if pid == -1 {
            send_report(FD_REPORT, TAG_FORK, errno());
            libc::_exit(SETUP_FAILED_EXIT);
        }
        if pid == 0 {
            gate_and_exec(plan);
        }
        // A report to a creator that died is EPIPE (MSG_NOSIGNAL), but the
        // keeper must not die of any stray SIGPIPE either.
        set_disposition(libc::SIGPIPE, libc::SIG_IGN);
        let start_time = read_start_time(pid);
        send_report(FD_REPORT, TAG_PID, pid);
        libc::close(FD_REPORT);
        let status = wait_for(pid);
        // The second gate byte says the creator recorded the program; a
        // program it never recorded leaves no status file behind.
        if gate_opened() {
            write_status(pid, start_time, status);
        }
        libc::_exit(0)
    }
}

/// Waits at the gate, then execs the program; reports a failure and exits.
unsafe fn gate_and_exec(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls on prepared data follow.
    unsafe {
        let mut byte = 0u8;
        if read_retrying(FD_GATE, &mut byte) != 1 || byte != GATE_OPEN[0] {
            libc::_exit(GATE_CLOSED_EXIT);
        }
        if let Some(cwd) = plan.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            send_report(FD_REPORT, TAG_EXEC, errno());
            libc::_exit(SETUP_FAILED_EXIT);
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        send_report(FD_REPORT, TAG_EXEC, errno());
        libc::_exit(SETUP_FAILED_EXIT)
    }
}

/// Moves the plan's fds to `0..nfds` and closes every other fd, so no
/// copy of the creator's files, sockets or `flock`ed state files lives
/// on in the child. Fds above stdio are close-on-exec: the program only
/// sees them until it execs. On failure, reports and exits.
unsafe fn install_fds(plan: &ChildPlan<'_>) {
    // SAFETY: fcntl, dup2, close and syscall are async-signal-safe; the
    // fds come from the plan and are open in the child.
    unsafe {
        // First copy every source above all sources and targets, so that
        // moving one into place never clobbers another.
        let mut moved = [-1; MAX_FDS];
        let report_source = plan.fds[FD_REPORT as usize];
        for (slot, &source) in moved.iter_mut().zip(plan.fds.iter()).take(plan.nfds) {
            *slot = libc::fcntl(source, libc::F_DUPFD_CLOEXEC, plan.dup_base);
            if *slot < 0 {
                send_report(report_source, TAG_FORK, errno());
                libc::_exit(SETUP_FAILED_EXIT);
            }
        }
        for (target, &fd) in (0..).zip(moved.iter()).take(plan.nfds) {
            if libc::dup2(fd, target) < 0 {
                send_report(moved[FD_REPORT as usize], TAG_FORK, errno());
                libc::_exit(SETUP_FAILED_EXIT);
            }
        }
        close_from(plan.nfds as c_uint, plan.fd_limit);
        for fd in 3..(plan.nfds as RawFd).min(FIRST_PASSED_FD) {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        // The passed fds are the program's: they survive its exec.
        for fd in FIRST_PASSED_FD..plan.nfds as RawFd {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
    }
}

/// Closes every fd from `first` up.
unsafe fn close_from(first: c_uint, fd_limit: c_uint) {
    // SAFETY: close_range and close only close descriptors.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, c_uint::MAX, 0) == 0 {
            return;
        }
        // Kernels before 5.9 have no close_range: one by one.
        for fd in first..fd_limit {
            libc::close(fd as c_int);
        }
    }
}

/// Default dispositions and an empty mask for every signal, as a fresh
/// process expects (the creator's handlers would run creator code, and
/// Rust ignores `SIGPIPE`, which an exec would pass on).
unsafe fn reset_signals() {
    // SAFETY: sigemptyset, sigprocmask and sigaction are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for signal in 1..=MAX_SIGNAL {
            // SIGKILL, SIGSTOP and the C library's own signals refuse: fine.
            set_disposition(signal, libc::SIG_DFL);
        }
    }
}

unsafe fn set_disposition(signal: c_int, handler: libc::sighandler_t) {
    // SAFETY: sigaction with a zeroed action and a plain disposition.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

/// Sends a report message; a creator that is gone is ignored.
unsafe fn send_report(fd: RawFd, tag: u8, value: c_int) {
    let mut message = [0u8; 5];
    message[0] = tag;
    message[1..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: send on a socket fd with a stack buffer.
    unsafe {
        let mut sent = 0;
        while sent < message.len() {
            let rest = &message[sent..];
            let n = libc::send(
                fd,
                rest.as_ptr().cast::<c_void>(),
                rest.len(),
                libc::MSG_NOSIGNAL,
            );
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                return;
            }
            sent += n as usize;
        }
    }
}

/// Reads one byte, retrying on `EINTR`; returns what `read` returned.
unsafe fn read_retrying(fd: RawFd, byte: &mut u8) -> isize {
    loop {
        // SAFETY: a one-byte read into a valid stack location.
        let n = unsafe { libc::read(fd, (byte as *mut u8).cast::<c_void>(), 1) };
        // SAFETY: errno is thread-local and async-signal-safe to read.
        if n < 0 && unsafe { errno() } == libc::EINTR {
            continue;
        }
        return n;
    }
}

/// Whether the creator opened the gate (its second byte is there); blocks
/// until the creator writes it or closes its end.
unsafe fn gate_opened() -> bool {
    let mut byte = 0u8;
    // SAFETY: reads the gate fd the keeper holds.
    unsafe { read_retrying(FD_GATE, &mut byte) == 1 && byte == GATE_OPEN[1] }
}

/// Waits for the child `pid`; returns its wait status.
unsafe fn wait_for(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a stack status.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        // SAFETY: errno is thread-local.
        if r == pid || (r < 0 && unsafe { errno() } != libc::EINTR) {
            return status;
        }
    }
}

/// The start time of the (live) child `pid`, 0 if unreadable.
unsafe fn read_start_time(pid: libc::pid_t) -> u64 {
    let mut path = StackBuf::<32>::new();
    path.push(b"/proc/");
    path.push_u64(pid as u64);
    path.push(b"/stat\0");
    let mut buf = [0u8; 1024];
    // SAFETY: open/read/close with a NUL-terminated stack path and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return 0;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len());
        libc::close(fd);
        let len = if n > 0 { n as usize } else { 0 };
        buf.get(..len)
            .and_then(stat::parse)
            .map_or(0, |s| s.start_time)
    }
}

/// Writes `exit-<pid>` in the ledger dir (fd [`FD_DIR`]) atomically, in
/// the format of `ledger::format_status`.
unsafe fn write_status(pid: libc::pid_t, start_time: u64, status: c_int) {
    let mut name = StackBuf::<32>::new();
    name.push(super::ledger::STATUS_PREFIX.as_bytes());
    name.push_u64(pid as u64);
    let mut tmp = StackBuf::<40>::new();
    tmp.push(name.bytes());
    tmp.push(b".tmp\0");
    name.push(b"\0");
    let mut line = StackBuf::<64>::new();
    line.push_u64(start_time);
    if libc::WIFSIGNALED(status) {
        line.push(b" signal ");
        line.push_u64(libc::WTERMSIG(status) as u64);
    } else {
        line.push(b" code ");
        line.push_u64(libc::WEXITSTATUS(status) as u64);
    }
    line.push(b"\n");
    // SAFETY: openat/write/fsync/close/renameat on the keeper's dir fd with
    // NUL-terminated stack names and a stack buffer.
    unsafe {
        let fd = libc::openat(
            FD_DIR,
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            return;
        }
        let bytes = line.bytes();
        let written = libc::write(fd, bytes.as_ptr().cast::<c_void>(), bytes.len());
        libc::fsync(fd);
        libc::close(fd);
        if written == bytes.len() as isize {
            libc::renameat(FD_DIR, tmp.as_ptr(), FD_DIR, name.as_ptr());
            libc::fsync(FD_DIR);
        } else {
            libc::unlinkat(FD_DIR, tmp.as_ptr(), 0);
        }
    }
}

/// The calling thread's errno.
unsafe fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// A fixed-size byte buffer: formatting without allocating. Bytes past
/// the end are dropped (the callers' sizes leave room).
struct StackBuf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    fn new() -> Self {
        Self {
            data: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.data.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or(&[]));
    }

    fn bytes(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or(&[])
    }

    fn as_ptr(&self) -> *const c_char {
        self.data.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keeper_is_named_as_terminate_expects() {
        assert_eq!(KEEPER_COMM.to_str(), Ok(super::super::KEEPER_NAME));
    }

    #[test]
    fn stack_buffers_format_numbers_and_truncate() {
        let mut b = StackBuf::<32>::new();
        b.push(b"exit-");
        b.push_u64(0);
        b.push(b" ");
        b.push_u64(u64::MAX);
        assert_eq!(b.bytes(), b"exit-0 18446744073709551615");
        let mut small = StackBuf::<4>::new();
        small.push_u64(123456);
        assert_eq!(small.bytes(), b"1234");
    }
}
