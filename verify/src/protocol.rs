//! The coherence protocol as a concurrent model, driven by the real
//! `hmm_core::range_fault_owning_lock`.
//!
//! One VMA of [`PAGES`] pages, registered with a userfaultfd-like handler.
//! Threads:
//!
//! * the **faulter** mirrors the range into a device table: it calls
//!   `range_fault_owning_lock` (resume policy), then takes the driver lock,
//!   checks `read_retry` and programs the device. Its fault handler queues a
//!   request for a missing page, drops the mmap lock and sleeps until the
//!   userfault handler wakes it;
//! * the **userfault handler** serves requests under the mmap read lock
//!   (installing the page, or only making it ready for a retried fault),
//!   and can push a page in the background first, as post-copy migration
//!   does;
//! * the **invalidator** migrates a page (new PFN) inside an interval
//!   invalidation whose callback clears the device table under the driver
//!   lock, without the mmap lock, as page migration does;
//! * **munmap** takes the mmap write lock, invalidates, clears the page
//!   table and removes the VMA.
//!
//! Invariants, checked with `assert!`:
//!
//! * **coherence**: when the faulter programs the device under the driver
//!   lock, every programmed entry equals the current CPU mapping, and when
//!   everything is over no device entry is stale;
//! * **termination**: no page is faulted more than `2 * (1 + events)`
//!   times and the caller retries at most once per invalidation event, so
//!   once invalidations stop the faulter finishes.
//!
//! [`Bug`] seeds a broken protocol to show that the invariants catch it.

use std::cell::Cell;
use std::ops::ControlFlow;

use hmm_core::{
    range_fault_owning_lock, Env, Error, FaultFlags, FaultHandler, FaultOutcome, HmmPfn,
    IntervalNotifier, Leaf, LeafSink, MmView, MmapLock, Options, PfnFlags, Policy, Present,
    PteFormat, Range, Stats, VmFaultError, VmFlags, Vma, PAGE_SIZE,
};

use crate::sync::{
    thread, Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering, RwLock, RwLockReadGuard,
};

/// Pages in the model VMA.
pub const PAGES: usize = 2;
/// Start of the model VMA.
pub const BASE: u64 = 0x1000_0000;
/// End of the model VMA.
pub const END: u64 = BASE + PAGES as u64 * PAGE_SIZE;

/// PTE bit: writable.
const PTE_WRITE: u64 = 1 << 62;

/// How the userfault handler resolves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `UFFDIO_COPY`: install the page; any later fault or walk sees it.
    Install,
    /// Make the page ready; only a fault carrying `TRIED` maps it (the
    /// shape of a fault that drops the lock to wait for I/O and expects to
    /// be retried once).
    OnTried,
}

/// A seeded protocol bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The caller programs the device without `read_retry`.
    SkipReadRetry,
    /// After a lock drop the driver resumes although the sequence moved,
    /// adopting the new sequence: the notifier's `check_retry` never
    /// reports a move and silently rebases the range on the current
    /// sequence, which `read_retry` then validates against.
    ResumeAdoptingSequence,
    /// The driver forgets `TRIED` on the retried fault.
    ForgetTried,
}

/// One model configuration.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// How faults are resolved.
    pub resolution: Resolution,
    /// Migrations of page 0 by the invalidator thread (0: no thread).
    pub invalidations: u32,
    /// Whether a munmap thread removes the VMA.
    pub munmap: bool,
    /// Whether the userfault handler pushes page 0 before serving requests.
    pub push: bool,
    /// Resume or restart after a lock drop.
    pub policy: Policy,
    /// A seeded bug.
    pub bug: Option<Bug>,
    /// Report an all-empty page table as one multi-page hole (an empty PMD
    /// slot) rather than one hole per page.
    pub pmd_hole: bool,
}

impl Scenario {
    /// Userfault resolution by install, nothing else going on.
    pub const fn new() -> Self {
        Scenario {
            resolution: Resolution::Install,
            invalidations: 0,
            munmap: false,
            push: false,
            policy: Policy::Resume,
            bug: None,
            pmd_hole: false,
        }
    }

    fn events(&self) -> u32 {
        self.invalidations + u32::from(self.munmap)
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

/// How the faulter finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device was programmed.
    Programmed,
    /// The range faulted with `-EFAULT` (the VMA went away).
    Unmapped,
}

/// What one run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// How the faulter finished.
    pub outcome: Outcome,
    /// Calls the caller had to repeat (`-EBUSY` or a failed `read_retry`).
    pub caller_retries: u32,
    /// The driver's counters, summed over the caller's calls.
    pub stats: Stats,
}

#[derive(Debug, Default)]
struct Uffd {
    queue: Vec<usize>,
    /// Per page: how many times the handler has answered.
    answered: [u64; PAGES],
    /// Per page: ready for a retried fault ([`Resolution::OnTried`]).
    ready: [bool; PAGES],
    stop: bool,
}

#[derive(Debug, Default)]
struct NotifierState {
    active: bool,
    subscriptions_seq: u64,
}

/// The shared state of the model.
#[derive(Debug)]
pub struct Proto {
    /// The mmap lock, guarding "the VMA exists".
    mmap: RwLock<bool>,
    /// The page table: 0 is none, otherwise PFN | `PTE_WRITE`.
    ptes: [AtomicU64; PAGES],
    notifier: Mutex<NotifierState>,
    notifier_cv: Condvar,
    /// `mni->invalidate_seq`, set under the driver lock.
    mni_seq: AtomicU64,
    /// The device page table (HMM PFN words), guarded by the driver lock.
    device: Mutex<[u64; PAGES]>,
    uffd: Mutex<Uffd>,
    uffd_cv: Condvar,
    wake_cv: Condvar,
    resolution: Resolution,
    pmd_hole: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn index(addr: u64) -> usize {
    ((addr - BASE) / PAGE_SIZE) as usize
}

impl Proto {
    fn new(resolution: Resolution, pmd_hole: bool) -> Self {
        Proto {
            mmap: RwLock::new(true),
            ptes: [AtomicU64::new(0), AtomicU64::new(0)],
            notifier: Mutex::new(NotifierState::default()),
            notifier_cv: Condvar::new(),
            mni_seq: AtomicU64::new(0),
            device: Mutex::new([0; PAGES]),
            uffd: Mutex::new(Uffd::default()),
            uffd_cv: Condvar::new(),
            wake_cv: Condvar::new(),
            resolution,
            pmd_hole,
        }
    }

    /// `mmu_notifier_invalidate_range_start` with the interval's callback:
    /// under the driver lock, set the interval sequence and clear the
    /// device table.
    fn invalidate_start(&self) {
        let cur = {
            let mut n = lock(&self.notifier);
            n.active = true;
            n.subscriptions_seq += 1;
            n.subscriptions_seq
        };
        let mut dev = lock(&self.device);
        self.mni_seq.store(cur, Ordering::SeqCst);
        *dev = [0; PAGES];
    }

    /// `mmu_notifier_invalidate_range_end`: wake `read_begin` waiters.
    fn invalidate_end(&self) {
        let mut n = lock(&self.notifier);
        n.active = false;
        n.subscriptions_seq += 1;
        self.notifier_cv.notify_all();
    }

    /// The invalidator: migrate page 0 to a new PFN if it is mapped.
    fn migrate(&self, k: u64) {
        self.invalidate_start();
        let old = self.ptes[0].load(Ordering::SeqCst);
        if old != 0 {
            let new = (0x200 + k) | (old & PTE_WRITE);
            let _ = self.ptes[0].compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst);
        }
        self.invalidate_end();
    }

    /// munmap of the whole VMA.
    fn munmap(&self) {
        let mut vma = self.mmap.write().unwrap_or_else(|e| e.into_inner());
        self.invalidate_start();
        for p in &self.ptes {
            p.store(0, Ordering::SeqCst);
        }
        *vma = false;
        self.invalidate_end();
    }

    /// `UFFDIO_COPY` of page `i` (under the mmap read lock; no-op if the
    /// VMA is gone or the page is present).
    fn copy(&self, i: usize) {
        let vma = self.mmap.read().unwrap_or_else(|e| e.into_inner());
        if *vma {
            let pte = (0x100 + i as u64) | PTE_WRITE;
            let _ = self.ptes[i].compare_exchange(0, pte, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// The userfault handler thread.
    fn serve(&self, push: bool) {
        if push {
            self.copy(0);
        }
        loop {
            let i = {
                let mut u = lock(&self.uffd);
                loop {
                    if let Some(i) = u.queue.pop() {
                        break i;
                    }
                    if u.stop {
                        return;
                    }
                    u = self.uffd_cv.wait(u).unwrap_or_else(|e| e.into_inner());
                }
            };
            if self.resolution == Resolution::Install {
                self.copy(i);
            }
            let mut u = lock(&self.uffd);
            u.ready[i] = true;
            u.answered[i] += 1;
            self.wake_cv.notify_all();
        }
    }

    fn stop_uffd(&self) {
        lock(&self.uffd).stop = true;
        self.uffd_cv.notify_all();
    }

    /// The final coherence check: no device entry is stale.
    fn check_device(&self, dev: &[u64; PAGES]) {
        for (i, &e) in dev.iter().enumerate() {
            let e = HmmPfn(e);
            if !e.is_valid() {
                continue;
            }
            let pte = self.ptes[i].load(Ordering::SeqCst);
            assert!(
                pte != 0
                    && e.pfn() == pte & !PTE_WRITE
                    && (!e.is_writable() || pte & PTE_WRITE != 0),
                "stale device entry: page {i} device {:#x} cpu {pte:#x}",
                e.bits()
            );
        }
    }
}

/// A read guard of the model's mmap lock.
#[derive(Debug)]
pub struct ProtoGuard<'a> {
    proto: &'a Proto,
    vma: RwLockReadGuard<'a, bool>,
}

impl MmapLock for Proto {
    type Guard<'a> = ProtoGuard<'a>;

    fn read(&self) -> ProtoGuard<'_> {
        ProtoGuard {
            proto: self,
            vma: self.mmap.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn read_killable(&self) -> Result<ProtoGuard<'_>, Error> {
        Ok(self.read())
    }
}

impl MmView for ProtoGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        (*self.vma && addr < END).then(|| Vma::new(BASE, END, VmFlags::READ | VmFlags::WRITE, 0))
    }

    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        // Lockless PTE reads, as hmm does. An all-empty table is one empty
        // PMD slot: a single multi-page hole.
        let ptes: [u64; PAGES] =
            core::array::from_fn(|i| self.proto.ptes[i].load(Ordering::SeqCst));
        if self.proto.pmd_hole && ptes.iter().all(|&p| p == 0) {
            let _ = f(start, end, Leaf::Hole);
            return;
        }
        let mut a = start;
        while a < end {
            if f(a, a + PAGE_SIZE, ProtoPtes.leaf(ptes[index(a)])).is_break() {
                return;
            }
            a += PAGE_SIZE;
        }
    }

    /// The same lockless reads, handed to the walker as one batch of PTE
    /// words (the walker's batched path).
    fn walk_batched<S: LeafSink>(&self, _vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        let ptes: [u64; PAGES] =
            core::array::from_fn(|i| self.proto.ptes[i].load(Ordering::SeqCst));
        if self.proto.pmd_hole && ptes.iter().all(|&p| p == 0) {
            let _ = sink.leaf(start, end, Leaf::Hole);
            return;
        }
        let _ = sink.ptes(start, &ptes[index(start)..index(end)], &ProtoPtes);
    }
}

/// The model's PTE words (0 none, otherwise PFN | `PTE_WRITE`) as a
/// [`PteFormat`].
struct ProtoPtes;

impl PteFormat for ProtoPtes {
    type Pte = u64;

    fn read(&self, pte: &u64) -> u64 {
        *pte
    }

    fn plain(&self, pte: u64) -> Option<u64> {
        if pte == 0 {
            return Some(0);
        }
        let write = if pte & PTE_WRITE != 0 {
            PfnFlags::WRITE.bits()
        } else {
            0
        };
        Some((pte & !PTE_WRITE) | PfnFlags::VALID.bits() | write)
    }

    fn leaf(&self, pte: u64) -> Leaf {
        if pte == 0 {
            Leaf::Hole
        } else {
            Leaf::Present(Present {
                pfn: pte & !PTE_WRITE,
                write: pte & PTE_WRITE != 0,
                ..Present::default()
            })
        }
    }
}

/// The faulter's fault handler (it runs on the faulter thread only).
struct Handler {
    attempts: Cell<[u32; PAGES]>,
    max_attempts: u32,
    forget_tried: bool,
}

impl FaultHandler<Proto> for Handler {
    fn fault<'a>(
        &self,
        guard: ProtoGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<ProtoGuard<'a>>
    where
        Proto: 'a,
    {
        let flags = if self.forget_tried {
            flags - FaultFlags::TRIED
        } else {
            flags
        };
        let i = index(addr);
        let mut att = self.attempts.get();
        att[i] += 1;
        self.attempts.set(att);
        assert!(
            att[i] <= self.max_attempts,
            "no progress: page {i} faulted {} times",
            att[i]
        );
        let p = guard.proto;
        if !*guard.vma {
            return FaultOutcome::Error(guard, VmFaultError::Sigsegv);
        }
        let pte = p.ptes[i].load(Ordering::SeqCst);
        if pte != 0 {
            return FaultOutcome::Done(guard);
        }
        if !flags.contains(FaultFlags::ALLOW_RETRY) {
            return FaultOutcome::Error(guard, VmFaultError::Sigbus);
        }
        if flags.contains(FaultFlags::RETRY_NOWAIT) {
            return FaultOutcome::WouldBlock(guard);
        }
        let mut u = lock(&p.uffd);
        if p.resolution == Resolution::OnTried && flags.contains(FaultFlags::TRIED) && u.ready[i] {
            drop(u);
            let pte = (0x100 + i as u64) | PTE_WRITE;
            let _ = p.ptes[i].compare_exchange(0, pte, Ordering::SeqCst, Ordering::SeqCst);
            return FaultOutcome::Done(guard);
        }
        // handle_userfault: queue the message, drop the mmap lock, sleep.
        let seen = u.answered[i];
        u.queue.push(i);
        p.uffd_cv.notify_all();
        drop(guard);
        while u.answered[i] == seen {
            u = p.wake_cv.wait(u).unwrap_or_else(|e| e.into_inner());
        }
        FaultOutcome::Retry
    }

    fn migration_wait(&self, _guard: &ProtoGuard<'_>, _addr: u64) {}
}

/// The notifier as the faulter sees it, possibly with a seeded bug.
struct Notifier<'p> {
    proto: &'p Proto,
    adopt: bool,
    adopted: Cell<Option<u64>>,
}

impl IntervalNotifier for Notifier<'_> {
    fn read_begin(&self) -> u64 {
        self.adopted.set(None);
        let mut n = lock(&self.proto.notifier);
        while n.active {
            n = self
                .proto
                .notifier_cv
                .wait(n)
                .unwrap_or_else(|e| e.into_inner());
        }
        self.proto.mni_seq.load(Ordering::SeqCst)
    }

    fn check_retry(&self, seq: u64) -> bool {
        let cur = self.proto.mni_seq.load(Ordering::SeqCst);
        if self.adopt {
            if cur != self.adopted.get().unwrap_or(seq) {
                self.adopted.set(Some(cur));
            }
            return false;
        }
        cur != seq
    }

    fn read_retry(&self, seq: u64) -> bool {
        let cur = self.proto.mni_seq.load(Ordering::SeqCst);
        cur != self.adopted.get().unwrap_or(seq)
    }
}

/// Sets the userfault handler's stop flag when the faulter ends, even by a
/// panic, so the handler thread always finishes.
struct StopOnDrop<'p>(&'p Proto);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop_uffd();
    }
}

fn faulter(p: &Proto, s: &Scenario) -> Report {
    let _stop = StopOnDrop(p);
    let events = s.events();
    let handler = Handler {
        attempts: Cell::new([0; PAGES]),
        max_attempts: 2 * (1 + events),
        forget_tried: s.bug == Some(Bug::ForgetTried),
    };
    let notifier = Notifier {
        proto: p,
        adopt: s.bug == Some(Bug::ResumeAdoptingSequence),
        adopted: Cell::new(None),
    };
    let env = Env::new(p, &handler);
    let opts = Options::with_policy(s.policy);
    let req = (PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits();
    let mut stats = Stats::default();
    let mut caller_retries = 0;
    let outcome = loop {
        assert!(
            caller_retries <= events,
            "no progress: {caller_retries} caller retries for {events} invalidation events"
        );
        let mut pfns = [0u64; PAGES];
        let mut range = Range::new(BASE, END, &mut pfns)
            .with_default_flags(req)
            .with_notifier(&notifier);
        match range_fault_owning_lock(&env, &mut range, &opts, &mut stats) {
            Ok(()) => {}
            Err(Error::Busy) => {
                caller_retries += 1;
                continue;
            }
            Err(Error::Fault) if s.munmap => break Outcome::Unmapped,
            Err(e) => panic!("unexpected error {e}"),
        }
        let seq = range.notifier_seq;
        let mut dev = lock(&p.device);
        if s.bug != Some(Bug::SkipReadRetry) && notifier.read_retry(seq) {
            drop(dev);
            caller_retries += 1;
            continue;
        }
        for (d, &e) in dev.iter_mut().zip(pfns.iter()) {
            assert!(
                HmmPfn(e).is_writable(),
                "requested entry not writable: {e:#x}"
            );
            *d = e;
        }
        p.check_device(&dev);
        break Outcome::Programmed;
    };
    // Resume restarts only for an invalidation; restart also after each drop.
    let allowed = u64::from(events)
        + if s.policy == Policy::Restart {
            stats.lock_drops
        } else {
            0
        };
    assert!(
        stats.restarts <= allowed,
        "no progress: {} restarts for {events} invalidation events",
        stats.restarts
    );
    Report {
        outcome,
        caller_retries,
        stats,
    }
}

/// Run one scenario: spawn the threads, join them, check the invariants.
/// Panics (with "stale device entry" or "no progress") if one is broken.
pub fn run(s: Scenario) -> Report {
    let p = Arc::new(Proto::new(s.resolution, s.pmd_hole));
    let mut others = Vec::new();
    {
        let p = p.clone();
        others.push(thread::spawn(move || p.serve(s.push)));
    }
    if s.invalidations > 0 {
        let p = p.clone();
        others.push(thread::spawn(move || {
            for k in 0..s.invalidations {
                p.migrate(u64::from(k));
            }
        }));
    }
    if s.munmap {
        let p = p.clone();
        others.push(thread::spawn(move || p.munmap()));
    }
    let report = faulter(&p, &s);
    for t in others {
        t.join().expect("model thread panicked");
    }
    p.check_device(&lock(&p.device));
    report
}
