//! The parent side of a launch: pipes, `clone(2)`, and reading the child's
//! status records. Blocking: run it on a blocking thread.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::sync::watch;

use super::child::{self, ChildContext, Entry, RECORD, Step};
use super::plan::{ContainerPlan, ProcessPlan};
use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// A child that was set up (a container waiting for its start, or a
/// running exec'd process) and the agent's ends of its pipes.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (in the agent's pid namespace).
    pub pid: libc::pid_t,
    /// Write end of its stdin.
    pub stdin: OwnedFd,
    /// Read end of its stdout.
    pub stdout: OwnedFd,
    /// Read end of its stderr.
    pub stderr: OwnedFd,
    /// Write end of the start pipe (containers only).
    pub start: Option<OwnedFd>,
    /// Read end of the status pipe, for the exec report after start.
    pub status: OwnedFd,
    /// Its exit status, once reaped.
    pub exited: watch::Receiver<Option<i32>>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Sys {
            operation: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A raw `clone` that behaves like `fork` plus the namespace `flags`.
fn clone(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: clone without CLONE_VM or a new stack returns twice like fork;
    // the child only runs `child_main`, which never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid as libc::pid_t)
    }
}

struct Pipes {
    stdin: (OwnedFd, OwnedFd),
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    status: (OwnedFd, OwnedFd),
    start: Option<(OwnedFd, OwnedFd)>,
}

impl Pipes {
    fn new(with_start: bool) -> Result<Pipes> {
        Ok(Pipes {
            stdin: pipe()?,
            stdout: pipe()?,
            stderr: pipe()?,
            status: pipe()?,
            start: if with_start { Some(pipe()?) } else { None },
        })
    }

    fn context<'a>(
        &self,
        process: &'a ProcessPlan,
        argv: &'a [*const libc::c_char],
        envp: &'a [*const libc::c_char],
    ) -> ChildContext<'a> {
        ChildContext {
            process,
            argv,
            envp,
            stdio: [
                self.stdin.0.as_raw_fd(),
                self.stdout.1.as_raw_fd(),
                self.stderr.1.as_raw_fd(),
            ],
            status: self.status.1.as_raw_fd(),
            start: self.start.as_ref().map(|s| s.0.as_raw_fd()),
        }
    }

    /// Keeps the agent's ends; the child's ends close here.
    fn parent_ends(self, pid: libc::pid_t, exited: watch::Receiver<Option<i32>>) -> Spawned {
        Spawned {
            pid,
            stdin: self.stdin.1,
            stdout: self.stdout.0,
            stderr: self.stderr.0,
            start: self.start.map(|s| s.1),
            status: self.status.0,
            exited,
        }
    }
}

/// Creates a container's first process: new namespaces, rootfs, mounts;
/// returns once the child reported ready (or its setup error).
pub fn spawn_container(
    reaper: &Reaper,
    container_id: &str,
    plan: &ContainerPlan,
) -> Result<Spawned> {
    let pipes = Pipes::new(true)?;
    let argv = pointers(&plan.process.argv);
    let envp = pointers(&plan.process.env);
    let ctx = pipes.context(&plan.process, &argv, &envp);
    let (pid, (), exited) = reaper.spawn(|| {
        let pid = clone(plan.clone_flags).map_err(|source| Error::Sys {
            operation: "clone",
            source,
        })?;
        if pid == 0 {
            // SAFETY: we are the freshly cloned child.
            unsafe { child::child_main(Entry::Create(plan), &ctx) }
        }
        Ok((pid, ()))
    })?;
    let spawned = pipes.parent_ends(pid, exited);
    match read_status(container_id, &spawned.status, &mount_names(plan))? {
        Some(Step::Ready) => Ok(spawned),
        _ => Err(Error::Setup {
            container_id: container_id.to_owned(),
            step: Step::Ready.name(),
            detail: String::new(),
            source: io::Error::other("the container's process exited during setup"),
        }),
    }
}

/// Opens the namespaces and root of the container whose init is `init_pid`.
fn open_ns(init_pid: libc::pid_t, name: &str) -> Result<File> {
    let path = format!("/proc/{init_pid}/{name}");
    File::open(&path).map_err(Error::io("opening", path))
}

/// Starts an extra process in the namespaces and root of a running
/// container; returns once it exec'd (or its setup error).
pub fn spawn_exec(
    reaper: &Reaper,
    container_id: &str,
    init_pid: libc::pid_t,
    process: &ProcessPlan,
) -> Result<Spawned> {
    let pid_ns = open_ns(init_pid, "ns/pid")?;
    let own_pid_ns =
        File::open("/proc/self/ns/pid").map_err(Error::io("opening", "/proc/self/ns/pid"))?;
    let namespaces = [
        (open_ns(init_pid, "ns/ipc")?, libc::CLONE_NEWIPC),
        (open_ns(init_pid, "ns/uts")?, libc::CLONE_NEWUTS),
        (open_ns(init_pid, "ns/mnt")?, libc::CLONE_NEWNS),
    ];
    let root = open_ns(init_pid, "root")?;
    let ns_fds: Vec<(RawFd, libc::c_int)> = namespaces
        .iter()
        .map(|(f, t)| (f.as_raw_fd(), *t))
        .collect();

    let pipes = Pipes::new(false)?;
    let argv = pointers(&process.argv);
    let envp = pointers(&process.env);
    let ctx = pipes.context(process, &argv, &envp);
    let (pid, (), exited) = reaper.spawn(|| {
        // Children of this thread are born in the container's pid namespace;
        // the agent's own stays as it is, and this thread goes back after.
        // SAFETY: setns on an open pid-namespace fd affects only this thread's children.
        if unsafe { libc::setns(pid_ns.as_raw_fd(), libc::CLONE_NEWPID) } < 0 {
            return Err(Error::Sys {
                operation: "setns(pid)",
                source: io::Error::last_os_error(),
            });
        }
        let cloned = clone(0);
        if let Ok(0) = cloned {
            // SAFETY: we are the freshly cloned child.
            unsafe {
                child::child_main(
                    Entry::Join {
                        namespaces: &ns_fds,
                        root: root.as_raw_fd(),
                    },
                    &ctx,
                )
            }
        }
        // SAFETY: back to the agent's own pid namespace for this thread's children.
        unsafe { libc::setns(own_pid_ns.as_raw_fd(), libc::CLONE_NEWPID) };
        let pid = cloned.map_err(|source| Error::Sys {
            operation: "clone",
            source,
        })?;
        Ok((pid, ()))
    })?;
    let spawned = pipes.parent_ends(pid, exited);
    match read_status(container_id, &spawned.status, &[])? {
        None => Ok(spawned),
        Some(step) => Err(Error::Setup {
            container_id: container_id.to_owned(),
            step: step.name(),
            detail: String::new(),
            source: io::Error::other("unexpected report"),
        }),
    }
}

/// Reads one status record: `Ok(None)` at end of file (the child exec'd or
/// died), `Ok(Some(Ready))`, or the child's setup error.
/// The destinations of a plan's mounts, for errors.
pub fn mount_names(plan: &super::plan::ContainerPlan) -> Vec<String> {
    plan.mounts
        .iter()
        .map(|m| format!("/{}", m.target.path().to_string_lossy()))
        .collect()
}

/// `mounts` names the plan's mounts (their destinations), for errors.
pub fn read_status(
    container_id: &str,
    status: &OwnedFd,
    mounts: &[String],
) -> Result<Option<Step>> {
    let mut file = File::from(
        status
            .try_clone()
            .map_err(Error::sys("dup of the status pipe"))?,
    );
    let mut rec = [0u8; RECORD];
    let mut got = 0;
    while got < RECORD {
        match file.read(&mut rec[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::sys("reading the status pipe")(e)),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let step = u32::from_ne_bytes(rec[..4].try_into().unwrap_or_default());
    let errno = i32::from_ne_bytes(rec[4..8].try_into().unwrap_or_default());
    let mount = u32::from_ne_bytes(rec[8..].try_into().unwrap_or_default());
    let step = Step::from_u32(step).unwrap_or(Step::Exec);
    if got == RECORD && step == Step::Ready {
        return Ok(Some(Step::Ready));
    }
    let detail = match (step, mounts.get(mount as usize)) {
        (Step::MountTarget | Step::Mount | Step::Propagation | Step::RemountReadonly, Some(d)) => {
            format!(" (mount on {d})")
        }
        _ => String::new(),
    };
    Err(Error::Setup {
        container_id: container_id.to_owned(),
        step: step.name(),
        detail,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Lets a created container's process exec its program.
pub fn release(start: OwnedFd) -> Result<()> {
    File::from(start)
        .write_all(&[1])
        .map_err(Error::sys("writing the start pipe"))
}
