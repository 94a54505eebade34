//! Reaping children and publishing their exit status.
//!
//! As PID 1 the agent reaps every child, its own and the orphans the kernel
//! hands it (`waitpid(-1)`). Outside a VM (tests on a host) it reaps only
//! the children it registered, so it never steals another's. A child is
//! registered under the same lock the reaper takes, so it cannot be reaped
//! before its waiter exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// An exit status the way the protocol reports it: the exit code, or 128 +
/// the signal that killed the process.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Which children to reap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapMode {
    /// Every child (`waitpid(-1)`): the agent is init.
    All,
    /// Only registered children: the agent runs inside another process.
    Registered,
}

/// The reaper: the registry of children and their exit watches.
pub struct Reaper {
    mode: ReapMode,
    children: Mutex<HashMap<libc::pid_t, watch::Sender<Option<i32>>>>,
}

impl Reaper {
    /// A reaper in `mode`; start it with [`Reaper::run`].
    pub fn new(mode: ReapMode) -> Arc<Reaper> {
        Arc::new(Reaper {
            mode,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, watch::Sender<Option<i32>>>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which returns the new child's pid) with reaping held
    /// off, and registers the child before anyone can reap it.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> crate::Result<(libc::pid_t, T)>,
    ) -> crate::Result<(libc::pid_t, T, watch::Receiver<Option<i32>>)> {
        let mut children = self.lock();
        let (pid, extra) = spawn()?;
        let (tx, rx) = watch::channel(None);
        children.insert(pid, tx);
        Ok((pid, extra, rx))
    }

    /// One pass: reaps what has exited and publishes the statuses.
    pub fn reap(&self) {
        let mut children = self.lock();
        match self.mode {
            ReapMode::All => loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if let Some(tx) = children.remove(&pid) {
                    tx.send_replace(Some(exit_code(status)));
                }
            },
            ReapMode::Registered => {
                let mut done = Vec::new();
                for pid in children.keys() {
                    let mut status = 0;
                    // SAFETY: as above, for one registered child.
                    let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
                    if r == *pid {
                        done.push((*pid, exit_code(status)));
                    } else if r < 0 {
                        done.push((*pid, 255));
                    }
                }
                for (pid, code) in done {
                    if let Some(tx) = children.remove(&pid) {
                        tx.send_replace(Some(code));
                    }
                }
            }
        }
    }

    /// Reaps on every `SIGCHLD` (and every second, in case signals were
    /// coalesced before the handler existed). The task ends when the handle
    /// is aborted.
    pub fn run(self: Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let mut sigchld = signal(SignalKind::child())?;
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                self.reap();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        // Encoded as wait(2) does: code << 8, or the signal number.
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
