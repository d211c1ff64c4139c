//! Property test over backend-sim: random guest faults (blocking and
//! no-wait) interleaved with random host operations (munmap and re-mmap,
//! mprotect, migration, MADV_DONTNEED, swap-out, THP split, CPU writes).
//! After every step the second-stage tables agree with the host page tables
//! and the guest reads what the host reads; a fault succeeds exactly when
//! the host allows the access.

mod common;

use backend_hypervisor::*;
use common::*;
use hmm_core::{VmFlags, PAGE_SIZE};
use proptest::prelude::*;

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);
const HVA: u64 = 0x7f00_0000_0000;
const GPA: u64 = 0x8000_0000;
/// Two windows: the first with 4 KiB pages, the second THP-eligible.
const PAGES: u64 = 1024;

#[derive(Debug, Clone)]
enum Op {
    Fault {
        page: u64,
        write: bool,
        nowait: bool,
    },
    Remap {
        page: u64,
        n: u64,
    },
    Protect {
        page: u64,
        n: u64,
    },
    Unprotect,
    Migrate {
        page: u64,
        n: u64,
    },
    Dontneed {
        page: u64,
        n: u64,
    },
    SwapOut {
        page: u64,
        n: u64,
    },
    SplitThp,
    CpuWrite {
        page: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let run = || (0..PAGES, 1u64..64);
    prop_oneof![
        6 => (0..PAGES, any::<bool>(), any::<bool>())
            .prop_map(|(page, write, nowait)| Op::Fault { page, write, nowait }),
        1 => run().prop_map(|(page, n)| Op::Remap { page, n }),
        1 => run().prop_map(|(page, n)| Op::Protect { page, n }),
        1 => Just(Op::Unprotect),
        1 => run().prop_map(|(page, n)| Op::Migrate { page, n }),
        1 => run().prop_map(|(page, n)| Op::Dontneed { page, n }),
        1 => run().prop_map(|(page, n)| Op::SwapOut { page, n }),
        1 => Just(Op::SplitThp),
        2 => (0..PAGES).prop_map(|page| Op::CpuWrite { page }),
    ]
}

fn clip(page: u64, n: u64) -> (u64, u64) {
    let n = n.min(PAGES - page);
    (HVA + page * PAGE_SIZE, n * PAGE_SIZE)
}

fn run<F: Format + Send + Sync + 'static>(ops: &[Op]) {
    let g = Guest::<F>::with_pool(128);
    let len = PAGES * PAGE_SIZE;
    g.mm.mmap_anon(Some(HVA), len, RW).unwrap();
    g.mm.madvise_hugepage(HVA + 2 * (1 << 20), 2 << 20).unwrap();
    g.add_region(GPA, len, HVA, Perm::R | Perm::W);
    // Host write permission per page.
    let mut writable = vec![true; PAGES as usize];
    for op in ops {
        match *op {
            Op::Fault {
                page,
                write,
                nowait,
            } => {
                let gpa = GPA + page * PAGE_SIZE;
                let access = if write { Perm::R | Perm::W } else { Perm::R };
                let mut out = if nowait {
                    g.vm.handle_fault_nowait(gpa, access)
                } else {
                    g.vm.handle_fault(gpa, access)
                };
                if let GuestFault::Pending(t) = out {
                    panic!("nothing here blocks, yet {t:?}");
                }
                if out == GuestFault::Retry {
                    out = g.fault_in(gpa, access);
                }
                if write && !writable[page as usize] {
                    assert_eq!(
                        out,
                        GuestFault::Error(FaultError::Host(hmm_core::Error::Perm)),
                        "write to a read-only host page"
                    );
                } else {
                    let GuestFault::Mapped { size, .. } = out else {
                        panic!("fault at page {page} ({access:?}): {out:?}");
                    };
                    let m = g.vm.translate(gpa).unwrap();
                    assert_eq!(m.size, size);
                    assert!(m.attrs.perm.contains(access));
                }
            }
            Op::Remap { page, n } => {
                let (a, l) = clip(page, n);
                g.mm.munmap(g.task, a, l).unwrap();
                g.mm.mmap_anon(Some(a), l, RW).unwrap();
                writable[page as usize..(page + l / PAGE_SIZE) as usize].fill(true);
            }
            Op::Protect { page, n } => {
                let (a, l) = clip(page, n);
                g.mm.mprotect(a, l, VmFlags::READ).unwrap();
                writable[page as usize..(page + l / PAGE_SIZE) as usize].fill(false);
            }
            Op::Unprotect => {
                g.mm.mprotect(HVA, len, RW).unwrap();
                writable.fill(true);
            }
            Op::Migrate { page, n } => {
                let (a, l) = clip(page, n);
                g.mm.migrate(g.task, a, l, None).unwrap();
            }
            Op::Dontneed { page, n } => {
                let (a, l) = clip(page, n);
                g.mm.madvise_dontneed(g.task, a, l).unwrap();
            }
            Op::SwapOut { page, n } => {
                let (a, l) = clip(page, n);
                g.mm.swap_out(g.task, a, l).unwrap();
            }
            Op::SplitThp => g.mm.split_huge(g.task, HVA, len).unwrap(),
            Op::CpuWrite { page } => {
                if writable[page as usize] {
                    let a = HVA + page * PAGE_SIZE;
                    g.mm.write_bytes(g.task, a, &page_for(a)[..64]).unwrap();
                }
            }
        }
        if let Err(d) = g.vm.audit() {
            panic!("after {op:?}: {d:?}");
        }
    }
    g.check_coherent(GPA, HVA, PAGES);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("HYP_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn ept_agrees_with_host(ops in proptest::collection::vec(op(), 1..30)) {
        run::<Ept>(&ops);
    }

    #[test]
    fn stage2_agrees_with_host(ops in proptest::collection::vec(op(), 1..30)) {
        run::<Stage2>(&ops);
    }
}
