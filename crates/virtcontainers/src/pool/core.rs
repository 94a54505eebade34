//! The pool's bookkeeping, whatever its VMs are: keep `size` of them
//! ready, hand one out per take, start the next in the background, stop
//! everything at shutdown. One refill task, owned by the pool, starts VMs
//! one at a time (a host that runs VMs under TCG has no cores to spare for
//! boots in parallel) and backs off after a failure. After a take it lets
//! the sandbox that took the VM start before it boots the next (the
//! pool's refill delay), unless a take is waiting for that VM.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use slog::{Logger, info, warn};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::Error;

/// The first pause after a failed start; doubled after each failure in a
/// row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts and stops the pool's VMs.
#[async_trait]
pub(crate) trait Spawner: Send + Sync + 'static {
    /// A VM ready to hand over.
    type Vm: Send + 'static;

    /// Starts VM number `n` (unique in the pool) and returns it once it
    /// can be handed over; bounded by the spawner's own timeout.
    async fn start(&self, n: u64) -> Result<Self::Vm, Error>;

    /// Stops a VM the pool holds (shutdown, or one started after it).
    async fn stop(&self, vm: Self::Vm);
}

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// VMs ready to hand over.
    pub ready: usize,
    /// VMs being started now.
    pub starting: usize,
    /// VMs handed over so far.
    pub handed_over: u64,
    /// Starts that failed so far.
    pub failed_starts: u64,
}

struct State<V> {
    ready: VecDeque<V>,
    starting: usize,
    next: u64,
    closed: bool,
    handed_over: u64,
    failed_starts: u64,
    /// When the last VM was handed out.
    last_take: Option<tokio::time::Instant>,
    /// Takes waiting for a VM now.
    waiting: usize,
}

/// The pool of `S`'s VMs.
pub(crate) struct Core<S: Spawner> {
    spawner: Arc<S>,
    size: usize,
    refill_delay: Duration,
    state: Mutex<State<S::Vm>>,
    /// Woken when a VM becomes ready, one is taken, or the pool closes
    /// (shared with the refill task, which holds the pool only weakly).
    changed: Arc<Notify>,
    refill: Mutex<Option<JoinHandle<()>>>,
    logger: Logger,
}

impl<S: Spawner> Core<S> {
    /// A pool of `size` VMs of `spawner`; starts filling it at once, and
    /// after a take waits `refill_delay` before the next start (unless a
    /// take is waiting).
    pub(crate) fn start(
        spawner: S,
        size: usize,
        refill_delay: Duration,
        logger: Logger,
    ) -> Arc<Self> {
        let core = Arc::new(Core {
            spawner: Arc::new(spawner),
            size,
            refill_delay,
            state: Mutex::new(State {
                ready: VecDeque::new(),
                starting: 0,
                next: 0,
                closed: false,
                handed_over: 0,
                failed_starts: 0,
                last_take: None,
                waiting: 0,
            }),
            changed: Arc::new(Notify::new()),
            refill: Mutex::new(None),
            logger,
        });
        let task = tokio::spawn(refill(Arc::downgrade(&core)));
        *core.refill.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        core
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<S::Vm>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spawner.
    pub(crate) fn spawner(&self) -> &S {
        &self.spawner
    }

    /// The counters now.
    pub(crate) fn counts(&self) -> PoolCounts {
        let st = self.lock();
        PoolCounts {
            ready: st.ready.len(),
            starting: st.starting,
            handed_over: st.handed_over,
            failed_starts: st.failed_starts,
        }
    }

    /// A ready VM, waiting up to `wait` for one while a start is under
    /// way; `None` if there is none in time (or the pool is closed).
    pub(crate) async fn take(&self, wait: Duration) -> Option<S::Vm> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = None;
        loop {
            let notified = self.changed.notified();
            {
                let mut st = self.lock();
                if let Some(vm) = st.ready.pop_front() {
                    st.handed_over += 1;
                    st.last_take = Some(tokio::time::Instant::now());
                    drop(st);
                    drop(waiting);
                    self.changed.notify_waiters();
                    return Some(vm);
                }
                if st.closed || st.starting == 0 && self.size == 0 {
                    return None;
                }
            }
            if waiting.is_none() {
                // Counted so the refill does not hold back the VM this
                // take waits for.
                waiting = Some(Waiting::new(self));
                self.changed.notify_waiters();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Puts back a VM that was taken but not handed over.
    pub(crate) async fn put_back(&self, vm: S::Vm) {
        let extra = {
            let mut st = self.lock();
            st.handed_over = st.handed_over.saturating_sub(1);
            if st.closed || st.ready.len() >= self.size {
                Some(vm)
            } else {
                st.ready.push_front(vm);
                None
            }
        };
        match extra {
            Some(vm) => self.spawner.stop(vm).await,
            None => self.changed.notify_waiters(),
        }
    }

    /// Closes the pool: no more starts or takes; waits (up to
    /// `start_wait`) for the start under way, then stops that VM and every
    /// ready one.
    pub(crate) async fn shutdown(&self, start_wait: Duration) {
        self.lock().closed = true;
        self.changed.notify_waiters();
        let task = self.refill.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(start_wait, &mut task).await.is_err()
        {
            warn!(
                self.logger,
                "a pool VM start outlived the shutdown wait: abandoning it"
            );
            task.abort();
        }
        let ready: Vec<S::Vm> = self.lock().ready.drain(..).collect();
        let stopped = ready.len();
        for vm in ready {
            self.spawner.stop(vm).await;
        }
        info!(self.logger, "VM pool shut down"; "stopped" => stopped);
    }
}

impl<S: Spawner> Drop for Core<S> {
    /// A pool dropped without `shutdown` stops refilling; the VMs it holds
    /// go with their handles (those that die with their owner end).
    fn drop(&mut self) {
        if let Some(task) = self.refill.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// A take counted as waiting while it lives.
struct Waiting<'a, S: Spawner>(&'a Core<S>);

impl<'a, S: Spawner> Waiting<'a, S> {
    fn new(core: &'a Core<S>) -> Self {
        core.lock().waiting += 1;
        Waiting(core)
    }
}

impl<S: Spawner> Drop for Waiting<'_, S> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

/// What the refill task does next.
enum Next {
    Start(u64),
    /// Nothing until something changes.
    Wait,
    /// Nothing until then (the refill delay after a take), or a change.
    WaitUntil(tokio::time::Instant),
}

/// The refill task: while the pool is open and short of VMs, start one
/// (after the refill delay that follows a take, unless a take waits);
/// then wait for a change. Holds the pool only while it works.
async fn refill<S: Spawner>(core: std::sync::Weak<Core<S>>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(pool) = core.upgrade() else { return };
        let changed = pool.changed.clone();
        let notified = changed.notified();
        let next = {
            let mut st = pool.lock();
            if st.closed {
                return;
            }
            let due = st.last_take.map(|t| t + pool.refill_delay);
            if st.ready.len() + st.starting >= pool.size {
                Next::Wait
            } else if let Some(due) = due
                && st.waiting == 0
                && tokio::time::Instant::now() < due
            {
                Next::WaitUntil(due)
            } else {
                st.starting += 1;
                st.next += 1;
                Next::Start(st.next)
            }
        };
        let n = match next {
            Next::Start(n) => n,
            Next::Wait => {
                drop(pool);
                notified.await;
                continue;
            }
            Next::WaitUntil(due) => {
                drop(pool);
                let _ = tokio::time::timeout_at(due, notified).await;
                continue;
            }
        };
        let started = pool.spawner.start(n).await;
        let outcome = {
            let mut st = pool.lock();
            st.starting -= 1;
            match started {
                Ok(vm) if !st.closed && st.ready.len() < pool.size => {
                    st.ready.push_back(vm);
                    Outcome::Ready
                }
                // Closed meanwhile, or full again (a VM was put back).
                Ok(vm) => Outcome::Extra(vm, st.closed),
                Err(e) => {
                    st.failed_starts += 1;
                    Outcome::Failed(e)
                }
            }
        };
        pool.changed.notify_waiters();
        match outcome {
            Outcome::Ready => backoff = FIRST_BACKOFF,
            Outcome::Extra(vm, closed) => {
                pool.spawner.stop(vm).await;
                if closed {
                    return;
                }
            }
            Outcome::Failed(e) => {
                warn!(pool.logger, "a pool VM failed to start"; "error" => crate::error::chain(&e),
                    "retry_in" => ?backoff);
                drop(pool);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// How one start of the refill task ended.
enum Outcome<V> {
    Ready,
    Extra(V, bool),
    Failed(Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// VMs are numbers; starts take `delay`, the ones listed fail.
    #[derive(Default)]
    struct Fake {
        delay: Duration,
        fail: Mutex<Vec<u64>>,
        started: AtomicU64,
        stopped: Mutex<Vec<u64>>,
        running: AtomicUsize,
    }

    #[async_trait]
    impl Spawner for Fake {
        type Vm = u64;

        async fn start(&self, n: u64) -> Result<u64, Error> {
            tokio::time::sleep(self.delay).await;
            self.started.fetch_add(1, Ordering::SeqCst);
            if self.fail.lock().unwrap().contains(&n) {
                return Err(Error::Timeout {
                    operation: "fake start",
                    timeout: self.delay,
                });
            }
            self.running.fetch_add(1, Ordering::SeqCst);
            Ok(n)
        }

        async fn stop(&self, vm: u64) {
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.stopped.lock().unwrap().push(vm);
        }
    }

    fn logger() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    async fn until(core: &Core<Fake>, what: impl Fn(PoolCounts) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !what(core.counts()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pool stuck at {:?}",
                core.counts()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn fills_hands_out_in_order_and_refills() {
        let fake = Fake {
            delay: Duration::from_millis(20),
            ..Fake::default()
        };
        let core = Core::start(fake, 2, Duration::ZERO, logger());
        until(&core, |c| c.ready == 2).await;
        assert_eq!(core.counts().starting, 0, "no more than N");
        assert_eq!(core.take(Duration::ZERO).await, Some(1));
        assert_eq!(core.take(Duration::ZERO).await, Some(2));
        // The third waits for the refill under way.
        assert_eq!(core.take(Duration::from_secs(5)).await, Some(3));
        until(&core, |c| c.ready == 2).await;
        assert_eq!(core.counts().handed_over, 3);
        assert_eq!(core.spawner().started.load(Ordering::SeqCst), 5);
        core.shutdown(Duration::from_secs(5)).await;
        // The two it held were stopped; the three handed out are not its.
        let mut stopped = core.spawner().stopped.lock().unwrap().clone();
        stopped.sort();
        assert_eq!(stopped, [4, 5]);
        assert_eq!(core.take(Duration::from_secs(1)).await, None);
    }

    #[tokio::test]
    async fn an_empty_pool_times_out_and_a_put_back_vm_is_next() {
        let fake = Fake {
            delay: Duration::from_secs(3600),
            ..Fake::default()
        };
        let core = Core::start(fake, 1, Duration::ZERO, logger());
        let started = tokio::time::Instant::now();
        assert_eq!(core.take(Duration::from_millis(50)).await, None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        // A start that never ends is abandoned at shutdown, bounded.
        core.shutdown(Duration::from_millis(50)).await;
        assert_eq!(core.counts().ready, 0);

        let core = Core::start(Fake::default(), 1, Duration::ZERO, logger());
        until(&core, |c| c.ready == 1).await;
        let vm = core.take(Duration::ZERO).await.unwrap();
        core.put_back(vm).await;
        // Full again: one VM held, a refill that came meanwhile stopped,
        // never leaked.
        until(&core, |c| c.ready == 1 && c.starting == 0).await;
        let running = || core.spawner().running.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while running() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} VMs run",
                running()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(core.counts().handed_over, 0);
        assert!(core.take(Duration::ZERO).await.is_some());
        core.shutdown(Duration::from_secs(5)).await;
        assert_eq!(running(), 1, "only the taken one runs");
    }

    #[tokio::test]
    async fn failures_are_counted_backed_off_and_retried() {
        let fake = Fake {
            fail: Mutex::new(vec![1, 2]),
            ..Fake::default()
        };
        let core = Core::start(fake, 1, Duration::ZERO, logger());
        until(&core, |c| c.ready == 1).await;
        let counts = core.counts();
        assert_eq!(counts.failed_starts, 2);
        assert_eq!(core.take(Duration::ZERO).await, Some(3));
        core.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_vm_started_during_shutdown_is_stopped() {
        let fake = Fake {
            delay: Duration::from_millis(100),
            ..Fake::default()
        };
        let core = Core::start(fake, 1, Duration::ZERO, logger());
        until(&core, |c| c.starting == 1).await;
        core.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*core.spawner().stopped.lock().unwrap(), [1]);
        assert_eq!(core.spawner().running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_take_delays_the_next_start_unless_a_take_waits_for_it() {
        let core = Core::start(Fake::default(), 1, Duration::from_millis(400), logger());
        until(&core, |c| c.ready == 1).await;
        let taken = tokio::time::Instant::now();
        assert_eq!(core.take(Duration::ZERO).await, Some(1));
        until(&core, |c| c.ready == 1).await;
        assert!(
            taken.elapsed() >= Duration::from_millis(400),
            "the refill began {:?} after the take",
            taken.elapsed()
        );
        core.shutdown(Duration::from_secs(5)).await;

        // A take that finds the pool empty gets the next VM at once.
        let core = Core::start(Fake::default(), 1, Duration::from_secs(3600), logger());
        until(&core, |c| c.ready == 1).await;
        assert_eq!(core.take(Duration::ZERO).await, Some(1));
        assert_eq!(core.take(Duration::from_secs(5)).await, Some(2));
        core.shutdown(Duration::from_secs(5)).await;
    }
}
