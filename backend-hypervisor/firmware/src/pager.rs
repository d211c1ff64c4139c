//! The second CPU: the userfaultfd pager (the post-copy migration thread
//! that supplies missing pages) and host jobs that must run concurrently
//! with the guest (page migration under a running vCPU).
//!
//! It serves messages until the boot CPU asks it to stop, waiting with
//! `WFE` between them; producers signal with `SEV`.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::sysreg::{sev, wfe};
use crate::vm::HOST_MM;

const JOB_NONE: u8 = 0;
const JOB_MIGRATE: u8 = 1;
const JOB_RUNNING: u8 = 2;

struct Mailbox {
    job: AtomicU8,
    addr: AtomicU64,
    value: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

static MAILBOX: Mailbox = Mailbox {
    job: AtomicU8::new(JOB_NONE),
    addr: AtomicU64::new(0),
    value: AtomicU64::new(0),
    done: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

static STOP: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicBool = AtomicBool::new(false);
static SERVED: AtomicU64 = AtomicU64::new(0);

/// Ask the pager CPU to migrate the host page at `hva` and then store
/// `value` at `hva` through the host mapping. Returns false if a job is
/// already pending.
pub fn post_migrate(hva: u64, value: u64) -> bool {
    if MAILBOX
        .job
        .compare_exchange(JOB_NONE, JOB_RUNNING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    MAILBOX.addr.store(hva, Ordering::Relaxed);
    MAILBOX.value.store(value, Ordering::Relaxed);
    MAILBOX.job.store(JOB_MIGRATE, Ordering::Release);
    sev();
    true
}

/// Status of the last posted job: 0 running, 1 done, 2 failed.
pub fn job_status() -> u64 {
    if MAILBOX.job.load(Ordering::Acquire) != JOB_NONE {
        0
    } else if MAILBOX.failed.load(Ordering::Acquire) != 0 {
        2
    } else {
        1
    }
}

/// Whether the pager CPU is up.
pub fn running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Stop the pager loop (after pending work) and wait until it has.
pub fn stop() {
    STOP.store(true, Ordering::Release);
    sev();
    while RUNNING.load(Ordering::Acquire) {
        wfe();
    }
}

/// (uffd messages served, jobs done, jobs failed).
pub fn counts() -> (u64, u64, u64) {
    (
        SERVED.load(Ordering::Relaxed),
        MAILBOX.done.load(Ordering::Relaxed),
        MAILBOX.failed.load(Ordering::Relaxed),
    )
}

/// While the migration entry is installed, wait until a fault is waiting
/// on it. The guest keeps reading the page until the job is done, its
/// stage-2 entry is gone (the notifiers ran before the migration entry was
/// installed), so its next read faults and the walk stops at the migration
/// entry: the wait always ends.
fn hold_for_a_waiter() {
    let waits = &HOST_MM.counters.migration_waits;
    let before = waits.load(Ordering::Acquire);
    while waits.load(Ordering::Acquire) == before {
        core::hint::spin_loop();
    }
}

/// The pager CPU's main loop.
pub fn main_loop() {
    RUNNING.store(true, Ordering::Release);
    sev();
    loop {
        if let Some((slot, addr)) = HOST_MM.uffd.take() {
            // UFFDIO_COPY; -EEXIST (already present) also resolves it.
            HOST_MM.uffd_copy(addr);
            HOST_MM.uffd.resolve(slot);
            SERVED.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if MAILBOX.job.load(Ordering::Acquire) == JOB_MIGRATE {
            let hva = MAILBOX.addr.load(Ordering::Relaxed);
            let ok = HOST_MM.migrate_with(hva, hold_for_a_waiter).is_ok()
                && HOST_MM
                    .write_u64(hva, MAILBOX.value.load(Ordering::Relaxed))
                    .is_ok();
            let c = if ok { &MAILBOX.done } else { &MAILBOX.failed };
            c.fetch_add(1, Ordering::Relaxed);
            MAILBOX.job.store(JOB_NONE, Ordering::Release);
            sev();
            continue;
        }
        if STOP.load(Ordering::Acquire) {
            break;
        }
        wfe();
    }
    RUNNING.store(false, Ordering::Release);
    sev();
}
