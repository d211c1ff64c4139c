//! The walker's defences against a backend that breaks the `MmView`
//! contract: VMAs below the address, empty or inverted VMAs, and spans that
//! are out of order, empty, inverted, unaligned, past the window or cut
//! short. Each is `-EFAULT` with nothing written from the bad answer on,
//! under a snapshot (the walker's fast path) and under a fault request (the
//! slow path). Also the walk counters of both paths.

use core::ops::ControlFlow;

use hmm_core::*;

const BASE: u64 = 0x4000_0000;
const PG: u64 = PAGE_SIZE;
const V: u64 = 1 << 63;
const W: u64 = 1 << 62;
const E: u64 = 1 << 61;
const STICKY: u64 = PfnFlags::DMA_MAPPED.bits();

fn rw() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE
}

fn pte(pfn: u64) -> Leaf {
    Leaf::Present(Present {
        pfn,
        write: true,
        ..Present::default()
    })
}

/// A view with fixed answers: `find_vma` returns the first VMA of the list
/// whose end is above the address (or, with `fixed`, the first VMA always);
/// `walk_leaves` reports the spans of the list in order, whatever it is asked.
struct Script {
    vmas: Vec<(u64, u64, VmFlags, u8)>,
    fixed: bool,
    spans: Vec<(u64, u64, Leaf)>,
}

impl Script {
    fn new(vmas: &[(u64, u64, VmFlags, u8)], spans: &[(u64, u64, Leaf)]) -> Self {
        Script {
            vmas: vmas.to_vec(),
            fixed: false,
            spans: spans.to_vec(),
        }
    }
    fn fixed(vma: (u64, u64, VmFlags, u8)) -> Self {
        Script {
            vmas: vec![vma],
            fixed: true,
            spans: vec![],
        }
    }
}

impl MmView for Script {
    fn find_vma(&self, addr: u64) -> Option<Vma<'_>> {
        self.vmas
            .iter()
            .find(|v| self.fixed || v.1 > addr)
            .map(|&(s, e, f, o)| Vma::new(s, e, f, o))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, _start: u64, _end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> ControlFlow<()>,
    {
        for &(a, b, leaf) in &self.spans {
            if f(a, b, leaf).is_break() {
                return;
            }
        }
    }
}

/// Walk `[BASE, BASE + n pages)` from `BASE` with entries `STICKY`.
fn run(view: &Script, n: usize, req: Request) -> (Result<WalkStop, Error>, Vec<u64>, WalkCounters) {
    let mut pfns = vec![STICKY; n];
    let mut range = Range::new(BASE, BASE + n as u64 * PG, &mut pfns).with_request(req);
    let mut c = WalkCounters::default();
    let got = walk(view, &mut range, BASE, &mut c);
    (got, pfns, c)
}

const SNAPSHOT: Request = Request::SNAPSHOT;
/// Faults requested only by entries (none of ours asks): the slow path.
const PER_PAGE: Request = Request::new(0, V | W);

#[test]
fn vmas_below_the_address_empty_or_inverted_are_efault() {
    for vma in [
        (BASE - 2 * PG, BASE, rw(), 0),          // ends at the address
        (BASE - 2 * PG, BASE - PG, rw(), 0),     // below it
        (BASE + 2 * PG, BASE + 2 * PG, rw(), 0), // empty, above it
        (BASE + 3 * PG, BASE + 2 * PG, rw(), 0), // inverted, above it
        (BASE + 3 * PG, BASE - PG, rw(), 0),     // inverted around it
        (BASE + 0x800, BASE + 3 * PG, rw(), 0),  // starts inside the page
        (BASE, BASE + 0x800, rw(), 0),           // ends inside the page
    ] {
        for req in [SNAPSHOT, PER_PAGE] {
            let (got, pfns, c) = run(&Script::fixed(vma), 4, req);
            assert_eq!(got, Err(Error::Fault), "{vma:x?}");
            assert_eq!(pfns, vec![STICKY; 4], "{vma:x?}");
            assert_eq!(c, WalkCounters::default());
        }
    }
}

#[test]
fn a_gap_before_a_vma_is_error_and_the_vma_is_walked() {
    // The reference for the cases above: a VMA starting above the address
    // is a gap up to its start.
    let vma = (BASE + 2 * PG, BASE + 4 * PG, rw(), 0);
    let mut s = Script::new(&[vma], &[(BASE + 2 * PG, BASE + 4 * PG, pte(0x10))]);
    s.fixed = false;
    let (got, pfns, c) = run(&s, 4, SNAPSHOT);
    assert_eq!(got, Ok(WalkStop::Done));
    assert_eq!(
        pfns,
        [
            STICKY | E,
            STICKY | E,
            STICKY | V | W | 0x10,
            STICKY | V | W | 0x11
        ]
    );
    assert_eq!((c.pages_filled, c.leaves), (4, 1));
}

/// Bad span lists for a window of four pages in one VMA; the first
/// (good) span covers page 0.
/// A span as a backend reports it.
type Span = (u64, u64, Leaf);

fn bad_spans() -> Vec<(&'static str, Vec<Span>)> {
    let good = (BASE, BASE + PG, pte(0x10));
    vec![
        ("out of order", vec![good, (BASE, BASE + 4 * PG, pte(0x20))]),
        ("gap", vec![good, (BASE + 2 * PG, BASE + 4 * PG, pte(0x20))]),
        (
            "empty",
            vec![
                good,
                (BASE + PG, BASE + PG, pte(0x20)),
                (BASE + PG, BASE + 4 * PG, pte(0x20)),
            ],
        ),
        ("inverted", vec![good, (BASE + PG, BASE, pte(0x20))]),
        (
            "past the window",
            vec![good, (BASE + PG, BASE + 6 * PG, pte(0x20))],
        ),
        (
            "unaligned end",
            vec![
                good,
                (BASE + PG, BASE + 0x2800, pte(0x20)),
                (BASE + 0x2800, BASE + 4 * PG, pte(0x20)),
            ],
        ),
        (
            "unaligned single",
            vec![
                good,
                (BASE + PG, BASE + 0x1800, pte(0x20)),
                (BASE + 0x1800, BASE + 4 * PG, pte(0x20)),
            ],
        ),
        (
            "cut short",
            vec![good, (BASE + PG, BASE + 3 * PG, pte(0x20))],
        ),
        ("nothing", vec![]),
    ]
}

#[test]
fn bad_spans_are_efault_with_nothing_written_from_them_on() {
    let vma = (BASE, BASE + 8 * PG, rw(), 0);
    for (name, spans) in bad_spans() {
        for req in [SNAPSHOT, PER_PAGE] {
            let s = Script::new(&[vma], &spans);
            let (got, pfns, c) = run(&s, 4, req);
            assert_eq!(got, Err(Error::Fault), "{name} {req:?}");
            if name == "nothing" {
                assert_eq!(pfns, vec![STICKY; 4], "{name}");
                continue;
            }
            let filled = if name == "cut short" { 3 } else { 1 };
            assert_eq!(pfns[0], STICKY | V | W | 0x10, "{name} {req:?}");
            for (i, &p) in pfns.iter().enumerate().skip(filled) {
                assert_eq!(p, STICKY, "{name} {req:?}: entry {i} written");
            }
            assert_eq!(c.pages_filled, filled as u64, "{name} {req:?}");
        }
    }
}

#[test]
fn a_span_past_its_vma_writes_nothing_of_the_next_vma() {
    // Two VMAs; the backend of the first reports a span running into the
    // second.
    let vmas = [
        (BASE, BASE + 2 * PG, rw(), 0),
        (BASE + 2 * PG, BASE + 4 * PG, rw(), 0),
    ];
    for req in [SNAPSHOT, PER_PAGE] {
        let s = Script::new(&vmas, &[(BASE, BASE + 4 * PG, pte(0x10))]);
        let (got, pfns, _) = run(&s, 4, req);
        assert_eq!(got, Err(Error::Fault), "{req:?}");
        assert_eq!(pfns, vec![STICKY; 4], "{req:?}");
    }
}

#[test]
fn counters_count_pages_and_leaves_on_both_paths() {
    let vma = (BASE, BASE + 8 * PG, rw(), 0);
    // Two single PTEs and a run of three.
    let spans = [
        (BASE, BASE + PG, pte(0x10)),
        (BASE + PG, BASE + 2 * PG, pte(0x30)),
        (BASE + 2 * PG, BASE + 5 * PG, pte(0x50)),
    ];
    for req in [SNAPSHOT, PER_PAGE] {
        let s = Script::new(&[vma], &spans);
        let (got, pfns, c) = run(&s, 5, req);
        assert_eq!(got, Ok(WalkStop::Done));
        let o = STICKY | V | W;
        assert_eq!(
            pfns,
            [o | 0x10, o | 0x30, o | 0x50, o | 0x51, o | 0x52],
            "{req:?}"
        );
        assert_eq!((c.pages_filled, c.leaves), (5, 3), "{req:?}");
        // They add to what the caller had.
        let mut pfns = vec![0u64; 5];
        let mut range = Range::new(BASE, BASE + 5 * PG, &mut pfns).with_request(req);
        let mut c = WalkCounters {
            pages_filled: 10,
            leaves: 20,
        };
        assert_eq!(walk(&s, &mut range, BASE, &mut c), Ok(WalkStop::Done));
        assert_eq!((c.pages_filled, c.leaves), (15, 23), "{req:?}");
    }
}

#[test]
fn hugetlb_reports_the_vma_order_even_for_a_pte_sized_leaf() {
    // A hugetlb VMA whose backend reports order-0 leaves (contiguous-PTE
    // hugetlb): the order is the VMA's, under a snapshot too.
    let vma = (BASE, BASE + (2 << 20), rw() | VmFlags::HUGETLB, 9);
    let s = Script::new(&[vma], &[(BASE, BASE + 2 * PG, pte(0x200))]);
    let (got, pfns, _) = run(&s, 2, SNAPSHOT);
    assert_eq!(got, Ok(WalkStop::Done));
    let o = STICKY | V | W | (9 << 53);
    assert_eq!(pfns, [o | 0x200, o | 0x201]);
}

#[test]
fn special_huge_leaves_are_error_and_the_huge_zero_page_is_valid() {
    let vma = (BASE, BASE + (4 << 20), rw(), 0);
    let huge = |special: bool, zero: bool| {
        Leaf::Present(Present {
            pfn: 0x400,
            order: 9,
            write: false,
            special,
            zero,
            protnone: false,
        })
    };
    // A special PMD (no struct page): ERROR under a snapshot, -EFAULT when
    // asked for.
    let s = Script::new(&[vma], &[(BASE, BASE + 2 * PG, huge(true, false))]);
    let (got, pfns, _) = run(&s, 2, SNAPSHOT);
    assert_eq!(got, Ok(WalkStop::Done));
    assert_eq!(pfns, [STICKY | E, STICKY | E]);
    let (got, pfns, _) = run(&s, 2, Request::new(V, 0));
    assert_eq!(got, Err(Error::Fault));
    assert_eq!(pfns, vec![STICKY; 2]);
    // The huge zero page: a read-only VALID PFN with its order, and a read
    // request is met without a fault.
    let s = Script::new(&[vma], &[(BASE, BASE + 2 * PG, huge(true, true))]);
    for req in [SNAPSHOT, Request::new(V, 0)] {
        let (got, pfns, _) = run(&s, 2, req);
        assert_eq!(got, Ok(WalkStop::Done), "{req:?}");
        let o = STICKY | V | (9 << 53);
        assert_eq!(pfns, [o | 0x400, o | 0x401], "{req:?}");
    }
}
