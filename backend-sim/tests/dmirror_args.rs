//! Hostile arguments to every command of the simulated device: addresses
//! 0, unaligned, around the 47-bit user limit and near 2^64; page counts
//! 0, 1, 2^20, 2^32, 2^52, 2^52 + 1 and `u64::MAX`; a bad user pointer
//! (an empty buffer) and short buffers. Each call must answer what
//! `lib/test_hmm.c` answers on Linux (6.12), quickly, and without an
//! allocation beyond the simulator's own 2 MiB chunk of frame contents:
//! the bounce buffer of a transfer never outgrows the caller's buffer.
//!
//! Where test_hmm's answers come from:
//! * the ioctl: an unaligned `addr`, or `addr + (npages << 12)` (64-bit,
//!   so the high bits of the count are lost) not above `addr`: `-EINVAL`;
//! * READ and WRITE `vmalloc` the whole transfer: `-ENOMEM` beyond RAM
//!   (the simulated machine has 2^24 pages); WRITE then copies the user
//!   buffer in (`-EFAULT`);
//! * device faults go in 64-page chunks (READ_UNLOCKED: 32) whose end is
//!   `addr + chunk` in 64-bit arithmetic: near 2^64 it wraps below the
//!   start and `hmm_range_fault` answers `-EINVAL`; beyond the last VMA
//!   (at 2^47 as well: Linux has no limit there) it is a hole, `-EFAULT`;
//! * SNAPSHOT inserts a notifier per chunk (`-EOVERFLOW` when the chunk
//!   wraps), reports holes as `HMM_DMIRROR_PROT_ERROR`, and copies each
//!   chunk out as it goes (`-EFAULT` once the buffer is exhausted);
//! * MIGRATE_TO_DEV / MIGRATE_TO_SYS need a readable VMA at each chunk
//!   (`-EINVAL`, after the chunks before it have moved);
//! * EXCLUSIVE (6.12): a page that cannot be made exclusive is `-EBUSY`;
//! * CHECK_EXCLUSIVE: `-EPERM` iff an ATOMIC entry lies in the range;
//! * RELEASE evicts all of the device's memory and FLAGS stores `npages`
//!   as the flags, whatever the range once the ioctl accepted it;
//! * a failing command leaves the caller's `cpages` / `faults` untouched,
//!   and READ, MIGRATE_TO_DEV and EXCLUSIVE copy to the user only at the
//!   end, after their work (`-EFAULT` for a bad pointer comes last).
//!
//! This file holds a single test: the allocation record is global.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backend_sim::dmirror::{self, Cmd};
use backend_sim::pagetable::Pte;
use backend_sim::Errno;
use common::*;
use hmm_core::{Options, Stats, PAGE_SIZE};

/// The global allocator: the system's, recording the largest request.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// The largest allocation a command may make: one 2 MiB chunk of simulated
/// frame contents (allocated when a fresh chunk is first used), with room.
const ALLOC_BOUND: usize = 4 << 20;
/// "Quickly", on a loaded two-core machine in a debug build.
const TIME_BOUND: Duration = Duration::from_secs(5);

const PG: usize = PAGE_SIZE as usize;
/// The 47-bit user address-space limit (x86-64, 4-level paging).
const LIMIT: u64 = 1 << 47;
/// An aligned address whose 64-page chunk wraps past 2^64.
const TOP: u64 = 0xffff_ffff_ffff_0000;
/// The address whose 64-page chunk ends exactly at 2^64.
const TOP64: u64 = 0u64.wrapping_sub(64 * PAGE_SIZE);
/// The last page with a one-page range below 2^64.
const LAST: u64 = 0u64.wrapping_sub(2 * PAGE_SIZE);
/// The top page: a one-page range there ends at 2^64, which wraps to 0.
const TOPPAGE: u64 = 0u64.wrapping_sub(PAGE_SIZE);

/// The byte pattern of the process's one mapped page.
const DATA: u8 = 0x5a;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    ReadUnlocked,
    Write,
    Snapshot,
    MigrateToDev,
    MigrateToSys,
    Exclusive,
    CheckExclusive,
    Release,
    Flags,
}

const OPS: [Op; 10] = [
    Op::Read,
    Op::ReadUnlocked,
    Op::Write,
    Op::Snapshot,
    Op::MigrateToDev,
    Op::MigrateToSys,
    Op::Exclusive,
    Op::CheckExclusive,
    Op::Release,
    Op::Flags,
];

/// A process with one read-write page at `p` holding [`DATA`], prepared
/// for `op`: for MIGRATE_TO_SYS the page is on the device, for
/// CHECK_EXCLUSIVE the device holds it ATOMIC.
fn process(op: Op) -> (Hmm, u64) {
    let h = Hmm::new();
    let p = h.mm.mmap_anon(None, PAGE_SIZE, RW).unwrap();
    h.mm.write_bytes(&h.task, p, &[DATA; PG]).unwrap();
    match op {
        Op::MigrateToSys | Op::Release => {
            h.fd.migrate_to_dev(&h.task, &mut Cmd::new(p, 1)).unwrap()
        }
        Op::CheckExclusive => h.fd.exclusive(&h.task, &mut Cmd::new(p, 1)).unwrap(),
        _ => {}
    }
    (h, p)
}

fn run(h: &Hmm, op: Op, cmd: &mut Cmd) -> Result<(), Errno> {
    let (fd, t) = (&h.fd, &h.task);
    match op {
        Op::Read => fd.read(t, cmd),
        Op::ReadUnlocked => fd.read_unlocked(t, cmd, &Options::default(), &mut Stats::default()),
        Op::Write => fd.write(t, cmd),
        Op::Snapshot => fd.snapshot(t, cmd),
        Op::MigrateToDev => fd.migrate_to_dev(t, cmd),
        Op::MigrateToSys => fd.migrate_to_sys(t, cmd),
        Op::Exclusive => fd.exclusive(t, cmd),
        Op::CheckExclusive => fd.check_exclusive(t, cmd),
        Op::Release => fd.release(t, cmd),
        Op::Flags => fd.set_flags(t, cmd),
    }
}

/// One call: `op` at `addr(p)` over `npages` with a user buffer of `buf`
/// bytes of `0xc3` (`None`: a bad pointer), in a fresh [`process`].
/// Checks the answer against `want`, the time, the largest allocation,
/// and that a failure left `cpages` / `faults` alone. Returns the process,
/// the page address and the command for further checks.
fn case(
    op: Op,
    addr: Addr,
    npages: u64,
    buf: Option<usize>,
    want: Result<(), Errno>,
) -> (Hmm, u64, Cmd) {
    let (h, p) = process(op);
    let mut cmd = Cmd::with_buf(addr(p), npages, vec![0xc3; buf.unwrap_or(0)]);
    cmd.cpages = 0xdead;
    cmd.faults = 0xbeef;
    let what = format!("{op:?} addr {:#x} npages {npages:#x} buf {buf:?}", cmd.addr);
    LARGEST.store(0, Ordering::Relaxed);
    let t0 = Instant::now();
    let got = run(&h, op, &mut cmd);
    let took = t0.elapsed();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert_eq!(got, want, "{what}");
    assert!(took < TIME_BOUND, "{what}: took {took:?}");
    assert!(largest <= ALLOC_BOUND, "{what}: allocated {largest} bytes");
    assert_eq!(cmd.buf.len(), buf.unwrap_or(0), "{what}: buffer resized");
    if got.is_err() {
        assert_eq!((cmd.cpages, cmd.faults), (0xdead, 0xbeef), "{what}");
    }
    (h, p, cmd)
}

/// An address, given the address `p` of the process's page.
type Addr = fn(u64) -> u64;

/// Addresses with no VMA: 0, the user limit, and near 2^64.
fn nowhere() -> [Addr; 5] {
    [|_| 0, |_| LIMIT, |_| TOP, |_| TOP64, |_| LAST]
}

fn on_device(h: &Hmm, a: u64) -> bool {
    matches!(h.mm.pte_at(a).0, Pte::DevicePrivate { .. })
}

#[test]
fn every_command_answers_hostile_arguments_like_test_hmm() {
    use Errno as E;
    let one = Some(PG);
    let bad = None;

    // Rejected by the ioctl itself, whatever the command and the buffer.
    let einval: [(Addr, u64); 8] = [
        (|p| p + 1, 1),
        (|p| p + 8, 1),
        (|p| p, 0),
        (|_| 0, 0),
        (|p| p, 1 << 52),
        (|p| p, u64::MAX),
        (|_| TOPPAGE, 1),
        (|_| LIMIT + 1, 1),
    ];
    for op in OPS {
        for (addr, npages) in einval {
            for buf in [one, bad] {
                case(op, addr, npages, buf, Err(E::EINVAL));
            }
        }
    }

    // READ and READ_UNLOCKED.
    for op in [Op::Read, Op::ReadUnlocked] {
        let (_, _, cmd) = case(op, |p| p, 1, one, Ok(()));
        assert_eq!((cmd.cpages, cmd.faults), (1, 1));
        assert!(cmd.buf.iter().all(|&b| b == DATA));
        // The count's high bits are lost: 2^52 + 1 pages is one page.
        let (_, _, cmd) = case(op, |p| p, (1 << 52) + 1, one, Ok(()));
        assert_eq!(cmd.cpages, 1);
        assert!(cmd.buf.iter().all(|&b| b == DATA));
        // A bad pointer fails the final copy, after the device fault.
        let (h, p, _) = case(op, |p| p, 1, bad, Err(E::EFAULT));
        assert!(h.fd.entry(p).is_some());
        // A short buffer: the part that fits is written, then -EFAULT.
        let (_, _, cmd) = case(op, |p| p, 1, Some(100), Err(E::EFAULT));
        assert!(cmd.buf.iter().all(|&b| b == DATA));
        case(op, |_| 0, 1, one, Err(E::EFAULT));
        case(op, |_| 0, 1 << 20, one, Err(E::EFAULT));
        case(op, |p| p, 1 << 20, one, Err(E::EFAULT));
        case(op, |p| p, 1 << 32, one, Err(E::ENOMEM));
        case(op, |_| 0, u64::MAX, bad, Err(E::ENOMEM));
        case(op, |_| LIMIT - PAGE_SIZE, 1, one, Err(E::EFAULT));
        case(op, |_| LIMIT, 1, one, Err(E::EFAULT));
        case(op, |_| TOP, 1, one, Err(E::EINVAL));
        case(op, |_| LAST, 1, one, Err(E::EINVAL));
    }
    // The 32-page chunk of READ_UNLOCKED does not wrap where READ's does.
    case(Op::Read, |_| TOP64, 1, one, Err(E::EINVAL));
    case(Op::ReadUnlocked, |_| TOP64, 1, one, Err(E::EFAULT));

    // WRITE.
    let (h, p, cmd) = case(Op::Write, |p| p, 1, one, Ok(()));
    assert_eq!((cmd.cpages, cmd.faults), (1, 1));
    let mut back = vec![0u8; PG];
    h.mm.read_bytes(&h.task, p, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xc3));
    case(Op::Write, |p| p, (1 << 52) + 1, one, Ok(()));
    // A bad pointer fails before anything happens.
    let (h, p, _) = case(Op::Write, |p| p, 1, bad, Err(E::EFAULT));
    h.mm.read_bytes(&h.task, p, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == DATA));
    assert_eq!(h.fd.entries(), 0);
    case(Op::Write, |p| p, 2, one, Err(E::EFAULT));
    case(Op::Write, |p| p, 1 << 20, one, Err(E::EFAULT));
    case(Op::Write, |p| p, 1 << 32, one, Err(E::ENOMEM));
    case(Op::Write, |_| 0, u64::MAX, bad, Err(E::ENOMEM));
    case(Op::Write, |_| 0, 1, one, Err(E::EFAULT));
    case(Op::Write, |_| LIMIT, 1, one, Err(E::EFAULT));
    case(Op::Write, |_| TOP, 1, one, Err(E::EINVAL));
    case(Op::Write, |_| TOP64, 1, one, Err(E::EINVAL));
    case(Op::Write, |_| LAST, 1, one, Err(E::EINVAL));

    // SNAPSHOT: one byte per page.
    let (_, _, cmd) = case(Op::Snapshot, |p| p, 1, Some(1), Ok(()));
    assert_eq!((cmd.cpages, cmd.buf[0]), (1, dmirror::PROT_WRITE));
    let (_, _, cmd) = case(Op::Snapshot, |p| p, (1 << 52) + 1, Some(1), Ok(()));
    assert_eq!((cmd.cpages, cmd.buf[0]), (1, dmirror::PROT_WRITE));
    let holes: [Addr; 3] = [|_| 0, |_| LIMIT - PAGE_SIZE, |_| LIMIT];
    for addr in holes {
        let (_, _, cmd) = case(Op::Snapshot, addr, 1, Some(1), Ok(()));
        assert_eq!((cmd.cpages, cmd.buf[0]), (1, dmirror::PROT_ERROR));
    }
    case(Op::Snapshot, |p| p, 1, bad, Err(E::EFAULT));
    // The chunks that fit are written before -EFAULT.
    let (_, _, cmd) = case(Op::Snapshot, |p| p, 1 << 20, Some(PG), Err(E::EFAULT));
    assert_eq!(cmd.buf[0], dmirror::PROT_WRITE);
    assert!(cmd.buf[1..].iter().all(|&m| m == dmirror::PROT_ERROR));
    case(Op::Snapshot, |p| p, 1 << 32, Some(PG), Err(E::EFAULT));
    case(Op::Snapshot, |_| 0, u64::MAX, bad, Err(E::EFAULT));
    case(Op::Snapshot, |_| 0, u64::MAX, Some(PG), Err(E::EFAULT));
    case(Op::Snapshot, |_| TOP, 1, Some(1), Err(E::EOVERFLOW));
    case(Op::Snapshot, |_| LAST, 1, Some(1), Err(E::EOVERFLOW));
    case(Op::Snapshot, |_| TOP64, 1, Some(1), Err(E::EINVAL));

    // MIGRATE_TO_DEV.
    let (h, p, cmd) = case(Op::MigrateToDev, |p| p, 1, one, Ok(()));
    assert_eq!(cmd.cpages, 1);
    assert!(cmd.buf.iter().all(|&b| b == DATA) && on_device(&h, p));
    case(Op::MigrateToDev, |p| p, (1 << 52) + 1, one, Ok(()));
    // A bad pointer fails the read-back, after the migration.
    let (h, p, _) = case(Op::MigrateToDev, |p| p, 1, bad, Err(E::EFAULT));
    assert!(on_device(&h, p));
    // The chunk with the VMA moves, the next one has no VMA.
    for npages in [2, 1 << 20, 1 << 32] {
        let (h, p, _) = case(Op::MigrateToDev, |p| p, npages, one, Err(E::EINVAL));
        assert!(on_device(&h, p));
    }
    for at in nowhere() {
        case(Op::MigrateToDev, at, 1, one, Err(E::EINVAL));
    }
    case(Op::MigrateToDev, |_| 0, u64::MAX, bad, Err(E::EINVAL));

    // MIGRATE_TO_SYS: the page starts on the device; no user buffer.
    for buf in [one, bad] {
        let (h, p, cmd) = case(Op::MigrateToSys, |p| p, 1, buf, Ok(()));
        assert_eq!(cmd.cpages, 1);
        assert!(!on_device(&h, p));
    }
    case(Op::MigrateToSys, |p| p, (1 << 52) + 1, one, Ok(()));
    for npages in [2, 1 << 20, 1 << 32] {
        let (h, p, _) = case(Op::MigrateToSys, |p| p, npages, one, Err(E::EINVAL));
        assert!(!on_device(&h, p), "moved back before the error");
    }
    for at in nowhere() {
        case(Op::MigrateToSys, at, 1, one, Err(E::EINVAL));
    }
    case(Op::MigrateToSys, |_| 0, u64::MAX, bad, Err(E::EINVAL));

    // EXCLUSIVE.
    let (h, p, cmd) = case(Op::Exclusive, |p| p, 1, one, Ok(()));
    assert_eq!(cmd.cpages, 1);
    assert!(cmd.buf.iter().all(|&b| b == DATA));
    assert!(h.fd.entry(p).is_some_and(|e| e.atomic));
    case(Op::Exclusive, |p| p, (1 << 52) + 1, one, Ok(()));
    let (h, p, _) = case(Op::Exclusive, |p| p, 1, bad, Err(E::EFAULT));
    assert!(h.fd.entry(p).is_some_and(|e| e.atomic));
    for npages in [2, 1 << 20, 1 << 32] {
        case(Op::Exclusive, |p| p, npages, one, Err(E::EBUSY));
    }
    for at in nowhere() {
        case(Op::Exclusive, at, 1, one, Err(E::EBUSY));
    }
    case(Op::Exclusive, |_| 0, u64::MAX, bad, Err(E::EBUSY));

    // CHECK_EXCLUSIVE: the page at p is held ATOMIC; no user buffer.
    for (addr, npages) in [
        (|p| p, 1),
        (|p| p, 1 << 20),
        (|p| p, 1 << 32),
        (|p| p, (1 << 52) + 1),
        (|_| 0, u64::MAX),
        (|p| p - 7 * PAGE_SIZE, 8),
    ] as [(Addr, u64); 6]
    {
        for buf in [one, bad] {
            let (_, _, cmd) = case(Op::CheckExclusive, addr, npages, buf, Err(E::EPERM));
            assert_eq!(cmd.cpages, 0xdead);
        }
    }
    for (addr, npages) in [
        (|_| 0, 1),
        (|_| 0, 1 << 20),
        (|p| p + PAGE_SIZE, 1 << 32),
        (|p| p - 8 * PAGE_SIZE, 8),
        (|_| LIMIT, 1),
        (|_| TOP, 1),
        (|_| TOP64, 63),
        (|_| LAST, 1),
    ] as [(Addr, u64); 8]
    {
        let (_, _, cmd) = case(Op::CheckExclusive, addr, npages, bad, Ok(()));
        assert_eq!((cmd.cpages, cmd.faults), (0, 0));
    }

    // RELEASE: the page at p starts on the device; any accepted range
    // evicts it.
    for (addr, npages) in [
        (|p| p, 1),
        (|_| 0, u64::MAX),
        (|_| LIMIT, 1 << 32),
        (|_| TOP, 1),
        (|_| LAST, 1),
    ] as [(Addr, u64); 5]
    {
        for buf in [one, bad] {
            let (h, p, cmd) = case(Op::Release, addr, npages, buf, Ok(()));
            assert_eq!((cmd.cpages, cmd.faults), (0, 0));
            assert!(!on_device(&h, p));
            assert_eq!(h.ints(p, 1), [i32::from_ne_bytes([DATA; 4])]);
        }
    }

    // FLAGS: npages is the flag word; FAIL_ALLOC fails the next
    // allocation of a migration, so the page stays and the read-back
    // answers -ENOENT; the one after that succeeds.
    for (addr, npages) in [(|p| p, 1), (|_| 0, u64::MAX), (|_| TOP, 1)] as [(Addr, u64); 3] {
        let (h, p, cmd) = case(Op::Flags, addr, npages, bad, Ok(()));
        assert_eq!((cmd.cpages, cmd.faults), (0, 0));
        let mut m = Cmd::new(p, 1);
        assert_eq!(h.fd.migrate_to_dev(&h.task, &mut m), Err(E::ENOENT));
        assert!(!on_device(&h, p));
        h.fd.migrate_to_dev(&h.task, &mut m).unwrap();
        assert!(on_device(&h, p));
    }
}
