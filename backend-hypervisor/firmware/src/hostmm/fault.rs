//! The host fault handler (`handle_mm_fault`) that hmm-core calls.
//!
//! | VMA | read fault on none | write fault |
//! |---|---|---|
//! | anonymous | map the shared zero page read-only | new zeroed page (breaking COW of the zero page: notifiers first); a write-protected page of its own is made writable in place (no notifier, as Linux reuses an exclusive page) |
//! | hugetlb | new zeroed huge page, writable if the VMA is | same; a write-protected huge page is made writable in place |
//! | userfault | queue a message, drop the lock, wait, `Retry` | same |
//!
//! Userfault faults honour the flags like `handle_userfault()`: without
//! `ALLOW_RETRY` they fail with SIGBUS; with `RETRY_NOWAIT` they return
//! `WouldBlock` holding the lock; otherwise they drop the lock.

use core::sync::atomic::Ordering;

use hmm_core::{FaultFlags, FaultHandler, FaultOutcome, VmFaultError, VmFlags};

use super::pgtable::{self, Entry};
use super::{HostGuard, HostMm, VmaKind};
use crate::frames::{self, FrameSize, FRAMES};
use crate::sysreg::wfe;

impl HostMm {
    /// A write fault on a read-only leaf of a frame the address space owns
    /// alone (write-protected by [`HostMm::wrprotect`]): make it writable
    /// in place. Gaining permission needs no invalidation (Linux's
    /// `wp_page_reuse`); the guest's second stage widens its own leaf on
    /// its next write fault.
    fn wp_reuse(&self, addr: u64, level: u8, pa: u64) {
        let _ptl = self.ptl.lock();
        if let Some(slot) = self.pt.slot(addr, level, false) {
            if slot.load(Ordering::Acquire) == pgtable::leaf(level, pa, false) {
                slot.store(pgtable::leaf(level, pa, true), Ordering::Release);
                self.counters.wp_reuses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn fault_anon(&self, addr: u64, write: bool) -> Result<(), VmFaultError> {
        let page = addr & !0xfff;
        let (level, cur) = self.pt.lookup(page);
        match (cur, write) {
            (Entry::Leaf { .. }, false) => return Ok(()),
            (Entry::Leaf { write: true, .. }, true) => return Ok(()),
            (Entry::Leaf { pa, write: false }, true)
                if level == 3 && pa != frames::zero_page_pa() && frames::is_pool_frame(pa) =>
            {
                self.wp_reuse(page, 3, pa);
                return Ok(());
            }
            _ => {}
        }
        if level != 3 && !matches!(cur, Entry::None) {
            return Err(VmFaultError::Sigbus);
        }
        if !write {
            let _ptl = self.ptl.lock();
            let slot = self.pt.slot(page, 3, true).ok_or(VmFaultError::Oom)?;
            if slot.load(Ordering::Acquire) == 0 {
                slot.store(
                    pgtable::leaf(3, frames::zero_page_pa(), false),
                    Ordering::Release,
                );
                self.counters.zero_maps.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(());
        }
        let pa = FRAMES.alloc(FrameSize::Base).ok_or(VmFaultError::Oom)?;
        let cow = matches!(cur, Entry::Leaf { pa, .. } if pa == frames::zero_page_pa());
        if cow {
            // The zero page is replaced: whoever mirrors it must drop it.
            self.notifiers.start(page, page + 4096);
        }
        let installed = {
            let _ptl = self.ptl.lock();
            match self.pt.slot(page, 3, true) {
                Some(slot) => {
                    let now = pgtable::decode(3, slot.load(Ordering::Acquire));
                    let expected = matches!(now, Entry::None)
                        || matches!(now, Entry::Leaf { pa, .. } if pa == frames::zero_page_pa());
                    if expected {
                        slot.store(pgtable::leaf(3, pa, true), Ordering::Release);
                    }
                    expected
                }
                None => false,
            }
        };
        if cow {
            self.notifiers.end();
            self.counters.cow.fetch_add(1, Ordering::Relaxed);
        }
        if installed {
            self.counters.anon_pages.fetch_add(1, Ordering::Relaxed);
        } else {
            FRAMES.free(pa, FrameSize::Base);
        }
        Ok(())
    }

    fn fault_huge(
        &self,
        addr: u64,
        order: u8,
        writable: bool,
        write: bool,
    ) -> Result<(), VmFaultError> {
        let (level, size) = match order {
            9 => (2u8, FrameSize::Huge2M),
            18 => (1u8, FrameSize::Huge1G),
            _ => return Err(VmFaultError::Sigbus),
        };
        let base = addr & !(size.bytes() - 1);
        match self.pt.lookup(base) {
            (l, Entry::Leaf { pa, write: false }) if l == level && writable && write => {
                self.wp_reuse(base, level, pa);
                return Ok(());
            }
            (_, Entry::Leaf { .. }) => return Ok(()),
            _ => {}
        }
        let pa = FRAMES.alloc(size).ok_or(VmFaultError::Oom)?;
        let installed = {
            let _ptl = self.ptl.lock();
            match self.pt.slot(base, level, true) {
                Some(slot) if slot.load(Ordering::Acquire) == 0 => {
                    slot.store(pgtable::leaf(level, pa, writable), Ordering::Release);
                    true
                }
                _ => false,
            }
        };
        if installed {
            self.counters.huge_pages.fetch_add(1, Ordering::Relaxed);
        } else {
            FRAMES.free(pa, size);
        }
        Ok(())
    }
}

impl FaultHandler<HostMm> for HostMm {
    fn fault<'a>(
        &self,
        guard: HostGuard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<HostGuard<'a>>
    where
        HostMm: 'a,
    {
        self.counters.faults.fetch_add(1, Ordering::Relaxed);
        let write = flags.contains(FaultFlags::WRITE);
        let Some(vma) = guard.vma(addr) else {
            return FaultOutcome::Error(guard, VmFaultError::Sigsegv);
        };
        if write && !vma.flags.contains(VmFlags::WRITE) {
            return FaultOutcome::Error(guard, VmFaultError::Sigsegv);
        }
        let r = match vma.kind {
            VmaKind::Anon => self.fault_anon(addr, write),
            VmaKind::Image => match self.pt.lookup(addr) {
                (_, Entry::Leaf { .. }) => Ok(()),
                _ => Err(VmFaultError::Sigbus),
            },
            VmaKind::Hugetlb(order) => {
                self.fault_huge(addr, order, vma.flags.contains(VmFlags::WRITE), write)
            }
            VmaKind::Userfault => {
                if let (_, Entry::Leaf { .. }) = self.pt.lookup(addr) {
                    return FaultOutcome::Done(guard);
                }
                if !flags.contains(FaultFlags::ALLOW_RETRY) {
                    return FaultOutcome::Error(guard, VmFaultError::Sigbus);
                }
                if flags.contains(FaultFlags::RETRY_NOWAIT) {
                    self.counters.would_block.fetch_add(1, Ordering::Relaxed);
                    return FaultOutcome::WouldBlock(guard);
                }
                // handle_userfault(): queue, release the mmap lock, sleep.
                let slot = self.uffd.post(addr & !0xfff);
                drop(guard);
                self.counters.lock_drops.fetch_add(1, Ordering::Relaxed);
                self.uffd.wait(slot);
                return FaultOutcome::Retry;
            }
        };
        match r {
            Ok(()) => FaultOutcome::Done(guard),
            Err(e) => FaultOutcome::Error(guard, e),
        }
    }

    fn migration_wait(&self, _guard: &HostGuard<'_>, addr: u64) {
        self.counters
            .migration_waits
            .fetch_add(1, Ordering::Relaxed);
        // The migrating context replaces the entry without needing the
        // mmap lock for write, so waiting under the read lock is safe.
        while let (_, Entry::Migration(_)) = self.pt.lookup(addr) {
            wfe();
        }
    }
}
