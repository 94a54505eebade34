//! Containers in the guest: created from their OCI spec, their processes
//! and stdio, and their teardown.
//!
//! Written on `nix`/`libc` rather than youki's `libcontainer` (evaluated
//! first, version 0.7): libcontainer reaps its intermediate process with
//! `waitpid(pid)` while an init agent must reap every child with
//! `waitpid(-1)` (the two race and one loses the status); it is shaped as a
//! runtime (a state directory and a notify socket per container, `exec`
//! through a tenant builder that reads that state back); and its default
//! dependency graph (systemd over D-Bus, libseccomp's C library, CRIU,
//! netlink, procfs) weighs on a static PID-1 binary. What the agent needs
//! (clone into namespaces, mounts, `pivot_root`, ids, rlimits,
//! capabilities, `setns` for exec) is the few hundred lines of `plan` (pure)
//! and `child`/`spawn` (system calls).

mod child;
mod console;
pub mod mount_options;
pub mod plan;
pub mod seccomp;
mod spawn;
mod stdio;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Spec};
use slog::{Logger, info, warn};
use tokio::sync::watch;
use vc_agent_protocol::agent as pb;

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::reaper::Reaper;
use crate::storage;
pub use child::Step;
use stdio::{InputPipe, OutputPipe};

/// One process of a container (its first, or an exec'd one).
#[derive(Debug)]
pub struct Process {
    /// Its pid in the agent's pid namespace.
    pub pid: libc::pid_t,
    stdin: InputPipe,
    stdout: OutputPipe,
    stderr: OutputPipe,
    /// The pty master, for resizing (`process.terminal`).
    tty: Option<OwnedFd>,
    exited: watch::Receiver<Option<i32>>,
}

impl Process {
    fn new(s: spawn::Spawned) -> Result<(Process, Option<OwnedFd>, OwnedFd)> {
        // With a terminal, stdin and stdout are the pty master (stderr
        // goes there too: its pipe only ever reads end of file).
        let (stdin, stdout) = match &s.tty {
            Some(master) => {
                console::set_nonblocking(master).map_err(Error::sys("the pty master"))?;
                let dup = || {
                    master
                        .try_clone()
                        .map_err(Error::sys("dup of the pty master"))
                };
                (
                    InputPipe::from_tty(dup()?).map_err(Error::sys("registering the pty"))?,
                    OutputPipe::from_tty(dup()?).map_err(Error::sys("registering the pty"))?,
                )
            }
            None => (
                InputPipe::new(s.stdin).map_err(Error::sys("registering stdin"))?,
                OutputPipe::new(s.stdout).map_err(Error::sys("registering stdout"))?,
            ),
        };
        let p = Process {
            pid: s.pid,
            stdin,
            stdout,
            stderr: OutputPipe::new(s.stderr).map_err(Error::sys("registering stderr"))?,
            tty: s.tty,
            exited: s.exited,
        };
        Ok((p, s.start, s.status))
    }

    /// The exit code (128 + signal when killed), once it exited.
    pub fn exit_code(&self) -> Option<i32> {
        *self.exited.borrow()
    }

    /// Waits for the exit code.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.exited.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(255),
            // The reaper is gone: the agent is shutting down.
            Err(_) => 255,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
}

struct Container {
    init: Arc<Process>,
    state: State,
    start: Option<std::os::fd::OwnedFd>,
    status: Option<std::os::fd::OwnedFd>,
    execs: HashMap<String, Arc<Process>>,
    storages: Vec<storage::MountedStorage>,
    cgroup: Option<Cgroup>,
    /// What exec'd processes inherit: seccomp, personality.
    exec_defaults: plan::ProcessPlan,
    /// Whether it has its own user namespace (execs join it first).
    user_ns: bool,
}

/// Where the agent keeps containers and how it treats the guest.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The cgroup v2 directory under which each container without a
    /// `linux.cgroupsPath` gets one; a named path is taken from its parent,
    /// the top of the hierarchy (`None`: no cgroups; stats, update, pause
    /// are then unsupported).
    pub cgroup_root: Option<PathBuf>,
}

/// The containers of the sandbox, and what they need from the agent.
pub struct Sandbox {
    containers: Mutex<HashMap<String, Container>>,
    /// Storages of the sandbox itself (CreateSandbox), unmounted by
    /// [`Sandbox::remove_all`].
    storages: Mutex<Vec<storage::MountedStorage>>,
    reaper: Arc<Reaper>,
    config: SandboxConfig,
    oom: crate::oom::OomMonitor,
    logger: Logger,
}

/// Checks an id from the wire against the SDK's one rule
/// ([`vc_types::validate_id`]).
fn check_id(kind: vc_types::IdKind, container_id: &str, id: &str) -> Result<()> {
    vc_types::validate_id(kind, id).map_err(|e| Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason: e.to_string(),
    })
}

/// What was done so far in a create, undone on failure.
struct Undo<'a> {
    logger: &'a Logger,
    storages: Vec<storage::MountedStorage>,
    cgroup: Option<Cgroup>,
}

impl Undo<'_> {
    fn run(self) {
        if let Some(cg) = self.cgroup
            && let Err(e) = cg.remove()
        {
            warn!(self.logger, "undo: {e}");
        }
        for s in self.storages.iter().rev() {
            if let Err(e) = storage::unmount_storage(s) {
                warn!(self.logger, "undo: {e}");
            }
        }
    }
}

impl Sandbox {
    /// A sandbox with no containers, reaping through `reaper`.
    pub fn new(reaper: Arc<Reaper>, config: SandboxConfig, logger: Logger) -> Sandbox {
        Sandbox {
            containers: Mutex::new(HashMap::new()),
            storages: Mutex::new(Vec::new()),
            reaper,
            config,
            oom: crate::oom::OomMonitor::new(),
            logger,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let containers = self.lock();
        let c = containers
            .get(container_id)
            .ok_or_else(|| Error::ContainerNotFound(container_id.to_owned()))?;
        if exec_id.is_empty() || exec_id == container_id {
            return Ok(c.init.clone());
        }
        c.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    /// The ids of the containers, sorted.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Creates a container: mounts its storages, plans it from its spec,
    /// creates its cgroup and its first process (set up, waiting for
    /// start). Any failure undoes what was done.
    pub async fn create_container(
        &self,
        container_id: &str,
        storages: &[pb::Storage],
        spec: &Spec,
    ) -> Result<()> {
        check_id(vc_types::IdKind::Container, container_id, container_id)?;
        if self.lock().contains_key(container_id) {
            return Err(Error::ContainerExists(container_id.to_owned()));
        }
        let rootfs = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .ok_or_else(|| Error::InvalidRequest {
                container_id: container_id.to_owned(),
                reason: "the spec has no root".into(),
            })?;
        // Plan first: a bad spec changes nothing.
        let plan = plan::plan_container(container_id, spec, &rootfs)?;
        if let Some(filter) = &plan.process.seccomp
            && !filter.unknown_syscalls.is_empty()
        {
            info!(self.logger, "seccomp: syscalls unknown to libseccomp left out (as runc)";
                  "id" => container_id, "names" => filter.unknown_syscalls.join(","));
        }
        let mut exec_defaults = plan.process.clone();
        exec_defaults.argv.clear();
        let user_ns = plan.user_ns.is_some();

        let mut undo = Undo {
            logger: &self.logger,
            storages: Vec::new(),
            cgroup: None,
        };
        let res = async {
            for s in storages {
                undo.storages.push(storage::mount_storage(container_id, s)?);
            }
            info!(self.logger, "storages mounted"; "id" => container_id, "count" => storages.len());
            if !Path::new(&rootfs).is_dir() {
                return Err(Error::InvalidRequest {
                    container_id: container_id.to_owned(),
                    reason: format!("rootfs {} does not exist", rootfs.display()),
                });
            }
            if let Some(root) = &self.config.cgroup_root {
                let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().as_deref());
                let path = crate::cgroup::container_cgroup_path(container_id, cgroups_path)?;
                // A named cgroup is where the spec says, from the top of the
                // guest's hierarchy, as runc and Kata's agent place it; an
                // unnamed one goes below the agent's own directory.
                let base = match cgroups_path {
                    Some(_) => root.parent().unwrap_or(root),
                    None => root,
                };
                let cg = Cgroup::create_at(base, &path)?;
                let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
                undo.cgroup = Some(cg);
                if let (Some(r), Some(cg)) = (resources, &undo.cgroup) {
                    cg.apply(&r)?;
                }
            }
            let reaper = self.reaper.clone();
            let cid = container_id.to_owned();
            let spawned =
                tokio::task::spawn_blocking(move || spawn::spawn_container(&reaper, &cid, &plan))
                    .await
                    .map_err(|e| Error::sys("spawn task")(std::io::Error::other(e)))??;
            info!(self.logger, "container process set up"; "id" => container_id, "pid" => spawned.pid);
            if let Some(cg) = &undo.cgroup
                && let Err(e) = cg.add(spawned.pid)
            {
                kill(spawned.pid, libc::SIGKILL);
                return Err(e);
            }
            Process::new(spawned)
        }
        .await;
        let (init, start, status) = match res {
            Ok(p) => p,
            Err(e) => {
                undo.run();
                return Err(e);
            }
        };
        let pid = init.pid;
        let container = Container {
            init: Arc::new(init),
            state: State::Created,
            start,
            status: Some(status),
            execs: HashMap::new(),
            storages: std::mem::take(&mut undo.storages),
            cgroup: undo.cgroup.take(),
            exec_defaults,
            user_ns,
        };
        let mut containers = self.lock();
        if containers.contains_key(container_id) {
            drop(containers);
            // Lost a race with a create of the same id: undo ours.
            kill(pid, libc::SIGKILL);
            return Err(Error::ContainerExists(container_id.to_owned()));
        }
        if let Some(cg) = &container.cgroup {
            self.oom.watch(container_id, cg.path());
        }
        containers.insert(container_id.to_owned(), container);
        info!(self.logger, "container created"; "id" => container_id, "pid" => pid);
        Ok(())
    }

    /// Lets the container's first process exec its program; an exec
    /// failure (e.g. permission denied) is returned here.
    pub async fn start_container(&self, container_id: &str) -> Result<()> {
        let (start, status) = {
            let mut containers = self.lock();
            let c = containers
                .get_mut(container_id)
                .ok_or_else(|| Error::ContainerNotFound(container_id.to_owned()))?;
            if c.state != State::Created {
                return Err(Error::BadState {
                    container_id: container_id.to_owned(),
                    state: "running",
                    operation: "start",
                });
            }
            match (c.start.take(), c.status.take()) {
                (Some(start), Some(status)) => (start, status),
                _ => {
                    return Err(Error::BadState {
                        container_id: container_id.to_owned(),
                        state: "starting",
                        operation: "start",
                    });
                }
            }
        };
        let cid = container_id.to_owned();
        let res = tokio::task::spawn_blocking(move || {
            spawn::release(start)?;
            spawn::read_status(&cid, &status, &spawn::ItemNames::default())
        })
        .await
        .map_err(|e| Error::sys("start task")(std::io::Error::other(e)))?;
        if let Some(c) = self.lock().get_mut(container_id) {
            c.state = State::Running;
        }
        res.map(drop)
    }

    /// Runs another process in a running container's namespaces.
    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<()> {
        check_id(vc_types::IdKind::Exec, container_id, exec_id)?;
        let (init_pid, defaults, user_ns, cgroup) = {
            let containers = self.lock();
            let c = containers
                .get(container_id)
                .ok_or_else(|| Error::ContainerNotFound(container_id.to_owned()))?;
            if exec_id.is_empty() || exec_id == container_id || c.execs.contains_key(exec_id) {
                return Err(Error::ProcessExists {
                    container_id: container_id.to_owned(),
                    exec_id: exec_id.to_owned(),
                });
            }
            if c.state != State::Running || c.init.exit_code().is_some() {
                return Err(Error::BadState {
                    container_id: container_id.to_owned(),
                    state: if c.state == State::Created {
                        "created"
                    } else {
                        "stopped"
                    },
                    operation: "exec",
                });
            }
            (
                c.init.pid,
                c.exec_defaults.clone(),
                c.user_ns,
                c.cgroup.as_ref().map(|cg| cg.path().to_owned()),
            )
        };
        let mut plan = plan::plan_process(container_id, process)?;
        plan::inherit(&mut plan, &defaults);
        let reaper = self.reaper.clone();
        let cid = container_id.to_owned();
        let spawned = tokio::task::spawn_blocking(move || {
            spawn::spawn_exec(&reaper, &cid, init_pid, user_ns, cgroup.as_deref(), &plan)
        })
        .await
        .map_err(|e| Error::sys("exec task")(std::io::Error::other(e)))??;
        let pid = spawned.pid;
        let (p, _, _) = Process::new(spawned)?;
        let mut containers = self.lock();
        match containers.get_mut(container_id) {
            Some(c) => {
                c.execs.insert(exec_id.to_owned(), Arc::new(p));
                Ok(())
            }
            None => {
                kill(pid, libc::SIGKILL);
                Err(Error::ContainerNotFound(container_id.to_owned()))
            }
        }
    }

    /// Waits for a process's exit code.
    pub async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let p = self.process(container_id, exec_id)?;
        Ok(p.wait().await)
    }

    /// Signals one process, or (empty `exec_id`) every process of the container.
    pub fn signal_process(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let sig = libc::c_int::try_from(signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| Error::InvalidRequest {
                container_id: container_id.to_owned(),
                reason: format!("signal {signal} is not a signal"),
            })?;
        if !exec_id.is_empty() {
            let p = self.process(container_id, exec_id)?;
            if p.exit_code().is_none() {
                kill(p.pid, sig);
            }
            return Ok(());
        }
        let containers = self.lock();
        let c = containers
            .get(container_id)
            .ok_or_else(|| Error::ContainerNotFound(container_id.to_owned()))?;
        let mut pids: Vec<_> = c.cgroup.as_ref().map(Cgroup::pids).unwrap_or_default();
        pids.push(c.init.pid);
        pids.extend(
            c.execs
                .values()
                .filter(|p| p.exit_code().is_none())
                .map(|p| p.pid),
        );
        for pid in pids {
            kill(pid, sig);
        }
        Ok(())
    }

    /// Reads at most `len` bytes of a process's stdout or stderr.
    pub async fn read_output(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
        stderr: bool,
    ) -> Result<Vec<u8>> {
        let p = self.process(container_id, exec_id)?;
        let pipe = if stderr { &p.stderr } else { &p.stdout };
        pipe.read(len)
            .await
            .map_err(Error::sys("reading process output"))
    }

    /// Writes to a process's stdin.
    pub async fn write_stdin(
        &self,
        container_id: &str,
        exec_id: &str,
        data: Vec<u8>,
    ) -> Result<usize> {
        let p = self.process(container_id, exec_id)?;
        p.stdin.write(data).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Error::StdinClosed {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            },
            _ => Error::sys("writing stdin")(e),
        })
    }

    /// The id of the container of the next OOM kill (`GetOOMEvent`),
    /// waiting for one.
    pub async fn next_oom_event(&self) -> String {
        self.oom.next_event().await
    }

    /// Resizes a process's terminal (`TtyWinResize`).
    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<()> {
        let p = self.process(container_id, exec_id)?;
        let master = p.tty.as_ref().ok_or_else(|| Error::BadState {
            container_id: container_id.to_owned(),
            state: "without a terminal (process.terminal is false)",
            operation: "resize its terminal",
        })?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        console::resize(master, clamp(rows), clamp(cols)).map_err(Error::sys("TIOCSWINSZ"))
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let p = self.process(container_id, exec_id)?;
        p.stdin.close().await;
        Ok(())
    }

    fn with_cgroup<T>(
        &self,
        container_id: &str,
        what: &str,
        f: impl FnOnce(&Cgroup) -> Result<T>,
    ) -> Result<T> {
        let containers = self.lock();
        let c = containers
            .get(container_id)
            .ok_or_else(|| Error::ContainerNotFound(container_id.to_owned()))?;
        let cg = c.cgroup.as_ref().ok_or_else(|| {
            Error::Unsupported(vc_types::Unsupported::new(
                what.to_owned(),
                "the agent runs without cgroups (agent.cgroups=0, or no cgroup2 in the guest)",
            ))
        })?;
        f(cg)
    }

    /// The container's cgroup statistics.
    pub fn stats(&self, container_id: &str) -> Result<pb::CgroupStats> {
        self.with_cgroup(container_id, "stats", |cg| Ok(cg.stats()))
    }

    /// Changes the container's resources.
    pub fn update(&self, container_id: &str, resources: &LinuxResources) -> Result<()> {
        self.with_cgroup(container_id, "update", |cg| cg.apply(resources))
    }

    /// Freezes or thaws the container.
    pub fn freeze(&self, container_id: &str, frozen: bool) -> Result<()> {
        self.with_cgroup(container_id, "pause/resume", |cg| cg.freeze(frozen))
    }

    /// Kills what runs in the container, waits for its first process (up
    /// to `timeout`, `None`: as long as it takes), then frees its cgroup and
    /// storages and forgets it.
    pub async fn remove_container(
        &self,
        container_id: &str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let init = self.process(container_id, "")?;
        self.signal_process(container_id, "", libc::SIGKILL as u32)?;
        let waited = match timeout {
            Some(t) => tokio::time::timeout(t, init.wait()).await.is_ok(),
            None => {
                init.wait().await;
                true
            }
        };
        if !waited {
            return Err(Error::BadState {
                container_id: container_id.to_owned(),
                state: "still running after SIGKILL",
                operation: "remove",
            });
        }
        let Some(c) = self.lock().remove(container_id) else {
            return Ok(());
        };
        self.oom.unwatch(container_id);
        let mut first_err = None;
        if let Some(cg) = c.cgroup {
            // The processes may take a moment to leave after the reap.
            let mut cg = Some(cg);
            for _ in 0..50 {
                match cg.take().map(Cgroup::remove_or_keep) {
                    Some(Ok(())) | None => break,
                    Some(Err(back)) => {
                        cg = Some(back);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            if let Some(cg) = cg
                && let Err(e) = cg.remove()
            {
                first_err.get_or_insert(e);
            }
        }
        for s in c.storages.iter().rev() {
            if let Err(e) = storage::unmount_storage(s) {
                first_err.get_or_insert(e);
            }
        }
        info!(self.logger, "container removed"; "id" => container_id);
        first_err.map_or(Ok(()), Err)
    }

    /// Mounts the sandbox's own storages (CreateSandbox), all or none.
    pub fn mount_sandbox_storages(&self, sandbox_id: &str, storages: &[pb::Storage]) -> Result<()> {
        let mut mounted = Vec::new();
        for s in storages {
            match storage::mount_storage(sandbox_id, s) {
                Ok(m) => mounted.push(m),
                Err(e) => {
                    for m in mounted.iter().rev() {
                        if let Err(e) = storage::unmount_storage(m) {
                            warn!(self.logger, "undo: {e}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.storages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(mounted);
        Ok(())
    }

    /// Removes every container, then unmounts the sandbox's storages
    /// (sandbox teardown).
    pub async fn remove_all(&self) -> Result<()> {
        let mut first_err = None;
        for id in self.container_ids() {
            if let Err(e) = self
                .remove_container(&id, Some(Duration::from_secs(10)))
                .await
            {
                first_err.get_or_insert(e);
            }
        }
        let storages =
            std::mem::take(&mut *self.storages.lock().unwrap_or_else(|p| p.into_inner()));
        for m in storages.iter().rev() {
            if let Err(e) = storage::unmount_storage(m) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Cgroup {
    fn remove_or_keep(self) -> std::result::Result<(), Cgroup> {
        match std::fs::remove_dir(self.path()) {
            Ok(()) => {
                self.remove_parents();
                Ok(())
            }
            Err(_) => Err(self),
        }
    }
}

fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) with plain integers; ESRCH for a gone process is fine.
    unsafe { libc::kill(pid, sig) };
}
