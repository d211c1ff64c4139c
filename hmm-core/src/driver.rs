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
//! * [`range_fault_may_unlock`]: the seed patch's contract for callers that
//!   must hold the lock. Faults may drop it (`ALLOW_RETRY | KILLABLE`). With
//!   [`Policy::Resume`] the driver re-takes the lock killably, resumes where
//!   the walk stopped (retrying the dropping page with `TRIED`) if the
//!   sequence has not moved, and hands
//!   the held guard back; with [`Policy::Restart`] it returns `-EBUSY` and no
//!   guard (the seed v1 behaviour: the caller restarts from `range.start`).
//! * [`range_fault_owning_lock`]: the maintainers' design. The driver owns the
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

use super::clock::Clock;
use super::error::Error;
use super::fault::{FaultFlags, FaultHandler, FaultOutcome};
use super::host::Env;
use super::mm::MmapLock;
use super::need::Request;
use super::notifier::IntervalNotifier;
use super::pfn::PfnFlags;
use super::range::Range;
use super::signal::Signals;
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

/// What an entry point that takes a held guard gives back: the outcome,
/// and the guard if the lock is held on return. A fault may have dropped
/// the lock, so the guard is not always there.
#[derive(Debug)]
#[must_use]
pub struct MaybeLocked<G> {
    /// 0 or the error.
    pub result: Result<(), Error>,
    /// The read guard, if the lock is held on return.
    pub guard: Option<G>,
}

impl<G> MaybeLocked<G> {
    /// The call ends with the lock held.
    const fn held(result: Result<(), Error>, guard: G) -> Self {
        MaybeLocked {
            result,
            guard: Some(guard),
        }
    }
    /// The call ends with the lock released (a fault dropped it).
    const fn dropped(result: Result<(), Error>) -> Self {
        MaybeLocked {
            result,
            guard: None,
        }
    }
}

/// Linux `hmm_range_fault()`: the caller holds the read lock and
/// `range.notifier_seq`; faults never drop the lock, so the guard always
/// comes back.
///
/// # Errors
///
/// On error the entries from the page that failed on are unspecified (the
/// partial-output contract).
///
/// | error | when |
/// |---|---|
/// | [`Error::Inval`] | the range is unaligned, empty or inverted, ends past [`MmapLock::address_limit`], or `pfns` does not have one entry per page |
/// | [`Error::Busy`] | `check_retry(range.notifier_seq)` is true: take a new sequence and call again |
/// | [`Error::Perm`] | write requested on a VMA without `VM_WRITE` |
/// | [`Error::Fault`] | a requested page cannot be made valid (no VMA, `VM_IO`, `VM_PFNMAP`, no `VM_READ`, hwpoison, a bad entry), or its fault failed for any reason, a fault that would need to drop the lock (userfaultfd) included |
pub fn range_fault<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, S, C>,
    range: &mut Range<'_, N>,
    guard: L::Guard<'a>,
    stats: &mut Stats,
) -> MaybeLocked<L::Guard<'a>>
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
        Mode::Linux,
        stats,
    )
}

/// The caller's lock, which faults may drop (the seed patch's
/// `hmm_range_fault_unlockable` semantics): the caller holds the read lock
/// and `range.notifier_seq`; faults may drop the lock, and the driver
/// re-takes it killably. See the [module docs](self) for what each policy
/// does after a drop. The guard comes back if the lock is held on return,
/// whatever the result.
///
/// # Errors
///
/// On error the entries from the page that failed on are unspecified.
///
/// | error | when | lock on return |
/// |---|---|---|
/// | [`Error::Inval`] | as for [`range_fault`] | held |
/// | [`Error::Busy`] | the sequence moved (checked on entry and after every re-lock); or the budget (`opts.timeout_ns`) ran out without progress; or a fault dropped the lock under [`Policy::Restart`]. Take a new sequence and call again | held after a sequence check or an expiry judged at a fault; otherwise not |
/// | [`Error::Perm`], [`Error::Fault`] | as for [`range_fault`], except that a fault may drop the lock; also a `VM_FAULT_SIGBUS` / `SIGSEGV`, and a handler that dropped the lock when it was not allowed to | held (not held after a handler broke its contract) |
/// | [`Error::NoMem`], [`Error::HwPoison`] | the fault handler's `VM_FAULT_OOM`, `VM_FAULT_HWPOISON` | held |
/// | [`Error::Intr`] | a fatal signal: before a fault, after a migration wait, after a drop, or while re-taking the lock | held before a fault or after a wait; otherwise not |
/// | [`Error::Again`] | no-wait mode (`opts.nowait`) and a fault would have to sleep | held |
pub fn range_fault_may_unlock<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, S, C>,
    range: &mut Range<'_, N>,
    guard: L::Guard<'a>,
    opts: &Options,
    stats: &mut Stats,
) -> MaybeLocked<L::Guard<'a>>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    drive(env, range, Some(guard), opts, Mode::MayUnlock, stats)
}

/// The owning entry point (`hmm_range_fault_unlocked_timeout` semantics,
/// with resume): takes the lock and the notifier sequence itself, loops
/// until the range is filled or an error, and returns with the lock
/// released. On success `range.notifier_seq` holds the sequence the output
/// is valid against; the caller checks it with `read_retry` under its update
/// lock before programming the device.
///
/// # Errors
///
/// The lock is never held on return. On error the entries from the page
/// that failed on are unspecified; with per-page requests the caller
/// re-initializes them before calling again.
///
/// | error | when |
/// |---|---|
/// | [`Error::Inval`] | as for [`range_fault`] |
/// | [`Error::Busy`] | the budget (`opts.timeout_ns`) ran out without progress; or, for a range with per-page requests only, the sequence moved or a fault dropped the lock under [`Policy::Restart`] (ranges driven by `default_flags` restart by themselves) |
/// | [`Error::Perm`], [`Error::Fault`], [`Error::NoMem`], [`Error::HwPoison`] | as for [`range_fault_may_unlock`] |
/// | [`Error::Intr`] | a fatal signal, checked before every fault and every re-lock, and while waiting for the lock |
/// | [`Error::Again`] | no-wait mode (`opts.nowait`) and a fault would have to sleep |
pub fn range_fault_owning_lock<L, H, N, S, C>(
    env: &Env<'_, L, H, S, C>,
    range: &mut Range<'_, N>,
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
    range.notifier_seq = range.notifier.read_begin();
    // The guard, if any, is dropped here: the call returns unlocked.
    drive(env, range, None, opts, Mode::Owning, stats).result
}

/// Which entry point is driving: it decides the fault flags, the errno of a
/// failed fault, and whether the driver may restart by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// [`range_fault`]: the caller's lock, never dropped.
    Linux,
    /// [`range_fault_may_unlock`]: the caller's lock, which faults may drop.
    MayUnlock,
    /// [`range_fault_owning_lock`]: the driver owns the lock and the sequence.
    Owning,
}

/// What the driver does after the sequence moved or a fault dropped the
/// lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Walk on from where the last walk stopped, under the same sequence.
    Resume,
    /// Take a new sequence and walk again from `range.start`.
    Restart,
    /// End the call with this error.
    Return(Error),
}

/// Whether the entries carry per-page requests (`pfn_flags_mask` selects
/// `REQ_FAULT` or `REQ_WRITE`). A walk overwrites them with outputs, so
/// such a range is never restarted by the driver: see the
/// [module docs](self#per-page-requests-and-restarts).
const fn has_per_page_requests(request: &Request) -> bool {
    let req_bits = PfnFlags::REQ_FAULT.union(PfnFlags::REQ_WRITE).bits();
    request.pfn_flags_mask & req_bits != 0
}

/// `check_retry(seq)` was true: entries already filled may be stale. Only
/// the owning entry point restarts by itself, and only if a restart cannot
/// misread outputs as requests; the others hand `-EBUSY` to the caller.
const fn on_sequence_moved(mode: Mode, per_page: bool) -> Next {
    match mode {
        Mode::Owning if !per_page => Next::Restart,
        _ => Next::Return(Error::Busy),
    }
}

/// A fault dropped the lock (and no fatal signal is pending). Resuming is
/// sound whatever the caller (the sequence check that follows the re-lock
/// catches any invalidation); the restart policy restarts only where the
/// driver may restart by itself. Linux mode never lets a fault drop the
/// lock (see [`classify`]), so it never gets here.
const fn after_drop(policy: Policy, mode: Mode, per_page: bool) -> Next {
    match (mode, policy) {
        (Mode::Linux, _) => Next::Return(Error::Fault),
        (_, Policy::Resume) => Next::Resume,
        (Mode::Owning, Policy::Restart) if !per_page => Next::Restart,
        (_, Policy::Restart) => Next::Return(Error::Busy),
    }
}

/// The flags every fault of a call carries (`WRITE` and `TRIED` are added
/// per fault): `REMOTE` always; `ALLOW_RETRY | KILLABLE` where faults may
/// drop the lock; `RETRY_NOWAIT` in no-wait mode.
fn base_fault_flags(mode: Mode, nowait: bool) -> FaultFlags {
    let mut base = FaultFlags::REMOTE;
    if mode != Mode::Linux {
        base |= FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        if nowait {
            base |= FaultFlags::RETRY_NOWAIT;
        }
    }
    base
}

/// What one fault left behind.
#[derive(Debug, PartialEq, Eq)]
enum Faulted<G> {
    /// The lock is still held: walk again from the faulted page.
    Held(G),
    /// The handler dropped the lock; `completed` if the fault needs no retry
    /// (`VM_FAULT_COMPLETED`), otherwise it is retried with `TRIED`.
    Dropped {
        /// The fault completed while the lock was dropped.
        completed: bool,
    },
    /// The call ends with this error, with the guard if the lock is held.
    Failed(Error, Option<G>),
}

/// Map a [`FaultOutcome`] to what the driver does with it. Linux mode
/// reports every `VM_FAULT_ERROR` as `-EFAULT`, as the kernel does; the
/// lock-dropping modes give the precise errno. A handler that dropped the
/// lock without `ALLOW_RETRY`, or with `RETRY_NOWAIT`, broke its contract:
/// `-EFAULT`, never a crash.
fn classify<G>(outcome: FaultOutcome<G>, flags: FaultFlags, mode: Mode) -> Faulted<G> {
    let may_drop =
        flags.contains(FaultFlags::ALLOW_RETRY) && !flags.contains(FaultFlags::RETRY_NOWAIT);
    match outcome {
        FaultOutcome::Done(g) => Faulted::Held(g),
        FaultOutcome::Error(g, _) if mode == Mode::Linux => Faulted::Failed(Error::Fault, Some(g)),
        FaultOutcome::Error(g, e) => Faulted::Failed(e.to_error(), Some(g)),
        FaultOutcome::WouldBlock(g) if flags.contains(FaultFlags::RETRY_NOWAIT) => {
            Faulted::Failed(Error::Again, Some(g))
        }
        FaultOutcome::WouldBlock(g) => Faulted::Failed(Error::Fault, Some(g)),
        FaultOutcome::Retry | FaultOutcome::Completed if !may_drop => {
            Faulted::Failed(Error::Fault, None)
        }
        FaultOutcome::Retry => Faulted::Dropped { completed: false },
        FaultOutcome::Completed => Faulted::Dropped { completed: true },
    }
}

/// The retry budget and the progress that resets it (see the
/// [module docs](self#progress-and-the-budget)).
struct Budget<'c, C: ?Sized> {
    clock: &'c C,
    /// 0: unbounded.
    timeout: u64,
    deadline: u64,
    /// The page whose fault last dropped the lock without completing, until
    /// a walk gets past it.
    drop_mark: Option<u64>,
    /// A fault dropped the lock and no walk since has shown whether it made
    /// progress: expiry waits for that walk.
    judge_after_walk: bool,
}

impl<'c, C: Clock + ?Sized> Budget<'c, C> {
    fn new(clock: &'c C, timeout: u64) -> Self {
        let mut b = Budget {
            clock,
            timeout,
            deadline: 0,
            drop_mark: None,
            judge_after_walk: false,
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
    /// Before re-taking the lock: expired, unless a lock drop is still to
    /// be judged by the next walk.
    fn expired_at_relock(&self) -> bool {
        !self.judge_after_walk && self.expired()
    }
    /// A walk stopped for a fault at `addr`: a walk past the page that
    /// dropped the lock is progress; then judge the last drop, if any.
    fn expired_at_fault(&mut self, addr: u64) -> bool {
        if self.drop_mark.is_some_and(|d| addr > d) {
            self.reset();
            self.drop_mark = None;
        }
        core::mem::take(&mut self.judge_after_walk) && self.expired()
    }
    /// The fault at `addr` dropped the lock; a completed fault is progress.
    fn lock_dropped(&mut self, addr: u64, completed: bool) {
        if completed {
            self.drop_mark = None;
            self.reset();
        } else {
            self.drop_mark = Some(addr);
        }
        self.judge_after_walk = true;
    }
}

/// The loop's position between passes.
///
/// # Invariants
///
/// Entries below `cursor` were filled under the lock while the notifier
/// sequence was `seq`; entries from `cursor` on still hold their input.
struct Cursor {
    /// The sequence the output is valid against (also in `range.notifier_seq`).
    seq: u64,
    /// Where the next walk starts.
    cursor: u64,
    /// The page whose fault last returned `Retry`: its next fault is `TRIED`.
    tried: Option<u64>,
    /// A resume is pending; it is counted once the sequence check passes.
    resuming: bool,
}

/// What a walk from the cursor ended with.
enum Walked {
    /// The page at `addr` needs a fault (`write`: a write fault).
    Fault {
        /// The page.
        addr: u64,
        /// Write fault.
        write: bool,
    },
    /// A migration entry was waited on: walk again from it.
    Again,
    /// The call ends with this result, the lock held.
    End(Result<(), Error>),
}

/// One call of an entry point: what it was asked for and where it stands.
struct Driver<'e, 'a, L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> {
    env: &'e Env<'a, L, H, S, C>,
    mode: Mode,
    policy: Policy,
    /// The entries carry per-page requests (see [`has_per_page_requests`]).
    per_page: bool,
    /// The flags every fault of the call carries.
    base: FaultFlags,
    budget: Budget<'a, C>,
    at: Cursor,
    counters: WalkCounters,
    stats: &'e mut Stats,
}

impl<'e, 'a, L, H, S, C> Driver<'e, 'a, L, H, S, C>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    fn new<N: ?Sized>(
        env: &'e Env<'a, L, H, S, C>,
        range: &Range<'_, N>,
        opts: &Options,
        mode: Mode,
        stats: &'e mut Stats,
    ) -> Self {
        let timeout = if mode == Mode::Linux {
            0
        } else {
            opts.timeout_ns
        };
        Driver {
            env,
            mode,
            policy: opts.policy,
            per_page: has_per_page_requests(&range.request),
            base: base_fault_flags(mode, opts.nowait),
            budget: Budget::new(env.clock, timeout),
            // INVARIANT: nothing has been filled yet.
            at: Cursor {
                seq: range.notifier_seq,
                cursor: range.start,
                tried: None,
                resuming: false,
            },
            counters: WalkCounters::default(),
            stats,
        }
    }

    fn fatal_signal(&self) -> bool {
        self.env.signals.fatal_signal_pending()
    }

    /// Re-take the lock after a drop or a restart: not with a fatal signal
    /// pending (`-EINTR`) nor once the budget has expired (`-EBUSY`), and
    /// killably.
    fn relock(&self) -> Result<L::Guard<'a>, Error> {
        if self.fatal_signal() {
            return Err(Error::Intr);
        }
        if self.budget.expired_at_relock() {
            return Err(Error::Busy);
        }
        self.env.lock.read_killable()
    }

    /// Take a new sequence (never under the mmap lock: `read_begin` may
    /// sleep on an invalidation that needs it) and go back to `range.start`.
    fn restart<N: IntervalNotifier + ?Sized>(&mut self, range: &mut Range<'_, N>) {
        self.at.seq = range.notifier.read_begin();
        range.notifier_seq = self.at.seq;
        // INVARIANT: nothing is below `range.start`.
        self.at.cursor = range.start;
        self.at.tried = None;
        self.at.resuming = false;
        self.stats.restarts = self.stats.restarts.saturating_add(1);
    }

    /// Walk from the cursor until the range is done or a page needs a
    /// fault; wait on a migration entry and say to walk again.
    fn walk_on<N: ?Sized>(&mut self, g: &L::Guard<'a>, range: &mut Range<'_, N>) -> Walked {
        if core::mem::take(&mut self.at.resuming) {
            self.stats.resumes = self.stats.resumes.saturating_add(1);
        }
        self.stats.walks = self.stats.walks.saturating_add(1);
        match walk(g, range, self.at.cursor, &mut self.counters) {
            Ok(WalkStop::NeedFault { addr, write, .. }) => Walked::Fault { addr, write },
            Ok(WalkStop::Done) => Walked::End(Ok(())),
            Err(e) => Walked::End(Err(e)),
            Ok(WalkStop::WaitMigration { addr }) => {
                self.env.handler.migration_wait(g, addr);
                self.stats.migration_waits = self.stats.migration_waits.saturating_add(1);
                // GUP checks for a fatal signal before every page, so one
                // that arrived during the wait ends the call.
                if self.mode != Mode::Linux && self.fatal_signal() {
                    return Walked::End(Err(Error::Intr));
                }
                // INVARIANT: the walk filled everything below `addr`.
                self.at.cursor = addr;
                Walked::Again
            }
        }
    }

    /// Fault the page at `addr` where the walk stopped, outside the walk:
    /// unless the budget expired without progress or a fatal signal is
    /// pending, call the handler (with `TRIED` if it retries the fault
    /// that last dropped the lock) and say whether the lock is held.
    fn fault(&mut self, g: L::Guard<'a>, addr: u64, write: bool) -> Faulted<L::Guard<'a>> {
        if self.budget.expired_at_fault(addr) {
            // The walk after a lock drop got no further: no progress.
            return Faulted::Failed(Error::Busy, Some(g));
        }
        if self.mode != Mode::Linux && self.fatal_signal() {
            return Faulted::Failed(Error::Intr, Some(g));
        }
        let retry = self.at.tried == Some(addr);
        let flags = fault_flags(self.base, write, retry, self.stats);
        let out = classify(self.env.handler.fault(g, addr, flags), flags, self.mode);
        match out {
            Faulted::Held(_) => {
                // GUP's pattern: walk again from the faulted page, which
                // sees the leaf the fault installed (a whole huge page when
                // it mapped one). INVARIANT: the walk filled everything
                // below `addr`.
                self.at.tried = None;
                self.at.cursor = addr;
            }
            Faulted::Dropped { completed } => {
                self.at.tried = if completed { None } else { Some(addr) };
                self.budget.lock_dropped(addr, completed);
                self.stats.lock_drops = self.stats.lock_drops.saturating_add(1);
            }
            Faulted::Failed(..) => {}
        }
        out
    }

    /// The fault at `addr` dropped the lock: resume there or restart, or
    /// end the call (unlocked) with the error.
    fn decide<N: IntervalNotifier + ?Sized>(
        &mut self,
        range: &mut Range<'_, N>,
        addr: u64,
    ) -> Result<(), Error> {
        if self.fatal_signal() {
            return Err(Error::Intr);
        }
        match after_drop(self.policy, self.mode, self.per_page) {
            Next::Resume => {
                // INVARIANT: the walk filled everything below `addr`, and
                // the sequence check after the re-lock vouches for it.
                self.at.cursor = addr;
                self.at.resuming = true;
            }
            Next::Restart => self.restart(range),
            Next::Return(e) => return Err(e),
        }
        Ok(())
    }

    /// Add the walks' counters to the caller's.
    fn finish(self) {
        let (s, c) = (self.stats, self.counters);
        s.pages_filled = s.pages_filled.saturating_add(c.pages_filled);
        s.leaves = s.leaves.saturating_add(c.leaves);
    }
}

/// The loop of all three entry points, in `mm/hmm.c`'s order: (re)lock,
/// check the sequence, walk, fault, decide. It returns with the guard when
/// the lock is held; the owning entry point drops it.
///
/// Loop invariant: entries below the cursor were filled under the current
/// sequence; the rest still hold their input.
fn drive<'a, L, H, N, S, C>(
    env: &Env<'a, L, H, S, C>,
    range: &mut Range<'_, N>,
    mut guard: Option<L::Guard<'a>>,
    opts: &Options,
    mode: Mode,
    stats: &mut Stats,
) -> MaybeLocked<L::Guard<'a>>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    N: IntervalNotifier + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    if let Err(e) = range.validate(env.lock.address_limit()) {
        return MaybeLocked {
            result: Err(e),
            guard,
        };
    }
    let mut d = Driver::new(env, range, opts, mode, stats);
    let out = loop {
        // Relock: only after a drop or a restart, so never in Linux mode.
        let g = match guard.take().map_or_else(|| d.relock(), Ok) {
            Ok(g) => g,
            Err(e) => break MaybeLocked::dropped(Err(e)),
        };
        // Check: has an invalidation made the filled entries stale?
        if range.notifier.check_retry(d.at.seq) {
            match on_sequence_moved(mode, d.per_page) {
                Next::Return(e) => break MaybeLocked::held(Err(e), g),
                Next::Resume | Next::Restart => {
                    drop(g);
                    d.restart(range);
                    d.budget.judge_after_walk = false;
                    continue;
                }
            }
        }
        // Walk from the cursor.
        let (addr, write) = match d.walk_on(&g, range) {
            Walked::Fault { addr, write } => (addr, write),
            Walked::Again => {
                guard = Some(g);
                continue;
            }
            Walked::End(result) => break MaybeLocked::held(result, g),
        };
        // Fault the page it stopped at, and decide after a lock drop.
        match d.fault(g, addr, write) {
            Faulted::Held(g) => guard = Some(g),
            Faulted::Failed(e, guard) => {
                break MaybeLocked {
                    result: Err(e),
                    guard,
                }
            }
            Faulted::Dropped { .. } => {
                if let Err(e) = d.decide(range, addr) {
                    break MaybeLocked::dropped(Err(e));
                }
            }
        }
    };
    d.finish();
    out
}

/// The flags of one fault: `base`, `WRITE` for a write fault, and `TRIED`
/// when it retries the fault that last dropped the lock (counted).
fn fault_flags(base: FaultFlags, write: bool, retry: bool, stats: &mut Stats) -> FaultFlags {
    let mut flags = base;
    if write {
        flags |= FaultFlags::WRITE;
    }
    if retry {
        stats.tried_faults = stats.tried_faults.saturating_add(1);
        flags |= FaultFlags::TRIED;
    }
    stats.faults = stats.faults.saturating_add(1);
    flags
}

#[cfg(test)]
mod tests {
    use super::super::fault::VmFaultError;
    use super::*;

    const MODES: [Mode; 3] = [Mode::Linux, Mode::MayUnlock, Mode::Owning];
    const BUSY: Next = Next::Return(Error::Busy);

    #[test]
    fn per_page_requests_are_the_req_bits_of_the_mask() {
        let req = |mask: u64| Request {
            default_flags: PfnFlags::REQ_FAULT.bits(),
            pfn_flags_mask: mask,
        };
        let table: [(u64, bool); 5] = [
            (0, false),
            (PfnFlags::REQ_FAULT.bits(), true),
            (PfnFlags::REQ_WRITE.bits(), true),
            (PfnFlags::ERROR.bits(), false),
            (u64::MAX, true),
        ];
        for (mask, want) in table {
            assert_eq!(has_per_page_requests(&req(mask)), want, "{mask:#x}");
        }
    }

    #[test]
    fn sequence_moved_table() {
        // (mode, per-page requests) -> next
        let table = [
            (Mode::Linux, false, BUSY),
            (Mode::Linux, true, BUSY),
            (Mode::MayUnlock, false, BUSY),
            (Mode::MayUnlock, true, BUSY),
            (Mode::Owning, false, Next::Restart),
            (Mode::Owning, true, BUSY),
        ];
        for (mode, per_page, want) in table {
            assert_eq!(
                on_sequence_moved(mode, per_page),
                want,
                "{mode:?} {per_page}"
            );
        }
    }

    #[test]
    fn after_drop_table() {
        use Policy::{Restart, Resume};
        // (mode, policy, per-page requests) -> next
        let table = [
            (Mode::Linux, Resume, false, Next::Return(Error::Fault)),
            (Mode::Linux, Restart, true, Next::Return(Error::Fault)),
            (Mode::MayUnlock, Resume, false, Next::Resume),
            (Mode::MayUnlock, Resume, true, Next::Resume),
            (Mode::MayUnlock, Restart, false, BUSY),
            (Mode::MayUnlock, Restart, true, BUSY),
            (Mode::Owning, Resume, false, Next::Resume),
            (Mode::Owning, Resume, true, Next::Resume),
            (Mode::Owning, Restart, false, Next::Restart),
            (Mode::Owning, Restart, true, BUSY),
        ];
        for (mode, policy, per_page, want) in table {
            assert_eq!(
                after_drop(policy, mode, per_page),
                want,
                "{mode:?} {policy:?} {per_page}"
            );
        }
    }

    #[test]
    fn base_flags_table() {
        let drop = FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        let table = [
            (Mode::Linux, false, FaultFlags::REMOTE),
            (Mode::Linux, true, FaultFlags::REMOTE),
            (Mode::MayUnlock, false, drop),
            (Mode::MayUnlock, true, drop | FaultFlags::RETRY_NOWAIT),
            (Mode::Owning, false, drop),
            (Mode::Owning, true, drop | FaultFlags::RETRY_NOWAIT),
        ];
        for (mode, nowait, want) in table {
            assert_eq!(base_fault_flags(mode, nowait), want, "{mode:?} {nowait}");
        }
    }

    #[test]
    fn fault_flags_add_write_and_counted_tried() {
        let mut stats = Stats::default();
        let base = FaultFlags::REMOTE;
        assert_eq!(fault_flags(base, false, false, &mut stats), base);
        assert_eq!(
            fault_flags(base, true, true, &mut stats),
            base | FaultFlags::WRITE | FaultFlags::TRIED
        );
        assert_eq!((stats.faults, stats.tried_faults), (2, 1));
    }

    #[test]
    fn classify_table() {
        let fail = |e: Error, held: bool| Faulted::Failed(e, held.then_some(()));
        let oom = VmFaultError::Oom;
        for mode in MODES {
            let flags = base_fault_flags(mode, false);
            let nowait = base_fault_flags(mode, true);
            let linux = mode == Mode::Linux;
            let dropped = |completed| {
                if linux {
                    fail(Error::Fault, false)
                } else {
                    Faulted::Dropped { completed }
                }
            };
            let table = [
                (FaultOutcome::Done(()), flags, Faulted::Held(())),
                (
                    FaultOutcome::Error((), oom),
                    flags,
                    fail(if linux { Error::Fault } else { Error::NoMem }, true),
                ),
                (
                    FaultOutcome::WouldBlock(()),
                    flags,
                    fail(Error::Fault, true),
                ),
                (
                    FaultOutcome::WouldBlock(()),
                    nowait,
                    fail(if linux { Error::Fault } else { Error::Again }, true),
                ),
                (FaultOutcome::Retry, flags, dropped(false)),
                (FaultOutcome::Completed, flags, dropped(true)),
                // Dropping the lock in no-wait mode breaks the contract.
                (FaultOutcome::Retry, nowait, fail(Error::Fault, false)),
                (FaultOutcome::Completed, nowait, fail(Error::Fault, false)),
            ];
            for (i, (outcome, flags, want)) in table.into_iter().enumerate() {
                assert_eq!(classify(outcome, flags, mode), want, "{mode:?} row {i}");
            }
        }
    }

    struct Tick(core::cell::Cell<u64>);
    impl Clock for Tick {
        fn now_ns(&self) -> u64 {
            self.0.get()
        }
    }

    #[test]
    fn budget_judges_a_drop_after_the_next_walk() {
        let clock = Tick(core::cell::Cell::new(0));
        let mut b = Budget::new(&clock, 10);
        clock.0.set(20);
        assert!(b.expired_at_relock(), "no drop pending: judged at relock");
        b.lock_dropped(0x1000, false);
        assert!(!b.expired_at_relock(), "a drop waits for its walk");
        assert!(b.expired_at_fault(0x1000), "the walk got no further");
        b.lock_dropped(0x1000, false);
        assert!(!b.expired_at_fault(0x2000), "past the mark: progress");
        clock.0.set(40);
        b.lock_dropped(0x2000, true);
        assert!(!b.expired_at_fault(0x2000), "a completed fault is progress");
        let unbounded = Budget::new(&clock, 0);
        clock.0.set(u64::MAX);
        assert!(!unbounded.expired());
    }
}
