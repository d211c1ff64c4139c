//! Shared by the bench binaries: full-run criterion settings and page-count
//! records.

#![allow(dead_code)]

use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::BenchmarkGroup;
use hmm_benches::report;

/// Criterion settings of the full run; the quick run keeps the command
/// line's `--warm-up-time` / `--measurement-time` / `--sample-size`.
pub fn configure<M: Measurement>(g: &mut BenchmarkGroup<'_, M>, samples: usize, secs: f64) {
    if !report::quick() {
        g.sample_size(samples.max(10));
        g.warm_up_time(Duration::from_secs_f64((secs / 4.0).max(0.5)));
        g.measurement_time(Duration::from_secs_f64(secs));
    }
}

/// Record how many 4 KiB pages one iteration of bench `id` covers.
pub fn pages(id: &str, n: usize) {
    report::record(&format!("pages/{id}"), n as f64);
}
