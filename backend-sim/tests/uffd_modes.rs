//! userfaultfd beyond MISSING and WP, each through the lock-dropping entry
//! point (the device's READ_UNLOCKED): MINOR faults resolved by
//! `UFFDIO_CONTINUE` on shmem and hugetlb, `UFFDIO_POISON`, `UFFDIO_MOVE`,
//! and the FORK and REMAP events. Each checks what Linux gives: the data,
//! the errno, the messages the handler reads and the page tables.

mod common;

use std::sync::Arc;
use std::thread::JoinHandle;

use backend_sim::dmirror::{self, Cmd};
use backend_sim::mm::Mm;
use backend_sim::pagetable::Pte;
use backend_sim::task::Task;
use backend_sim::userfaultfd::{CopyMode, Features, MoveMode, RegisterMode, UffdCtx, UffdMsg};
use backend_sim::vma::File;
use backend_sim::Errno;
use common::*;
use hmm_core::{Options, Stats, PAGE_SIZE};

const MINOR: RegisterMode = RegisterMode {
    missing: false,
    wp: false,
    minor: true,
};

/// READ_UNLOCKED of `npages` at `p` through `fd` with default options.
fn read_unlocked(fd: &dmirror::Mirror, task: &Task, p: u64, npages: u64) -> Result<Cmd, Errno> {
    let mut cmd = Cmd::new(p, npages);
    fd.read_unlocked(task, &mut cmd, &Options::default(), &mut Stats::default())?;
    Ok(cmd)
}

/// A handler thread answering every page fault with `resolve(uffd, addr)`
/// and recording every message, until the context is closed.
fn handler(
    uffd: &Arc<UffdCtx>,
    resolve: impl Fn(&UffdCtx, &Task, u64) + Send + 'static,
) -> JoinHandle<Vec<UffdMsg>> {
    let uffd = uffd.clone();
    std::thread::spawn(move || {
        let task = Task::new();
        let mut seen = Vec::new();
        while let Some(msg) = uffd.read(&task) {
            seen.push(msg);
            if let UffdMsg::Pagefault { addr, .. } = msg {
                resolve(&uffd, &task, addr);
            }
        }
        seen
    })
}

fn fault_addrs(seen: &[UffdMsg]) -> Vec<u64> {
    seen.iter()
        .filter_map(|m| match m {
            UffdMsg::Pagefault { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect()
}

/// MINOR on shmem: the page cache holds the data, the mapping does not map
/// it yet. A device read faults, the handler sees a MINOR fault and maps
/// the cached page with CONTINUE; the device reads the cached data, and
/// the process maps the page-cache page itself (no copy). A page absent
/// from the page cache is a plain shmem fault: no message.
#[test]
fn minor_faults_on_shmem_are_resolved_by_continue() {
    let h = Hmm::new();
    let n = 4u64;
    let f = File::new(h.machine.frames.clone(), (n + 1) * PAGE_SIZE, 0);
    let mut data = Vec::new();
    for i in 0..n {
        data.extend(pattern_page(i * PAGE_SIZE, 0x51));
    }
    f.pwrite(0, &data).unwrap();
    let p =
        h.mm.mmap_file(None, (n + 1) * PAGE_SIZE, RW, true, &f, 0)
            .unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    // MINOR is for shmem and hugetlb only.
    let anon = h.mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    assert_eq!(
        uffd.register_modes(anon, PAGE_SIZE, MINOR),
        Err(Errno::EINVAL)
    );
    uffd.register_modes(p, (n + 1) * PAGE_SIZE, MINOR).unwrap();
    // hmm_range_fault cannot wait: -EFAULT, and nothing is queued.
    assert_eq!(h.fd.read(&h.task, &mut Cmd::new(p, 1)), Err(Errno::EFAULT));
    assert_eq!(uffd.try_read(), None);
    let th = handler(&uffd, |u, t, addr| {
        assert_eq!(
            u.continue_minor(t, addr, PAGE_SIZE, CopyMode::default()),
            Ok(PAGE_SIZE)
        );
    });
    let cmd = read_unlocked(&h.fd, &h.task, p, n).unwrap();
    assert_eq!(cmd.buf, data);
    // The uncached page: a new zeroed page-cache page, no userfault.
    let cmd = read_unlocked(&h.fd, &h.task, p + n * PAGE_SIZE, 1).unwrap();
    assert!(cmd.buf.iter().all(|&b| b == 0));
    assert!(f.lookup(n * PAGE_SIZE).is_some());
    // CONTINUE of a mapped page is -EEXIST.
    assert_eq!(
        uffd.continue_minor(&h.task, p, PAGE_SIZE, CopyMode::default()),
        Err(Errno::EEXIST)
    );
    uffd.close();
    let seen = th.join().unwrap();
    assert_eq!(
        fault_addrs(&seen),
        iota(n as usize, |i| i)
            .iter()
            .map(|&i| p + i as u64 * PAGE_SIZE)
            .collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|m| matches!(
        m,
        UffdMsg::Pagefault {
            minor: true,
            wp: false,
            ..
        }
    )));
    for i in 0..n {
        assert_eq!(h.mm.pte_at(p + i * PAGE_SIZE).1, f.lookup(i * PAGE_SIZE));
    }
}

/// MINOR on hugetlb: one fault per huge page, CONTINUE maps the cached
/// 2 MiB page whole, and the device sees it with the PMD order.
#[test]
fn minor_faults_on_hugetlb_are_resolved_by_continue() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let f = File::new(h.machine.frames.clone(), TWOMEG, 9);
    let mut data = Vec::new();
    for i in 0..npages {
        data.extend(pattern_page(i * PAGE_SIZE, 0x77));
    }
    f.pwrite(0, &data).unwrap();
    let p = h.mm.mmap_file(None, TWOMEG, RW, true, &f, 0).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register_modes(p, TWOMEG, MINOR).unwrap();
    let th = handler(&uffd, |u, t, addr| {
        // Not huge-page aligned: -EINVAL; the whole huge page works.
        assert_eq!(
            u.continue_minor(t, addr + PAGE_SIZE, PAGE_SIZE, CopyMode::default()),
            Err(Errno::EINVAL)
        );
        let base = addr & !(TWOMEG - 1);
        assert_eq!(
            u.continue_minor(t, base, TWOMEG, CopyMode::default()),
            Ok(TWOMEG)
        );
    });
    let cmd = read_unlocked(&h.fd, &h.task, p, npages).unwrap();
    assert_eq!(cmd.buf, data);
    uffd.close();
    let seen = th.join().unwrap();
    assert_eq!(fault_addrs(&seen), [p]);
    let mut snap = snap_cmd(p, npages);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert!(snap
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_WRITE | dmirror::PROT_PMD));
    assert_eq!(h.mm.pte_at(p).1, f.lookup(0));
}

/// UFFDIO_POISON: the handler answers one fault with poison. The
/// lock-dropping READ stops there with -EHWPOISON (the fault's own errno,
/// as GUP gives it); the kernel entry point gives -EFAULT; SNAPSHOT reads
/// the poisoned page as empty; the CPU gets -EHWPOISON too.
#[test]
fn poisoned_pages_stop_the_device_fault() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, 4 * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, 4 * PAGE_SIZE, true, false).unwrap();
    let th = handler(&uffd, move |u, t, addr| {
        if addr == p + PAGE_SIZE {
            assert_eq!(u.poison(t, addr, PAGE_SIZE, false), Ok(PAGE_SIZE));
        } else {
            let _ = u.copy(t, addr, &page_of(3), CopyMode::default());
        }
    });
    assert_eq!(
        read_unlocked(&h.fd, &h.task, p, 4).map(|_| ()),
        Err(Errno::EHWPOISON)
    );
    assert_eq!(h.fd.read(&h.task, &mut Cmd::new(p, 4)), Err(Errno::EFAULT));
    // Poisoning a mapped page is -EEXIST.
    assert_eq!(
        uffd.poison(&h.task, p, PAGE_SIZE, false),
        Err(Errno::EEXIST)
    );
    let mut snap = snap_cmd(p, 4);
    h.fd.snapshot(&h.task, &mut snap).unwrap();
    assert_eq!(
        snap.buf,
        [
            dmirror::PROT_WRITE,
            dmirror::PROT_NONE,
            dmirror::PROT_NONE,
            dmirror::PROT_NONE
        ]
    );
    let mut b = [0u8; 1];
    assert_eq!(
        h.mm.read_bytes(&h.task, p + PAGE_SIZE, &mut b),
        Err(Errno::EHWPOISON)
    );
    uffd.close();
    let seen = th.join().unwrap();
    assert_eq!(fault_addrs(&seen), [p, p + PAGE_SIZE]);
}

/// UFFDIO_MOVE: the handler moves pages from a staging area instead of
/// copying them. The device reads the staged data; the faulting range maps
/// the staging frames themselves, and the staging area is left empty.
#[test]
fn move_resolves_faults_without_copying() {
    let h = Hmm::new();
    let n = 4u64;
    let s = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    let mut data = Vec::new();
    for i in 0..n {
        data.extend(pattern_page(i * PAGE_SIZE, 0x99));
    }
    h.mm.write_bytes(&h.task, s, &data).unwrap();
    let staged: Vec<Option<u64>> = (0..n).map(|i| h.mm.pte_at(s + i * PAGE_SIZE).1).collect();
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, n * PAGE_SIZE, true, false).unwrap();
    let th = handler(&uffd, move |u, t, addr| {
        let from = s + (addr - p);
        assert_eq!(
            u.move_pages(t, addr, from, PAGE_SIZE, MoveMode::default()),
            Ok(PAGE_SIZE)
        );
    });
    let cmd = read_unlocked(&h.fd, &h.task, p, n).unwrap();
    assert_eq!(cmd.buf, data);
    for i in 0..n {
        assert_eq!(h.mm.pte_at(p + i * PAGE_SIZE).1, staged[i as usize]);
        assert_eq!(h.mm.pte_at(s + i * PAGE_SIZE).0, Pte::None);
    }
    // The source is now a hole: -ENOENT, or skipped with ALLOW_SRC_HOLES;
    // a mapped destination is -EEXIST; overlapping ranges are -EINVAL.
    let t = Task::new();
    let holes = MoveMode {
        allow_src_holes: true,
        dontwake: false,
    };
    let q = h.mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    uffd.register(q, PAGE_SIZE, true, false).unwrap();
    assert_eq!(
        uffd.move_pages(&t, q, s, PAGE_SIZE, MoveMode::default()),
        Err(Errno::ENOENT)
    );
    assert_eq!(uffd.move_pages(&t, q, s, PAGE_SIZE, holes), Ok(PAGE_SIZE));
    h.mm.write_bytes(&t, s, &[1]).unwrap();
    assert_eq!(
        uffd.move_pages(&t, p, s, PAGE_SIZE, MoveMode::default()),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        uffd.move_pages(&t, p, p + PAGE_SIZE, 2 * PAGE_SIZE, MoveMode::default()),
        Err(Errno::EINVAL)
    );
    // The data moved with the frames: the CPU reads it where it went.
    let mut back = vec![0u8; data.len()];
    h.mm.read_bytes(&t, p, &mut back).unwrap();
    assert_eq!(back, data);
    uffd.close();
    assert_eq!(fault_addrs(&th.join().unwrap()).len() as u64, n);
}

/// Fork `mm` on another thread: with `UFFD_FEATURE_EVENT_FORK` the fork
/// waits until the parent's handler has read the event.
fn fork_async(mm: &Arc<Mm>) -> JoinHandle<Arc<Mm>> {
    let mm = mm.clone();
    std::thread::spawn(move || mm.fork(&Task::new()))
}

/// UFFD_EVENT_FORK: the child gets its own userfaultfd with the parent's
/// registration; a device mirroring the child faults through it, and the
/// parent's context sees only the event. Without the feature the child's
/// range is plain memory.
#[test]
fn fork_event_gives_the_child_its_own_userfaultfd() {
    let h = Hmm::new();
    let n = 4u64;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features {
        event_fork: true,
        ..Features::default()
    });
    uffd.register(p, n * PAGE_SIZE, true, false).unwrap();
    let forker = fork_async(&h.mm);
    let msg = uffd.read(&h.task).unwrap();
    let UffdMsg::Fork { ufd } = msg else {
        panic!("expected the fork event, got {msg:?}");
    };
    let child = forker.join().unwrap();
    let cuffd = uffd.take_forked(ufd).unwrap();
    assert!(uffd.take_forked(ufd).is_none());
    let child_handler = Handler::spawn(&cuffd, PAGE_SIZE, |a| pattern_page(a, 5));
    let cfd = h.dev.open(&child);
    let ct = Task::new();
    let cmd = read_unlocked(&cfd, &ct, p, n).unwrap();
    expect_pattern(&cmd.buf, p, 5);
    let seen = child_handler.stop(&cuffd);
    assert_eq!(fault_addrs(&seen).len() as u64, n);
    // The parent's context saw nothing else; its range is still missing.
    assert_eq!(uffd.try_read(), None);
    assert_eq!(h.mm.pte_at(p).0, Pte::None);

    // Another fork would wait for this handler to read its event.
    uffd.close();

    // Without EVENT_FORK: no event, and the child's range is unregistered.
    let plain = h.mm.userfaultfd(Features::default());
    let q = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    plain.register(q, n * PAGE_SIZE, true, false).unwrap();
    let child = h.mm.fork(&h.task);
    assert_eq!(plain.try_read(), None);
    let cfd = h.dev.open(&child);
    let cmd = read_unlocked(&cfd, &ct, q, n).unwrap();
    assert!(cmd.buf.iter().all(|&b| b == 0));
    assert_eq!(plain.try_read(), None);
}

fn expect_pattern(buf: &[u8], start: u64, seed: u64) {
    for (i, pg) in buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
        let a = start + i as u64 * PAGE_SIZE;
        assert!(pg == &pattern_page(a, seed)[..], "data of page {a:#x}");
    }
}

/// UFFD_EVENT_REMAP: mremap of a registered range is announced (mremap
/// waits until the handler read it) and the registration moves with the
/// mapping, so the device's faults at the new address reach the handler.
/// Without the feature the new mapping is unregistered.
#[test]
fn remap_event_moves_the_registration() {
    let h = Arc::new(Hmm::new());
    let n = 4u64;
    let len = n * PAGE_SIZE;
    let p = h.mm.mmap_anon(None, len, RW).unwrap();
    let to = p + (1 << 30);
    let uffd = h.mm.userfaultfd(Features {
        event_remap: true,
        ..Features::default()
    });
    uffd.register(p, len, true, false).unwrap();
    let mover = {
        let h = h.clone();
        std::thread::spawn(move || h.mm.mremap(&Task::new(), p, len, to, false))
    };
    assert_eq!(
        uffd.read(&h.task),
        Some(UffdMsg::Remap { from: p, to, len })
    );
    assert_eq!(mover.join().unwrap(), Ok(to));
    let handler = Handler::spawn(&uffd, PAGE_SIZE, |a| pattern_page(a, 8));
    let cmd = read_unlocked(&h.fd, &h.task, to, n).unwrap();
    expect_pattern(&cmd.buf, to, 8);
    let seen = handler.stop(&uffd);
    assert_eq!(
        fault_addrs(&seen),
        (0..n).map(|i| to + i * PAGE_SIZE).collect::<Vec<_>>()
    );

    // Without EVENT_REMAP: no event, the moved range is plain memory.
    let plain = h.mm.userfaultfd(Features::default());
    let q = h.mm.mmap_anon(None, len, RW).unwrap();
    let qto = q + (1 << 30);
    plain.register(q, len, true, false).unwrap();
    assert_eq!(h.mm.mremap(&h.task, q, len, qto, false), Ok(qto));
    assert_eq!(plain.try_read(), None);
    let cmd = read_unlocked(&h.fd, &h.task, qto, n).unwrap();
    assert!(cmd.buf.iter().all(|&b| b == 0));
    assert_eq!(plain.try_read(), None);
}
