//! backend-hypervisor guest faults (2 MiB windows) over backend-sim host
//! memory populated with 4 KiB pages or THP.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmm_benches::guest::SimGuest;
use hmm_benches::report;

fn guest(c: &mut Criterion) {
    let len = report::sizes().guest;
    let mut g = c.benchmark_group("guest");
    common::configure(&mut g, 20, 4.0);
    for (case, thp) in [("4k", false), ("thp", true)] {
        let vm = SimGuest::new(len, thp).expect("guest");
        let windows = vm.windows();
        report::record(&format!("windows/guest/window/{case}"), windows as f64);
        g.throughput(Throughput::Elements(windows));
        g.bench_function(BenchmarkId::new("window", case), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for w in 0..windows {
                        black_box(vm.fault_window(w).expect("guest fault"));
                    }
                    total += t.elapsed();
                    vm.zap();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, guest);
criterion_main!(benches);
