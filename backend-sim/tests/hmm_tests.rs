//! The kernel's `tools/testing/selftests/mm/hmm-tests.c`, ported: same
//! setups, same assertions, against the simulated mm and dmirror device
//! (the device-private variants).

mod common;

use backend_sim::dmirror::{self, Cmd, Mirror};
use backend_sim::frame::{FrameKind, HUGE_ZERO_PFN};
use backend_sim::pagetable::Pte;
use backend_sim::task::Task;
use backend_sim::userfaultfd::Features;
use backend_sim::vma::File;
use backend_sim::Errno;
use common::*;
use hmm_core::{Options, Stats, VmFlags, PAGE_SIZE};

const N: usize = (HMM_BUFFER_SIZE / 4) as usize;

/// Map `size` bytes of private anonymous read-write memory and fill its
/// ints with `f(i)`.
fn anon_filled(h: &Hmm, size: u64, f: impl Fn(i32) -> i32) -> u64 {
    let p = h.mm.mmap_anon(None, size, RW).unwrap();
    h.fill(p, (size / 4) as usize, f);
    p
}

/// READ `npages` at `p` through `fd`: every page is mirrored, in one device
/// fault.
fn read_all(fd: &Mirror, task: &Task, p: u64, npages: u64) -> Cmd {
    let mut cmd = Cmd::new(p, npages);
    fd.read(task, &mut cmd).unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (npages, 1));
    cmd
}

/// WRITE `data` through the device to `npages` at `p`: every page is
/// written, in one device fault, and the CPU then reads `data` there.
fn write_all(h: &Hmm, p: u64, npages: u64, data: &[i32]) -> Cmd {
    let mut cmd = Cmd::new(p, npages);
    cmd.set_i32s(data);
    h.fd.write(&h.task, &mut cmd).unwrap();
    assert_eq!((cmd.cpages, cmd.faults), (npages, 1));
    assert_eq!(h.ints(p, data.len()), data);
    cmd
}

/// MIGRATE `npages` at `p` to `fd`'s device: every page moves.
fn migrate_all(fd: &Mirror, task: &Task, p: u64, npages: u64) -> Cmd {
    let mut cmd = Cmd::new(p, npages);
    fd.migrate_to_dev(task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, npages);
    cmd
}

/// SNAPSHOT `npages` at `p` into a buffer of one byte per page (the
/// selftests' `malloc(npages)`): every page is reported.
fn snapshot_all(h: &Hmm, p: u64, npages: u64) -> Cmd {
    let mut cmd = snap_cmd(p, npages);
    h.fd.snapshot(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, npages);
    cmd
}

/// EXCLUSIVE over the whole buffer at `p`: every page is taken, and the
/// device sees the ints `0..N`.
fn exclusive_all(h: &Hmm, p: u64) {
    let mut cmd = Cmd::new(p, NPAGES);
    h.fd.exclusive(&h.task, &mut cmd).unwrap();
    assert_eq!(cmd.cpages, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
}

#[test]
fn open_close() {
    let h = Hmm::new();
    assert_eq!(h.fd.entries(), 0);
    let owner = h.fd.owner();
    drop(h.fd);
    // The device and its notifier are gone; the mm still works.
    let a = h.mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    h.mm.munmap(&h.task, a, PAGE_SIZE).unwrap();
    assert_eq!(h.dev.owner(), owner);
}

#[test]
fn anon_read() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, HMM_BUFFER_SIZE, RW).unwrap();
    // Initialize data that the device will read, except the first 2 pages.
    let first = (2 * PAGE_SIZE / 4) as usize;
    let v: Vec<i32> = (first as i32..N as i32).collect();
    h.mm.write_i32s(&h.task, p + 2 * PAGE_SIZE, &v).unwrap();
    h.mm.mprotect(p, HMM_BUFFER_SIZE, RO).unwrap();
    // Simulate a device reading a zero page of memory.
    assert_eq!(h.ints(p + PAGE_SIZE, 1), [0]);
    let m = read_all(&h.fd, &h.task, p, NPAGES).i32s();
    assert!(m[..first].iter().all(|&x| x == 0));
    assert_eq!(&m[first..], &v[..]);
}

#[test]
fn anon_read_prot() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    let mut cmd = Cmd::new(p, NPAGES);
    cmd.set_i32s(&iota(N, |i| -i));
    h.mm.mprotect(p, HMM_BUFFER_SIZE, VmFlags::empty()).unwrap();
    assert_eq!(h.fd.read(&h.task, &mut cmd), Err(Errno::EFAULT));
    // Nothing was copied to the mirror buffer.
    assert_eq!(cmd.i32s(), iota(N, |i| -i));
    h.mm.mprotect(p, HMM_BUFFER_SIZE, RO).unwrap();
    assert_eq!(h.ints(p, N), iota(N, |i| i));
}

#[test]
fn anon_write() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, HMM_BUFFER_SIZE, RW).unwrap();
    write_all(&h, p, NPAGES, &iota(N, |i| i));
}

#[test]
fn anon_write_prot() {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, HMM_BUFFER_SIZE, RO).unwrap();
    // Simulate a device reading a zero page of memory.
    let cmd = read_all(&h.fd, &h.task, p, 1);
    assert!(cmd.buf.iter().all(|&b| b == 0));
    // Writing to a read-only region fails with -EPERM.
    let mut cmd = Cmd::new(p, NPAGES);
    cmd.set_i32s(&iota(N, |i| i));
    assert_eq!(h.fd.write(&h.task, &mut cmd), Err(Errno::EPERM));
    assert!(h.ints(p, N).iter().all(|&x| x == 0));
    h.mm.mprotect(p, HMM_BUFFER_SIZE, RW).unwrap();
    write_all(&h, p, NPAGES, &iota(N, |i| i));
}

#[test]
fn anon_write_child() {
    for migrate in [false, true] {
        for thp in [false, true] {
            let h = Hmm::new();
            let size = if thp { TWOMEG } else { HMM_BUFFER_SIZE };
            let npages = size / PAGE_SIZE;
            let n = (size / 4) as usize;
            let p = h.mm.mmap_anon(None, size, RW).unwrap();
            if thp {
                h.mm.madvise_hugepage(p, size).unwrap();
            }
            h.fill(p, n, |i| i);
            let mut mirror = Cmd::new(p, npages);
            mirror.set_i32s(&iota(n, |i| -i));
            if migrate {
                migrate_all(&h.fd, &h.task, p, npages);
            }
            let child = h.mm.fork(&h.task);
            {
                // The child: sees the parent's values, writes through its
                // own mirror.
                let ct = Task::new();
                assert_eq!(child.read_i32s(&ct, p, n).unwrap(), iota(n, |i| i));
                let cfd = h.dev.open(&child);
                cfd.write(&ct, &mut mirror).unwrap();
                assert_eq!((mirror.cpages, mirror.faults), (npages, 1));
                if !migrate {
                    assert_eq!(child.read_i32s(&ct, p, n).unwrap(), iota(n, |i| -i));
                }
                drop(cfd);
            }
            drop(child);
            // The parent's buffer did not change.
            assert_eq!(h.ints(p, n), iota(n, |i| i), "migrate={migrate} thp={thp}");
        }
    }
}

#[test]
fn anon_write_child_shared() {
    let h = Hmm::new();
    let p = h.mm.mmap_shared_anon(None, HMM_BUFFER_SIZE, RW).unwrap();
    h.fill(p, N, |i| i);
    let mut mirror = Cmd::new(p, NPAGES);
    mirror.set_i32s(&iota(N, |i| -i));
    let child = h.mm.fork(&h.task);
    {
        let ct = Task::new();
        assert_eq!(child.read_i32s(&ct, p, N).unwrap(), iota(N, |i| i));
        let cfd = h.dev.open(&child);
        cfd.write(&ct, &mut mirror).unwrap();
        assert_eq!((mirror.cpages, mirror.faults), (NPAGES, 1));
        assert_eq!(child.read_i32s(&ct, p, N).unwrap(), iota(N, |i| -i));
    }
    drop(child);
    // Shared memory: the parent sees what the child's device wrote.
    assert_eq!(h.ints(p, N), iota(N, |i| -i));
}

#[test]
fn anon_write_huge() {
    let h = Hmm::new();
    let buf = h.mm.mmap_anon(None, 2 * TWOMEG, RW).unwrap();
    let p = buf.next_multiple_of(TWOMEG);
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    h.mm.madvise_hugepage(p, TWOMEG).unwrap();
    write_all(&h, p, npages, &iota(n, |i| i));
    // Beyond the kernel test: the device fault really made a THP.
    let snap = snapshot_all(&h, p, npages);
    assert!(snap
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_WRITE | dmirror::PROT_PMD));
}

#[test]
fn anon_write_hugetlbfs() {
    let h = Hmm::new();
    let size = TWOMEG;
    let npages = size / PAGE_SIZE;
    let n = (size / 4) as usize;
    let p = h.mm.mmap_hugetlb(None, size, RW, 9, false).unwrap();
    write_all(&h, p, npages, &iota(n, |i| i));
}

#[test]
fn file_read() {
    let h = Hmm::new();
    let file = File::new(h.machine.frames.clone(), 0, 0);
    let data: Vec<u8> = iota(N, |i| i)
        .iter()
        .flat_map(|x| x.to_ne_bytes())
        .collect();
    file.pwrite(0, &data).unwrap();
    let p =
        h.mm.mmap_file(None, HMM_BUFFER_SIZE, RO, true, &file, 0)
            .unwrap();
    let cmd = read_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
}

#[test]
fn file_write() {
    let h = Hmm::new();
    let file = File::new(h.machine.frames.clone(), HMM_BUFFER_SIZE, 0);
    let p =
        h.mm.mmap_file(None, HMM_BUFFER_SIZE, RW, true, &file, 0)
            .unwrap();
    let cmd = write_all(&h, p, NPAGES, &iota(N, |i| i));
    let mut back = vec![0u8; HMM_BUFFER_SIZE as usize];
    file.pread(0, &mut back);
    assert_eq!(back, cmd.buf);
}

#[test]
fn migrate() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
}

#[test]
fn migrate_file_private() {
    let h = Hmm::new();
    // hmm_create_file: a temporary file ftruncate()d to the buffer size.
    let file = File::new(h.machine.frames.clone(), HMM_BUFFER_SIZE, 0);
    let p =
        h.mm.mmap_file(None, HMM_BUFFER_SIZE, RW, false, &file, 0)
            .unwrap();
    // Initialize buffer in system memory (copy-on-write from the file).
    h.fill(p, N, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
    // Beyond the kernel test: every page is on the device, the private
    // writes never reached the file, and the CPU reads them back.
    assert_eq!(h.fd.entries_in(p, p + HMM_BUFFER_SIZE).len() as u64, NPAGES);
    let mut back = vec![0xffu8; HMM_BUFFER_SIZE as usize];
    file.pread(0, &mut back);
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(h.ints(p, N), iota(N, |i| i));
}

#[test]
fn migrate_fault() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
    // Fault half the pages back to system memory and check them.
    assert_eq!(h.ints(p, N / 2), iota(N / 2, |i| i));
    let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
}

#[test]
fn migrate_shared() {
    let h = Hmm::new();
    let p = h.mm.mmap_shared_anon(None, HMM_BUFFER_SIZE, RW).unwrap();
    let mut cmd = Cmd::new(p, NPAGES);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
}

#[test]
fn migrate_mixed() {
    let h2 = Hmm2::new();
    let h = &h2.h;
    let npages = 6;
    let p =
        h.mm.mmap_anon(None, npages * PAGE_SIZE, VmFlags::empty())
            .unwrap();
    let pg = |i: u64| p + i * PAGE_SIZE;
    // Migrating a protected area should be an error.
    let mut cmd = Cmd::new(p, npages);
    assert_eq!(h2.fd1.migrate_to_dev(&h.task, &mut cmd), Err(Errno::EINVAL));
    // Punch a hole after the first page address.
    h.mm.munmap(&h.task, pg(1), PAGE_SIZE).unwrap();
    // We expect an error if the vma doesn't cover the range.
    let mut cmd = Cmd::new(p, 3);
    assert_eq!(h2.fd1.migrate_to_dev(&h.task, &mut cmd), Err(Errno::EINVAL));
    // Page 2 will be a read-only zero page.
    h.mm.mprotect(pg(2), PAGE_SIZE, RO).unwrap();
    let val = h.ints(pg(2), 1)[0] + 3;
    assert_eq!(val, 3);
    // Page 3 will be read-only.
    h.mm.mprotect(pg(3), PAGE_SIZE, RW).unwrap();
    h.mm.write_i32s(&h.task, pg(3), &[val]).unwrap();
    h.mm.mprotect(pg(3), PAGE_SIZE, RO).unwrap();
    // Pages 4-5 will be read-write.
    h.mm.mprotect(pg(4), 2 * PAGE_SIZE, RW).unwrap();
    h.mm.write_i32s(&h.task, pg(4), &[val]).unwrap();
    h.mm.write_i32s(&h.task, pg(5), &[val]).unwrap();
    // Now try to migrate pages 2-5 to device 1.
    let cmd = migrate_all(&h2.fd1, &h.task, pg(2), 4);
    // Beyond the kernel test: what device 1 read, and how it maps it.
    let m = cmd.i32s();
    let per = (PAGE_SIZE / 4) as usize;
    assert_eq!([m[0], m[per], m[2 * per], m[3 * per]], [0, 3, 3, 3]);
    let writable: Vec<bool> = (2..6).map(|i| h2.fd1.entry(pg(i)).unwrap().write).collect();
    assert_eq!(writable, [false, false, true, true]);
    // Page 5 won't be migrated to device 0 because it's on device 1.
    let mut cmd = Cmd::new(pg(5), 1);
    assert_eq!(h.fd.migrate_to_dev(&h.task, &mut cmd), Err(Errno::ENOENT));
}

#[test]
fn migrate_multiple() {
    let h = Hmm::new();
    for _ in 0..10 {
        let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
        let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
        assert_eq!(cmd.i32s(), iota(N, |i| i));
        let mut back = Cmd::new(p, NPAGES);
        h.fd.migrate_to_sys(&h.task, &mut back).unwrap();
        assert_eq!(back.cpages, NPAGES);
        assert_eq!(h.ints(p, N), iota(N, |i| i));
        h.mm.munmap(&h.task, p, HMM_BUFFER_SIZE).unwrap();
    }
}

#[test]
fn anon_read_multiple() {
    let h = Hmm::new();
    for c in 0..10 {
        let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i + c);
        let cmd = read_all(&h.fd, &h.task, p, NPAGES);
        assert_eq!(cmd.i32s(), iota(N, |i| i + c));
        h.mm.munmap(&h.task, p, HMM_BUFFER_SIZE).unwrap();
    }
}

#[test]
fn anon_teardown() {
    let h = Hmm::new();
    for c in 0..10 {
        let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i + c);
        let go = std::sync::Barrier::new(2);
        let r = std::thread::scope(|s| {
            let unmapper = s.spawn(|| {
                let t = Task::new();
                go.wait();
                // Vary where the unmap lands relative to the READ.
                for _ in 0..c * 50 {
                    std::thread::yield_now();
                }
                h.mm.munmap(&t, p + HMM_BUFFER_SIZE / 2, HMM_BUFFER_SIZE / 2)
            });
            go.wait();
            let mut cmd = Cmd::new(p, NPAGES);
            let r = h.fd.read(&h.task, &mut cmd).map(|()| cmd);
            unmapper.join().unwrap().unwrap();
            r
        });
        match r {
            Ok(cmd) => {
                assert_eq!((cmd.cpages, cmd.faults), (NPAGES, 1));
                assert_eq!(cmd.i32s(), iota(N, |i| i + c));
            }
            // Racing with munmap may fail the read; that is allowed.
            Err(e) => assert_eq!(e, Errno::EFAULT),
        }
        h.mm.munmap(&h.task, p, HMM_BUFFER_SIZE / 2).unwrap();
    }
}

#[test]
fn mixedmap() {
    let h = Hmm::new();
    let p = h.mm.mmap_mixedmap(None, PAGE_SIZE, RO).unwrap();
    let cmd = snapshot_all(&h, p, 1);
    assert_eq!(cmd.buf, [dmirror::PROT_READ]);
}

#[test]
fn snapshot() {
    let h2 = Hmm2::new();
    let h = &h2.h;
    let npages = 7;
    let p =
        h.mm.mmap_anon(None, npages * PAGE_SIZE, VmFlags::empty())
            .unwrap();
    let pg = |i: u64| p + i * PAGE_SIZE;
    // Punch a hole after the first page address.
    h.mm.munmap(&h.task, pg(1), PAGE_SIZE).unwrap();
    // Page 2 will be the read-only zero page.
    h.mm.mprotect(pg(2), PAGE_SIZE, RO).unwrap();
    assert_eq!(h.ints(pg(2), 1)[0] + 3, 3);
    // Page 3 will be read-only.
    h.mm.mprotect(pg(3), PAGE_SIZE, RW).unwrap();
    h.mm.write_i32s(&h.task, pg(3), &[3]).unwrap();
    h.mm.mprotect(pg(3), PAGE_SIZE, RO).unwrap();
    // Pages 4-6 will be read-write.
    h.mm.mprotect(pg(4), 3 * PAGE_SIZE, RW).unwrap();
    h.mm.write_i32s(&h.task, pg(4), &[3]).unwrap();
    // Page 5 will be migrated to device 0, page 6 to device 1.
    migrate_all(&h.fd, &h.task, pg(5), 1);
    migrate_all(&h2.fd1, &h.task, pg(6), 1);
    // Simulate a device snapshotting CPU page tables.
    let cmd = snapshot_all(h, p, npages);
    let m = &cmd.buf;
    assert_eq!(m[0], dmirror::PROT_ERROR);
    assert_eq!(m[1], dmirror::PROT_ERROR);
    assert_eq!(m[2], dmirror::PROT_ZERO | dmirror::PROT_READ);
    assert_eq!(m[3], dmirror::PROT_READ);
    assert_eq!(m[4], dmirror::PROT_WRITE);
    assert_eq!(m[5], dmirror::PROT_DEV_PRIVATE_LOCAL | dmirror::PROT_WRITE);
    assert_eq!(m[6], dmirror::PROT_NONE);
}

#[test]
fn compound() {
    let h = Hmm::new();
    let size = TWOMEG;
    let npages = size / PAGE_SIZE;
    let n = (size / 4) as usize;
    let p = h.mm.mmap_hugetlb(None, size, RW, 9, false).unwrap();
    h.fill(p, n, |i| i);
    let cmd = snapshot_all(&h, p, npages);
    assert!(cmd
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_WRITE | dmirror::PROT_PMD));
    h.mm.mprotect(p, size, RO).unwrap();
    let cmd = snapshot_all(&h, p, npages);
    assert!(cmd
        .buf
        .iter()
        .all(|&m| m == dmirror::PROT_READ | dmirror::PROT_PMD));
}

#[test]
fn double_map() {
    let h2 = Hmm2::new();
    let h = &h2.h;
    let npages = 6;
    let n = (npages * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, npages * PAGE_SIZE, RW).unwrap();
    h.fill(p, n, |i| i);
    h.mm.mprotect(p, npages * PAGE_SIZE, RO).unwrap();
    for fd in [&h.fd, &h2.fd1] {
        let cmd = read_all(fd, &h.task, p, npages);
        assert_eq!(cmd.i32s(), iota(n, |i| i));
    }
    // Migrate pages to device 1 and read from device 0.
    migrate_all(&h2.fd1, &h.task, p, npages);
    let cmd = read_all(&h.fd, &h.task, p, npages);
    assert_eq!(cmd.i32s(), iota(n, |i| i));
}

#[test]
fn exclusive() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    exclusive_all(&h, p);
    // CPU access revokes device-exclusive access.
    let v = h.ints(p, N);
    let inc: Vec<i32> = v.iter().map(|x| x + 1).collect();
    h.mm.write_i32s(&h.task, p, &inc).unwrap();
    assert_eq!(h.ints(p, N), iota(N, |i| i + 1));
    let mut cmd = Cmd::new(p, NPAGES);
    assert_eq!(h.fd.check_exclusive(&h.task, &mut cmd), Ok(()));
}

#[test]
fn exclusive_mprotect() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    exclusive_all(&h, p);
    h.mm.mprotect(p, HMM_BUFFER_SIZE, RO).unwrap();
    let mut cmd = Cmd::new(p, NPAGES);
    assert_eq!(h.fd.write(&h.task, &mut cmd), Err(Errno::EPERM));
}

#[test]
fn exclusive_cow() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    exclusive_all(&h, p);
    let child = h.mm.fork(&h.task);
    let ct = Task::new();
    for (mm, t) in [(&h.mm, &h.task), (&child, &ct)] {
        let v = mm.read_i32s(t, p, N).unwrap();
        let inc: Vec<i32> = v.iter().map(|x| x + 1).collect();
        mm.write_i32s(t, p, &inc).unwrap();
    }
    for (mm, t) in [(&h.mm, &h.task), (&child, &ct)] {
        assert_eq!(mm.read_i32s(t, p, N).unwrap(), iota(N, |i| i + 1));
    }
}

#[test]
fn hmm_cow_in_device() {
    let h = Hmm::new();
    let npages = 4;
    let n = (npages * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, npages * PAGE_SIZE, RW).unwrap();
    h.fill(p, n, |i| i);
    migrate_all(&h.fd, &h.task, p, npages);
    // The child waits to be killed; it shares the device pages read-only.
    let child = h.mm.fork(&h.task);
    // The parent writes to the COW pages: each is migrated to system
    // memory first, then written.
    h.fill(p, n, |i| i);
    // Terminate the child.
    drop(child);
    let cmd = snapshot_all(&h, p, npages);
    assert!(cmd.buf.iter().all(|&m| m == dmirror::PROT_WRITE));
    // Beyond the kernel test: the data survived the round trip.
    assert_eq!(h.ints(p, n), iota(n, |i| i));
}

/// `iota` over the ints of `[lo, hi)` bytes: `ptr[i] == i` there.
fn ints_between(lo: u64, hi: u64) -> Vec<i32> {
    (lo / 4..hi / 4).map(|i| i as i32).collect()
}

#[test]
fn migrate_partial_unmap_fault() {
    let size = TWOMEG;
    let unmap_size = size / 2;
    let npages = size / PAGE_SIZE;
    let n = (size / 4) as usize;
    for thp in [false, true] {
        for off in [0, size / 4, size / 2] {
            let h = Hmm::new();
            let buf = h.mm.mmap_anon(None, 2 * size, RW).unwrap();
            let map = buf.next_multiple_of(size);
            if thp {
                h.mm.madvise_hugepage(map, size).unwrap();
            }
            h.fill(map, n, |i| i);
            let cmd = migrate_all(&h.fd, &h.task, map, npages);
            assert_eq!(cmd.i32s(), iota(n, |i| i));
            h.mm.munmap(&h.task, map + off, unmap_size).unwrap();
            // Fault pages back to system memory and check them.
            for (lo, hi) in [(0, off), (off + unmap_size, size)] {
                let got = h.ints(map + lo, ((hi - lo) / 4) as usize);
                assert_eq!(got, ints_between(lo, hi), "thp={thp} off={off:#x}");
            }
        }
    }
}

#[test]
fn migrate_remap_fault() {
    let size = TWOMEG;
    let npages = size / PAGE_SIZE;
    let n = (size / 4) as usize;
    for before in [false, true] {
        for dontunmap in [false, true] {
            for thp in [false, true] {
                for off in [0, size / 4, size / 2] {
                    let what =
                        format!("before={before} dontunmap={dontunmap} thp={thp} off={off:#x}");
                    let h = Hmm::new();
                    let buf = h.mm.mmap_anon(None, 8 * size, RW).unwrap();
                    let map = buf.next_multiple_of(size);
                    if thp {
                        h.mm.madvise_hugepage(map, size).unwrap();
                    }
                    h.mm.munmap(&h.task, map + size, 2 * size).unwrap();
                    h.fill(map, n, |i| i);
                    let target = map + size + off;
                    let mut ptr = map;
                    if before {
                        ptr = h.mm.mremap(&h.task, map, size, target, dontunmap).unwrap();
                    }
                    let cmd = migrate_all(&h.fd, &h.task, ptr, npages);
                    assert_eq!(cmd.i32s(), iota(n, |i| i), "{what}");
                    if !before {
                        ptr = h.mm.mremap(&h.task, map, size, target, dontunmap).unwrap();
                    }
                    // Fault pages back to system memory and check them.
                    assert_eq!(h.ints(ptr, n), iota(n, |i| i), "{what}");
                    h.mm.munmap(&h.task, ptr, size).unwrap();
                }
            }
        }
    }
}

/// The seed series' selftest: a READ through the lock-dropping entry point
/// of a userfaultfd MISSING range resolved by a handler thread.
#[test]
fn userfaultfd_read() {
    let h = Hmm::new();
    let npages = 4;
    let p = h.mm.mmap_anon(None, npages * PAGE_SIZE, RW).unwrap();
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, npages * PAGE_SIZE, true, false).unwrap();
    let handler = Handler::spawn(&uffd, PAGE_SIZE, |_| page_of(0xAB));
    let mut cmd = Cmd::new(p, npages);
    let mut stats = Stats::default();
    h.fd.read_unlocked(&h.task, &mut cmd, &Options::default(), &mut stats)
        .unwrap();
    assert_eq!(cmd.cpages, npages);
    assert!(cmd.buf.iter().all(|&b| b == 0xAB));
    let seen = handler.stop(&uffd);
    assert_eq!(seen.len() as u64, npages);
}

#[test]
fn migrate_release() {
    let h = Hmm::new();
    let p = anon_filled(&h, HMM_BUFFER_SIZE, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, p, NPAGES);
    assert_eq!(cmd.i32s(), iota(N, |i| i));
    // Release device memory.
    let mut cmd = Cmd::new(p, NPAGES);
    h.fd.release(&h.task, &mut cmd).unwrap();
    // Beyond the kernel test: every page is back in system memory and
    // the device maps none of them.
    assert_eq!(h.fd.entries(), 0);
    for i in 0..NPAGES {
        assert!(matches!(
            h.mm.pte_at(p + i * PAGE_SIZE).0,
            Pte::Present { huge: false, .. }
        ));
    }
    // Fault half the pages back to system memory and check them.
    assert_eq!(h.ints(p, N / 2), iota(N / 2, |i| i));
}

/// A 2 MiB-aligned THP-advised buffer: `mmap(2 * size)` with `prot`, the
/// aligned half `madvise(MADV_HUGEPAGE)`d. Returns `(old_ptr, map)`.
fn huge_buffer(h: &Hmm, prot: VmFlags) -> (u64, u64) {
    let old = h.mm.mmap_anon(None, 2 * TWOMEG, prot).unwrap();
    let map = old.next_multiple_of(TWOMEG);
    h.mm.madvise_hugepage(map, TWOMEG).unwrap();
    (old, map)
}

/// Beyond the kernel tests: SNAPSHOT of the PMD at `map` gives `want` for
/// every page.
fn snapshot_is(h: &Hmm, map: u64, want: u8) {
    let cmd = snapshot_all(h, map, TWOMEG / PAGE_SIZE);
    assert!(
        cmd.buf.iter().all(|&m| m == want),
        "snapshot {:#x?}, want {want:#x}",
        &cmd.buf[..4]
    );
}

const HUGE_DEV_RO: u8 = dmirror::PROT_DEV_PRIVATE_LOCAL | dmirror::PROT_READ | dmirror::PROT_PMD;
const HUGE_DEV_RW: u8 = dmirror::PROT_DEV_PRIVATE_LOCAL | dmirror::PROT_WRITE | dmirror::PROT_PMD;
const SMALL_DEV_RW: u8 = dmirror::PROT_DEV_PRIVATE_LOCAL | dmirror::PROT_WRITE;

/// `HMM_DMIRROR_FLAGS` with `HMM_DMIRROR_FLAG_FAIL_ALLOC`.
fn fail_alloc(h: &Hmm, p: u64) {
    let mut cmd = Cmd::with_buf(p, dmirror::FLAG_FAIL_ALLOC, Vec::new());
    h.fd.set_flags(&h.task, &mut cmd).unwrap();
}

#[test]
fn migrate_anon_huge_empty() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let (_, map) = huge_buffer(&h, RO);
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert!(cmd.i32s().iter().all(|&v| v == 0));
    // The hole became one device THP, read-only as the VMA.
    snapshot_is(&h, map, HUGE_DEV_RO);
    assert_eq!(h.fd.entries(), npages);
}

#[test]
fn migrate_anon_huge_zero() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    let (_, map) = huge_buffer(&h, RO);
    // Initialize a read-only zero huge page.
    assert_eq!(h.ints(map, 1), [0]);
    assert_eq!(
        h.mm.pte_at(map + PAGE_SIZE),
        (
            Pte::present(HUGE_ZERO_PFN, false, true),
            Some(HUGE_ZERO_PFN + 1)
        )
    );
    // The huge zero page is not the zero pfn: READ | PMD.
    snapshot_is(&h, map, dmirror::PROT_READ | dmirror::PROT_PMD);
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert!(cmd.i32s().iter().all(|&v| v == 0));
    snapshot_is(&h, map, HUGE_DEV_RO);
    // Fault pages back to system memory and check them.
    assert_eq!(h.ints(map, n), vec![0; n]);
}

#[test]
fn migrate_anon_huge_free() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    let (_, map) = huge_buffer(&h, RW);
    h.fill(map, n, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert_eq!(cmd.i32s(), iota(n, |i| i));
    snapshot_is(&h, map, HUGE_DEV_RW);
    // Try freeing it.
    assert_eq!(h.mm.madvise_free(&h.task, map, TWOMEG), Ok(()));
}

#[test]
fn migrate_anon_huge_fault() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    let old = h.mm.mmap_anon(None, 2 * TWOMEG, RW).unwrap();
    let map = old.next_multiple_of(TWOMEG);
    h.fill(map, n, |i| i);
    assert_eq!(h.mm.madvise_collapse(&h.task, map, TWOMEG), Ok(()));
    assert!(matches!(
        h.mm.pte_at(map).0,
        Pte::Present { huge: true, .. }
    ));
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert_eq!(cmd.i32s(), iota(n, |i| i));
    snapshot_is(&h, map, HUGE_DEV_RW);
    // /proc/self/pagemap: every page is a non-present (swap-type) entry.
    for i in 0..npages {
        assert!(matches!(
            h.mm.pte_at(map + i * PAGE_SIZE).0,
            Pte::DevicePrivate { write: true, .. }
        ));
    }
    // Fault pages back to system memory and check them.
    assert_eq!(h.ints(map, n), iota(n, |i| i));
    // Beyond the kernel test: the THP came back whole.
    assert!(matches!(
        h.mm.pte_at(map).0,
        Pte::Present { huge: true, .. }
    ));
    assert_eq!(h.fd.entries(), 0);
}

#[test]
fn migrate_anon_huge_err() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    let (old, map) = huge_buffer(&h, RW);
    h.fill(map, n, |i| i);
    // Migrate memory to device but force a THP allocation error.
    fail_alloc(&h, map);
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert_eq!(cmd.i32s(), iota(n, |i| i));
    // Beyond the kernel test: the fallback gave small device pages.
    snapshot_is(&h, map, SMALL_DEV_RW);
    // Try faulting back a single (PAGE_SIZE) page.
    assert_eq!(h.ints(map + 2048 * 4, 1), [2048]);
    let snap = snapshot_all(&h, map, npages);
    assert_eq!(snap.buf[2], dmirror::PROT_WRITE);
    assert_eq!(snap.buf[3], SMALL_DEV_RW);
    // Unmap and remap the region to reset things.
    h.mm.munmap(&h.task, old, 2 * TWOMEG).unwrap();
    let (_, map) = huge_buffer(&h, RW);
    h.fill(map, n, |i| i);
    // Migrate THP to device.
    migrate_all(&h.fd, &h.task, map, npages);
    snapshot_is(&h, map, HUGE_DEV_RW);
    // Force an allocation error when faulting back a THP resident in the
    // device.
    fail_alloc(&h, map);
    let mut cmd = Cmd::new(map, npages);
    h.fd.migrate_to_sys(&h.task, &mut cmd).unwrap();
    assert_eq!(h.ints(map + 2048 * 4, 1), [2048]);
    // Beyond the kernel test: the device THP was split and every page came
    // back as a small page.
    assert_eq!(cmd.cpages, npages);
    snapshot_is(&h, map, dmirror::PROT_WRITE);
    assert_eq!(h.ints(map, n), iota(n, |i| i));
}

#[test]
fn migrate_anon_huge_zero_err() {
    let h = Hmm::new();
    let npages = TWOMEG / PAGE_SIZE;
    let n = (TWOMEG / 4) as usize;
    let (old, map) = huge_buffer(&h, RO);
    // Migrate memory to device but force a THP allocation error.
    fail_alloc(&h, map);
    let cmd = migrate_all(&h.fd, &h.task, map, npages);
    assert!(cmd.i32s().iter().all(|&v| v == 0));
    snapshot_is(
        &h,
        map,
        dmirror::PROT_DEV_PRIVATE_LOCAL | dmirror::PROT_READ,
    );
    // Try faulting back a single (PAGE_SIZE) page.
    assert_eq!(h.ints(map + 2048 * 4, 1), [0]);
    // Unmap and remap the region to reset things.
    h.mm.munmap(&h.task, old, 2 * TWOMEG).unwrap();
    let (_, map) = huge_buffer(&h, RO);
    // Initialize buffer in system memory (zero THP page).
    assert_eq!(h.ints(map, 1), [0]);
    // Migrate memory to device but force a THP allocation error.
    fail_alloc(&h, map);
    migrate_all(&h.fd, &h.task, map, npages);
    // Fault the device memory back and check it.
    assert_eq!(h.ints(map, n), vec![0; n]);
}

#[test]
fn hmm_gup_test() {
    let h = Hmm::new();
    let npages = 4;
    let n = (npages * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, npages * PAGE_SIZE, RW).unwrap();
    h.fill(p, n, |i| i);
    let cmd = migrate_all(&h.fd, &h.task, p, npages);
    assert_eq!(cmd.i32s(), iota(n, |i| i));
    // GUP_BASIC_TEST, GUP_FAST_BENCHMARK, PIN_FAST_BENCHMARK with
    // FOLL_LONGTERM and PIN_LONGTERM_BENCHMARK, one page each, all with
    // FOLL_WRITE: each takes the page and releases it.
    for i in 0..npages {
        let pins =
            h.mm.get_user_pages(&h.task, p + i * PAGE_SIZE, 1, true)
                .unwrap();
        assert_eq!(pins.len(), 1);
        // GUP never hands out a device-private page.
        assert_eq!(h.machine.frames.kind(pins[0]), FrameKind::System);
        h.mm.unpin_user_pages(&pins);
    }
    // Take snapshot to CPU pagetables.
    let cmd = snapshot_all(&h, p, npages);
    assert!(cmd.buf.iter().all(|&m| m == dmirror::PROT_WRITE));
    // Check again the content on the pages.
    assert_eq!(h.ints(p, n), iota(n, |i| i));
}
