//! `hmm_core::walk` equals the reference model on random address spaces and
//! requests: every VMA kind, every leaf kind at every level, default flags,
//! masks, per-page requests, device-private owners and mid-range cursors.
//! Each case is walked four ways (one span per PTE, PTE runs, and PTE words
//! in batches through `LeafSink::ptes` with two seeds of batch boundaries).
//!
//! `HMM_VERIFY_CASES` sets the number of cases (default 10 000).

mod common;

use std::collections::BTreeMap;

use hmm_verify::check::{batch_coverage, walk_matches, WalkClass};
use hmm_verify::model_mm::BatchStats;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

proptest! {
    #![proptest_config(common::config(10_000))]

    #[test]
    fn walk_equals_reference(r in common::recipe()) {
        let case = r.build();
        if let Err(e) = walk_matches(&case) {
            prop_assert!(false, "{e}\ncase: {case:#x?}");
        }
    }
}

/// The generator reaches every way a walk can end, so the property above
/// is not vacuous.
#[test]
fn generator_reaches_every_outcome() {
    let mut runner = TestRunner::new(Config::with_cases(1));
    let strategy = common::recipe();
    let mut seen: BTreeMap<WalkClass, u32> = BTreeMap::new();
    let mut batches = BatchStats::default();
    for _ in 0..3000 {
        let r = strategy.new_tree(&mut runner).unwrap().current();
        let case = r.build();
        let class = walk_matches(&case).unwrap_or_else(|e| panic!("{e}"));
        *seen.entry(class).or_default() += 1;
        let b = batch_coverage(&case);
        batches.batches += b.batches;
        batches.words += b.words;
        batches.other_words += b.other_words;
        batches.long_batches += b.long_batches;
        batches.single_ptes += b.single_ptes;
    }
    for class in [
        WalkClass::Done,
        WalkClass::NeedFault,
        WalkClass::WaitMigration,
        WalkClass::Error(-14),
        WalkClass::Error(-1),
    ] {
        assert!(
            seen.contains_key(&class),
            "{class:?} never reached: {seen:?}"
        );
    }
    println!("walk outcomes over 3000 recipes: {seen:?}");
    // The batched walks hand the walker long batches, batches holding
    // words of every other kind, and PTEs alone.
    println!("batched walks over 3000 recipes: {batches:?}");
    assert!(
        batches.long_batches >= 600
            && batches.other_words >= 150
            && batches.single_ptes >= 350
            && batches.words >= 5 * batches.batches,
        "{batches:?}"
    );
}
