// SPDX-License-Identifier: GPL-2.0

//! hmm-core, compiled from its sources inside this module.
//!
//! Rust-for-Linux has no cargo, so the module includes every module of
//! `hmm-core/src/lib.rs` by path (its crate-level attributes are only valid
//! at a crate root, so `lib.rs` itself is not included). Without the
//! `bitflags` cfg feature, hmm-core's flag types use their dependency-free
//! definition. The test doubles (`doubles`) are not included: nothing here
//! uses them.

#[macro_use]
#[path = "../../hmm-core/src/flags.rs"]
mod flags;

#[path = "../../hmm-core/src/clock.rs"]
pub mod clock;
#[path = "../../hmm-core/src/driver.rs"]
pub mod driver;
#[path = "../../hmm-core/src/error.rs"]
pub mod error;
#[path = "../../hmm-core/src/fault.rs"]
pub mod fault;
#[path = "../../hmm-core/src/host.rs"]
pub mod host;
#[path = "../../hmm-core/src/leaf.rs"]
pub mod leaf;
#[path = "../../hmm-core/src/mm.rs"]
pub mod mm;
#[path = "../../hmm-core/src/need.rs"]
pub mod need;
#[path = "../../hmm-core/src/notifier.rs"]
pub mod notifier;
#[path = "../../hmm-core/src/pfn.rs"]
pub mod pfn;
#[path = "../../hmm-core/src/range.rs"]
pub mod range;
#[path = "../../hmm-core/src/signal.rs"]
pub mod signal;
#[path = "../../hmm-core/src/vma.rs"]
pub mod vma;
#[path = "../../hmm-core/src/walk.rs"]
pub mod walk;

pub use clock::Clock;
pub use driver::{range_fault, range_fault_owning_lock, Options, Policy, Stats};
pub use error::Error;
pub use fault::{FaultFlags, FaultHandler, FaultOutcome, VmFaultError};
pub use host::Env;
pub use leaf::{Leaf, Present};
pub use mm::{LeafSink, MmView, MmapLock, PteFormat};
pub use notifier::IntervalNotifier;
pub use pfn::{HmmPfn, PfnFlags, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER};
pub use range::Range;
pub use signal::Signals;
pub use vma::{VmFlags, Vma};
