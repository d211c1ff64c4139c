//! The entry points against the reference model: run to completion with a
//! fault handler that resolves what it can (populate, userfaultfd with lock
//! drop, file I/O with lock drop, completed faults, failing VMAs,
//! invalidations during lock drops), every outcome must be the reference
//! walk's fixpoint on the final address space: success with every requested
//! entry `VALID` (and `WRITE` if requested), or the documented errno with
//! the partial-output contract.
//!
//! File-I/O VMAs (a cached page next to pages that need I/O) are included:
//! they are what exposed the resume-cursor defect of `tests/resume_cursor.rs`.
//! `HMM_VERIFY_CASES` sets the number of cases (default 3000 per entry point:
//! a third each with one span per PTE, PTE runs, and PTE words in batches).

mod common;

use hmm_verify::check::{driver_matches, EntryPoint};
use proptest::prelude::*;

fn check(r: &hmm_verify::recipe::Recipe, ep: EntryPoint) -> Result<(), TestCaseError> {
    let case = r.build();
    if let Err(e) = driver_matches(&case, ep) {
        prop_assert!(false, "{ep:?}: {e}\ncase: {case:#x?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(common::config(3000))]

    #[test]
    fn linux_entry_point(r in common::recipe()) {
        check(&r, EntryPoint::Linux)?;
    }

    #[test]
    fn unlockable_resume(r in common::recipe()) {
        check(&r, EntryPoint::MayUnlock(hmm_core::Policy::Resume))?;
    }

    #[test]
    fn unlockable_restart(r in common::recipe()) {
        check(&r, EntryPoint::MayUnlock(hmm_core::Policy::Restart))?;
    }

    #[test]
    fn unlocked_resume(r in common::recipe()) {
        check(&r, EntryPoint::OwningLock(hmm_core::Policy::Resume))?;
    }

    #[test]
    fn unlocked_restart(r in common::recipe()) {
        check(&r, EntryPoint::OwningLock(hmm_core::Policy::Restart))?;
    }

    #[test]
    fn unlocked_nowait(r in common::recipe()) {
        check(&r, EntryPoint::OwningLockNowait)?;
    }
}
