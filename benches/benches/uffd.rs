//! userfaultfd-backed fault-in with a handler thread at several sizes,
//! resume vs restart, and the walker's share of the round trip.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmm_benches::report;
use hmm_benches::uffd::UffdRange;
use hmm_core::{Policy, PAGE_SIZE};

fn uffd(c: &mut Criterion) {
    let sizes = report::sizes();
    let machine = backend_sim::Machine::new();
    let mut g = c.benchmark_group("uffd");
    // One fault-in at 1 GiB takes seconds: the fewest samples criterion
    // allows, and let it stretch the measurement time as it needs.
    common::configure(&mut g, 10, 5.0);
    for (policy, name, list) in [
        (Policy::Resume, "resume", &sizes.uffd),
        (Policy::Restart, "restart", &sizes.restart),
    ] {
        for &len in list {
            let mib = len >> 20;
            let pages = (len / PAGE_SIZE) as usize;
            let mut pfns = vec![0u64; pages];
            common::pages(&format!("uffd/{name}/{mib}"), pages);
            g.throughput(Throughput::Elements(pages as u64));
            g.bench_function(BenchmarkId::new(name, mib), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let r = UffdRange::new(&machine, len).expect("uffd range");
                        let t = Instant::now();
                        black_box(r.fault_in(policy, &mut pfns).expect("fault-in"));
                        total += t.elapsed();
                        r.finish().expect("handler");
                    }
                    total
                })
            });
            if policy == Policy::Resume {
                // The walker's share, measured in an instrumented run.
                let r = UffdRange::new(&machine, len).expect("uffd range");
                let out = r.fault_in_timed(policy, &mut pfns).expect("fault-in");
                r.finish().expect("handler");
                let total = out.elapsed.as_nanos() as f64;
                let walk = out.walk.as_nanos() as f64;
                report::record(&format!("uffd/walk_share/{mib}"), walk / total);
                report::record(
                    &format!("uffd/walk_ns_per_pass/{mib}"),
                    walk / out.timed_walks.max(1) as f64,
                );
                report::record(
                    &format!("uffd/walk_ns_median/{mib}"),
                    out.walk_median.as_nanos() as f64,
                );
                report::record(&format!("uffd/walk_passes/{mib}"), out.timed_walks as f64);
                report::record(
                    &format!("uffd/round_trip_ns/{mib}"),
                    (total - walk) / out.stats.lock_drops.max(1) as f64,
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, uffd);
criterion_main!(benches);
