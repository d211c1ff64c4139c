//! Fault-in of a fresh anonymous range, read and write, 4 KiB and THP:
//! hmm-core's `range_fault` over backend-sim beside the kernel's first-touch
//! page faults on real memory of the same size.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmm_benches::baseline::{Backing, Region, PAGE};
use hmm_benches::fault::FreshRange;
use hmm_benches::report;

fn fault(c: &mut Criterion) {
    let len = report::sizes().fault;
    let pages = (len / PAGE as u64) as usize;
    let machine = backend_sim::Machine::new();
    let mut g = c.benchmark_group("fault");
    common::configure(&mut g, 10, 4.0);
    g.throughput(Throughput::Elements(pages as u64));
    let mut pfns = vec![0u64; pages];
    for (case, thp, write) in [
        ("read-4k", false, false),
        ("write-4k", false, true),
        ("read-thp", true, false),
        ("write-thp", true, true),
    ] {
        common::pages(&format!("fault/sim/{case}"), pages);
        common::pages(&format!("fault/kernel/{case}"), pages);
        g.bench_function(BenchmarkId::new("sim", case), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = FreshRange::map(&machine, len, thp).expect("map");
                    let t = Instant::now();
                    black_box(r.fault_in(write, &mut pfns).expect("fault-in"));
                    total += t.elapsed();
                    // Unmapping (dropping the process) is not timed.
                    drop(r);
                }
                total
            })
        });
        let backing = if thp { Backing::Thp } else { Backing::Small };
        g.bench_function(BenchmarkId::new("kernel", case), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = Region::mapped(len as usize, backing).expect("mmap");
                    let t = Instant::now();
                    black_box(r.touch(PAGE, write));
                    total += t.elapsed();
                    drop(r);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fault);
criterion_main!(benches);
