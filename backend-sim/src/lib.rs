//! Userspace simulator backend (placeholder until its issue lands).
