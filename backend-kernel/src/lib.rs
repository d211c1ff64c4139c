//! Kernel backend harness (placeholder until its issue lands).
