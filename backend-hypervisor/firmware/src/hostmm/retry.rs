//! What hmm-core's driver did after a host fault dropped the mmap lock,
//! observed from the host side of its traits.
//!
//! After a fault returns `Retry`, the driver re-takes the lock and calls
//! `check_retry(seq)` on the interval notifier before walking again: an
//! unmoved sequence means it *resumes* from the faulting page, a moved one
//! that it *restarts* from the range start. The fault handler marks the
//! drop for the faulting CPU and the notifier classifies the next check on
//! that CPU. (backend-hypervisor does not export hmm-core's own
//! `Stats::resumes`, so this is how the firmware counts them.)

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sysreg::cpu_id;

const CPUS: usize = 2;

#[allow(clippy::declare_interior_mutable_const)]
const F: AtomicBool = AtomicBool::new(false);
static DROPPED: [AtomicBool; CPUS] = [F; CPUS];
static RESUMES: AtomicU64 = AtomicU64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);

fn this_cpu() -> &'static AtomicBool {
    &DROPPED[(cpu_id() as usize).min(CPUS - 1)]
}

/// A fault on this CPU dropped the mmap lock.
pub fn note_drop() {
    this_cpu().store(true, Ordering::Relaxed);
}

/// The driver on this CPU checked its sequence; `moved` is the answer.
pub fn observe_check(moved: bool) {
    if this_cpu().swap(false, Ordering::Relaxed) {
        let c = if moved { &RESTARTS } else { &RESUMES };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// (resumes, restarts) after lock drops.
pub fn counts() -> (u64, u64) {
    (
        RESUMES.load(Ordering::Relaxed),
        RESTARTS.load(Ordering::Relaxed),
    )
}
