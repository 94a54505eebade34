//! The child side of a launch: runs between `clone(2)` and `execve(2)`.
//!
//! The agent is multi-threaded and the child is created with a raw `clone`
//! (to pass namespace flags), so the child must not allocate or take locks:
//! everything it uses was computed by the planner, and it calls only thin
//! system-call wrappers, or the raw system call where glibc's wrapper does
//! process-wide work (the `set*id` calls). A failure is reported as a fixed-size record
//! `(step, errno)` on the status pipe, and the child exits.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr;

use super::plan::{ContainerPlan, InRoot, MountOp, ProcessPlan, Target};

/// The steps of a launch, as reported on the status pipe. 0 means ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Setup done; waiting for the start signal (containers only).
    Ready = 0,
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
    /// Creating a symlink in `/dev`.
    Symlink,
    /// `pivot_root` into the rootfs.
    PivotRoot,
    /// Remounting the root read-only.
    ReadonlyRoot,
    /// Setting the hostname.
    Hostname,
    /// Joining a namespace of the container (exec).
    JoinNamespace,
    /// Entering the container's root (exec).
    EnterRoot,
    /// Setting an rlimit.
    Rlimit,
    /// Finding the program.
    ExecutableLookup,
    /// Changing to the working directory.
    Cwd,
    /// Setting `no_new_privs`.
    NoNewPrivileges,
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
    const ALL: [Step; 26] = [
        Step::Ready,
        Step::MakePrivate,
        Step::BindRootfs,
        Step::MountTarget,
        Step::Mount,
        Step::Propagation,
        Step::RemountReadonly,
        Step::Symlink,
        Step::PivotRoot,
        Step::ReadonlyRoot,
        Step::Hostname,
        Step::JoinNamespace,
        Step::EnterRoot,
        Step::Rlimit,
        Step::ExecutableLookup,
        Step::Cwd,
        Step::NoNewPrivileges,
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
            Step::MakePrivate => "making mounts private",
            Step::BindRootfs => "binding the rootfs",
            Step::MountTarget => "creating a mount target",
            Step::Mount => "mounting a spec mount",
            Step::Propagation => "setting mount propagation",
            Step::RemountReadonly => "remounting a bind read-only",
            Step::Symlink => "creating /dev symlinks",
            Step::PivotRoot => "pivot_root into the rootfs",
            Step::ReadonlyRoot => "remounting the rootfs read-only",
            Step::Hostname => "setting the hostname",
            Step::JoinNamespace => "joining the container's namespaces",
            Step::EnterRoot => "entering the container's root",
            Step::Rlimit => "setting rlimits",
            Step::ExecutableLookup => "executable lookup (process.args[0] not found in the rootfs)",
            Step::Cwd => "changing to process.cwd",
            Step::NoNewPrivileges => "setting no_new_privs",
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

/// The size of one status record: `(step: u32, errno: i32, mount: u32)`,
/// native endian; `mount` is the index in the plan's mounts of the mount
/// being made when a mount step fails.
pub const RECORD: usize = 12;

/// The mount being made, for the status record. The child runs in a copy
/// of the agent's memory, so this is its own.
static MOUNT_INDEX: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// What the child needs besides the plans: its file descriptors and the
/// `argv`/`envp` pointer arrays (built before `clone`).
pub struct ChildContext<'a> {
    /// The process to run.
    pub process: &'a ProcessPlan,
    /// Null-terminated pointers into `process.argv`.
    pub argv: &'a [*const libc::c_char],
    /// Null-terminated pointers into `process.env`.
    pub envp: &'a [*const libc::c_char],
    /// stdin, stdout, stderr for the process.
    pub stdio: [RawFd; 3],
    /// Write end of the status pipe (close-on-exec).
    pub status: RawFd,
    /// Read end of the start pipe (containers: wait for one byte).
    pub start: Option<RawFd>,
}

/// How the child gets into its container.
pub enum Entry<'a> {
    /// A new container: namespaces were created by `clone`; set up the
    /// rootfs and mounts.
    Create(&'a ContainerPlan),
    /// An extra process: join these namespaces (`(fd, CLONE_NEW*)`), then
    /// the container's root (an fd of `/proc/<init>/root`).
    Join {
        /// Namespace fds (mount last).
        namespaces: &'a [(RawFd, libc::c_int)],
        /// `/proc/<init>/root`.
        root: RawFd,
    },
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

fn opt_ptr(s: &Option<std::ffi::CString>) -> *const libc::c_char {
    s.as_ref().map_or(ptr::null(), |s| s.as_ptr())
}

fn mount(
    source: *const libc::c_char,
    target: &CStr,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> Result<(), i32> {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe { libc::mount(source, target.as_ptr(), fstype, flags, data.cast()) })
}

/// `struct open_how` of `openat2(2)` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative) below the directory `root` as if `root` were
/// `/`: absolute symlinks and `..` stay inside it (`RESOLVE_IN_ROOT`), and
/// `/proc` magic links are refused.
fn open_in_root(root: RawFd, path: &CStr, flags: libc::c_int) -> Result<Fd, i32> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // The kernel answers EAGAIN when a rename raced with the lookup.
    for _ in 0..16 {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                path.as_ptr(),
                &how,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            return Ok(Fd(fd as RawFd));
        }
        match errno() {
            libc::EAGAIN | libc::EINTR => continue,
            e => return Err(e),
        }
    }
    Err(libc::EAGAIN)
}

/// A descriptor the child closes when done with it.
struct Fd(RawFd);

impl Fd {
    /// `/proc/self/fd/<n>`, in `buf`: a path that names exactly what the
    /// descriptor refers to, for calls that take no descriptor (`mount`).
    fn proc_path<'b>(&self, buf: &'b mut [u8; 32]) -> &'b CStr {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (self.0.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[PREFIX.len() + i] = digits[len - 1 - i];
        }
        buf[PREFIX.len() + len] = 0;
        CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/")
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the child owns this descriptor and closes it once.
        unsafe { libc::close(self.0) };
    }
}

/// Opens `target` below `root`, creating what is missing (directories on
/// the way, then a directory or an empty file as `kind` says), each
/// creation in its parent as resolved inside `root`.
fn ensure_target(root: RawFd, target: &InRoot, kind: Target) -> Result<Fd, i32> {
    match open_in_root(root, target.path(), libc::O_PATH) {
        Err(libc::ENOENT) => {}
        other => return other,
    }
    let last = target.components.len().saturating_sub(1);
    for (i, c) in target.components.iter().enumerate() {
        match open_in_root(root, &c.path, libc::O_PATH) {
            Ok(_) => continue,
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = open_in_root(root, &c.parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let made = if i == last && kind == Target::File {
            // SAFETY: `parent` is an open directory and `name` NUL-terminated;
            // O_NOFOLLOW|O_EXCL never follows or truncates anything there.
            let fd = unsafe {
                libc::openat(
                    parent.0,
                    c.name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                Err(errno())
            } else {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
                Ok(())
            }
        } else {
            // SAFETY: as above.
            check(unsafe { libc::mkdirat(parent.0, c.name.as_ptr(), 0o755) })
        };
        match made {
            // A dangling symlink there: the open below reports ENOENT.
            Ok(()) | Err(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    open_in_root(root, target.path(), libc::O_PATH)
}

/// Mounts `m` on its target resolved inside `root`: through
/// `/proc/self/fd/<n>` of the resolved target, so the mount lands on the
/// very directory that was checked, whatever symlinks say.
fn mount_in_root(root: RawFd, m: &MountOp) -> Result<(), (Step, i32)> {
    let mut buf = [0u8; 32];
    {
        let target = ensure_target(root, &m.target, m.kind).map_err(|e| (Step::MountTarget, e))?;
        mount(
            opt_ptr(&m.source),
            target.proc_path(&mut buf),
            opt_ptr(&m.fstype),
            m.flags,
            opt_ptr(&m.data),
        )
        .map_err(|e| (Step::Mount, e))?;
    }
    if m.propagation == 0 && !m.remount_ro {
        return Ok(());
    }
    // The same path again, now the root of the new mount.
    let mounted =
        open_in_root(root, m.target.path(), libc::O_PATH).map_err(|e| (Step::Mount, e))?;
    let path = mounted.proc_path(&mut buf);
    if m.propagation != 0 {
        mount(ptr::null(), path, ptr::null(), m.propagation, ptr::null())
            .map_err(|e| (Step::Propagation, e))?;
    }
    if m.remount_ro {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | (m.flags & !libc::MS_REC);
        mount(ptr::null(), path, ptr::null(), flags, ptr::null())
            .map_err(|e| (Step::RemountReadonly, e))?;
    }
    Ok(())
}

/// Creates the symlink `link` -> `contents` in `link`'s parent as
/// resolved inside `root`.
fn symlink_in_root(root: RawFd, contents: &CStr, link: &InRoot) -> Result<(), i32> {
    let Some(last) = link.components.last() else {
        return Err(libc::EINVAL);
    };
    let parent = open_in_root(root, &last.parent, libc::O_PATH | libc::O_DIRECTORY)?;
    // SAFETY: both strings are NUL-terminated; `parent` is an open directory.
    match check(unsafe { libc::symlinkat(contents.as_ptr(), parent.0, last.name.as_ptr()) }) {
        Ok(()) | Err(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn setup_rootfs(plan: &ContainerPlan) -> Result<(), (Step, i32)> {
    let root = plan.rootfs.as_c_str();
    mount(
        ptr::null(),
        c"/",
        ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        ptr::null(),
    )
    .map_err(|e| (Step::MakePrivate, e))?;
    mount(
        root.as_ptr(),
        root,
        ptr::null(),
        libc::MS_BIND | libc::MS_REC,
        ptr::null(),
    )
    .map_err(|e| (Step::BindRootfs, e))?;
    {
        // Opened after the bind: the mounts below go into the bind mount
        // that becomes the container's `/`.
        // SAFETY: `root` is NUL-terminated; the agent made this path, so a
        // plain open is right here.
        let fd = unsafe {
            libc::open(
                root.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err((Step::BindRootfs, errno()));
        }
        let root_fd = Fd(fd);
        for (i, m) in plan.mounts.iter().enumerate() {
            MOUNT_INDEX.store(i as u32, std::sync::atomic::Ordering::Relaxed);
            mount_in_root(root_fd.0, m)?;
        }
        for (contents, link) in &plan.symlinks {
            symlink_in_root(root_fd.0, contents, link).map_err(|e| (Step::Symlink, e))?;
        }
    }
    // SAFETY: `root` is NUL-terminated.
    check(unsafe { libc::chdir(root.as_ptr()) }).map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: pivot_root(".", ".") with both arguments NUL-terminated
    // literals; stacks the old root under the new one.
    let pivoted = check(unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    });
    // No chroot fallback: the agent made its root pivotable at boot
    // (`guest::make_root_pivotable`), and a chroot is escapable.
    pivoted.map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: "." is a NUL-terminated literal; detaches the old root, and
    // with it every mount of the agent's from this namespace.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: "/" is a NUL-terminated literal.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(|e| (Step::PivotRoot, e))?;
    if plan.readonly_root {
        mount(
            ptr::null(),
            c"/",
            ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            ptr::null(),
        )
        .map_err(|e| (Step::ReadonlyRoot, e))?;
    }
    if let Some(h) = &plan.hostname {
        // SAFETY: `h` points to `h.len()` valid bytes.
        check(unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) })
            .map_err(|e| (Step::Hostname, e))?;
    }
    Ok(())
}

fn join(namespaces: &[(RawFd, libc::c_int)], root: RawFd) -> Result<(), (Step, i32)> {
    for &(fd, nstype) in namespaces {
        // SAFETY: `fd` is an open namespace fd owned by the parent.
        check(unsafe { libc::setns(fd, nstype) }).map_err(|e| (Step::JoinNamespace, e))?;
    }
    // SAFETY: `root` is an open directory fd; "." is a NUL-terminated literal.
    check(unsafe { libc::fchdir(root) }).map_err(|e| (Step::EnterRoot, e))?;
    // SAFETY: as above.
    check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(|e| (Step::EnterRoot, e))?;
    Ok(())
}

/// Everything from the process plan up to (not including) `execve`;
/// returns the program path chosen.
fn setup_process<'a>(ctx: &ChildContext<'a>) -> Result<&'a CStr, (Step, i32)> {
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
    for (fd, target) in ctx.stdio.iter().zip([0, 1, 2]) {
        // SAFETY: `fd` is an open pipe end; dup2 clears close-on-exec on the copy.
        check(unsafe { libc::dup2(*fd, target) }).map_err(|e| (Step::Stdio, e))?;
    }
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map_err(|e| (Step::Setsid, e))?;
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
    if p.no_new_privileges {
        // SAFETY: plain prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .map_err(|e| (Step::NoNewPrivileges, e))?;
    }
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
    Ok(exe)
}

fn report(fd: RawFd, step: Step, err: i32) {
    let mut rec = [0u8; RECORD];
    rec[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    rec[4..8].copy_from_slice(&err.to_ne_bytes());
    let mount = MOUNT_INDEX.load(std::sync::atomic::Ordering::Relaxed);
    rec[8..].copy_from_slice(&mount.to_ne_bytes());
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
    if let Some(start) = ctx.start {
        push(start);
    }
    if let Entry::Join { namespaces, root } = &entry {
        namespaces.iter().for_each(|&(fd, _)| push(fd));
        push(*root);
    }
    close_other_fds(&mut keep[..n]);
    let res = (|| -> Result<std::convert::Infallible, (Step, i32)> {
        match entry {
            Entry::Create(plan) => setup_rootfs(plan)?,
            Entry::Join { namespaces, root } => join(namespaces, root)?,
        }
        let exe = setup_process(ctx)?;
        if let Some(start) = ctx.start {
            report(ctx.status, Step::Ready, 0);
            let mut byte = 0u8;
            // SAFETY: reads one byte into a stack variable.
            let n = unsafe { libc::read(start, (&raw mut byte).cast(), 1) };
            if n != 1 {
                // The agent dropped the container before starting it.
                // SAFETY: _exit ends this child only.
                unsafe { libc::_exit(1) };
            }
        }
        // SAFETY: `exe`, `argv` and `envp` are NUL-terminated strings and
        // null-terminated pointer arrays prepared before clone.
        unsafe { libc::execve(exe.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr()) };
        Err((Step::Exec, errno()))
    })();
    let Err((step, err)) = res;
    report(ctx.status, step, err);
    // SAFETY: _exit ends this child only, running no atexit handlers of the agent.
    unsafe { libc::_exit(127) }
}
