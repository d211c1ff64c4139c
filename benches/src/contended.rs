//! Contended device faults: a device faults chunks of a range in with the
//! kernel driver's retry pattern while a CPU thread invalidates windows of
//! the same range at a fixed rate.
//!
//! The device ([`Device`]) keeps its own page table under an update lock;
//! its interval notifier covers the whole range (as `test_hmm.c` covers
//! the whole address space), and its invalidate callback takes the update
//! lock, moves the sequence and erases the entries of the invalidated
//! range. A device fault ([`Device::fault`]) is the caller pattern of
//! `hmm_range_fault`: `read_begin`; mmap read lock; [`range_fault`]; unlock;
//! start over on `-EBUSY`; take the update lock; start over if
//! `read_retry`; program. Every start-over is counted as a retry.
//!
//! The [`Invalidator`] runs `MADV_DONTNEED` on random 64-page windows at a
//! fixed rate (pacing by deadline, so the achieved rate is reported, not
//! assumed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backend_sim::inject::SplitMix64;
use backend_sim::mm::Mm;
use backend_sim::notifier::{IntervalOps, IntervalSub, InvalidateRange};
use backend_sim::task::Task;
use hmm_core::{
    range_fault, Env, Error, HmmPfn, IntervalNotifier, PfnFlags, Range, Stats, PAGE_SHIFT,
    PAGE_SIZE,
};

/// Pages per device fault and per invalidated window.
pub const CHUNK_PAGES: u64 = 64;

struct DevOps {
    start: u64,
    pt: Arc<Mutex<Vec<u64>>>,
}

impl IntervalOps for DevOps {
    fn invalidate(&self, sub: &IntervalSub, range: &InvalidateRange, cur_seq: u64) -> bool {
        let mut pt = if range.blockable {
            self.pt.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            match self.pt.try_lock() {
                Ok(g) => g,
                Err(_) => return false,
            }
        };
        sub.set_seq(cur_seq);
        let n = pt.len() as u64;
        let a = (range.start.max(self.start) - self.start) >> PAGE_SHIFT;
        let b = ((range.end.max(self.start) - self.start) >> PAGE_SHIFT).min(n);
        for e in pt.iter_mut().take(b as usize).skip(a as usize) {
            *e = 0;
        }
        true
    }
}

/// A device mirroring `[start, start + len)` of one mm.
pub struct Device {
    mm: Arc<Mm>,
    task: Task,
    start: u64,
    len: u64,
    pt: Arc<Mutex<Vec<u64>>>,
    sub: Arc<IntervalSub>,
    /// Device faults that programmed the device.
    pub successes: AtomicU64,
    /// Start-overs: `-EBUSY` from the range fault or a failed `read_retry`.
    pub retries: AtomicU64,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.sub.remove();
    }
}

impl Device {
    /// A device over `[start, start + len)` of `mm`.
    pub fn new(mm: &Arc<Mm>, start: u64, len: u64) -> Device {
        let pt = Arc::new(Mutex::new(vec![0u64; (len / PAGE_SIZE) as usize]));
        let sub = mm.notifiers().insert(
            start,
            start + len,
            Box::new(DevOps {
                start,
                pt: pt.clone(),
            }),
        );
        Device {
            mm: mm.clone(),
            task: Task::new(),
            start,
            len,
            pt,
            sub,
            successes: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Number of [`CHUNK_PAGES`] chunks in the range.
    pub fn chunks(&self) -> u64 {
        self.len / (CHUNK_PAGES * PAGE_SIZE)
    }

    /// Fault chunk `i` into the device for write, retrying until it is
    /// programmed.
    pub fn fault(&self, i: u64) -> Result<(), Error> {
        let a = self.start + i * CHUNK_PAGES * PAGE_SIZE;
        let b = a + CHUNK_PAGES * PAGE_SIZE;
        let h = self.mm.handle(&self.task);
        let env = Env::new(&h, &h);
        let mut pfns = [0u64; CHUNK_PAGES as usize];
        let flags = (PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits();
        loop {
            let mut range = Range::new(a, b, &mut pfns)
                .with_default_flags(flags)
                .with_notifier(&*self.sub);
            range.notifier_seq = self.sub.read_begin();
            let g = self.mm.read(&self.task);
            let out = range_fault(&env, &mut range, g, &mut Stats::default());
            drop(out.guard);
            match out.result {
                Err(Error::Busy) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let mut pt = self.pt.lock().unwrap_or_else(|e| e.into_inner());
            if self.sub.read_retry(range.notifier_seq) {
                self.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let first = ((a - self.start) >> PAGE_SHIFT) as usize;
            for (e, &p) in pt[first..].iter_mut().zip(range.pfns.iter()) {
                *e = p;
            }
            self.successes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }

    /// The device entry of page `i` (0 if not mapped).
    pub fn entry(&self, i: usize) -> u64 {
        self.pt.lock().unwrap_or_else(|e| e.into_inner())[i]
    }

    /// Every device entry agrees with the CPU page table (valid entries
    /// map the PFN the CPU maps). Returns the number of valid entries.
    pub fn check_coherent(&self) -> Result<u64, String> {
        let pt = self.pt.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (i, &e) in pt.iter().enumerate() {
            if HmmPfn(e).is_valid() {
                let addr = self.start + i as u64 * PAGE_SIZE;
                let (_, cpu) = self.mm.pte_at(addr);
                if cpu != Some(HmmPfn(e).pfn()) {
                    return Err(format!("page {addr:#x}: device {e:#x}, cpu {cpu:?}"));
                }
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A CPU thread zapping random [`CHUNK_PAGES`] windows at a fixed rate.
pub struct Invalidator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
    started: Instant,
}

impl Invalidator {
    /// Start zapping windows of `[start, start + len)` of `mm` at `rate`
    /// per second (0: never).
    pub fn start(mm: &Arc<Mm>, start: u64, len: u64, rate: u64, seed: u64) -> Invalidator {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (rate > 0).then(|| {
            let (mm, stop) = (mm.clone(), stop.clone());
            std::thread::spawn(move || {
                let task = Task::new();
                let mut rng = SplitMix64::new(seed);
                let windows = (len / (CHUNK_PAGES * PAGE_SIZE)).max(1);
                let period = Duration::from_nanos(1_000_000_000 / rate);
                let t0 = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = t0 + period * u32::try_from(n).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if now < due {
                        std::thread::sleep(due - now);
                        continue;
                    }
                    let a = start + rng.below(windows) * CHUNK_PAGES * PAGE_SIZE;
                    let _ = mm.madvise_dontneed(&task, a, CHUNK_PAGES * PAGE_SIZE);
                    n += 1;
                }
                n
            })
        });
        Invalidator {
            stop,
            thread,
            started: Instant::now(),
        }
    }

    /// Stop; returns the invalidations done and the achieved rate per
    /// second.
    pub fn stop(mut self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let n = self.thread.take().map_or(0, |t| t.join().unwrap_or(0));
        (n, n as f64 / secs.max(1e-9))
    }
}

impl Drop for Invalidator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::RW;
    use backend_sim::Machine;

    #[test]
    fn device_stays_coherent_under_invalidation() {
        let m = Machine::new();
        let mm = Mm::new(&m);
        let len = 2 << 20;
        let start = mm.mmap_anon(None, len, RW).expect("mmap");
        let dev = Device::new(&mm, start, len);
        let inv = Invalidator::start(&mm, start, len, 20_000, 7);
        for i in 0..200 {
            dev.fault(i % dev.chunks()).expect("fault");
        }
        inv.stop();
        assert_eq!(dev.successes.load(Ordering::Relaxed), 200);
        dev.check_coherent().expect("coherent");
        for i in 0..dev.chunks() {
            dev.fault(i).expect("fault");
        }
        let valid = dev.check_coherent().expect("coherent");
        assert_eq!(valid, len / PAGE_SIZE);
    }
}
