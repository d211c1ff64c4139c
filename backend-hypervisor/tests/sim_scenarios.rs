//! Guest-memory scenarios with backend-sim as the host address space:
//! populated, THP and hugetlb backing, userfaultfd post-copy with a handler
//! thread, and CPU-side munmap / mprotect / migration during guest faults.
//! After each step the second-stage tables agree with the host page tables
//! and the guest reads what the host reads.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backend_hypervisor::*;
use backend_sim::task::Task;
use backend_sim::userfaultfd::{CopyMode, Features, UffdMsg};
use backend_sim::Errno;
use common::*;
use hmm_core::{VmFlags, PAGE_SIZE};

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);
const HVA: u64 = 0x7f00_0000_0000;
const GPA: u64 = 0x4000_0000;

fn populated<F: Format + Send + Sync + 'static>() {
    let g = Guest::<F>::new();
    let len = 2 * M2;
    let hva = g.mm.mmap_anon(Some(HVA), len, RW).unwrap();
    for a in (hva..hva + len).step_by(PAGE_SIZE as usize) {
        g.mm.write_bytes(g.task, a, &page_for(a)).unwrap();
    }
    g.add_region(GPA, len, hva, Perm::R | Perm::W | Perm::X);
    assert_eq!(
        g.fault_in(GPA + M2 + 0x5000, Perm::R),
        GuestFault::Mapped {
            size: PageSize::Size4K,
            leaves: 512
        }
    );
    // The whole 2 MiB window is mapped, the other one is not.
    assert_eq!(leaves(&g).len(), 512);
    assert!(g.vm.translate(GPA).is_none());
    let mut buf = vec![0u8; 4096];
    g.guest_read(GPA + M2 + 0x5000, &mut buf).unwrap();
    assert_eq!(buf, page_for(hva + M2 + 0x5000));
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
    // A guest write is seen by the host.
    assert!(g.guest_write(GPA + M2 + 0x5008, &[0xee; 8]));
    let mut h = [0u8; 8];
    g.mm.read_bytes(g.task, hva + M2 + 0x5008, &mut h).unwrap();
    assert_eq!(h, [0xee; 8]);
}

#[test]
fn populated_ept() {
    populated::<Ept>();
}
#[test]
fn populated_stage2() {
    populated::<Stage2>();
}

#[test]
fn read_of_untouched_anonymous_memory_maps_the_zero_page_read_only() {
    let g = Guest::<Ept>::new();
    let hva = g.mm.mmap_anon(Some(HVA), M2, RW).unwrap();
    g.add_region(GPA, M2, hva, Perm::R | Perm::W);
    assert!(matches!(
        g.fault_in(GPA, Perm::R),
        GuestFault::Mapped { .. }
    ));
    let m = g.vm.translate(GPA).unwrap();
    assert_eq!(m.attrs.perm, Perm::R, "zero page is never writable");
    g.check_coherent(GPA, hva, 512);
    // The write fault breaks COW: the zero-page mapping is invalidated and a
    // private page mapped writable.
    assert!(matches!(
        g.fault_in(GPA, Perm::W),
        GuestFault::Mapped { .. }
    ));
    let w = g.vm.translate(GPA).unwrap();
    assert_ne!(w.pa, m.pa);
    assert!(w.attrs.perm.contains(Perm::W));
    g.check_coherent(GPA, hva, 512);
}

fn thp<F: Format + Send + Sync + 'static>() {
    let g = Guest::<F>::new();
    let len = 2 * M2;
    let hva = g.mm.mmap_anon(Some(HVA), len, RW).unwrap();
    g.mm.madvise_hugepage(hva, len).unwrap();
    g.add_region(GPA, len, hva, Perm::R | Perm::W);
    assert_eq!(
        g.fault_in(GPA + 0x3000, Perm::W),
        GuestFault::Mapped {
            size: PageSize::Size2M,
            leaves: 1
        }
    );
    assert!(g.guest_write(GPA + 0x3000, b"thp"));
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
    // The host splits the THP: the 2 MiB block goes (or keeps its frames),
    // and the next guest fault maps 4 KiB pages of the same frames.
    let before = g.vm.translate(GPA).unwrap();
    g.mm.split_huge(g.task, hva, M2).unwrap();
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
    assert!(matches!(
        g.fault_in(GPA + 0x3000, Perm::W),
        GuestFault::Mapped { .. }
    ));
    let after = g.vm.translate(GPA + 0x3000).unwrap();
    assert_eq!(after.size, PageSize::Size4K);
    assert_eq!(after.pa, before.pa_of(GPA + 0x3000));
    let mut b = [0u8; 3];
    g.guest_read(GPA + 0x3000, &mut b).unwrap();
    assert_eq!(&b, b"thp");
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
}

#[test]
fn thp_ept() {
    thp::<Ept>();
}
#[test]
fn thp_stage2() {
    thp::<Stage2>();
}

fn hugetlb<F: Format + Send + Sync + 'static>() {
    let g = Guest::<F>::new();
    let h2 = g.mm.mmap_hugetlb(Some(HVA), 2 * M2, RW, 9, false).unwrap();
    let h1 =
        g.mm.mmap_hugetlb(Some(0x7e00_0000_0000), G1, RW, 18, false)
            .unwrap();
    g.add_region(GPA, 2 * M2, h2, Perm::R | Perm::W);
    g.add_region(4 * G1, G1, h1, Perm::R | Perm::W);
    assert_eq!(
        g.fault_in(GPA + M2 + 0x1000, Perm::W),
        GuestFault::Mapped {
            size: PageSize::Size2M,
            leaves: 1
        }
    );
    assert_eq!(
        g.fault_in(4 * G1 + 0x1234_5000, Perm::R),
        GuestFault::Mapped {
            size: PageSize::Size1G,
            leaves: 1
        }
    );
    let all = leaves(&g);
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].gpa, all[0].size), (GPA + M2, PageSize::Size2M));
    assert_eq!((all[1].gpa, all[1].size), (4 * G1, PageSize::Size1G));
    // A private hugetlb read fault maps the huge page read-only on the
    // host; the guest write faults again and gets it writable, still 1 GiB.
    assert!(!g.guest_write(4 * G1 + 0x3fff_0000, b"1g"));
    assert_eq!(
        g.fault_in(4 * G1 + 0x3fff_0000, Perm::W),
        GuestFault::Mapped {
            size: PageSize::Size1G,
            leaves: 1
        }
    );
    assert!(g.guest_write(4 * G1 + 0x3fff_0000, b"1g"));
    let mut h = [0u8; 2];
    g.mm.read_bytes(g.task, h1 + 0x3fff_0000, &mut h).unwrap();
    assert_eq!(&h, b"1g");
    g.check_coherent(GPA, h2, 1024);
    // munmap of the 2 MiB hugetlb page: the block is gone from stage 2.
    g.mm.munmap(g.task, h2 + M2, M2).unwrap();
    assert!(g.vm.translate(GPA + M2).is_none());
    assert_eq!(
        g.fault_in(GPA + M2, Perm::R),
        GuestFault::Error(FaultError::Host(hmm_core::Error::Fault))
    );
    g.check_coherent(GPA, h2, 1024);
}

#[test]
fn hugetlb_ept() {
    hugetlb::<Ept>();
}
#[test]
fn hugetlb_stage2() {
    hugetlb::<Stage2>();
}

/// A userfaultfd handler thread supplying `page_for(addr)` for every fault.
fn spawn_handler(uffd: &Arc<backend_sim::userfaultfd::UffdCtx>) -> std::thread::JoinHandle<u64> {
    let uffd = uffd.clone();
    std::thread::spawn(move || {
        let task = Task::new();
        let mut n = 0;
        while let Some(msg) = uffd.read(&task) {
            if let UffdMsg::Pagefault { addr, .. } = msg {
                n += 1;
                let a = addr & !(PAGE_SIZE - 1);
                match uffd.copy(&task, a, &page_for(a), CopyMode::default()) {
                    Ok(_) => {}
                    Err(Errno::EEXIST) | Err(Errno::ENOENT) | Err(Errno::EAGAIN) => {
                        uffd.wake(a, PAGE_SIZE)
                    }
                    Err(e) => panic!("UFFDIO_COPY: {e}"),
                }
            }
        }
        n
    })
}

fn postcopy<F: Format + Send + Sync + 'static>() {
    let g = Guest::<F>::new();
    let len = 2 * M2;
    let hva = g.mm.mmap_anon(Some(HVA), len, RW).unwrap();
    let uffd = g.mm.userfaultfd(Features::default());
    uffd.register(hva, len, true, false).unwrap();
    let handler = spawn_handler(&uffd);
    g.add_region(GPA, len, hva, Perm::R | Perm::W);
    // Blocking path: the vCPU waits while the handler supplies the window.
    assert_eq!(
        g.fault_in(GPA + 0x7000, Perm::R),
        GuestFault::Mapped {
            size: PageSize::Size4K,
            leaves: 512
        }
    );
    let mut buf = vec![0u8; 4096];
    g.guest_read(GPA + 0x7000, &mut buf).unwrap();
    assert_eq!(buf, page_for(hva + 0x7000));
    assert!(g.vm.stats().host_lock_drops >= 512);
    g.check_coherent(GPA, hva, len / PAGE_SIZE);

    // No-wait path: the vCPU gets a token, a worker completes the fault.
    let out = g.vm.handle_fault_nowait(GPA + M2 + 0x2000, Perm::W);
    let GuestFault::Pending(token) = out else {
        panic!("expected pending, got {out:?}");
    };
    assert!(g.vm.translate(GPA + M2 + 0x2000).is_none());
    let vm = g.vm;
    let worker = std::thread::spawn(move || {
        let t = vm.claim_async().expect("a queued fault");
        vm.complete_async(t).unwrap()
    });
    let done = worker.join().unwrap();
    assert_eq!(done.token, token);
    let AsyncStatus::Done(GuestFault::Mapped { .. }) = g.vm.poll_async(token) else {
        panic!("not completed");
    };
    g.guest_read(GPA + M2 + 0x2000, &mut buf).unwrap();
    assert_eq!(buf, page_for(hva + M2 + 0x2000));
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
    uffd.close();
    assert_eq!(handler.join().unwrap(), 1024, "one userfault per page");
}

#[test]
fn postcopy_ept() {
    postcopy::<Ept>();
}
#[test]
fn postcopy_stage2() {
    postcopy::<Stage2>();
}

#[test]
fn mprotect_read_only_downgrades_stage2() {
    let g = Guest::<Stage2>::new();
    let hva = g.mm.mmap_anon(Some(HVA), M2, RW).unwrap();
    g.mm.touch(g.task, hva, M2, true).unwrap();
    g.add_region(GPA, M2, hva, Perm::R | Perm::W);
    g.fault_in(GPA, Perm::W);
    assert!(g.vm.translate(GPA).unwrap().attrs.perm.contains(Perm::W));
    g.mm.mprotect(hva, M2, VmFlags::READ).unwrap();
    g.check_coherent(GPA, hva, 512);
    assert!(
        !g.guest_write(GPA, b"x"),
        "no writable mapping survives mprotect"
    );
    assert_eq!(
        g.fault_in(GPA, Perm::W),
        GuestFault::Error(FaultError::Host(hmm_core::Error::Perm))
    );
    assert!(matches!(
        g.fault_in(GPA, Perm::R),
        GuestFault::Mapped { .. }
    ));
    assert_eq!(g.vm.translate(GPA).unwrap().attrs.perm, Perm::R);
    g.check_coherent(GPA, hva, 512);
}

#[test]
fn migration_moves_the_guest_to_the_new_frames() {
    let g = Guest::<Ept>::new();
    let hva = g.mm.mmap_anon(Some(HVA), M2, RW).unwrap();
    for a in (hva..hva + M2).step_by(PAGE_SIZE as usize) {
        g.mm.write_bytes(g.task, a, &page_for(a)).unwrap();
    }
    g.add_region(GPA, M2, hva, Perm::R | Perm::W);
    g.fault_in(GPA, Perm::R);
    let old = g.vm.translate(GPA + 0x4000).unwrap().pa;
    let moved = g.mm.migrate(g.task, hva + 0x4000, 0x4000, None).unwrap();
    assert_eq!(moved, 4);
    assert!(
        g.vm.translate(GPA + 0x4000).is_none(),
        "migrated pages unmapped"
    );
    g.check_coherent(GPA, hva, 512);
    g.fault_in(GPA + 0x4000, Perm::R);
    assert_ne!(g.vm.translate(GPA + 0x4000).unwrap().pa, old);
    g.check_coherent(GPA, hva, 512);
}

fn audit<F: Format + Send + Sync + 'static>(g: &Guest<F>, after: &str) {
    if let Err(d) = g.vm.audit() {
        panic!("after {after}: {d:?}");
    }
}

/// vCPU threads fault random guest pages while a host thread munmaps,
/// re-mmaps, mprotects and migrates parts of the backing, and a checker
/// audits stage 2 against the host page tables throughout.
#[test]
fn host_changes_during_guest_faults() {
    let g = Guest::<Stage2>::new();
    let len = 2 * M2;
    let hva = g.mm.mmap_anon(Some(HVA), len, RW).unwrap();
    g.add_region(GPA, len, hva, Perm::R | Perm::W);
    let iters: u64 = std::env::var("HYP_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let stop = Arc::new(AtomicBool::new(false));
    let vm = g.vm;
    let vcpus: Vec<_> = (0..2u64)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k;
                let mut mapped = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let gpa = GPA + (x % (len / PAGE_SIZE)) * PAGE_SIZE;
                    let access = if x & 1 == 0 {
                        Perm::R
                    } else {
                        Perm::R | Perm::W
                    };
                    match vm.handle_fault(gpa, access) {
                        GuestFault::Mapped { .. } => mapped += 1,
                        GuestFault::Retry => {}
                        // The host unmapped or write-protected it meanwhile.
                        GuestFault::Error(FaultError::Host(
                            hmm_core::Error::Fault | hmm_core::Error::Perm,
                        )) => {}
                        other => panic!("vCPU fault at {gpa:#x}: {other:?}"),
                    }
                }
                mapped
            })
        })
        .collect();
    let checker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut audits = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(d) = vm.audit() {
                    panic!("concurrent audit: {d:?}");
                }
                audits += 1;
                std::thread::yield_now();
            }
            audits
        })
    };
    let mut x = 12345u64;
    for i in 0..iters {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let page = (x >> 33) % (len / PAGE_SIZE - 8);
        let a = hva + page * PAGE_SIZE;
        let n = 1 + (x >> 20) % 8;
        match i % 4 {
            0 => {
                g.mm.munmap(g.task, a, n * PAGE_SIZE).unwrap();
                audit(&g, "munmap");
                g.mm.mmap_anon(Some(a), n * PAGE_SIZE, RW).unwrap();
            }
            1 => {
                g.mm.mprotect(a, n * PAGE_SIZE, VmFlags::READ).unwrap();
                audit(&g, "mprotect");
                g.mm.mprotect(a, n * PAGE_SIZE, RW).unwrap();
            }
            2 => {
                g.mm.touch(g.task, a, n * PAGE_SIZE, true).unwrap();
                g.mm.migrate(g.task, a, n * PAGE_SIZE, None).unwrap();
                audit(&g, "migrate");
            }
            _ => {
                g.mm.madvise_dontneed(g.task, a, n * PAGE_SIZE).unwrap();
                audit(&g, "madvise");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mapped: u64 = vcpus.into_iter().map(|t| t.join().unwrap()).sum();
    let audits = checker.join().unwrap();
    assert!(mapped > 0 && audits > 0);
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
    // Every page is still reachable by faulting it again.
    for i in (0..len / PAGE_SIZE).step_by(37) {
        assert!(matches!(
            g.fault_in(GPA + i * PAGE_SIZE, Perm::W),
            GuestFault::Mapped { .. }
        ));
    }
    g.check_coherent(GPA, hva, len / PAGE_SIZE);
}
