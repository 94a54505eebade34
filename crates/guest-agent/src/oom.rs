//! Out-of-memory kills in the containers, for Kata's `GetOOMEvent`.
//!
//! Each container's cgroup (v2) counts the processes the OOM killer took in
//! its `memory.events` (`oom_kill N`). The monitor reads the counters of
//! the watched containers every [`POLL_INTERVAL`] (the files are tiny and
//! the guest runs few containers; a read costs less than keeping an inotify
//! watch per cgroup in step with creates and removes) and queues the id of
//! a container once per kill. `GetOOMEvent` takes the next id from the
//! queue, waiting as long as it takes, as Kata's agent does. A container is
//! read one last time when it is removed, so a kill just before the end is
//! not lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How often the counters are read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The `oom_kill` count of a `memory.events` text (0 when absent).
pub fn parse_oom_kill(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "oom_kill")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_count(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.events"))
        .map(|t| parse_oom_kill(&t))
        .unwrap_or(0)
}

#[derive(Debug)]
struct Watched {
    dir: PathBuf,
    seen: u64,
}

/// The monitor: the watched cgroups, the event queue, and the polling task
/// (stopped when the monitor is dropped).
#[derive(Debug)]
pub struct OomMonitor {
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    tx: mpsc::UnboundedSender<String>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

fn lock(m: &Mutex<HashMap<String, Watched>>) -> MutexGuard<'_, HashMap<String, Watched>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues one event per kill counted since the last look.
fn scan(watched: &Mutex<HashMap<String, Watched>>, tx: &mpsc::UnboundedSender<String>) {
    for (id, w) in lock(watched).iter_mut() {
        let now = read_count(&w.dir);
        for _ in w.seen..now {
            let _ = tx.send(id.clone());
        }
        w.seen = w.seen.max(now);
    }
}

impl OomMonitor {
    /// Starts the monitor. Call within a tokio runtime.
    pub fn new() -> OomMonitor {
        let watched = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let task = {
            let (watched, tx, wake) = (watched.clone(), tx.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    // Idle while nothing is watched.
                    if lock(&watched).is_empty() {
                        wake.notified().await;
                    }
                    scan(&watched, &tx);
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            })
        };
        OomMonitor {
            watched,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            wake,
            task,
        }
    }

    /// Watches the container `id` whose cgroup is `dir` (kills counted
    /// before this call are not reported).
    pub fn watch(&self, id: &str, dir: &Path) {
        let seen = read_count(dir);
        lock(&self.watched).insert(
            id.to_owned(),
            Watched {
                dir: dir.to_owned(),
                seen,
            },
        );
        self.wake.notify_one();
    }

    /// Stops watching `id`, after reporting what it counted since the last
    /// look.
    pub fn unwatch(&self, id: &str) {
        let mut watched = lock(&self.watched);
        if let Some(w) = watched.remove(id) {
            for _ in w.seen..read_count(&w.dir) {
                let _ = self.tx.send(id.to_owned());
            }
        }
    }

    /// The id of the container of the next OOM kill, waiting for one.
    pub async fn next_event(&self) -> String {
        let mut rx = self.rx.lock().await;
        // The monitor holds a sender: the channel never closes.
        rx.recv().await.unwrap_or_default()
    }
}

impl Default for OomMonitor {
    fn default() -> Self {
        OomMonitor::new()
    }
}

impl Drop for OomMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_counter_is_read() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(text), 2);
        assert_eq!(parse_oom_kill("low 0\n"), 0);
        assert_eq!(parse_oom_kill(""), 0);
    }

    #[tokio::test]
    async fn each_kill_is_one_event_and_the_last_ones_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        }
        let m = OomMonitor::new();
        m.watch("ctr-a", &a);
        m.watch("ctr-b", &b);
        // Kills before the watch are old news.
        std::fs::write(b.join("memory.events"), "oom 3\noom_kill 3\n").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), m.next_event())
            .await
            .unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), m.next_event())
            .await
            .unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("ctr-b", "ctr-b"));
        // A kill right before removal is reported by the removal.
        std::fs::write(a.join("memory.events"), "oom 2\noom_kill 2\n").unwrap();
        m.unwatch("ctr-a");
        let third = tokio::time::timeout(Duration::from_secs(5), m.next_event())
            .await
            .unwrap();
        assert_eq!(third, "ctr-a");
        assert!(
            tokio::time::timeout(POLL_INTERVAL * 3, m.next_event())
                .await
                .is_err(),
            "no more events"
        );
    }
}
