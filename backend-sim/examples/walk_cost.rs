//! Cost per page of a snapshot walk over populated 4 KiB pages, through
//! the simulator's page-table reader and hmm-core's walker.
//!
//! `cargo run --release -p backend-sim --example walk_cost [MiB] [scattered]`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Instant;

use backend_sim::{mm::Mm, task::Task, Machine};
use hmm_core::{range_fault, Env, MmView, MmapLock, Range, Stats, VmFlags, PAGE_SIZE};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    let pages = size / PAGE_SIZE;
    let machine = Machine::new();
    let mm = Mm::new(&machine);
    let task = Task::new();
    let a = mm
        .mmap_anon(None, size, VmFlags::READ | VmFlags::WRITE)
        .unwrap();
    // `scattered`: touch the pages backwards, so neighbouring PTEs map
    // descending frames and no PTE run forms (every PTE is its own span).
    if std::env::args().nth(2).as_deref() == Some("scattered") {
        for p in (0..pages).rev() {
            mm.touch(&task, a + p * PAGE_SIZE, PAGE_SIZE, true).unwrap();
        }
    } else {
        mm.touch(&task, a, size, true).unwrap();
    }
    let h = mm.handle(&task);
    let sub = mm.notifiers().insert(a, a + size, Box::new(NoOps));

    // The raw leaf reader.
    let g = h.read();
    let vma = g.find_vma(a).unwrap();
    let iters = 20;
    let t = Instant::now();
    let (mut n, mut spans) = (0u64, 0u64);
    for _ in 0..iters {
        g.walk_leaves(&vma, a, a + size, |s, e, leaf| {
            black_box(leaf);
            n += (e - s) / PAGE_SIZE;
            spans += 1;
            ControlFlow::Continue(())
        });
    }
    let raw = t.elapsed().as_nanos() as f64 / (iters * pages) as f64;
    assert_eq!(n, iters * pages);
    drop(g);

    // A full snapshot through hmm-core's range_fault (the kernel entry point).
    let mut pfns = vec![0u64; pages as usize];
    let env = Env::new(&h, &h);
    let t = Instant::now();
    for _ in 0..iters {
        let mut r = Range::new(a, a + size, &mut pfns).with_notifier(&*sub);
        let out = range_fault(&env, &mut r, h.read(), &mut Stats::default());
        out.result.unwrap();
    }
    let snap = t.elapsed().as_nanos() as f64 / (iters * pages) as f64;
    println!("{mib} MiB of populated 4 KiB pages ({pages} pages):");
    println!(
        "  walk_leaves          {raw:.2} ns/page ({} pages per span)",
        n / spans.max(1)
    );
    println!("  range_fault snapshot {snap:.2} ns/page");
}

struct NoOps;
impl backend_sim::notifier::IntervalOps for NoOps {
    fn invalidate(
        &self,
        sub: &backend_sim::notifier::IntervalSub,
        _: &backend_sim::notifier::InvalidateRange,
        cur: u64,
    ) -> bool {
        sub.set_seq(cur);
        true
    }
}
