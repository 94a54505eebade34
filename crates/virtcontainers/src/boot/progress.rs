//! Waiting for a booting guest by its progress, not by the wall clock.
//!
//! On a busy host every boot runs slower; a fixed wall-clock deadline
//! fails them all together. The VMM's CPU time (under TCG, the guest's
//! own progress) is what a boot consumes, so the agent gets a budget of
//! it; the wall clock only catches a guest that stopped using the CPU
//! altogether, and a VMM that exits ends the wait at once.

use std::future::Future;
use std::time::{Duration, Instant};

use vc_hypervisor::ProcessRecord;

/// How a boot is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootBudget {
    /// VMM CPU time the guest may use before its agent answers.
    pub cpu: Duration,
    /// Wall time after which the wait ends however the guest fares.
    pub wall: Duration,
}

/// Why a boot was given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootVerdict {
    /// The VMM used its whole CPU budget.
    #[error(
        "the VMM used {used:?} of CPU (its whole budget) in {waited:?} without the agent answering"
    )]
    CpuBudgetSpent {
        /// What it used.
        used: Duration,
        /// Wall time waited.
        waited: Duration,
    },
    /// The wall-clock limit passed.
    #[error("{waited:?} passed without the agent answering (the VMM used {used:?} of CPU)")]
    WallLimit {
        /// VMM CPU time used meanwhile (`None`: not measurable).
        used: Option<Duration>,
        /// Wall time waited.
        waited: Duration,
    },
    /// The VMM exited.
    #[error("the VMM (pid {pid}) exited while the guest booted")]
    VmmExited {
        /// Its pid.
        pid: u32,
    },
}

/// Runs `ready` (connecting to the agent) until it finishes or `vmm`'s
/// progress says the boot is lost. Without a VMM process to watch (a
/// test double), only the wall limit applies.
pub async fn wait_for_guest<T>(
    ready: impl Future<Output = T>,
    vmm: Option<&ProcessRecord>,
    budget: BootBudget,
) -> Result<T, BootVerdict> {
    const POLL: Duration = Duration::from_millis(200);
    let started = Instant::now();
    let watch = async {
        let baseline = vmm.and_then(ProcessRecord::cpu_time);
        loop {
            let waited = started.elapsed();
            let used = match (vmm, baseline) {
                (Some(p), Some(base)) => match p.cpu_time() {
                    Some(now) if p.is_alive() => Some(now.saturating_sub(base)),
                    _ => return BootVerdict::VmmExited { pid: p.pid },
                },
                _ => None,
            };
            if let Some(used) = used
                && used >= budget.cpu
            {
                return BootVerdict::CpuBudgetSpent { used, waited };
            }
            if waited >= budget.wall {
                return BootVerdict::WallLimit { used, waited };
            }
            tokio::time::sleep(POLL.min(budget.wall - waited)).await;
        }
    };
    tokio::select! {
        r = ready => Ok(r),
        verdict = watch => Err(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(child: &std::process::Child) -> ProcessRecord {
        ProcessRecord {
            program: "sh".into(),
            pid: child.id(),
            start_time: vc_hypervisor::process::start_time(child.id()).unwrap(),
        }
    }

    fn sh(script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .spawn()
            .unwrap()
    }

    fn forever() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test]
    async fn an_idle_guest_waits_beyond_its_cpu_budget_until_ready() {
        let mut idle = sh("sleep 30");
        let budget = BootBudget {
            cpu: Duration::from_millis(100),
            wall: Duration::from_secs(30),
        };
        let ready = tokio::time::sleep(Duration::from_millis(600));
        let r = wait_for_guest(ready, Some(&record(&idle)), budget).await;
        assert_eq!(
            r,
            Ok(()),
            "a guest that is not using CPU is not out of budget"
        );
        idle.kill().unwrap();
        idle.wait().unwrap();
    }

    #[tokio::test]
    async fn a_spinning_guest_is_given_up_when_its_cpu_budget_is_spent() {
        let mut busy = sh("while :; do :; done");
        let budget = BootBudget {
            cpu: Duration::from_millis(300),
            wall: Duration::from_secs(30),
        };
        let r = wait_for_guest(forever(), Some(&record(&busy)), budget).await;
        match r {
            Err(BootVerdict::CpuBudgetSpent { used, waited }) => {
                assert!(used >= budget.cpu);
                assert!(waited < Duration::from_secs(20), "{waited:?}");
            }
            other => panic!("{other:?}"),
        }
        busy.kill().unwrap();
        busy.wait().unwrap();
    }

    #[tokio::test]
    async fn a_vmm_that_exits_ends_the_wait_at_once() {
        let mut short = sh("sleep 0.3");
        let rec = record(&short);
        let reaper = tokio::task::spawn_blocking(move || short.wait());
        let budget = BootBudget {
            cpu: Duration::from_secs(60),
            wall: Duration::from_secs(60),
        };
        let started = Instant::now();
        let r = wait_for_guest(forever(), Some(&rec), budget).await;
        assert_eq!(r, Err(BootVerdict::VmmExited { pid: rec.pid }));
        assert!(started.elapsed() < Duration::from_secs(5));
        reaper.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn without_a_vmm_to_watch_the_wall_limit_applies() {
        let budget = BootBudget {
            cpu: Duration::ZERO,
            wall: Duration::from_millis(200),
        };
        let r = wait_for_guest(forever(), None, budget).await;
        assert!(
            matches!(r, Err(BootVerdict::WallLimit { used: None, waited }) if waited >= budget.wall),
            "{r:?}"
        );
    }
}
