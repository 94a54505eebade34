//! Spawning through the gate (see the [module](super) docs), and the
//! handle of a spawned or attached process.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString, c_char, c_uint};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};

use super::child::{self, ChildPlan, MAX_FDS};
pub use super::child::{FIRST_PASSED_FD, MAX_PASSED_FDS};
use super::{ProcessHandle, ProcessLedger, ProcessLifetime, ProcessRecord, stat};
use crate::error::{Error, Result};

/// How long a spawn may take from fork to exec.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most descriptors closed one by one on kernels without `close_range`.
const MAX_FD_LIMIT: u64 = 1 << 20;

/// What to run: the program, its arguments and environment, where its
/// output goes. Its stdin is `/dev/null`; it inherits the creator's
/// environment (plus [`env`](Self::env)) and working directory.
#[derive(Debug)]
pub struct ProcessSpec {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdout: Option<File>,
    stderr: Option<File>,
    passed: Vec<OwnedFd>,
    cgroups: Vec<PathBuf>,
}

impl ProcessSpec {
    /// Runs `program` (a path, or a name looked up in `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdout: None,
            stderr: None,
            passed: Vec::new(),
            cgroups: Vec::new(),
        }
    }

    /// Passes `fd` on to the program, which finds it open at the number
    /// returned: [`FIRST_PASSED_FD`] for the first, the next number for
    /// each next one (a VMM's `-netdev tap,fd=N`). At most
    /// [`MAX_PASSED_FDS`]; more is an [`Error::Spawn`] at spawn.
    pub fn pass_fd(&mut self, fd: OwnedFd) -> std::os::fd::RawFd {
        self.passed.push(fd);
        FIRST_PASSED_FD + self.passed.len() as std::os::fd::RawFd - 1
    }

    /// Puts the process in the cgroup whose `cgroup.procs` file is
    /// `procs` before it runs its first instruction (e.g. a memory
    /// cgroup, so that every page it touches is charged there: charges
    /// stay where they were made when a process moves later).
    pub fn join_cgroup(mut self, procs: impl Into<PathBuf>) -> Self {
        self.cgroups.push(procs.into());
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable on top of the creator's environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sends stdout to `file` (default: `/dev/null`).
    pub fn stdout(mut self, file: File) -> Self {
        self.stdout = Some(file);
        self
    }

    /// Sends stderr to `file` (default: `/dev/null`).
    pub fn stderr(mut self, file: File) -> Self {
        self.stderr = Some(file);
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// Starts `spec` with `lifetime`, recording it in `ledger` before it runs
/// (see the [module](super) docs). Returns once the program has been
/// exec'd; a program that cannot be exec'd is an [`Error::Spawn`] and
/// leaves no record.
///
/// The fork happens on one long-lived thread of this process, so that a
/// [`DiesWithOwner`](ProcessLifetime::DiesWithOwner) process dies with the
/// process, not with whichever thread asked. If the returned future is
/// dropped before it completes, the process it started is ended.
pub async fn spawn(
    spec: ProcessSpec,
    lifetime: ProcessLifetime,
    ledger: &ProcessLedger,
) -> Result<ProcessHandle> {
    let ledger = ledger.clone();
    let program = spec.program.clone();
    let gone = |what: &str| Error::Spawn {
        binary: program.clone(),
        source: io::Error::other(format!("the spawner thread {what}")),
    };
    let (reply, done) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = spawn_now(spec, lifetime, &ledger);
        if let Err(Ok(orphan)) = reply.send(result) {
            // The caller stopped waiting: it will never own this process.
            if orphan.terminate(Duration::ZERO) {
                let _ = ledger.remove(orphan.record());
            }
        }
    });
    spawner()
        .lock()
        .map_err(|_| gone("lock is poisoned"))?
        .send(job)
        .map_err(|_| gone("is gone"))?;
    done.await.map_err(|_| gone("dropped the request"))?
}

type Job = Box<dyn FnOnce() + Send>;

/// The long-lived thread that forks every spawned process.
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vc-spawner".into())
            .spawn(move || {
                for job in rx {
                    // A panicking job must not end the thread: its
                    // DiesWithOwner children would die with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("starting the process spawner thread");
        Mutex::new(tx)
    })
}

/// The whole spawn, blocking: prepare, fork, learn the pid, record, open
/// the gate, wait for the exec.
fn spawn_now(
    spec: ProcessSpec,
    lifetime: ProcessLifetime,
    ledger: &ProcessLedger,
) -> Result<ProcessHandle> {
    let program = spec.program.clone();
    let spawn_err = |source| Error::Spawn {
        binary: program.clone(),
        source,
    };
    let cgroups = spec.cgroups.clone();
    let prepared = Prepared::new(spec, lifetime, ledger).map_err(spawn_err)?;
    let plan = prepared.plan();
    // SAFETY: the child runs only the async-signal-safe code of `child` on
    // the plan prepared above, and never returns.
    let forked = unsafe { libc::fork() };
    if forked == 0 {
        // SAFETY: we are the freshly forked child.
        unsafe {
            match lifetime {
                ProcessLifetime::DiesWithOwner => child::run_owned_program(&plan),
                ProcessLifetime::OutlivesOwner => child::run_intermediate(&plan),
            }
        }
    }
    if forked < 0 {
        return Err(spawn_err(io::Error::last_os_error()));
    }
    let Prepared {
        gate,
        report,
        child_fds,
        ..
    } = prepared;
    // The children hold their copies now; ours would hide their EOFs.
    drop(child_fds);
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    let pid = match lifetime {
        ProcessLifetime::DiesWithOwner => forked as u32,
        ProcessLifetime::OutlivesOwner => {
            reap_intermediate(forked, deadline);
            keeper_report(&report, deadline).map_err(spawn_err)?
        }
    };
    let started = Started {
        pid,
        child: lifetime == ProcessLifetime::DiesWithOwner,
        gate,
        report,
        deadline,
        cgroups,
    };
    started.record_and_release(program.clone(), ledger)
}

/// Reaps the intermediate child, which exits right after forking the keeper.
fn reap_intermediate(pid: libc::pid_t, deadline: Instant) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a stack status.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return;
        }
        if Instant::now() >= deadline {
            // SAFETY: our unreaped child, so the pid is still its own.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The program's pid, as the keeper reports it.
fn keeper_report(report: &OwnedFd, deadline: Instant) -> io::Result<u32> {
    match read_message(report, deadline)? {
        Some((child::TAG_PID, pid)) => Ok(pid as u32),
        Some((child::TAG_FORK, errno)) => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other(
            "the keeper exited before it started the program",
        )),
    }
}

/// A program forked and waiting at its gate.
struct Started {
    pid: u32,
    /// Whether it is our child (ours to reap).
    child: bool,
    gate: OwnedFd,
    report: OwnedFd,
    deadline: Instant,
    /// `cgroup.procs` files it joins while waiting at its gate.
    cgroups: Vec<PathBuf>,
}

impl Started {
    /// Records the program, then lets it go and waits for its exec. On
    /// any failure the program is ended and its record removed.
    fn record_and_release(self, program: PathBuf, ledger: &ProcessLedger) -> Result<ProcessHandle> {
        let spawn_err = |source| Error::Spawn {
            binary: program.clone(),
            source,
        };
        let pidfd = match super::pidfd_open(self.pid) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                if self.child {
                    kill_and_reap_child(self.pid);
                }
                return Err(spawn_err(e));
            }
        };
        // Closing the gate unrecorded makes the program exit unrun.
        let give_up = |gate: OwnedFd| {
            drop(gate);
            let _ = super::kill(&pidfd);
            if self.child {
                super::wait_reaped(&pidfd, super::KILL_WAIT);
            }
        };
        let start_time = match stat::read(self.pid) {
            Ok(stat) => stat.start_time,
            Err(e) => {
                give_up(self.gate);
                return Err(spawn_err(e));
            }
        };
        let record = ProcessRecord {
            program: program.clone(),
            pid: self.pid,
            start_time,
        };
        if let Err(e) = ledger.add(&record) {
            give_up(self.gate);
            return Err(e);
        }
        for procs in &self.cgroups {
            if let Err(e) = std::fs::write(procs, self.pid.to_string()) {
                give_up(self.gate);
                let _ = ledger.remove(&record);
                return Err(spawn_err(io::Error::new(
                    e.kind(),
                    format!("joining the cgroup of {}: {e}", procs.display()),
                )));
            }
        }
        let opened = send_all(&self.gate, child::GATE_OPEN);
        drop(self.gate);
        let handle = ProcessHandle::new(record, pidfd, ledger.clone(), self.child);
        let failure = match (opened, read_message(&self.report, self.deadline)) {
            (Ok(()), Ok(None)) => return Ok(handle),
            (_, Ok(Some((child::TAG_EXEC | child::TAG_FORK, errno)))) => {
                io::Error::from_raw_os_error(errno)
            }
            (Err(e), _) | (_, Err(e)) => e,
            (_, Ok(Some(_))) => io::Error::new(io::ErrorKind::InvalidData, "garbled spawn report"),
        };
        handle.discard();
        Err(spawn_err(failure))
    }
}

/// Everything the fork needs, made before it: C strings, pointer arrays,
/// the channels and the child's descriptors.
struct Prepared {
    program: CString,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp: Vec<*const c_char>,
    cwd: Option<CString>,
    /// Become the child's fds 0, 1, 2, gate, report (and dir): closed here
    /// once forked.
    child_fds: Vec<OwnedFd>,
    gate: OwnedFd,
    report: OwnedFd,
    fd_limit: c_uint,
}

impl Prepared {
    fn new(
        spec: ProcessSpec,
        lifetime: ProcessLifetime,
        ledger: &ProcessLedger,
    ) -> io::Result<Self> {
        let program = cstring(resolve(&spec.program)?.as_os_str())?;
        let argv_c = std::iter::once(spec.program.as_os_str())
            .chain(spec.args.iter().map(OsString::as_os_str))
            .map(cstring)
            .collect::<io::Result<Vec<_>>>()?;
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        env.extend(spec.envs);
        let envp_c = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        // An outliving program runs where the creator ran (its keeper in `/`).
        let cwd = match lifetime {
            ProcessLifetime::OutlivesOwner => Some(cstring(
                std::env::current_dir()
                    .unwrap_or_else(|_| "/".into())
                    .as_os_str(),
            )?),
            ProcessLifetime::DiesWithOwner => None,
        };
        let (gate, gate_child) = socket_pair()?;
        let (report, report_child) = socket_pair()?;
        let null = || File::open("/dev/null").map(OwnedFd::from);
        let stdout = spec.stdout.map_or_else(null, |f| Ok(f.into()))?;
        let stderr = spec.stderr.map_or_else(null, |f| Ok(f.into()))?;
        let mut child_fds = vec![null()?, stdout, stderr, gate_child, report_child];
        child_fds.push(match lifetime {
            ProcessLifetime::OutlivesOwner => File::open(ledger.dir())?.into(),
            // A placeholder: the passed fds start at the same number.
            ProcessLifetime::DiesWithOwner => null()?,
        });
        if spec.passed.len() > MAX_PASSED_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} fds to pass; at most {MAX_PASSED_FDS}",
                    spec.passed.len()
                ),
            ));
        }
        child_fds.extend(spec.passed);
        let fd_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(MAX_FD_LIMIT)
            .min(MAX_FD_LIMIT) as c_uint;
        let null_terminated = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Ok(Self {
            program,
            argv: null_terminated(&argv_c),
            _argv: argv_c,
            envp: null_terminated(&envp_c),
            _envp: envp_c,
            cwd,
            child_fds,
            gate,
            report,
            fd_limit,
        })
    }

    fn plan(&self) -> ChildPlan<'_> {
        let mut fds = [-1; MAX_FDS];
        for (slot, fd) in fds.iter_mut().zip(&self.child_fds) {
            *slot = fd.as_raw_fd();
        }
        let highest = fds.iter().copied().max().unwrap_or(0);
        ChildPlan {
            program: &self.program,
            argv: &self.argv,
            envp: &self.envp,
            cwd: self.cwd.as_deref(),
            fds,
            nfds: self.child_fds.len().min(MAX_FDS),
            dup_base: highest.max(MAX_FDS as i32) + 1,
            fd_limit: self.fd_limit,
            creator: rustix::process::getpid().as_raw_nonzero().get(),
        }
    }
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// The program's path: as given when it has a `/`, else found in `PATH`.
fn resolve(program: &Path) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))
}

fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn send_all(fd: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one report message; `None` at end of file.
fn read_message(fd: &OwnedFd, deadline: Instant) -> io::Result<Option<(u8, i32)>> {
    let mut buf = [0u8; 5];
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no word from the child",
            ));
        }
        super::poll_readable(fd, left);
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let value = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Ok(Some((buf[0], value)))
}

/// Kills and reaps our child `pid` without a pidfd (only for a child we
/// have not reaped: its pid cannot have been reused).
fn kill_and_reap_child(pid: u32) {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: our unreaped child, so the pid is still its own.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::ExitStatus;
    use crate::process::{POLL, has_exited, is_alive};

    fn ledger() -> (tempfile::TempDir, ProcessLedger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ProcessLedger::open(dir.path());
        (dir, ledger)
    }

    async fn wait(handle: &ProcessHandle) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("no exit within 10 s")
            .unwrap()
    }

    #[tokio::test]
    async fn each_lifetime_runs_recorded_and_reports_its_exit() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (_dir, ledger) = ledger();
            let spec = ProcessSpec::new("sh").args(["-c", "exit 7"]);
            let handle = spawn(spec, lifetime, &ledger).await.unwrap();
            assert_eq!(
                handle.is_child(),
                lifetime == ProcessLifetime::DiesWithOwner
            );
            assert_eq!(ledger.records().unwrap(), [handle.record().clone()]);
            assert_eq!(handle.record().program, Path::new("sh"));
            assert_eq!(wait(&handle).await, ExitStatus::Code(7), "{lifetime:?}");
            assert_eq!(
                ledger.exit_status(handle.record()),
                Some(ExitStatus::Code(7))
            );
            assert!(
                !Path::new(&format!("/proc/{}", handle.pid())).exists(),
                "not reaped"
            );
            ledger.remove(handle.record()).unwrap();
            assert!(ledger.records().unwrap().is_empty());
        }
    }

    /// The session of a process (field 6 of `/proc/<pid>/stat`).
    fn session_of(pid: u32) -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        after.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    /// A spawned VMM or helper is never in its creator's session or process
    /// group: the SIGINT of a Ctrl-C, or `timeout`'s SIGTERM to the group,
    /// reaches the runtime (which forwards it to the container) and not
    /// the VM under it.
    #[tokio::test]
    async fn a_spawned_process_leaves_its_creators_session() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (_dir, ledger) = ledger();
            let spec = ProcessSpec::new("sleep").arg("100");
            let handle = spawn(spec, lifetime, &ledger).await.unwrap();
            let pid = handle.pid();
            // Its own session, or its keeper's.
            assert_ne!(
                session_of(pid),
                session_of(std::process::id()),
                "{lifetime:?}"
            );
            assert!(handle.terminate(Duration::from_secs(2)), "{lifetime:?}");
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_run_is_an_error_and_leaves_no_record() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (dir, ledger) = ledger();
            let missing = spawn(ProcessSpec::new("/nonexistent/vmm"), lifetime, &ledger).await;
            assert!(
                matches!(&missing, Err(Error::Spawn { source, .. }) if source.kind() == io::ErrorKind::NotFound),
                "{missing:?}"
            );
            let not_exec = spawn(ProcessSpec::new(dir.path()), lifetime, &ledger).await;
            assert!(matches!(not_exec, Err(Error::Spawn { .. })), "{lifetime:?}");
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "left behind: no ledger, no status"
            );
        }
    }

    #[tokio::test]
    async fn output_goes_where_asked_and_env_and_cwd_are_passed() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (dir, ledger) = ledger();
            let out = dir.path().join("out");
            let spec = ProcessSpec::new("/bin/sh")
                .args(["-c", "echo $VC_TEST_VAR $(pwd); echo err >&2"])
                .env("VC_TEST_VAR", "hello")
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(dir.path().join("err")).unwrap());
            let handle = spawn(spec, lifetime, &ledger).await.unwrap();
            assert_eq!(wait(&handle).await, ExitStatus::Code(0));
            let cwd = std::env::current_dir().unwrap();
            assert_eq!(
                std::fs::read_to_string(&out).unwrap(),
                format!("hello {}\n", cwd.display())
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join("err")).unwrap(),
                "err\n"
            );
        }
    }

    /// Passed fds are open in the program at the numbers `pass_fd`
    /// returned, and nothing else of the creator's is.
    #[tokio::test]
    async fn passed_fds_reach_the_program_at_their_numbers() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (dir, ledger) = ledger();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            let mut spec = ProcessSpec::new("/bin/sh")
                .args([
                    "-c",
                    "echo one >&6; echo two >&7; ls /proc/self/fd | sort -n | tr '\\n' ' '",
                ])
                .stdout(File::create(dir.path().join("out")).unwrap());
            assert_eq!(spec.pass_fd(File::create(&a).unwrap().into()), 6);
            assert_eq!(spec.pass_fd(File::create(&b).unwrap().into()), 7);
            let handle = spawn(spec, lifetime, &ledger).await.unwrap();
            assert_eq!(wait(&handle).await, ExitStatus::Code(0), "{lifetime:?}");
            assert_eq!(std::fs::read_to_string(&a).unwrap(), "one\n");
            assert_eq!(std::fs::read_to_string(&b).unwrap(), "two\n");
            // 0-2, the passed 6 and 7, and ls's own directory fd (3).
            let fds = std::fs::read_to_string(dir.path().join("out")).unwrap();
            assert_eq!(fds.trim(), "0 1 2 3 6 7", "{lifetime:?}");
            ledger.remove(handle.record()).unwrap();
        }
        let (_dir, ledger) = ledger();
        let mut spec = ProcessSpec::new("/bin/true");
        for _ in 0..=MAX_PASSED_FDS {
            spec.pass_fd(File::open("/dev/null").unwrap().into());
        }
        let too_many = spawn(spec, ProcessLifetime::DiesWithOwner, &ledger).await;
        assert!(matches!(too_many, Err(Error::Spawn { .. })), "{too_many:?}");
    }

    #[tokio::test]
    async fn terminate_ends_it_and_records_the_signal() {
        for lifetime in [
            ProcessLifetime::DiesWithOwner,
            ProcessLifetime::OutlivesOwner,
        ] {
            let (_dir, ledger) = ledger();
            let spec = ProcessSpec::new("sleep").arg("100");
            let handle = spawn(spec, lifetime, &ledger).await.unwrap();
            assert!(is_alive(handle.pid(), handle.record().start_time));
            assert_eq!(handle.try_wait().unwrap(), None);
            assert!(handle.terminate(Duration::from_secs(5)));
            assert!(has_exited(handle.pidfd()));
            assert_eq!(wait(&handle).await, ExitStatus::Signal(libc::SIGTERM));
            assert!(
                ledger
                    .terminate_all(Duration::from_secs(1))
                    .unwrap()
                    .is_empty()
            );
            assert!(!ledger.path().exists());
            assert_eq!(
                ledger.exit_status(handle.record()),
                None,
                "status removed too"
            );
        }
    }

    #[test]
    fn parent_death_signal_reaches_children_of_exited_threads() {
        // The child is forked by the spawner thread, so the short-lived
        // thread that asked for it can exit without killing it.
        let (_dir, ledger) = ledger();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let spec = ProcessSpec::new("/bin/sleep").arg("100");
            rt.block_on(spawn(spec, ProcessLifetime::DiesWithOwner, &ledger))
                .unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !handle.has_exited(),
            "child died with the thread that requested it"
        );
        handle.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = handle.try_wait().unwrap() {
                assert_eq!(status, ExitStatus::Signal(9));
                break;
            }
            assert!(Instant::now() < deadline, "not reaped");
            std::thread::sleep(POLL);
        }
    }
}
