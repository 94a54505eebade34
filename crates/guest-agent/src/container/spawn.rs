//! The parent side of a launch: pipes, `clone(2)`, and reading the child's
//! status records. Blocking: run it on a blocking thread.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::sync::watch;

use super::child::{self, ChildContext, Entry, RECORD, Step};
use super::console;
use super::plan::{ContainerPlan, IdMaps, ProcessPlan};
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
    /// The pty master (`process.terminal`): stdin and stdout go through it.
    pub tty: Option<OwnedFd>,
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
    go: (OwnedFd, OwnedFd),
    start: Option<(OwnedFd, OwnedFd)>,
    /// (agent's end, child's end) of the socket the pty master comes on.
    console: Option<(OwnedFd, OwnedFd)>,
}

impl Pipes {
    fn new(with_start: bool, terminal: bool) -> Result<Pipes> {
        Ok(Pipes {
            stdin: pipe()?,
            stdout: pipe()?,
            stderr: pipe()?,
            status: pipe()?,
            go: pipe()?,
            start: if with_start { Some(pipe()?) } else { None },
            console: if terminal {
                Some(console::socketpair().map_err(Error::sys("socketpair for the terminal"))?)
            } else {
                None
            },
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
            go: self.go.0.as_raw_fd(),
            start: self.start.as_ref().map(|s| s.0.as_raw_fd()),
            console: self.console.as_ref().map(|c| c.1.as_raw_fd()),
        }
    }

    /// Keeps the agent's ends; the child's ends close here.
    fn parent_ends(self, pid: libc::pid_t, exited: watch::Receiver<Option<i32>>) -> Launched {
        Launched {
            spawned: Spawned {
                pid,
                stdin: self.stdin.1,
                stdout: self.stdout.0,
                stderr: self.stderr.0,
                start: self.start.map(|s| s.1),
                status: self.status.0,
                tty: None,
                exited,
            },
            go: self.go.1,
            console: self.console.map(|c| c.0),
        }
    }
}

/// A child just cloned, waiting on its go pipe.
struct Launched {
    spawned: Spawned,
    go: OwnedFd,
    console: Option<OwnedFd>,
}

impl Launched {
    /// The agent's part before the child goes on: the ID maps of its user
    /// namespace (runc writes them from the parent too, before the child
    /// sets anything up), its OOM score; then the go byte. On failure the
    /// child is killed (and reaped by the reaper).
    fn release(
        &self,
        maps: Option<&IdMaps>,
        oom_score_adj: Option<i32>,
        cgroup: Option<&Path>,
    ) -> Result<()> {
        let pid = self.spawned.pid;
        let res = (|| {
            if let Some(dir) = cgroup {
                let procs = dir.join("cgroup.procs");
                std::fs::write(&procs, pid.to_string()).map_err(Error::io("writing", procs))?;
            }
            if let Some(maps) = maps {
                write_proc(pid, "uid_map", &maps.uid_map)?;
                write_proc(pid, "gid_map", &maps.gid_map)?;
            }
            if let Some(adj) = oom_score_adj {
                write_proc(pid, "oom_score_adj", &adj.to_string())?;
            }
            File::from(
                self.go
                    .try_clone()
                    .map_err(Error::sys("dup of the go pipe"))?,
            )
            .write_all(&[1])
            .map_err(Error::sys("writing the go pipe"))
        })();
        if res.is_err() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        res
    }

    /// Takes the pty master the child sends (when it has a terminal);
    /// `Ok(None)` when the child ended before sending one (its status then
    /// says why).
    fn take_console(&mut self, size: Option<(u16, u16)>) -> Result<bool> {
        let Some(socket) = self.console.take() else {
            return Ok(true);
        };
        let res = (|| {
            let Some(master) =
                console::recv_fd(&socket).map_err(Error::sys("receiving the pty master"))?
            else {
                return Ok(None);
            };
            if let Some((rows, cols)) = size {
                console::resize(&master, rows, cols)
                    .map_err(Error::sys("setting process.consoleSize"))?;
            }
            Ok(Some(master))
        })();
        match res {
            Ok(Some(master)) => {
                self.spawned.tty = Some(master);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(self.spawned.pid, libc::SIGKILL) };
                Err(e)
            }
        }
    }
}

fn write_proc(pid: libc::pid_t, file: &str, value: &str) -> Result<()> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, value).map_err(Error::io("writing", path))
}

/// Creates a container's first process: new namespaces, rootfs, mounts;
/// returns once the child reported ready (or its setup error).
pub fn spawn_container(
    reaper: &Reaper,
    container_id: &str,
    plan: &ContainerPlan,
) -> Result<Spawned> {
    let pipes = Pipes::new(true, plan.process.terminal)?;
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
    let mut launched = pipes.parent_ends(pid, exited);
    launched.release(plan.user_ns.as_ref(), plan.process.oom_score_adj, None)?;
    let names = ItemNames::of(plan);
    if !launched.take_console(plan.process.console_size)? {
        read_status(container_id, &launched.spawned.status, &names)?;
    }
    let spawned = launched.spawned;
    match read_status(container_id, &spawned.status, &names)? {
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
    user_ns: bool,
    cgroup: Option<&Path>,
    process: &ProcessPlan,
) -> Result<Spawned> {
    let pid_ns = open_ns(init_pid, "ns/pid")?;
    let own_pid_ns =
        File::open("/proc/self/ns/pid").map_err(Error::io("opening", "/proc/self/ns/pid"))?;
    // The user namespace first: the others belong to it.
    let mut namespaces = Vec::new();
    if user_ns {
        namespaces.push((open_ns(init_pid, "ns/user")?, libc::CLONE_NEWUSER));
    }
    namespaces.extend([
        (open_ns(init_pid, "ns/ipc")?, libc::CLONE_NEWIPC),
        (open_ns(init_pid, "ns/uts")?, libc::CLONE_NEWUTS),
        (open_ns(init_pid, "ns/mnt")?, libc::CLONE_NEWNS),
    ]);
    let root = open_ns(init_pid, "root")?;
    let ns_fds: Vec<(RawFd, libc::c_int)> = namespaces
        .iter()
        .map(|(f, t)| (f.as_raw_fd(), *t))
        .collect();

    let pipes = Pipes::new(false, process.terminal)?;
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
    let mut launched = pipes.parent_ends(pid, exited);
    // In its container's cgroup before it runs anything, as runc exec.
    launched.release(None, process.oom_score_adj, cgroup)?;
    let names = ItemNames::default();
    if !launched.take_console(process.console_size)? {
        read_status(container_id, &launched.spawned.status, &names)?;
    }
    let spawned = launched.spawned;
    match read_status(container_id, &spawned.status, &names)? {
        None => Ok(spawned),
        Some(step) => Err(Error::Setup {
            container_id: container_id.to_owned(),
            step: step.name(),
            detail: String::new(),
            source: io::Error::other("unexpected report"),
        }),
    }
}

/// What the items of a plan's lists are called, for errors: the mounts'
/// destinations, the devices' paths, the sysctl keys, the paths.
#[derive(Debug, Default)]
pub struct ItemNames {
    mounts: Vec<String>,
    devices: Vec<String>,
    sysctls: Vec<String>,
    readonly_paths: Vec<String>,
    masked_paths: Vec<String>,
}

impl ItemNames {
    /// The names in `plan`.
    pub fn of(plan: &ContainerPlan) -> ItemNames {
        let in_root = |p: &super::plan::InRoot| format!("/{}", p.path().to_string_lossy());
        let lossy = |c: &std::ffi::CString| c.to_string_lossy().into_owned();
        ItemNames {
            mounts: plan.mounts.iter().map(|m| in_root(&m.target)).collect(),
            devices: plan.devices.iter().map(|d| in_root(&d.target)).collect(),
            sysctls: plan.sysctls.iter().map(|(k, _)| lossy(k)).collect(),
            readonly_paths: plan.readonly_paths.iter().map(lossy).collect(),
            masked_paths: plan.masked_paths.iter().map(lossy).collect(),
        }
    }

    fn detail(&self, step: Step, item: usize) -> String {
        let (list, what) = match step {
            Step::MountTarget | Step::Mount | Step::Propagation | Step::RemountReadonly => {
                (&self.mounts, "mount on")
            }
            Step::Device => (&self.devices, "device"),
            Step::Sysctl => (&self.sysctls, "sysctl"),
            Step::ReadonlyPath => (&self.readonly_paths, "path"),
            Step::MaskPath => (&self.masked_paths, "path"),
            _ => return String::new(),
        };
        list.get(item)
            .map(|n| format!(" ({what} {n})"))
            .unwrap_or_default()
    }
}

/// Reads one status record: `Ok(None)` at end of file (the child exec'd or
/// died), `Ok(Some(Ready))`, or the child's setup error, its item named
/// from `names`.
pub fn read_status(
    container_id: &str,
    status: &OwnedFd,
    names: &ItemNames,
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
    let item = u32::from_ne_bytes(rec[8..].try_into().unwrap_or_default());
    let step = Step::from_u32(step).unwrap_or(Step::Exec);
    if got == RECORD && step == Step::Ready {
        return Ok(Some(Step::Ready));
    }
    Err(Error::Setup {
        container_id: container_id.to_owned(),
        step: step.name(),
        detail: names.detail(step, item as usize),
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Lets a created container's process exec its program.
pub fn release(start: OwnedFd) -> Result<()> {
    File::from(start)
        .write_all(&[1])
        .map_err(Error::sys("writing the start pipe"))
}
