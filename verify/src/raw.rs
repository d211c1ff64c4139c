//! Raw-input checks: `hmm_core` driven by arbitrary bytes, with an
//! environment that misbehaves.
//!
//! The recipe-based checks ([`check`](crate::check)) only ever build
//! well-formed requests over a well-behaved address space. The checks here
//! take a plain byte string instead and read *everything* from it:
//!
//! * the range: start, end and array length (mostly near-valid, sometimes
//!   raw 64-bit values), the address-space limit, `default_flags`,
//!   `pfn_flags_mask`, the per-page input words, the device-private owner,
//!   the walk cursor;
//! * the entry point and its [`Options`] (policy, budget, no-wait), and the
//!   caller's [`Stats`] / [`WalkCounters`], which may start near
//!   `u64::MAX`;
//! * a script that the environment ([`RawMm`]) consumes one answer at a
//!   time: VMAs from `find_vma` that may lie below the address, start above
//!   it, be empty, unaligned or huge, and change from call to call; leaf
//!   spans that may be out of order, overlapping, unaligned, outside the
//!   requested window, too short, or keep coming after the walker said
//!   stop; PTE batches through `LeafSink::ptes`, mixed with those spans,
//!   that may likewise start anywhere (at the cursor, over pages already
//!   reported, below or above the window, a raw address), be empty or
//!   longer than the window, keep coming after a `Break`, and be read with
//!   a `PteFormat` ([`RawFormat`]) whose `plain` adds junk bits or answers
//!   `Some` for words that are not plain, and whose `leaf` disagrees with
//!   `plain`; faults that claim to be done without changing anything, fail,
//!   drop the lock when they may not, or would block; notifiers, signals and
//!   a clock that answer anything.
//!
//! Whatever the bytes, [`check_walk`] and [`check_driver`] require: no panic;
//! no hang (the environment counts its calls and panics once the driver
//! keeps calling after the script is exhausted, when every answer is the
//! quiet one: no VMA, no span, a failing fault, no signal, no invalidation);
//! `-EINVAL` exactly for an invalid range, with nothing written; only the
//! errno values the entry point documents, each only when its cause
//! occurred; entries outside the range never written (guard words around
//! the array); the sticky DMA bits of every entry kept; the partial-output
//! contract at a walk stop; every requested entry `VALID` (and `WRITE`) on
//! success; the lock held on return exactly as the entry point promises;
//! `TRIED` on exactly the retries; the fault flags of the mode; counters
//! that saturate instead of overflowing, with exact counts otherwise; and
//! (tracked by the environment while the walker has taken every item whole,
//! see [`Refusal`]) a span or batch that does not start at the walker's
//! cursor, or reaches past the window, answered with `Break`, never
//! `Continue`; for the walk, `-EFAULT` then and nothing written from the
//! cursor on (for a batch that starts at the cursor: from the window's end
//! on, and any stop inside the window instead of `-EFAULT`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

use hmm_core::{
    range_fault, range_fault_may_unlock, range_fault_owning_lock, Clock, Env, Error, FaultFlags,
    FaultHandler, FaultOutcome, IntervalNotifier, Leaf, LeafSink, MmView, MmapLock, Options,
    PfnFlags, Policy, Present, PteFormat, Range, Request, Signals, Stats, VmFaultError, VmFlags,
    Vma, WalkCounters, WalkStop, PAGE_SIZE, TASK_SIZE,
};

const V: u64 = PfnFlags::VALID.bits();
const W: u64 = PfnFlags::WRITE.bits();
const STICKY: u64 = PfnFlags::INOUT.bits();
/// Value of the guard words around the PFN array.
pub const GUARD_WORD: u64 = 0xdead_beef_0bad_f00d;
/// Extra environment calls allowed once the script is exhausted.
const QUIET_CALLS: u64 = 256;

/// A byte reader that yields zeros once exhausted.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: Cell<usize>,
}

impl<'a> Bytes<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes {
            data,
            pos: Cell::new(0),
        }
    }
    /// Whether every byte has been read.
    pub fn exhausted(&self) -> bool {
        self.pos.get() >= self.data.len()
    }
    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.get().min(self.data.len())..]
    }
    /// The next byte, or 0.
    pub fn u8(&self) -> u8 {
        let p = self.pos.get();
        self.pos.set(p.saturating_add(1));
        self.data.get(p).copied().unwrap_or(0)
    }
    /// The next little-endian `u16`.
    pub fn u16(&self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    /// The next little-endian `u64`.
    pub fn u64(&self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
}

/// Which entry point a driver case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `range_fault`.
    Linux,
    /// `range_fault_may_unlock`.
    Unlockable,
    /// `range_fault_owning_lock`.
    Unlocked,
}

/// The request half of a raw case, read from the header bytes.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Range start.
    pub start: u64,
    /// Range end.
    pub end: u64,
    /// Length of the PFN array.
    pub len: usize,
    /// Guard words before the array.
    pub pre: usize,
    /// Guard words after the array.
    pub post: usize,
    /// The address-space limit the lock reports.
    pub limit: u64,
    /// `default_flags` and `pfn_flags_mask`.
    pub request: Request,
    /// Input words, cycled over the array.
    pub words: Vec<u64>,
    /// Device-private owner.
    pub owner: Option<u64>,
    /// Walk cursor (walk target only).
    pub from: u64,
    /// Entry point (driver target only).
    pub entry: Entry,
    /// Options (driver target only).
    pub opts: Options,
    /// The caller's initial statistics.
    pub stats: Stats,
    /// The caller's notifier sequence for the locked entry points.
    pub seq: u64,
}

fn pick_flags(b: &Bytes<'_>) -> u64 {
    match b.u8() % 6 {
        0 => 0,
        1 => V,
        2 => V | W,
        3 => W,
        4 => u64::MAX,
        _ => b.u64(),
    }
}

fn stat_value(sel: u8, b: &Bytes<'_>) -> u64 {
    match sel % 4 {
        0 | 1 => 0,
        2 => u64::MAX - u64::from(b.u8() % 4),
        _ => b.u64(),
    }
}

impl RawRequest {
    /// Read a request from the front of `b`.
    pub fn read(b: &Bytes<'_>) -> Self {
        let shape = b.u8();
        let (start, end, len) = if shape.is_multiple_of(8) {
            let (s, e) = (b.u64(), b.u64());
            (s, e, usize::from(b.u16() % 1024))
        } else {
            let base = match b.u8() % 12 {
                0 => 0,
                1 => PAGE_SIZE,
                2 => TASK_SIZE - 320 * PAGE_SIZE,
                3 => 1 << 47,
                4 => u64::MAX - 64 * PAGE_SIZE + 1,
                5 => b.u64() & !(PAGE_SIZE - 1),
                6 | 7 => (b.u64() % (1 << 46)) & !(PAGE_SIZE - 1),
                _ => 0x40_0000_0000,
            };
            let start = base.wrapping_add(u64::from(b.u8()) * PAGE_SIZE);
            let npages = if shape % 8 == 7 {
                1 + u64::from(b.u16() % 1024)
            } else {
                1 + u64::from(b.u8() % 64)
            };
            let end = start.wrapping_add(npages * PAGE_SIZE);
            let n = npages as usize;
            let len = match shape >> 4 {
                14 => n + 1,
                15 => n - 1,
                _ => n,
            };
            (start, end, len)
        };
        let limit = match b.u8() % 8 {
            6 => u64::MAX,
            7 => b.u64(),
            _ => TASK_SIZE,
        };
        let request = Request::new(pick_flags(b), pick_flags(b));
        let nwords = usize::from(b.u8() % 8);
        let words = (0..nwords)
            .map(|_| match b.u8() % 4 {
                0 => 0,
                1 => V,
                2 => V | W | STICKY,
                _ => b.u64(),
            })
            .collect();
        let owner = match b.u8() % 4 {
            0 => None,
            1 => Some(0xa),
            2 => Some(0xb),
            _ => Some(b.u64()),
        };
        let fsel = b.u8();
        let from = match fsel % 8 {
            0..=3 => start,
            4 | 5 => start.wrapping_add(u64::from(fsel >> 3) * PAGE_SIZE),
            6 => end,
            _ => b.u64(),
        };
        let esel = b.u8();
        let entry = match esel % 3 {
            0 => Entry::Linux,
            1 => Entry::Unlockable,
            _ => Entry::Unlocked,
        };
        let policy = if esel & 4 != 0 {
            Policy::Restart
        } else {
            Policy::Resume
        };
        let timeout_ns = match (esel >> 3) % 4 {
            0 | 1 => 0,
            2 => u64::from(b.u8()) * 1_000_000,
            _ => b.u64(),
        };
        let opts = Options {
            policy,
            timeout_ns,
            nowait: esel & 0x20 != 0,
        };
        let ssel = b.u8();
        let stats = Stats {
            walks: stat_value(ssel, b),
            pages_filled: stat_value(ssel >> 2, b),
            leaves: stat_value(ssel >> 4, b),
            faults: stat_value(ssel >> 6, b),
            tried_faults: stat_value(ssel, b),
            lock_drops: stat_value(ssel >> 1, b),
            resumes: stat_value(ssel >> 3, b),
            restarts: stat_value(ssel >> 5, b),
            migration_waits: stat_value(ssel >> 7, b),
        };
        let g = b.u8();
        RawRequest {
            start,
            end,
            len,
            pre: usize::from(g % 4),
            post: usize::from((g >> 2) % 4),
            limit,
            request,
            words,
            owner,
            from,
            entry,
            opts,
            stats,
            seq: b.u64(),
        }
    }

    /// Whether the range is valid for a limit: page aligned,
    /// `start < end <= limit`, one entry per page (restated, not
    /// `Range::validate`).
    pub fn valid(&self, limit: u64) -> bool {
        self.start.is_multiple_of(PAGE_SIZE)
            && self.end.is_multiple_of(PAGE_SIZE)
            && self.start < self.end
            && self.end <= limit
            && (self.end - self.start) / PAGE_SIZE == self.len as u64
    }

    /// The input array with its guard words.
    pub fn buffer(&self) -> Vec<u64> {
        let mut buf = vec![GUARD_WORD; self.pre + self.len + self.post];
        for i in 0..self.len {
            buf[self.pre + i] = if self.words.is_empty() {
                0
            } else {
                self.words[i % self.words.len()]
            };
        }
        buf
    }

    /// The request word of input entry `w` (`(w & mask) | default`).
    pub fn req(&self, w: u64) -> u64 {
        (w & self.request.pfn_flags_mask) | self.request.default_flags
    }

    /// The range over `buf` (its middle part).
    pub fn range<'p>(&self, buf: &'p mut [u64]) -> Range<'p> {
        let mut r = Range::new(
            self.start,
            self.end,
            &mut buf[self.pre..self.pre + self.len],
        )
        .with_request(self.request);
        r.dev_private_owner = self.owner;
        r.notifier_seq = self.seq;
        r
    }
}

/// One fault the environment saw.
#[derive(Debug, Clone, Copy)]
pub struct SeenFault {
    /// Address.
    pub addr: u64,
    /// Flags.
    pub flags: FaultFlags,
    /// Whether it answered `Retry`.
    pub retry: bool,
    /// Whether it dropped the lock (`Retry` or `Completed`).
    pub dropped: bool,
    /// `read_begin` calls before it.
    pub begins: u64,
}

/// What the environment observed, for the checks.
#[derive(Debug, Default)]
pub struct Log {
    /// Environment calls.
    pub calls: u64,
    /// Protocol violations seen from inside the environment.
    pub violations: Vec<String>,
    /// Every fault.
    pub faults: Vec<SeenFault>,
    /// Migration waits.
    pub migration_waits: u64,
    /// `find_vma` calls.
    pub find_vma: u64,
    /// `read_begin` calls and the last value returned.
    pub begins: u64,
    /// Last `read_begin` value.
    pub last_seq: Option<u64>,
    /// `check_retry` answered true at least once.
    pub invalidated: bool,
    /// A fatal signal was reported, or `read_killable` failed.
    pub signalled: bool,
    /// Fault errors answered.
    pub fault_errors: Vec<VmFaultError>,
    /// A fault answered `WouldBlock`.
    pub would_block: bool,
    /// Pages reported as device-private of the range's owner.
    pub own_device_private: BTreeSet<u64>,
    /// PTE batches handed to the walker (`LeafSink::ptes` calls), and the
    /// words in them.
    pub batches: u64,
    /// Words in those batches.
    pub batch_words: u64,
    /// Spans and batches handed over after the walker answered `Break`.
    pub after_break: u64,
    /// The first span or batch the walker had to refuse.
    pub refusal: Option<Refusal>,
}

/// A span or batch the walker must refuse: one that does not start at its
/// cursor, is empty, unaligned or reaches past the window (a batch that
/// starts at the cursor is taken up to the window's end first).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The item, for messages.
    pub what: String,
    /// The walker's cursor when it came.
    pub cursor: u64,
    /// Entries from here on must stay untouched.
    pub writable_to: u64,
    /// The walk must end in `-EFAULT` (otherwise: anything but `Done`, as
    /// a batch taken up to the window's end may stop legitimately first).
    pub exact: bool,
}

/// One item of a page-table script, for [`Expect`].
#[derive(Debug, Clone, Copy)]
enum Item {
    /// A span `[a, e)` through `LeafSink::leaf` (or `walk_leaves`).
    Span(u64, u64),
    /// `n` PTE words from `a` through `LeafSink::ptes`.
    Batch(u64, u64),
}

/// The walker's cursor as the script sees it, while every item so far was
/// taken whole: which items the walker must refuse, and that it does.
struct Expect {
    cursor: Option<u64>,
    end: u64,
}

impl Expect {
    fn new(start: u64, end: u64) -> Self {
        Expect {
            cursor: Some(start),
            end,
        }
    }

    /// The refusal `item` calls for, if the walker still has a cursor.
    fn refusal(&self, item: Item) -> Option<Refusal> {
        let cur = self.cursor?;
        let what = format!("{item:x?} at cursor {cur:#x}, window end {:#x}", self.end);
        let refuse = |writable_to, exact| {
            Some(Refusal {
                what: what.clone(),
                cursor: cur,
                writable_to,
                exact,
            })
        };
        match item {
            Item::Span(a, e) => {
                if a != cur || e <= a || e > self.end || !e.is_multiple_of(PAGE_SIZE) {
                    return refuse(cur, true);
                }
                None
            }
            Item::Batch(_, 0) => None,
            Item::Batch(a, _) if a != cur => refuse(cur, true),
            Item::Batch(_, n) => {
                if n > self.end.saturating_sub(cur) / PAGE_SIZE {
                    return refuse(self.end, false);
                }
                None
            }
        }
    }

    /// The walker answered `flow` to `item`.
    fn after(&mut self, mm: &RawMm<'_>, item: Item, flow: ControlFlow<()>) {
        let Some(cur) = self.cursor else {
            return;
        };
        if let Some(r) = self.refusal(item) {
            if flow.is_continue() {
                mm.violation(format!("the walker took {}", r.what));
            }
            mm.log.borrow_mut().refusal.get_or_insert(r);
            self.cursor = None;
            return;
        }
        self.cursor = match (flow, item) {
            (ControlFlow::Break(()), _) => None,
            (_, Item::Span(_, e)) => Some(e),
            (_, Item::Batch(a, n)) => Some(if n == 0 { cur } else { a + n * PAGE_SIZE }),
        };
    }
}

/// The misbehaving environment: every trait of `hmm_core`, answering from a
/// script.
#[derive(Debug)]
pub struct RawMm<'a> {
    script: Bytes<'a>,
    script_len: u64,
    window: (u64, u64),
    owner: Option<u64>,
    limit: u64,
    readers: Cell<u32>,
    clock: Cell<u64>,
    /// What happened.
    pub log: RefCell<Log>,
}

/// A read guard of [`RawMm`].
#[derive(Debug)]
pub struct RawGuard<'m, 'a> {
    mm: &'m RawMm<'a>,
}

impl Drop for RawGuard<'_, '_> {
    fn drop(&mut self) {
        self.mm.readers.set(self.mm.readers.get().saturating_sub(1));
    }
}

impl<'a> RawMm<'a> {
    /// An environment answering from `script`, for a range over `window`.
    pub fn new(script: &'a [u8], window: (u64, u64), owner: Option<u64>, limit: u64) -> Self {
        RawMm {
            script: Bytes::new(script),
            script_len: script.len() as u64,
            window,
            owner,
            limit,
            readers: Cell::new(0),
            clock: Cell::new(0),
            log: RefCell::new(Log::default()),
        }
    }

    /// Readers currently holding the lock.
    pub fn readers(&self) -> u32 {
        self.readers.get()
    }

    /// Count a call; panic if the caller keeps calling long after the
    /// script ran out (every answer since then was the quiet one, which
    /// ends any correct driver within a few calls).
    fn call(&self) -> &Bytes<'a> {
        let mut log = self.log.borrow_mut();
        log.calls += 1;
        assert!(
            log.calls <= self.script_len + QUIET_CALLS,
            "hang: {} environment calls for a {}-byte script",
            log.calls,
            self.script_len
        );
        &self.script
    }

    fn violation(&self, what: String) {
        self.log.borrow_mut().violations.push(what);
    }

    fn guard(&self) -> RawGuard<'_, 'a> {
        if self.readers.get() != 0 {
            self.violation("mmap lock taken twice".into());
        }
        self.readers.set(self.readers.get() + 1);
        RawGuard { mm: self }
    }

    fn pages(&self, b: &Bytes<'_>) -> u64 {
        u64::from(b.u8()) * PAGE_SIZE
    }

    fn vma_flags(b: &Bytes<'_>) -> (VmFlags, u8) {
        let rw = VmFlags::READ | VmFlags::WRITE;
        match b.u8() % 10 {
            0 | 1 => (rw, 0),
            2 => (VmFlags::READ, 0),
            3 => (VmFlags::WRITE, 0),
            4 => (rw | VmFlags::IO, 0),
            5 => (rw | VmFlags::PFNMAP, 0),
            6 => (rw | VmFlags::MIXEDMAP, 0),
            7 => (rw | VmFlags::HUGETLB, 9),
            8 => (VmFlags::READ | VmFlags::HUGETLB, 18),
            _ => (VmFlags::from_bits_truncate(b.u64()), b.u8()),
        }
    }

    fn leaf(&self, b: &Bytes<'_>) -> Leaf {
        let k = b.u8();
        let pfn = match (k >> 4) % 4 {
            0 => u64::from(b.u8()) << 9,
            1 => 0x1000 + u64::from(b.u16()),
            2 => u64::MAX,
            _ => b.u64(),
        };
        let order = match (k >> 6) % 4 {
            0 | 1 => 0,
            2 => [9, 18][usize::from(b.u8() % 2)],
            _ => b.u8(),
        };
        match k % 10 {
            0 => Leaf::Hole,
            1 => Leaf::EmptyPtes,
            2..=4 => {
                let f = b.u8();
                Leaf::Present(Present {
                    pfn,
                    order,
                    write: f & 1 != 0,
                    protnone: f & 2 != 0,
                    special: f & 4 != 0,
                    zero: f & 8 != 0,
                })
            }
            5 => Leaf::Swap,
            6 => {
                let f = b.u8();
                let owner = match f % 3 {
                    0 => self.owner.unwrap_or(0xa),
                    1 => 0xb,
                    _ => b.u64(),
                };
                Leaf::DevicePrivate {
                    owner,
                    pfn,
                    write: f & 8 != 0,
                    order,
                }
            }
            7 => Leaf::DeviceExclusive,
            8 => Leaf::Migration,
            _ => [Leaf::HwPoison, Leaf::Bad][usize::from(b.u8() % 2)],
        }
    }
}

impl MmapLock for RawMm<'_> {
    type Guard<'g>
        = RawGuard<'g, 'g>
    where
        Self: 'g;

    fn read(&self) -> RawGuard<'_, '_> {
        self.guard()
    }

    fn read_killable(&self) -> Result<RawGuard<'_, '_>, Error> {
        if self.call().u8() % 16 == 15 {
            self.log.borrow_mut().signalled = true;
            return Err(Error::Intr);
        }
        Ok(self.guard())
    }

    fn address_limit(&self) -> u64 {
        self.limit
    }
}

impl MmView for RawGuard<'_, '_> {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        let mm = self.mm;
        let b = mm.call();
        mm.log.borrow_mut().find_vma += 1;
        let sel = b.u8();
        let (flags, order) = RawMm::vma_flags(b);
        let (start, end) = match sel % 16 {
            0 => return None,
            1..=7 => {
                let s = addr.saturating_sub(mm.pages(b));
                let e = match b.u8() % 4 {
                    0 => mm.window.1,
                    1 => u64::MAX,
                    _ => addr.saturating_add(PAGE_SIZE + mm.pages(b)),
                };
                (s, e.max(addr.saturating_add(PAGE_SIZE)))
            }
            8 | 9 => {
                // A gap: the next VMA starts above addr.
                let s = addr.saturating_add(PAGE_SIZE + mm.pages(b));
                (s, s.saturating_add(PAGE_SIZE + mm.pages(b)))
            }
            10 => (addr.saturating_sub(2 * PAGE_SIZE), addr),
            11 => (addr, addr.saturating_sub(mm.pages(b))),
            12 => {
                let s = addr.saturating_sub(u64::from(b.u16()));
                (s, addr.saturating_add(u64::from(b.u16())))
            }
            13 => (0, u64::MAX),
            _ => (b.u64(), b.u64()),
        };
        Some(Vma::new(start, end, flags, order))
    }

    fn walk_leaves<F>(&self, vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let mm = self.mm;
        mm.check_walk_window(vma, start, end);
        let b = mm.call();
        let nspans = b.u8();
        let ignore_break = nspans & 0x80 != 0;
        let (mut cur, mut prev) = (start, start);
        let mut expect = Expect::new(start, end);
        let count = match nspans & 0x7f {
            0 => 0,
            n => 1 + n % 8,
        };
        for _ in 0..count {
            mm.call();
            let (a, e) = mm.span(b, b.u8(), cur, prev, end);
            let leaf = mm.leaf(b);
            mm.note_leaf(a, e, leaf);
            let flow = f(a, e, leaf);
            expect.after(mm, Item::Span(a, e), flow);
            if flow.is_break() && !ignore_break {
                return;
            }
            prev = a;
            cur = e;
        }
    }

    /// A script of spans and PTE batches: one byte chooses between the
    /// span-only script of [`walk_leaves`](MmView::walk_leaves) and a mixed
    /// one, whose batches may start anywhere (at the cursor, over what was
    /// reported, below or above the window, raw), be empty or longer than
    /// the window, come after a `Break`, and be read with a [`RawFormat`]
    /// that lies.
    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        let mm = self.mm;
        let b = mm.call();
        let mode = b.u8();
        if mode.is_multiple_of(4) {
            return self.walk_leaves(vma, start, end, |a, e, leaf| sink.leaf(a, e, leaf));
        }
        mm.check_walk_window(vma, start, end);
        let fmt = RawFormat::read(mm, b);
        let ignore_break = mode & 0x80 != 0;
        let count = 1 + (mode >> 2) % 8;
        let (mut cur, mut prev) = (start, start);
        let mut words = Vec::new();
        let mut broken = false;
        let mut expect = Expect::new(start, end);
        for _ in 0..count {
            mm.call();
            if broken {
                mm.log.borrow_mut().after_break += 1;
            }
            let k = b.u8();
            let (a, e, flow) = if k & 1 == 0 {
                let (a, e) = mm.span(b, k >> 1, cur, prev, end);
                let leaf = mm.leaf(b);
                mm.note_leaf(a, e, leaf);
                let flow = sink.leaf(a, e, leaf);
                expect.after(mm, Item::Span(a, e), flow);
                (a, e, flow)
            } else {
                let a = match (k >> 1) % 8 {
                    0..=2 => cur,
                    // Above the cursor: a gap inside the window.
                    3 => cur.saturating_add(PAGE_SIZE * (1 + u64::from(b.u8() % 8))),
                    // Over what was reported already.
                    4 => prev,
                    // Below the cursor, or below the window.
                    5 => cur.saturating_sub(PAGE_SIZE + mm.pages(b)),
                    // Above the window.
                    6 => end.saturating_add(mm.pages(b)),
                    _ => b.u64(),
                };
                let to_end = end.saturating_sub(a) / PAGE_SIZE;
                let n = match (k >> 4) % 8 {
                    0 => 0,
                    1 => 1,
                    2..=4 => to_end,
                    // Longer than the window.
                    5 => to_end + 1 + u64::from(b.u8()),
                    6 => u64::from(b.u16() % 2048),
                    _ => 1 + u64::from(b.u8() % 16),
                };
                let n = n.min(MAX_BATCH) as usize;
                fmt.words(b, n, &mut words);
                for (i, w) in words.iter().enumerate() {
                    let p = a.wrapping_add(i as u64 * PAGE_SIZE);
                    // Either value a racing word reads as.
                    for w in [w.get(), w.get() ^ fmt.racy] {
                        mm.note_leaf(p, p.saturating_add(PAGE_SIZE), fmt.leaf(w));
                    }
                }
                let e = a.saturating_add(n as u64 * PAGE_SIZE);
                let mut log = mm.log.borrow_mut();
                log.batches += 1;
                log.batch_words += n as u64;
                drop(log);
                let flow = sink.ptes(a, &words, &fmt);
                expect.after(mm, Item::Batch(a, n as u64), flow);
                (a, e, flow)
            };
            if flow.is_break() {
                if !ignore_break {
                    return;
                }
                broken = true;
            }
            prev = a;
            cur = e;
        }
    }
}

/// Longest PTE batch the script hands over.
const MAX_BATCH: u64 = 4096;

impl RawMm<'_> {
    /// The walker asked for `[start, end)` in `vma`: inside the window and
    /// the VMA, page aligned, not empty.
    fn check_walk_window(&self, vma: &Vma<'_>, start: u64, end: u64) {
        let (ws, we) = self.window;
        if !start.is_multiple_of(PAGE_SIZE)
            || !end.is_multiple_of(PAGE_SIZE)
            || start >= end
            || start < ws
            || end > we
            || start < vma.start()
            || end > vma.end()
        {
            self.violation(format!(
                "walk_leaves({start:#x}, {end:#x}) outside window [{ws:#x}, {we:#x}) or VMA [{:#x}, {:#x})",
                vma.start(),
                vma.end()
            ));
        }
    }

    /// A span chosen by `k`: from the cursor `cur` (one page, to the end,
    /// a few pages, to a 2 MiB boundary, past the end), below it, the last
    /// span again, past the end, unaligned, backwards, or raw.
    fn span(&self, b: &Bytes<'_>, k: u8, cur: u64, prev: u64, end: u64) -> (u64, u64) {
        match k % 16 {
            0..=9 => {
                let e = match (k >> 4) % 6 {
                    0 => cur.saturating_add(PAGE_SIZE),
                    1 | 2 => end,
                    3 => cur.saturating_add(PAGE_SIZE + self.pages(b)),
                    4 => (cur | ((PAGE_SIZE << 9) - 1)).saturating_add(1),
                    _ => end.saturating_add(self.pages(b)),
                };
                (cur, e)
            }
            10 => (cur.saturating_sub(PAGE_SIZE + self.pages(b)), cur),
            11 => (prev, cur),
            12 => {
                let a = end.saturating_add(self.pages(b));
                (a, a.saturating_add(PAGE_SIZE))
            }
            13 => (cur.saturating_add(u64::from(b.u16() % 4096)), end),
            14 => (cur, cur.saturating_sub(self.pages(b))),
            _ => (b.u64(), b.u64()),
        }
    }

    /// Remember the window's pages that `[a, e)` reports as device-private
    /// memory of the range's owner (reported as is, never faulted).
    fn note_leaf(&self, a: u64, e: u64, leaf: Leaf) {
        let (ws, we) = self.window;
        if let (Leaf::DevicePrivate { owner, .. }, Some(o)) = (leaf, self.owner) {
            if owner == o {
                let mut log = self.log.borrow_mut();
                let mut p = a.max(ws) & !(PAGE_SIZE - 1);
                while p < e.min(we) {
                    log.own_device_private.insert(p);
                    p += PAGE_SIZE;
                }
            }
        }
    }
}

/// How [`RawFormat::plain`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainMode {
    /// As the format says: `Some` for none and ordinary present words.
    Honest,
    /// Honest, plus junk bits in every answer.
    Junk,
    /// `Some` for every word (junk bits, non-plain words included).
    Lies,
    /// `None` for every word (always correct).
    Never,
}

/// How [`RawFormat::leaf`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafMode {
    /// As the format says.
    Honest,
    /// A side-table leaf for every word, whatever `plain` said.
    Table,
    /// A present PTE with the other write bit, a hole for a present word.
    Flipped,
}

/// The PTE format of the raw script's batches: 0 is a none PTE; bit 0 a
/// present PTE (bit 1 writable, bit 2 `PROT_NONE`, bit 3 special, bit 4
/// the zero page, the PFN from bit 12); any other word is
/// `others[(word >> 1) % 4]`, a leaf of any kind, order and owner. `plain`
/// and `leaf` may disagree with this and with each other, and a word may
/// race: each read flips the bits of `racy` (a PTE changing under a
/// lockless walk, read once for `plain` and again for `leaf`).
#[derive(Debug)]
pub struct RawFormat {
    plain: PlainMode,
    leaf: LeafMode,
    junk: u64,
    racy: u64,
    others: [Leaf; 4],
}

impl RawFormat {
    fn read(mm: &RawMm<'_>, b: &Bytes<'_>) -> Self {
        let sel = b.u8();
        let plain = match sel % 8 {
            0..=3 => PlainMode::Honest,
            4 => PlainMode::Junk,
            5 | 6 => PlainMode::Lies,
            _ => PlainMode::Never,
        };
        let leaf = match (sel >> 3) % 4 {
            0 | 1 => LeafMode::Honest,
            2 => LeafMode::Table,
            _ => LeafMode::Flipped,
        };
        let junk = match plain {
            PlainMode::Junk | PlainMode::Lies => match (sel >> 5) % 4 {
                0 => PfnFlags::ERROR.bits(),
                1 => STICKY | (9 << 56),
                _ => b.u64(),
            },
            _ => 0,
        };
        let racy = if sel & 0x80 != 0 {
            match b.u8() % 4 {
                // Writable or not; present or none.
                0 => 2,
                1 => 1,
                // Ordinary or special.
                2 => 8,
                _ => b.u64(),
            }
        } else {
            0
        };
        let others = core::array::from_fn(|_| mm.leaf(b));
        RawFormat {
            plain,
            leaf,
            junk,
            racy,
            others,
        }
    }

    /// `n` words into `out`: a few words from the script, repeated, the
    /// PFN of present ones advancing by one page per repetition if the
    /// script says so.
    fn words(&self, b: &Bytes<'_>, n: usize, out: &mut Vec<Cell<u64>>) {
        out.clear();
        let sel = b.u8();
        let distinct = 1 + usize::from(sel % 4);
        let step = sel & 4 != 0;
        let base: Vec<u64> = (0..distinct)
            .map(|_| {
                let k = b.u8();
                match k % 8 {
                    0 | 1 => 0,
                    // Present; mostly ordinary (writable or not).
                    2..=4 => {
                        let bits = if k & 0x80 != 0 { k >> 3 } else { k >> 3 & 2 };
                        (u64::from(b.u16()) << 12) | u64::from(bits) & 0x1f | 1
                    }
                    5 => u64::from(k) << 1 & 0x1e,
                    6 => (b.u64() & !0x1f) | u64::from(k >> 3) & 0x1f,
                    _ => b.u64(),
                }
            })
            .collect();
        out.extend((0..n).map(|i| {
            let w = base[i % distinct];
            Cell::new(if step && w & 1 != 0 {
                w.wrapping_add(((i / distinct) as u64) << 12)
            } else {
                w
            })
        }));
    }

    fn honest_leaf(&self, w: u64) -> Leaf {
        if w == 0 {
            return Leaf::Hole;
        }
        if w & 1 == 0 {
            return self.others[((w >> 1) % 4) as usize];
        }
        Leaf::Present(Present {
            pfn: w >> 12,
            order: 0,
            write: w & 2 != 0,
            protnone: w & 4 != 0,
            special: w & 8 != 0,
            zero: w & 16 != 0,
        })
    }
}

impl PteFormat for RawFormat {
    type Pte = Cell<u64>;

    fn read(&self, pte: &Cell<u64>) -> u64 {
        let w = pte.get();
        pte.set(w ^ self.racy);
        w
    }

    fn plain(&self, w: u64) -> Option<u64> {
        let honest = || {
            if w == 0 {
                return Some(0);
            }
            let plain = w & 1 != 0 && w & 4 == 0 && (w & 8 == 0 || w & 16 != 0);
            plain.then_some((w >> 12) | V | if w & 2 != 0 { W } else { 0 })
        };
        match self.plain {
            PlainMode::Honest => honest(),
            PlainMode::Junk => honest().map(|x| x | self.junk),
            PlainMode::Lies => Some(honest().unwrap_or(w) ^ self.junk),
            PlainMode::Never => None,
        }
    }

    fn leaf(&self, w: u64) -> Leaf {
        match self.leaf {
            LeafMode::Honest => self.honest_leaf(w),
            LeafMode::Table => self.others[(w % 4) as usize],
            LeafMode::Flipped => match self.honest_leaf(w) {
                Leaf::Present(p) if w & 8 == 0 => Leaf::Present(Present {
                    write: !p.write,
                    ..p
                }),
                Leaf::Present(_) => Leaf::Hole,
                other => other,
            },
        }
    }
}

impl<'a> FaultHandler<RawMm<'a>> for RawMm<'a> {
    fn fault<'g>(
        &self,
        guard: RawGuard<'g, 'g>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<RawGuard<'g, 'g>>
    where
        RawMm<'a>: 'g,
    {
        let b = self.call();
        let (ws, we) = self.window;
        if !addr.is_multiple_of(PAGE_SIZE) || addr < ws || addr >= we {
            self.violation(format!("fault at {addr:#x} outside [{ws:#x}, {we:#x})"));
        }
        let sel = b.u8();
        let mut seen = SeenFault {
            addr,
            flags,
            retry: false,
            dropped: false,
            begins: self.log.borrow().begins,
        };
        let out = match sel % 8 {
            0 => FaultOutcome::Error(guard, VmFaultError::Sigbus),
            1 | 6 | 7 => FaultOutcome::Done(guard),
            2 => {
                let e = [
                    VmFaultError::Oom,
                    VmFaultError::Sigbus,
                    VmFaultError::Sigsegv,
                    VmFaultError::HwPoison,
                ][usize::from(b.u8() % 4)];
                FaultOutcome::Error(guard, e)
            }
            3 => {
                drop(guard);
                seen.retry = true;
                seen.dropped = true;
                FaultOutcome::Retry
            }
            4 => {
                drop(guard);
                seen.dropped = true;
                FaultOutcome::Completed
            }
            _ => FaultOutcome::WouldBlock(guard),
        };
        let mut log = self.log.borrow_mut();
        match &out {
            FaultOutcome::Error(_, e) => log.fault_errors.push(*e),
            FaultOutcome::WouldBlock(_) => log.would_block = true,
            _ => {}
        }
        log.faults.push(seen);
        out
    }

    fn migration_wait(&self, _guard: &RawGuard<'_, '_>, addr: u64) {
        self.call();
        let (ws, we) = self.window;
        if !addr.is_multiple_of(PAGE_SIZE) || addr < ws || addr >= we {
            self.violation(format!("migration wait at {addr:#x} outside the window"));
        }
        self.log.borrow_mut().migration_waits += 1;
    }
}

impl IntervalNotifier for RawMm<'_> {
    fn read_begin(&self) -> u64 {
        let b = self.call();
        if self.readers.get() != 0 {
            self.violation("read_begin with the mmap lock held".into());
        }
        let v = match b.u8() % 4 {
            0 => 0,
            1 => u64::from(b.u8()),
            _ => b.u64(),
        };
        let mut log = self.log.borrow_mut();
        log.begins += 1;
        log.last_seq = Some(v);
        v
    }
    fn check_retry(&self, _seq: u64) -> bool {
        let r = self.call().u8() % 8 == 7;
        if r {
            self.log.borrow_mut().invalidated = true;
        }
        r
    }
}

impl Signals for RawMm<'_> {
    fn fatal_signal_pending(&self) -> bool {
        let r = self.call().u8() % 16 == 15;
        if r {
            self.log.borrow_mut().signalled = true;
        }
        r
    }
}

impl Clock for RawMm<'_> {
    fn now_ns(&self) -> u64 {
        let b = self.call();
        let t = match b.u8() {
            0 => self.clock.get(),
            255 => b.u64(),
            d => self.clock.get().saturating_add(u64::from(d) * 1_000_000),
        };
        self.clock.set(t);
        t
    }
}

/// How a raw case ended, for coverage counting.
pub type Outcome = String;

fn common_checks(q: &RawRequest, before: &[u64], after: &[u64]) -> Result<(), String> {
    for i in (0..q.pre).chain(q.pre + q.len..before.len()) {
        if after[i] != GUARD_WORD {
            return Err(format!("guard word {i} written: {:#x}", after[i]));
        }
    }
    for i in q.pre..q.pre + q.len {
        if (after[i] ^ before[i]) & STICKY != 0 {
            return Err(format!(
                "entry {}: sticky bits {:#x} became {:#x}",
                i - q.pre,
                before[i] & STICKY,
                after[i] & STICKY
            ));
        }
    }
    Ok(())
}

/// Every requested entry is `VALID`, and `WRITE` if a write was requested
/// (device-private pages of the caller's owner excepted for `WRITE`: they
/// are reported, never faulted).
fn request_met(
    q: &RawRequest,
    before: &[u64],
    after: &[u64],
    from_page: usize,
    log: &Log,
) -> Result<(), String> {
    for i in from_page..q.len {
        let (inp, out) = (before[q.pre + i], after[q.pre + i]);
        let req = q.req(inp);
        if req & V == 0 {
            continue;
        }
        let addr = q.start.wrapping_add(i as u64 * PAGE_SIZE);
        let own = log.own_device_private.contains(&addr);
        if out & V == 0 || (req & W != 0 && out & W == 0 && !own) {
            return Err(format!(
                "entry {i} requested {req:#x} (input {inp:#x}) but reads {out:#x}"
            ));
        }
    }
    Ok(())
}

fn violations(log: &Log) -> Result<(), String> {
    match log.violations.first() {
        Some(v) => Err(format!("protocol violation: {v}")),
        None => Ok(()),
    }
}

/// Run [`hmm_core::walk()`] on a raw case and check its contract.
pub fn check_walk(data: &[u8]) -> Result<Outcome, String> {
    check_walk_logged(data).0
}

/// What the environment's page-table script handed the walker in one
/// case of [`check_walk_logged`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptStats {
    /// PTE batches (`LeafSink::ptes` calls).
    pub batches: u64,
    /// Words in them.
    pub words: u64,
    /// Spans and batches after the walker answered `Break`.
    pub after_break: u64,
    /// Whether the walker had to refuse a span or batch (and did).
    pub refused: bool,
}

/// [`check_walk`], also returning what the page-table script handed over.
pub fn check_walk_logged(data: &[u8]) -> (Result<Outcome, String>, ScriptStats) {
    let mut stats = ScriptStats::default();
    let out = check_walk_inner(data, &mut stats);
    (out, stats)
}

fn check_walk_inner(data: &[u8], stats: &mut ScriptStats) -> Result<Outcome, String> {
    let b = Bytes::new(data);
    let q = RawRequest::read(&b);
    let mm = RawMm::new(b.rest(), (q.start, q.end), q.owner, q.limit);
    let before = q.buffer();
    let mut buf = before.clone();
    let c0 = WalkCounters {
        pages_filled: q.stats.pages_filled,
        leaves: q.stats.leaves,
    };
    let mut c = c0;
    let out = {
        let mut range = q.range(&mut buf);
        let g = mm.read();
        hmm_core::walk(&g, &mut range, q.from, &mut c)
    };
    let log = mm.log.borrow();
    *stats = ScriptStats {
        batches: log.batches,
        words: log.batch_words,
        after_break: log.after_break,
        refused: log.refusal.is_some(),
    };
    common_checks(&q, &before, &buf)?;
    if c.pages_filled < c0.pages_filled || c.leaves < c0.leaves {
        return Err(format!("counters went backwards: {c0:?} -> {c:?}"));
    }
    let valid = q.valid(u64::MAX);
    let from_ok = q.from.is_multiple_of(PAGE_SIZE) && q.from >= q.start && q.from <= q.end;
    if !valid || !from_ok {
        if out != Err(Error::Inval) || buf != before || c != c0 || log.calls != 0 {
            return Err(format!(
                "invalid range or cursor: {out:?}, want -EINVAL with nothing touched"
            ));
        }
        return Ok("einval".into());
    }
    violations(&log)?;
    // A span or batch the walker had to refuse: `-EFAULT` (or, for a batch
    // taken up to the window's end, any stop inside the window), and
    // nothing written from the cursor (or the window's end) on.
    if let Some(r) = &log.refusal {
        let wrong_result = if r.exact {
            out != Err(Error::Fault)
        } else {
            out == Ok(WalkStop::Done)
        };
        if wrong_result {
            return Err(format!("{}: the walk returned {out:?}", r.what));
        }
        if r.writable_to >= q.from && r.writable_to <= q.end {
            let p = q.pre + ((r.writable_to - q.start) / PAGE_SIZE) as usize;
            if buf[p..q.pre + q.len] != before[p..q.pre + q.len] {
                return Err(format!(
                    "{}: an entry from {:#x} on was written",
                    r.what, r.writable_to
                ));
            }
        } else {
            return Err(format!("{}: outside the range", r.what));
        }
    }
    let page = |a: u64| ((a - q.start) / PAGE_SIZE) as usize;
    let fp = page(q.from);
    if buf[q.pre..q.pre + fp] != before[q.pre..q.pre + fp] {
        return Err("an entry below the cursor was written".into());
    }
    let filled = c.pages_filled - c0.pages_filled;
    let unsaturated = c.pages_filled < u64::MAX;
    let span_ok = |a: u64| a.is_multiple_of(PAGE_SIZE) && a >= q.from && a < q.end;
    let untouched_from = |a: u64| -> Result<(), String> {
        let p = q.pre + page(a);
        if buf[p..q.pre + q.len] != before[p..q.pre + q.len] {
            return Err(format!(
                "{out:?}: an entry at or above the stop was written"
            ));
        }
        if unsaturated && filled > (a - q.from) / PAGE_SIZE {
            return Err(format!("{out:?}: {filled} pages counted below the stop"));
        }
        Ok(())
    };
    let requested = |from: usize, to: usize, bits: u64| {
        (from..to).any(|i| q.req(before[q.pre + i]) & bits == bits)
    };
    match out {
        Ok(WalkStop::Done) => {
            request_met(&q, &before, &buf, fp, &log)?;
            if unsaturated && filled != (q.end - q.from) / PAGE_SIZE {
                return Err(format!(
                    "Done with {filled} pages counted for {} pages walked",
                    (q.end - q.from) / PAGE_SIZE
                ));
            }
            Ok("done".into())
        }
        Ok(WalkStop::NeedFault { addr, end, write }) => {
            if !span_ok(addr) || end % PAGE_SIZE != 0 || end <= addr || end > q.end {
                return Err(format!("bad fault span [{addr:#x}, {end:#x})"));
            }
            untouched_from(addr)?;
            let bits = if write { V | W } else { V };
            if !requested(page(addr), page(end), bits) {
                return Err(format!(
                    "fault of [{addr:#x}, {end:#x}) write {write} that no entry requested"
                ));
            }
            Ok("need-fault".into())
        }
        Ok(WalkStop::WaitMigration { addr }) => {
            if !span_ok(addr) {
                return Err(format!("bad migration address {addr:#x}"));
            }
            untouched_from(addr)?;
            if !requested(page(addr), q.len, V) {
                return Err("migration wait that no entry requested".into());
            }
            Ok("wait-migration".into())
        }
        Err(Error::Fault) => Ok("efault".into()),
        Err(Error::Perm) => {
            if !requested(fp, q.len, V | W) {
                return Err("-EPERM without a write request".into());
            }
            Ok("eperm".into())
        }
        Err(e) => Err(format!("walk returned {e:?}, not a walk errno")),
    }
}

/// Run the case's entry point on a raw case and check its contract.
pub fn check_driver(data: &[u8]) -> Result<Outcome, String> {
    let b = Bytes::new(data);
    let q = RawRequest::read(&b);
    let mm = RawMm::new(b.rest(), (q.start, q.end), q.owner, q.limit);
    let before = q.buffer();
    let mut buf = before.clone();
    let mut stats = q.stats;
    let env = Env::new(&mm, &mm).with_signals(&mm).with_clock(&mm);
    let locked_mode = q.entry != Entry::Unlocked;
    let (result, seq_after, held) = {
        let mut range = q.range(&mut buf).with_notifier(&mm);
        let (result, held) = match q.entry {
            Entry::Linux => {
                let out = range_fault(&env, &mut range, mm.read(), &mut stats);
                (out.result, out.guard.is_some())
            }
            Entry::Unlockable => {
                let out = range_fault_may_unlock(&env, &mut range, mm.read(), &q.opts, &mut stats);
                (out.result, out.guard.is_some())
            }
            Entry::Unlocked => {
                let r = range_fault_owning_lock(&env, &mut range, &q.opts, &mut stats);
                (r, false)
            }
        };
        (result, range.notifier_seq, held)
    };
    if mm.readers() != 0 {
        return Err(format!(
            "{} readers left after the guard was dropped",
            mm.readers()
        ));
    }
    let log = mm.log.borrow();
    common_checks(&q, &before, &buf)?;
    violations(&log)?;
    let s0 = q.stats;
    let fields = |s: &Stats| {
        [
            s.walks,
            s.pages_filled,
            s.leaves,
            s.faults,
            s.tried_faults,
            s.lock_drops,
            s.resumes,
            s.restarts,
            s.migration_waits,
        ]
    };
    if fields(&stats).iter().zip(fields(&s0)).any(|(a, b)| *a < b) {
        return Err(format!("a counter went backwards: {s0:?} -> {stats:?}"));
    }
    let count = |start: u64, n: usize| start.saturating_add(n as u64);
    let tried = log
        .faults
        .iter()
        .filter(|f| f.flags.contains(FaultFlags::TRIED))
        .count();
    let legal_drop = |f: &SeenFault| {
        f.dropped
            && f.flags.contains(FaultFlags::ALLOW_RETRY)
            && !f.flags.contains(FaultFlags::RETRY_NOWAIT)
    };
    let drops = log.faults.iter().filter(|f| legal_drop(f)).count();
    let want = [
        ("faults", stats.faults, count(s0.faults, log.faults.len())),
        (
            "tried_faults",
            stats.tried_faults,
            count(s0.tried_faults, tried),
        ),
        ("lock_drops", stats.lock_drops, count(s0.lock_drops, drops)),
        (
            "migration_waits",
            stats.migration_waits,
            count(s0.migration_waits, log.migration_waits as usize),
        ),
    ];
    for (name, got, want) in want {
        if got != want {
            return Err(format!("stats.{name} is {got}, want {want}"));
        }
    }

    let valid = q.valid(q.limit);
    if !valid {
        let untouched = buf == before && log.calls == 0 && stats == s0;
        if result != Err(Error::Inval) || !untouched || held != locked_mode {
            return Err(format!(
                "invalid range: {result:?} (guard held {held}, {} env calls), \
                 want -EINVAL with nothing touched",
                log.calls
            ));
        }
        return Ok("einval".into());
    }
    if result == Err(Error::Inval) {
        return Err("-EINVAL for a valid range".into());
    }

    // Fault flags and TRIED.
    let unlockable = q.entry != Entry::Linux;
    for (k, f) in log.faults.iter().enumerate() {
        let mut want = FaultFlags::REMOTE;
        if unlockable {
            want |= FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
            if q.opts.nowait {
                want |= FaultFlags::RETRY_NOWAIT;
            }
        }
        let prev = k.checked_sub(1).map(|j| log.faults[j]);
        if prev.is_some_and(|p| p.retry && p.addr == f.addr && f.begins == p.begins) {
            want |= FaultFlags::TRIED;
        }
        if f.flags - FaultFlags::WRITE != want {
            return Err(format!(
                "fault {k} at {:#x} has flags {:?}, want {:?} (+WRITE)",
                f.addr, f.flags, want
            ));
        }
    }
    let illegal_drop = log.faults.iter().any(|f| f.dropped && !legal_drop(f));
    if illegal_drop && (result != Err(Error::Fault) || held) {
        return Err(format!(
            "a handler dropped a lock it could not: {result:?}, guard held {held}"
        ));
    }

    // The lock on return: the locked entry points hand it back on success.
    if locked_mode && result.is_ok() && !held {
        return Err("success without the guard".into());
    }
    if !locked_mode && held {
        return Err("the owning entry point kept a guard".into());
    }

    let restart_policy = q.opts.policy == Policy::Restart;
    let req_bits = V | W;
    let per_page = q.request.pfn_flags_mask & req_bits != 0;
    let any_drop = drops > 0;
    let errored = |e: VmFaultError| log.fault_errors.contains(&e);
    match result {
        Ok(()) => {
            request_met(&q, &before, &buf, 0, &log)?;
            if q.entry == Entry::Unlocked {
                if Some(seq_after) != log.last_seq {
                    return Err(format!(
                        "range.notifier_seq {seq_after:#x} is not the last read_begin {:?}",
                        log.last_seq
                    ));
                }
            } else if seq_after != q.seq {
                return Err("a locked entry point changed range.notifier_seq".into());
            }
            Ok(format!("{:?} ok", q.entry))
        }
        Err(e) => {
            let allowed = match e {
                Error::Fault => true,
                Error::Busy => {
                    log.invalidated
                        || (unlockable && q.opts.timeout_ns != 0)
                        || (restart_policy
                            && any_drop
                            && (q.entry == Entry::Unlockable || per_page))
                }
                Error::Perm => (0..q.len).any(|i| q.req(before[q.pre + i]) & req_bits == req_bits),
                Error::Intr => unlockable && log.signalled,
                Error::NoMem => unlockable && errored(VmFaultError::Oom),
                Error::HwPoison => unlockable && errored(VmFaultError::HwPoison),
                Error::Again => unlockable && q.opts.nowait && log.would_block,
                Error::Inval => false,
            };
            if !allowed {
                return Err(format!("{:?}: {} without its cause", q.entry, e.name()));
            }
            Ok(format!("{:?} {}", q.entry, e.name()))
        }
    }
}
