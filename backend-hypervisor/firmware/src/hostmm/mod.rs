//! The host memory manager: the firmware's own host address space, over
//! which hmm-core runs.
//!
//! It is a small process address space in the Linux mould:
//!
//! * VMAs in a fixed, sorted table behind the *mmap lock* (a `spin` RwLock);
//!   [`HostGuard`], its read guard, is hmm-core's [`MmView`];
//! * host page tables ([`pgtable`]) whose entries are updated under a
//!   separate page-table lock and read locklessly;
//! * MMU interval notifiers ([`notifier`]) called before any present entry
//!   changes or goes away;
//! * a fault handler ([`fault`]) with demand-zero anonymous memory (the
//!   shared zero page for reads, copy-on-write on the first write), hugetlb
//!   2 MiB and 1 GiB pages, and userfaultfd-registered memory served by a
//!   pager on the other CPU after the fault dropped the mmap lock ([`uffd`]);
//! * host-side operations that invalidate: `MADV_DONTNEED`-style zap, page
//!   migration (with migration entries that faults wait on) and writes
//!   through the host mapping.

pub mod fault;
pub mod notifier;
pub mod pgtable;
pub mod uffd;

use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};

use hmm_core::{Error, Leaf, MmView, MmapLock, VmFlags, Vma};

use crate::frames::{self, FrameSize, FRAMES};
use notifier::{MmSeq, Notifiers};
use pgtable::{Entry, HostPageTable, HostTablePool};
use uffd::Uffd;

/// What backs a VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory: demand-zero.
    Anon,
    /// hugetlbfs memory with pages of this order (9: 2 MiB, 18: 1 GiB).
    Hugetlb(u8),
    /// Anonymous memory registered with userfaultfd (MISSING mode): missing
    /// pages come from the pager.
    Userfault,
    /// The firmware image, mapped read-only and populated when created
    /// (like a VMM's ROM image); a fault on a missing page is SIGBUS.
    Image,
}

/// One host VMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// Backing.
    pub kind: VmaKind,
}

const MAX_VMAS: usize = 16;

/// The VMA table, sorted by address.
pub struct VmaTable {
    vmas: [Option<HostVma>; MAX_VMAS],
}

impl VmaTable {
    /// The VMA containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&HostVma> {
        self.vmas
            .iter()
            .flatten()
            .find(|v| v.start <= addr && addr < v.end)
    }
}

/// Host-side counters.
#[derive(Default)]
pub struct HostCounters {
    /// Host page faults handled.
    pub faults: AtomicU64,
    /// Zero-page mappings made by read faults.
    pub zero_maps: AtomicU64,
    /// Demand-zero pages allocated.
    pub anon_pages: AtomicU64,
    /// Copy-on-write breaks of the zero page.
    pub cow: AtomicU64,
    /// Hugetlb pages faulted in.
    pub huge_pages: AtomicU64,
    /// Faults that dropped the mmap lock (userfaultfd waits).
    pub lock_drops: AtomicU64,
    /// No-wait faults that would have blocked.
    pub would_block: AtomicU64,
    /// Migration-entry waits.
    pub migration_waits: AtomicU64,
    /// Pages migrated.
    pub migrations: AtomicU64,
    /// Pages zapped.
    pub zapped: AtomicU64,
    /// Leaves write-protected in place.
    pub wrprotected: AtomicU64,
    /// Write faults that made a write-protected leaf writable again in
    /// place (same frame).
    pub wp_reuses: AtomicU64,
}

/// The host address space.
pub struct HostMm {
    lock: spin::RwLock<VmaTable>,
    ptl: spin::Mutex<()>,
    pt: HostPageTable,
    /// Interval notifiers.
    pub notifiers: Notifiers,
    /// userfaultfd context.
    pub uffd: Uffd,
    /// Counters.
    pub counters: HostCounters,
}

/// A held mmap read lock: hmm-core's view of the address space.
pub struct HostGuard<'a> {
    mm: &'a HostMm,
    vmas: spin::RwLockReadGuard<'a, VmaTable>,
}

impl HostGuard<'_> {
    /// The VMA containing `addr`.
    pub fn vma(&self, addr: u64) -> Option<HostVma> {
        self.vmas.find(addr).copied()
    }
}

fn to_vma<'g>(v: &HostVma) -> Vma<'g> {
    let order = match v.kind {
        VmaKind::Hugetlb(o) => o,
        _ => 0,
    };
    Vma::new(v.start, v.end, v.flags, order)
}

impl MmView for HostGuard<'_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.vmas
            .vmas
            .iter()
            .flatten()
            .find(|v| v.end > addr)
            .map(to_vma)
    }

    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let _ = self.mm.pt.walk(start, end, &mut f);
    }
}

impl MmapLock for HostMm {
    type Guard<'a> = HostGuard<'a>;

    fn read(&self) -> HostGuard<'_> {
        HostGuard {
            mm: self,
            vmas: self.lock.read(),
        }
    }

    fn read_killable(&self) -> Result<HostGuard<'_>, Error> {
        // Firmware contexts have no signals.
        Ok(self.read())
    }
}

/// Why a host operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// No VMA slot, overlapping VMA, or bad range.
    Inval,
    /// No memory.
    NoMem,
    /// Nothing (suitable) is mapped there.
    NotMapped,
}

impl HostMm {
    /// An empty address space over `tables` whose notifiers use `mm_seq`.
    pub const fn new(tables: &'static HostTablePool, mm_seq: &'static MmSeq) -> Self {
        HostMm {
            lock: spin::RwLock::new(VmaTable {
                vmas: [None; MAX_VMAS],
            }),
            ptl: spin::Mutex::new(()),
            pt: HostPageTable::new(tables),
            notifiers: Notifiers::new(mm_seq),
            uffd: Uffd::new(),
            counters: HostCounters {
                faults: AtomicU64::new(0),
                zero_maps: AtomicU64::new(0),
                anon_pages: AtomicU64::new(0),
                cow: AtomicU64::new(0),
                huge_pages: AtomicU64::new(0),
                lock_drops: AtomicU64::new(0),
                would_block: AtomicU64::new(0),
                migration_waits: AtomicU64::new(0),
                migrations: AtomicU64::new(0),
                zapped: AtomicU64::new(0),
                wrprotected: AtomicU64::new(0),
                wp_reuses: AtomicU64::new(0),
            },
        }
    }

    /// Allocate the page-table root.
    pub fn init(&self) -> Result<(), HostError> {
        if self.pt.init() {
            Ok(())
        } else {
            Err(HostError::NoMem)
        }
    }

    /// `mmap(MAP_FIXED_NOREPLACE)`: add a VMA (nothing is populated).
    pub fn mmap(
        &self,
        start: u64,
        end: u64,
        flags: VmFlags,
        kind: VmaKind,
    ) -> Result<(), HostError> {
        let align = match kind {
            VmaKind::Hugetlb(o) => 4096u64 << o,
            _ => 4096,
        };
        if !start.is_multiple_of(align)
            || !end.is_multiple_of(align)
            || start >= end
            || end > hmm_core::TASK_SIZE
        {
            return Err(HostError::Inval);
        }
        let mut t = self.lock.write();
        if t.vmas
            .iter()
            .flatten()
            .any(|v| v.start < end && start < v.end)
        {
            return Err(HostError::Inval);
        }
        let slot = t
            .vmas
            .iter_mut()
            .find(|v| v.is_none())
            .ok_or(HostError::Inval)?;
        *slot = Some(HostVma {
            start,
            end,
            flags,
            kind,
        });
        t.vmas
            .sort_unstable_by_key(|v| v.map_or(u64::MAX, |v| v.start));
        Ok(())
    }

    /// Map the image pages `[pa, pa + len)` at `hva` read-only
    /// (`MAP_POPULATE` of the image VMA created with [`mmap`](Self::mmap)).
    pub fn populate_image(&self, hva: u64, pa: u64, len: u64) -> Result<(), HostError> {
        let _guard = self.read();
        let _ptl = self.ptl.lock();
        for off in (0..len).step_by(4096) {
            let slot = self.pt.slot(hva + off, 3, true).ok_or(HostError::NoMem)?;
            slot.store(pgtable::leaf(3, pa + off, false), Ordering::Release);
        }
        Ok(())
    }

    /// Frame size of a leaf at `level`.
    fn frame_size(level: u8) -> FrameSize {
        match level {
            1 => FrameSize::Huge1G,
            2 => FrameSize::Huge2M,
            _ => FrameSize::Base,
        }
    }

    /// `MADV_DONTNEED`: drop the pages of `[start, end)` (whole huge pages
    /// for hugetlb). The notifiers run first, so no second-stage mapping of
    /// the dropped frames survives; frames are then poisoned and freed in
    /// batches, as Linux's `zap_page_range` frees its TLB gather batches
    /// before `invalidate_range_end`. Returns the number of leaves zapped.
    pub fn zap(&self, start: u64, end: u64) -> u64 {
        let guard = self.read();
        self.notifiers.start(start, end);
        let mut batch = [(0u64, FrameSize::Base); 32];
        let mut n = 0;
        let mut zapped = 0u64;
        let mut a = start;
        while a < end {
            let (level, e) = self.pt.lookup(a);
            let size = pgtable::level_size(level);
            if let Entry::Leaf { pa, .. } = e {
                let _ptl = self.ptl.lock();
                if let Some(slot) = self.pt.slot(a, level, false) {
                    slot.store(0, Ordering::Release);
                    zapped += 1;
                    if frames::is_pool_frame(pa) {
                        batch[n] = (pa, Self::frame_size(level));
                        n += 1;
                    }
                }
            }
            if n == batch.len() {
                Self::release(&batch[..n]);
                n = 0;
            }
            a = (a & !(size - 1)) + size;
        }
        Self::release(&batch[..n]);
        self.notifiers.end();
        drop(guard);
        self.counters.zapped.fetch_add(zapped, Ordering::Relaxed);
        zapped
    }

    /// Write-protect the leaves of `[start, end)` in place, as
    /// userfaultfd write-protect or soft-dirty tracking do: the notifiers
    /// run first (so second-stage mappings of the range go), then every
    /// writable leaf of a pool frame becomes read-only with the same frame.
    /// The next write fault makes it writable again in place
    /// ([`fault`](mod@fault)), without an invalidation. Returns the leaves
    /// protected.
    pub fn wrprotect(&self, start: u64, end: u64) -> u64 {
        let guard = self.read();
        self.notifiers.start(start, end);
        let mut n = 0u64;
        let mut a = start;
        while a < end {
            let (level, e) = self.pt.lookup(a);
            let size = pgtable::level_size(level);
            if let Entry::Leaf { pa, write: true } = e {
                if frames::is_pool_frame(pa) {
                    let _ptl = self.ptl.lock();
                    if let Some(slot) = self.pt.slot(a, level, false) {
                        if slot.load(Ordering::Acquire) == pgtable::leaf(level, pa, true) {
                            slot.store(pgtable::leaf(level, pa, false), Ordering::Release);
                            n += 1;
                        }
                    }
                }
            }
            a = (a & !(size - 1)) + size;
        }
        self.notifiers.end();
        drop(guard);
        self.counters.wrprotected.fetch_add(n, Ordering::Relaxed);
        n
    }

    /// Poison and free frames no mapping refers to any more.
    fn release(frames_: &[(u64, FrameSize)]) {
        for &(pa, size) in frames_ {
            // A stale mapping would show the poison.
            frames::fill(pa, size.bytes(), POISON);
            FRAMES.free(pa, size);
        }
    }

    /// Migrate the 4 KiB page at `addr` to a new frame (`migrate_pages`).
    /// See [`migrate_with`](Self::migrate_with).
    pub fn migrate(&self, addr: u64) -> Result<(u64, u64), HostError> {
        self.migrate_with(addr, || {})
    }

    /// Migrate the 4 KiB page at `addr` as Linux does: under the notifiers
    /// the entry is replaced by a migration entry (`try_to_migrate`); after
    /// the invalidation ends the page is copied while the migration entry
    /// stays visible (a fault on it waits in `migration_wait`), then the
    /// entry is replaced by the new frame (`remove_migration_ptes`, no
    /// notifier needed: the old entry was not present). `hold` runs while
    /// the migration entry is installed. The old frame is poisoned and
    /// freed. Returns (old, new) frame addresses.
    pub fn migrate_with<F: FnOnce()>(&self, addr: u64, hold: F) -> Result<(u64, u64), HostError> {
        let guard = self.read();
        let page = addr & !0xfff;
        let (level, e) = self.pt.lookup(page);
        let (Entry::Leaf { pa: old, write }, 3) = (e, level) else {
            return Err(HostError::NotMapped);
        };
        if !frames::is_pool_frame(old) {
            return Err(HostError::NotMapped);
        }
        let new = FRAMES.alloc(FrameSize::Base).ok_or(HostError::NoMem)?;
        self.notifiers.start(page, page + 4096);
        let installed = {
            let _ptl = self.ptl.lock();
            match self.pt.slot(page, 3, false) {
                Some(slot) if slot.load(Ordering::Acquire) == pgtable::leaf(3, old, write) => {
                    slot.store(pgtable::migration(old), Ordering::Release);
                    true
                }
                _ => false,
            }
        };
        self.notifiers.end();
        if !installed {
            drop(guard);
            FRAMES.free(new, FrameSize::Base);
            return Err(HostError::NotMapped);
        }
        hold();
        frames::copy(new, old, 4096);
        {
            let _ptl = self.ptl.lock();
            if let Some(slot) = self.pt.slot(page, 3, false) {
                slot.store(pgtable::leaf(3, new, write), Ordering::Release);
            }
        }
        crate::sysreg::sev();
        drop(guard);
        Self::release(&[(old, FrameSize::Base)]);
        self.counters.migrations.fetch_add(1, Ordering::Relaxed);
        Ok((old, new))
    }

    /// Write `value` at `addr` through the host mapping (a host thread
    /// storing into guest memory). The page must be mapped writable.
    pub fn write_u64(&self, addr: u64, value: u64) -> Result<(), HostError> {
        let _guard = self.read();
        let (level, e) = self.pt.lookup(addr);
        match e {
            Entry::Leaf { pa, write: true } => {
                let off = addr & (pgtable::level_size(level) - 1);
                frames::write(pa + off, value);
                Ok(())
            }
            _ => Err(HostError::NotMapped),
        }
    }

    /// Read the word at `addr` through the host mapping.
    pub fn read_u64(&self, addr: u64) -> Result<u64, HostError> {
        let _guard = self.read();
        let (level, e) = self.pt.lookup(addr);
        match e {
            Entry::Leaf { pa, .. } => {
                Ok(frames::read(pa + (addr & (pgtable::level_size(level) - 1))))
            }
            _ => Err(HostError::NotMapped),
        }
    }

    /// The host frame mapping `addr` (for reports).
    pub fn frame_of(&self, addr: u64) -> Option<u64> {
        let _guard = self.read();
        let (level, e) = self.pt.lookup(addr);
        match e {
            Entry::Leaf { pa, .. } => Some(pa + (addr & (pgtable::level_size(level) - 1))),
            _ => None,
        }
    }

    /// `UFFDIO_COPY` of the page at `addr` from the pager's source at the
    /// current generation. Takes the mmap read lock itself. Returns false if
    /// the page was already present (`-EEXIST`) or `addr` is not in a
    /// userfault VMA.
    pub fn uffd_copy(&self, addr: u64) -> bool {
        let guard = self.read();
        let Some(vma) = guard.vma(addr) else {
            return false;
        };
        if vma.kind != VmaKind::Userfault {
            return false;
        }
        let page = addr & !0xfff;
        let Some(pa) = FRAMES.alloc(FrameSize::Base) else {
            return false;
        };
        let generation = self.uffd.generation();
        for w in 0..512u64 {
            let off = page - vma.start + w * 8;
            frames::write(pa + w * 8, uffd::source_word(off, generation));
        }
        let installed = {
            let _ptl = self.ptl.lock();
            match self.pt.slot(page, 3, true) {
                Some(slot) if slot.load(Ordering::Acquire) == 0 => {
                    let write = vma.flags.contains(VmFlags::WRITE);
                    slot.store(pgtable::leaf(3, pa, write), Ordering::Release);
                    true
                }
                _ => false,
            }
        };
        drop(guard);
        if !installed {
            FRAMES.free(pa, FrameSize::Base);
        }
        installed
    }

    /// Host page-table pages in use.
    pub fn table_pages(&self) -> usize {
        self.pt.tables()
    }
}

/// What freed frames are filled with.
pub const POISON: u64 = 0xdead_beef_dead_beef;
