//! The address space (`struct mm_struct`) and its mmap lock.
//!
//! [`Mm`] owns the VMA tree, the page tables, the page-table lock, the
//! notifier subscriptions and the migration wait queue. Its mmap lock is a
//! real reader-writer lock shared by threads: [`Mm::read`] (uninterruptible),
//! [`Mm::read_killable`] (ends with `-EINTR` when the task gets a fatal
//! signal) and [`Mm::write`]. It is phase-fair: new readers wait behind a
//! waiting writer, so a stream of readers cannot starve munmap, and the
//! readers that waited through a writer enter before the next writer, so a
//! stream of writers cannot starve faults either.
//!
//! [`MmHandle`] is an mm seen from one task; it implements
//! [`hmm_core::MmapLock`] (its guard, [`MmReadGuard`], implements
//! [`hmm_core::MmView`]), [`hmm_core::FaultHandler`] (see
//! [`fault`](crate::fault)) and [`hmm_core::Signals`].
//!
//! Lock order: mmap lock, then a driver's update lock (inside notifier
//! callbacks), then the page-table lock. The page-table lock is never held
//! across a notifier callback or a sleep.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hmm_core::{Error, Leaf, LeafSink, MmView, MmapLock, Signals, Vma};

use crate::machine::Machine;
use crate::notifier::Subscriptions;
use crate::pagetable::Tables;
use crate::task::{Task, WaitEnd, WaitQueue};
use crate::vma::VmaTree;

#[derive(Debug, Default)]
struct LockState {
    readers: u32,
    writer: bool,
    writers_waiting: u32,
    readers_waiting: u32,
    /// Readers that may still enter ahead of waiting writers: set when a
    /// writer unlocks to the number of readers then waiting, so that writers
    /// and readers alternate (phase-fair) and neither side starves.
    reader_turn: u32,
}

impl LockState {
    fn reader_may_enter(&self) -> bool {
        !self.writer && (self.writers_waiting == 0 || self.reader_turn > 0)
    }
    fn enter_read(&mut self) {
        self.readers += 1;
        self.reader_turn = self.reader_turn.saturating_sub(1);
    }
    fn writer_may_enter(&self) -> bool {
        !self.writer && self.readers == 0 && self.reader_turn == 0
    }
}

static NEXT_MM: AtomicU64 = AtomicU64::new(1);

/// Event counters of one mm.
#[derive(Debug, Default)]
pub struct MmStats {
    /// Calls to `handle_mm_fault`.
    pub faults: AtomicU64,
    /// Faults that went to userfaultfd and dropped the lock.
    pub uffd_waits: AtomicU64,
    /// Copy-on-write breaks.
    pub cow: AtomicU64,
    /// Migration-entry waits.
    pub migration_waits: AtomicU64,
    /// Device-private pages migrated back by CPU faults.
    pub migrate_to_ram: AtomicU64,
}

/// A simulated process address space.
pub struct Mm {
    id: u64,
    pub(crate) machine: Arc<Machine>,
    lock: Arc<WaitQueue<LockState>>,
    pub(crate) vmas: RwLock<VmaTree>,
    pub(crate) tables: Tables,
    pub(crate) root: u32,
    ptl: Mutex<()>,
    pub(crate) notifiers: Arc<Subscriptions>,
    pub(crate) migration_wq: Arc<WaitQueue<u64>>,
    /// Event counters.
    pub stats: MmStats,
}

impl std::fmt::Debug for Mm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mm").field("id", &self.id).finish()
    }
}

/// A held mmap read lock, on behalf of a task. The HMM walk's view.
pub struct MmReadGuard<'a> {
    pub(crate) mm: &'a Mm,
    pub(crate) task: &'a Task,
}

impl std::fmt::Debug for MmReadGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmReadGuard")
            .field("mm", &self.mm.id)
            .finish()
    }
}

impl Drop for MmReadGuard<'_> {
    fn drop(&mut self) {
        self.mm.read_unlock();
    }
}

/// A held mmap write lock.
#[derive(Debug)]
pub struct MmWriteGuard<'a> {
    mm: &'a Mm,
}

impl Drop for MmWriteGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.mm.lock.lock();
        g.writer = false;
        g.reader_turn = g.readers_waiting;
        drop(g);
        self.mm.lock.notify_all();
    }
}

impl Mm {
    /// A new, empty address space on `machine`.
    pub fn new(machine: &Arc<Machine>) -> Arc<Mm> {
        let tables = Tables::new();
        let root = tables.alloc();
        Arc::new(Mm {
            id: NEXT_MM.fetch_add(1, Ordering::Relaxed),
            machine: machine.clone(),
            lock: Arc::new(WaitQueue::new(LockState::default())),
            vmas: RwLock::new(VmaTree::default()),
            tables,
            root,
            ptl: Mutex::new(()),
            notifiers: Subscriptions::new(),
            migration_wq: Arc::new(WaitQueue::new(0)),
            stats: MmStats::default(),
        })
    }

    /// The mm's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The machine it runs on.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The notifier subscriptions (`mm->notifier_subscriptions`).
    pub fn notifiers(&self) -> &Arc<Subscriptions> {
        &self.notifiers
    }

    /// This mm as seen by `task`.
    pub fn handle<'a>(&'a self, task: &'a Task) -> MmHandle<'a> {
        MmHandle { mm: self, task }
    }

    /// `mmap_read_lock`.
    pub fn read<'a>(&'a self, task: &'a Task) -> MmReadGuard<'a> {
        let mut g = self.lock.lock();
        if !g.reader_may_enter() {
            g.readers_waiting += 1;
            g = self.lock.wait(g, |s| s.reader_may_enter());
            g.readers_waiting -= 1;
        }
        g.enter_read();
        MmReadGuard { mm: self, task }
    }

    /// `mmap_read_lock_killable`: like `down_read_killable`, it only fails
    /// if it has to sleep and a fatal signal is (or becomes) pending.
    pub fn read_killable<'a>(&'a self, task: &'a Task) -> Result<MmReadGuard<'a>, Error> {
        task.wait_point();
        let mut g = self.lock.lock();
        if g.reader_may_enter() {
            g.enter_read();
            return Ok(MmReadGuard { mm: self, task });
        }
        g.readers_waiting += 1;
        let (mut g, r) = self
            .lock
            .wait_killable(Some(task), g, None, |s| s.reader_may_enter());
        g.readers_waiting -= 1;
        match r {
            Ok(()) => {
                g.enter_read();
                Ok(MmReadGuard { mm: self, task })
            }
            Err(WaitEnd::Killed | WaitEnd::TimedOut) => {
                // Give up our turn, if we had one, to the writers.
                g.reader_turn = g.reader_turn.min(g.readers_waiting);
                drop(g);
                self.lock.notify_all();
                Err(Error::Intr)
            }
        }
    }

    /// A read lock that does not queue behind waiting writers (only behind
    /// an active one), for paths that Linux runs without the mmap lock at
    /// all (rmap-driven migration completion) but that the simulator
    /// serializes with munmap.
    pub(crate) fn read_nowait_writers<'a>(&'a self, task: &'a Task) -> MmReadGuard<'a> {
        let g = self.lock.lock();
        let mut g = self.lock.wait(g, |s| !s.writer);
        g.enter_read();
        MmReadGuard { mm: self, task }
    }

    fn read_unlock(&self) {
        let mut g = self.lock.lock();
        g.readers -= 1;
        let wake = g.readers == 0;
        drop(g);
        if wake {
            self.lock.notify_all();
        }
    }

    /// `mmap_write_lock`.
    pub fn write(&self) -> MmWriteGuard<'_> {
        let mut g = self.lock.lock();
        g.writers_waiting += 1;
        let mut g = self.lock.wait(g, |s| s.writer_may_enter());
        g.writers_waiting -= 1;
        g.writer = true;
        MmWriteGuard { mm: self }
    }

    /// The page-table lock (one per mm: `mm->page_table_lock`).
    pub(crate) fn ptl(&self) -> MutexGuard<'_, ()> {
        self.ptl.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn vmas(&self) -> RwLockReadGuard<'_, VmaTree> {
        self.vmas.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn vmas_mut(&self) -> RwLockWriteGuard<'_, VmaTree> {
        self.vmas.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake tasks waiting for migration entries to go away.
    pub(crate) fn migration_done(&self) {
        *self.migration_wq.lock() += 1;
        self.migration_wq.notify_all();
    }
}

impl Drop for Mm {
    fn drop(&mut self) {
        self.exit_mmap();
    }
}

impl<'a> MmReadGuard<'a> {
    /// The mm.
    pub fn mm(&self) -> &'a Mm {
        self.mm
    }
    /// The task holding the lock.
    pub fn task(&self) -> &'a Task {
        self.task
    }
}

impl MmView for MmReadGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.mm.vmas().find(addr).map(|v| v.as_core())
    }

    #[inline]
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        self.mm
            .tables
            .walk_leaves(self.mm.root, start, end, &self.mm.machine.frames, &mut f);
    }

    #[inline]
    fn walk_batched<S: LeafSink>(&self, _vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        self.mm
            .tables
            .walk_batched(self.mm.root, start, end, &self.mm.machine.frames, sink);
    }
}

/// An mm as seen by one task: the lock, fault handler and signal source
/// hmm-core's entry points take.
#[derive(Debug, Clone, Copy)]
pub struct MmHandle<'a> {
    /// The mm.
    pub mm: &'a Mm,
    /// The task.
    pub task: &'a Task,
}

impl MmapLock for MmHandle<'_> {
    type Guard<'g>
        = MmReadGuard<'g>
    where
        Self: 'g;

    fn read(&self) -> MmReadGuard<'_> {
        self.mm.read(self.task)
    }

    fn read_killable(&self) -> Result<MmReadGuard<'_>, Error> {
        self.mm.read_killable(self.task)
    }

    /// No limit, as in Linux: `hmm_range_fault` takes any range, and the
    /// part beyond the last VMA is a hole (`HMM_PFN_ERROR` for a snapshot,
    /// `-EFAULT` where a fault is required). The kernel backend answers the
    /// same way.
    fn address_limit(&self) -> u64 {
        u64::MAX
    }
}

impl Signals for MmHandle<'_> {
    fn fatal_signal_pending(&self) -> bool {
        self.task.fatal_signal_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn writer_excludes_readers_and_waits_for_them() {
        let m = Machine::new();
        let mm = Mm::new(&m);
        let t = Task::new();
        let r = mm.read(&t);
        let (tx, rx) = mpsc::channel();
        let h = {
            let mm = mm.clone();
            std::thread::spawn(move || {
                let _w = mm.write();
                tx.send(()).unwrap();
            })
        };
        // The writer cannot get in while the reader holds the lock.
        assert!(rx.try_recv().is_err());
        drop(r);
        rx.recv().unwrap();
        h.join().unwrap();
    }

    #[test]
    fn killable_read_fails_with_eintr_when_killed_behind_a_writer() {
        let m = Machine::new();
        let mm = Mm::new(&m);
        let w = mm.write();
        let t = Arc::new(Task::new());
        let (tx, rx) = mpsc::channel();
        let h = {
            let (mm, t) = (mm.clone(), t.clone());
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                mm.read_killable(&t).map(|_| ()).unwrap_err()
            })
        };
        rx.recv().unwrap();
        t.kill();
        assert_eq!(h.join().unwrap(), Error::Intr);
        drop(w);
    }
}
