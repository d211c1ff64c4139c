//! Snapshot walks (no faults) of populated ranges: hmm-core over
//! backend-sim beside the kernel's own walkers on real memory of the same
//! size, in one criterion group.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmm_benches::baseline::{self, Backing, PageRegion, Pagemap, Region, PAGE};
use hmm_benches::report;
use hmm_benches::sim::{Layout, SimRange};

const HUGE_1G: u64 = 1 << 30;

fn sim_benches(c: &mut Criterion, len: u64) {
    let machine = backend_sim::Machine::new();
    let mut g = c.benchmark_group("walk");
    common::configure(&mut g, 20, 3.0);
    for layout in Layout::ALL {
        let len = if layout == Layout::Huge1G {
            HUGE_1G
        } else {
            len
        };
        let r = SimRange::build(&machine, layout, len).expect("sim range");
        let mut pfns = vec![0u64; r.pages()];
        g.throughput(Throughput::Elements(r.pages() as u64));
        let n = layout.name();
        common::pages(&format!("walk/sim-walk/{n}"), r.pages());
        common::pages(&format!("walk/sim-range_fault/{n}"), r.pages());
        g.bench_function(BenchmarkId::new("sim-walk", n), |b| {
            b.iter(|| black_box(r.walk_snapshot(black_box(&mut pfns)).expect("walk")))
        });
        if layout == Layout::Small {
            // The favourable path: PTE runs of consecutive frames.
            common::pages(&format!("walk/sim-walk-runs/{n}"), r.pages());
            g.bench_function(BenchmarkId::new("sim-walk-runs", n), |b| {
                b.iter(|| black_box(r.walk_snapshot_runs(black_box(&mut pfns)).expect("walk")))
            });
        }
        g.bench_function(BenchmarkId::new("sim-range_fault", n), |b| {
            b.iter(|| {
                black_box(
                    r.range_fault_snapshot(black_box(&mut pfns))
                        .expect("range_fault"),
                )
            })
        });
    }
    g.finish();
}

/// A real region of `layout` (1 GiB leaves are not available: no hugetlb
/// pages are reserved).
fn real_region(layout: Layout, len: usize) -> Option<Region> {
    let r = match layout {
        Layout::Small | Layout::Scattered => Region::populated(len, Backing::Small),
        Layout::Thp => Region::populated(len, Backing::Thp),
        Layout::Huge1G => return None,
        Layout::Holes => Region::mapped(len, Backing::Small),
        Layout::Zapped => Region::populated(len, Backing::Small).and_then(|r| {
            r.dontneed()?;
            Ok(r)
        }),
        Layout::Sparse => Region::mapped(len, Backing::Small).inspect(|r| {
            r.touch(2 << 20, true);
        }),
    };
    Some(r.expect("real region"))
}

fn kernel_benches(c: &mut Criterion, len: usize) {
    let mut g = c.benchmark_group("walk");
    common::configure(&mut g, 20, 3.0);
    let mut pm = Pagemap::open(65536).expect("open pagemap");
    let mut vec = vec![PageRegion::default(); 4096];
    for layout in Layout::ALL {
        let Some(r) = real_region(layout, len) else {
            continue;
        };
        if layout == Layout::Thp {
            let thp = r.thp_bytes().unwrap_or(0);
            report::record("thp/real_fraction", thp as f64 / len as f64);
        }
        let n = layout.name();
        let mut out = vec![0u64; r.pages()];
        let mut mc = vec![0u8; r.pages()];
        g.throughput(Throughput::Elements(r.pages() as u64));
        for f in ["pagemap", "pagemap_scan", "mincore"] {
            common::pages(&format!("walk/{f}/{n}"), r.pages());
        }
        g.bench_function(BenchmarkId::new("pagemap", n), |b| {
            b.iter(|| black_box(baseline::pagemap_walk(&mut pm, &r, &mut out).expect("pagemap")))
        });
        if baseline::pagemap_scan(&pm, &r, &mut vec).is_ok() {
            g.bench_function(BenchmarkId::new("pagemap_scan", n), |b| {
                b.iter(|| black_box(baseline::pagemap_scan(&pm, &r, &mut vec).expect("scan")))
            });
        }
        g.bench_function(BenchmarkId::new("mincore", n), |b| {
            b.iter(|| black_box(baseline::mincore_walk(&r, &mut mc).expect("mincore")))
        });
    }
    let pages = len / PAGE;
    let table: Vec<u64> = (0..pages as u64).collect();
    let mut out = vec![0u64; pages];
    common::pages("walk/floor/bandwidth", pages);
    g.throughput(Throughput::Elements(pages as u64));
    g.bench_function(BenchmarkId::new("floor", "bandwidth"), |b| {
        b.iter(|| black_box(baseline::bandwidth_floor(black_box(&table), &mut out)))
    });
    g.finish();
}

fn walk(c: &mut Criterion) {
    let len = report::sizes().walk;
    sim_benches(c, len);
    kernel_benches(c, len as usize);
}

criterion_group!(benches, walk);
criterion_main!(benches);
