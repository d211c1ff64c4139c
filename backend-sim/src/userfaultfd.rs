//! userfaultfd emulation (`fs/userfaultfd.c`, `mm/userfaultfd.c`).
//!
//! A [`UffdCtx`] is one userfaultfd. Ranges are registered in MISSING, WP
//! and/or MINOR mode ([`UffdCtx::register_modes`]; MINOR on shmem and
//! hugetlb only). A fault on a registered range goes to
//! `handle_userfault`, which follows Linux's order of checks:
//!
//! * no `ALLOW_RETRY` in the fault flags: `VM_FAULT_SIGBUS` (this is what
//!   Linux's `hmm_range_fault` hits, hence `-EFAULT`);
//! * `RETRY_NOWAIT`: return "would block" at once, keeping the lock;
//! * the context is released: drop the lock and return retry;
//! * otherwise queue a page-fault message, re-check that the fault is still
//!   needed, **release the mmap lock**, sleep (killably when the fault is
//!   `KILLABLE`) until a handler wakes the address, and return retry.
//!
//! In a file (shmem or hugetlbfs) VMA a page already in the page cache
//! faults to a MINOR registration and a page not there to a MISSING one.
//!
//! A handler thread reads messages with [`UffdCtx::read`] and resolves them
//! with [`UffdCtx::copy`], [`UffdCtx::zeropage`],
//! [`UffdCtx::continue_minor`], [`UffdCtx::poison`],
//! [`UffdCtx::move_pages`], [`UffdCtx::wake`] or
//! [`UffdCtx::writeprotect`]. Non-cooperative events (REMOVE from
//! `MADV_DONTNEED`, UNMAP from munmap, FORK, REMAP from mremap) are
//! delivered when the matching feature is enabled; the operation waits
//! until the handler has read the event, and while one is pending the
//! resolving ioctls fail with `-EAGAIN` (`mmap_changing`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use hmm_core::{FaultFlags, FaultOutcome, VmFaultError, VmFlags, PAGE_SIZE};

use crate::frame::{FrameKind, ZERO_PFN};
use crate::mm::{Mm, MmReadGuard};
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, MARKER_POISON, PMD_SHIFT, PTE_SHIFT};
use crate::task::{Task, WaitEnd, WaitQueue};
use crate::vma::{Backing, UffdReg, VmaInfo};
use crate::Errno;

/// Why a fault went to userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `VM_UFFD_MISSING`: no page.
    Missing,
    /// `VM_UFFD_WP`: write to a write-protected page.
    Wp,
    /// `VM_UFFD_MINOR`: the page is in the page cache but not mapped.
    Minor,
}

/// Features negotiated with `UFFDIO_API`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `UFFD_FEATURE_EVENT_REMOVE`.
    pub event_remove: bool,
    /// `UFFD_FEATURE_EVENT_UNMAP`.
    pub event_unmap: bool,
    /// `UFFD_FEATURE_EVENT_FORK`: a fork gives the child its own context,
    /// announced to the parent's handler.
    pub event_fork: bool,
    /// `UFFD_FEATURE_EVENT_REMAP`: mremap keeps the registration and is
    /// announced.
    pub event_remap: bool,
}

/// `UFFDIO_REGISTER` modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterMode {
    /// `UFFDIO_REGISTER_MODE_MISSING`.
    pub missing: bool,
    /// `UFFDIO_REGISTER_MODE_WP`.
    pub wp: bool,
    /// `UFFDIO_REGISTER_MODE_MINOR`.
    pub minor: bool,
}

/// `UFFDIO_MOVE` modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveMode {
    /// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`: skip source holes instead of
    /// failing with `-ENOENT`.
    pub allow_src_holes: bool,
    /// `UFFDIO_MOVE_MODE_DONTWAKE`.
    pub dontwake: bool,
}

/// A message read from the userfaultfd (`struct uffd_msg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdMsg {
    /// `UFFD_EVENT_PAGEFAULT`.
    Pagefault {
        /// Faulting address (page aligned).
        addr: u64,
        /// `UFFD_PAGEFAULT_FLAG_WRITE`.
        write: bool,
        /// `UFFD_PAGEFAULT_FLAG_WP`.
        wp: bool,
        /// `UFFD_PAGEFAULT_FLAG_MINOR`.
        minor: bool,
        /// Thread id of the faulting task.
        tid: u64,
    },
    /// `UFFD_EVENT_FORK`: the child's new userfaultfd, to be taken with
    /// [`UffdCtx::take_forked`].
    Fork {
        /// The new descriptor (`arg.fork.ufd`).
        ufd: u64,
    },
    /// `UFFD_EVENT_REMAP` (mremap of a registered range).
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length moved.
        len: u64,
    },
    /// `UFFD_EVENT_REMOVE` (madvise DONTNEED / REMOVE).
    Remove {
        /// Start of the removed range.
        start: u64,
        /// End of the removed range.
        end: u64,
    },
    /// `UFFD_EVENT_UNMAP` (munmap).
    Unmap {
        /// Start of the unmapped range.
        start: u64,
        /// End of the unmapped range.
        end: u64,
    },
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    addr: u64,
    woken: bool,
}

#[derive(Debug, Default)]
struct State {
    msgs: VecDeque<(u64, UffdMsg)>,
    waiters: Vec<Waiter>,
    events_read: Vec<u64>,
    mmap_changing: u32,
    released: bool,
    next_id: u64,
    /// Contexts of forked children not yet taken, by descriptor.
    forked: Vec<(u64, Arc<UffdCtx>)>,
}

/// One userfaultfd context (`struct userfaultfd_ctx`).
pub struct UffdCtx {
    mm: Weak<Mm>,
    features: Features,
    wq: Arc<WaitQueue<State>>,
    faults: AtomicU64,
}

impl std::fmt::Debug for UffdCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdCtx")
            .field("features", &self.features)
            .finish()
    }
}

/// `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyMode {
    /// `*_MODE_DONTWAKE`: do not wake faulters.
    pub dontwake: bool,
    /// `UFFDIO_COPY_MODE_WP`: map write-protected.
    pub wp: bool,
}

/// Handle a fault on a userfaultfd-registered range (`handle_userfault`).
pub(crate) fn handle_userfault<'a>(
    g: MmReadGuard<'a>,
    vma: &VmaInfo,
    addr: u64,
    flags: FaultFlags,
    reason: Reason,
) -> FaultOutcome<MmReadGuard<'a>> {
    let Some(reg) = vma.uffd.as_ref() else {
        return FaultOutcome::Error(g, VmFaultError::Sigbus);
    };
    let ctx = reg.ctx.clone();
    if !flags.contains(FaultFlags::ALLOW_RETRY) {
        return FaultOutcome::Error(g, VmFaultError::Sigbus);
    }
    if flags.contains(FaultFlags::RETRY_NOWAIT) {
        return FaultOutcome::WouldBlock(g);
    }
    let mm = g.mm();
    let task = g.task();
    let mut st = ctx.wq.lock();
    if st.released {
        drop(st);
        drop(g);
        return FaultOutcome::Retry;
    }
    let id = st.next_id;
    st.next_id += 1;
    let msg = UffdMsg::Pagefault {
        addr,
        write: flags.contains(FaultFlags::WRITE),
        wp: reason == Reason::Wp,
        minor: reason == Reason::Minor,
        tid: task.id(),
    };
    st.msgs.push_back((id, msg));
    st.waiters.push(Waiter {
        id,
        addr,
        woken: false,
    });
    ctx.faults.fetch_add(1, Ordering::Relaxed);
    ctx.wq.notify_all();
    // Re-check with the message queued: a resolution that raced with us has
    // either changed the entry already or will wake this waiter.
    let must_wait = must_wait(mm, vma, addr, reason);
    mm.stats.uffd_waits.fetch_add(1, Ordering::Relaxed);
    // release_fault_lock(): from here on nothing borrowed from `g` is used.
    drop(g);
    let killable = flags.intersects(FaultFlags::KILLABLE | FaultFlags::INTERRUPTIBLE);
    if killable {
        task.wait_point();
    }
    if must_wait {
        let bound = mm.machine.inject.uffd_wait_bound();
        let (s, r) = ctx
            .wq
            .wait_killable(killable.then_some(task), st, bound, |s| {
                s.released || s.waiters.iter().any(|w| w.id == id && w.woken)
            });
        st = s;
        let _: Result<(), WaitEnd> = r;
    }
    st.waiters.retain(|w| w.id != id);
    // The message may still be queued if nobody read it; a later fault on
    // the same address queues another, as in Linux.
    drop(st);
    FaultOutcome::Retry
}

/// `userfaultfd_must_wait`: is the fault still unresolved?
fn must_wait(mm: &Mm, vma: &VmaInfo, addr: u64, reason: Reason) -> bool {
    let shift = if vma.is_hugetlb() {
        PTE_SHIFT + u32::from(vma.hugetlb_order)
    } else {
        PTE_SHIFT
    };
    let (word, table_level) = match mm.tables.slot(mm.root, addr, shift, false) {
        Slot::At(e) => (e.load(Ordering::Acquire), shift != PTE_SHIFT),
        Slot::Huge(e, _) => (e.load(Ordering::Acquire), true),
        Slot::Missing(_) => (0, false),
    };
    matches!(
        (reason, Pte::decode(word, table_level)),
        (Reason::Missing | Reason::Minor, Pte::None | Pte::Marker(_))
            | (
                Reason::Wp,
                Pte::Present { uffd_wp: true, .. } | Pte::Marker(_)
            )
    )
}

impl Mm {
    /// `userfaultfd(2)` + `UFFDIO_API`: a new context on this mm.
    pub fn userfaultfd(self: &Arc<Self>, features: Features) -> Arc<UffdCtx> {
        Arc::new(UffdCtx {
            mm: Arc::downgrade(self),
            features,
            wq: Arc::new(WaitQueue::new(State::default())),
            faults: AtomicU64::new(0),
        })
    }

    /// Deliver a non-cooperative event to every context registered on
    /// `[start, end)` that wants it, and wait (killably) until each has been
    /// read. Call without the mmap lock held.
    pub(crate) fn uffd_event(&self, task: &Task, ctxs: &[Arc<UffdCtx>], msg: UffdMsg) {
        for ctx in ctxs {
            let wanted = match msg {
                UffdMsg::Remove { .. } => ctx.features.event_remove,
                UffdMsg::Unmap { .. } => ctx.features.event_unmap,
                UffdMsg::Fork { .. } => ctx.features.event_fork,
                UffdMsg::Remap { .. } => ctx.features.event_remap,
                UffdMsg::Pagefault { .. } => false,
            };
            if !wanted {
                continue;
            }
            let mut st = ctx.wq.lock();
            if st.released {
                continue;
            }
            let id = st.next_id;
            st.next_id += 1;
            st.msgs.push_back((id, msg));
            st.mmap_changing += 1;
            ctx.wq.notify_all();
            task.wait_point();
            let (mut st, _) = ctx.wq.wait_killable(Some(task), st, None, |s| {
                s.released || s.events_read.contains(&id)
            });
            st.events_read.retain(|&e| e != id);
            if st.msgs.iter().any(|(i, _)| *i == id) {
                // Killed before the handler read it: withdraw the event.
                st.msgs.retain(|(i, _)| *i != id);
                st.mmap_changing -= 1;
            }
        }
    }
}

/// The distinct userfaultfd contexts registered on VMAs in `vmas`.
pub(crate) fn contexts(vmas: &[VmaInfo]) -> Vec<Arc<UffdCtx>> {
    let mut out: Vec<Arc<UffdCtx>> = Vec::new();
    for v in vmas {
        if let Some(r) = &v.uffd {
            if !out.iter().any(|c| Arc::ptr_eq(c, &r.ctx)) {
                out.push(r.ctx.clone());
            }
        }
    }
    out
}

impl UffdCtx {
    fn mm(&self) -> Result<Arc<Mm>, Errno> {
        self.mm.upgrade().ok_or(Errno::ESRCH)
    }

    /// Page-fault messages queued so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// `UFFDIO_REGISTER`: register `[start, start + len)` (whole VMAs or
    /// parts of them, all mapped) in MISSING and/or WP mode.
    pub fn register(
        self: &Arc<Self>,
        start: u64,
        len: u64,
        missing: bool,
        wp: bool,
    ) -> Result<(), Errno> {
        self.register_modes(
            start,
            len,
            RegisterMode {
                missing,
                wp,
                minor: false,
            },
        )
    }

    /// `UFFDIO_REGISTER` with any modes: MINOR only on shmem and hugetlb
    /// VMAs (`-EINVAL` elsewhere).
    pub fn register_modes(
        self: &Arc<Self>,
        start: u64,
        len: u64,
        mode: RegisterMode,
    ) -> Result<(), Errno> {
        let RegisterMode { missing, wp, minor } = mode;
        let mm = self.mm()?;
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !start.is_multiple_of(PAGE_SIZE)
            || !len.is_multiple_of(PAGE_SIZE)
            || len == 0
            || !(missing || wp || minor)
        {
            return Err(Errno::EINVAL);
        }
        let _w = mm.write();
        let mut vmas = mm.vmas_mut();
        let mut a = start;
        for v in vmas.overlapping(start, end) {
            if v.start > a
                || v.flags.intersects(VmFlags::PFNMAP | VmFlags::IO)
                || (minor && !v.minor_capable())
            {
                return Err(Errno::EINVAL);
            }
            if v.uffd.as_ref().is_some_and(|r| !Arc::ptr_eq(&r.ctx, self)) {
                return Err(Errno::EBUSY);
            }
            a = v.end;
        }
        if a < end {
            return Err(Errno::EINVAL);
        }
        for v in vmas.range_mut(start, end) {
            v.uffd = Some(UffdReg {
                ctx: self.clone(),
                missing,
                wp,
                minor,
            });
        }
        Ok(())
    }

    /// `UFFDIO_UNREGISTER`: drop the registration and wake faulters there.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), Errno> {
        let mm = self.mm()?;
        {
            let _w = mm.write();
            for v in mm.vmas_mut().range_mut(start, start + len) {
                v.uffd = None;
            }
        }
        self.wake(start, len);
        Ok(())
    }

    /// Read the next message, sleeping until one arrives. `None` when the
    /// context is closed or `task` is killed.
    pub fn read(&self, task: &Task) -> Option<UffdMsg> {
        let st = self.wq.lock();
        let (st, r) = self
            .wq
            .wait_killable(Some(task), st, None, |s| s.released || !s.msgs.is_empty());
        if r.is_err() {
            return None;
        }
        self.take_msg(st)
    }

    /// Read the next message if one is queued.
    pub fn try_read(&self) -> Option<UffdMsg> {
        let st = self.wq.lock();
        self.take_msg(st)
    }

    fn take_msg(&self, mut st: std::sync::MutexGuard<'_, State>) -> Option<UffdMsg> {
        let (id, msg) = st.msgs.pop_front()?;
        if !matches!(msg, UffdMsg::Pagefault { .. }) {
            st.events_read.push(id);
            st.mmap_changing -= 1;
            drop(st);
            self.wq.notify_all();
        }
        Some(msg)
    }

    /// Close the userfaultfd (`userfaultfd_release`): wake every faulter
    /// (they retry and, with the registration gone, fault normally) and
    /// every reader.
    pub fn close(&self) {
        if let Ok(mm) = self.mm() {
            let _w = mm.write();
            let mut vmas = mm.vmas_mut();
            let hit: Vec<(u64, u64)> = vmas
                .iter()
                .filter(|v| v.uffd.as_ref().is_some_and(|r| std::ptr::eq(&*r.ctx, self)))
                .map(|v| (v.start, v.end))
                .collect();
            for (s, e) in hit {
                for v in vmas.range_mut(s, e) {
                    v.uffd = None;
                }
            }
        }
        self.wq.lock().released = true;
        self.wq.notify_all();
    }

    /// `UFFDIO_WAKE`: wake faulters waiting on `[start, start + len)`.
    pub fn wake(&self, start: u64, len: u64) {
        let mut st = self.wq.lock();
        let mut any = false;
        for w in st.waiters.iter_mut() {
            if w.addr >= start && w.addr < start + len {
                w.woken = true;
                any = true;
            }
        }
        drop(st);
        if any {
            self.wq.notify_all();
        }
    }

    /// Faulters currently waiting.
    pub fn waiting(&self) -> usize {
        self.wq.lock().waiters.len()
    }

    fn check_changing(&self) -> Result<(), Errno> {
        if self.wq.lock().mmap_changing > 0 {
            Err(Errno::EAGAIN)
        } else {
            Ok(())
        }
    }

    fn registered_vma(&self, mm: &Mm, addr: u64) -> Result<VmaInfo, Errno> {
        let v = mm.vmas().lookup(addr).cloned().ok_or(Errno::ENOENT)?;
        match &v.uffd {
            Some(r) if std::ptr::eq(&*r.ctx, self) => Ok(v),
            _ => Err(Errno::ENOENT),
        }
    }

    /// `UFFDIO_COPY`: map pages holding `src` at `dst` (page aligned,
    /// `src.len()` a multiple of the page size, or of the huge page size in
    /// hugetlb VMAs). Returns the bytes copied; fails with `-EEXIST` if the
    /// first page is already mapped, `-ENOENT` outside a registered VMA,
    /// `-EAGAIN` while an event is pending. Wakes faulters on the copied
    /// range unless `mode.dontwake`.
    pub fn copy(&self, task: &Task, dst: u64, src: &[u8], mode: CopyMode) -> Result<u64, Errno> {
        self.fill(task, dst, src.len() as u64, Some(src), mode)
    }

    /// What a post-copy handler does with a fault: `UFFDIO_COPY` of `src`
    /// over `[dst, dst + src.len())` page by page range, skipping the pages
    /// that are already mapped (`-EEXIST`) instead of stopping at them,
    /// then one `UFFDIO_WAKE` of the whole range. Returns the bytes copied.
    /// In hugetlb VMAs `src` must be one or more whole huge pages.
    pub fn copy_fill(&self, task: &Task, dst: u64, src: &[u8]) -> Result<u64, Errno> {
        let len = src.len() as u64;
        let dontwake = CopyMode {
            dontwake: true,
            wp: false,
        };
        let mut off = 0u64;
        let mut copied = 0u64;
        let mut result = Ok(());
        while off < len {
            match self.copy(task, dst + off, &src[off as usize..], dontwake) {
                Ok(n) => {
                    off += n;
                    copied += n;
                }
                Err(Errno::EEXIST) => {
                    let vma_huge = self
                        .mm()
                        .ok()
                        .and_then(|mm| mm.vmas().lookup(dst + off).map(|v| v.hugetlb_order));
                    off += PAGE_SIZE << vma_huge.unwrap_or(0);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.wake(dst, len);
        result.map(|()| copied)
    }

    /// `UFFDIO_ZEROPAGE`: map the zero page over `[dst, dst + len)`
    /// (anonymous VMAs only).
    pub fn zeropage(&self, task: &Task, dst: u64, len: u64, mode: CopyMode) -> Result<u64, Errno> {
        self.fill(task, dst, len, None, mode)
    }

    fn fill(
        &self,
        task: &Task,
        dst: u64,
        len: u64,
        src: Option<&[u8]>,
        mode: CopyMode,
    ) -> Result<u64, Errno> {
        if !dst.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(Errno::EINVAL);
        }
        let mm = self.mm()?;
        let done = {
            let g = mm.read(task);
            self.check_changing()?;
            let mut done = 0u64;
            let mut err = None;
            while done < len {
                match self.fill_one(
                    &g,
                    dst + done,
                    len - done,
                    src.map(|s| &s[done as usize..]),
                    mode,
                ) {
                    Ok(n) => done += n,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if done == 0 {
                if let Some(e) = err {
                    return Err(e);
                }
            }
            done
        };
        if !mode.dontwake {
            self.wake(dst, done);
        }
        Ok(done)
    }

    /// Fill the page (or huge page) at `addr`; returns the bytes filled.
    fn fill_one(
        &self,
        g: &MmReadGuard<'_>,
        addr: u64,
        left: u64,
        src: Option<&[u8]>,
        mode: CopyMode,
    ) -> Result<u64, Errno> {
        let mm = g.mm();
        let frames = &mm.machine.frames;
        let vma = self.registered_vma(mm, addr)?;
        let vm_write = vma.flags.contains(VmFlags::WRITE) && !mode.wp;
        if vma.is_hugetlb() {
            let order = vma.hugetlb_order;
            let size = PAGE_SIZE << order;
            if !addr.is_multiple_of(size) || left < size {
                return Err(Errno::EINVAL);
            }
            let Some(src) = src else {
                return Err(Errno::EINVAL);
            };
            let head = mm
                .machine
                .alloc(order, FrameKind::System)
                .ok_or(Errno::ENOMEM)?;
            for i in 0..(1u64 << order) {
                let o = (i * PAGE_SIZE) as usize;
                frames.write(head + i, 0, &src[o..o + PAGE_SIZE as usize]);
            }
            let _ptl = mm.ptl();
            let e = match mm
                .tables
                .slot(mm.root, addr, PTE_SHIFT + u32::from(order), true)
            {
                Slot::At(e) => e,
                _ => {
                    frames.put(head);
                    return Err(Errno::EEXIST);
                }
            };
            if e.load(Ordering::Acquire) != 0 {
                frames.put(head);
                return Err(Errno::EEXIST);
            }
            let mut p = Pte::present(head, vm_write, true);
            if let Pte::Present { uffd_wp, .. } = &mut p {
                *uffd_wp = mode.wp;
            }
            e.store(p.encode(), Ordering::Release);
            return Ok(size);
        }
        let pfn = match src {
            Some(s) => {
                let p = mm
                    .machine
                    .alloc(0, FrameKind::System)
                    .ok_or(Errno::ENOMEM)?;
                frames.write(p, 0, &s[..PAGE_SIZE as usize]);
                p
            }
            None if vma.is_anon() => ZERO_PFN,
            None => return Err(Errno::EINVAL),
        };
        let _ptl = mm.ptl();
        let pmd = match mm.tables.slot(mm.root, addr, PMD_SHIFT, true) {
            Slot::At(e) => e,
            _ => {
                frames.put(pfn);
                return Err(Errno::EEXIST);
            }
        };
        if !matches!(
            Pte::decode(pmd.load(Ordering::Acquire), true),
            Pte::Table(_) | Pte::None
        ) {
            frames.put(pfn);
            return Err(Errno::EEXIST);
        }
        let Slot::At(e) = mm.tables.slot(mm.root, addr, PTE_SHIFT, true) else {
            frames.put(pfn);
            return Err(Errno::EEXIST);
        };
        if !matches!(
            Pte::decode(e.load(Ordering::Acquire), false),
            Pte::None | Pte::Marker(_)
        ) {
            frames.put(pfn);
            return Err(Errno::EEXIST);
        }
        let p = Pte::Present {
            pfn,
            write: vm_write && pfn != ZERO_PFN,
            huge: false,
            special: pfn == ZERO_PFN,
            protnone: false,
            uffd_wp: mode.wp,
        };
        e.store(p.encode(), Ordering::Release);
        Ok(PAGE_SIZE)
    }

    /// `UFFDIO_WRITEPROTECT`: set (`wp`) or clear write protection of the
    /// present pages in `[start, start + len)`. Clearing wakes faulters
    /// unless `dontwake`.
    pub fn writeprotect(
        &self,
        task: &Task,
        start: u64,
        len: u64,
        wp: bool,
        dontwake: bool,
    ) -> Result<(), Errno> {
        if wp && dontwake {
            return Err(Errno::EINVAL);
        }
        let mm = self.mm()?;
        {
            let g = mm.read(task);
            self.check_changing()?;
            let end = start + len;
            for v in mm.vmas().overlapping(start, end) {
                if !v
                    .uffd
                    .as_ref()
                    .is_some_and(|r| r.wp && std::ptr::eq(&*r.ctx, self))
                {
                    return Err(Errno::ENOENT);
                }
            }
            let frames = &mm.machine.frames;
            let _inv = if wp {
                mm.notifiers
                    .invalidate_range_start(&InvalidateRange::new(
                        start,
                        end,
                        Event::ProtectionPage,
                    ))
                    .ok()
            } else {
                None
            };
            let _ptl = mm.ptl();
            mm.tables
                .for_each_leaf(mm.root, start, end, &mut |a, shift, e| {
                    let w = e.load(Ordering::Acquire);
                    if let Pte::Present {
                        pfn,
                        huge,
                        special,
                        protnone,
                        ..
                    } = Pte::decode(w, shift != PTE_SHIFT)
                    {
                        let vma = mm.vmas().lookup(a).cloned();
                        let writable = !wp
                            && vma.as_ref().is_some_and(|v| {
                                v.flags.contains(VmFlags::WRITE)
                                    && (!v.is_cow()
                                        || (frames.refcount(pfn) == 1 && pfn != ZERO_PFN))
                            });
                        let p = Pte::Present {
                            pfn,
                            write: writable,
                            huge,
                            special,
                            protnone,
                            uffd_wp: wp,
                        };
                        e.store(p.encode(), Ordering::Release);
                    }
                });
            drop(g);
        }
        if !wp && !dontwake {
            self.wake(start, len);
        }
        Ok(())
    }

    /// Record the context of a forked child (`dup_userfaultfd`) and return
    /// its descriptor for the `UFFD_EVENT_FORK` message.
    pub(crate) fn add_forked(&self, child: Arc<UffdCtx>) -> u64 {
        let mut st = self.wq.lock();
        let ufd = st.next_id;
        st.next_id += 1;
        st.forked.push((ufd, child));
        ufd
    }

    /// The child's context announced by `UFFD_EVENT_FORK` with descriptor
    /// `ufd` (what reading the message installs in the handler's process).
    pub fn take_forked(&self, ufd: u64) -> Option<Arc<UffdCtx>> {
        let mut st = self.wq.lock();
        let i = st.forked.iter().position(|(u, _)| *u == ufd)?;
        Some(st.forked.swap_remove(i).1)
    }

    /// The features of this context.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The PTE slot at `addr` for a userfaultfd fill, allocating tables:
    /// `-EEXIST` when a huge leaf maps it. Caller holds the page-table lock.
    fn pte_slot(mm: &Mm, addr: u64) -> Result<&AtomicU64, Errno> {
        let pmd = match mm.tables.slot(mm.root, addr, PMD_SHIFT, true) {
            Slot::At(e) => e,
            _ => return Err(Errno::EEXIST),
        };
        if !matches!(
            Pte::decode(pmd.load(Ordering::Acquire), true),
            Pte::Table(_) | Pte::None
        ) {
            return Err(Errno::EEXIST);
        }
        match mm.tables.slot(mm.root, addr, PTE_SHIFT, true) {
            Slot::At(e) => Ok(e),
            _ => Err(Errno::EEXIST),
        }
    }

    /// Run `one(guard, addr, left)` over `[start, start + len)` under the
    /// mmap read lock, each call handling one page (or huge page) and
    /// returning the bytes done: the `mfill_atomic` loop. `-EINVAL` for an
    /// unaligned or empty range, `-EAGAIN` while an event is pending. The
    /// first error ends the loop; it is returned if nothing was done, else
    /// the partial count is. Wakes faulters on what was done unless
    /// `dontwake`.
    fn mfill(
        &self,
        task: &Task,
        start: u64,
        len: u64,
        dontwake: bool,
        one: &mut dyn FnMut(&MmReadGuard<'_>, u64, u64) -> Result<u64, Errno>,
    ) -> Result<u64, Errno> {
        if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(Errno::EINVAL);
        }
        start.checked_add(len).ok_or(Errno::EINVAL)?;
        let mm = self.mm()?;
        let done = {
            let g = mm.read(task);
            self.check_changing()?;
            let mut done = 0u64;
            while done < len {
                match one(&g, start + done, len - done) {
                    Ok(n) => done += n,
                    Err(e) if done == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            done
        };
        if !dontwake {
            self.wake(start, done);
        }
        Ok(done)
    }

    /// `UFFDIO_CONTINUE`: map the page-cache pages of a MINOR-registered
    /// shmem or hugetlb range over `[start, start + len)` (whole huge pages
    /// in hugetlb VMAs), write-protected with `mode.wp`. `-ENOENT` outside
    /// a range registered with this context, `-EINVAL` where it is not
    /// registered MINOR or a hugetlb range is not huge-page aligned,
    /// `-EFAULT` for a page not in the page cache, `-EEXIST` for one
    /// already mapped. Returns the bytes mapped; wakes faulters unless
    /// `mode.dontwake`.
    pub fn continue_minor(
        &self,
        task: &Task,
        start: u64,
        len: u64,
        mode: CopyMode,
    ) -> Result<u64, Errno> {
        self.mfill(task, start, len, mode.dontwake, &mut |g, addr, left| {
            let mm = g.mm();
            let frames = &mm.machine.frames;
            let vma = self.registered_vma(mm, addr)?;
            if !vma.uffd_minor() {
                return Err(Errno::EINVAL);
            }
            let Backing::File { file, .. } = &vma.backing else {
                return Err(Errno::EINVAL);
            };
            let vm_write = vma.flags.contains(VmFlags::WRITE) && !mode.wp;
            let order = vma.hugetlb_order;
            let size = PAGE_SIZE << order;
            if addr % size != 0 || left < size {
                return Err(Errno::EINVAL);
            }
            let pfn = file.lookup(vma.file_offset(addr)).ok_or(Errno::EFAULT)?;
            let _ptl = mm.ptl();
            let e = if order > 0 {
                match mm
                    .tables
                    .slot(mm.root, addr, PTE_SHIFT + u32::from(order), true)
                {
                    Slot::At(e) => e,
                    _ => return Err(Errno::EEXIST),
                }
            } else {
                Self::pte_slot(mm, addr)?
            };
            if !matches!(
                Pte::decode(e.load(Ordering::Acquire), order > 0),
                Pte::None | Pte::Marker(_)
            ) {
                return Err(Errno::EEXIST);
            }
            frames.get(pfn);
            let p = Pte::Present {
                pfn,
                write: vm_write,
                huge: order > 0,
                special: false,
                protnone: false,
                uffd_wp: mode.wp,
            };
            e.store(p.encode(), Ordering::Release);
            Ok(size)
        })
    }

    /// `UFFDIO_POISON`: install poison markers over the empty entries of
    /// `[start, start + len)` (whole huge pages in hugetlb VMAs) in a range
    /// registered with this context: a later fault there is
    /// `VM_FAULT_HWPOISON`. `-ENOENT` outside a registered range, `-EEXIST`
    /// for an entry that is not empty. Returns the bytes poisoned; wakes
    /// faulters unless `dontwake`.
    pub fn poison(&self, task: &Task, start: u64, len: u64, dontwake: bool) -> Result<u64, Errno> {
        self.mfill(task, start, len, dontwake, &mut |g, addr, left| {
            let mm = g.mm();
            let vma = self.registered_vma(mm, addr)?;
            let order = vma.hugetlb_order;
            let size = PAGE_SIZE << order;
            if addr % size != 0 || left < size {
                return Err(Errno::EINVAL);
            }
            let _ptl = mm.ptl();
            let e = if order > 0 {
                match mm
                    .tables
                    .slot(mm.root, addr, PTE_SHIFT + u32::from(order), true)
                {
                    Slot::At(e) => e,
                    _ => return Err(Errno::EEXIST),
                }
            } else {
                Self::pte_slot(mm, addr)?
            };
            if e.load(Ordering::Acquire) != 0 {
                return Err(Errno::EEXIST);
            }
            e.store(Pte::Marker(MARKER_POISON).encode(), Ordering::Release);
            Ok(size)
        })
    }

    /// `UFFDIO_MOVE` within this context's mm: move the pages of `[src, src
    /// + len)` to `[dst, dst + len)` without copying (the frames change
    /// address; a swapped-out page moves as its swap entry, the zero page
    /// as the zero page). Both ranges lie in private anonymous VMAs, the
    /// destination registered with this context (`-ENOENT` for a missing
    /// or unregistered VMA, `-EINVAL` for overlapping, unaligned or
    /// unsuitable ranges); THPs in either range are split first. Per page:
    /// a source hole is `-ENOENT` unless `mode.allow_src_holes` skips it, a
    /// page shared with another mapping is `-EBUSY`, a migration entry
    /// `-EAGAIN`, any other non-present entry (device-private, hwpoison)
    /// `-EFAULT`, and a destination entry that is not empty `-EEXIST`. The
    /// source range is invalidated. Returns the bytes moved (or skipped);
    /// wakes faulters on the destination unless `mode.dontwake`.
    pub fn move_pages(
        &self,
        task: &Task,
        dst: u64,
        src: u64,
        len: u64,
        mode: MoveMode,
    ) -> Result<u64, Errno> {
        if !src.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let src_end = src.checked_add(len).ok_or(Errno::EINVAL)?;
        let dst_end = dst.checked_add(len).ok_or(Errno::EINVAL)?;
        if src < dst_end && dst < src_end {
            return Err(Errno::EINVAL);
        }
        {
            let mm = self.mm()?;
            let _g = mm.read(task);
            let dv = self.registered_vma(&mm, dst)?;
            let sv = mm.vmas().lookup(src).cloned().ok_or(Errno::ENOENT)?;
            for v in [&dv, &sv] {
                if !v.is_anon() || !v.is_cow() || v.is_hugetlb() {
                    return Err(Errno::EINVAL);
                }
            }
            if dv.end < dst_end || sv.end < src_end {
                return Err(Errno::EINVAL);
            }
            mm.split_all(src, src_end);
            mm.split_all(dst, dst_end);
        }
        self.mfill(task, dst, len, mode.dontwake, &mut |g, addr, _| {
            let mm = g.mm();
            let frames = &mm.machine.frames;
            let from = src + (addr - dst);
            let dv = self.registered_vma(mm, addr)?;
            let vm_write = dv.flags.contains(VmFlags::WRITE);
            let _inv = mm.notifiers.invalidate_range_start(&InvalidateRange::new(
                from,
                from + PAGE_SIZE,
                Event::Clear,
            ));
            let _ptl = mm.ptl();
            let se = match mm.tables.slot(mm.root, from, PTE_SHIFT, false) {
                Slot::At(e) => Some(e),
                Slot::Missing(_) => None,
                Slot::Huge(..) => return Err(Errno::EBUSY),
            };
            let sw = se.map_or(0, |e| e.load(Ordering::Acquire));
            let moved = match Pte::decode(sw, false) {
                Pte::None | Pte::Marker(_) => {
                    if mode.allow_src_holes {
                        return Ok(PAGE_SIZE);
                    }
                    return Err(Errno::ENOENT);
                }
                Pte::Present { pfn, .. } if pfn == ZERO_PFN => Pte::present(ZERO_PFN, false, false),
                Pte::Present {
                    pfn,
                    special: false,
                    uffd_wp,
                    ..
                } if frames.kind(pfn) == FrameKind::System
                    && frames.order(pfn) == 0
                    && frames.refcount(pfn) == 1 =>
                {
                    Pte::Present {
                        pfn,
                        write: vm_write,
                        huge: false,
                        special: false,
                        protnone: false,
                        uffd_wp,
                    }
                }
                Pte::Present { .. } => return Err(Errno::EBUSY),
                Pte::Swap { slot, write } => Pte::Swap {
                    slot,
                    write: write && vm_write,
                },
                Pte::Migration { .. } => return Err(Errno::EAGAIN),
                _ => return Err(Errno::EFAULT),
            };
            let de = Self::pte_slot(mm, addr)?;
            if de.load(Ordering::Acquire) != 0 {
                return Err(Errno::EEXIST);
            }
            de.store(moved.encode(), Ordering::Release);
            if let Some(se) = se {
                se.store(0, Ordering::Release);
            }
            Ok(PAGE_SIZE)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::handle_mm_fault;
    use crate::Machine;

    fn setup() -> (Arc<Mm>, Arc<UffdCtx>, u64) {
        let m = Machine::new();
        let mm = Mm::new(&m);
        let a = mm
            .mmap_anon(None, 4 * PAGE_SIZE, VmFlags::READ | VmFlags::WRITE)
            .unwrap();
        let u = mm.userfaultfd(Features::default());
        u.register(a, 4 * PAGE_SIZE, true, false).unwrap();
        (mm, u, a)
    }

    #[test]
    fn without_allow_retry_the_fault_is_sigbus() {
        let (mm, u, a) = setup();
        let t = Task::new();
        let out = handle_mm_fault(mm.read(&t), a, FaultFlags::REMOTE);
        assert!(matches!(out, FaultOutcome::Error(_, VmFaultError::Sigbus)));
        assert_eq!(u.faults(), 0);
    }

    #[test]
    fn retry_nowait_keeps_the_lock_and_queues_nothing() {
        let (mm, u, a) = setup();
        let t = Task::new();
        let f = FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY | FaultFlags::RETRY_NOWAIT;
        assert!(matches!(
            handle_mm_fault(mm.read(&t), a, f),
            FaultOutcome::WouldBlock(_)
        ));
        assert_eq!(u.faults(), 0);
    }

    #[test]
    fn a_resolved_fault_returns_retry_after_dropping_the_lock() {
        let (mm, u, a) = setup();
        let handler = {
            let u = u.clone();
            std::thread::spawn(move || {
                let t = Task::new();
                let m = u.read(&t).unwrap();
                let UffdMsg::Pagefault { addr, write, .. } = m else {
                    panic!("{m:?}")
                };
                assert!(write);
                // The faulter dropped the mmap lock: a writer gets in.
                drop(u.mm().unwrap().write());
                u.copy(
                    &t,
                    addr,
                    &vec![3u8; PAGE_SIZE as usize],
                    CopyMode::default(),
                )
                .unwrap()
            })
        };
        let t = Task::new();
        let f =
            FaultFlags::REMOTE | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE | FaultFlags::WRITE;
        assert!(matches!(
            handle_mm_fault(mm.read(&t), a, f),
            FaultOutcome::Retry
        ));
        assert_eq!(handler.join().unwrap(), PAGE_SIZE);
        let mut b = [0u8; 2];
        mm.read_bytes(&t, a, &mut b).unwrap();
        assert_eq!(b, [3, 3]);
        // A second COPY onto the mapped page is -EEXIST.
        assert_eq!(
            u.copy(&t, a, &vec![4u8; PAGE_SIZE as usize], CopyMode::default()),
            Err(Errno::EEXIST)
        );
    }

    #[test]
    fn zeropage_maps_the_zero_page_read_only() {
        let (mm, u, a) = setup();
        let t = Task::new();
        assert_eq!(
            u.zeropage(&t, a, PAGE_SIZE, CopyMode::default()),
            Ok(PAGE_SIZE)
        );
        assert_eq!(mm.pte_at(a).1, Some(ZERO_PFN));
        assert!(matches!(mm.pte_at(a).0, Pte::Present { write: false, .. }));
    }
}
