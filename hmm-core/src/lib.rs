//! # hmm-core: HMM range faulting that survives a dropped mmap lock
//!
//! A device that mirrors a process address space asks the CPU side: "for
//! every page in `[start, end)`, give me the PFN and its permissions,
//! faulting in what I require". In Linux that is `hmm_range_fault()`. This
//! crate implements its semantics (the PFN word, the need-fault rules, the
//! per-leaf outputs, the errno contract) as a `no_std`, allocation-free,
//! `unsafe`-free core, and adds what the kernel's version lacks: faults
//! whose handler drops the mmap lock (userfaultfd, post-copy migration,
//! asynchronous faults), with the retry loop done right.
//!
//! ## The protocol
//!
//! 1. The caller builds a [`Range`]: addresses, one `u64` per page, a
//!    [`Request`] (`default_flags`, `pfn_flags_mask`), the
//!    [`IntervalNotifier`] subscribed over it ([`Range::with_notifier`],
//!    Linux's `hmm_range.notifier`) and optionally a device-private owner.
//! 2. The driver takes `seq = read_begin()` from the range's notifier,
//!    then the mmap read lock ([`MmapLock::read_killable`]).
//! 3. [`walk()`] inspects page tables through the guard's [`MmView`] (leaf
//!    by leaf, or a PTE table's words at a time through
//!    [`MmView::walk_batched`] and a backend's [`PteFormat`]) and fills
//!    entries until the range is done or a page needs a fault. It never
//!    faults: it stops with [`WalkStop::NeedFault`] (or
//!    [`WalkStop::WaitMigration`]), holding no page-table or hugetlb lock.
//! 4. The driver calls the [`FaultHandler`] with the read guard *by value*.
//!    The handler returns the guard if it kept the lock
//!    ([`FaultOutcome::Done`], [`FaultOutcome::Error`],
//!    [`FaultOutcome::WouldBlock`]) or consumes it if it dropped the lock
//!    ([`FaultOutcome::Retry`], [`FaultOutcome::Completed`]). After a drop
//!    nothing borrowed from the old guard (VMAs, page-table views) can be
//!    touched: the borrow checker forbids it.
//! 5. After a drop the driver checks for fatal signals and its budget,
//!    re-takes the lock killably, and *resumes* where the walk stopped when
//!    `check_retry(seq)` shows no invalidation (retrying the page that
//!    dropped the lock with [`FaultFlags::TRIED`]); otherwise it restarts
//!    with a new sequence (or, if the entries carry per-page requests that
//!    the walk has overwritten, returns `-EBUSY` to the caller).
//! 6. On success the caller takes its device update lock, checks
//!    `read_retry(seq)`, and programs the device only if it is false. The
//!    invalidate callback takes the same lock.
//!
//! The entry points take the range and an [`Env`]: the host side (the mmap
//! lock, the fault handler, signals and a clock), the same for every range
//! of an address space. Code that keeps a host for many ranges is generic
//! over [`Host`], anything that lends an `Env`.
//!
//! See [`driver`] for the three entry points ([`range_fault`],
//! [`range_fault_may_unlock`], [`range_fault_owning_lock`]) and [`mod@walk`] for the
//! output rules.
//!
//! ## Example
//!
//! A userfaultfd-backed range, mirrored through the owning entry point, with
//! the crate's [`doubles::TestMm`] standing in for a real address space:
//!
//! ```
//! use hmm_core::doubles::{FaultMode, TestMm};
//! use hmm_core::*;
//!
//! let mm = TestMm::new();
//! // 8 pages of anonymous memory registered with userfaultfd (MISSING).
//! let (start, end) = (0x40_0000, 0x40_8000);
//! mm.add_vma(start, end, VmFlags::READ | VmFlags::WRITE, 0,
//!            FaultMode::Userfault { resolve: true });
//!
//! let mut pfns = [0u64; 8];
//! let mut range = Range::new(start, end, &mut pfns)
//!     .with_default_flags((PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits())
//!     .with_notifier(&mm);
//! let env = Env::new(&mm, &mm).with_signals(&mm).with_clock(&mm);
//! let mut stats = Stats::default();
//! range_fault_owning_lock(&env, &mut range, &Options::default(), &mut stats)?;
//!
//! // The caller's final check, under its device update lock:
//! assert!(!mm.read_retry(range.notifier_seq));
//! // Every page faulted through the lock-dropping path and is now mapped.
//! assert!(pfns.iter().all(|&p| HmmPfn(p).is_writable()));
//! assert_eq!(stats.lock_drops, 8);
//! assert_eq!((stats.resumes, stats.restarts), (8, 0));
//!
//! // Linux's hmm_range_fault on the same kind of range fails with -EFAULT,
//! // because it cannot let the handler drop the lock.
//! let mm2 = TestMm::new();
//! mm2.add_vma(start, end, VmFlags::READ, 0, FaultMode::Userfault { resolve: true });
//! let mut pfns2 = [0u64; 8];
//! let mut r2 = Range::new(start, end, &mut pfns2)
//!     .with_default_flags(PfnFlags::REQ_FAULT.bits())
//!     .with_notifier(&mm2);
//! let env2 = Env::new(&mm2, &mm2);
//! let out = range_fault(&env2, &mut r2, mm2.read(), &mut Stats::default());
//! assert_eq!(out.result.unwrap_err().to_errno(), -14);
//! # Ok::<(), hmm_core::Error>(())
//! ```
//!
//! ## Implementing a backend
//!
//! `examples/flat.rs` is a complete backend in about a hundred lines: one
//! VMA over a flat array of PTEs, a counting "lock", a fault handler that
//! installs a frame and a sequence counter as the notifier
//! (`cargo run -p hmm-core --example flat`).
//!
//! ## Building without registry crates
//!
//! The default `bitflags` feature makes the flag types with the `bitflags`
//! crate. With `--no-default-features` an equivalent dependency-free
//! definition is used; that is how the Rust-for-Linux module compiles these
//! sources. Modules refer to each other with `super::` paths only, so the
//! sources also compile when included as a module of another crate.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::panic, clippy::unwrap_used, clippy::expect_used)
)]

#[macro_use]
mod flags;

pub mod clock;
pub mod doubles;
pub mod driver;
pub mod error;
pub mod fault;
pub mod host;
pub mod leaf;
pub mod mm;
pub mod need;
pub mod notifier;
pub mod pfn;
pub mod range;
pub mod signal;
pub mod vma;
pub mod walk;

pub use clock::{Clock, NoClock};
pub use driver::{
    range_fault, range_fault_may_unlock, range_fault_owning_lock, MaybeLocked, Options, Policy,
    Stats,
};
pub use error::Error;
pub use fault::{FaultFlags, FaultHandler, FaultOutcome, VmFaultError};
pub use host::{Env, Host};
pub use leaf::{Leaf, Present};
pub use mm::{LeafSink, MmView, MmapLock, PteFormat, TASK_SIZE};
pub use need::{NeedFault, Request};
pub use notifier::IntervalNotifier;
pub use pfn::{HmmPfn, PfnFlags, PAGE_SHIFT, PAGE_SIZE, PMD_ORDER, PUD_ORDER};
pub use range::Range;
pub use signal::{NoSignals, Signals};
pub use vma::{VmFlags, Vma};
pub use walk::{walk, WalkCounters, WalkStop};
