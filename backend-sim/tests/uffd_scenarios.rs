//! Beyond the kernel's suite: userfaultfd and the lock-dropping entry point
//! with THP, hugetlb and 2 MiB resolutions; mapping changes, fatal signals
//! and dead handlers while a fault waits; no-wait mode; write protection;
//! events; migration entries; hwpoison, swap and allocation failures.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use backend_sim::dmirror::{self, Cmd};
use backend_sim::frame::ZERO_PFN;
use backend_sim::pagetable::Pte;
use backend_sim::task::Task;
use backend_sim::userfaultfd::{CopyMode, Features, UffdMsg};
use backend_sim::Errno;
use common::*;
use hmm_core::{Options, Policy, Stats, PAGE_SIZE};

fn opts() -> Options {
    Options::default()
}

fn expect_pattern(buf: &[u8], start: u64, seed: u64) {
    for (i, p) in buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
        let a = start + i as u64 * PAGE_SIZE;
        assert!(p == &pattern_page(a, seed)[..], "data of page {a:#x}");
    }
}

/// Linux's `hmm_range_fault` cannot serve a userfaultfd range: the fault
/// has no `ALLOW_RETRY`, so `handle_userfault` returns SIGBUS: `-EFAULT`.
#[test]
fn kernel_entry_point_on_uffd_range_is_efault() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let mut cmd = Cmd::new(p, 4);
    assert_eq!(h.fd.read(&h.task, &mut cmd), Err(Errno::EFAULT));
    assert_eq!(uffd.faults(), 0, "no message was queued");
    assert_eq!(h.fd.entries(), 0);
}

#[test]
fn uffd_thp_resolved_2mib_at_once() {
    let h = Hmm::new();
    let size = 2 * TWOMEG;
    let p = h.mm.mmap_anon(None, size, RW).unwrap();
    h.mm.madvise_hugepage(p, size).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, size, true, false).unwrap();
    let handler = Handler::spawn(&uffd, TWOMEG, move |a| pattern_page(a, 7));
    let mut stats = Stats::default();
    h.fd.fault_unlocked(
        &h.task,
        p,
        p + size,
        false,
        size / PAGE_SIZE,
        &opts(),
        &mut stats,
    )
    .unwrap();
    // One userfault per 2 MiB, each resumed where it stopped.
    assert_eq!(stats.lock_drops, 2);
    assert_eq!((stats.resumes, stats.restarts), (2, 0));
    assert_eq!(h.fd.check_coherent(&h.task), Ok(size / PAGE_SIZE));
    let mut cmd = Cmd::new(p, size / PAGE_SIZE);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.faults, 0);
    expect_pattern(&cmd.buf, p, 7);
    assert_eq!(handler.stop(&uffd).len(), 2);
}

#[test]
fn uffd_small_pages_resolved_2mib_at_once() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, TWOMEG, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, TWOMEG, true, false).unwrap();
    let handler = Handler::spawn(&uffd, TWOMEG, move |a| pattern_page(a, 3));
    let mut cmd = Cmd::new(p, TWOMEG / PAGE_SIZE);
    let mut stats = Stats::default();
    h.fd.read_unlocked(&h.task, &mut cmd, &opts(), &mut stats)
        .unwrap();
    expect_pattern(&cmd.buf, p, 3);
    // The first fault brought in all 512 pages: one message, one drop.
    assert_eq!(stats.lock_drops, 1);
    assert_eq!(handler.stop(&uffd).len(), 1);
}

#[test]
fn uffd_hugetlb_on_the_lock_dropping_path() {
    let h = Hmm::new();
    let size = 2 * TWOMEG;
    let p = h.mm.mmap_hugetlb(None, size, RW, 9, false).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, size, true, false).unwrap();
    // The kernel entry point fails on it.
    assert_eq!(h.fd.read(&h.task, &mut Cmd::new(p, 1)), Err(Errno::EFAULT));
    let handler = Handler::spawn(&uffd, TWOMEG, move |a| pattern_page(a, 11));
    let mut stats = Stats::default();
    h.fd.fault_unlocked(&h.task, p, p + size, false, 512, &opts(), &mut stats)
        .unwrap();
    assert_eq!(stats.lock_drops, 2);
    assert_eq!(h.fd.check_coherent(&h.task), Ok(size / PAGE_SIZE));
    let mut snap = snap_cmd(p, size / PAGE_SIZE);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    // UFFDIO_COPY into a private writable hugetlb VMA maps it writable.
    assert!(snap
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_WRITE | dmirror::PROT_PMD));
    let mut cmd = Cmd::new(p, size / PAGE_SIZE);
    h.fd.read(&h.task, &mut cmd).unwrap();
    expect_pattern(&cmd.buf, p, 11);
    handler.stop(&uffd);
}

/// Start a device read of `[p, p + n pages)` in a thread and return once
/// its first fault is queued in the userfaultfd (the faulter has dropped
/// the mmap lock and sleeps).
fn start_waiting_read(
    h: &Arc<Hmm>,
    task: &Arc<Task>,
    p: u64,
    n: u64,
    write: bool,
    uffd: &backend_sim::userfaultfd::UffdCtx,
) -> (std::thread::JoinHandle<Result<(), Errno>>, UffdMsg) {
    let th = {
        let (h, task) = (h.clone(), task.clone());
        std::thread::spawn(move || {
            h.fd.fault_unlocked(
                &task,
                p,
                p + n * PAGE_SIZE,
                write,
                n,
                &opts(),
                &mut Stats::default(),
            )
        })
    };
    let msg = uffd.read(&Task::new()).unwrap();
    (th, msg)
}

#[test]
fn munmap_while_a_fault_waits() {
    let h = Arc::new(Hmm::new());
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let task = Arc::new(Task::new());
    let (th, msg) = start_waiting_read(&h, &task, p, 4, false, &uffd);
    assert!(matches!(msg, UffdMsg::Pagefault { addr, write: false, .. } if addr == p));
    // The waiting faulter does not hold the mmap lock: munmap proceeds.
    h.mm.munmap(&h.task, p, 4 * PAGE_SIZE).unwrap();
    let t = Task::new();
    assert_eq!(
        uffd.copy(&t, p, &page_of(1), CopyMode::default()),
        Err(Errno::ENOENT)
    );
    uffd.wake(p, 4 * PAGE_SIZE);
    assert_eq!(th.join().unwrap(), Err(Errno::EFAULT));
    assert!(h.fd.entries_in(p, p + 4 * PAGE_SIZE).is_empty());
}

#[test]
fn munmap_event_reaches_the_handler() {
    let h = Arc::new(Hmm::new());
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features {
        event_unmap: true,
        event_remove: true,
        ..Features::default()
    });
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let t = Task::new();
    uffd.copy(&t, p, &page_of(9), CopyMode::default()).unwrap();
    // MADV_DONTNEED: UFFD_EVENT_REMOVE, delivered before the zap; the
    // caller waits until the handler has read it.
    let (tx, rx) = mpsc::channel();
    let remover = {
        let h = h.clone();
        std::thread::spawn(move || {
            let r = h.mm.madvise_dontneed(&Task::new(), p, PAGE_SIZE);
            tx.send(()).unwrap();
            r
        })
    };
    assert_eq!(
        uffd.read(&t),
        Some(UffdMsg::Remove {
            start: p,
            end: p + PAGE_SIZE
        })
    );
    rx.recv().unwrap();
    remover.join().unwrap().unwrap();
    assert_eq!(h.mm.pte_at(p).0, Pte::None);
    let unmapper = {
        let h = h.clone();
        std::thread::spawn(move || h.mm.munmap(&Task::new(), p, 4 * PAGE_SIZE))
    };
    assert_eq!(
        uffd.read(&t),
        Some(UffdMsg::Unmap {
            start: p,
            end: p + 4 * PAGE_SIZE
        })
    );
    unmapper.join().unwrap().unwrap();
}

#[test]
fn mprotect_while_a_write_fault_waits() {
    let h = Arc::new(Hmm::new());
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let task = Arc::new(Task::new());
    let (th, msg) = start_waiting_read(&h, &task, p, 4, true, &uffd);
    assert!(matches!(msg, UffdMsg::Pagefault { write: true, .. }));
    h.mm.mprotect(p, 4 * PAGE_SIZE, RO).unwrap();
    // The handler supplies the page anyway; the notifier sequence moved, the
    // walk restarts and finds a VMA without VM_WRITE.
    let t = Task::new();
    uffd.copy(&t, p, &page_of(5), CopyMode::default()).unwrap();
    assert_eq!(th.join().unwrap(), Err(Errno::EPERM));
    assert!(h.fd.entries_in(p, p + 4 * PAGE_SIZE).is_empty());
}

#[test]
fn fatal_signal_during_the_wait_is_eintr_with_nothing_mapped() {
    let h = Arc::new(Hmm::new());
    let p = h.mm.mmap_anon(None, 8 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 8 * PAGE_SIZE, true, false).unwrap();
    // Page 0 is already there; the fault waits on page 1.
    let t = Task::new();
    uffd.copy(&t, p, &page_of(1), CopyMode::default()).unwrap();
    let task = Arc::new(Task::new());
    let (th, msg) = start_waiting_read(&h, &task, p, 8, false, &uffd);
    assert!(matches!(msg, UffdMsg::Pagefault { addr, .. } if addr == p + PAGE_SIZE));
    task.kill();
    assert_eq!(th.join().unwrap(), Err(Errno::EINTR));
    assert!(h.fd.entries_in(p, p + 8 * PAGE_SIZE).is_empty());
    assert_eq!(uffd.waiting(), 0);
}

#[test]
fn dead_handler_ends_in_ebusy_within_the_budget() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    // Nobody reads the userfaultfd; waits are bounded so the faulter keeps
    // coming back, and the driver's budget ends it. The budget is 200 waits
    // long, so even on a loaded machine the fault is retried (with TRIED)
    // before it runs out.
    h.machine
        .inject
        .set_uffd_wait_bound(Some(Duration::from_millis(1)));
    let o = Options {
        timeout_ns: 200_000_000,
        ..opts()
    };
    let mut stats = Stats::default();
    let r =
        h.fd.fault_unlocked(&h.task, p, p + 4 * PAGE_SIZE, false, 4, &o, &mut stats);
    assert_eq!(r, Err(Errno::EBUSY));
    assert!(stats.lock_drops >= 1);
    assert!(stats.tried_faults >= 1, "retried faults carry TRIED");
    assert!(h.fd.entries_in(p, p + 4 * PAGE_SIZE).is_empty());
}

#[test]
fn handler_that_only_wakes_ends_in_ebusy() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let waker = {
        let uffd = uffd.clone();
        std::thread::spawn(move || {
            let t = Task::new();
            let mut n = 0u64;
            while let Some(UffdMsg::Pagefault { addr, .. }) = uffd.read(&t) {
                uffd.wake(addr, PAGE_SIZE);
                n += 1;
            }
            n
        })
    };
    let o = Options {
        timeout_ns: 20_000_000,
        ..opts()
    };
    let r = h.fd.fault_unlocked(
        &h.task,
        p,
        p + 4 * PAGE_SIZE,
        false,
        4,
        &o,
        &mut Stats::default(),
    );
    assert_eq!(r, Err(Errno::EBUSY));
    uffd.close();
    assert!(waker.join().unwrap() >= 1);
    assert!(h.fd.entries_in(p, p + 4 * PAGE_SIZE).is_empty());
}

#[test]
fn nowait_mode_is_eagain_without_dropping_the_lock() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let o = Options {
        nowait: true,
        ..opts()
    };
    let mut stats = Stats::default();
    let r =
        h.fd.fault_unlocked(&h.task, p, p + 4 * PAGE_SIZE, false, 4, &o, &mut stats);
    assert_eq!(r, Err(Errno::EAGAIN));
    assert_eq!(stats.lock_drops, 0);
    assert_eq!(uffd.faults(), 0, "RETRY_NOWAIT queues no message");
}

#[test]
fn write_protect_fault_is_resolved_by_the_handler() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 2 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 2 * PAGE_SIZE, true, true).unwrap();
    let t = Task::new();
    let mut src = page_of(0x11);
    src.extend(page_of(0x22));
    let wp = CopyMode {
        dontwake: false,
        wp: true,
    };
    uffd.copy(&t, p, &src, wp).unwrap();
    // Readable but write-protected: the snapshot says READ.
    let mut snap = snap_cmd(p, 2);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert_eq!(snap.buf, [dmirror::PROT_READ, dmirror::PROT_READ]);
    let resolver = {
        let uffd = uffd.clone();
        std::thread::spawn(move || {
            let t = Task::new();
            let mut seen = Vec::new();
            while let Some(m) = uffd.read(&t) {
                if let UffdMsg::Pagefault { addr, wp: true, .. } = m {
                    uffd.writeprotect(&t, addr, PAGE_SIZE, false, false)
                        .unwrap();
                }
                seen.push(m);
            }
            seen
        })
    };
    let mut cmd = Cmd::new(p, 2);
    cmd.buf = page_of(0x33);
    cmd.buf.extend(page_of(0x44));
    let mut stats = Stats::default();
    h.fd.fault_unlocked(&h.task, p, p + 2 * PAGE_SIZE, true, 2, &opts(), &mut stats)
        .unwrap();
    assert_eq!(stats.lock_drops, 2);
    h.fd.write(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.faults, 0);
    let mut back = vec![0u8; 2 * PAGE_SIZE as usize];
    h.mm.read_bytes(&h.task, p, &mut back).unwrap();
    assert_eq!(back, cmd.buf);
    uffd.close();
    let seen = resolver.join().unwrap();
    assert!(seen.iter().all(|m| matches!(
        m,
        UffdMsg::Pagefault {
            wp: true,
            write: true,
            ..
        }
    )));
}

#[test]
fn hmm_waits_for_a_migration_entry() {
    let h = Arc::new(Hmm::new());
    let n = 16u64;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(p, (n * PAGE_SIZE / 4) as usize, |i| i * 3);
    let (installed_tx, installed_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let migrator = {
        let h = h.clone();
        std::thread::spawn(move || {
            let hold = || {
                installed_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            };
            h.mm.migrate(&Task::new(), p, n * PAGE_SIZE, Some(&hold))
        })
    };
    installed_rx.recv().unwrap();
    assert!(matches!(h.mm.pte_at(p).0, Pte::Migration { .. }));
    let reader = {
        let h = h.clone();
        std::thread::spawn(move || {
            let mut stats = Stats::default();
            let r = h.fd.fault_unlocked(
                &Task::new(),
                p,
                p + n * PAGE_SIZE,
                false,
                n,
                &opts(),
                &mut stats,
            );
            (r, stats)
        })
    };
    // Wait until the device fault is parked on the migration entry.
    while h
        .mm
        .stats
        .migration_waits
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        std::thread::yield_now();
    }
    go_tx.send(()).unwrap();
    assert_eq!(migrator.join().unwrap(), Ok(n));
    let (r, stats) = reader.join().unwrap();
    r.unwrap();
    assert!(stats.migration_waits >= 1);
    assert_eq!(h.fd.check_coherent(&h.task), Ok(n));
    let mut cmd = Cmd::new(p, n);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.i32s(), iota((n * PAGE_SIZE / 4) as usize, |i| i * 3));
}

#[test]
fn hwpoison_is_efault_when_requested_and_none_in_snapshot() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    h.fill(p, (4 * PAGE_SIZE / 4) as usize, |i| i);
    h.mm.hwpoison(&h.task, p + PAGE_SIZE).unwrap();
    let mut snap = snap_cmd(p, 4);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert_eq!(
        snap.buf,
        [
            dmirror::PROT_WRITE,
            dmirror::PROT_NONE,
            dmirror::PROT_WRITE,
            dmirror::PROT_WRITE
        ]
    );
    assert_eq!(h.fd.read(&h.task, &mut Cmd::new(p, 4)), Err(Errno::EFAULT));
    let mut one = [0u8; 4];
    assert_eq!(
        h.mm.read_bytes(&h.task, p + PAGE_SIZE, &mut one),
        Err(Errno::EHWPOISON)
    );
}

#[test]
fn swapped_out_pages_are_faulted_back_with_their_data() {
    let h = Hmm::new();
    let n = 32u64;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    let ints = (n * PAGE_SIZE / 4) as usize;
    h.fill(p, ints, |i| 7 * i);
    assert_eq!(h.mm.swap_out(&h.task, p, n * PAGE_SIZE), Ok(n));
    let mut snap = snap_cmd(p, n);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert!(snap.buf.iter().all(|&m| m == dmirror::PROT_NONE));
    let mut cmd = Cmd::new(p, n);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.i32s(), iota(ints, |i| 7 * i));
    assert_eq!(h.machine.swap_used(), 0);
}

#[test]
fn allocation_failure_is_enomem_unlocked_and_efault_in_the_kernel_path() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    h.machine.inject.fail_next_allocs(1);
    let mut cmd = Cmd::new(p, 4);
    assert_eq!(h.fd.write(&h.task, &mut cmd), Err(Errno::EFAULT));
    h.machine.inject.fail_next_allocs(1);
    let r = h.fd.fault_unlocked(
        &h.task,
        p,
        p + 4 * PAGE_SIZE,
        true,
        4,
        &opts(),
        &mut Stats::default(),
    );
    assert_eq!(r, Err(Errno::ENOMEM));
    assert_eq!(h.machine.inject.failed_allocs(), 2);
    // Memory is back: the same fault succeeds.
    h.fd.write(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, 4);
}

#[test]
fn restart_policy_walks_quadratically_resume_linearly() {
    let mut filled = Vec::new();
    for policy in [Policy::Resume, Policy::Restart] {
        let h = Hmm::new();
        let n = 64u64;
        let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
        let uffd = h.mm.userfaultfd(Features::default());
        uffd.register(p, n * PAGE_SIZE, true, false).unwrap();
        let handler = Handler::spawn(&uffd, PAGE_SIZE, |a| pattern_page(a, 1));
        let mut stats = Stats::default();
        h.fd.fault_unlocked(
            &h.task,
            p,
            p + n * PAGE_SIZE,
            false,
            n,
            &Options::with_policy(policy),
            &mut stats,
        )
        .unwrap();
        assert_eq!(stats.lock_drops, n);
        handler.stop(&uffd);
        filled.push(stats.pages_filled);
    }
    // Resume fills each entry once; restart refills the prefix every time.
    assert_eq!(filled[0], 64);
    assert_eq!(filled[1], 64 * 65 / 2);
}

#[test]
fn compound_pud_hugetlb_reports_pud_order() {
    let h = Hmm::new();
    let size = 1u64 << 30;
    let p = h.mm.mmap_hugetlb(None, size, RW, 18, false).unwrap();
    // A read fault maps the 1 GiB page read-only (private hugetlb).
    assert_eq!(h.ints(p, 1), [0]);
    let npages = 1024;
    let mut snap = snap_cmd(p, npages);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert!(snap
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_READ | dmirror::PROT_PUD));
    h.mm.write_i32s(&h.task, p, &[42]).unwrap();
    let mut snap = snap_cmd(p + size - npages * PAGE_SIZE, npages);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert!(snap
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_WRITE | dmirror::PROT_PUD));
    h.mm.munmap(&h.task, p, size).unwrap();
}

/// The OOM reaper invalidates without blocking; the mirror's callback uses
/// a trylock and the device entries go away with the pages.
#[test]
fn oom_reaper_uses_non_blockable_invalidations() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 8 * PAGE_SIZE, RW).unwrap();
    h.fill(p, (8 * PAGE_SIZE / 4) as usize, |i| i);
    let mut cmd = Cmd::new(p, 8);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(h.fd.entries(), 8);
    let used = h.machine.frames.in_use();
    assert_eq!(h.mm.oom_reap(&h.task), Ok((1, 0)));
    assert_eq!(h.fd.entries(), 0);
    assert_eq!(h.machine.frames.in_use(), used - 8);
    assert_eq!(h.fd.check_coherent(&h.task), Ok(0));
}

/// `VM_PFNMAP` / `VM_IO` VMAs are never mirrored: ERROR in a snapshot,
/// `-EFAULT` when a fault is requested.
#[test]
fn pfnmap_and_io_vmas_are_errors() {
    let h = Hmm::new();
    for io in [false, true] {
        let p =
            h.mm.mmap_pfnmap(None, 2 * PAGE_SIZE, RW, 0x9_0000, io)
                .unwrap();
        let mut snap = snap_cmd(p, 2);
        h.fd.snapshot(&h.task, &mut snap).unwrap();
        assert_eq!(snap.buf, [dmirror::PROT_ERROR, dmirror::PROT_ERROR]);
        assert_eq!(h.fd.read(&h.task, &mut Cmd::new(p, 2)), Err(Errno::EFAULT));
    }
}

/// Post-copy with a device: MIGRATE_TO_DEV over a range registered for
/// missing faults moves only the pages that are there. Linux's
/// `migrate_vma_insert_page` backs off in a VMA with missing-mode
/// userfaultfd, so the zero page and the holes stay as they are, the
/// read-back answers -ENOENT, and a later lock-dropping READ asks the
/// handler for exactly the missing pages and returns its data (a device
/// page of zeroes there would be data loss, and the handler's late
/// UFFDIO_COPY would meet -EEXIST).
#[test]
fn migrate_to_dev_leaves_uffd_holes_to_the_handler() {
    let h = Hmm::new();
    let n = 8u64;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    let pg = |i: u64| p + i * PAGE_SIZE;
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, n * PAGE_SIZE, true, false).unwrap();
    // Pages 0-2 have arrived, page 3 is known to be zero, 4-7 are missing.
    let arrived: Vec<u8> = (0..3).flat_map(|i| pattern_page(pg(i), 5)).collect();
    uffd.copy(&h.task, p, &arrived, CopyMode::default())
        .unwrap();
    uffd.zeropage(&h.task, pg(3), PAGE_SIZE, CopyMode::default())
        .unwrap();

    let mut cmd = Cmd::new(p, n);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
    assert_eq!(uffd.faults(), 0, "migration delivers no userfault");
    for i in 0..3 {
        let (pte, _) = h.mm.pte_at(pg(i));
        assert!(
            matches!(pte, Pte::DevicePrivate { write: true, .. }),
            "page {i} moved: {pte:?}"
        );
        assert!(h.fd.entry(pg(i)).is_some_and(|e| e.write));
    }
    assert!(matches!(
        h.mm.pte_at(pg(3)),
        (Pte::Present { .. }, Some(ZERO_PFN))
    ));
    for i in 3..n {
        assert_eq!(h.fd.entry(pg(i)), None, "page {i} is not on the device");
    }
    for i in 4..n {
        assert_eq!(h.mm.pte_at(pg(i)).0, Pte::None, "page {i} is still missing");
    }

    // The handler now supplies what is missing.
    let handler = Handler::spawn(&uffd, PAGE_SIZE, |a| pattern_page(a, 5));
    let mut cmd = Cmd::new(p, n);
    h.fd.read_unlocked(&h.task, &mut cmd, &opts(), &mut Stats::default())
        .unwrap();
    assert_eq!(cmd.cpages, n);
    let page = PAGE_SIZE as usize;
    expect_pattern(&cmd.buf[..3 * page], p, 5);
    assert!(cmd.buf[3 * page..4 * page].iter().all(|&b| b == 0));
    expect_pattern(&cmd.buf[4 * page..], pg(4), 5);
    let asked: Vec<u64> = handler
        .stop(&uffd)
        .iter()
        .filter_map(|m| match m {
            UffdMsg::Pagefault { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect();
    assert_eq!(asked, (4..n).map(pg).collect::<Vec<_>>());
    // The migrated pages stayed on the device; the CPU sees every byte.
    assert!(matches!(h.mm.pte_at(pg(0)).0, Pte::DevicePrivate { .. }));
    let mut cpu = vec![0u8; cmd.buf.len()];
    h.mm.read_bytes(&h.task, p, &mut cpu).unwrap();
    assert_eq!(cpu, cmd.buf);
}
