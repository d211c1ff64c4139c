//! Property test against hmm-core's `TestMm`: random guest faults, host
//! unmaps and invalidations; after every step the second-stage table agrees
//! with the host page tables (`GuestMemory::audit`), and a fault reported
//! mapped left the faulting GPA mapped with the access allowed.

use std::cell::Cell;

use backend_hypervisor::*;
use hmm_core::doubles::{FaultMode, TestMm};
use hmm_core::{Env, VmFlags};
use proptest::prelude::*;

const M2: u64 = 2 << 20;
const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

// Host layout: A = 24 anonymous pages, B = two 2 MiB hugetlb pages,
// C = 8 userfaultfd pages (the handler always answers).
const HVA_A: u64 = 0x7f00_0000_0000;
const HVA_B: u64 = 0x7f00_0040_0000;
const HVA_C: u64 = 0x7f00_0100_0000;
const GPA_A: u64 = 0x40_0000;
const GPA_B: u64 = 0x8000_0000;
const GPA_C: u64 = 0x1_0000_0000;
const PAGES_A: u64 = 24;
const PAGES_C: u64 = 8;

struct Tlb(Cell<u64>);
impl TlbFlush for Tlb {
    fn flush_range(&self, _: u64, _: u64) {
        self.0.set(self.0.get() + 1);
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Guest access to region `r` at page `page` (modulo its size).
    Fault {
        r: u8,
        page: u64,
        write: bool,
        nowait: bool,
    },
    /// The host unmaps pages `[page, page + n)` of region A or C.
    HostUnmap { c: bool, page: u64, n: u64 },
    /// The host frees one of B's huge pages.
    HugeZap { which: u64 },
    /// An invalidation that does not change the host (THP split notice,
    /// clear-refs): `[page, page + n)` of region `r`.
    Notice { r: u8, page: u64, n: u64 },
    /// The VMM zaps guest pages without touching the host.
    Zap { r: u8, page: u64, n: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u64..1024, any::<bool>(), any::<bool>())
            .prop_map(|(r, page, write, nowait)| Op::Fault { r, page, write, nowait }),
        2 => (any::<bool>(), 0u64..24, 1u64..6).prop_map(|(c, page, n)| Op::HostUnmap { c, page, n }),
        1 => (0u64..2).prop_map(|which| Op::HugeZap { which }),
        1 => (0u8..3, 0u64..1024, 1u64..600).prop_map(|(r, page, n)| Op::Notice { r, page, n }),
        1 => (0u8..3, 0u64..1024, 1u64..600).prop_map(|(r, page, n)| Op::Zap { r, page, n }),
    ]
}

fn region_pages(r: u8) -> u64 {
    match r {
        0 => PAGES_A,
        1 => 1024,
        _ => PAGES_C,
    }
}

fn run<F: Format>(ops: &[Op]) {
    let mm = TestMm::new();
    assert!(mm.add_vma(HVA_A, HVA_A + PAGES_A * 4096, RW, 0, FaultMode::Populate));
    assert!(mm.add_vma(
        HVA_B,
        HVA_B + 2 * M2,
        RW | VmFlags::HUGETLB,
        9,
        FaultMode::Populate
    ));
    assert!(mm.add_vma(
        HVA_C,
        HVA_C + PAGES_C * 4096,
        RW,
        0,
        FaultMode::Userfault { resolve: true }
    ));
    let pool: Box<StaticPool<64>> = Box::default();
    let tlb = Tlb(Cell::new(0));
    let host = Env::new(&mm, &mm).with_signals(&mm).with_clock(&mm);
    let vm: GuestMemory<'_, F, _, _, _, TestMm, 4, 4> =
        GuestMemory::new(host, &*pool, &tlb, Config::default()).unwrap();
    let perm = Perm::R | Perm::W;
    let ids = [
        vm.add_region(
            RegionSpec {
                gpa: GPA_A,
                size: PAGES_A * 4096,
                hva: HVA_A,
                perm,
            },
            &mm,
        )
        .unwrap(),
        vm.add_region(
            RegionSpec {
                gpa: GPA_B,
                size: 2 * M2,
                hva: HVA_B,
                perm,
            },
            &mm,
        )
        .unwrap(),
        vm.add_region(
            RegionSpec {
                gpa: GPA_C,
                size: PAGES_C * 4096,
                hva: HVA_C,
                perm,
            },
            &mm,
        )
        .unwrap(),
    ];
    let base = |r: u8| [(GPA_A, HVA_A), (GPA_B, HVA_B), (GPA_C, HVA_C)][r as usize];
    for op in ops {
        match *op {
            Op::Fault {
                r,
                page,
                write,
                nowait,
            } => {
                let gpa = base(r).0 + (page % region_pages(r)) * 4096;
                let access = if write { Perm::R | Perm::W } else { Perm::R };
                let out = if nowait {
                    match vm.handle_fault_nowait(gpa, access) {
                        GuestFault::Pending(t) => {
                            let c = vm.claim_async().and_then(|t| vm.complete_async(t)).unwrap();
                            assert_eq!(c.token, t);
                            let AsyncStatus::Done(o) = vm.poll_async(t) else {
                                panic!()
                            };
                            assert_eq!(o, c.outcome);
                            o
                        }
                        o => o,
                    }
                } else {
                    vm.handle_fault(gpa, access)
                };
                match out {
                    GuestFault::Mapped { size, .. } => {
                        let m = vm
                            .translate(gpa)
                            .expect("mapped fault leaves the GPA mapped");
                        assert_eq!(m.size, size);
                        assert!(m.attrs.perm.contains(access), "{m:?} for {access:?}");
                    }
                    other => panic!("fault at {gpa:#x}: {other:?}"),
                }
            }
            Op::HostUnmap { c, page, n } => {
                let (pages, hva, id) = if c {
                    (PAGES_C, HVA_C, ids[2])
                } else {
                    (PAGES_A, HVA_A, ids[0])
                };
                let s = hva + (page % pages) * 4096;
                let e = (s + n * 4096).min(hva + pages * 4096);
                assert!(vm.invalidate(id, s, e, true, || mm.invalidate()));
                mm.unmap(s, e);
            }
            Op::HugeZap { which } => {
                let s = HVA_B + which * M2;
                assert!(vm.invalidate(ids[1], s, s + M2, true, || mm.invalidate()));
                mm.unmap(s, s + M2);
            }
            Op::Notice { r, page, n } => {
                let (_, hva) = base(r);
                let s = hva + (page % region_pages(r)) * 4096;
                assert!(vm.invalidate(ids[r as usize], s, s + n * 4096, true, || mm.invalidate()));
            }
            Op::Zap { r, page, n } => {
                let (gpa, _) = base(r);
                let s = gpa + (page % region_pages(r)) * 4096;
                vm.zap(s, s + n * 4096);
            }
        }
        if let Err(d) = vm.audit() {
            panic!("after {op:?}: {d:?}");
        }
    }
    // Tearing everything down gives every table page back.
    for id in ids {
        vm.remove_region(id).unwrap();
    }
    assert_eq!(pool.in_use(), 1);
    vm.destroy();
    assert_eq!(pool.in_use(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("HYP_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ept_stays_coherent(ops in proptest::collection::vec(op(), 1..40)) {
        run::<Ept>(&ops);
    }

    #[test]
    fn stage2_stays_coherent(ops in proptest::collection::vec(op(), 1..40)) {
        run::<Stage2>(&ops);
    }
}
