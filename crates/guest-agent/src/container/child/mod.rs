//! The child side of a launch: runs between `clone(2)` and `execve(2)`.
//!
//! The agent is multi-threaded and the child is created with a raw `clone`
//! (to pass namespace flags), so the child must not allocate or take locks:
//! everything it uses was computed by the planner, and it calls only thin
//! system-call wrappers, or the raw system call where glibc's wrapper does
//! process-wide work (the `set*id` calls). A failure is reported as a
//! fixed-size record `(step, errno, item)` on the status pipe, and the
//! child exits.
//!
//! Its life: wait for the agent's part (ID maps of a user namespace, OOM
//! score), build the rootfs and `pivot_root` (or join a running
//! container), open the pty, finish the rootfs as runc does, set the
//! process up ([`process`]), report ready and wait for the start (a
//! container's first process), load seccomp when `no_new_privs` let it
//! wait, exec.

mod process;
mod rootfs;
mod sys;
mod tty;

use std::os::fd::RawFd;

use super::plan::{ContainerPlan, ProcessPlan};
use sys::errno;

/// The steps of a launch, as reported on the status pipe. 0 means ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Setup done; waiting for the start signal (containers only).
    Ready = 0,
    /// Waiting for the agent's part (ID maps, OOM score).
    WaitParent,
    /// Becoming root of the new user namespace.
    UserNamespace,
    /// Making the agent's mounts private in the new mount namespace.
    MakePrivate,
    /// Binding the rootfs onto itself.
    BindRootfs,
    /// Creating a mount target.
    MountTarget,
    /// Mounting.
    Mount,
    /// Changing mount propagation.
    Propagation,
    /// Remounting a bind read-only.
    RemountReadonly,
    /// Making a `linux.devices` node.
    Device,
    /// Creating a symlink in `/dev`.
    Symlink,
    /// `pivot_root` into the rootfs.
    PivotRoot,
    /// Setting `linux.rootfsPropagation` on `/`.
    RootPropagation,
    /// Remounting the root read-only.
    ReadonlyRoot,
    /// Setting the hostname.
    Hostname,
    /// Writing a `linux.sysctl`.
    Sysctl,
    /// Making a `linux.readonlyPaths` entry read-only.
    ReadonlyPath,
    /// Masking a `linux.maskedPaths` entry.
    MaskPath,
    /// Joining a namespace of the container (exec).
    JoinNamespace,
    /// Entering the container's root (exec).
    EnterRoot,
    /// Opening the pty (`process.terminal`) in the container's `/dev/ptmx`.
    Console,
    /// Setting an rlimit.
    Rlimit,
    /// Finding the program.
    ExecutableLookup,
    /// Changing to the working directory.
    Cwd,
    /// Setting `process.ioPriority`.
    IoPriority,
    /// Setting `linux.personality`.
    Personality,
    /// Setting `no_new_privs`.
    NoNewPrivileges,
    /// Loading the seccomp filter.
    Seccomp,
    /// Dropping bounding capabilities.
    CapabilityBounding,
    /// Setting supplementary groups.
    Setgroups,
    /// Setting the group id.
    Setgid,
    /// Setting the user id.
    Setuid,
    /// Setting the capability sets.
    Capabilities,
    /// Redirecting stdio.
    Stdio,
    /// Starting a session.
    Setsid,
    /// Waiting for the start signal.
    WaitStart,
    /// `execve` itself.
    Exec,
}

impl Step {
    /// All steps, indexed by their number.
    const ALL: [Step; 37] = [
        Step::Ready,
        Step::WaitParent,
        Step::UserNamespace,
        Step::MakePrivate,
        Step::BindRootfs,
        Step::MountTarget,
        Step::Mount,
        Step::Propagation,
        Step::RemountReadonly,
        Step::Device,
        Step::Symlink,
        Step::PivotRoot,
        Step::RootPropagation,
        Step::ReadonlyRoot,
        Step::Hostname,
        Step::Sysctl,
        Step::ReadonlyPath,
        Step::MaskPath,
        Step::JoinNamespace,
        Step::EnterRoot,
        Step::Console,
        Step::Rlimit,
        Step::ExecutableLookup,
        Step::Cwd,
        Step::IoPriority,
        Step::Personality,
        Step::NoNewPrivileges,
        Step::Seccomp,
        Step::CapabilityBounding,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::Capabilities,
        Step::Stdio,
        Step::Setsid,
        Step::WaitStart,
        Step::Exec,
    ];

    /// The step of a reported number.
    pub fn from_u32(n: u32) -> Option<Step> {
        Step::ALL.get(n as usize).copied()
    }

    /// A human name for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::Ready => "setup",
            Step::WaitParent => "waiting for the agent",
            Step::UserNamespace => "becoming root of the user namespace (linux.uidMappings)",
            Step::MakePrivate => "making mounts private",
            Step::BindRootfs => "binding the rootfs",
            Step::MountTarget => "creating a mount target",
            Step::Mount => "mounting a spec mount",
            Step::Propagation => "setting mount propagation",
            Step::RemountReadonly => "remounting a bind read-only",
            Step::Device => "making a linux.devices node",
            Step::Symlink => "creating /dev symlinks",
            Step::PivotRoot => "pivot_root into the rootfs",
            Step::RootPropagation => "setting linux.rootfsPropagation",
            Step::ReadonlyRoot => "remounting the rootfs read-only",
            Step::Hostname => "setting the hostname",
            Step::Sysctl => "writing a linux.sysctl",
            Step::ReadonlyPath => "making a linux.readonlyPaths entry read-only",
            Step::MaskPath => "masking a linux.maskedPaths entry",
            Step::JoinNamespace => "joining the container's namespaces",
            Step::EnterRoot => "entering the container's root",
            Step::Console => {
                "opening the terminal (process.terminal needs /dev/ptmx and a devpts at /dev/pts in the container)"
            }
            Step::Rlimit => "setting rlimits",
            Step::ExecutableLookup => "executable lookup (process.args[0] not found in the rootfs)",
            Step::Cwd => "changing to process.cwd",
            Step::IoPriority => "setting process.ioPriority",
            Step::Personality => "setting linux.personality",
            Step::NoNewPrivileges => "setting no_new_privs",
            Step::Seccomp => "loading the seccomp filter (linux.seccomp)",
            Step::CapabilityBounding => "dropping bounding capabilities",
            Step::Setgroups => "setting additional gids",
            Step::Setgid => "setting the gid",
            Step::Setuid => "setting the uid",
            Step::Capabilities => "setting capabilities",
            Step::Stdio => "redirecting stdio",
            Step::Setsid => "setsid",
            Step::WaitStart => "waiting for start",
            Step::Exec => "execve",
        }
    }
}

/// The size of one status record: `(step: u32, errno: i32, item: u32)`,
/// native endian; `item` is the index of the mount, device, sysctl or path
/// (in the plan's list for that step) being handled when the step failed.
pub const RECORD: usize = 12;

/// The item being handled, for the status record. The child runs in a copy
/// of the agent's memory, so this is its own.
static ITEM_INDEX: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn set_item(i: usize) {
    ITEM_INDEX.store(i as u32, std::sync::atomic::Ordering::Relaxed);
}

/// What the child needs besides the plans: its file descriptors and the
/// `argv`/`envp` pointer arrays (built before `clone`).
pub struct ChildContext<'a> {
    /// The process to run.
    pub process: &'a ProcessPlan,
    /// Null-terminated pointers into `process.argv`.
    pub argv: &'a [*const libc::c_char],
    /// Null-terminated pointers into `process.env`.
    pub envp: &'a [*const libc::c_char],
    /// stdin, stdout, stderr for the process (unused with a terminal).
    pub stdio: [RawFd; 3],
    /// Write end of the status pipe (close-on-exec).
    pub status: RawFd,
    /// Read end of the go pipe: one byte once the agent did its part.
    pub go: RawFd,
    /// Read end of the start pipe (containers: wait for one byte).
    pub start: Option<RawFd>,
    /// The unix socket the pty master goes back on (`process.terminal`).
    pub console: Option<RawFd>,
}

/// How the child gets into its container.
pub enum Entry<'a> {
    /// A new container: namespaces were created by `clone`; set up the
    /// rootfs and mounts.
    Create(&'a ContainerPlan),
    /// An extra process: join these namespaces (`(fd, CLONE_NEW*)`, user
    /// first, mount last), then the container's root (an fd of
    /// `/proc/<init>/root`).
    Join {
        /// Namespace fds.
        namespaces: &'a [(RawFd, libc::c_int)],
        /// `/proc/<init>/root`.
        root: RawFd,
    },
}

/// Reads one byte from `fd`: `Ok(true)` when it came, `Ok(false)` at end
/// of file (the agent gave up on this child).
fn wait_byte(fd: RawFd) -> Result<bool, i32> {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a stack variable.
        let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
        match n {
            1 => return Ok(true),
            0 => return Ok(false),
            _ if errno() == libc::EINTR => continue,
            _ => return Err(errno()),
        }
    }
}

fn report(fd: RawFd, step: Step, err: i32) {
    let mut rec = [0u8; RECORD];
    rec[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    rec[4..8].copy_from_slice(&err.to_ne_bytes());
    let item = ITEM_INDEX.load(std::sync::atomic::Ordering::Relaxed);
    rec[8..].copy_from_slice(&item.to_ne_bytes());
    // SAFETY: writes RECORD bytes from a stack buffer; a pipe write this small is atomic.
    unsafe { libc::write(fd, rec.as_ptr().cast(), RECORD) };
}

/// Closes every descriptor but 0-2 and `keep`. The agent's descriptors
/// are close-on-exec, but a container waits for its start before exec:
/// until then it would hold other containers' pipe ends (a stdin the host
/// closed would not reach its reader) and the agent's sockets.
fn close_other_fds(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 3;
    for &fd in keep.iter() {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd > next {
            close_range(next, fd - 1);
        }
        next = next.max(fd.saturating_add(1));
    }
    close_range(next, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: closes descriptors this single-threaded child owns; none of
    // them is used after (the kept ones are outside the range).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        // Kernels before 5.9: one by one, up to the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills `lim`.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let end = last.min(lim.rlim_cur.min(1 << 20) as libc::c_uint);
        for fd in first..=end {
            // SAFETY: as above.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// The child's whole life: enter or build the container, set the process
/// up, report, (wait for start,) exec. Never returns.
///
/// # Safety
///
/// Must run only in a child created by `clone`/`fork` of the agent, on a
/// copy of the parent's memory: it replaces the process image or exits with
/// `_exit`, and it must not be called where those effects would hit the agent.
pub unsafe fn child_main(entry: Entry<'_>, ctx: &ChildContext<'_>) -> ! {
    // What the child uses, on the stack: it must not allocate.
    let mut keep = [-1 as RawFd; 16];
    let mut n = 0;
    let mut push = |fd: RawFd| {
        if n < keep.len() {
            keep[n] = fd;
            n += 1;
        }
    };
    ctx.stdio.iter().for_each(|&fd| push(fd));
    push(ctx.status);
    push(ctx.go);
    ctx.start.into_iter().chain(ctx.console).for_each(&mut push);
    if let Entry::Join { namespaces, root } = &entry {
        namespaces.iter().for_each(|&(fd, _)| push(fd));
        push(*root);
    }
    close_other_fds(&mut keep[..n]);
    let Err((step, err)) = run(entry, ctx);
    report(ctx.status, step, err);
    // SAFETY: _exit ends this child only, running no atexit handlers of the agent.
    unsafe { libc::_exit(127) }
}

/// The child's steps; returns only with the step that failed.
fn run(entry: Entry<'_>, ctx: &ChildContext<'_>) -> Result<std::convert::Infallible, (Step, i32)> {
    if !wait_byte(ctx.go).map_err(|e| (Step::WaitParent, e))? {
        // The agent gave up on this child (its part failed).
        // SAFETY: _exit ends this child only.
        unsafe { libc::_exit(1) };
    }
    let plan = match entry {
        Entry::Create(plan) => {
            if plan.user_ns.as_ref().is_some_and(|m| m.root_mapped) {
                process::become_root().map_err(|e| (Step::UserNamespace, e))?;
            }
            rootfs::setup_rootfs(plan)?;
            Some(plan)
        }
        Entry::Join { namespaces, root } => {
            rootfs::join(namespaces, root)?;
            None
        }
    };
    let tty_slave = match ctx.console {
        Some(socket) => Some(tty::open_console(socket).map_err(|e| (Step::Console, e))?),
        None => None,
    };
    if let Some(plan) = plan {
        rootfs::finalize_rootfs(plan)?;
    }
    let exe = process::setup_process(ctx, tty_slave)?;
    if let Some(start) = ctx.start {
        report(ctx.status, Step::Ready, 0);
        if !wait_byte(start).map_err(|e| (Step::WaitStart, e))? {
            // The agent dropped the container before starting it.
            // SAFETY: _exit ends this child only.
            unsafe { libc::_exit(1) };
        }
    }
    // With no_new_privs the filter comes last, so that as few system calls
    // as possible run under it (runc's order).
    if let Some(filter) = ctx.process.seccomp.as_deref()
        && ctx.process.no_new_privileges
    {
        filter.load().map_err(|e| (Step::Seccomp, e))?;
    }
    // SAFETY: `exe`, `argv` and `envp` are NUL-terminated strings and
    // null-terminated pointer arrays prepared before clone.
    unsafe { libc::execve(exe.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr()) };
    Err((Step::Exec, errno()))
}
