//! Tasks, fatal signals and killable sleeps.
//!
//! A [`Task`] is the simulated `current`: the thread on whose behalf an
//! operation runs. [`Task::kill`] delivers a fatal signal: it sets the
//! pending flag and wakes every killable sleep the task is in, so
//! `mmap_read_lock_killable`, a userfaultfd wait or a uffd event wait end
//! with `-EINTR` promptly, without polling.
//!
//! For sweeps, [`Task::kill_at_wait`] delivers the signal when the task
//! reaches a chosen one of its *wait points*: every place on the fault
//! paths where the task may sleep (`mmap_read_lock_killable`, a
//! userfaultfd fault wait, a migration-entry wait, a userfaultfd event
//! wait), counted whether or not it actually sleeps, so the count is
//! deterministic. [`Task::wait_points`] tells how many were reached.
//!
//! Sleeps go through a [`WaitQueue`]: a mutex-protected state and a condvar.
//! A killable wait registers the queue with the task before checking the
//! flag, and `kill` sets the flag before waking the registered queues, so a
//! signal can never be lost between the check and the sleep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::inject::PointCounter;

/// Something a signal can wake.
trait Wake: Send + Sync {
    fn wake_all(&self);
}

/// A wait queue: state under a mutex, and a condvar to sleep on.
#[derive(Debug, Default)]
pub struct WaitQueue<T> {
    state: Mutex<T>,
    cv: Condvar,
}

impl<T: Send + 'static> Wake for WaitQueue<T> {
    fn wake_all(&self) {
        drop(self.lock());
        self.cv.notify_all();
    }
}

/// The wait ended because a fatal signal is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Killed;

/// Why a bounded wait ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// A fatal signal is pending.
    Killed,
    /// The time bound passed.
    TimedOut,
}

impl<T: Send + 'static> WaitQueue<T> {
    /// A queue with initial state.
    pub fn new(state: T) -> Self {
        WaitQueue {
            state: Mutex::new(state),
            cv: Condvar::new(),
        }
    }

    /// Lock the state.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake every sleeper (they re-check their conditions).
    pub fn notify_all(&self) {
        self.cv.notify_all();
    }

    /// Sleep uninterruptibly until `cond` holds.
    pub fn wait<'a>(
        &self,
        mut g: MutexGuard<'a, T>,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> MutexGuard<'a, T> {
        while !cond(&mut g) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g
    }

    /// Sleep until `cond` holds or `task` has a fatal signal pending
    /// (`TASK_KILLABLE`). With `task == None` the sleep is uninterruptible.
    /// `bound` optionally limits the sleep.
    pub fn wait_killable<'a>(
        self: &Arc<Self>,
        task: Option<&Task>,
        mut g: MutexGuard<'a, T>,
        bound: Option<Duration>,
        mut cond: impl FnMut(&mut T) -> bool,
    ) -> (MutexGuard<'a, T>, Result<(), WaitEnd>) {
        let deadline = bound.map(|b| Instant::now() + b);
        let reg = task.map(|t| t.register(self.clone()));
        let r = loop {
            if cond(&mut g) {
                break Ok(());
            }
            if task.is_some_and(|t| t.fatal_signal_pending()) {
                break Err(WaitEnd::Killed);
            }
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(WaitEnd::TimedOut);
                    }
                    g = self
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        };
        if let (Some(t), Some(id)) = (task, reg) {
            t.unregister(id);
        }
        (g, r)
    }
}

static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

/// A simulated task (thread of a process) with a fatal-signal flag.
pub struct Task {
    id: u64,
    fatal: AtomicBool,
    sleeping: Mutex<Vec<(u64, Arc<dyn Wake>)>>,
    next_reg: AtomicU64,
    wait_points: PointCounter,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("fatal", &self.fatal_signal_pending())
            .finish()
    }
}

impl Default for Task {
    fn default() -> Self {
        Self::new()
    }
}

impl Task {
    /// A new task with no signal pending.
    pub fn new() -> Self {
        Task {
            id: NEXT_TASK.fetch_add(1, Ordering::Relaxed),
            fatal: AtomicBool::new(false),
            sleeping: Mutex::new(Vec::new()),
            next_reg: AtomicU64::new(0),
            wait_points: PointCounter::default(),
        }
    }

    /// The task id (a thread id for userfaultfd messages).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Deliver a fatal signal (SIGKILL): set the flag and wake the task's
    /// killable sleeps.
    pub fn kill(&self) {
        self.fatal.store(true, Ordering::SeqCst);
        let queues: Vec<Arc<dyn Wake>> = self
            .sleeping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, q)| q.clone())
            .collect();
        for q in queues {
            q.wake_all();
        }
    }

    /// Wait points reached so far (see the module docs).
    pub fn wait_points(&self) -> u64 {
        self.wait_points.reached()
    }

    /// Deliver a fatal signal when the task reaches its `k`-th wait point
    /// from now (`0`: the next one), just before it would sleep there.
    pub fn kill_at_wait(&self, k: u64) {
        self.wait_points.fire_at(k);
    }

    /// The task is at a wait point: count it, and deliver the signal if
    /// [`Task::kill_at_wait`] chose this one.
    pub(crate) fn wait_point(&self) {
        if self.wait_points.reach() {
            self.kill();
        }
    }

    /// Clear the pending signal (a new task would be cleaner; tests reuse).
    pub fn clear_signal(&self) {
        self.fatal.store(false, Ordering::SeqCst);
    }

    /// `fatal_signal_pending(current)`.
    pub fn fatal_signal_pending(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }

    fn register(&self, q: Arc<dyn Wake>) -> u64 {
        let id = self.next_reg.fetch_add(1, Ordering::Relaxed);
        self.sleeping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, q));
        id
    }

    fn unregister(&self, id: u64) {
        self.sleeping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }
}

impl hmm_core::Signals for Task {
    fn fatal_signal_pending(&self) -> bool {
        Task::fatal_signal_pending(self)
    }
}

/// The monotonic clock (`jiffies`, in nanoseconds) for retry budgets.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    origin: Instant,
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonoClock {
    /// A clock starting now.
    pub fn new() -> Self {
        MonoClock {
            origin: Instant::now(),
        }
    }
}

impl hmm_core::Clock for MonoClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn kill_wakes_a_killable_sleep() {
        let q = Arc::new(WaitQueue::new(false));
        let t = Arc::new(Task::new());
        let started = Arc::new(Barrier::new(2));
        let h = {
            let (q, t, started) = (q.clone(), t.clone(), started.clone());
            std::thread::spawn(move || {
                let g = q.lock();
                started.wait();
                let (_g, r) = q.wait_killable(Some(&t), g, None, |s| *s);
                r
            })
        };
        started.wait();
        t.kill();
        assert_eq!(h.join().unwrap(), Err(WaitEnd::Killed));
    }

    #[test]
    fn condition_ends_the_sleep() {
        let q = Arc::new(WaitQueue::new(0u32));
        let t = Task::new();
        let h = {
            let q = q.clone();
            std::thread::spawn(move || {
                *q.lock() = 1;
                q.notify_all();
            })
        };
        let g = q.lock();
        let (g, r) = q.wait_killable(Some(&t), g, None, |s| *s == 1);
        assert_eq!((r, *g), (Ok(()), 1));
        drop(g);
        h.join().unwrap();
        assert!(t.sleeping.lock().unwrap().is_empty());
    }

    #[test]
    fn kill_at_wait_delivers_at_the_chosen_point() {
        let t = Task::new();
        t.kill_at_wait(1);
        t.wait_point();
        assert!(!t.fatal_signal_pending());
        t.wait_point();
        assert!(t.fatal_signal_pending());
        assert_eq!(t.wait_points(), 2);
    }

    #[test]
    fn bounded_wait_times_out() {
        let q = Arc::new(WaitQueue::new(()));
        let g = q.lock();
        let (_g, r) = q.wait_killable(None, g, Some(Duration::from_millis(1)), |_| false);
        assert_eq!(r, Err(WaitEnd::TimedOut));
    }
}
