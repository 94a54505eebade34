//! A containerd of the tests' own: private root, state and sockets in a
//! temporary directory, this crate's shim first on its `PATH`, stopped
//! (and everything it ran removed) when dropped. PID 1 is not systemd on
//! the test hosts: nothing else would start one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long one `ctr` command may take (a VM boot under TCG included).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// The namespace the tests use.
pub const NAMESPACE: &str = "vc-shim-test";

/// A running containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Whether [`RUN_CONTAINERD`] was there before: runc's shim makes
    /// directories there whatever containerd's state directory is.
    run_dir_existed: bool,
}

/// containerd 1.6's fixed runtime directory (shim sockets, runc's root).
const RUN_CONTAINERD: &str = "/run/containerd";

impl Containerd {
    /// Starts containerd and waits until it answers.
    pub fn start(shim: &Path) -> Result<Containerd> {
        let run_dir_existed = Path::new(RUN_CONTAINERD).exists();
        let dir = tempfile::Builder::new().prefix("vc-ctrd-").tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::os::unix::fs::symlink(shim, bin.join("containerd-shim-vc-v2"))?;
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{r}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{r}/containerd.sock.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n",
            r = root.display()
        );
        std::fs::write(root.join("config.toml"), config)?;
        let log = std::fs::File::create(root.join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        let containerd = Containerd {
            dir,
            child: Some(child),
            run_dir_existed,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if containerd
                .ctr(&["version"])
                .is_ok_and(|o| o.status.success())
            {
                return Ok(containerd);
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer in 30 s; its log: {}",
                    containerd.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's socket.
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A scratch directory inside the private one.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join("scratch").join(name);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// The last `lines` of containerd's log (the shims' logs are in it).
    pub fn log_tail(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The arguments of a `ctr` call against this containerd, in the
    /// tests' namespace: `args` after the global options, with
    /// `--fifo-dir` in the private directory after `run` and `task exec`
    /// (ctr leaves a detached task's FIFOs behind, and makes
    /// `/run/containerd/fifo` by default).
    pub fn ctr_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "--address".to_owned(),
            self.address().display().to_string(),
            "--namespace".to_owned(),
            NAMESPACE.to_owned(),
        ];
        // The commands that make FIFOs: `run` and `task exec`.
        let command = match args {
            ["run", ..] => 1,
            ["task", "exec", ..] => 2,
            _ => 0,
        };
        all.extend(args[..command].iter().map(|a| a.to_string()));
        if command > 0 {
            all.push("--fifo-dir".to_owned());
            all.push(self.dir.path().join("fifo").display().to_string());
        }
        all.extend(args[command..].iter().map(|a| a.to_string()));
        all
    }

    /// `ctr` against this containerd, in the tests' namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(self.ctr_args(args)).stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr args` to its end (at most [`CTR_TIMEOUT`]).
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        run(self.ctr_command(args), CTR_TIMEOUT)
    }

    /// Runs `ctr args` and fails unless it succeeds; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes every container (and its task) of the namespace.
    pub fn remove_all(&self) {
        let Ok(list) = self.ctr_ok(&["containers", "list", "--quiet"]) else {
            return;
        };
        for id in list.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !self.run_dir_existed {
            // Only empty directories go: anything in them is not ours.
            let run = Path::new(RUN_CONTAINERD);
            for d in [
                format!("runc/{NAMESPACE}"),
                "runc".into(),
                "s".into(),
                "fifo".into(),
            ] {
                let _ = std::fs::remove_dir(run.join(d));
            }
            let _ = std::fs::remove_dir(run);
        }
    }
}

/// Waits for `child` at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end, killed after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    finish(child, timeout).with_context(|| format!("{cmd:?}"))
}

/// Collects a spawned child's output, killing it (and its process group:
/// spawn it with `process_group(0)`) after `timeout`.
pub fn finish(mut child: Child, timeout: Duration) -> Result<Output> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        bail!("did not finish in {timeout:?}");
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

use std::os::unix::process::CommandExt;
