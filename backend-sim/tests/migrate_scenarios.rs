//! Beyond the kernel's suite: which pages MIGRATE_TO_DEV moves, as
//! `mm/migrate_device.c` decides it (anonymous pages in any VMA, never
//! page-cache pages or file holes, no special or hugetlb VMA), and what a
//! failed device allocation leaves.

mod common;

use backend_sim::dmirror::Cmd;
use backend_sim::pagetable::Pte;
use backend_sim::vma::File;
use backend_sim::Errno;
use common::*;
use hmm_core::PAGE_SIZE;

fn on_device(h: &Hmm, a: u64) -> bool {
    matches!(h.mm.pte_at(a).0, Pte::DevicePrivate { .. })
}

/// A private file mapping holds page-cache pages (read faults), anonymous
/// copy-on-write copies (write faults) and holes. Only the copies move;
/// the page-cache pages stay mapped, the holes stay holes, the read-back
/// answers -ENOENT, and every byte still reads the same from the CPU and,
/// after a device fault, from the device.
#[test]
fn private_file_mapping_moves_only_its_anonymous_pages() {
    let h = Hmm::new();
    let n = 8u64;
    let file = File::new(h.machine.frames.clone(), 0, 0);
    let content: Vec<u8> = (0..n).flat_map(|i| pattern_page(i, 11)).collect();
    file.pwrite(0, &content).unwrap();
    let p =
        h.mm.mmap_file(None, n * PAGE_SIZE, RW, false, &file, 0)
            .unwrap();
    let pg = |i: u64| p + i * PAGE_SIZE;
    // Page 0: read (the page-cache page is mapped); pages 1 and 3: written
    // (private copies); the others untouched.
    let mut first = vec![0u8; PAGE_SIZE as usize];
    h.mm.read_bytes(&h.task, pg(0), &mut first).unwrap();
    assert_eq!(first, pattern_page(0, 11));
    for i in [1, 3] {
        h.mm.write_bytes(&h.task, pg(i), &[i as u8; 16]).unwrap();
    }
    let mut want = content.clone();
    for i in [1usize, 3] {
        want[i * PAGE_SIZE as usize..][..16].fill(i as u8);
    }

    let mut cmd = Cmd::new(p, n);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
    for i in 0..n {
        assert_eq!(on_device(&h, pg(i)), i == 1 || i == 3, "page {i}");
        assert_eq!(h.fd.entry(pg(i)).is_some(), i == 1 || i == 3, "page {i}");
    }
    let (pte, pfn) = h.mm.pte_at(pg(0));
    assert!(matches!(pte, Pte::Present { write: false, .. }));
    assert_eq!(pfn, file.lookup(0), "page 0 still maps the page cache");
    for i in [2, 4, 5, 6, 7] {
        assert_eq!(h.mm.pte_at(pg(i)).0, Pte::None, "page {i}");
    }
    // The file never saw the private writes.
    let mut f = vec![0u8; content.len()];
    file.pread(0, &mut f);
    assert_eq!(f, content);

    let mut cmd = Cmd::new(p, n);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.buf, want);
    let mut cpu = vec![0u8; want.len()];
    h.mm.read_bytes(&h.task, p, &mut cpu).unwrap();
    assert_eq!(cpu, want);
}

/// `migrate_vma_setup` refuses hugetlb and special (PFNMAP, IO, MIXEDMAP)
/// VMAs: both migrate commands answer -EINVAL there and change nothing.
#[test]
fn hugetlb_and_special_vmas_do_not_migrate() {
    let h = Hmm::new();
    let huge = h.mm.mmap_hugetlb(None, TWOMEG, RW, 9, false).unwrap();
    h.fill(huge, 4, |i| i);
    let pfnmap =
        h.mm.mmap_pfnmap(None, PAGE_SIZE, RW, 0x9_0000, false)
            .unwrap();
    let io =
        h.mm.mmap_pfnmap(None, PAGE_SIZE, RW, 0x9_1000, true)
            .unwrap();
    let mixed = h.mm.mmap_mixedmap(None, PAGE_SIZE, RW).unwrap();
    for a in [huge, pfnmap, io, mixed] {
        let before = h.mm.pte_at(a);
        let mut cmd = Cmd::new(a, 1);
        assert_eq!(
            h.fd.migrate_to_dev(&h.task, &mut cmd),
            Err(Errno::EINVAL),
            "{a:#x}"
        );
        assert_eq!(
            h.fd.migrate_to_sys(&h.task, &mut cmd),
            Err(Errno::EINVAL),
            "{a:#x}"
        );
        assert_eq!(h.mm.pte_at(a), before);
    }
    assert_eq!(h.fd.entries(), 0);
    assert_eq!(h.ints(huge, 4), iota(4, |i| i));
}

/// A device page that cannot be allocated leaves its page in system
/// memory and the migration goes on with the next one, as test_hmm's
/// allocation loop does; MIGRATE_TO_SYS likewise skips a page it has no
/// system page for, without an error.
#[test]
fn failed_allocations_leave_single_pages_behind() {
    let h = Hmm::new();
    let n = 4u64;
    let ints = (n * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(p, ints, |i| 3 * i);
    h.machine.inject.fail_next_allocs(1);
    let mut cmd = Cmd::new(p, n);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
    let moved: Vec<bool> = (0..n).map(|i| on_device(&h, p + i * PAGE_SIZE)).collect();
    assert_eq!(moved, [false, true, true, true]);
    assert_eq!(h.ints(p, ints), iota(ints, |i| 3 * i));

    // The CPU read faulted pages 1-3 back. All four move now; then back to
    // system memory with the first allocation failing.
    assert_eq!(h.machine.inject.failed_allocs(), 1);
    let mut cmd = Cmd::new(p, n);
    h.fd.migrate_to_dev(&h.task, &mut cmd).unwrap();
    h.machine.inject.fail_next_allocs(1);
    let mut cmd = Cmd::new(p, n);
    h.fd.migrate_to_sys(&h.task, &mut cmd).unwrap();
    assert_eq!(h.machine.inject.failed_allocs(), 2);
    assert_eq!(cmd.cpages, n - 1);
    let moved: Vec<bool> = (0..n).map(|i| on_device(&h, p + i * PAGE_SIZE)).collect();
    assert_eq!(moved, [true, false, false, false]);
    assert_eq!(h.ints(p, ints), iota(ints, |i| 3 * i));
}

/// test_hmm's mirror ignores the invalidations of its own migrations: what
/// the device mapped before stays mapped through MIGRATE_TO_DEV and
/// MIGRATE_TO_SYS when those pages do not move. Shared memory never moves,
/// so after a READ the migration's read-back finds every page, and a
/// second READ needs no device fault.
#[test]
fn own_migrations_keep_the_devices_other_entries() {
    let h = Hmm::new();
    let n = 8u64;
    let ints = (n * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_shared_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(p, ints, |i| i ^ 0x33);
    let mut cmd = Cmd::new(p, n);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.faults, 1);

    let mut cmd = Cmd::new(p, n);
    h.fd.migrate_to_dev(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, n);
    assert_eq!(cmd.i32s(), iota(ints, |i| i ^ 0x33));
    assert!((0..n).all(|i| !on_device(&h, p + i * PAGE_SIZE)));
    let mut cmd = Cmd::new(p, n);
    h.fd.migrate_to_sys(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, 0);
    let mut cmd = Cmd::new(p, n);
    h.fd.read(&h.task, &mut cmd).unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (n, 0));
    assert_eq!(h.fd.check_coherent(&h.task), Ok(n));

    // Another device's migration is not ours: our entries go.
    let dev1 = backend_sim::dmirror::Device::new(&h.machine);
    let fd1 = dev1.open(&h.mm);
    let q = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(q, ints, |i| i);
    h.fd.read(&h.task, &mut Cmd::new(q, n)).unwrap();
    fd1.migrate_to_dev(&h.task, &mut Cmd::new(q, n)).unwrap();
    assert!(h.fd.entries_in(q, q + n * PAGE_SIZE).is_empty());
}

/// A page already on the device but no longer mapped by it (fork
/// invalidated the device's entries) is not collected again by
/// MIGRATE_TO_DEV (it selects system memory only), so the read-back
/// answers -ENOENT, as on Linux; the CPU still reads the data.
#[test]
fn device_pages_the_device_no_longer_maps_are_not_mapped_again() {
    let h = Hmm::new();
    let n = 4u64;
    let ints = (n * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(p, ints, |i| i + 5);
    h.fd.migrate_to_dev(&h.task, &mut Cmd::new(p, n)).unwrap();
    let child = h.mm.fork(&h.task);
    assert!(h.fd.entries_in(p, p + n * PAGE_SIZE).is_empty());
    assert!(on_device(&h, p));
    let mut cmd = Cmd::new(p, n);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
    assert_eq!(h.ints(p, ints), iota(ints, |i| i + 5));
    drop(child);
}
