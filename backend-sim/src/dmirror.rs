//! A device mirror like `lib/test_hmm.c`'s dmirror.
//!
//! A [`Device`] (`struct dmirror_device`) owns device-private memory (its
//! pagemap owner token is [`Device::owner`]). Each [`Device::open`] gives a
//! [`Mirror`] (`struct dmirror`) of one mm: a device page table (VA → PFN,
//! tagged WRITE or ATOMIC), an MMU interval notifier over the whole address
//! space whose invalidate callback erases device entries under the driver
//! lock, and the ioctls of the kernel driver as methods taking a [`Cmd`]
//! (`struct hmm_dmirror_cmd`): [`Mirror::read`], [`Mirror::write`],
//! [`Mirror::snapshot`], [`Mirror::migrate_to_dev`],
//! [`Mirror::migrate_to_sys`], [`Mirror::exclusive`],
//! [`Mirror::check_exclusive`], [`Mirror::release`],
//! [`Mirror::set_flags`], plus [`Mirror::read_unlocked`], the READ
//! through hmm-core's lock-dropping entry point (the seed's
//! `HMM_DMIRROR_READ_UNLOCKED`).
//!
//! Device faults follow the kernel's caller pattern exactly:
//! `read_begin`; mmap read lock; [`hmm_core::range_fault`]; unlock; on
//! `-EBUSY` start over; take the driver lock; `read_retry`; program the
//! device page table; all within `HMM_RANGE_DEFAULT_TIMEOUT`.
//!
//! Arguments are taken as test_hmm.c takes them, hostile ones included: the
//! ioctl's range check in 64-bit arithmetic, `-ENOMEM` for a bounce buffer
//! beyond the machine's RAM, 64-page chunks whose end may wrap near 2^64,
//! `-EFAULT` for a user buffer ([`Cmd::buf`]) too short for the copy. No
//! command allocates more than the caller's buffer for its data, and none
//! visits more pages than the mapped ones it works on, the caller's buffer
//! holds, or the device maps.
//!
//! As in test_hmm.c, the invalidate callback keeps the device's entries
//! through a migration the device itself started (the migration maps the
//! pages it moves, and the pages it does not move stay mapped). One
//! deliberate difference: it still bumps the sequence for such a
//! migration, which closes a window where a concurrent device fault could
//! map a page that is being migrated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hmm_core::{
    range_fault, range_fault_owning_lock, Env, Error, HmmPfn, IntervalNotifier, Options, PfnFlags,
    Range, Request, Stats, VmFlags, PAGE_SHIFT, PAGE_SIZE,
};

use crate::frame::{FrameKind, ZERO_PFN};
use crate::machine::{Machine, Pagemap};
use crate::mm::Mm;
use crate::notifier::{Event, IntervalOps, IntervalSub, InvalidateRange};
use crate::ops::MovedPage;
use crate::pagetable::Pte;
use crate::task::{MonoClock, Task};
use crate::Errno;

/// `HMM_DMIRROR_PROT_ERROR`.
pub const PROT_ERROR: u8 = 0xFF;
/// `HMM_DMIRROR_PROT_NONE`.
pub const PROT_NONE: u8 = 0x00;
/// `HMM_DMIRROR_PROT_READ`.
pub const PROT_READ: u8 = 0x01;
/// `HMM_DMIRROR_PROT_WRITE`.
pub const PROT_WRITE: u8 = 0x02;
/// `HMM_DMIRROR_PROT_PMD`.
pub const PROT_PMD: u8 = 0x04;
/// `HMM_DMIRROR_PROT_PUD`.
pub const PROT_PUD: u8 = 0x08;
/// `HMM_DMIRROR_PROT_ZERO`.
pub const PROT_ZERO: u8 = 0x10;
/// `HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL`.
pub const PROT_DEV_PRIVATE_LOCAL: u8 = 0x20;
/// `HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE`.
pub const PROT_DEV_PRIVATE_REMOTE: u8 = 0x30;

/// `HMM_RANGE_DEFAULT_TIMEOUT`: the device's retry budget.
pub const HMM_RANGE_DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pages per device fault (`ARRAY_SIZE(pfns)` in test_hmm.c).
pub const FAULT_CHUNK: u64 = 64;
/// Pages per fault of the lock-dropping READ (the seed's v7/v8 driver).
pub const UNLOCKED_CHUNK: u64 = 32;
/// Pages per round of the migrate commands (`PTRS_PER_PTE`: a whole THP
/// fits in one round).
pub const MIGRATE_CHUNK: u64 = 512;
/// `HMM_DMIRROR_FLAG_FAIL_ALLOC`: the next device or system page
/// allocation of a migration (or of a device THP's fault back to RAM)
/// fails, once; a THP then falls back to small pages.
pub const FLAG_FAIL_ALLOC: u64 = 1 << 0;

const DEV_VALID: u64 = 1 << 63;
const DEV_WRITE: u64 = 1 << 62;
const DEV_ATOMIC: u64 = 1 << 61;
const DEV_PFN: u64 = (1 << 53) - 1;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(0x0d3_0000);

/// `struct hmm_dmirror_cmd`: the ioctl argument. `buf` is the user memory
/// `ptr` points at (READ, MIGRATE_TO_DEV and EXCLUSIVE output, WRITE input,
/// SNAPSHOT output bytes): the device copies to and from it as
/// `copy_to_user` / `copy_from_user` would, and whatever lies beyond its
/// end is unmapped, so an empty `buf` is a bad `ptr` (`-EFAULT` where the
/// command touches it). The device never resizes it.
///
/// As with the ioctl, `cpages` and `faults` are written back only when the
/// command succeeds; a failing command leaves them as they were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmd {
    /// Start address (page aligned).
    pub addr: u64,
    /// The user buffer.
    pub buf: Vec<u8>,
    /// Pages.
    pub npages: u64,
    /// Out: pages processed.
    pub cpages: u64,
    /// Out: device fault passes.
    pub faults: u64,
}

impl Cmd {
    /// A command over `npages` pages at `addr` with a zeroed buffer of
    /// `npages` pages.
    ///
    /// # Panics
    ///
    /// If the buffer cannot be allocated; build a command with a buffer of
    /// your choice with [`Cmd::with_buf`].
    pub fn new(addr: u64, npages: u64) -> Self {
        let len = npages
            .checked_mul(PAGE_SIZE)
            .and_then(|l| usize::try_from(l).ok())
            .expect("buffer size fits in memory");
        Cmd::with_buf(addr, npages, vec![0; len])
    }

    /// A command over `npages` pages at `addr` whose user buffer is `buf`
    /// (for a SNAPSHOT, one byte per page as `hmm-tests.c` allocates it).
    pub fn with_buf(addr: u64, npages: u64, buf: Vec<u8>) -> Self {
        Cmd {
            addr,
            buf,
            npages,
            cpages: 0,
            faults: 0,
        }
    }

    /// The buffer as native-endian `i32`s.
    pub fn i32s(&self) -> Vec<i32> {
        self.buf
            .chunks_exact(4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Fill the buffer from `i32`s.
    pub fn set_i32s(&mut self, v: &[i32]) {
        self.buf = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
    }
}

/// The device page table: VA page → tagged PFN, in 512-entry blocks.
#[derive(Debug, Default)]
struct DevPt {
    blocks: BTreeMap<u64, Box<[u64; 512]>>,
    entries: u64,
}

impl DevPt {
    fn get(&self, va: u64) -> u64 {
        let p = va >> PAGE_SHIFT;
        self.blocks
            .get(&(p >> 9))
            .map_or(0, |b| b[(p & 511) as usize])
    }
    fn set(&mut self, va: u64, e: u64) {
        let p = va >> PAGE_SHIFT;
        let b = self
            .blocks
            .entry(p >> 9)
            .or_insert_with(|| Box::new([0; 512]));
        let slot = &mut b[(p & 511) as usize];
        if *slot == 0 && e != 0 {
            self.entries += 1;
        } else if *slot != 0 && e == 0 {
            self.entries -= 1;
        }
        *slot = e;
    }
    fn erase(&mut self, start: u64, end: u64) {
        let (ps, pe) = (start >> PAGE_SHIFT, end.div_ceil(PAGE_SIZE));
        let keys: Vec<u64> = self
            .blocks
            .range(ps >> 9..=(pe.saturating_sub(1)) >> 9)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let Some(b) = self.blocks.get_mut(&k) else {
                continue;
            };
            let mut live = 0;
            for (i, e) in b.iter_mut().enumerate() {
                let p = (k << 9) | i as u64;
                if p >= ps && p < pe && *e != 0 {
                    *e = 0;
                    self.entries -= 1;
                }
                live += u64::from(*e != 0);
            }
            if live == 0 {
                self.blocks.remove(&k);
            }
        }
    }
    /// Whether an entry of `[start, end)` is tagged ATOMIC, looking at the
    /// existing entries only.
    fn any_atomic(&self, start: u64, end: u64) -> bool {
        let (ps, pe) = (start >> PAGE_SHIFT, end.div_ceil(PAGE_SIZE));
        if ps >= pe {
            return false;
        }
        self.blocks.range(ps >> 9..=(pe - 1) >> 9).any(|(k, b)| {
            b.iter().enumerate().any(|(i, e)| {
                let p = (k << 9) | i as u64;
                p >= ps && p < pe && e & DEV_ATOMIC != 0
            })
        })
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.blocks.iter().flat_map(|(k, b)| {
            b.iter()
                .enumerate()
                .filter(|(_, e)| **e != 0)
                .map(move |(i, e)| (((k << 9) | i as u64) << PAGE_SHIFT, *e))
        })
    }
}

/// One device-page-table entry, as tests inspect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevEntry {
    /// Virtual address of the page.
    pub addr: u64,
    /// The PFN the device maps.
    pub pfn: u64,
    /// Tagged WRITE.
    pub write: bool,
    /// Tagged ATOMIC (device-exclusive).
    pub atomic: bool,
}

struct DeviceInner {
    owner: u64,
    machine: Arc<Machine>,
    mirrors: Mutex<Vec<Weak<MirrorInner>>>,
}

/// A dmirror device with its device-private memory.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Pagemap for DeviceInner {
    fn owner(&self) -> u64 {
        self.owner
    }

    fn migrated_to_ram(&self, mm_id: u64, addr: u64, dev_pfn: u64) {
        let mirrors: Vec<Arc<MirrorInner>> = self
            .mirrors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for m in mirrors.iter().filter(|m| m.mm.id() == mm_id) {
            let mut pt = m.pt();
            if pt.get(addr) & DEV_PFN == dev_pfn {
                pt.set(addr, 0);
            }
        }
    }

    fn fail_huge_alloc(&self, mm_id: u64) -> bool {
        let mirrors: Vec<Arc<MirrorInner>> = self
            .mirrors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        mirrors
            .iter()
            .filter(|m| m.mm.id() == mm_id)
            .any(|m| m.take_fail_alloc())
    }
}

impl Device {
    /// A new device on `machine` with its own device-private memory.
    pub fn new(machine: &Arc<Machine>) -> Device {
        let inner = Arc::new(DeviceInner {
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            machine: machine.clone(),
            mirrors: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn Pagemap> = Arc::downgrade(&inner) as Weak<dyn Pagemap>;
        machine.register_pagemap(weak, inner.owner);
        Device { inner }
    }

    /// The pagemap owner token (`dev_private_owner`).
    pub fn owner(&self) -> u64 {
        self.inner.owner
    }

    /// `open("/dev/hmm_dmirrorN")` in the process owning `mm`.
    pub fn open(&self, mm: &Arc<Mm>) -> Mirror {
        let inner = Arc::new(MirrorInner {
            mm: mm.clone(),
            device: self.inner.clone(),
            pt: Mutex::new(DevPt::default()),
            notifier: std::sync::OnceLock::new(),
            flags: AtomicU64::new(0),
        });
        let ops = MirrorOps(Arc::downgrade(&inner));
        let sub = mm
            .notifiers()
            .insert(0, hmm_core::TASK_SIZE + PAGE_SIZE, Box::new(ops));
        let _ = inner.notifier.set(sub);
        self.inner
            .mirrors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&inner));
        Mirror { inner }
    }
}

struct MirrorInner {
    mm: Arc<Mm>,
    device: Arc<DeviceInner>,
    pt: Mutex<DevPt>,
    notifier: std::sync::OnceLock<Arc<IntervalSub>>,
    /// `dmirror->flags` (HMM_DMIRROR_FLAGS).
    flags: AtomicU64,
}

impl MirrorInner {
    fn pt(&self) -> MutexGuard<'_, DevPt> {
        self.pt.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn notifier(&self) -> &Arc<IntervalSub> {
        self.notifier.get().expect("notifier set at open")
    }
    /// Consume a pending [`FLAG_FAIL_ALLOC`]: true if it was set.
    fn take_fail_alloc(&self) -> bool {
        self.flags.fetch_and(!FLAG_FAIL_ALLOC, Ordering::AcqRel) & FLAG_FAIL_ALLOC != 0
    }
}

struct MirrorOps(Weak<MirrorInner>);

impl IntervalOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, range: &InvalidateRange, cur_seq: u64) -> bool {
        let Some(m) = self.0.upgrade() else {
            sub.set_seq(cur_seq);
            return true;
        };
        let mut pt = if range.blockable {
            m.pt()
        } else {
            // Injection: the trylock meets a contended driver lock.
            if m.device.machine.inject.should_refuse_nonblock() {
                return false;
            }
            match m.pt.try_lock() {
                Ok(g) => g,
                Err(_) => return false,
            }
        };
        sub.set_seq(cur_seq);
        // test_hmm ignores its own migrations: they map what they move.
        if !(range.event == Event::Migrate && range.owner == m.device.owner) {
            pt.erase(range.start, range.end);
        }
        true
    }
}

/// The temporary notifier of a SNAPSHOT: it only bumps the sequence.
struct SnapshotOps(Weak<MirrorInner>);

impl IntervalOps for SnapshotOps {
    fn invalidate(&self, sub: &IntervalSub, range: &InvalidateRange, cur_seq: u64) -> bool {
        let Some(m) = self.0.upgrade() else {
            sub.set_seq(cur_seq);
            return true;
        };
        let _pt = if range.blockable {
            m.pt()
        } else {
            match m.pt.try_lock() {
                Ok(g) => g,
                Err(_) => return false,
            }
        };
        sub.set_seq(cur_seq);
        true
    }
}

/// An open mirror of one mm (`struct dmirror`).
pub struct Mirror {
    inner: Arc<MirrorInner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("owner", &self.inner.device.owner)
            .finish()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.inner.notifier().remove();
    }
}

/// The range of a command, checked as `dmirror_fops_unlocked_ioctl` does:
/// `-EINVAL` for an unaligned address or when `addr + (npages <<
/// PAGE_SHIFT)` is not above `addr` (no pages, or the end wraps). The
/// shift is the driver's 64-bit one, so the high bits of a huge count are
/// lost: `npages` 2^52 is 0 pages (`-EINVAL`), and 2^52 + 1 is one page.
fn cmd_range(cmd: &Cmd) -> Result<(u64, u64), Errno> {
    let size = cmd.npages << PAGE_SHIFT;
    let end = cmd.addr.wrapping_add(size);
    if !cmd.addr.is_multiple_of(PAGE_SIZE) || cmd.addr >= end {
        return Err(Errno::EINVAL);
    }
    Ok((cmd.addr, end))
}

/// The end of the driver's next fixed-size chunk from `a`: `min(a +
/// chunk_bytes, end)` in the driver's 64-bit arithmetic, so near the top
/// of the address space it wraps below `a`.
fn chunk_end(a: u64, chunk_bytes: u64, end: u64) -> u64 {
    a.wrapping_add(chunk_bytes).min(end)
}

/// `copy_to_user(ptr + off, src)` into the user memory `buf`: what fits is
/// copied, and `-EFAULT` if not everything did.
fn copy_to_user(buf: &mut [u8], off: u64, src: &[u8]) -> Result<(), Errno> {
    let off = usize::try_from(off).map_or(buf.len(), |o| o.min(buf.len()));
    let n = src.len().min(buf.len() - off);
    buf[off..off + n].copy_from_slice(&src[..n]);
    if n < src.len() {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

/// Largest window of [`Mirror::fault_unlocked`] (a 1 GiB span): larger
/// chunks are split, so the PFN array stays bounded.
pub const MAX_UNLOCKED_CHUNK: u64 = 1 << 18;

/// Stop of a device read or write: the first page without a usable entry.
struct Missing(u64);

impl Mirror {
    /// The mirrored mm.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.inner.mm
    }

    /// The device's owner token.
    pub fn owner(&self) -> u64 {
        self.inner.device.owner
    }

    /// The interval notifier covering the address space.
    pub fn notifier(&self) -> &Arc<IntervalSub> {
        self.inner.notifier()
    }

    /// Entries in the device page table.
    pub fn entries(&self) -> u64 {
        self.inner.pt().entries
    }

    /// The device page-table entry for `addr`, if any.
    pub fn entry(&self, addr: u64) -> Option<DevEntry> {
        let e = self.inner.pt().get(addr & !(PAGE_SIZE - 1));
        (e != 0).then(|| decode_dev(addr & !(PAGE_SIZE - 1), e))
    }

    /// Every device page-table entry in `[start, end)`.
    pub fn entries_in(&self, start: u64, end: u64) -> Vec<DevEntry> {
        self.inner
            .pt()
            .iter()
            .filter(|(a, _)| *a >= start && *a < end)
            .map(|(a, e)| decode_dev(a, e))
            .collect()
    }

    fn frames(&self) -> &crate::frame::Frames {
        &self.inner.device.machine.frames
    }

    /// Device fault of `[start, end)` through Linux's `hmm_range_fault`
    /// (`dmirror_fault`): 64-page chunks, the kernel caller pattern, a
    /// 1000 ms budget per chunk.
    fn fault(&self, task: &Task, start: u64, end: u64, write: bool) -> Result<(), Errno> {
        let mut a = start;
        while a < end {
            let b = chunk_end(a, FAULT_CHUNK * PAGE_SIZE, end);
            if b <= a {
                // The chunk end wrapped: hmm_range_fault on an inverted
                // range (walk_page_range: start >= end).
                return Err(Errno::EINVAL);
            }
            self.range_fault_chunk(task, a, b, write)?;
            a = b;
        }
        Ok(())
    }

    fn range_fault_chunk(
        &self,
        task: &Task,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<(), Errno> {
        let mm = &self.inner.mm;
        let notifier = self.inner.notifier();
        let h = mm.handle(task);
        let env = Env::new(&h, &h);
        let n = ((end - start) >> PAGE_SHIFT) as usize;
        let mut pfns = [0u64; FAULT_CHUNK as usize];
        let mut flags = PfnFlags::REQ_FAULT;
        if write {
            flags |= PfnFlags::REQ_WRITE;
        }
        let deadline = Instant::now() + HMM_RANGE_DEFAULT_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(Errno::EBUSY);
            }
            let mut range = Range::new(start, end, &mut pfns[..n])
                .with_default_flags(flags.bits())
                .with_owner(self.owner())
                .with_notifier(&**notifier);
            range.notifier_seq = notifier.read_begin();
            let g = mm.read(task);
            let out = range_fault(&env, &mut range, g, &mut Stats::default());
            drop(out.guard);
            match out.result {
                Err(Error::Busy) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {}
            }
            let mut pt = self.inner.pt();
            if notifier.read_retry(range.notifier_seq) {
                continue;
            }
            program(&mut pt, start, range.pfns);
            return Ok(());
        }
    }

    /// Fault `[start, end)` into the device through hmm-core's owning,
    /// lock-dropping entry point ([`hmm_core::range_fault_owning_lock`]) in
    /// `chunk`-page pieces, then validate under the driver lock and program
    /// the device. `opts.timeout_ns` also bounds the validation retries.
    /// Statistics accumulate in `stats`. `chunk` is at least 1 and at most
    /// [`MAX_UNLOCKED_CHUNK`]; a chunk whose end wraps past 2^64 is
    /// `-EINVAL`, as an inverted range is.
    #[allow(clippy::too_many_arguments)]
    pub fn fault_unlocked(
        &self,
        task: &Task,
        start: u64,
        end: u64,
        write: bool,
        chunk: u64,
        opts: &Options,
        stats: &mut Stats,
    ) -> Result<(), Errno> {
        let mm = &self.inner.mm;
        let notifier = self.inner.notifier();
        let h = mm.handle(task);
        let clock = MonoClock::new();
        let env = Env::new(&h, &h).with_signals(task).with_clock(&clock);
        let chunk = chunk.clamp(1, MAX_UNLOCKED_CHUNK);
        let pages = if end > start {
            (end - start) >> PAGE_SHIFT
        } else {
            0
        };
        let mut pfns = vec![0u64; chunk.min(pages.max(1)) as usize];
        let mut flags = PfnFlags::REQ_FAULT;
        if write {
            flags |= PfnFlags::REQ_WRITE;
        }
        let mut a = start;
        while a < end {
            let b = chunk_end(a, chunk * PAGE_SIZE, end);
            if b <= a {
                return Err(Errno::EINVAL);
            }
            let n = ((b - a) >> PAGE_SHIFT) as usize;
            let deadline = (opts.timeout_ns != 0)
                .then(|| Instant::now() + Duration::from_nanos(opts.timeout_ns));
            loop {
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Err(Errno::EBUSY);
                }
                let mut range = Range::new(a, b, &mut pfns[..n])
                    .with_request(Request::new(flags.bits(), 0))
                    .with_owner(self.owner())
                    .with_notifier(&**notifier);
                range_fault_owning_lock(&env, &mut range, opts, stats)?;
                let mut pt = self.inner.pt();
                if notifier.read_retry(range.notifier_seq) {
                    continue;
                }
                program(&mut pt, a, range.pfns);
                break;
            }
            a = b;
        }
        Ok(())
    }

    /// `dmirror_do_read`: copy the device's pages of `[from, end)` into
    /// the bounce buffer of a transfer starting at `base` (the part of it
    /// that is kept: see [`Mirror::bounce_init`]), stopping at the first
    /// page the device does not map.
    fn do_read(&self, from: u64, end: u64, base: u64, bounce: &mut [u8]) -> Result<(), Missing> {
        let pt = self.inner.pt();
        let mut a = from;
        while a < end {
            let e = pt.get(a);
            if e == 0 {
                return Err(Missing(a));
            }
            let off = usize::try_from(a - base).unwrap_or(usize::MAX);
            if off < bounce.len() {
                let n = (bounce.len() - off).min(PAGE_SIZE as usize);
                self.frames()
                    .read(e & DEV_PFN, 0, &mut bounce[off..off + n]);
            }
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// `dmirror_bounce_init` for a transfer of `[start, end)`: test_hmm
    /// `vmalloc`s the whole transfer, which fails with `-ENOMEM` beyond the
    /// machine's RAM. The returned buffer holds only the part that can
    /// reach the user's buffer `user_len` bytes long: the rest would be
    /// dropped by the failing `copy_to_user`, so it is not kept.
    fn bounce_init(&self, start: u64, end: u64, user_len: usize) -> Result<Vec<u8>, Errno> {
        let size = end - start;
        if size >> PAGE_SHIFT > self.frames().total_pages() {
            return Err(Errno::ENOMEM);
        }
        let keep = usize::try_from(size).map_or(user_len, |s| s.min(user_len));
        Ok(vec![0; keep])
    }

    /// The end of a successful READ-like command: copy the bounce buffer
    /// of the `[start, end)` transfer to the user (`-EFAULT` if the user's
    /// buffer is shorter) and write back the counts.
    fn finish_read(
        cmd: &mut Cmd,
        start: u64,
        end: u64,
        bounce: &[u8],
        faults: u64,
    ) -> Result<(), Errno> {
        copy_to_user(&mut cmd.buf, 0, bounce)?;
        if (bounce.len() as u64) < end - start {
            return Err(Errno::EFAULT);
        }
        cmd.cpages = (end - start) >> PAGE_SHIFT;
        cmd.faults = faults;
        Ok(())
    }

    /// The read-back of MIGRATE_TO_DEV and EXCLUSIVE: bounce buffer
    /// (`-ENOMEM`), `dmirror_do_read` (`-ENOENT` at the first page the
    /// device does not map), copy to the user (`-EFAULT`).
    fn read_back(&self, cmd: &mut Cmd, start: u64, end: u64) -> Result<(), Errno> {
        let mut bounce = self.bounce_init(start, end, cmd.buf.len())?;
        self.do_read(start, end, start, &mut bounce)
            .map_err(|_| Errno::ENOENT)?;
        Self::finish_read(cmd, start, end, &bounce, 0)
    }

    fn do_write(&self, start: u64, end: u64, bounce: &[u8]) -> Result<(), Missing> {
        let pt = self.inner.pt();
        let mut a = start;
        while a < end {
            let e = pt.get(a);
            if e & DEV_WRITE == 0 {
                return Err(Missing(a));
            }
            let off = (a - start) as usize;
            self.frames()
                .write(e & DEV_PFN, 0, &bounce[off..off + PAGE_SIZE as usize]);
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// `HMM_DMIRROR_READ`: copy the range through the device into
    /// `cmd.buf`, faulting missing pages in with `hmm_range_fault`.
    pub fn read(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        self.read_with(cmd, |m, a, b| m.fault(task, a, b, false))
    }

    /// The seed's `HMM_DMIRROR_READ_UNLOCKED`: READ faulting through the
    /// lock-dropping entry point (32-page chunks, resume policy, no budget
    /// unless `opts` sets one), so userfaultfd-backed ranges work.
    pub fn read_unlocked(
        &self,
        task: &Task,
        cmd: &mut Cmd,
        opts: &Options,
        stats: &mut Stats,
    ) -> Result<(), Errno> {
        self.read_with(cmd, |m, a, b| {
            m.fault_unlocked(task, a, b, false, UNLOCKED_CHUNK, opts, stats)
        })
    }

    fn read_with(
        &self,
        cmd: &mut Cmd,
        mut fault: impl FnMut(&Self, u64, u64) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        let mut bounce = self.bounce_init(start, end, cmd.buf.len())?;
        let mut faults = 0;
        let mut from = start;
        loop {
            match self.do_read(from, end, start, &mut bounce) {
                Ok(()) => break,
                Err(Missing(a)) => {
                    from = a;
                    fault(self, a, end)?;
                    faults += 1;
                }
            }
        }
        Self::finish_read(cmd, start, end, &bounce, faults)
    }

    /// `HMM_DMIRROR_WRITE`: write `cmd.buf` through the device, faulting
    /// with write access.
    pub fn write(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        // The bounce buffer, then copy_from_user of the whole transfer.
        self.bounce_init(start, end, 0)?;
        if (cmd.buf.len() as u64) < end - start {
            return Err(Errno::EFAULT);
        }
        let mut faults = 0;
        let mut from = start;
        loop {
            match self.do_write(from, end, &cmd.buf[(from - start) as usize..]) {
                Ok(()) => break,
                Err(Missing(a)) => {
                    from = a;
                    self.fault(task, a, end, true)?;
                    faults += 1;
                }
            }
        }
        cmd.cpages = (end - start) >> PAGE_SHIFT;
        cmd.faults = faults;
        Ok(())
    }

    /// `HMM_DMIRROR_SNAPSHOT`: one `HMM_DMIRROR_PROT_*` byte per page,
    /// from a no-fault `hmm_range_fault` under a temporary interval notifier
    /// per 64 pages, each chunk copied to `cmd.buf` as it is done (so a
    /// short buffer is `-EFAULT` after the chunks that fit). A chunk whose
    /// end wraps past 2^64 is `-EOVERFLOW` from the notifier insertion, or
    /// `-EINVAL` from `hmm_range_fault` when it ends exactly at 2^64.
    pub fn snapshot(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        let mm = &self.inner.mm;
        let h = mm.handle(task);
        let mut cpages = 0u64;
        let mut a = start;
        while a < end {
            let b = chunk_end(a, FAULT_CHUNK * PAGE_SIZE, end);
            // mmu_interval_notifier_insert(a, b - a): the interval's last
            // byte must not wrap.
            let len = b.wrapping_sub(a);
            if len == 0 || a.checked_add(len - 1).is_none() {
                return Err(Errno::EOVERFLOW);
            }
            if b <= a {
                return Err(Errno::EINVAL);
            }
            let n = ((b - a) >> PAGE_SHIFT) as usize;
            let sub =
                mm.notifiers()
                    .insert(a, b, Box::new(SnapshotOps(Arc::downgrade(&self.inner))));
            let env = Env::new(&h, &h);
            let mut pfns = [0u64; FAULT_CHUNK as usize];
            let deadline = Instant::now() + HMM_RANGE_DEFAULT_TIMEOUT;
            let r = loop {
                if Instant::now() > deadline {
                    break Err(Errno::EBUSY);
                }
                let mut range = Range::new(a, b, &mut pfns[..n])
                    .with_owner(self.owner())
                    .with_notifier(&*sub);
                range.notifier_seq = sub.read_begin();
                let g = mm.read(task);
                let out = range_fault(&env, &mut range, g, &mut Stats::default());
                drop(out.guard);
                match out.result {
                    Err(Error::Busy) => continue,
                    Err(e) => break Err(e.into()),
                    Ok(()) => {}
                }
                let _pt = self.inner.pt();
                if sub.read_retry(range.notifier_seq) {
                    continue;
                }
                let mut perm = [0u8; FAULT_CHUNK as usize];
                for (m, &p) in perm.iter_mut().zip(range.pfns.iter()) {
                    *m = self.mkentry(p);
                }
                break Ok(perm);
            };
            sub.remove();
            copy_to_user(&mut cmd.buf, cpages, &r?[..n])?;
            cpages += n as u64;
            a = b;
        }
        cmd.cpages = cpages;
        cmd.faults = 0;
        Ok(())
    }

    /// `dmirror_mkentry`: the snapshot byte of one HMM PFN word.
    pub fn mkentry(&self, p: u64) -> u8 {
        let e = HmmPfn(p);
        if e.is_error() {
            return PROT_ERROR;
        }
        if !e.is_valid() {
            return PROT_NONE;
        }
        let mut perm = match self.frames().kind(e.pfn()) {
            FrameKind::DevicePrivate(o) if o == self.owner() => PROT_DEV_PRIVATE_LOCAL,
            FrameKind::DevicePrivate(_) => PROT_DEV_PRIVATE_REMOTE,
            FrameKind::System if e.pfn() == ZERO_PFN => PROT_ZERO,
            FrameKind::System => PROT_NONE,
        };
        perm |= if e.is_writable() {
            PROT_WRITE
        } else {
            PROT_READ
        };
        match e.order() {
            9 => perm |= PROT_PMD,
            18 => perm |= PROT_PUD,
            _ => {}
        }
        perm
    }

    /// test_hmm's per-chunk VMA check of the migrate commands: the VMA
    /// containing `a` (`vma_lookup`) must exist and be readable (else
    /// `-EINVAL`); the chunk ends [`MIGRATE_CHUNK`] pages on, at `end` or
    /// at the VMA's end, whichever comes first.
    fn migrate_chunk(&self, a: u64, end: u64) -> Result<u64, Errno> {
        let vmas = self.inner.mm.vmas();
        let v = vmas.lookup(a).ok_or(Errno::EINVAL)?;
        if !v.flags.contains(VmFlags::READ) {
            return Err(Errno::EINVAL);
        }
        Ok(chunk_end(a, MIGRATE_CHUNK * PAGE_SIZE, end).min(v.end))
    }

    /// `dmirror_migrate_finalize_and_map`: map the pages a migration has
    /// just moved into this device, `(addr, device pfn, writable)`. A page
    /// a CPU fault has meanwhile moved back is not mapped, and the device
    /// entry it had before the migration (now stale) is dropped.
    fn map_migrated(&self, moved: &[MovedPage]) {
        let mm = &self.inner.mm;
        let mut pt = self.inner.pt();
        for &(a, dev, write) in moved {
            let (pte, pfn) = mm.pte_at(a);
            if matches!(pte, Pte::DevicePrivate { .. }) && pfn == Some(dev) {
                pt.set(a, DEV_VALID | dev | if write { DEV_WRITE } else { 0 });
            } else {
                pt.set(a, 0);
            }
        }
    }

    /// `HMM_DMIRROR_MIGRATE_TO_DEV`: migrate the range into this device's
    /// private memory chunk by chunk ([`MIGRATE_CHUNK`] pages, within one
    /// VMA, so a whole THP moves as one device THP:
    /// [`Mm::migrate_to_device`] says which pages move), map what moved in
    /// the device, then read the range back into `cmd.buf` (pages the
    /// device already mapped count too). `-EINVAL` at
    /// the first chunk that is unmapped, unreadable, hugetlb or special
    /// (the chunks before it have moved); `-ENOENT` if some page did not
    /// move (page cache, shared memory, a userfaultfd hole, another
    /// device's page).
    ///
    /// [`Mm::migrate_to_device`]: crate::mm::Mm::migrate_to_device
    pub fn migrate_to_dev(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        let mm = &self.inner.mm;
        let owner = self.owner();
        let machine = self.inner.device.machine.clone();
        {
            let g = mm.read(task);
            let mut alloc = |order: u8| {
                if self.inner.take_fail_alloc() {
                    return None;
                }
                machine.alloc(order, FrameKind::DevicePrivate(owner))
            };
            let mut a = start;
            while a < end {
                let b = self.migrate_chunk(a, end)?;
                mm.migrate_to_device(&g, a, b, owner, &mut alloc, &mut |moved| {
                    self.map_migrated(moved)
                })?;
                a = b;
            }
        }
        self.read_back(cmd, start, end)
    }

    /// `HMM_DMIRROR_MIGRATE_TO_SYS`: migrate this device's pages in the
    /// range back to system memory, chunk by chunk as MIGRATE_TO_DEV
    /// (`-EINVAL` at the first chunk without a readable, migratable VMA).
    /// `cmd.cpages` = pages migrated.
    pub fn migrate_to_sys(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        let mm = &self.inner.mm;
        let mut cpages = 0;
        let machine = self.inner.device.machine.clone();
        let mut alloc = |order: u8| {
            if self.inner.take_fail_alloc() {
                return None;
            }
            machine.alloc(order, FrameKind::System)
        };
        let g = mm.read(task);
        let mut a = start;
        while a < end {
            let b = self.migrate_chunk(a, end)?;
            // The pagemap callback drops this device's entries of the
            // pages that move.
            cpages += mm
                .migrate_from_device(&g, a, b, self.owner(), &mut alloc)?
                .len() as u64;
            a = b;
        }
        cmd.cpages = cpages;
        cmd.faults = 0;
        Ok(())
    }

    /// `HMM_DMIRROR_EXCLUSIVE`: take device-exclusive access to every page
    /// (`make_device_exclusive`), map them ATOMIC, and read them back.
    /// `-EBUSY` if some page could not be made exclusive; then the
    /// read-back's errors (`-ENOMEM`, `-ENOENT`, `-EFAULT`).
    pub fn exclusive(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        let mm = &self.inner.mm;
        let notifier = self.inner.notifier();
        let deadline = Instant::now() + HMM_RANGE_DEFAULT_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(Errno::EBUSY);
            }
            let mut taken = Vec::new();
            {
                let mut g = mm.read(task);
                let mut a = start;
                while a < end {
                    let (g2, r) = mm.make_device_exclusive(g, a, self.owner());
                    g = g2;
                    match r {
                        Ok(pfn) => taken.push((a, pfn)),
                        Err(_) => return Err(Errno::EBUSY),
                    }
                    a += PAGE_SIZE;
                }
            }
            // Linux keeps the folios locked until they are mapped, which
            // holds off a CPU fault restoring them. Here a sequence taken
            // after our own invalidations plays that role: a restore that
            // began earlier shows in the entry check below, a later one
            // moves the sequence.
            let seq = notifier.read_begin();
            let mut pt = self.inner.pt();
            if notifier.read_retry(seq) {
                continue;
            }
            let all = taken
                .iter()
                .all(|&(a, pfn)| matches!(mm.pte_at(a).0, Pte::DeviceExclusive { pfn: p, .. } if p == pfn));
            if !all {
                continue;
            }
            for (a, pfn) in taken {
                pt.set(a, DEV_VALID | DEV_ATOMIC | pfn);
            }
            break;
        }
        self.read_back(cmd, start, end)
    }

    /// `HMM_DMIRROR_FLAGS`: set the mirror's flags to `cmd.npages` (after
    /// the ioctl's range check, which every command runs):
    /// [`FLAG_FAIL_ALLOC`] makes the next page allocation of a migration
    /// fail once.
    pub fn set_flags(&self, _task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        cmd_range(cmd)?;
        self.inner.flags.store(cmd.npages, Ordering::SeqCst);
        cmd.cpages = 0;
        cmd.faults = 0;
        Ok(())
    }

    /// `HMM_DMIRROR_RELEASE` (`dmirror_device_remove_chunks`): evict all of
    /// the device's memory back to system RAM, whatever the range (after
    /// the ioctl's range check). Without a reverse map the simulator finds
    /// the device's pages through the mms its mirrors mirror: every VMA of
    /// each is migrated back ([`Mm::migrate_from_device`]); a device page
    /// mapped only by an mm no mirror of this device mirrors (a forked
    /// child's) stays.
    ///
    /// [`Mm::migrate_from_device`]: crate::mm::Mm::migrate_from_device
    pub fn release(&self, task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        cmd_range(cmd)?;
        let dev = &self.inner.device;
        let mut mms: Vec<Arc<Mm>> = Vec::new();
        for m in dev
            .mirrors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
        {
            if !mms.iter().any(|x| Arc::ptr_eq(x, &m.mm)) {
                mms.push(m.mm.clone());
            }
        }
        let machine = dev.machine.clone();
        for mm in mms {
            let g = mm.read(task);
            for v in mm.vma_list() {
                // migrate_vma refuses hugetlb and special VMAs: they hold
                // no device pages.
                let _ = mm.migrate_from_device(&g, v.start, v.end, dev.owner, &mut |order| {
                    machine.alloc(order, FrameKind::System)
                });
            }
        }
        cmd.cpages = 0;
        cmd.faults = 0;
        Ok(())
    }

    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`: `-EPERM` if a page of the range is
    /// still mapped ATOMIC (CPU access did not revoke exclusivity). Only
    /// the existing device entries are looked at, so any range is quick.
    pub fn check_exclusive(&self, _task: &Task, cmd: &mut Cmd) -> Result<(), Errno> {
        let (start, end) = cmd_range(cmd)?;
        if self.inner.pt().any_atomic(start, end) {
            return Err(Errno::EPERM);
        }
        cmd.cpages = 0;
        cmd.faults = 0;
        Ok(())
    }

    /// Check the device page table against the CPU page tables, holding the
    /// mmap read lock and the driver lock: every device entry must map the
    /// same PFN as the CPU (device-private entries the same device page,
    /// ATOMIC entries a device-exclusive entry of that page), and a WRITE
    /// entry needs a writable CPU mapping. Returns the entries checked.
    pub fn check_coherent(&self, task: &Task) -> Result<u64, String> {
        let mm = &self.inner.mm;
        let _g = mm.read(task);
        let pt = self.inner.pt();
        let mut n = 0;
        for (a, e) in pt.iter() {
            let d = decode_dev(a, e);
            let (pte, pfn) = mm.pte_at(a);
            let ok = match pte {
                Pte::Present { write, .. } => {
                    !d.atomic && pfn == Some(d.pfn) && (!d.write || write)
                }
                Pte::DevicePrivate { write, .. } => {
                    !d.atomic && pfn == Some(d.pfn) && (!d.write || write)
                }
                Pte::DeviceExclusive { pfn: p, .. } => d.atomic && p == d.pfn,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "device entry {d:x?} at {a:#x} does not match the CPU entry {pte:x?}"
                ));
            }
            n += 1;
        }
        Ok(n)
    }
}

fn decode_dev(addr: u64, e: u64) -> DevEntry {
    DevEntry {
        addr,
        pfn: e & DEV_PFN,
        write: e & DEV_WRITE != 0,
        atomic: e & DEV_ATOMIC != 0,
    }
}

/// `dmirror_do_fault`: store the faulted PFNs in the device page table.
fn program(pt: &mut DevPt, start: u64, pfns: &[u64]) {
    for (i, &p) in pfns.iter().enumerate() {
        let e = HmmPfn(p);
        // The request demanded VALID; the kernel driver WARNs otherwise.
        debug_assert!(e.is_valid() && !e.is_error(), "entry {p:#x} not valid");
        if !e.is_valid() || e.is_error() {
            continue;
        }
        let w = if e.is_writable() { DEV_WRITE } else { 0 };
        pt.set(start + i as u64 * PAGE_SIZE, DEV_VALID | w | e.pfn());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_entries_are_found_without_visiting_every_page() {
        let mut pt = DevPt::default();
        let a = 0x10_0000_0000u64;
        pt.set(a, DEV_VALID | DEV_ATOMIC | 7);
        pt.set(a + PAGE_SIZE, DEV_VALID | 8);
        assert!(pt.any_atomic(0, !(PAGE_SIZE - 1)));
        assert!(pt.any_atomic(a, a + PAGE_SIZE));
        assert!(!pt.any_atomic(a + PAGE_SIZE, !(PAGE_SIZE - 1)));
        assert!(!pt.any_atomic(0, a));
        assert!(!pt.any_atomic(a, a));
    }

    #[test]
    fn command_ranges_follow_the_driver_arithmetic() {
        let r = |addr, npages| cmd_range(&Cmd::with_buf(addr, npages, Vec::new()));
        assert_eq!(r(0x1000, 1), Ok((0x1000, 0x2000)));
        assert_eq!(r(0x1001, 1), Err(Errno::EINVAL));
        assert_eq!(r(0x1000, 0), Err(Errno::EINVAL));
        // The shift drops the count's high bits.
        assert_eq!(r(0x1000, 1 << 52), Err(Errno::EINVAL));
        assert_eq!(r(0x1000, (1 << 52) + 2), Ok((0x1000, 0x3000)));
        assert_eq!(r(0x1000, u64::MAX), Err(Errno::EINVAL));
        assert_eq!(r(0, u64::MAX), Ok((0, 0u64.wrapping_sub(PAGE_SIZE))));
        assert_eq!(r(0u64.wrapping_sub(PAGE_SIZE), 1), Err(Errno::EINVAL));
        assert_eq!(
            chunk_end(0xffff_ffff_ffff_0000, 64 * PAGE_SIZE, u64::MAX),
            0x3_0000
        );
    }

    #[test]
    fn copy_to_user_copies_what_fits() {
        let mut buf = vec![0u8; 6];
        assert_eq!(copy_to_user(&mut buf, 2, &[1, 2, 3]), Ok(()));
        assert_eq!(copy_to_user(&mut buf, 4, &[4, 5, 6]), Err(Errno::EFAULT));
        assert_eq!(buf, [0, 0, 1, 2, 4, 5]);
        assert_eq!(copy_to_user(&mut buf, u64::MAX, &[9]), Err(Errno::EFAULT));
        assert_eq!(copy_to_user(&mut [], 0, &[]), Ok(()));
    }

    #[test]
    fn device_page_table_set_erase_iter() {
        let mut pt = DevPt::default();
        for i in 0..1030u64 {
            pt.set(0x1000_0000 + i * PAGE_SIZE, DEV_VALID | i);
        }
        assert_eq!(pt.entries, 1030);
        pt.erase(0x1000_0000 + 10 * PAGE_SIZE, 0x1000_0000 + 1025 * PAGE_SIZE);
        assert_eq!(pt.entries, 15);
        let got: Vec<u64> = pt.iter().map(|(_, e)| e & DEV_PFN).collect();
        let want: Vec<u64> = (0..10).chain(1025..1030).collect();
        assert_eq!(got, want);
        pt.erase(0, !(PAGE_SIZE - 1));
        assert_eq!((pt.entries, pt.blocks.len()), (0, 0));
    }
}
