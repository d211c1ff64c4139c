//! Benchmarks (placeholder until their issue lands).
