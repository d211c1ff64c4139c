//! Model checking of the coherence protocol with loom: every interleaving
//! (up to a preemption bound) of the faulter running the real
//! `hmm_core::range_fault_owning_lock`, the userfault handler thread, the
//! invalidator and munmap, with the invariants of
//! [`hmm_verify::protocol`]; and each seeded bug caught.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p hmm-verify --release --test protocol_loom`
//! (`LOOM_PREEMPTION_BOUND` overrides the bound of 3, 2 for the five-thread model; each test prints the
//! executions it explored).

#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hmm_core::Policy;
use hmm_verify::protocol::{run, Bug, Resolution, Scenario};

fn explore(name: &str, s: Scenario) -> usize {
    explore_bounded(name, s, 3)
}

/// Explore with `bound` preemptions unless `LOOM_PREEMPTION_BOUND` is set.
fn explore_bounded(name: &str, s: Scenario, bound: usize) -> usize {
    let executions = Arc::new(AtomicUsize::new(0));
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    let n = executions.clone();
    builder.check(move || {
        n.fetch_add(1, Ordering::Relaxed);
        run(s);
    });
    let n = executions.load(Ordering::Relaxed);
    println!("loom model {name}: {n} executions explored");
    n
}

const INSTALL: Scenario = Scenario::new();

#[test]
fn userfault_resolution() {
    explore("userfault", INSTALL);
}

#[test]
fn userfault_with_background_push() {
    explore(
        "userfault+push",
        Scenario {
            push: true,
            ..INSTALL
        },
    );
}

#[test]
fn invalidation_during_userfault() {
    explore(
        "userfault+invalidate",
        Scenario {
            invalidations: 1,
            ..INSTALL
        },
    );
}

#[test]
fn invalidation_with_restart_policy() {
    explore(
        "userfault+invalidate restart",
        Scenario {
            invalidations: 1,
            policy: Policy::Restart,
            ..INSTALL
        },
    );
}

#[test]
fn concurrent_munmap() {
    explore(
        "userfault+munmap",
        Scenario {
            munmap: true,
            ..INSTALL
        },
    );
}

#[test]
fn retried_fault_resolution_with_invalidation() {
    explore(
        "tried+invalidate",
        Scenario {
            resolution: Resolution::OnTried,
            invalidations: 1,
            ..INSTALL
        },
    );
}

#[test]
fn push_invalidation_and_munmap_together() {
    // Five threads: a bound of 3 explores 3.2 million executions (8 min).
    explore_bounded(
        "userfault+push+invalidate+munmap",
        Scenario {
            push: true,
            invalidations: 1,
            munmap: true,
            ..INSTALL
        },
        2,
    );
}

/// Regression for the resume-cursor defect (see `tests/resume_cursor.rs`) in
/// the post-copy shape: the empty table is one two-page hole, the userfault
/// handler pushes page 0 in the background while the faulter is about to
/// fault the hole, page 0's fault finds it mapped, page 1's drops the lock,
/// and the resumed walk must still fill entry 0.
#[test]
fn background_push_into_a_multi_page_hole() {
    explore(
        "userfault+push, one hole",
        Scenario {
            push: true,
            pmd_hole: true,
            ..INSTALL
        },
    );
}

#[test]
#[should_panic(expected = "stale device entry")]
fn seeded_bug_programming_without_read_retry() {
    explore(
        "bug: no read_retry",
        Scenario {
            invalidations: 1,
            bug: Some(Bug::SkipReadRetry),
            ..INSTALL
        },
    );
}

#[test]
#[should_panic(expected = "stale device entry")]
fn seeded_bug_resume_adopting_a_moved_sequence() {
    explore(
        "bug: resume adopting the sequence",
        Scenario {
            invalidations: 1,
            bug: Some(Bug::ResumeAdoptingSequence),
            ..INSTALL
        },
    );
}

#[test]
#[should_panic(expected = "no progress")]
fn seeded_bug_forgetting_tried() {
    explore(
        "bug: forget TRIED",
        Scenario {
            resolution: Resolution::OnTried,
            bug: Some(Bug::ForgetTried),
            ..INSTALL
        },
    );
}
