// SPDX-License-Identifier: GPL-2.0

//! hmm-core's traits over the real mm of one mirrored process.
//!
//! The types take the names of the upstream Rust `mm` abstractions of newer
//! kernels (`rust/kernel/mm.rs`, `mm/virt.rs`), which would replace them and
//! the C wrappers of `shim_mm.c` under them:
//!
//! * [`MmWithUser`]: the mirrored process's `mm_struct`, held with
//!   `mmget_not_zero` for as long as the value lives. It is the host of a
//!   range fault: [`MmapLock`] (`mmap_read_lock` /
//!   `mmap_read_lock_killable`; the [`MmapReadGuard`] unlocks on drop),
//!   [`FaultHandler`], [`Signals`] and [`Clock`];
//! * [`VmaRef`]: a VMA found by [`MmapReadGuard::vma_lookup`], borrowed from
//!   the guard;
//! * [`MirrorNotifier`]: the mirror's MMU interval notifier, which a range
//!   fault carries in its `Range`.
//!
//! What each trait maps to:
//!
//! * [`MmapLock`]: `mmap_read_lock` / `mmap_read_lock_killable`;
//! * [`MmView`] on the guard: `find_vma` (range, `vm_flags`, hugetlb order)
//!   and the page-table reader `hmm_rs_walk` of the C shim, which reports
//!   leaves in batches and holds no page-table lock when it returns;
//! * [`FaultHandler`]: `vma_lookup` + `handle_mm_fault` with hmm-core's fault
//!   flags passed through (they have Linux's values); a result that released
//!   the mmap lock consumes the guard without unlocking again;
//! * [`IntervalNotifier`]: `mmu_interval_read_begin` / `check_retry` /
//!   `read_retry` on the mirror's notifier;
//! * [`Signals`] (`fatal_signal_pending`) and [`Clock`]
//!   (`ktime_get_coarse_ns`: tick resolution is plenty for budgets of a
//!   second, and it costs no clocksource read).

use core::cell::Cell;
use core::marker::PhantomData;
use core::ops::ControlFlow;
use core::ptr;

use crate::ffi::{self, MmStruct, RawLeaf, RawMirror, RawTable, RawVma, VmAreaStruct};
use crate::hmm_core::{
    Clock, Error, FaultFlags, FaultHandler, FaultOutcome, IntervalNotifier, Leaf, LeafSink, MmView,
    MmapLock, Present, PteFormat, Signals, VmFaultError, VmFlags, Vma, PAGE_SIZE,
};

/// Leaves per call into the C page-table reader `hmm_rs_walk` (hugetlb
/// VMAs, and `has_pmd_thp`). Each call re-descends from the PGD once and
/// then walks tables linearly.
const LEAF_BATCH: usize = 32;

/// The address space a mirror mirrors, pinned (upstream's `MmWithUser`: an
/// `mm_struct` whose `mm_users` count we hold).
///
/// # Invariants
///
/// `mm` is the mm of a live mirror's notifier with an `mm_users` reference
/// taken by [`MmWithUser::get`] and released on drop.
pub(crate) struct MmWithUser {
    mm: *mut MmStruct,
}

impl MmWithUser {
    /// Pin the address space mirrored by `mirror` (`mmget_not_zero`).
    /// `None` if the process is exiting.
    ///
    /// # Safety
    ///
    /// `mirror` must stay valid for the lifetime of the returned value.
    pub(crate) unsafe fn get(mirror: *mut RawMirror) -> Option<Self> {
        // SAFETY: the caller guarantees `mirror` is valid; its notifier's mm
        // is grabbed (mmgrab) for as long as the notifier is registered, so
        // the pointer is valid and mmget_not_zero may be called on it.
        let mm = unsafe { ffi::hmm_rs_mirror_mm(mirror) };
        // SAFETY: `mm` is valid (see above).
        if unsafe { ffi::hmm_rs_mmget_not_zero(mm) } {
            // INVARIANT: the mm_users reference was just taken.
            Some(MmWithUser { mm })
        } else {
            None
        }
    }
}

impl MmWithUser {
    /// The pinned `mm_struct`.
    pub(crate) fn raw(&self) -> *mut MmStruct {
        self.mm
    }
}

impl Drop for MmWithUser {
    fn drop(&mut self) {
        // SAFETY: `get` took this mm_users reference.
        unsafe { ffi::hmm_rs_mmput(self.mm) };
    }
}

/// A held mmap read lock (upstream's `MmapReadGuard`); dropping it unlocks.
///
/// Not `Send`: the lock is released by the task that took it.
pub(crate) struct MmapReadGuard<'a> {
    mm: *mut MmStruct,
    /// The last VMA `find_vma` returned, with its bounds: the page-table
    /// reader gets it instead of looking the VMA up again. Valid while this
    /// guard holds the lock.
    last_vma: Cell<(*mut VmAreaStruct, u64, u64)>,
    _mm: PhantomData<&'a MmWithUser>,
}

impl<'a> MmapReadGuard<'a> {
    fn new(mm: *mut MmStruct) -> Self {
        MmapReadGuard {
            mm,
            last_vma: Cell::new((ptr::null_mut(), 0, 0)),
            _mm: PhantomData,
        }
    }

    /// `vma_lookup`: the VMA that contains `addr`, if any, borrowed from
    /// this guard.
    pub(crate) fn vma_lookup(&self, addr: u64) -> Option<VmaRef<'_>> {
        let mut v = RawVma::default();
        // SAFETY: the read lock of the pinned `mm` is held by `self`; `v` is
        // a valid out-pointer.
        let found = unsafe { ffi::hmm_rs_find_vma(self.mm, addr, &mut v) };
        (found && v.start <= addr).then_some(VmaRef {
            raw: v,
            _guard: PhantomData,
        })
    }

    /// The fault handler released the lock: forget the guard without
    /// unlocking a second time.
    fn released(self) {
        core::mem::forget(self);
    }
}

/// A VMA found under a read guard (upstream's `VmaRef`): its bounds and
/// flags, and a `vm_area_struct` pointer that is valid while the guard it
/// borrows holds the lock.
pub(crate) struct VmaRef<'a> {
    raw: RawVma,
    _guard: PhantomData<&'a MmapReadGuard<'a>>,
}

impl core::ops::Deref for VmaRef<'_> {
    type Target = RawVma;
    fn deref(&self) -> &RawVma {
        &self.raw
    }
}

impl Drop for MmapReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the read lock of `mm` (taken by
        // `MmWithUser::read*`), and `mm` is pinned by the MmWithUser it
        // borrows.
        unsafe { ffi::hmm_rs_mmap_read_unlock(self.mm) };
    }
}

impl MmapLock for MmWithUser {
    type Guard<'a> = MmapReadGuard<'a>;

    fn read(&self) -> MmapReadGuard<'_> {
        // SAFETY: `self.mm` is pinned (type invariant); the non-killable
        // lock always succeeds.
        unsafe { ffi::hmm_rs_mmap_read_lock(self.mm, false) };
        MmapReadGuard::new(self.mm)
    }

    fn read_killable(&self) -> Result<MmapReadGuard<'_>, Error> {
        // SAFETY: `self.mm` is pinned (type invariant).
        if unsafe { ffi::hmm_rs_mmap_read_lock(self.mm, true) } != 0 {
            return Err(Error::Intr);
        }
        Ok(MmapReadGuard::new(self.mm))
    }

    /// No limit: Linux's `hmm_range_fault` takes any range, and a part
    /// beyond the last VMA is a hole (`HMM_PFN_ERROR` for a snapshot,
    /// `-EFAULT` where a fault is required), whatever the paging depth.
    fn address_limit(&self) -> u64 {
        u64::MAX
    }
}

fn to_leaf(l: &RawLeaf) -> Leaf {
    let write = l.flags & ffi::LEAF_WRITE != 0;
    // Orders are 0, 9 or 18 (or a hugetlb order below 32): always fit.
    let order = (l.order & 0x1f) as u8;
    match l.kind {
        ffi::LEAF_NONE => Leaf::Hole,
        ffi::LEAF_PRESENT => Leaf::Present(Present {
            pfn: l.pfn,
            order,
            write,
            protnone: l.flags & ffi::LEAF_PROTNONE != 0,
            special: l.flags & ffi::LEAF_SPECIAL != 0,
            zero: l.flags & ffi::LEAF_ZERO != 0,
        }),
        ffi::LEAF_SWAP => Leaf::Swap,
        ffi::LEAF_DEVICE_PRIVATE => Leaf::DevicePrivate {
            owner: l.owner,
            pfn: l.pfn,
            write,
            order,
        },
        ffi::LEAF_DEVICE_EXCLUSIVE => Leaf::DeviceExclusive,
        ffi::LEAF_MIGRATION => Leaf::Migration,
        ffi::LEAF_HWPOISON => Leaf::HwPoison,
        _ => Leaf::Bad,
    }
}

impl MmapReadGuard<'_> {
    /// The `vm_area_struct` of `vma`, which came from this guard's
    /// `find_vma` (its lifetime says so): the cached pointer if it is the
    /// last one found, else null (the shim looks it up again).
    fn raw_vma(&self, vma: &Vma<'_>) -> *mut VmAreaStruct {
        let (cached, cs, ce) = self.last_vma.get();
        if cs == vma.start() && ce == vma.end() {
            cached
        } else {
            ptr::null_mut()
        }
    }
}

/// The PTE words of one `hmm_rs_walk_table` call (`shim.h`). A plain
/// present PTE's word is already its output, `VALID | [WRITE] | pfn` (the
/// shim's `HMM_RS_PTE_PLAIN` and `HMM_RS_PTE_WRITE` are `HMM_PFN_VALID` and
/// `HMM_PFN_WRITE`), and a none PTE's is 0; any other PTE carries its leaf
/// kind, flags, device-private owner index and PFN, classified by the shim
/// while the table was mapped. Decoding is bit arithmetic, no call.
struct PteWords {
    /// The device-private owners the words name, by index.
    owners: [u64; ffi::PTE_OWNERS],
    /// How many of `owners` are set.
    nowners: usize,
}

impl PteFormat for PteWords {
    type Pte = u64;

    #[inline(always)]
    fn read(&self, pte: &u64) -> u64 {
        *pte
    }

    #[inline(always)]
    fn plain(&self, pte: u64) -> Option<u64> {
        (pte & ffi::PTE_PLAIN != 0 || pte == 0).then_some(pte)
    }

    fn leaf(&self, pte: u64) -> Leaf {
        let pfn = pte & ffi::PTE_PFN_MASK;
        if pte & ffi::PTE_PLAIN != 0 {
            return Leaf::Present(Present {
                pfn,
                order: 0,
                write: pte & ffi::PTE_WRITE != 0,
                ..Present::default()
            });
        }
        // Four bits each: always fit.
        let kind = ((pte >> ffi::PTE_KIND_SHIFT) & 0xf) as u32;
        let flags = ((pte >> ffi::PTE_FLAGS_SHIFT) & 0xf) as u32;
        let owner = if kind == ffi::LEAF_DEVICE_PRIVATE {
            // Three bits: below PTE_OWNERS; an index the shim did not set
            // cannot name an owner.
            let i = ((pte >> ffi::PTE_OWNER_SHIFT) & 0x7) as usize;
            match self.owners.get(i) {
                Some(&o) if i < self.nowners => o,
                _ => return Leaf::Bad,
            }
        } else {
            0
        };
        to_leaf(&RawLeaf {
            start: 0,
            end: 0,
            pfn,
            owner,
            kind,
            flags,
            order: 0,
            pad: 0,
        })
    }
}

impl MmView for MmapReadGuard<'_> {
    /// One shim call per PTE table: `hmm_rs_walk_table` copies the words of
    /// the table that maps `cur` for `[cur, min(end, its PMD's end))` under
    /// RCU (no PTE lock, as `mm/hmm.c`), classifying in C every word that
    /// is not a plain present PTE; the walker then decodes them with no
    /// further call. Entries that are not PTE tables (none, huge or bad
    /// PMDs and PUDs) come back as one leaf each. Hugetlb VMAs go through
    /// `walk_leaves`, whose entries are huge pages anyway.
    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        if vma.is_hugetlb() {
            return self.walk_leaves(vma, start, end, |a, b, leaf| sink.leaf(a, b, leaf));
        }
        let raw_vma = self.raw_vma(vma);
        let mut words = [0u64; ffi::PTE_TABLE];
        let mut t = RawTable::default();
        let mut cur = start;
        while cur < end {
            // SAFETY: the read lock of the pinned `mm` is held by `self`, so
            // `raw_vma` (null, or found under this same lock) is valid;
            // `words` has room for PTE_TABLE words and `t` is a valid
            // out-pointer. The shim holds no lock when it returns.
            let r = unsafe {
                ffi::hmm_rs_walk_table(
                    self.mm,
                    raw_vma,
                    cur,
                    end,
                    words.as_mut_ptr(),
                    ffi::PTE_TABLE as u32,
                    &mut t,
                )
            };
            let n = t.nwords as usize;
            let next = t.next;
            // Exactly one of: `n` words from `cur` on, or one leaf
            // [cur, next). Anything else ([cur, end) not inside one VMA,
            // which cannot happen under the lock) is a corrupt entry.
            let words_end = (n as u64)
                .checked_mul(PAGE_SIZE)
                .and_then(|b| cur.checked_add(b));
            let flow = if r == 0
                && n > 0
                && n <= ffi::PTE_TABLE
                && t.nleaves == 0
                && words_end == Some(next)
                && next <= end
            {
                let format = PteWords {
                    owners: t.owners,
                    nowners: (t.nowners as usize).min(ffi::PTE_OWNERS),
                };
                sink.ptes(cur, &words[..n], &format)
            } else if r == 0
                && n == 0
                && t.nleaves == 1
                && t.leaf.start == cur
                && t.leaf.end == next
                && cur < next
                && next <= end
            {
                sink.leaf(cur, next, to_leaf(&t.leaf))
            } else {
                let _ = sink.leaf(cur, end, Leaf::Bad);
                return;
            };
            if flow.is_break() {
                return;
            }
            cur = next;
        }
    }

    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        let mut v = RawVma::default();
        // SAFETY: the read lock of the pinned `mm` is held by `self`; `v` is
        // a valid out-pointer.
        if !unsafe { ffi::hmm_rs_find_vma(self.mm, addr, &mut v) } {
            return None;
        }
        self.last_vma.set((v.vma, v.start, v.end));
        Some(Vma::new(
            v.start,
            v.end,
            VmFlags::from_bits_truncate(v.flags),
            v.hugetlb_order,
        ))
    }

    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let raw_vma = self.raw_vma(vma);
        let mut buf = [RawLeaf::default(); LEAF_BATCH];
        let mut cur = start;
        while cur < end {
            let mut next = cur;
            // SAFETY: the read lock of the pinned `mm` is held by `self`, so
            // `raw_vma` (null, or found under this same lock) is valid; `buf`
            // has room for LEAF_BATCH leaves and `next` is a valid
            // out-pointer. The shim holds no lock when it returns.
            let n = unsafe {
                ffi::hmm_rs_walk(
                    self.mm,
                    raw_vma,
                    cur,
                    end,
                    buf.as_mut_ptr(),
                    LEAF_BATCH as u32,
                    &mut next,
                )
            };
            let n = match usize::try_from(n) {
                Ok(n) if n > 0 && n <= LEAF_BATCH && next > cur => n,
                _ => {
                    // [cur, end) is not inside one VMA, which cannot happen
                    // under the lock: report it as a corrupt entry.
                    let _ = f(cur, end, Leaf::Bad);
                    return;
                }
            };
            for l in &buf[..n] {
                if f(l.start, l.end, to_leaf(l)).is_break() {
                    return;
                }
            }
            cur = next;
        }
    }
}

impl FaultHandler<MmWithUser> for MmWithUser {
    fn fault<'a>(
        &self,
        guard: MmapReadGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<MmapReadGuard<'a>>
    where
        MmWithUser: 'a,
    {
        let mut err = 0u32;
        // SAFETY: `guard` holds the read lock of the pinned `mm`; `err` is a
        // valid out-pointer. On RETRY/COMPLETED the kernel released the lock.
        let r = unsafe { ffi::hmm_rs_fault(guard.mm, addr, flags.bits(), &mut err) };
        match r {
            ffi::FAULT_DONE => FaultOutcome::Done(guard),
            ffi::FAULT_WOULDBLOCK => FaultOutcome::WouldBlock(guard),
            ffi::FAULT_RETRY => {
                guard.released();
                FaultOutcome::Retry
            }
            ffi::FAULT_COMPLETED => {
                guard.released();
                FaultOutcome::Completed
            }
            // FAULT_ERROR (and anything unexpected): the lock is held.
            _ => {
                let e = match err {
                    ffi::FAULT_ERR_OOM => VmFaultError::Oom,
                    ffi::FAULT_ERR_HWPOISON => VmFaultError::HwPoison,
                    ffi::FAULT_ERR_SIGSEGV => VmFaultError::Sigsegv,
                    _ => VmFaultError::Sigbus,
                };
                FaultOutcome::Error(guard, e)
            }
        }
    }

    fn migration_wait(&self, guard: &MmapReadGuard<'_>, addr: u64) {
        // SAFETY: `guard` holds the read lock of the pinned `mm`; the shim
        // returns with it still held.
        unsafe { ffi::hmm_rs_migration_wait(guard.mm, addr) };
    }
}

/// The read side of a mirror's MMU interval notifier.
///
/// # Invariants
///
/// `mirror` is a live `struct hmm_rs_mirror` for the lifetime of this value
/// (the file that owns it is open: we are inside one of its ioctls).
pub(crate) struct MirrorNotifier {
    mirror: *mut RawMirror,
}

impl MirrorNotifier {
    /// The notifier of `mirror`.
    ///
    /// # Safety
    ///
    /// `mirror` must stay valid for the lifetime of the returned value.
    pub(crate) unsafe fn new(mirror: *mut RawMirror) -> Self {
        // INVARIANT: the caller guarantees it.
        MirrorNotifier { mirror }
    }
}

impl IntervalNotifier for MirrorNotifier {
    fn read_begin(&self) -> u64 {
        // SAFETY: `self.mirror` is live (type invariant).
        unsafe { ffi::hmm_rs_read_begin(self.mirror) }
    }

    fn check_retry(&self, seq: u64) -> bool {
        // SAFETY: `self.mirror` is live (type invariant).
        unsafe { ffi::hmm_rs_check_retry(self.mirror, seq) }
    }

    fn read_retry(&self, seq: u64) -> bool {
        // SAFETY: `self.mirror` is live (type invariant).
        unsafe { ffi::hmm_rs_read_retry(self.mirror, seq) }
    }
}

impl Signals for MmWithUser {
    fn fatal_signal_pending(&self) -> bool {
        // SAFETY: no preconditions; reads `current`'s signal state.
        unsafe { ffi::hmm_rs_fatal_signal_pending() }
    }
}

impl Clock for MmWithUser {
    fn now_ns(&self) -> u64 {
        // SAFETY: no preconditions.
        unsafe { ffi::hmm_rs_ktime_get_coarse_ns() }
    }
}
