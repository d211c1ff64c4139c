//! The batched walk (`MmView::walk_batched` handing the walker slices of raw
//! PTE words through `LeafSink::ptes`) against the same page tables reported
//! one PTE per leaf: the same result, the same PFN array, the same counters,
//! for seeded random layouts under every kind of request. Then the batch
//! path's defences against a backend that breaks the contract.

use core::ops::ControlFlow;

use hmm_core::*;

const BASE: u64 = 0x4000_0000;
const PG: u64 = PAGE_SIZE;
const V: u64 = PfnFlags::VALID.bits();
const W: u64 = PfnFlags::WRITE.bits();
const STICKY: u64 = PfnFlags::DMA_MAPPED.bits();
const REQ: u64 = PfnFlags::REQ_FAULT.bits();
const REQ_W: u64 = PfnFlags::REQ_WRITE.bits();
const OWNER: u64 = 0xd0;

/// PTE words: 0 is none; bit 0 present (bit 1 writable, bit 3 special,
/// bit 4 PROT_NONE, the PFN from bit 12); bit 2 any other kind, whose leaf
/// is `others[word >> 12]`.
struct Fmt<'a> {
    others: &'a [Leaf],
    /// Bits a careless `plain` adds to its answer (the walker must drop them).
    junk: u64,
}

const P: u64 = 1;
const PW: u64 = 2;
const OTHER: u64 = 4;
const SPECIAL: u64 = 8;
const PROTNONE: u64 = 16;

impl PteFormat for Fmt<'_> {
    type Pte = u64;
    fn read(&self, pte: &u64) -> u64 {
        *pte
    }
    fn plain(&self, w: u64) -> Option<u64> {
        if w == 0 {
            return Some(self.junk & !(V | W));
        }
        (w & (P | OTHER | SPECIAL | PROTNONE) == P)
            .then_some((w >> 12) | ((w & PW) << 61) | V | self.junk)
    }
    fn leaf(&self, w: u64) -> Leaf {
        if w == 0 {
            return Leaf::Hole;
        }
        if w & OTHER != 0 {
            return self.others[(w >> 12) as usize];
        }
        Leaf::Present(Present {
            pfn: w >> 12,
            write: w & PW != 0,
            protnone: w & PROTNONE != 0,
            special: w & SPECIAL != 0,
            ..Present::default()
        })
    }
}

const OTHERS: [Leaf; 9] = [
    Leaf::Swap,
    Leaf::Migration,
    Leaf::DevicePrivate {
        owner: OWNER,
        pfn: 0x777,
        write: true,
        order: 0,
    },
    Leaf::DevicePrivate {
        owner: 0xe0,
        pfn: 0x888,
        write: false,
        order: 0,
    },
    Leaf::DeviceExclusive,
    Leaf::HwPoison,
    Leaf::Bad,
    Leaf::Hole,
    Leaf::EmptyPtes,
];

/// How the view reports the PTE words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// One leaf per PTE through `walk_leaves` (the reference).
    PerPte,
    /// Batches of random length, some PTEs as single leaves.
    Batched(u64),
}

struct Pt {
    vmas: Vec<(u64, u64, VmFlags, u8)>,
    /// One word per page from `BASE`.
    words: Vec<u64>,
    mode: Mode,
    junk: u64,
}

impl Pt {
    fn fmt(&self) -> Fmt<'_> {
        Fmt {
            others: &OTHERS,
            junk: self.junk,
        }
    }
    fn index(addr: u64) -> usize {
        ((addr - BASE) / PG) as usize
    }
}

impl MmView for Pt {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.vmas
            .iter()
            .find(|v| v.1 > addr)
            .map(|&(s, e, f, o)| Vma::new(s, e, f, o))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        let fmt = self.fmt();
        let mut a = start;
        while a < end {
            if f(a, a + PG, fmt.leaf(self.words[Pt::index(a)])).is_break() {
                return;
            }
            a += PG;
        }
    }
    fn walk_batched<S: LeafSink>(&self, vma: &Vma<'_>, start: u64, end: u64, sink: &mut S) {
        let Mode::Batched(seed) = self.mode else {
            let mut f = |a, b, leaf| sink.leaf(a, b, leaf);
            return self.walk_leaves(vma, start, end, &mut f);
        };
        let fmt = self.fmt();
        let mut rng = Rng(seed ^ start);
        let (mut i, j) = (Pt::index(start), Pt::index(end));
        while i < j {
            let n = (1 + rng.below(700) as usize).min(j - i);
            let a = BASE + i as u64 * PG;
            let flow = if rng.below(4) == 0 {
                // A few PTEs reported alone, as a backend may.
                sink.leaf(a, a + PG, fmt.leaf(self.words[i]))
                    .map_continue(|()| 1)
            } else {
                sink.ptes(a, &self.words[i..i + n], &fmt)
                    .map_continue(|()| n)
            };
            match flow {
                ControlFlow::Continue(k) => i += k,
                ControlFlow::Break(()) => return,
            }
        }
    }
}

/// xorshift64*: a seeded, dependency-free generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rw() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE
}

/// A random word: mostly plain present PTEs and none PTEs, in runs, with
/// every other kind mixed in.
fn word(rng: &mut Rng, pfn: u64) -> u64 {
    match rng.below(100) {
        0..=34 => (pfn << 12) | P | PW,
        35..=44 => (pfn << 12) | P,
        45..=64 => 0,
        65..=69 => (pfn << 12) | P | SPECIAL,
        70..=74 => (pfn << 12) | P | PROTNONE | PW,
        _ => ((rng.below(OTHERS.len() as u64)) << 12) | OTHER,
    }
}

/// Walk `pt` from `from` with `req` and `input` as the entries.
fn run(
    pt: &Pt,
    pages: usize,
    from: u64,
    req: Request,
    input: &[u64],
    counters: WalkCounters,
) -> (Result<WalkStop, Error>, Vec<u64>, WalkCounters) {
    let mut pfns = input.to_vec();
    let mut range = Range::new(BASE, BASE + pages as u64 * PG, &mut pfns)
        .with_request(req)
        .with_owner(OWNER);
    let mut c = counters;
    let r = walk(pt, &mut range, from, &mut c);
    (r, pfns, c)
}

/// A layout of `pages` pages: one or two VMAs (sometimes a hugetlb one, a
/// read-only one, or a gap), words in runs of one kind.
fn layout(rng: &mut Rng, pages: usize) -> Pt {
    let end = BASE + pages as u64 * PG;
    let mid = BASE + rng.below(pages as u64 + 1) * PG;
    let flags = |rng: &mut Rng| match rng.below(6) {
        0 => VmFlags::READ,
        _ => rw(),
    };
    let vmas = match rng.below(5) {
        0 => vec![(BASE, end, rw() | VmFlags::HUGETLB, 9)],
        1 if mid > BASE && mid < end => vec![(BASE, mid, flags(rng), 0), (mid + PG, end, rw(), 0)],
        2 if mid > BASE && mid < end => vec![(BASE, mid, rw(), 0), (mid, end, flags(rng), 0)],
        _ => vec![(BASE, end, flags(rng), 0)],
    };
    let mut words = Vec::with_capacity(pages);
    while words.len() < pages {
        let run = 1 + rng.below(40) as usize;
        let pfn = 0x1000 + rng.below(1 << 20);
        let w0 = word(rng, pfn);
        for k in 0..run.min(pages - words.len()) {
            let w = if rng.below(8) == 0 {
                let pfn = 0x1000 + rng.below(1 << 20);
                word(rng, pfn)
            } else if w0 & P != 0 {
                w0 + ((k as u64) << 12)
            } else {
                w0
            };
            words.push(w);
        }
    }
    Pt {
        vmas,
        words,
        mode: Mode::PerPte,
        junk: 0,
    }
}

fn request(rng: &mut Rng, pages: usize) -> (Request, Vec<u64>) {
    let mut input: Vec<u64> = (0..pages)
        .map(|_| if rng.below(3) == 0 { STICKY } else { 0 })
        .collect();
    let req = match rng.below(4) {
        0 => Request::new(0, 0),
        1 => Request::new(REQ, 0),
        2 => Request::new(REQ | REQ_W, 0),
        _ => {
            // Per-page requests on a few entries.
            for e in input.iter_mut() {
                match rng.below(40) {
                    0 => *e |= REQ,
                    1 => *e |= REQ | REQ_W,
                    _ => {}
                }
            }
            Request::new(0, REQ | REQ_W)
        }
    };
    (req, input)
}

#[test]
fn batched_walk_matches_one_leaf_per_pte() {
    let mut rng = Rng(0x5eed_0001);
    let mut stops = [0usize; 4];
    for case in 0..3000 {
        let pages = 1 + rng.below(1500) as usize;
        let mut pt = layout(&mut rng, pages);
        // Snapshots must see long batches to reach the fast path's end.
        let (req, input) = request(&mut rng, pages);
        let from = BASE + rng.below(pages as u64) * PG * u64::from(rng.below(3) == 0);
        let counters = WalkCounters {
            pages_filled: rng.below(1000),
            leaves: rng.below(1000),
        };
        let want = run(&pt, pages, from, req, &input, counters);
        pt.mode = Mode::Batched(rng.next());
        let got = run(&pt, pages, from, req, &input, counters);
        assert_eq!(
            got, want,
            "case {case}: {pages} pages, {req:?}, vmas {:?}",
            pt.vmas
        );
        stops[match want.0 {
            Ok(WalkStop::Done) => 0,
            Ok(WalkStop::NeedFault { .. }) => 1,
            Ok(WalkStop::WaitMigration { .. }) => 2,
            Err(_) => 3,
        }] += 1;
    }
    // Every outcome was reached many times.
    assert!(stops.iter().all(|&n| n >= 50), "outcomes {stops:?}");
}

#[test]
fn an_all_plain_table_is_filled_and_counted_per_pte() {
    let pages = 1024;
    let words: Vec<u64> = (0..pages as u64)
        .map(|i| match i % 3 {
            0 => ((0x9000 + 7 * i) << 12) | P | PW,
            1 => ((0x9000 + 7 * i) << 12) | P,
            _ => 0,
        })
        .collect();
    let pt = Pt {
        vmas: vec![(BASE, BASE + pages as u64 * PG, rw(), 0)],
        words,
        mode: Mode::Batched(3),
        junk: 0,
    };
    for req in [Request::new(0, 0), Request::new(0, REQ | REQ_W)] {
        let input = vec![STICKY; pages];
        let start = WalkCounters {
            pages_filled: 5,
            leaves: 7,
        };
        let (r, pfns, c) = run(&pt, pages, BASE, req, &input, start);
        assert_eq!(r, Ok(WalkStop::Done));
        for (i, &e) in pfns.iter().enumerate() {
            let i = i as u64;
            let want = match i % 3 {
                0 => (0x9000 + 7 * i) | V | W,
                1 => (0x9000 + 7 * i) | V,
                _ => 0,
            };
            assert_eq!(e, want | STICKY, "page {i}");
        }
        let n = pages as u64;
        assert_eq!(
            c,
            WalkCounters {
                pages_filled: 5 + n,
                leaves: 7 + n
            }
        );
    }
}

#[test]
fn a_fault_request_stops_at_the_first_plain_pte_lacking_write() {
    let pages = 64;
    let mut words: Vec<u64> = (0..pages as u64)
        .map(|i| ((0x100 + i) << 12) | P | PW)
        .collect();
    words[37] = (0x500 << 12) | P; // read-only
    let pt = Pt {
        vmas: vec![(BASE, BASE + pages as u64 * PG, rw(), 0)],
        words,
        mode: Mode::Batched(0),
        junk: 0,
    };
    let input = vec![0u64; pages];
    let (r, pfns, c) = run(
        &pt,
        pages,
        BASE,
        Request::new(REQ | REQ_W, 0),
        &input,
        WalkCounters::default(),
    );
    let at = BASE + 37 * PG;
    assert_eq!(
        r,
        Ok(WalkStop::NeedFault {
            addr: at,
            end: at + PG,
            write: true
        })
    );
    assert_eq!(pfns[36], (0x100 + 36) | V | W);
    assert!(
        pfns[37..].iter().all(|&e| e == 0),
        "nothing written from the stop on"
    );
    assert_eq!(c.pages_filled, 37);
}

#[test]
fn bits_a_format_adds_beyond_pfn_valid_and_write_are_dropped() {
    let pages = 40;
    let junk = PfnFlags::ERROR.bits() | (9 << 53) | STICKY;
    // A snapshot of present and none PTEs; a read fault over present ones,
    // half of them read-only.
    let snap: Vec<u64> = (0..pages as u64)
        .map(|i| {
            if i % 2 == 0 {
                ((0x40 + i) << 12) | P | PW
            } else {
                0
            }
        })
        .collect();
    let read: Vec<u64> = (0..pages as u64)
        .map(|i| ((0x40 + i) << 12) | P | if i % 2 == 0 { PW } else { 0 })
        .collect();
    for (words, req) in [(snap, Request::new(0, 0)), (read, Request::new(REQ, 0))] {
        let want: Vec<u64> = words
            .iter()
            .map(|&w| match w {
                0 => 0,
                _ => (w >> 12) | V | ((w & PW) << 61),
            })
            .collect();
        let pt = Pt {
            vmas: vec![(BASE, BASE + pages as u64 * PG, rw(), 0)],
            words,
            mode: Mode::Batched(0),
            junk,
        };
        let (r, pfns, _) = run(
            &pt,
            pages,
            BASE,
            req,
            &vec![0; pages],
            WalkCounters::default(),
        );
        assert_eq!(r, Ok(WalkStop::Done));
        assert_eq!(pfns, want, "{req:?}");
    }
}

/// A view whose `walk_batched` hands fixed batches `(start, words)`,
/// whatever it is asked, and ignores `Break`.
struct Batches {
    vmas: Vec<(u64, u64, VmFlags, u8)>,
    batches: Vec<(u64, Vec<u64>)>,
}

impl MmView for Batches {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.vmas
            .iter()
            .find(|v| v.1 > addr)
            .map(|&(s, e, f, o)| Vma::new(s, e, f, o))
    }
    fn walk_leaves<F>(&self, _: &Vma<'_>, _: u64, _: u64, _: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        unreachable!("the walker asks for batches")
    }
    fn walk_batched<S: LeafSink>(&self, _: &Vma<'_>, _: u64, _: u64, sink: &mut S) {
        let fmt = Fmt {
            others: &OTHERS,
            junk: 0,
        };
        for (a, words) in &self.batches {
            let _ = sink.ptes(*a, words, &fmt);
        }
    }
}

fn plain_words(n: u64, pfn: u64) -> Vec<u64> {
    (0..n).map(|i| ((pfn + i) << 12) | P | PW).collect()
}

fn run_batches(b: &Batches, pages: usize, req: Request) -> (Result<WalkStop, Error>, Vec<u64>) {
    let mut pfns = vec![STICKY; pages];
    let mut range = Range::new(BASE, BASE + pages as u64 * PG, &mut pfns).with_request(req);
    let mut c = WalkCounters::default();
    let r = walk(b, &mut range, BASE, &mut c);
    (r, pfns)
}

#[test]
fn hostile_batches_are_efault_and_write_nothing_from_the_bad_one_on() {
    let vma = (BASE, BASE + 8 * PG, rw(), 0);
    let snap = Request::new(0, 0);
    let fault = Request::new(REQ, 0);
    for req in [snap, fault] {
        // A batch that does not start at the cursor (a gap, or overlapping
        // what was filled).
        for start in [BASE + PG, BASE + 3 * PG, BASE] {
            let b = Batches {
                vmas: vec![vma],
                batches: vec![(BASE, plain_words(2, 0x10)), (start, plain_words(4, 0x20))],
            };
            let (r, pfns) = run_batches(&b, 8, req);
            assert_eq!(r, Err(Error::Fault), "{req:?} second batch at {start:#x}");
            assert_eq!(pfns[0], 0x10 | V | W | STICKY);
            assert!(pfns[2..].iter().all(|&e| e == STICKY), "{pfns:x?}");
        }
        // A batch running past the VMA's end: the pages inside are filled,
        // the rest of the range (another VMA) is untouched.
        let b = Batches {
            vmas: vec![
                (BASE, BASE + 4 * PG, rw(), 0),
                (BASE + 4 * PG, BASE + 8 * PG, rw(), 0),
            ],
            batches: vec![(BASE, plain_words(6, 0x30))],
        };
        let (r, pfns) = run_batches(&b, 8, req);
        assert_eq!(r, Err(Error::Fault), "{req:?} past the window");
        assert_eq!(pfns[3], 0x33 | V | W | STICKY);
        assert!(pfns[4..].iter().all(|&e| e == STICKY), "{pfns:x?}");
        // A batch that stops short: the window is not covered.
        let b = Batches {
            vmas: vec![vma],
            batches: vec![(BASE, plain_words(5, 0x40)), (BASE + 5 * PG, vec![])],
        };
        assert_eq!(
            run_batches(&b, 8, req).0,
            Err(Error::Fault),
            "{req:?} short"
        );
        // Empty batches cover nothing and break nothing.
        let b = Batches {
            vmas: vec![vma],
            batches: vec![
                (BASE, vec![]),
                (BASE, plain_words(5, 0x40)),
                (BASE + 5 * PG, vec![]),
                (BASE + 5 * PG, plain_words(3, 0x45)),
            ],
        };
        let (r, pfns) = run_batches(&b, 8, req);
        assert_eq!(r, Ok(WalkStop::Done), "{req:?} empty batches");
        assert_eq!(pfns[7], 0x47 | V | W | STICKY);
    }
}

#[test]
fn batches_after_a_stop_are_ignored() {
    // A migration entry stops a fault walk; the backend goes on reporting.
    let mut first = plain_words(4, 0x10);
    first[2] = (1 << 12) | OTHER; // OTHERS[1]: migration
    let b = Batches {
        vmas: vec![(BASE, BASE + 8 * PG, rw(), 0)],
        batches: vec![(BASE, first), (BASE + 4 * PG, plain_words(4, 0x20))],
    };
    let (r, pfns) = run_batches(&b, 8, Request::new(REQ, 0));
    assert_eq!(
        r,
        Ok(WalkStop::WaitMigration {
            addr: BASE + 2 * PG
        })
    );
    assert_eq!(pfns[1], 0x11 | V | W | STICKY);
    assert!(pfns[2..].iter().all(|&e| e == STICKY), "{pfns:x?}");
}

#[test]
fn a_batch_at_the_top_of_the_address_space_is_checked_without_overflow() {
    let top = !(PG - 1); // the last page
    let start = top - 2 * PG;
    let b = Batches {
        vmas: vec![(start, top, rw(), 0)],
        // Three words for a two-page window ending at the last page.
        batches: vec![(start, plain_words(3, 0x50))],
    };
    let mut pfns = vec![STICKY; 2];
    let mut range = Range::new(start, top, &mut pfns);
    let mut c = WalkCounters::default();
    assert_eq!(walk(&b, &mut range, start, &mut c), Err(Error::Fault));
    assert_eq!(pfns, [0x50 | V | W | STICKY, 0x51 | V | W | STICKY]);
}

#[test]
fn hugetlb_batches_take_the_per_pte_path() {
    // Present PTEs reported in a hugetlb VMA carry the VMA's huge order,
    // which only the per-leaf rules give.
    let pages = 16;
    let pt = Pt {
        vmas: vec![(BASE, BASE + pages as u64 * PG, rw() | VmFlags::HUGETLB, 9)],
        words: plain_words(pages as u64, 0x200),
        mode: Mode::Batched(1),
        junk: 0,
    };
    let (r, pfns, c) = run(
        &pt,
        pages,
        BASE,
        Request::new(0, 0),
        &vec![0; pages],
        WalkCounters::default(),
    );
    assert_eq!(r, Ok(WalkStop::Done));
    for (i, &e) in pfns.iter().enumerate() {
        assert_eq!(HmmPfn(e).order(), 9, "page {i}");
        assert_eq!(HmmPfn(e).pfn(), 0x200 + i as u64);
    }
    assert_eq!(c.pages_filled, pages as u64);
}

/// A format that counts the words it was asked to classify in full.
struct Counting<'a> {
    fmt: Fmt<'a>,
    leaf_calls: std::cell::Cell<usize>,
    read_calls: std::cell::Cell<usize>,
}

impl PteFormat for Counting<'_> {
    type Pte = u64;
    fn read(&self, pte: &u64) -> u64 {
        self.read_calls.set(self.read_calls.get() + 1);
        *pte
    }
    fn plain(&self, w: u64) -> Option<u64> {
        self.fmt.plain(w)
    }
    fn leaf(&self, w: u64) -> Leaf {
        self.leaf_calls.set(self.leaf_calls.get() + 1);
        self.fmt.leaf(w)
    }
}

/// One batch of `words` over a one-VMA range, through `Counting`.
struct OneBatch<'a> {
    words: Vec<u64>,
    format: &'a Counting<'a>,
}

impl MmView for OneBatch<'_> {
    fn find_vma(&self, _: u64) -> Option<Vma<'_>> {
        Some(Vma::new(BASE, BASE + self.words.len() as u64 * PG, rw(), 0))
    }
    fn walk_leaves<F>(&self, _: &Vma<'_>, _: u64, _: u64, _: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        unreachable!("the walker asks for batches")
    }
    fn walk_batched<S: LeafSink>(&self, _: &Vma<'_>, start: u64, _: u64, sink: &mut S) {
        let _ = sink.ptes(start, &self.words, self.format);
    }
}

#[test]
fn each_pte_is_read_once_and_only_words_not_plain_are_classified_in_full() {
    // The fast path is the contract of `PteFormat`: `leaf` is asked only
    // for the words `plain` refused, or a plain one that needs a fault.
    let mut words = plain_words(300, 0x100);
    words[100] = 0; // none: plain too
    words[200] = (0x900 << 12) | P | SPECIAL;
    words[250] = (1 << 12) | OTHER; // migration
    for (req, words, classified) in [
        (Request::new(0, 0), words.clone(), 2),
        (Request::new(REQ, 0), plain_words(300, 0x100), 0),
        (Request::new(REQ | REQ_W, 0), plain_words(300, 0x100), 0),
        (Request::new(0, REQ | REQ_W), words.clone(), 2),
    ] {
        let format = Counting {
            fmt: Fmt {
                others: &OTHERS,
                junk: 0,
            },
            leaf_calls: std::cell::Cell::new(0),
            read_calls: std::cell::Cell::new(0),
        };
        let view = OneBatch {
            words,
            format: &format,
        };
        let mut pfns = vec![0u64; 300];
        let mut range = Range::new(BASE, BASE + 300 * PG, &mut pfns).with_request(req);
        let mut c = WalkCounters::default();
        let r = walk(&view, &mut range, BASE, &mut c);
        // The migration entry is read as 0 in a snapshot.
        assert_eq!(r, Ok(WalkStop::Done), "{req:?}");
        assert_eq!(format.leaf_calls.get(), classified, "{req:?}");
        // Each PTE is read once, as the kernel reads it once (`ptep_get`):
        // a racing update cannot show `plain` and `leaf` two values.
        assert_eq!(format.read_calls.get(), 300, "{req:?}");
        assert_eq!(
            c,
            WalkCounters {
                pages_filled: 300,
                leaves: 300
            }
        );
    }
}
