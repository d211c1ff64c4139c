//! Fault-injection sweep in the simulator (backend-sim): every allocation
//! point, every wait, every userfaultfd message and every non-blockable
//! notifier callback of a set of device-mirror scenarios is injected once.
//!
//! Points are enumerated deterministically: a scenario runs once without
//! injection to count its points `n` of a kind (allocation attempts,
//! wait points of the faulting task, page-fault messages, non-blockable
//! callbacks), then `n` more times in fresh machines, injecting at point
//! `k` in run `k`:
//!
//! * **allocation failure** (`Inject::fail_alloc_at`): the k-th frame or
//!   page-table allocation fails. Linux's `hmm_range_fault` turns every
//!   fault error into `-EFAULT`; the lock-dropping entry point reports
//!   `-ENOMEM`; `MIGRATE_TO_DEV` reports `-ENOENT` for pages it could not
//!   move; a CPU access reports `-ENOMEM`. Failures that the kernel
//!   recovers from (THP allocation falls back to small pages, page
//!   migration keeps the old page, a userfaultfd handler whose
//!   `UFFDIO_COPY` failed wakes the faulter to try again) end in success.
//! * **fatal signal** (`Task::kill_at_wait`): the signal arrives at the
//!   k-th wait point of the faulting task (`mmap_read_lock_killable`, the
//!   userfaultfd wait, the migration-entry wait). The result is `-EINTR`,
//!   or the scenario's own result when no signal check follows the wait
//!   (Linux's `hmm_range_fault` never checks signals).
//! * **handler death** at the k-th page-fault message: the handler either
//!   exits and closes its userfaultfd (faulters retry, fault normally, and
//!   succeed) or hangs with the descriptor open (the bounded wait and the
//!   caller's budget end the call with `-EBUSY`).
//! * **refused non-blockable invalidation** (`Inject::refuse_nonblock_at`):
//!   the OOM reaper's k-th mirror callback finds its driver lock contended;
//!   the invalidation fails (`-EAGAIN` in Linux) and that VMA is skipped,
//!   its pages and data intact, and reaped by the next pass.
//!
//! After every run: the result is the scenario's own or the documented
//! errno; each mirror is coherent with the CPU page tables and maps only
//! live frames; every page populated before the injection reads back its
//! data (in the parent and in a forked child sharing it); after munmap no
//! device entry is left and every frame and swap slot is freed.
//!
//! The last line of output is the coverage per kind (`--nocapture`).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use backend_sim::dmirror::{Cmd, Device, Mirror};
use backend_sim::mm::Mm;
use backend_sim::task::Task;
use backend_sim::userfaultfd::{CopyMode, Features, UffdCtx, UffdMsg};
use backend_sim::{Errno, Machine};
use hmm_core::{Options, Stats, VmFlags, PAGE_SIZE};

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);
const TWOMEG: u64 = 2 << 20;
/// Seed of the data written before any injection.
const PSEED: u64 = 0x5eed_0001;
/// Seed of the data a device WRITE stores.
const WSEED: u64 = 0x5eed_0002;
/// Seed of the data the userfaultfd handler supplies.
const USEED: u64 = 0x5eed_0003;
/// Bound on a userfaultfd wait while a handler hangs.
const UFFD_WAIT_BOUND: Duration = Duration::from_millis(1);
/// The caller's retry budget while a handler hangs.
const HUNG_BUDGET_NS: u64 = 20_000_000;

/// A page whose 64-bit words derive from its address and `seed`.
fn pattern_page(addr: u64, seed: u64) -> Vec<u8> {
    (0..PAGE_SIZE / 8)
        .flat_map(|i| (addr.wrapping_add(i * 8) ^ seed).to_le_bytes())
        .collect()
}

fn pattern(addr: u64, pages: u64, seed: u64) -> Vec<u8> {
    (0..pages)
        .flat_map(|i| pattern_page(addr + i * PAGE_SIZE, seed))
        .collect()
}

/// What a page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Zero,
    Pat(u64),
}

impl Content {
    fn matches(self, addr: u64, page: &[u8]) -> bool {
        match self {
            Content::Zero => page.iter().all(|&b| b == 0),
            Content::Pat(seed) => page == &pattern_page(addr, seed)[..],
        }
    }
}

// ------------------------------------------------------------ scenarios

/// The memory a scenario mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// 32 private anonymous pages: written, swapped out, zero-page mapped,
    /// shared copy-on-write with a forked child, and absent.
    Anon,
    /// Two THP-enabled 2 MiB extents, the first populated and shared with a
    /// child; the range straddles them.
    Thp,
    /// An empty THP-enabled extent whose huge-page allocation fails, so
    /// write faults fall back to small pages (a read maps the huge zero
    /// page); injection sweeps the fallback.
    ThpFallback,
    /// Two private 2 MiB hugetlb pages, the first populated and shared
    /// with a child; the range straddles them.
    Hugetlb,
    /// 32 anonymous pages registered MISSING with a userfaultfd, 8 of them
    /// copied in before; a handler thread supplies the rest.
    Uffd,
    /// 16 populated pages; the operation migrates them (move_pages), to
    /// the device, reads them through the device, and back to the CPU.
    Migrate,
    /// 16 populated pages under migration entries while the device faults
    /// them: the fault waits for the migration to finish.
    MigrationWait,
}

/// The device operation under injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `HMM_DMIRROR_READ` through `hmm_range_fault`.
    Read,
    /// `HMM_DMIRROR_WRITE` through `hmm_range_fault`.
    Write,
    /// READ through the lock-dropping entry point.
    ReadUnlocked,
    /// A write fault of the range into the device through the
    /// lock-dropping entry point.
    WriteUnlocked,
    /// migrate (CPU), MIGRATE_TO_DEV, READ, CPU read back.
    RoundTrip,
}

const SCENARIOS: &[(Memory, Op)] = &[
    (Memory::Anon, Op::Read),
    (Memory::Anon, Op::Write),
    (Memory::Anon, Op::ReadUnlocked),
    (Memory::Anon, Op::WriteUnlocked),
    (Memory::Thp, Op::Read),
    (Memory::Thp, Op::Write),
    (Memory::Thp, Op::ReadUnlocked),
    (Memory::Thp, Op::WriteUnlocked),
    (Memory::ThpFallback, Op::Read),
    (Memory::ThpFallback, Op::Write),
    (Memory::ThpFallback, Op::WriteUnlocked),
    (Memory::Hugetlb, Op::Read),
    (Memory::Hugetlb, Op::Write),
    (Memory::Hugetlb, Op::ReadUnlocked),
    (Memory::Hugetlb, Op::WriteUnlocked),
    (Memory::Uffd, Op::Read),
    (Memory::Uffd, Op::Write),
    (Memory::Uffd, Op::ReadUnlocked),
    (Memory::Uffd, Op::WriteUnlocked),
    (Memory::Migrate, Op::RoundTrip),
    (Memory::MigrationWait, Op::Read),
    (Memory::MigrationWait, Op::ReadUnlocked),
];

/// How the userfaultfd handler of a run behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandlerMode {
    /// Resolves every page fault.
    Live,
    /// Reads `k` page faults, resolving them, then exits and closes the
    /// userfaultfd on reading the next one.
    DiesClosing(u64),
    /// Reads `k` page faults, resolving them, then stops reading with the
    /// userfaultfd still open.
    Hangs(u64),
}

/// The userfaultfd handler thread: answers each page fault with `COPY` of
/// a `USEED` page and a wake; when `COPY` fails with `-ENOMEM` the woken
/// faulter faults again and sends another message. Returns the page faults
/// it read.
fn spawn_handler(uffd: &Arc<UffdCtx>, mode: HandlerMode) -> JoinHandle<u64> {
    let uffd = uffd.clone();
    std::thread::spawn(move || {
        let task = Task::new();
        let mut faults = 0u64;
        while let Some(msg) = uffd.read(&task) {
            let UffdMsg::Pagefault { addr, .. } = msg else {
                continue;
            };
            match mode {
                HandlerMode::DiesClosing(k) if faults == k => {
                    uffd.close();
                    return faults;
                }
                HandlerMode::Hangs(k) if faults == k => return faults,
                _ => {}
            }
            faults += 1;
            // copy_fill wakes the faulter whatever the outcome; after an
            // -ENOMEM it faults again and sends another message.
            match uffd.copy_fill(&task, addr, &pattern_page(addr, USEED)) {
                Ok(_) | Err(Errno::ENOENT | Errno::EAGAIN | Errno::ENOMEM) => {}
                Err(e) => panic!("UFFDIO_COPY failed: {e}"),
            }
        }
        faults
    })
}

/// One simulated machine with a process, a forked child (for the
/// copy-on-write scenarios), a device mirror and the expected contents.
struct World {
    machine: Arc<Machine>,
    mm: Arc<Mm>,
    child: Option<Arc<Mm>>,
    _dev: Device,
    mirror: Option<Mirror>,
    /// Does the setup and the checks; never injected.
    setup: Task,
    /// Runs the operation; signals are injected into it.
    task: Task,
    region: (u64, u64),
    /// The operation's range.
    range: (u64, u64),
    /// Per page of the range: what the parent may hold.
    parent: BTreeMap<u64, Vec<Content>>,
    /// Per page of the range: what the child must hold.
    child_data: BTreeMap<u64, Content>,
    uffd: Option<(Arc<UffdCtx>, Option<JoinHandle<u64>>)>,
}

impl World {
    fn new(mem: Memory, handler: HandlerMode) -> World {
        let machine = Machine::new();
        let mm = Mm::new(&machine);
        let dev = Device::new(&machine);
        let mirror = dev.open(&mm);
        let setup = Task::new();
        let mut w = World {
            machine,
            mm,
            child: None,
            _dev: dev,
            mirror: Some(mirror),
            setup,
            task: Task::new(),
            region: (0, 0),
            range: (0, 0),
            parent: BTreeMap::new(),
            child_data: BTreeMap::new(),
            uffd: None,
        };
        w.build(mem, handler);
        w
    }

    fn write_pat(&mut self, a: u64, pages: u64) {
        self.mm
            .write_bytes(&self.setup, a, &pattern(a, pages, PSEED))
            .unwrap();
        for i in 0..pages {
            self.parent
                .insert(a + i * PAGE_SIZE, vec![Content::Pat(PSEED)]);
        }
    }

    fn fork(&mut self) {
        let child = self.mm.fork(&self.setup);
        let (s, e) = self.range;
        let mut a = s;
        while a < e {
            let c = self.parent.get(&a).map_or(Content::Zero, |v| v[0]);
            self.child_data.insert(a, c);
            a += PAGE_SIZE;
        }
        self.child = Some(child);
    }

    fn build(&mut self, mem: Memory, handler: HandlerMode) {
        let p = PAGE_SIZE;
        match mem {
            Memory::Anon => {
                let a = self.mm.mmap_anon(None, 32 * p, RW).unwrap();
                self.region = (a, a + 32 * p);
                self.range = self.region;
                self.write_pat(a + 4 * p, 8);
                assert_eq!(self.mm.swap_out(&self.setup, a + 8 * p, 4 * p), Ok(4));
                self.mm
                    .touch(&self.setup, a + 12 * p, 4 * p, false)
                    .unwrap();
                self.fork();
                self.write_pat(a, 4);
            }
            Memory::Thp | Memory::Hugetlb => {
                let a = if mem == Memory::Thp {
                    let a = self.mm.mmap_anon(None, 2 * TWOMEG, RW).unwrap();
                    self.mm.madvise_hugepage(a, 2 * TWOMEG).unwrap();
                    a
                } else {
                    self.mm
                        .mmap_hugetlb(None, 2 * TWOMEG, RW, 9, false)
                        .unwrap()
                };
                self.region = (a, a + 2 * TWOMEG);
                self.range = (a + TWOMEG - 32 * p, a + TWOMEG + 32 * p);
                self.write_pat(a + TWOMEG - 32 * p, 32);
                self.fork();
            }
            Memory::ThpFallback => {
                let a = self.mm.mmap_anon(None, TWOMEG, RW).unwrap();
                self.mm.madvise_hugepage(a, TWOMEG).unwrap();
                self.region = (a, a + TWOMEG);
                self.range = (a, a + 32 * p);
            }
            Memory::Uffd => {
                let a = self.mm.mmap_anon(None, 32 * p, RW).unwrap();
                self.region = (a, a + 32 * p);
                self.range = self.region;
                let uffd = self.mm.userfaultfd(Features::default());
                uffd.register(a, 32 * p, true, false).unwrap();
                uffd.copy(&self.setup, a, &pattern(a, 8, PSEED), CopyMode::default())
                    .unwrap();
                for i in 0..8 {
                    self.parent.insert(a + i * p, vec![Content::Pat(PSEED)]);
                }
                for i in 8..32 {
                    self.parent
                        .insert(a + i * p, vec![Content::Zero, Content::Pat(USEED)]);
                }
                let h = spawn_handler(&uffd, handler);
                self.uffd = Some((uffd, Some(h)));
            }
            Memory::Migrate | Memory::MigrationWait => {
                let a = self.mm.mmap_anon(None, 16 * p, RW).unwrap();
                self.region = (a, a + 16 * p);
                self.range = self.region;
                self.write_pat(a, 16);
            }
        }
        let (s, e) = self.range;
        let mut a = s;
        while a < e {
            self.parent.entry(a).or_insert_with(|| vec![Content::Zero]);
            a += p;
        }
    }

    fn mirror(&self) -> &Mirror {
        self.mirror.as_ref().expect("mirror open")
    }

    fn npages(&self) -> u64 {
        (self.range.1 - self.range.0) / PAGE_SIZE
    }

    /// Run the operation; `Ok` carries the READ output, if any.
    fn run_op(&self, op: Op, opts: &Options) -> Result<Option<Vec<u8>>, Errno> {
        let (s, e) = self.range;
        let m = self.mirror();
        let t = &self.task;
        match op {
            Op::Read => {
                let mut cmd = Cmd::new(s, self.npages());
                m.read(t, &mut cmd).map(|()| Some(cmd.buf))
            }
            Op::ReadUnlocked => {
                let mut cmd = Cmd::new(s, self.npages());
                m.read_unlocked(t, &mut cmd, opts, &mut Stats::default())
                    .map(|()| Some(cmd.buf))
            }
            Op::Write => {
                let mut cmd = Cmd::new(s, self.npages());
                cmd.buf = pattern(s, self.npages(), WSEED);
                m.write(t, &mut cmd).map(|()| None)
            }
            Op::WriteUnlocked => m
                .fault_unlocked(t, s, e, true, 32, opts, &mut Stats::default())
                .map(|()| None),
            Op::RoundTrip => {
                self.mm.migrate(t, s, e - s, None)?;
                let mut cmd = Cmd::new(s, self.npages());
                m.migrate_to_dev(t, &mut cmd)?;
                assert_eq!(cmd.buf, pattern(s, self.npages(), PSEED));
                let mut cmd = Cmd::new(s, self.npages());
                m.read(t, &mut cmd)?;
                let mut buf = vec![0u8; (e - s) as usize];
                self.mm.read_bytes(t, s, &mut buf)?;
                assert_eq!(cmd.buf, buf, "device and CPU views differ");
                Ok(Some(buf))
            }
        }
    }

    /// Run the operation, for `MigrationWait` while a migration holds its
    /// entries until the operation waits on them.
    fn run(&mut self, mem: Memory, op: Op, opts: &Options) -> Result<Option<Vec<u8>>, Errno> {
        if op == Op::Write {
            // Every page of the range may now hold the device's data.
            for v in self.parent.values_mut() {
                v.push(Content::Pat(WSEED));
            }
        }
        let r = if mem == Memory::MigrationWait {
            self.run_under_migration(op, opts)
        } else {
            self.run_op(op, opts)
        };
        if r.is_ok() && op == Op::Write {
            for v in self.parent.values_mut() {
                *v = vec![Content::Pat(WSEED)];
            }
        }
        r
    }

    fn run_under_migration(&self, op: Op, opts: &Options) -> Result<Option<Vec<u8>>, Errno> {
        let (s, e) = self.range;
        let (installed_tx, installed_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        std::thread::scope(|sc| {
            let migrator = sc.spawn(move || {
                let t = Task::new();
                let hold = move || {
                    installed_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                };
                self.mm.migrate(&t, s, e - s, Some(&hold)).unwrap()
            });
            installed_rx.recv().unwrap();
            let waits = &self.mm.stats.migration_waits;
            let before = waits.load(std::sync::atomic::Ordering::SeqCst);
            let faulter = sc.spawn(|| self.run_op(op, opts));
            // Release the migration once the device fault waits on it.
            while waits.load(std::sync::atomic::Ordering::SeqCst) == before
                && !faulter.is_finished()
            {
                std::thread::yield_now();
            }
            go_tx.send(()).unwrap();
            migrator.join().unwrap();
            faulter.join().unwrap()
        })
    }

    /// Stop the userfaultfd handler (closing the descriptor, so CPU reads
    /// of unresolved pages fault normally); the page faults it read.
    fn stop_handler(&mut self) -> u64 {
        match &mut self.uffd {
            Some((uffd, h)) => {
                uffd.close();
                h.take().map_or(0, |h| h.join().unwrap())
            }
            None => 0,
        }
    }

    /// Coherence, frame liveness, data, and leaks; consumes the world.
    fn check(mut self, what: &str, out: &Result<Option<Vec<u8>>, Errno>) {
        // Nothing is injected from here on.
        self.machine.inject.fail_alloc_at(u64::MAX);
        self.machine.inject.fail_next_allocs(0);
        self.machine.inject.refuse_nonblock_at(u64::MAX);
        self.machine.inject.set_uffd_wait_bound(None);
        let machine = self.machine.clone();
        let frames = &machine.frames;
        let m = self.mirror();
        m.check_coherent(&self.setup)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        for d in m.entries_in(0, u64::MAX) {
            assert!(
                frames.refcount(d.pfn) > 0,
                "{what}: device entry {d:x?} maps a freed frame"
            );
        }
        if let Ok(Some(buf)) = out {
            for (i, page) in buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
                let a = self.range.0 + i as u64 * PAGE_SIZE;
                assert!(
                    self.parent[&a].iter().any(|c| c.matches(a, page)),
                    "{what}: READ output of page {a:#x}"
                );
            }
        }
        self.stop_handler();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for (&a, allowed) in &self.parent {
            self.mm.read_bytes(&self.setup, a, &mut page).unwrap();
            assert!(
                allowed.iter().any(|c| c.matches(a, &page)),
                "{what}: page {a:#x} lost its data (allowed {allowed:x?})"
            );
        }
        if let Some(child) = &self.child {
            for (&a, c) in &self.child_data {
                child.read_bytes(&self.setup, a, &mut page).unwrap();
                assert!(c.matches(a, &page), "{what}: child page {a:#x} changed");
            }
        }
        // Teardown: munmap leaves no device entry, no frame, no swap slot.
        let (s, e) = self.region;
        self.mm.munmap(&self.setup, s, e - s).unwrap();
        assert_eq!(self.mirror().entries(), 0, "{what}: device entries left");
        if let Some(child) = &self.child {
            child.munmap(&self.setup, s, e - s).unwrap();
        }
        assert_eq!(frames.in_use(), 0, "{what}: frames leaked");
        assert_eq!(machine.swap_used(), 0, "{what}: swap slots leaked");
        drop(self);
        assert_eq!(machine.frames.in_use(), 0, "{what}: frames leaked at exit");
    }
}

/// Options of the lock-dropping operations.
fn opts_for(handler: HandlerMode) -> Options {
    match handler {
        HandlerMode::Hangs(_) => Options {
            timeout_ns: HUNG_BUDGET_NS,
            ..Options::default()
        },
        _ => Options::default(),
    }
}

/// The errno an allocation failure may end in, beside success.
fn alloc_errno(op: Op) -> &'static [Errno] {
    match op {
        Op::Read | Op::Write => &[Errno::EFAULT],
        Op::ReadUnlocked | Op::WriteUnlocked => &[Errno::ENOMEM],
        Op::RoundTrip => &[Errno::ENOENT, Errno::ENOMEM],
    }
}

/// A fresh world of `mem`, ready for the operation (THP fallback: the next
/// huge-page allocation fails).
fn world(mem: Memory, handler: HandlerMode) -> World {
    let w = World::new(mem, handler);
    if mem == Memory::ThpFallback {
        w.machine.inject.fail_next_allocs(1);
    }
    w
}

/// Results of one sweep: points per scenario and outcomes by errno.
#[derive(Debug, Default)]
struct Sweep {
    points: Vec<(String, u64)>,
    outcomes: BTreeMap<String, u64>,
}

impl Sweep {
    fn total(&self) -> u64 {
        self.points.iter().map(|(_, n)| n).sum()
    }
    fn record(&mut self, r: &Result<Option<Vec<u8>>, Errno>) {
        let k = match r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e}").split(' ').next().unwrap_or("?").to_string(),
        };
        *self.outcomes.entry(k).or_default() += 1;
    }
}

fn baseline(mem: Memory, op: Op) -> Result<Option<Vec<u8>>, Errno> {
    if mem == Memory::Uffd && matches!(op, Op::Read | Op::Write) {
        // hmm_range_fault cannot serve userfaultfd ranges.
        Err(Errno::EFAULT)
    } else {
        Ok(None)
    }
}

fn same_kind(a: &Result<Option<Vec<u8>>, Errno>, b: &Result<Option<Vec<u8>>, Errno>) -> bool {
    match (a, b) {
        (Ok(_), Ok(_)) => true,
        (Err(x), Err(y)) => x == y,
        _ => false,
    }
}

// --------------------------------------------------------------- sweeps

/// Allocation failure at every allocation point of every scenario.
fn sweep_alloc() -> Sweep {
    let mut sw = Sweep::default();
    for &(mem, op) in SCENARIOS {
        let what = format!("{mem:?}/{op:?}");
        let mut w = world(mem, HandlerMode::Live);
        let start = w.machine.inject.alloc_points();
        let r = w.run(mem, op, &Options::default());
        let n = w.machine.inject.alloc_points() - start;
        assert!(same_kind(&r, &baseline(mem, op)), "{what}: baseline {r:?}");
        w.check(&format!("{what} baseline"), &r);
        let pre_failed = u64::from(mem == Memory::ThpFallback);
        let mut recovered = 0;
        for k in 0..n {
            let what = format!("{what} alloc #{k}");
            let mut w = world(mem, HandlerMode::Live);
            w.machine.inject.fail_alloc_at(k);
            let r = w.run(mem, op, &Options::default());
            let failed = w.machine.inject.failed_allocs();
            assert!(
                failed == 1 || (pre_failed == 1 && failed <= 2),
                "{what}: {failed} allocations failed"
            );
            match &r {
                Ok(_) => recovered += 1,
                Err(e) => assert!(
                    alloc_errno(op).contains(e) || baseline(mem, op) == Err(*e),
                    "{what}: {e}"
                ),
            }
            sw.record(&r);
            w.check(&what, &r);
        }
        assert_eq!(
            recovered,
            recoverable(mem, op, n),
            "{what}: allocation failures that ended in success"
        );
        sw.points.push((what, n));
    }
    sw
}

/// How many of a scenario's `n` allocation points the kernel recovers
/// from; every other one must end in an errno.
fn recoverable(mem: Memory, op: Op, n: u64) -> u64 {
    match mem {
        // A read fault of an untouched THP extent maps the huge zero page:
        // no allocation at all.
        Memory::Thp | Memory::ThpFallback if matches!(op, Op::Read | Op::ReadUnlocked) => 0,
        // The huge page: the fault falls back to small pages.
        Memory::Thp | Memory::ThpFallback => 1,
        // The handler's UFFDIO_COPY: it wakes the faulter, which asks again.
        Memory::Uffd => n,
        // move_pages' new pages: the old page stays (one per page).
        Memory::Migrate => 16,
        // The concurrent migration's new pages, likewise.
        Memory::MigrationWait => n,
        Memory::Anon | Memory::Hugetlb => 0,
    }
}

/// A fatal signal at every wait point of the faulting task.
fn sweep_signal() -> Sweep {
    let mut sw = Sweep::default();
    for &(mem, op) in SCENARIOS {
        let what = format!("{mem:?}/{op:?}");
        let mut w = world(mem, HandlerMode::Live);
        let r = w.run(mem, op, &Options::default());
        let n = w.task.wait_points();
        w.check(&format!("{what} baseline"), &r);
        for k in 0..n {
            let what = format!("{what} kill at wait #{k}");
            let mut w = world(mem, HandlerMode::Live);
            w.task.kill_at_wait(k);
            let r = w.run(mem, op, &Options::default());
            assert!(w.task.fatal_signal_pending(), "{what}: not delivered");
            let lock_dropping = matches!(op, Op::ReadUnlocked | Op::WriteUnlocked);
            if !lock_dropping {
                // hmm_range_fault and the CPU paths never fail for a
                // signal unless a killable lock must sleep; none does here.
                assert!(same_kind(&r, &baseline(mem, op)), "{what}: {r:?}");
            } else if mem == Memory::MigrationWait || k + 1 == n {
                // An uninterruptible migration wait, or the last wait with
                // no fault after it: the signal may go unnoticed.
                assert!(r.is_ok() || r == Err(Errno::EINTR), "{what}: {r:?}");
            } else {
                // A fault follows the wait: the signal check before it.
                assert_eq!(r.as_ref().err(), Some(&Errno::EINTR), "{what}");
            }
            sw.record(&r);
            w.check(&what, &r);
        }
        sw.points.push((what, n));
    }
    sw
}

/// The userfaultfd handler dies at every page-fault message, closing its
/// descriptor or hanging with it open.
fn sweep_handler_death() -> Sweep {
    let mut sw = Sweep::default();
    for op in [Op::ReadUnlocked, Op::WriteUnlocked] {
        let mem = Memory::Uffd;
        let mut w = world(mem, HandlerMode::Live);
        let r = w.run(mem, op, &Options::default());
        assert!(r.is_ok(), "Uffd/{op:?} baseline: {r:?}");
        let n = w.stop_handler();
        w.check(&format!("Uffd/{op:?} baseline"), &r);
        assert!(n > 0);
        for closing in [true, false] {
            let what = format!(
                "Uffd/{op:?} handler {}",
                if closing { "exits" } else { "hangs" }
            );
            for k in 0..n {
                let mode = if closing {
                    HandlerMode::DiesClosing(k)
                } else {
                    HandlerMode::Hangs(k)
                };
                let what = format!("{what} at message #{k}");
                let mut w = world(mem, mode);
                if !closing {
                    w.machine.inject.set_uffd_wait_bound(Some(UFFD_WAIT_BOUND));
                }
                let r = w.run(mem, op, &opts_for(mode));
                if closing {
                    assert!(r.is_ok(), "{what}: {r:?}");
                } else {
                    assert_eq!(r.as_ref().err(), Some(&Errno::EBUSY), "{what}");
                }
                sw.record(&r);
                w.check(&what, &r);
            }
            sw.points.push((what, n));
        }
    }
    sw
}

/// The OOM reaper with every one of its non-blockable mirror callbacks
/// refused in turn: four VMAs of eight pages, two devices mirroring them.
fn sweep_nonblock() -> Sweep {
    const VMAS: u64 = 4;
    const PAGES: u64 = 8;
    struct Reap {
        machine: Arc<Machine>,
        mm: Arc<Mm>,
        _devs: Vec<Device>,
        mirrors: Vec<Mirror>,
        vmas: Vec<u64>,
        task: Task,
    }
    fn reap_world() -> Reap {
        let machine = Machine::new();
        let mm = Mm::new(&machine);
        let task = Task::new();
        let devs: Vec<Device> = (0..2).map(|_| Device::new(&machine)).collect();
        let mirrors: Vec<Mirror> = devs.iter().map(|d| d.open(&mm)).collect();
        let vmas: Vec<u64> = (0..VMAS)
            .map(|_| {
                let a = mm.mmap_anon(None, PAGES * PAGE_SIZE, RW).unwrap();
                mm.write_bytes(&task, a, &pattern(a, PAGES, PSEED)).unwrap();
                for m in &mirrors {
                    m.read(&task, &mut Cmd::new(a, PAGES)).unwrap();
                }
                a
            })
            .collect();
        Reap {
            machine,
            mm,
            _devs: devs,
            mirrors,
            vmas,
            task,
        }
    }
    let mut sw = Sweep::default();
    let w = reap_world();
    let start = w.machine.inject.nonblock_points();
    assert_eq!(w.mm.oom_reap(&w.task), Ok((VMAS, 0)));
    let n = w.machine.inject.nonblock_points() - start;
    assert_eq!(n, VMAS * 2, "one callback per VMA and mirror");
    for k in 0..n {
        let what = format!("oom_reap refuse callback #{k}");
        let w = reap_world();
        w.machine.inject.refuse_nonblock_at(k);
        assert_eq!(w.mm.oom_reap(&w.task), Ok((VMAS - 1, 1)), "{what}");
        sw.record(&Err(Errno::EAGAIN));
        let skipped = w.vmas[(k / 2) as usize];
        for m in &w.mirrors {
            m.check_coherent(&w.task)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for d in m.entries_in(0, u64::MAX) {
                assert!(w.machine.frames.refcount(d.pfn) > 0, "{what}: {d:x?}");
                assert!(
                    d.addr >= skipped && d.addr < skipped + PAGES * PAGE_SIZE,
                    "{what}: device entry {d:x?} of a reaped VMA"
                );
            }
        }
        // The skipped VMA keeps its pages and data; the others are gone.
        assert_eq!(w.machine.frames.in_use(), PAGES, "{what}");
        let mut buf = vec![0u8; (PAGES * PAGE_SIZE) as usize];
        w.mm.read_bytes(&w.task, skipped, &mut buf).unwrap();
        assert_eq!(buf, pattern(skipped, PAGES, PSEED), "{what}: data lost");
        // The next pass reaps it.
        assert_eq!(w.mm.oom_reap(&w.task), Ok((VMAS, 0)), "{what}");
        assert_eq!(w.machine.frames.in_use(), 0, "{what}: frames leaked");
        for m in &w.mirrors {
            assert_eq!(m.entries(), 0, "{what}");
        }
        let machine = w.machine.clone();
        drop(w);
        assert_eq!(machine.frames.in_use(), 0, "{what}: frames leaked at exit");
    }
    sw.points
        .push(("Anon x4 VMAs, 2 mirrors / oom_reap".into(), n));
    sw
}

fn report(kind: &str, sw: &Sweep) {
    println!("{kind}: {} injection points", sw.total());
    for (what, n) in &sw.points {
        println!("    {what:<48} {n:>4}");
    }
    println!("    outcomes: {:?}", sw.outcomes);
}

/// Every kind of injection, every point; prints the coverage per kind.
#[test]
fn every_injection_point_ends_documented_with_nothing_lost() {
    let (alloc, signal, death, nonblock) = std::thread::scope(|s| {
        let a = s.spawn(sweep_alloc);
        let b = s.spawn(|| (sweep_signal(), sweep_handler_death(), sweep_nonblock()));
        let (sig, death, nb) = b.join().unwrap();
        (a.join().unwrap(), sig, death, nb)
    });
    report("allocation failure", &alloc);
    report("fatal signal at a wait", &signal);
    report("userfaultfd handler death", &death);
    report("refused non-blockable invalidation", &nonblock);
    let totals = [
        ("allocation", alloc.total()),
        ("signal", signal.total()),
        ("handler death", death.total()),
        ("non-blockable refusal", nonblock.total()),
    ];
    println!("injection points covered: {totals:?}");
    for (kind, n) in totals {
        assert!(n > 0, "no {kind} injection point covered");
    }
    // Every documented errno was reached by some injection.
    assert!(alloc.outcomes.contains_key("EFAULT"));
    assert!(alloc.outcomes.contains_key("ENOMEM"));
    assert!(alloc.outcomes.contains_key("ENOENT"));
    assert!(alloc.outcomes.contains_key("ok"), "recovered failures");
    assert!(signal.outcomes.contains_key("EINTR"));
    assert!(death.outcomes.contains_key("EBUSY"));
}
