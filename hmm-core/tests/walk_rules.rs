//! Every row of the walker's output table: each leaf kind and VMA kind under
//! a snapshot, a read-fault and a write-fault request.

use hmm_core::doubles::{FaultMode, TestMm};
use hmm_core::*;

const BASE: u64 = 0x4000_0000;
const P: u64 = 0x777; // PFN placed at the page under test

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Walk completes; the entry under test holds this word.
    Out(u64),
    /// Walk stops for a fault at the page; write or not.
    Fault(bool),
    /// Walk stops to wait for migration at the page.
    Wait,
    /// Walk fails.
    Err(Error),
}

const V: u64 = 1 << 63;
const W: u64 = 1 << 62;
const E: u64 = 1 << 61;

fn rw() -> VmFlags {
    VmFlags::READ | VmFlags::WRITE
}

fn present(write: bool) -> Present {
    Present {
        pfn: P,
        write,
        ..Present::default()
    }
}

/// Run the three requests against one page mapped by `leaf` (or unmapped if
/// `None`) in a VMA with `flags`.
fn check(name: &str, flags: Option<VmFlags>, leaf: Option<Leaf>, want: [Want; 3]) {
    let requests = [
        Request::SNAPSHOT,
        Request::new(PfnFlags::REQ_FAULT.bits(), 0),
        Request::new((PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits(), 0),
    ];
    for (req, want) in requests.into_iter().zip(want) {
        let mm = TestMm::new();
        if let Some(f) = flags {
            assert!(mm.add_vma(BASE, BASE + 0x10000, f, 0, FaultMode::Populate));
        }
        if let Some(l) = leaf {
            assert!(mm.map(BASE, 1, l));
        }
        // A DMA_MAPPED mark the walker must keep.
        let mut pfns = [PfnFlags::DMA_MAPPED.bits(); 1];
        let mut range = Range::new(BASE, BASE + 0x1000, &mut pfns)
            .with_request(req)
            .with_owner(0xd0);
        let g = mm.read();
        let got = walk(&g, &mut range, BASE, &mut WalkCounters::default());
        let got = match got {
            Ok(WalkStop::Done) => {
                assert_ne!(
                    pfns[0] & PfnFlags::DMA_MAPPED.bits(),
                    0,
                    "{name}: sticky bit lost"
                );
                Want::Out(pfns[0] & !PfnFlags::DMA_MAPPED.bits())
            }
            Ok(WalkStop::NeedFault { addr, end, write }) => {
                assert_eq!((addr, end), (BASE, BASE + 0x1000), "{name}");
                // Partial-output contract: the input is untouched.
                assert_eq!(pfns[0], PfnFlags::DMA_MAPPED.bits(), "{name}");
                Want::Fault(write)
            }
            Ok(WalkStop::WaitMigration { addr }) => {
                assert_eq!(addr, BASE);
                Want::Wait
            }
            Err(e) => Want::Err(e),
        };
        assert_eq!(got, want, "{name} with {req:?}");
    }
}

#[test]
fn pte_leaves() {
    use Want::*;
    check(
        "none",
        Some(rw()),
        None,
        [Out(0), Fault(false), Fault(true)],
    );
    check(
        "present rw",
        Some(rw()),
        Some(Leaf::Present(present(true))),
        [Out(V | W | P), Out(V | W | P), Out(V | W | P)],
    );
    check(
        "present ro",
        Some(rw()),
        Some(Leaf::Present(present(false))),
        [Out(V | P), Out(V | P), Fault(true)],
    );
    let protnone = Present {
        protnone: true,
        ..present(true)
    };
    check(
        "protnone",
        Some(rw()),
        Some(Leaf::Present(protnone)),
        [Out(P), Fault(false), Fault(true)],
    );
    let special = Present {
        special: true,
        ..present(true)
    };
    check(
        "special",
        Some(rw()),
        Some(Leaf::Present(special)),
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
    let special_ro = Present {
        special: true,
        ..present(false)
    };
    check(
        "special ro",
        Some(rw()),
        Some(Leaf::Present(special_ro)),
        [Out(E), Err(Error::Fault), Fault(true)],
    );
    let zero = Present {
        zero: true,
        special: true,
        ..present(false)
    };
    check(
        "zero page",
        Some(rw()),
        Some(Leaf::Present(zero)),
        [Out(V | P), Out(V | P), Fault(true)],
    );
    check(
        "swap",
        Some(rw()),
        Some(Leaf::Swap),
        [Out(0), Fault(false), Fault(true)],
    );
    check(
        "device exclusive",
        Some(rw()),
        Some(Leaf::DeviceExclusive),
        [Out(0), Fault(false), Fault(true)],
    );
    check(
        "migration",
        Some(rw()),
        Some(Leaf::Migration),
        [Out(0), Wait, Wait],
    );
    check(
        "hwpoison",
        Some(rw()),
        Some(Leaf::HwPoison),
        [Out(0), Err(Error::Fault), Err(Error::Fault)],
    );
    check(
        "bad",
        Some(rw()),
        Some(Leaf::Bad),
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
}

#[test]
fn device_private_leaves() {
    use Want::*;
    let own_ro = Leaf::DevicePrivate {
        owner: 0xd0,
        pfn: P,
        write: false,
        order: 0,
    };
    // Ours: reported, never faulted, even for a write request on a read-only entry.
    check(
        "dev private ours",
        Some(rw()),
        Some(own_ro),
        [Out(V | P), Out(V | P), Out(V | P)],
    );
    let own_rw = Leaf::DevicePrivate {
        owner: 0xd0,
        pfn: P,
        write: true,
        order: 0,
    };
    check(
        "dev private ours rw",
        Some(rw()),
        Some(own_rw),
        [Out(V | W | P); 3],
    );
    let other = Leaf::DevicePrivate {
        owner: 0xd1,
        pfn: P,
        write: true,
        order: 0,
    };
    check(
        "dev private other",
        Some(rw()),
        Some(other),
        [Out(0), Fault(false), Fault(true)],
    );
}

#[test]
fn vma_kinds() {
    use Want::*;
    let leaf = Some(Leaf::Present(present(true)));
    check(
        "no vma",
        None,
        leaf,
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
    check(
        "VM_IO",
        Some(rw() | VmFlags::IO),
        leaf,
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
    check(
        "VM_PFNMAP",
        Some(rw() | VmFlags::PFNMAP),
        leaf,
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
    check(
        "no VM_READ",
        Some(VmFlags::WRITE),
        leaf,
        [Out(E), Err(Error::Fault), Err(Error::Fault)],
    );
    check(
        "VM_MIXEDMAP",
        Some(rw() | VmFlags::MIXEDMAP),
        leaf,
        [Out(V | W | P); 3],
    );
    // Write fault on a VMA without VM_WRITE: -EPERM; a read fault is fine.
    check(
        "read-only vma, hole",
        Some(VmFlags::READ),
        None,
        [Out(0), Fault(false), Err(Error::Perm)],
    );
    let ro = Some(Leaf::Present(present(false)));
    check(
        "read-only vma, present",
        Some(VmFlags::READ),
        ro,
        [Out(V | P), Out(V | P), Err(Error::Perm)],
    );
}

fn walk_all(mm: &TestMm, start: u64, pfns: &mut [u64], req: Request) -> Result<WalkStop, Error> {
    let end = start + pfns.len() as u64 * PAGE_SIZE;
    let mut range = Range::new(start, end, pfns)
        .with_request(req)
        .with_owner(0xd0);
    let g = mm.read();
    walk(&g, &mut range, start, &mut WalkCounters::default())
}

#[test]
fn huge_leaves_report_their_order_on_every_entry() {
    let mm = TestMm::new();
    let thp = BASE; // 2 MiB aligned
    let gig = 2u64 << 30;
    assert!(mm.add_vma(thp, thp + (2 << 20), rw(), 0, FaultMode::Populate));
    assert!(mm.add_vma(gig, gig + (1 << 30), rw(), 0, FaultMode::Populate));
    assert!(mm.map(
        thp,
        512,
        Leaf::Present(Present {
            pfn: 0x200,
            order: 9,
            write: true,
            ..Default::default()
        })
    ));
    assert!(mm.map(
        gig,
        1 << 18,
        Leaf::Present(Present {
            pfn: 1 << 18,
            order: 18,
            write: false,
            ..Default::default()
        })
    ));

    // Part of the PMD leaf, starting in its middle.
    let mut pfns = [0u64; 16];
    assert_eq!(
        walk_all(&mm, thp + 0x8000, &mut pfns, Request::SNAPSHOT),
        Ok(WalkStop::Done)
    );
    for (i, &p) in pfns.iter().enumerate() {
        let e = HmmPfn(p);
        assert_eq!(
            (e.pfn(), e.order(), e.is_writable()),
            (0x208 + i as u64, 9, true)
        );
    }
    // The PUD leaf, read-only, with a read request.
    let mut pfns = [0u64; 8];
    let req = Request::new(PfnFlags::REQ_FAULT.bits(), 0);
    assert_eq!(
        walk_all(&mm, gig + (5 << 20), &mut pfns, req),
        Ok(WalkStop::Done)
    );
    for (i, &p) in pfns.iter().enumerate() {
        let e = HmmPfn(p);
        assert_eq!(
            (e.pfn(), e.order(), e.is_valid(), e.is_writable()),
            ((1 << 18) + 1280 + i as u64, 18, true, false)
        );
    }
    // A write request against the read-only PUD leaf faults the whole span.
    let req = Request::new((PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits(), 0);
    let got = walk_all(&mm, gig + (5 << 20), &mut pfns, req);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: gig + (5 << 20),
            end: gig + (5 << 20) + 0x8000,
            write: true
        })
    );
}

#[test]
fn hugetlb_order_comes_from_the_vma_and_device_private_thp() {
    let mm = TestMm::new();
    let h = BASE;
    assert!(mm.add_vma(
        h,
        h + (4 << 20),
        rw() | VmFlags::HUGETLB,
        9,
        FaultMode::Populate
    ));
    // The backend reports a hugetlb leaf; its order is the hstate's.
    assert!(mm.map(
        h,
        512,
        Leaf::Present(Present {
            pfn: 0x400,
            order: 9,
            write: true,
            ..Default::default()
        })
    ));
    // Device-private THP of another owner in the second huge page.
    assert!(mm.map(
        h + (2 << 20),
        512,
        Leaf::DevicePrivate {
            owner: 0xd1,
            pfn: 0x800,
            write: true,
            order: 9
        }
    ));
    let mut pfns = [0u64; 1024];
    assert_eq!(
        walk_all(&mm, h, &mut pfns, Request::SNAPSHOT),
        Ok(WalkStop::Done)
    );
    assert!(pfns[..512]
        .iter()
        .all(|&p| HmmPfn(p).order() == 9 && HmmPfn(p).is_writable()));
    // Absent PMD of another owner without a fault request: ERROR.
    assert!(pfns[512..].iter().all(|&p| p == PfnFlags::ERROR.bits()));
}

#[test]
fn gaps_between_vmas_and_per_page_requests() {
    let mm = TestMm::new();
    assert!(mm.add_vma(BASE, BASE + 0x2000, rw(), 0, FaultMode::Populate));
    assert!(mm.add_vma(BASE + 0x4000, BASE + 0x6000, rw(), 0, FaultMode::Populate));
    assert!(mm.map(BASE, 1, Leaf::Present(present(true))));
    // Snapshot across the gap: gap pages are ERROR, holes 0.
    let mut pfns = [0u64; 6];
    assert_eq!(
        walk_all(&mm, BASE, &mut pfns, Request::SNAPSHOT),
        Ok(WalkStop::Done)
    );
    assert_eq!(pfns, [V | W | P, 0, E, E, 0, 0]);
    // Per-page requests: only page 5 asks. Pages 4 and 5 share one empty
    // PMD-level hole, so (as in the kernel) the fault covers the whole hole
    // span and the walk stops at its start with everything before filled.
    let mut pfns = [0, 0, 0, 0, 0, PfnFlags::REQ_FAULT.bits()];
    let req = Request::new(0, u64::MAX);
    let got = walk_all(&mm, BASE, &mut pfns, req);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: BASE + 0x4000,
            end: BASE + 0x6000,
            write: false
        })
    );
    assert_eq!(pfns, [V | W | P, 0, E, E, 0, PfnFlags::REQ_FAULT.bits()]);
    // A request inside the gap is -EFAULT.
    let mut pfns = [0, 0, PfnFlags::REQ_FAULT.bits(), 0, 0, 0];
    assert_eq!(walk_all(&mm, BASE, &mut pfns, req), Err(Error::Fault));
}

#[test]
fn bad_cursor_is_einval_not_a_panic() {
    let mm = TestMm::new();
    let mut pfns = [0u64; 2];
    let mut range = Range::new(BASE, BASE + 0x2000, &mut pfns);
    let g = mm.read();
    for from in [BASE + 1, BASE - 0x1000, BASE + 0x3000] {
        assert_eq!(
            walk(&g, &mut range, from, &mut WalkCounters::default()),
            Err(Error::Inval)
        );
    }
    // A cursor at the end is an empty, finished walk.
    assert_eq!(
        walk(&g, &mut range, BASE + 0x2000, &mut WalkCounters::default()),
        Ok(WalkStop::Done)
    );
}

/// A view that reports its whole window as one span of `leaf`, to test PTE
/// runs (the batched form a backend may use).
struct OneSpan(Leaf);

impl MmView for OneSpan {
    fn find_vma(&self, _addr: u64) -> Option<Vma<'_>> {
        Some(Vma::new(
            BASE,
            BASE + 0x10000,
            VmFlags::READ | VmFlags::WRITE,
            0,
        ))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> core::ops::ControlFlow<()>,
    {
        let _ = f(start, end, self.0);
    }
}

/// Walk `range` (starting at `BASE`) over a view reporting it as one span.
fn walk_span(leaf: Leaf, range: &mut Range<'_>) -> Result<WalkStop, Error> {
    walk(&OneSpan(leaf), range, BASE, &mut WalkCounters::default())
}

#[test]
fn pte_runs_keep_per_pte_semantics() {
    let req = Request::new(0, u64::MAX);
    let ro = Leaf::Present(Present {
        pfn: 0x100,
        ..Present::default()
    });
    // Only page 2 asks for write: the run is filled up to it and only that
    // page is faulted (a hole span would fault all four).
    let mut pfns = [0, PfnFlags::REQ_FAULT.bits(), REQ_W, 0];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns).with_request(req);
    let got = walk_span(ro, &mut range);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: BASE + 0x2000,
            end: BASE + 0x3000,
            write: true
        })
    );
    assert_eq!(pfns, [V | 0x100, V | 0x101, REQ_W, 0]);
    // A run of none PTEs: only the requested page is faulted.
    let mut pfns = [0, 0, PfnFlags::REQ_FAULT.bits(), 0];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns).with_request(req);
    let got = walk_span(Leaf::EmptyPtes, &mut range);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: BASE + 0x2000,
            end: BASE + 0x3000,
            write: false
        })
    );
    assert_eq!(pfns, [0, 0, PfnFlags::REQ_FAULT.bits(), 0]);
    // The same as a PMD-level hole: the whole span is the fault unit.
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns).with_request(req);
    let got = walk_span(Leaf::Hole, &mut range);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: BASE,
            end: BASE + 0x4000,
            write: false
        })
    );
    // A special run asked for: -EFAULT at the asking page, ERROR before it.
    let special = Leaf::Present(Present {
        pfn: 0x100,
        write: true,
        special: true,
        ..Present::default()
    });
    let mut pfns = [0, PfnFlags::REQ_FAULT.bits(), 0, 0];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns).with_request(req);
    let got = walk_span(special, &mut range);
    assert_eq!(got, Err(Error::Fault));
    assert_eq!(pfns[0], E);
    // Snapshot of a run: consecutive PFNs, sticky bits kept.
    let mut pfns = [PfnFlags::DMA_MAPPED.bits(), 0, 0, 0];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns);
    assert_eq!(walk_span(ro, &mut range), Ok(WalkStop::Done));
    assert_eq!(
        pfns,
        [
            PfnFlags::DMA_MAPPED.bits() | V | 0x100,
            V | 0x101,
            V | 0x102,
            V | 0x103
        ]
    );
}

const REQ_W: u64 = V | W;

#[test]
fn caller_counters_saturate_instead_of_overflowing() {
    let mm = TestMm::new();
    assert!(mm.add_vma(BASE, BASE + 0x4000, rw(), 0, FaultMode::Populate));
    assert!(mm.map(BASE, 4, Leaf::Present(present(true))));
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns);
    let g = mm.read();
    let mut c = WalkCounters {
        pages_filled: u64::MAX - 1,
        leaves: u64::MAX,
    };
    assert_eq!(walk(&g, &mut range, BASE, &mut c), Ok(WalkStop::Done));
    assert_eq!((c.pages_filled, c.leaves), (u64::MAX, u64::MAX));
    assert!(pfns.iter().all(|&p| HmmPfn(p).is_valid()));
}

#[test]
fn counters_saturate_over_gaps_and_unmirrorable_vmas() {
    // No VMA at all, then a VM_IO VMA: both are filled with ERROR straight
    // into the caller's counters.
    let mm = TestMm::new();
    assert!(mm.add_vma(
        BASE + 0x2000,
        BASE + 0x4000,
        rw() | VmFlags::IO,
        0,
        FaultMode::Populate
    ));
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns);
    let g = mm.read();
    let mut c = WalkCounters {
        pages_filled: u64::MAX - 1,
        leaves: 7,
    };
    assert_eq!(walk(&g, &mut range, BASE, &mut c), Ok(WalkStop::Done));
    assert_eq!((c.pages_filled, c.leaves), (u64::MAX, 7));
    assert_eq!(pfns, [E; 4]);
}

/// A view that keeps reporting spans after the walker said stop: the first
/// span again (now as a writable page), then the rest of the window.
struct IgnoresBreak;

impl MmView for IgnoresBreak {
    fn find_vma(&self, _addr: u64) -> Option<Vma<'_>> {
        Some(Vma::new(BASE, BASE + 0x10000, rw(), 0))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> core::ops::ControlFlow<()>,
    {
        let page = start + 0x1000;
        let _ = f(start, page, Leaf::Hole);
        let _ = f(start, page, Leaf::Present(present(true)));
        let _ = f(page, end, Leaf::Present(present(true)));
    }
}

#[test]
fn a_backend_that_ignores_break_cannot_write_past_the_stop() {
    // Page 0 needs a fault: the walk stops there, and entries from the stop
    // on keep their input whatever the backend reports afterwards.
    let req = Request::new(PfnFlags::REQ_FAULT.bits(), 0);
    let input = [PfnFlags::DMA_MAPPED.bits(), 0, 0];
    let mut pfns = input;
    let mut range = Range::new(BASE, BASE + 0x3000, &mut pfns).with_request(req);
    let mut c = WalkCounters::default();
    let got = walk(&IgnoresBreak, &mut range, BASE, &mut c);
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: BASE,
            end: BASE + 0x1000,
            write: false
        })
    );
    assert_eq!(pfns, input);
    assert_eq!(c.pages_filled, 0);
    // In a snapshot the repeated span is out of order (-EFAULT), and the
    // spans after it write nothing.
    let mut pfns = [E; 3];
    let mut range = Range::new(BASE, BASE + 0x3000, &mut pfns);
    let mut c = WalkCounters::default();
    assert_eq!(
        walk(&IgnoresBreak, &mut range, BASE, &mut c),
        Err(Error::Fault)
    );
    assert_eq!(pfns, [0, E, E]);
    assert_eq!(c.pages_filled, 1);
}

/// A 2 MiB hugetlb VMA at `BASE` reported as one span of `leaf`.
struct HugetlbSpan(Leaf);

impl MmView for HugetlbSpan {
    fn find_vma(&self, _addr: u64) -> Option<Vma<'_>> {
        Some(Vma::new(BASE, BASE + (2 << 20), rw() | VmFlags::HUGETLB, 9))
    }
    fn walk_leaves<F>(&self, _vma: &Vma<'_>, start: u64, end: u64, mut f: F)
    where
        F: FnMut(u64, u64, Leaf) -> core::ops::ControlFlow<()>,
    {
        let _ = f(start, end, self.0);
    }
}

/// The decision written down in the `pfn` module docs: a non-present
/// hugetlb entry that no one asked to fault is 0 (sticky bits kept), with no
/// order and no PFN, where the kernel's hugetlb callback writes the
/// non-present entry's `pte_pfn()` plus the hstate order.
#[test]
fn non_present_hugetlb_entries_are_zero() {
    let dma = PfnFlags::DMA_MAPPED.bits();
    let input: [u64; 4] = [dma, 0, dma, 0];
    // The last four pages of the huge page.
    let start = BASE + (2 << 20) - 0x4000;
    for leaf in [Leaf::Hole, Leaf::Swap, Leaf::Migration, Leaf::HwPoison] {
        let mut pfns = input;
        let mut range = Range::new(start, start + 0x4000, &mut pfns);
        let got = walk(
            &HugetlbSpan(leaf),
            &mut range,
            start,
            &mut WalkCounters::default(),
        );
        assert_eq!(got, Ok(WalkStop::Done), "{leaf:?}");
        assert_eq!(pfns, input, "{leaf:?}: no PFN, no order, sticky bits kept");
    }
    // Present: PFN (at the page's offset in the huge page) and order 9.
    let p = Present {
        pfn: 0x200,
        order: 9,
        write: true,
        ..Present::default()
    };
    let mut pfns = input;
    let mut range = Range::new(start, start + 0x4000, &mut pfns);
    let got = walk(
        &HugetlbSpan(Leaf::Present(p)),
        &mut range,
        start,
        &mut WalkCounters::default(),
    );
    assert_eq!(got, Ok(WalkStop::Done));
    let o9 = 9u64 << 53;
    assert_eq!(
        pfns,
        [
            dma | V | W | o9 | 0x200,
            V | W | o9 | 0x201,
            dma | V | W | o9 | 0x202,
            V | W | o9 | 0x203
        ]
    );
    // Protnone (does not arise for hugetlb in Linux): the PFN alone.
    let mut pfns = input;
    let mut range = Range::new(start, start + 0x4000, &mut pfns);
    let prot = Leaf::Present(Present {
        protnone: true,
        ..p
    });
    let got = walk(
        &HugetlbSpan(prot),
        &mut range,
        start,
        &mut WalkCounters::default(),
    );
    assert_eq!(got, Ok(WalkStop::Done));
    assert_eq!(pfns, [dma | 0x200, 0x201, dma | 0x202, 0x203]);
    // Asked for: the whole span is one fault.
    let mut pfns = [0, 0, 0, PfnFlags::REQ_FAULT.bits()];
    let mut range =
        Range::new(start, start + 0x4000, &mut pfns).with_request(Request::new(0, u64::MAX));
    let got = walk(
        &HugetlbSpan(Leaf::Hole),
        &mut range,
        start,
        &mut WalkCounters::default(),
    );
    assert_eq!(
        got,
        Ok(WalkStop::NeedFault {
            addr: start,
            end: start + 0x4000,
            write: false
        })
    );
}
