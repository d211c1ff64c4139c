//! Contended device faults: successful faults per second and retries per
//! success while a CPU thread invalidates at a fixed rate.

mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Instant;

use backend_sim::inject::SplitMix64;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hmm_benches::contended::{Device, Invalidator};
use hmm_benches::report;
use hmm_benches::sim::{Layout, SimRange};

fn contended(c: &mut Criterion) {
    let sizes = report::sizes();
    let machine = backend_sim::Machine::new();
    let r = SimRange::build(&machine, Layout::Small, sizes.contended).expect("range");
    let mut g = c.benchmark_group("contended");
    common::configure(&mut g, 30, 4.0);
    for &rate in &sizes.rates {
        let dev = Device::new(&r.mm, r.start, r.len);
        let chunks = dev.chunks();
        let mut rng = SplitMix64::new(rate ^ 0x5eed);
        let inv = Invalidator::start(&r.mm, r.start, r.len, rate, rate + 1);
        g.bench_function(BenchmarkId::new("fault", rate), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    dev.fault(black_box(rng.below(chunks)))
                        .expect("device fault");
                }
                t.elapsed()
            })
        });
        let (_, achieved) = inv.stop();
        let ok = dev.successes.load(Ordering::Relaxed).max(1) as f64;
        let retries = dev.retries.load(Ordering::Relaxed) as f64;
        report::record(&format!("contended/achieved/{rate}"), achieved);
        report::record(
            &format!("contended/retries_per_success/{rate}"),
            retries / ok,
        );
        dev.check_coherent().expect("device coherent with the CPU");
    }
    g.finish();
}

criterion_group!(benches, contended);
criterion_main!(benches);
