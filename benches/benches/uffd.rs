//! userfaultfd-backed fault-in with a handler thread at several sizes,
//! resume vs restart, the walker's share of the round trip, and the real
//! userfaultfd round trip of this machine beside each size.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmm_benches::report;
use hmm_benches::uffd::real::RealUffd;
use hmm_benches::uffd::UffdRange;
use hmm_core::{Policy, PAGE_SIZE};

fn uffd(c: &mut Criterion) {
    let sizes = report::sizes();
    let machine = backend_sim::Machine::new();
    let mut g = c.benchmark_group("uffd");
    // One fault-in at 1 GiB takes seconds: the fewest samples criterion
    // allows, and let it stretch the measurement time as it needs.
    common::configure(&mut g, 10, 5.0);
    // Sizes outer, so that the simulated and the real round trip of one
    // size are measured one right after the other.
    for &len in &sizes.uffd {
        let mib = len >> 20;
        let pages = (len / PAGE_SIZE) as usize;
        let mut pfns = vec![0u64; pages];
        g.throughput(Throughput::Elements(pages as u64));
        for (policy, name) in [(Policy::Resume, "resume"), (Policy::Restart, "restart")] {
            if policy == Policy::Restart && !sizes.restart.contains(&len) {
                continue;
            }
            common::pages(&format!("uffd/{name}/{mib}"), pages);
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
                walker_share(&machine, len, &mut pfns);
                real(&mut g, len);
            }
        }
    }
    g.finish();
}

/// The walker's share of the simulated round trip, measured in an
/// instrumented run of `len` bytes.
fn walker_share(machine: &std::sync::Arc<backend_sim::Machine>, len: u64, pfns: &mut [u64]) {
    let mib = len >> 20;
    let r = UffdRange::new(machine, len).expect("uffd range");
    let out = r.fault_in_timed(Policy::Resume, pfns).expect("fault-in");
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

/// The baseline: the same number of pages of real memory registered with
/// this machine's userfaultfd, first-touched by this thread while a handler
/// thread answers with `UFFDIO_COPY` (`uffd/real/<MiB>`). If the host
/// refuses a userfaultfd, records the errno as `uffd/real_unavailable`.
fn real<M: criterion::measurement::Measurement<Value = Duration>>(
    g: &mut criterion::BenchmarkGroup<'_, M>,
    len: u64,
) {
    let mib = len >> 20;
    match RealUffd::new(len as usize) {
        Ok(probe) => {
            report::record(
                &format!("uffd/real_opened/{mib}"),
                probe.opened as u8 as f64,
            );
            drop(probe);
        }
        Err(e) => {
            eprintln!("uffd/real/{mib}: no userfaultfd on this host: {e}");
            report::record(
                "uffd/real_unavailable",
                f64::from(e.raw_os_error().unwrap_or(0)),
            );
            return;
        }
    }
    common::pages(&format!("uffd/real/{mib}"), (len / PAGE_SIZE) as usize);
    g.bench_function(BenchmarkId::new("real", mib), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = RealUffd::new(len as usize).expect("real uffd");
                let (t, sum) = r.touch_all();
                black_box(sum);
                total += t;
                let copied = r.finish().expect("handler");
                assert_eq!(copied, len / PAGE_SIZE, "every page copied by the handler");
            }
            total
        })
    });
}

criterion_group!(benches, uffd);
criterion_main!(benches);
