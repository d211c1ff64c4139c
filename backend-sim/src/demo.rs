//! The `hmm-sim` main job: mirror a large userfaultfd-backed region into a
//! device while CPU threads keep invalidating it.
//!
//! The scenario is post-copy live migration: the region's contents arrive
//! page by page from a userfaultfd handler thread (with a configurable
//! per-page latency), while a device mirrors the region through hmm-core's
//! lock-dropping entry point and CPU threads zap, swap out, migrate,
//! write-protect and split parts of it. At the end the device page table is
//! checked against the CPU page tables (coherence) and every byte is read
//! back through the device and compared with what the handler supplied
//! (data).
//!
//! [`run`] runs the scenario for a [`Config`] and returns a [`Report`].
//! The command line (`hmm-sim`, in `backend-sim/cli`) is parsed there, so
//! this library carries no CLI dependency.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hmm_core::{Options, Policy, Stats, VmFlags, PAGE_SIZE};

use crate::dmirror::{Cmd, Device};
use crate::inject::SplitMix64;
use crate::mm::Mm;
use crate::storm::{storm_op, StormOp};
use crate::task::Task;
use crate::userfaultfd::{Features, UffdMsg};
use crate::{Errno, Machine};

/// Page sizes backing the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB anonymous pages; the handler resolves one page per fault.
    Small,
    /// THP-eligible anonymous memory (`MADV_HUGEPAGE`); the handler resolves
    /// 2 MiB per fault.
    Thp,
    /// hugetlb with 2 MiB pages; the handler resolves one huge page per
    /// fault (on the lock-dropping path, which the kernel patch excluded).
    Hugetlb,
}

impl PageSize {
    /// The page size's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            PageSize::Small => "4k",
            PageSize::Thp => "thp",
            PageSize::Hugetlb => "hugetlb",
        }
    }
    /// Bytes the handler resolves per fault.
    fn unit(self) -> u64 {
        match self {
            PageSize::Small => PAGE_SIZE,
            PageSize::Thp | PageSize::Hugetlb => 2 << 20,
        }
    }
}

/// The demo's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Resume or restart after a lock drop.
    pub policy: Policy,
    /// Region size in bytes (a multiple of 2 MiB).
    pub size: u64,
    /// Page size.
    pub page_size: PageSize,
    /// Handler latency per 4 KiB page supplied, in microseconds.
    pub latency_us: u64,
    /// Seed of the data pattern and the invalidators' choices.
    pub seed: u64,
    /// CPU invalidator threads.
    pub invalidators: usize,
    /// Device threads faulting windows of the region.
    pub device_threads: usize,
    /// Pages per `range_fault_owning_lock` call (a 2 MiB window by default,
    /// like mshv's fault-in unit).
    pub chunk_pages: u64,
    /// Device windows completed per invalidation, per invalidator thread.
    pub invalidate_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            policy: Policy::Resume,
            size: 1 << 30,
            page_size: PageSize::Small,
            latency_us: 0,
            seed: 1,
            invalidators: 2,
            device_threads: 2,
            chunk_pages: 512,
            invalidate_every: 2,
        }
    }
}

impl Config {
    /// Check the settings: a size that is a non-zero multiple of 2 MiB up
    /// to 16 GiB, at least one device thread, a chunk of 1 to 262144 pages
    /// and a non-zero invalidation period. The error names the
    /// command-line flag.
    pub fn check(&self) -> Result<(), String> {
        let c = self;
        if c.size == 0 || !c.size.is_multiple_of(2 << 20) {
            return Err(format!(
                "--size must be a non-zero multiple of 2M, got {}",
                c.size
            ));
        }
        if c.size > 16 << 30 {
            return Err("--size is limited to 16G".into());
        }
        if c.device_threads == 0 {
            return Err("--device-threads must be at least 1".into());
        }
        if c.chunk_pages == 0 || c.chunk_pages > 1 << 18 {
            return Err("--chunk must be between 1 and 262144 pages".into());
        }
        if c.invalidate_every == 0 {
            return Err("--invalidate-every must be at least 1".into());
        }
        Ok(())
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The configuration.
    pub policy: Option<Policy>,
    /// Page size name.
    pub page_size: &'static str,
    /// Region size in bytes.
    pub size: u64,
    /// Handler latency per page.
    pub latency_us: u64,
    /// Threads.
    pub device_threads: usize,
    /// Invalidator threads.
    pub invalidators: usize,
    /// Seed.
    pub seed: u64,
    /// 4 KiB pages in the region.
    pub pages: u64,
    /// Page-fault messages the handler answered.
    pub uffd_faults: u64,
    /// hmm-core statistics summed over every device call.
    pub stats: Stats,
    /// CPU invalidation operations performed.
    pub invalidations: u64,
    /// Notifier invalidations the mm ran.
    pub notifier_invalidations: u64,
    /// Time until every window was mirrored once (the final re-mirror pass
    /// and the checks are not included).
    pub elapsed: Duration,
    /// Device entries checked against the CPU page tables.
    pub coherent_entries: u64,
    /// Coherence failure, if any.
    pub coherence_error: Option<String>,
    /// Pages whose data read back through the device matched.
    pub data_ok_pages: u64,
    /// First data mismatch, if any.
    pub data_error: Option<String>,
}

impl Report {
    /// Whether both final checks passed.
    pub fn ok(&self) -> bool {
        self.coherence_error.is_none()
            && self.data_error.is_none()
            && self.coherent_entries == self.pages
            && self.data_ok_pages == self.pages
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match self.policy {
            Some(Policy::Restart) => "restart",
            _ => "resume",
        };
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let s = &self.stats;
        writeln!(
            f,
            "hmm-sim: mirrored {} of userfaultfd-backed memory into the device",
            human(self.size)
        )?;
        writeln!(f, "  policy            {policy}")?;
        writeln!(f, "  page size         {}", self.page_size)?;
        writeln!(f, "  handler latency   {} us/page", self.latency_us)?;
        writeln!(
            f,
            "  threads           {} device, {} invalidator; seed {}",
            self.device_threads, self.invalidators, self.seed
        )?;
        writeln!(f, "  pages             {}", self.pages)?;
        writeln!(
            f,
            "  uffd faults       {}  (handler messages answered)",
            self.uffd_faults
        )?;
        writeln!(
            f,
            "  fault calls       {}  ({} retried with TRIED)",
            s.faults, s.tried_faults
        )?;
        writeln!(f, "  lock drops        {}", s.lock_drops)?;
        writeln!(f, "  resumes           {}", s.resumes)?;
        writeln!(f, "  restarts          {}", s.restarts)?;
        writeln!(
            f,
            "  walk work         {} walks, {} entries filled ({:.2} per page)",
            s.walks,
            s.pages_filled,
            s.pages_filled as f64 / self.pages.max(1) as f64
        )?;
        writeln!(
            f,
            "  invalidations     {} CPU operations, {} notifier invalidations",
            self.invalidations, self.notifier_invalidations
        )?;
        writeln!(f, "  elapsed           {:.3} s  (mirroring phase)", secs)?;
        writeln!(
            f,
            "  throughput        {:.0} pages/s ({}/s)",
            self.pages as f64 / secs,
            human((self.size as f64 / secs) as u64)
        )?;
        match &self.coherence_error {
            None if self.coherent_entries == self.pages => writeln!(
                f,
                "  coherence         OK ({} device entries match the CPU page tables)",
                self.coherent_entries
            )?,
            None => writeln!(
                f,
                "  coherence         FAILED ({} of {} pages mapped in the device)",
                self.coherent_entries, self.pages
            )?,
            Some(e) => writeln!(f, "  coherence         FAILED: {e}")?,
        }
        match &self.data_error {
            None if self.data_ok_pages == self.pages => writeln!(
                f,
                "  data              OK ({} read back through the device match the handler's pages)",
                human(self.size)
            ),
            None => writeln!(
                f,
                "  data              FAILED ({} of {} pages matched)",
                self.data_ok_pages, self.pages
            ),
            Some(e) => writeln!(f, "  data              FAILED: {e}"),
        }
    }
}

/// The handler's data: a page whose words derive from address and seed.
fn fill_pattern(buf: &mut [u8], addr: u64, seed: u64) {
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let v = (addr + i as u64 * 8) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// The handler's simulated per-fault latency (the network round trip of a
/// post-copy migration). Short waits spin, because a sleep would last at
/// least the timer slack (tens of microseconds); long ones sleep.
fn wait_latency(d: Duration) {
    if d >= Duration::from_millis(1) {
        std::thread::sleep(d);
        return;
    }
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Progress of the device threads, for the caller's progress display.
#[derive(Debug, Default)]
struct Progress {
    windows_done: Mutex<u64>,
    cv: Condvar,
}

/// Run the demo. `progress(done_pages, total_pages)` is called from the
/// calling thread about ten times a second while the region is mirrored.
pub fn run(cfg: &Config, progress: &mut dyn FnMut(u64, u64)) -> Result<Report, String> {
    let machine = Machine::new();
    let mm = Mm::new(&machine);
    let task = Task::new();
    let size = cfg.size;
    let pages = size / PAGE_SIZE;
    let rw = VmFlags::READ | VmFlags::WRITE;
    let start = match cfg.page_size {
        PageSize::Small => mm.mmap_anon(None, size, rw),
        PageSize::Thp => mm
            .mmap_anon(None, size, rw)
            .and_then(|a| mm.madvise_hugepage(a, size).map(|()| a)),
        PageSize::Hugetlb => mm.mmap_hugetlb(None, size, rw, 9, false),
    }
    .map_err(|e| format!("mmap failed: {e}"))?;
    let end = start + size;
    let uffd = mm.userfaultfd(Features::default());
    uffd.register(start, size, true, false)
        .map_err(|e| format!("UFFDIO_REGISTER failed: {e}"))?;

    // The userfaultfd handler: the post-copy source of every page.
    let unit = cfg.page_size.unit();
    let (seed, latency) = (cfg.seed, cfg.latency_us);
    let handler = {
        let uffd = uffd.clone();
        std::thread::spawn(move || -> Result<u64, Errno> {
            let t = Task::new();
            let mut buf = vec![0u8; unit as usize];
            let mut answered = 0u64;
            while let Some(msg) = uffd.read(&t) {
                let UffdMsg::Pagefault { addr, .. } = msg else {
                    continue;
                };
                let base = addr & !(unit - 1);
                if latency > 0 {
                    wait_latency(Duration::from_micros(latency * (unit / PAGE_SIZE)));
                }
                for (i, p) in buf.chunks_exact_mut(PAGE_SIZE as usize).enumerate() {
                    fill_pattern(p, base + i as u64 * PAGE_SIZE, seed);
                }
                match uffd.copy_fill(&t, base, &buf) {
                    // A pending event or a range unmapped meanwhile: the
                    // faulter was woken and retries.
                    Ok(_) | Err(Errno::EAGAIN) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
                answered += 1;
            }
            Ok(answered)
        })
    };

    let dev = Device::new(&machine);
    let mirror = dev.open(&mm);
    let opts = Options::with_policy(cfg.policy);
    let window = cfg.chunk_pages * PAGE_SIZE;
    let nwindows = size.div_ceil(window);
    let next = AtomicU64::new(0);
    let prog = Progress::default();
    let stop = AtomicBool::new(false);
    let stats = Mutex::new(Stats::default());
    let invalidations = AtomicU64::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;

    std::thread::scope(|s| {
        let mut devs = Vec::new();
        for _ in 0..cfg.device_threads {
            devs.push(s.spawn(|| {
                let t = Task::new();
                let mut st = Stats::default();
                loop {
                    let w = next.fetch_add(1, Ordering::Relaxed);
                    if w >= nwindows {
                        break;
                    }
                    let a = start + w * window;
                    let b = (a + window).min(end);
                    if let Err(e) =
                        mirror.fault_unlocked(&t, a, b, false, cfg.chunk_pages, &opts, &mut st)
                    {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("device fault of [{a:#x}, {b:#x}) failed: {e}"));
                        break;
                    }
                    *prog.windows_done.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    prog.cv.notify_all();
                }
                let mut g = stats.lock().unwrap_or_else(|e| e.into_inner());
                add_stats(&mut g, &st);
            }));
        }
        let mut invs = Vec::new();
        for k in 0..cfg.invalidators {
            let (mm, prog, stop, invalidations, next) = (&mm, &prog, &stop, &invalidations, &next);
            invs.push(s.spawn(move || {
                let t = Task::new();
                let mut rng = SplitMix64::new(cfg.seed ^ (k as u64 + 1).wrapping_mul(0xA5A5_5A5A));
                let ops: &[StormOp] = match cfg.page_size {
                    PageSize::Small => &[
                        StormOp::DontNeed,
                        StormOp::SwapOut,
                        StormOp::Migrate,
                        StormOp::Protect,
                    ],
                    PageSize::Thp => &[
                        StormOp::DontNeed,
                        StormOp::Split,
                        StormOp::Migrate,
                        StormOp::Protect,
                    ],
                    PageSize::Hugetlb => &[StormOp::DontNeed, StormOp::Protect],
                };
                let inv_window: u64 = match cfg.page_size {
                    PageSize::Hugetlb => 2 << 20,
                    _ => 64 * PAGE_SIZE,
                };
                let mut threshold = cfg.invalidate_every;
                loop {
                    {
                        let g = prog.windows_done.lock().unwrap_or_else(|e| e.into_inner());
                        let g = prog
                            .cv
                            .wait_while(g, |d| *d < threshold && !stop.load(Ordering::Relaxed))
                            .unwrap_or_else(|e| e.into_inner());
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        threshold = *g + cfg.invalidate_every;
                    }
                    let handed = next.load(Ordering::Relaxed).min(nwindows).max(1);
                    let span = handed * window / inv_window;
                    let a = start + rng.below(span.max(1)) * inv_window;
                    let b = (a + inv_window).min(end);
                    let op = ops[rng.below(ops.len() as u64) as usize];
                    if storm_op(mm, &t, op, a, b).is_ok() {
                        invalidations.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // Progress display while the device threads run.
        loop {
            // Checked before reading the count, so the last report is final.
            let finished = devs.iter().all(|h| h.is_finished());
            let done = {
                let g = prog.windows_done.lock().unwrap_or_else(|e| e.into_inner());
                if finished {
                    *g
                } else {
                    let (g, _) = prog
                        .cv
                        .wait_timeout(g, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner());
                    *g
                }
            };
            progress((done * cfg.chunk_pages).min(pages), pages);
            if finished {
                break;
            }
        }
        for h in devs {
            let _ = h.join();
        }
        elapsed = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        prog.cv.notify_all();
        for h in invs {
            let _ = h.join();
        }
    });
    if let Some(f) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        uffd.close();
        let _ = handler.join();
        return Err(f);
    }
    let mut stats = stats.into_inner().unwrap_or_else(|e| e.into_inner());

    // Re-mirror what the invalidators took away, then check.
    mirror
        .fault_unlocked(&task, start, end, false, cfg.chunk_pages, &opts, &mut stats)
        .map_err(|e| format!("final device fault failed: {e}"))?;
    let (coherent_entries, coherence_error) = match mirror.check_coherent(&task) {
        Ok(n) => (n, None),
        Err(e) => (0, Some(e)),
    };
    let mut data_ok_pages = 0;
    let mut data_error = None;
    let mut expect = vec![0u8; PAGE_SIZE as usize];
    let mut a = start;
    while a < end && data_error.is_none() {
        let n = (2u64 << 20).min(end - a) / PAGE_SIZE;
        let mut cmd = Cmd::new(a, n);
        if let Err(e) = mirror.read_unlocked(&task, &mut cmd, &opts, &mut Stats::default()) {
            data_error = Some(format!("device read at {a:#x} failed: {e}"));
            break;
        }
        for (i, got) in cmd.buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
            let pa = a + i as u64 * PAGE_SIZE;
            fill_pattern(&mut expect, pa, cfg.seed);
            if got != &expect[..] {
                data_error = Some(format!("page {pa:#x} read through the device differs"));
                break;
            }
            data_ok_pages += 1;
        }
        a += n * PAGE_SIZE;
    }
    uffd.close();
    let uffd_faults = handler
        .join()
        .map_err(|_| "handler thread panicked".to_string())?
        .map_err(|e| format!("UFFDIO_COPY failed: {e}"))?;
    Ok(Report {
        policy: Some(cfg.policy),
        page_size: cfg.page_size.name(),
        size,
        latency_us: cfg.latency_us,
        device_threads: cfg.device_threads,
        invalidators: cfg.invalidators,
        seed: cfg.seed,
        pages,
        uffd_faults,
        stats,
        invalidations: invalidations.load(Ordering::Relaxed),
        notifier_invalidations: mm.notifiers().invalidations(),
        elapsed,
        coherent_entries,
        coherence_error,
        data_ok_pages,
        data_error,
    })
}

fn add_stats(a: &mut Stats, b: &Stats) {
    a.walks += b.walks;
    a.pages_filled += b.pages_filled;
    a.leaves += b.leaves;
    a.faults += b.faults;
    a.tried_faults += b.tried_faults;
    a.lock_drops += b.lock_drops;
    a.resumes += b.resumes;
    a.restarts += b.restarts;
    a.migration_waits += b.migration_waits;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_bad_setting() {
        assert_eq!(Config::default().check(), Ok(()));
        let bad = |c: Config, needle: &str| {
            let e = c.check().unwrap_err();
            assert!(e.contains(needle), "{c:?}: {e}");
        };
        let d = Config::default;
        bad(
            Config {
                size: 3 << 20,
                ..d()
            },
            "multiple of 2M",
        );
        bad(Config { size: 0, ..d() }, "multiple of 2M");
        bad(
            Config {
                size: 32 << 30,
                ..d()
            },
            "16G",
        );
        bad(
            Config {
                device_threads: 0,
                ..d()
            },
            "--device-threads",
        );
        bad(
            Config {
                chunk_pages: 0,
                ..d()
            },
            "--chunk",
        );
        bad(
            Config {
                invalidate_every: 0,
                ..d()
            },
            "--invalidate-every",
        );
    }

    #[test]
    fn small_runs_pass_their_checks() {
        for page_size in [PageSize::Small, PageSize::Thp, PageSize::Hugetlb] {
            for policy in [Policy::Resume, Policy::Restart] {
                let cfg = Config {
                    size: 8 << 20,
                    page_size,
                    policy,
                    chunk_pages: 128,
                    invalidate_every: 1,
                    ..Config::default()
                };
                let r = run(&cfg, &mut |_, _| {}).unwrap();
                assert!(r.ok(), "{page_size:?} {policy:?}:\n{r}");
                assert_eq!(r.pages, 2048);
                assert!(r.stats.lock_drops > 0);
                if policy == Policy::Resume {
                    assert!(r.stats.resumes > 0);
                }
            }
        }
    }
}
