//! What the shim's scenario tests share: a private containerd
//! ([`containerd`]), the offline images ([`image`]), the runner
//! ([`harness`]), and the comparison of a command under runc's shim and
//! under ours, with the leak check after ours.

#![allow(dead_code)] // Each test binary uses its part.

pub mod containerd;
pub mod harness;
pub mod image;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use vc_test_support::{HostSnapshot, Need, assert_unchanged_since_matching, require};

use containerd::{CTR_TIMEOUT, Containerd};

/// runc's shim.
pub const RUNC: &str = "io.containerd.runc.v2";
/// Ours.
pub const VC: &str = "io.containerd.vc.v2";

/// The `argv[0]` of the shim's process in a pod's network namespace.
pub const NETNS_HOLDER: &str = "vc-netns-holder";

/// The directory of the shims' sockets.
const SOCKET_DIR: &str = "/run/vc/shim";

/// What a scenario sees of a command: its stdout and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its standard output.
    pub stdout: String,
    /// Its exit code.
    pub code: i32,
}

/// The tests' containerd and images.
pub struct Env {
    /// The containerd.
    pub containerd: Containerd,
}

impl Env {
    /// Checks the host, starts containerd, imports the images.
    pub fn setup() -> Result<Env> {
        require(&[
            Need::Root,
            Need::Qemu,
            Need::Busybox,
            Need::GuestImage,
            Need::Program {
                name: "containerd",
                package: "containerd",
            },
            Need::Program {
                name: "ctr",
                package: "containerd",
            },
            Need::Program {
                name: "runc",
                package: "runc",
            },
            Need::Program {
                name: "script",
                package: "bsdutils",
            },
            Need::CniPlugins,
            Need::Program {
                name: "unshare",
                package: "util-linux",
            },
            Need::Program {
                name: "nsenter",
                package: "util-linux",
            },
            Need::Program {
                name: "ip",
                package: "iproute2",
            },
        ]);
        let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-vc-v2"));
        let containerd = Containerd::start(shim)?;
        image::import(&containerd)?;
        Ok(Env { containerd })
    }

    /// `ctr run --rm --runtime RUNTIME [extra] IMAGE ID CMD...`.
    pub fn run_rm(
        &self,
        runtime: &str,
        id: &str,
        extra: &[&str],
        image: &str,
        cmd: &[&str],
    ) -> Result<Outcome> {
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(cmd);
        let out = self.containerd.ctr(&args)?;
        outcome(&out, &args)
    }

    /// Starts `ctr run --rm --runtime RUNTIME IMAGE ID CMD...` in the
    /// background (its exit code is the task's).
    pub fn spawn_run(&self, runtime: &str, id: &str, image: &str, cmd: &[&str]) -> Result<Child> {
        let mut args = vec!["run", "--rm", "--runtime", runtime, image, id];
        args.extend_from_slice(cmd);
        let mut command = self.containerd.ctr_command(&args);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        command.spawn().context("spawning ctr run")
    }

    /// Waits until task `id` has `status` (`RUNNING`, `STOPPED`, ...).
    pub fn wait_status(&self, id: &str, status: &str) -> Result<()> {
        let deadline = Instant::now() + CTR_TIMEOUT;
        loop {
            if self.task_status(id)?.as_deref() == Some(status) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("task {id} not {status} after {CTR_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Task `id`'s status in `ctr task ls`, if it is there.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let list = self.containerd.ctr_ok(&["task", "ls"])?;
        Ok(list
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&id))
            .and_then(|f| f.get(2).map(|s| s.to_string())))
    }

    /// Runs `body`, then fails if anything of ours naming one of `ids` is
    /// left on the host: a QEMU, a shim, a cgroup, a mount, SDK state, a
    /// shim socket, a container.
    pub fn leak_checked<T>(&self, ids: &[&str], body: impl FnOnce() -> Result<T>) -> Result<T> {
        let before = HostSnapshot::take();
        let sockets = socket_files();
        let socket_dir_existed = Path::new(SOCKET_DIR).exists();
        let result = body();
        if result.is_err() {
            // Leave the host clean for the next scenario before failing.
            self.containerd.remove_all();
        }
        let value = result?;
        assert_unchanged_since_matching(&before, ids);
        settle(|| {
            let shims: Vec<String> = shim_processes()
                .into_iter()
                .filter(|cmd| ids.iter().any(|id| cmd.contains(id)))
                .collect();
            ensure!(shims.is_empty(), "shims left running: {shims:?}");
            let holders: Vec<u32> = ids
                .iter()
                .flat_map(|id| pids_with(&[NETNS_HOLDER, &format!("-id {id} ")]))
                .collect();
            ensure!(holders.is_empty(), "netns holders left: {holders:?}");
            Ok(())
        })?;
        let left: Vec<_> = socket_files().difference(&sockets).cloned().collect();
        ensure!(left.is_empty(), "shim sockets left: {left:?}");
        ensure!(
            socket_dir_existed || !Path::new(SOCKET_DIR).exists(),
            "{SOCKET_DIR} left behind"
        );
        let containers = self.containerd.ctr_ok(&["containers", "ls", "--quiet"])?;
        for id in ids {
            ensure!(
                !containers.lines().any(|l| l == *id),
                "container {id} left in containerd"
            );
        }
        Ok(value)
    }
}

/// Retries `check` for up to 5 s (processes exit asynchronously).
pub fn settle(check: impl Fn() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The command lines of the running `containerd-shim-vc-v2` processes.
pub fn shim_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains("containerd-shim-vc-v2") {
            found.push(format!(
                "{} {}",
                entry.file_name().to_string_lossy(),
                cmd.trim()
            ));
        }
    }
    found
}

/// The pids of the processes whose command line contains all of `parts`.
pub fn pids_with(parts: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if parts.iter().all(|p| cmd.contains(p)) {
            found.push(pid);
        }
    }
    found
}

fn socket_files() -> BTreeSet<String> {
    std::fs::read_dir(SOCKET_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect()
}

/// The outcome of a finished `ctr`; a `ctr` that failed before the task
/// ran (its own error on stderr, no task exit code) is an error.
pub fn outcome(out: &std::process::Output, args: &[&str]) -> Result<Outcome> {
    let code = out
        .status
        .code()
        .with_context(|| format!("ctr {args:?} killed by a signal"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if code != 0 && stderr.contains("ctr: ") && !stderr.trim_end().ends_with("ctr: ") {
        bail!("ctr {args:?} failed ({code}): {stderr}");
    }
    Ok(Outcome {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        code,
    })
}

/// Runs `cmd` under `script` (a pseudo-terminal: `ctr run -t` refuses
/// anything else); the output with carriage returns and NULs dropped.
pub fn on_terminal(containerd: &Containerd, ctr_args: &[&str]) -> Result<Outcome> {
    let mut line = "ctr".to_owned();
    for a in &containerd.ctr_args(ctr_args) {
        line.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    let out = containerd::run(cmd, CTR_TIMEOUT)?;
    let stdout: String = String::from_utf8_lossy(&out.stdout)
        .chars()
        .filter(|c| *c != '\r' && *c != '\0')
        .collect();
    Ok(Outcome {
        stdout: stdout.replace("^@", ""),
        code: out.status.code().unwrap_or(-1),
    })
}

use std::os::unix::process::CommandExt;

/// `containerd-shim-vc-v2 ACTION` with the configuration at `config`;
/// its stdout, or an error with its stderr.
pub fn shim(config: &Path, action: &str) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-vc-v2"))
        .arg(action)
        .env("VC_SHIM_CONFIG", config)
        .output()
        .with_context(|| format!("running the shim's {action}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{action} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// A shim configuration in `dir` that clones VMs from the template at
/// `template` (`[factory] enable_template`); its path.
pub fn template_config(dir: &Path, template: &Path) -> Result<PathBuf> {
    let config = dir.join("configuration.toml");
    std::fs::write(
        &config,
        format!(
            "[factory]\nenable_template = true\ntemplate_path = \"{}\"\n",
            template.display()
        ),
    )?;
    Ok(config)
}
