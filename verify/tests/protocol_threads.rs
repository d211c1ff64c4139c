//! The protocol model on real threads: every correct scenario, repeated
//! (`HMM_VERIFY_THREAD_RUNS` times, default 200). The interleavings are
//! explored exhaustively by `tests/protocol_loom.rs`; this runs the same
//! code under the real scheduler.

#![cfg(not(loom))]

use hmm_core::Policy;
use hmm_verify::protocol::{run, Outcome, Resolution, Scenario};

fn runs() -> u32 {
    std::env::var("HMM_VERIFY_THREAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for resolution in [Resolution::Install, Resolution::OnTried] {
        for (invalidations, munmap) in [(0, false), (1, false), (2, false), (1, true)] {
            for policy in [Policy::Resume, Policy::Restart] {
                // Restart never retries a fault with TRIED (see below).
                if resolution == Resolution::OnTried && policy == Policy::Restart {
                    continue;
                }
                v.push(Scenario {
                    resolution,
                    invalidations,
                    munmap,
                    policy,
                    ..Scenario::new()
                });
            }
        }
    }
    v
}

#[test]
fn correct_protocol_keeps_the_device_coherent() {
    for s in scenarios() {
        for _ in 0..runs() {
            let r = run(s);
            if !s.munmap {
                assert_eq!(r.outcome, Outcome::Programmed, "{s:?}");
            }
        }
    }
}

#[test]
fn without_concurrency_every_page_drops_the_lock_once() {
    let r = run(Scenario::new());
    assert_eq!(r.outcome, Outcome::Programmed);
    assert_eq!(r.caller_retries, 0);
    assert_eq!(r.stats.lock_drops, hmm_verify::protocol::PAGES as u64);
    assert_eq!(r.stats.restarts, 0);
}

#[test]
#[should_panic(expected = "no progress")]
fn forgetting_tried_never_terminates() {
    run(Scenario {
        resolution: Resolution::OnTried,
        bug: Some(hmm_verify::protocol::Bug::ForgetTried),
        ..Scenario::new()
    });
}

/// The restart policy (the seed series' behaviour) starts every pass with
/// fresh faults, so it never sends `TRIED`: against a handler that resolves
/// only a retried fault it makes no progress.
#[test]
#[should_panic(expected = "no progress")]
fn restart_policy_never_sends_tried() {
    run(Scenario {
        resolution: Resolution::OnTried,
        policy: Policy::Restart,
        ..Scenario::new()
    });
}

/// Regression for the resume-cursor defect of `tests/resume_cursor.rs`, in
/// the concurrent model: the walk reports the empty table as one two-page
/// hole; the retried (`TRIED`) fault maps page 0, page 1's fault drops the
/// lock, and the resumed walk must still fill entry 0.
#[test]
fn resume_inside_a_multi_page_hole_fills_every_entry() {
    run(Scenario {
        resolution: Resolution::OnTried,
        pmd_hole: true,
        ..Scenario::new()
    });
}
