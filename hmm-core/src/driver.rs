//! The fault driver: the entry points, the retry loop and its policies.
//!
//! The driver alternates [`walk`] (inspect only, under the read lock) and
//! [`FaultHandler::fault`] (outside the walk) until the range is filled.
//! As in GUP, each fault is followed by a walk from the faulted page: the
//! walk sees the leaf the fault installed, so a fault that mapped a huge page
//! fills all of it and the next fault is at the next page still missing (one
//! fault per 2 MiB leaf where `mm/hmm.c` faults every 4 KiB page of the
//! span). Three entry points share one loop:
//!
//! * [`range_fault`]: Linux's `hmm_range_fault()`. The caller holds the lock;
//!   faults never drop it (no `ALLOW_RETRY`, so a userfaultfd range fails
//!   with `-EFAULT` exactly as in the kernel); a moved sequence is `-EBUSY`;
//!   fault errors are all `-EFAULT` as in the kernel.
//! * [`range_fault_unlockable`]: the seed patch's contract for callers that
//!   must hold the lock. Faults may drop it (`ALLOW_RETRY | KILLABLE`). With
//!   [`Policy::Resume`] the driver re-takes the lock killably, resumes where
//!   the walk stopped (retrying the dropping page with `TRIED`) if the
//!   sequence has not moved, and hands
//!   the held guard back; with [`Policy::Restart`] it returns `-EBUSY` and no
//!   guard (the seed v1 behaviour: the caller restarts from `range.start`).
//! * [`range_fault_unlocked`]: the maintainers' design. The driver owns the
//!   lock (`read_killable`), the notifier sequence (`read_begin`) and the
//!   retry loop: it resumes after a lock drop when the sequence has not
//!   moved and restarts from the range start with a new sequence when it
//!   has; checks fatal signals before every fault and every re-lock
//!   (`-EINTR`); enforces an optional time budget (`-EBUSY`), reset whenever
//!   a lock-dropping fault made progress; and in no-wait mode returns
//!   `-EAGAIN` instead of sleeping. The caller keeps only the final
//!   `read_retry` under its update lock.
//!
//! # Per-page requests and restarts
//!
//! A walk overwrites each entry's request bits with its output (they share
//! bits: `REQ_FAULT` is `VALID`, `REQ_WRITE` is `WRITE`). Resuming is
//! unaffected, since it only reads entries not yet filled, but a restart
//! from `range.start` would read earlier outputs as requests. So when the
//! range carries per-page requests (`pfn_flags_mask` has `REQ_FAULT` or
//! `REQ_WRITE`), the owning entry point does not restart by itself: a moved
//! sequence (and, under [`Policy::Restart`], a lock drop) is `-EBUSY`, and
//! the caller re-initializes its entries and calls again, as a caller of
//! Linux's `hmm_range_fault()` must. Ranges driven by `default_flags` alone
//! restart internally.
//!
//! # Why resuming is sound
//!
//! The walk stopped at `addr` for a fault there, and that fault dropped the
//! lock. Entries below `addr` were filled while the lock was held and the
//! sequence was `seq`; entries from `addr` on still hold their input, so the
//! resumed walk starts at `addr`. For one of them to be stale now, its mapping must
//! have changed, and every such change invalidates the interval and moves
//! the sequence. So if `check_retry(seq)` is false after re-taking the lock,
//! they are as good as if they had just been walked; if it is true, the
//! driver restarts. The caller's final `read_retry(seq)` under its update
//! lock still validates all of it. Total walk work stays linear in the range
//! size when every page faults through userfaultfd, where restarting is
//! quadratic.
//!
//! # Progress and the budget
//!
//! The budget (if any) bounds the time the call spends without progress. It
//! starts when the call starts and is reset when a lock-dropping fault has
//! made progress: the fault completed, or a later walk got past the page
//! whose fault dropped the lock. Expiry is judged when the lock is re-taken
//! after a restart, and, after a lock-dropping fault, only once the re-walk
//! has shown whether that fault made progress: a slow fault that resolved
//! its page is progress however long it took. A handler that only ever
//! drops the lock without resolving anything (a dead userfaultfd handler
//! that keeps waking) therefore cannot keep the call alive forever, and a
//! slow one that keeps resolving pages is never cut off. Faults that keep
//! the lock are progress and are not timed.

use super::clock::{Clock, NoClock};
use super::error::Error;
use super::fault::{FaultFlags, FaultHandler, FaultOutcome};
use super::mm::MmapLock;
use super::notifier::IntervalNotifier;
use super::pfn::PfnFlags;
use super::range::Range;
use super::signal::{NoSignals, Signals};
use super::walk::{walk, WalkCounters, WalkStop};

/// What to do after a fault dropped the mmap lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Resume where the walk stopped if the notifier sequence has not moved
    /// (restart only if it has). Linear work.
    #[default]
    Resume,
    /// Restart from `range.start` with a new sequence after every drop, as
    /// the seed patch series (v1 to v8) does. Quadratic when every page
    /// drops the lock; kept for comparison.
    Restart,
}

/// Options of the lock-dropping entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Resume or restart after a lock drop.
    pub policy: Policy,
    /// Retry budget in nanoseconds of the environment's [`Clock`]; 0 means
    /// unbounded. Expiry is `-EBUSY`.
    pub timeout_ns: u64,
    /// No-wait mode: faults carry `RETRY_NOWAIT`; a fault that would sleep is
    /// `-EAGAIN` and the lock is never dropped.
    pub nowait: bool,
}

impl Options {
    /// Default options with the given policy.
    pub const fn with_policy(policy: Policy) -> Self {
        Options {
            policy,
            timeout_ns: 0,
            nowait: false,
        }
    }
}

/// Counters of one or more calls (they accumulate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Walk passes.
    pub walks: u64,
    /// Entries that received output (re-walked entries count again).
    pub pages_filled: u64,
    /// Leaves visited.
    pub leaves: u64,
    /// Calls to the fault handler.
    pub faults: u64,
    /// Faults issued with `TRIED`.
    pub tried_faults: u64,
    /// Faults that dropped the mmap lock.
    pub lock_drops: u64,
    /// Walks resumed (not restarted) after a drop.
    pub resumes: u64,
    /// Walks restarted from the range start (sequence moved, or the
    /// restart policy).
    pub restarts: u64,
    /// Migration-entry waits.
    pub migration_waits: u64,
}

/// The result of an entry point that takes a held guard: the outcome and the
/// guard, if the lock is still (or again) held.
#[derive(Debug)]
#[must_use]
pub struct Locked<G> {
    /// 0 or the error.
    pub result: Result<(), Error>,
    /// The read guard, if the lock is held on return.
    pub guard: Option<G>,
}

/// The outside world of one range fault: the mmap lock, the fault handler,
/// the interval notifier, signals and a clock.
#[derive(Debug)]
pub struct Env<'a, L: ?Sized, H: ?Sized, N: ?Sized, S: ?Sized = NoSignals, C: ?Sized = NoClock> {
    /// The mmap lock of the mirrored address space.
    pub lock: &'a L,
    /// The fault handler.
    pub handler: &'a H,
    /// The interval notifier covering the range.
    pub notifier: &'a N,
    /// The caller's signal state.
    pub signals: &'a S,
    /// The clock of the retry budget.
    pub clock: &'a C,
}

impl<'a, L: ?Sized, H: ?Sized, N: ?Sized> Env<'a, L, H, N> {
    /// An environment that never sees signals and whose budget never expires.
    pub fn new(lock: &'a L, handler: &'a H, notifier: &'a N) -> Self {
        Env {
            lock,
            handler,
            notifier,
            signals: &NoSignals,
            clock: &NoClock,
        }
    }
}

impl<'a, L: ?Sized, H: ?Sized, N: ?Sized, S: ?Sized, C: ?Sized> Env<'a, L, H, N, S, C> {
    /// Use `signals` for fatal-signal checks.
    pub fn with_signals<S2: ?Sized>(self, signals: &'a S2) -> Env<'a, L, H, N, S2, C> {
        Env {
            lock: self.lock,
            handler: self.handler,
            notifier: self.notifier,
            signals,
            clock: self.clock,
        }
    }
    /// Use `clock` for the retry budget.
    pub fn with_clock<C2: ?Sized>(self, clock: &'a C2) -> Env<'a, L, H, N, S, C2> {
        Env {
            lock: self.lock,
            handler: self.handler,
            notifier: self.notifier,
            signals: self.signals,
            clock,
        }
    }
}

/// Linux `hmm_range_fault()`: the caller holds the read lock and
/// `range.notifier_seq`; faults never drop the lock.
pub fn range_fault<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, N, S, C>,
    range: &mut Range<'_>,
    guard: L::Guard<'a>,
    stats: &mut Stats,
) -> Locked<L::Guard<'a>>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    drive(
        env,
        range,
        Some(guard),
        &Options::default(),
        Mode::Compat,
        stats,
    )
}

/// The locked entry point with lock drop (`hmm_range_fault_unlockable`
/// semantics): the caller holds the read lock and `range.notifier_seq`;
/// faults may drop the lock. See the [module docs](self) for what each
/// policy does after a drop. `-EBUSY` means: take a new sequence and call
/// again.
pub fn range_fault_unlockable<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, N, S, C>,
    range: &mut Range<'_>,
    guard: L::Guard<'a>,
    opts: &Options,
    stats: &mut Stats,
) -> Locked<L::Guard<'a>>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    drive(env, range, Some(guard), opts, Mode::Unlockable, stats)
}

/// The owning entry point (`hmm_range_fault_unlocked_timeout` semantics,
/// with resume): takes the lock and the notifier sequence itself, loops
/// until the range is filled or an error, and returns with the lock
/// released. On success `range.notifier_seq` holds the sequence the output
/// is valid against; the caller checks it with `read_retry` under its update
/// lock before programming the device.
pub fn range_fault_unlocked<L, H, N, S, C>(
    env: &Env<'_, L, H, N, S, C>,
    range: &mut Range<'_>,
    opts: &Options,
    stats: &mut Stats,
) -> Result<(), Error>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    range.validate(env.lock.address_limit())?;
    range.notifier_seq = env.notifier.read_begin();
    drive(env, range, None, opts, Mode::Owning, stats).result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Compat,
    Unlockable,
    Owning,
}

/// The retry budget.
struct Budget<'c, C: ?Sized> {
    clock: &'c C,
    timeout: u64,
    deadline: u64,
}

impl<'c, C: Clock + ?Sized> Budget<'c, C> {
    fn new(clock: &'c C, timeout: u64) -> Self {
        let mut b = Budget {
            clock,
            timeout,
            deadline: 0,
        };
        b.reset();
        b
    }
    fn reset(&mut self) {
        if self.timeout != 0 {
            self.deadline = self.clock.now_ns().saturating_add(self.timeout);
        }
    }
    fn expired(&self) -> bool {
        self.timeout != 0 && self.clock.now_ns() >= self.deadline
    }
}

fn finish<G>(mode: Mode, result: Result<(), Error>, guard: G) -> Locked<G> {
    if mode == Mode::Owning {
        drop(guard);
        Locked {
            result,
            guard: None,
        }
    } else {
        Locked {
            result,
            guard: Some(guard),
        }
    }
}

fn unlocked<G>(result: Result<(), Error>) -> Locked<G> {
    Locked {
        result,
        guard: None,
    }
}

fn drive<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, N, S, C>,
    range: &mut Range<'_>,
    mut guard: Option<L::Guard<'a>>,
    opts: &Options,
    mode: Mode,
    stats: &mut Stats,
) -> Locked<L::Guard<'a>>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    if let Err(e) = range.validate(env.lock.address_limit()) {
        return Locked {
            result: Err(e),
            guard,
        };
    }
    let unlockable = mode != Mode::Compat;
    let mut base = FaultFlags::REMOTE;
    if unlockable {
        base |= FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        if opts.nowait {
            base |= FaultFlags::RETRY_NOWAIT;
        }
    }
    // Per-page requests live in the entries themselves, and a walk
    // overwrites them with outputs: a restart from `range.start` could not
    // tell the two apart. With per-page requests the driver therefore never
    // restarts on its own; it returns -EBUSY and the caller re-initializes
    // its array, exactly as with Linux's hmm_range_fault().
    let req_bits = PfnFlags::REQ_FAULT.union(PfnFlags::REQ_WRITE).bits();
    let per_page = range.request.pfn_flags_mask & req_bits != 0;
    let mut seq = range.notifier_seq;
    let mut cursor = range.start;
    // The page whose fault last returned Retry: its next fault is TRIED.
    let mut tried: Option<u64> = None;
    // The page whose fault last dropped the lock, until a walk gets past it.
    let mut drop_mark: Option<u64> = None;
    let mut resuming = false;
    let mut budget = Budget::new(env.clock, if unlockable { opts.timeout_ns } else { 0 });
    // After a lock-dropping fault, expiry is judged only once the re-walk
    // has shown whether the fault made progress.
    let mut judge_after_walk = false;
    let mut counters = WalkCounters::default();

    let result = loop {
        let g = match guard.take() {
            Some(g) => g,
            None => {
                // Only reachable after a drop or a restart, never in Compat.
                if env.signals.fatal_signal_pending() {
                    break unlocked(Err(Error::Intr));
                }
                if !judge_after_walk && budget.expired() {
                    break unlocked(Err(Error::Busy));
                }
                match env.lock.read_killable() {
                    Ok(g) => g,
                    Err(e) => break unlocked(Err(e)),
                }
            }
        };
        if env.notifier.check_retry(seq) {
            if mode != Mode::Owning || per_page {
                break Locked {
                    result: Err(Error::Busy),
                    guard: Some(g),
                };
            }
            // read_begin may sleep on an invalidation that needs the mmap
            // lock: never call it with the lock held.
            drop(g);
            seq = env.notifier.read_begin();
            range.notifier_seq = seq;
            cursor = range.start;
            tried = None;
            resuming = false;
            judge_after_walk = false;
            stats.restarts = stats.restarts.saturating_add(1);
            continue;
        }
        if resuming {
            stats.resumes = stats.resumes.saturating_add(1);
            resuming = false;
        }
        stats.walks = stats.walks.saturating_add(1);
        let stop = walk(&g, range, cursor, &mut counters);
        let (addr, write) = match stop {
            Err(e) => break finish(mode, Err(e), g),
            Ok(WalkStop::Done) => break finish(mode, Ok(()), g),
            Ok(WalkStop::WaitMigration { addr }) => {
                env.handler.migration_wait(&g, addr);
                stats.migration_waits = stats.migration_waits.saturating_add(1);
                // A fatal signal that arrived during the wait ends the call
                // (GUP checks before every page), whether or not a fault
                // follows.
                if unlockable && env.signals.fatal_signal_pending() {
                    break finish(mode, Err(Error::Intr), g);
                }
                cursor = addr;
                guard = Some(g);
                continue;
            }
            Ok(WalkStop::NeedFault { addr, write, .. }) => (addr, write),
        };
        if drop_mark.is_some_and(|d| addr > d) {
            budget.reset();
            drop_mark = None;
        }
        if core::mem::take(&mut judge_after_walk) && budget.expired() {
            // The walk after a lock drop got no further: no progress.
            break finish(mode, Err(Error::Busy), g);
        }
        if unlockable && env.signals.fatal_signal_pending() {
            break finish(mode, Err(Error::Intr), g);
        }
        let mut f = if write {
            base | FaultFlags::WRITE
        } else {
            base
        };
        if tried == Some(addr) {
            stats.tried_faults = stats.tried_faults.saturating_add(1);
            f |= FaultFlags::TRIED;
        }
        stats.faults = stats.faults.saturating_add(1);
        match env.handler.fault(g, addr, f) {
            FaultOutcome::Done(g) => {
                // GUP's pattern: one fault, then walk again from the faulted
                // page. The walk sees the leaf the fault installed (a whole
                // huge page when the fault mapped one) and stops at the next
                // page that still needs a fault, so a huge leaf costs one
                // fault, not one per 4 KiB page of the span.
                tried = None;
                cursor = addr;
                guard = Some(g);
                continue;
            }
            FaultOutcome::Error(g, e) => {
                let e = if unlockable {
                    e.to_error()
                } else {
                    Error::Fault
                };
                break finish(mode, Err(e), g);
            }
            FaultOutcome::WouldBlock(g) => {
                let e = if f.contains(FaultFlags::RETRY_NOWAIT) {
                    Error::Again
                } else {
                    Error::Fault
                };
                break finish(mode, Err(e), g);
            }
            FaultOutcome::Retry | FaultOutcome::Completed
                if !f.contains(FaultFlags::ALLOW_RETRY) || f.contains(FaultFlags::RETRY_NOWAIT) =>
            {
                // The handler dropped a lock it was not allowed to drop.
                break unlocked(Err(Error::Fault));
            }
            FaultOutcome::Retry => {
                tried = Some(addr);
                drop_mark = Some(addr);
            }
            FaultOutcome::Completed => {
                tried = None;
                drop_mark = None;
                budget.reset();
            }
        }
        stats.lock_drops = stats.lock_drops.saturating_add(1);
        judge_after_walk = true;
        if env.signals.fatal_signal_pending() {
            break unlocked(Err(Error::Intr));
        }
        match opts.policy {
            Policy::Resume => {
                // Resume at the page whose fault dropped the lock: it is
                // where the last walk stopped, and entries from there on
                // still hold their input (the partial-output contract).
                cursor = addr;
                resuming = true;
            }
            Policy::Restart if mode == Mode::Unlockable || per_page => {
                break unlocked(Err(Error::Busy))
            }
            Policy::Restart => {
                seq = env.notifier.read_begin();
                range.notifier_seq = seq;
                cursor = range.start;
                tried = None;
                stats.restarts = stats.restarts.saturating_add(1);
            }
        }
    };
    stats.pages_filled = stats.pages_filled.saturating_add(counters.pages_filled);
    stats.leaves = stats.leaves.saturating_add(counters.leaves);
    result
}
