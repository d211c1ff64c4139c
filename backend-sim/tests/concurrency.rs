//! Many device threads faulting overlapping ranges while CPU threads
//! invalidate: after every successful device fault, every device entry
//! equals the CPU mapping (coherence) and the bytes read through the device
//! are the expected ones. Real threads, real locks, deterministic seeds.
//!
//! `HMM_SIM_STRESS_ITERS` sets the faults per device thread (default 40).

mod common;

use std::sync::Arc;
use std::thread::JoinHandle;

use backend_sim::dmirror::Cmd;
use backend_sim::inject::SplitMix64;
use backend_sim::storm::{Pace, Storm, StormOp};
use backend_sim::task::Task;
use backend_sim::userfaultfd::Features;
use common::*;
use hmm_core::{Options, Policy, Stats, PAGE_SIZE};

fn iters() -> u64 {
    std::env::var("HMM_SIM_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

fn check_window(h: &Hmm, t: &Task, a: u64, n: u64, seed: u64) {
    let n_checked = h.fd.check_coherent(t).unwrap_or_else(|e| panic!("{e}"));
    assert!(n_checked > 0 || n == 0);
    let mut cmd = Cmd::new(a, n);
    // Read through the device; it may refault what was invalidated since.
    h.fd.read_unlocked(t, &mut cmd, &Options::default(), &mut Stats::default())
        .unwrap();
    for (i, p) in cmd.buf.chunks_exact(PAGE_SIZE as usize).enumerate() {
        let pa = a + i as u64 * PAGE_SIZE;
        assert!(p == &pattern_page(pa, seed)[..], "data at {pa:#x}");
    }
}

/// Start `ops` over `[p, p + size)` in `window`-byte windows from two CPU
/// threads, paced at one operation per completed device fault
/// ([`Pace::tick`]): always concurrent with the other device threads'
/// faults, never starving them.
fn paced_storm(
    h: &Hmm,
    p: u64,
    size: u64,
    window: u64,
    ops: &[StormOp],
    seed: u64,
) -> (Arc<Pace>, Storm) {
    let pace = Pace::new();
    let storm = Storm::start(&h.mm, p, p + size, window, ops, 2, seed, Some(pace.clone()));
    (pace, storm)
}

/// Spawn `n` device threads; thread `d` runs `dev(h, pace, task, d)` with a
/// task of its own.
fn spawn_devices<R: Send + 'static>(
    h: &Arc<Hmm>,
    pace: &Arc<Pace>,
    n: u64,
    dev: impl Fn(&Hmm, &Pace, &Task, u64) -> R + Clone + Send + 'static,
) -> Vec<JoinHandle<R>> {
    (0..n)
        .map(|d| {
            let (h, pace, dev) = (h.clone(), pace.clone(), dev.clone());
            std::thread::spawn(move || dev(&h, &pace, &Task::new(), d))
        })
        .collect()
}

fn stress(thp: bool, policy: Policy, seed: u64) {
    let h = Arc::new(Hmm::new());
    let size = 8 * TWOMEG;
    let p = h.mm.mmap_anon(None, size, RW).unwrap();
    if thp {
        h.mm.madvise_hugepage(p, size).unwrap();
    }
    let uffd = h.mm.userfaultfd(Features::default());
    uffd.register(p, size, true, false).unwrap();
    let unit = if thp { TWOMEG } else { PAGE_SIZE };
    let handler = Handler::spawn(&uffd, unit, move |a| pattern_page(a, seed));
    let ops = [
        StormOp::DontNeed,
        StormOp::SwapOut,
        StormOp::Migrate,
        StormOp::Protect,
        StormOp::Split,
    ];
    let (pace, storm) = paced_storm(&h, p, size, 16 * PAGE_SIZE, &ops, seed);
    let devs = spawn_devices(&h, &pace, 3, move |h, pace, t, d| {
        let mut rng = SplitMix64::new(seed.wrapping_mul(31) + d);
        let mut ok = 0;
        for _ in 0..iters() {
            // Overlapping windows of 1..=256 pages anywhere.
            let pages = size / PAGE_SIZE;
            let n = 1 + rng.below(256);
            let first = rng.below(pages - n + 1);
            let a = p + first * PAGE_SIZE;
            let chunk = 1 + rng.below(128);
            let write = rng.below(4) == 0;
            let r = h.fd.fault_unlocked(
                t,
                a,
                a + n * PAGE_SIZE,
                write,
                chunk,
                &Options::with_policy(policy),
                &mut Stats::default(),
            );
            pace.tick();
            match r {
                Ok(()) => {
                    ok += 1;
                    if !write {
                        check_window(h, t, a, n, seed);
                    } else {
                        h.fd.check_coherent(t).unwrap_or_else(|e| panic!("{e}"));
                    }
                }
                // A write fault racing with mprotect(PROT_READ).
                Err(e) => assert_eq!(e, backend_sim::Errno::EPERM),
            }
        }
        ok
    });
    let ok: u64 = devs.into_iter().map(|d| d.join().unwrap()).sum();
    let ops_done = storm.stop();
    assert!(ok > 0);
    assert!(ops_done > 0);
    // Quiet now: mirror everything and check the whole region.
    let t = Task::new();
    h.fd.fault_unlocked(
        &t,
        p,
        p + size,
        false,
        512,
        &Options::default(),
        &mut Stats::default(),
    )
    .unwrap();
    assert_eq!(h.fd.check_coherent(&t), Ok(size / PAGE_SIZE));
    check_window(&h, &t, p, size / PAGE_SIZE, seed);
    handler.stop(&uffd);
}

#[test]
fn device_threads_vs_invalidators_small_pages_resume() {
    stress(false, Policy::Resume, 1);
}

#[test]
fn device_threads_vs_invalidators_thp_resume() {
    stress(true, Policy::Resume, 2);
}

#[test]
fn device_threads_vs_invalidators_small_pages_restart() {
    stress(false, Policy::Restart, 3);
}

/// The kernel entry point (no lock drops) on plain anonymous memory under
/// the same storm: every successful READ is coherent and the data is intact.
#[test]
fn kernel_entry_point_under_invalidation_storm() {
    let h = Arc::new(Hmm::new());
    let size = 4 * TWOMEG;
    let p = h.mm.mmap_anon(None, size, RW).unwrap();
    h.mm.madvise_hugepage(p, size).unwrap();
    let ints = (size / 4) as usize;
    h.fill(p, ints, |i| i ^ 0x5a5a);
    let ops = [
        StormOp::SwapOut,
        StormOp::Migrate,
        StormOp::Protect,
        StormOp::Split,
    ];
    let (pace, storm) = paced_storm(&h, p, size, 32 * PAGE_SIZE, &ops, 9);
    let devs = spawn_devices(&h, &pace, 2, move |h, pace, t, d| {
        let mut rng = SplitMix64::new(100 + d);
        for _ in 0..iters() {
            let n = 1 + rng.below(128);
            let first = rng.below(size / PAGE_SIZE - n + 1);
            let a = p + first * PAGE_SIZE;
            let mut cmd = Cmd::new(a, n);
            pace.tick();
            match h.fd.read(t, &mut cmd) {
                Ok(()) => {
                    h.fd.check_coherent(t).unwrap_or_else(|e| panic!("{e}"));
                    let off = (first * PAGE_SIZE / 4) as i32;
                    let want: Vec<i32> = (0..(n * PAGE_SIZE / 4) as i32)
                        .map(|i| (i + off) ^ 0x5a5a)
                        .collect();
                    assert_eq!(cmd.i32s(), want);
                }
                // The kernel path gives up after its 1000 ms budget.
                // -EBUSY: a page could not be taken; -ENOENT: the CPU revoked
                // exclusivity before the read-back (test_hmm's do_read).
                Err(e) => assert!(
                    matches!(e, backend_sim::Errno::EBUSY | backend_sim::Errno::ENOENT),
                    "{e}"
                ),
            }
        }
    });
    for d in devs {
        d.join().unwrap();
    }
    storm.stop();
    let t = Task::new();
    assert_eq!(h.ints(p, ints), iota(ints, |i| i ^ 0x5a5a));
    let _ = t;
}

/// Device-exclusive access taken over and over while a CPU thread keeps
/// writing the same pages: every successful EXCLUSIVE leaves a coherent
/// device page table, and no CPU write is lost.
#[test]
fn exclusive_vs_cpu_writes() {
    let h = Arc::new(Hmm::new());
    let n = 16u64;
    let ints = (n * PAGE_SIZE / 4) as usize;
    let p = h.mm.mmap_anon(None, n * PAGE_SIZE, RW).unwrap();
    h.fill(p, ints, |i| i);
    let rounds = iters() as i32;
    let cpu = {
        let h = h.clone();
        std::thread::spawn(move || {
            let t = Task::new();
            for _ in 0..rounds {
                let v = h.mm.read_i32s(&t, p, ints).unwrap();
                let inc: Vec<i32> = v.iter().map(|x| x + 1).collect();
                h.mm.write_i32s(&t, p, &inc).unwrap();
            }
        })
    };
    let t = Task::new();
    let mut ok = 0;
    while ok == 0 || !cpu.is_finished() {
        let mut cmd = Cmd::new(p, n);
        match h.fd.exclusive(&t, &mut cmd) {
            Ok(()) => {
                ok += 1;
                h.fd.check_coherent(&t).unwrap_or_else(|e| panic!("{e}"));
            }
            // -EBUSY: a page could not be taken; -ENOENT: the CPU revoked
            // exclusivity before the read-back (test_hmm's do_read).
            Err(e) => assert!(
                matches!(e, backend_sim::Errno::EBUSY | backend_sim::Errno::ENOENT),
                "{e}"
            ),
        }
    }
    cpu.join().unwrap();
    assert_eq!(h.ints(p, ints), iota(ints, |i| i + rounds));
    let mut cmd = Cmd::new(p, n);
    h.fd.exclusive(&t, &mut cmd).unwrap();
    assert_eq!(cmd.i32s(), iota(ints, |i| i + rounds));
}
