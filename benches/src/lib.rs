//! Benchmarks support: the address spaces our walker is timed over, the
//! baselines it is measured against on real memory of this machine, and
//! the report.
//!
//! * [`baseline`]: the kernel's own page walkers read from user space
//!   (`/proc/self/pagemap`, `PAGEMAP_SCAN`, `mincore()`), first-touch page
//!   faults, and the memory-bandwidth floor, on real anonymous memory;
//! * [`sim`]: populated ranges of every layout (4 KiB, THP, 1 GiB hugetlb,
//!   holes, zapped, sparse) in backend-sim, and the snapshot walks;
//! * [`fault`]: fault-in of a fresh anonymous range through hmm-core;
//! * [`uffd`]: userfaultfd-backed fault-in with a handler thread, resume vs
//!   restart, the walker's measured share of the round trip, and the real
//!   userfaultfd round trip of this machine beside it ([`uffd::real`]);
//! * [`contended`]: device faults while a CPU thread invalidates at a fixed
//!   rate;
//! * [`guest`]: backend-hypervisor's guest-fault path over backend-sim;
//! * [`report`]: bench sizes, extra measurements, criterion's estimates and
//!   the `BENCHMARKS.md` writer.
//!
//! The criterion benches live in `benches/`; `run.sh` runs them and writes
//! the report. Nothing here asserts a timing: the tests check that each
//! measured operation produces the right result.

pub mod baseline;
pub mod contended;
pub mod fault;
pub mod guest;
pub mod report;
pub mod sim;
pub mod uffd;
