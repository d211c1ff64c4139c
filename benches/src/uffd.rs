//! userfaultfd-backed fault-in: every page of a fresh range is supplied by
//! a handler thread, one lock-dropping round trip per page.
//!
//! [`UffdRange`] maps an anonymous range in a fresh simulated process,
//! registers it with a userfaultfd in MISSING mode and starts a handler
//! thread that answers each page-fault message with `UFFDIO_COPY` of one
//! page. [`UffdRange::fault_in`] then faults the whole range in with
//! hmm-core's owning entry point ([`range_fault_owning_lock`]) under a
//! [`Policy`]: with [`Policy::Resume`] each round trip re-walks from the
//! faulting page; with [`Policy::Restart`] (the seed series) it re-walks
//! from the range start, which is quadratic.
//!
//! [`TimedMm`] wraps the simulator's mm so that the time the walker spends
//! between its VMA lookup and the end of the page-table iteration is summed
//! in the same run: the walker's share of the round trip is measured, not
//! inferred.
//!
//! [`real`] is the baseline: the same round trip on this machine's own
//! userfaultfd, measured beside the simulated one.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backend_sim::fault::handle_mm_fault;
use backend_sim::mm::{Mm, MmHandle, MmReadGuard};
use backend_sim::task::Task;
use backend_sim::userfaultfd::{CopyMode, Features, UffdCtx, UffdMsg};
use backend_sim::{Errno, Machine};
use hmm_core::{
    range_fault_owning_lock, Env, Error, FaultFlags, FaultHandler, FaultOutcome, HmmPfn,
    IntervalNotifier, Leaf, LeafSink, MmView, MmapLock, Options, PfnFlags, Policy, Range, Stats,
    Vma, PAGE_SIZE,
};

use crate::sim::RW;

pub mod real;

/// A fresh userfaultfd-registered range and its handler thread.
pub struct UffdRange {
    /// The process.
    pub mm: Arc<Mm>,
    /// The faulting task (the device driver's context).
    pub task: Task,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    ctx: Arc<UffdCtx>,
    handler: Option<JoinHandle<Result<u64, Errno>>>,
    notifier: Arc<backend_sim::notifier::IntervalSub>,
}

/// The outcome of one fault-in.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultIn {
    /// Wall time of the whole range fault.
    pub elapsed: Duration,
    /// Walker time inside it ([`TimedMm`] runs only; 0 otherwise).
    pub walk: Duration,
    /// Walk passes timed ([`TimedMm`] runs only).
    pub timed_walks: u64,
    /// Median time of one timed walk pass ([`TimedMm`] runs only): robust
    /// against the thread being preempted inside a few passes.
    pub walk_median: Duration,
    /// hmm-core's counters.
    pub stats: Stats,
}

impl UffdRange {
    /// Map `len` bytes, register them with a new userfaultfd and start the
    /// handler thread.
    pub fn new(machine: &Arc<Machine>, len: u64) -> Result<UffdRange, String> {
        let mm = Mm::new(machine);
        let start = mm
            .mmap_anon(None, len, RW)
            .map_err(|e| format!("mmap: {e}"))?;
        let ctx = mm.userfaultfd(Features::default());
        ctx.register(start, len, true, false)
            .map_err(|e| format!("register: {e}"))?;
        let handler = {
            let ctx = ctx.clone();
            std::thread::spawn(move || serve(&ctx))
        };
        let notifier = mm
            .notifiers()
            .insert(start, start + len, Box::new(crate::sim::SeqOnly));
        Ok(UffdRange {
            mm,
            task: Task::new(),
            start,
            len,
            ctx,
            handler: Some(handler),
            notifier,
        })
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        (self.len / PAGE_SIZE) as usize
    }

    /// Fault the whole range in for read with [`range_fault_owning_lock`]
    /// under `policy`, writing the output into `pfns`. Checks that every
    /// entry came back valid.
    pub fn fault_in(&self, policy: Policy, pfns: &mut [u64]) -> Result<FaultIn, Error> {
        let h = self.mm.handle(&self.task);
        let env = Env::new(&h, &h).with_signals(&self.task);
        run(&env, self.start, self.len, policy, pfns, &self.notifier)
    }

    /// [`Self::fault_in`] through a [`TimedMm`], which also measures the
    /// walker's own time.
    pub fn fault_in_timed(&self, policy: Policy, pfns: &mut [u64]) -> Result<FaultIn, Error> {
        let t = TimedMm::new(self.mm.handle(&self.task));
        let env = Env::new(&t, &t).with_signals(&self.task);
        let mut out = run(&env, self.start, self.len, policy, pfns, &self.notifier)?;
        out.walk = Duration::from_nanos(t.walk_ns.get());
        out.timed_walks = t.walks.get();
        let mut v = t.passes.take();
        v.sort_unstable();
        out.walk_median = Duration::from_nanos(v.get(v.len() / 2).copied().unwrap_or(0));
        Ok(out)
    }

    /// Close the userfaultfd and join the handler; returns the pages it
    /// copied.
    pub fn finish(mut self) -> Result<u64, String> {
        self.ctx.close();
        match self.handler.take().map(JoinHandle::join) {
            Some(Ok(Ok(n))) => Ok(n),
            Some(Ok(Err(e))) => Err(format!("handler: {e}")),
            _ => Err("handler panicked".into()),
        }
    }
}

impl Drop for UffdRange {
    fn drop(&mut self) {
        self.notifier.remove();
        if let Some(h) = self.handler.take() {
            self.ctx.close();
            let _ = h.join();
        }
    }
}

fn run<L, H>(
    env: &Env<'_, L, H, Task>,
    start: u64,
    len: u64,
    policy: Policy,
    pfns: &mut [u64],
    notifier: &backend_sim::notifier::IntervalSub,
) -> Result<FaultIn, Error>
where
    L: MmapLock,
    H: FaultHandler<L>,
{
    let mut stats = Stats::default();
    let t0 = Instant::now();
    let mut range = Range::new(start, start + len, pfns)
        .with_default_flags(PfnFlags::REQ_FAULT.bits())
        .with_notifier(notifier);
    range_fault_owning_lock(env, &mut range, &Options::with_policy(policy), &mut stats)?;
    let elapsed = t0.elapsed();
    if notifier.read_retry(range.notifier_seq) || !range.pfns.iter().all(|&p| HmmPfn(p).is_valid())
    {
        return Err(Error::Busy);
    }
    Ok(FaultIn {
        elapsed,
        walk: Duration::ZERO,
        timed_walks: 0,
        walk_median: Duration::ZERO,
        stats,
    })
}

/// The handler thread: answer every page fault with a one-page copy.
fn serve(ctx: &UffdCtx) -> Result<u64, Errno> {
    let task = Task::new();
    let page = vec![0x5au8; PAGE_SIZE as usize];
    let mut copied = 0;
    while let Some(msg) = ctx.read(&task) {
        if let UffdMsg::Pagefault { addr, .. } = msg {
            match ctx.copy(&task, addr, &page, CopyMode::default()) {
                Ok(_) => copied += 1,
                // Resolved meanwhile (a duplicate message): just wake.
                Err(Errno::EEXIST) => ctx.wake(addr, PAGE_SIZE),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(copied)
}

/// The simulator's mm, instrumented: sums the time from each walk pass's
/// first VMA lookup to the end of its page-table iteration (the walker's
/// work, including the per-leaf callbacks that fill the PFN array).
pub struct TimedMm<'a> {
    inner: MmHandle<'a>,
    walk_ns: Cell<u64>,
    walks: Cell<u64>,
    passes: RefCell<Vec<u64>>,
}

impl<'a> TimedMm<'a> {
    /// Wrap `inner`.
    pub fn new(inner: MmHandle<'a>) -> Self {
        TimedMm {
            inner,
            walk_ns: Cell::new(0),
            walks: Cell::new(0),
            passes: RefCell::new(Vec::new()),
        }
    }
}

/// The read guard of a [`TimedMm`].
pub struct TimedGuard<'g> {
    g: MmReadGuard<'g>,
    owner: &'g TimedMm<'g>,
    t0: Cell<Option<Instant>>,
}

impl MmView for TimedGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        if self.t0.get().is_none() {
            self.t0.set(Some(Instant::now()));
        }
        self.g.find_vma(addr)
    }

    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        self.g.walk_leaves(vma, start, end, f);
        self.stop_timer();
    }

    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        self.g.walk_batched(vma, start, end, sink);
        self.stop_timer();
    }
}

impl TimedGuard<'_> {
    /// End the pass started by the first `find_vma` and record its time.
    fn stop_timer(&self) {
        if let Some(t) = self.t0.take() {
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.owner.walk_ns.set(self.owner.walk_ns.get() + ns);
            self.owner.walks.set(self.owner.walks.get() + 1);
            self.owner.passes.borrow_mut().push(ns);
        }
    }
}

impl<'a> MmapLock for TimedMm<'a> {
    type Guard<'g>
        = TimedGuard<'g>
    where
        Self: 'g;

    fn read(&self) -> TimedGuard<'_> {
        TimedGuard {
            g: self.inner.mm.read(self.inner.task),
            owner: self,
            t0: Cell::new(None),
        }
    }

    fn read_killable(&self) -> Result<TimedGuard<'_>, Error> {
        Ok(TimedGuard {
            g: self.inner.mm.read_killable(self.inner.task)?,
            owner: self,
            t0: Cell::new(None),
        })
    }
}

impl<'h> FaultHandler<TimedMm<'h>> for TimedMm<'h> {
    fn fault<'a>(
        &self,
        guard: TimedGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<TimedGuard<'a>>
    where
        TimedMm<'h>: 'a,
    {
        let TimedGuard { g, owner, t0 } = guard;
        let wrap = |g| TimedGuard {
            g,
            owner,
            t0: Cell::new(t0.get()),
        };
        match handle_mm_fault(g, addr, flags) {
            FaultOutcome::Done(g) => FaultOutcome::Done(wrap(g)),
            FaultOutcome::Error(g, e) => FaultOutcome::Error(wrap(g), e),
            FaultOutcome::WouldBlock(g) => FaultOutcome::WouldBlock(wrap(g)),
            FaultOutcome::Retry => FaultOutcome::Retry,
            FaultOutcome::Completed => FaultOutcome::Completed,
        }
    }

    fn migration_wait(&self, guard: &TimedGuard<'_>, addr: u64) {
        guard.g.mm().migration_entry_wait(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_and_restart_fault_every_page_through_the_handler() {
        let m = Machine::new();
        for policy in [Policy::Resume, Policy::Restart] {
            let r = UffdRange::new(&m, 64 * PAGE_SIZE).expect("setup");
            let mut pfns = vec![0u64; r.pages()];
            let out = r.fault_in(policy, &mut pfns).expect("fault-in");
            assert_eq!(out.stats.lock_drops, 64, "{policy:?}");
            match policy {
                Policy::Resume => assert_eq!((out.stats.resumes, out.stats.restarts), (64, 0)),
                Policy::Restart => assert_eq!(out.stats.restarts, 64),
            }
            // The data the handler supplied is what the process reads.
            let mut b = [0u8; 8];
            r.mm.read_bytes(&r.task, r.start + 5 * PAGE_SIZE, &mut b)
                .expect("read");
            assert_eq!(b, [0x5a; 8]);
            assert_eq!(r.finish().expect("handler"), 64);
        }
    }

    #[test]
    fn timed_run_counts_one_walk_per_pass() {
        let m = Machine::new();
        let r = UffdRange::new(&m, 32 * PAGE_SIZE).expect("setup");
        let mut pfns = vec![0u64; r.pages()];
        let out = r
            .fault_in_timed(Policy::Resume, &mut pfns)
            .expect("fault-in");
        assert_eq!(out.timed_walks, out.stats.walks);
        assert!(pfns.iter().all(|&p| HmmPfn(p).is_valid()));
        r.finish().expect("handler");
    }
}
