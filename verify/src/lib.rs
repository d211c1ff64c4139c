//! # hmm-verify: checking hmm-core against models
//!
//! Three independent checks of the `hmm_core` contracts:
//!
//! * **A reference model of the walk** ([`reference`](mod@reference)): Linux's output rules
//!   restated page by page, over a plain-data address space ([`space`]) that
//!   a separate [`MmView`](hmm_core::MmView) implementation ([`model_mm`])
//!   exposes to `hmm_core`. Property tests (`tests/walk_reference.rs`,
//!   `tests/driver_properties.rs`) and the fuzz targets in `../fuzz` build
//!   random address spaces and requests from [`recipe`]s and compare, with
//!   the model reporting PTEs one span each, in runs, or as batches of
//!   PTE words through the walker's batched path
//!   ([`PteMode`](model_mm::PteMode)).
//! * **Model checking of the coherence protocol** ([`protocol`]): a faulter
//!   running `hmm_core::range_fault_owning_lock` against a concurrent address
//!   space whose locks and sequence counter go through [`sync`] (std types
//!   normally, loom's under `--cfg loom`), with a userfaultfd handler
//!   thread, an invalidator and a concurrent munmap. `tests/protocol_loom.rs`
//!   explores the interleavings with loom; the same model runs on real
//!   threads in `tests/protocol_threads.rs`.
//! * Seeded bugs: each model is shown to catch a broken protocol.
//! * **Raw-input checks** ([`raw`]): the walk and the entry points driven
//!   by arbitrary bytes (range, request, options, counters) over an
//!   environment that misbehaves (its page-table walk mixes hostile spans
//!   and hostile PTE batches); `tests/raw_input.rs` and the `raw_walk`
//!   and `raw_driver` fuzz targets.
//!
//! Nothing here reuses `hmm_core::doubles`.

#![deny(missing_docs)]

pub mod check;
pub mod model_mm;
pub mod protocol;
pub mod raw;
pub mod recipe;
pub mod reference;
pub mod space;
pub mod sync;
