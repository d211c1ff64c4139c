//! hmm-core driven by arbitrary bytes over a misbehaving environment (see
//! `hmm_verify::raw`): the walk and every entry point keep their contract
//! (no panic, no hang, the documented errno, nothing written outside the
//! range, sticky bits kept, partial output, saturating counters).
//! `HMM_VERIFY_CASES` sets the number of cases (default 3000 per target).
//! The environment answers the walker's `walk_batched` with spans and
//! hostile PTE batches mixed (see `hmm_verify::raw`).

mod common;

use hmm_verify::raw::{check_driver, check_walk};
use proptest::collection::vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(common::config(3000))]

    #[test]
    fn raw_walk(data in vec(any::<u8>(), 0..512)) {
        if let Err(e) = check_walk(&data) {
            prop_assert!(false, "{e}\ninput: {data:?}");
        }
    }

    #[test]
    fn raw_driver(data in vec(any::<u8>(), 0..512)) {
        if let Err(e) = check_driver(&data) {
            prop_assert!(false, "{e}\ninput: {data:?}");
        }
    }
}

/// Random inputs reach the batched script's cases: batches that stop the
/// walk for a fault or fail it, spans and batches the walker must refuse,
/// and items after a `Break`.
#[test]
fn raw_walk_reaches_the_batch_path() {
    use std::collections::BTreeMap;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    let (mut batches, mut words, mut after_break, mut refused) = (0, 0, 0, 0);
    for _ in 0..4000 {
        let len = (next() % 256) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // A near-valid range most of the time: shape not 0 mod 8, a
        // plain base, a small window, the default limit.
        if data.len() > 4 {
            data[0] |= 1;
            data[0] &= 0x3f;
            data[1] = 11;
        }
        let (out, log) = hmm_verify::raw::check_walk_logged(&data);
        let out = out.unwrap_or_else(|e| panic!("{e}\ninput: {data:?}"));
        let key = if log.batches > 0 {
            format!("{out} (batches)")
        } else {
            out
        };
        *outcomes.entry(key).or_default() += 1;
        batches += log.batches;
        words += log.words;
        after_break += log.after_break;
        refused += u64::from(log.refused);
    }
    println!(
        "raw walk: {outcomes:?}; {batches} batches, {words} words, {after_break} after a Break, \
         {refused} cases with a refused span or batch"
    );
    // Random bytes rarely cover a whole window with batches (the fuzzer
    // does, guided by coverage: see `fuzz_seeds` below).
    for (o, n) in [("need-fault", 20), ("efault", 20)] {
        let o = format!("{o} (batches)");
        assert!(
            outcomes.get(&o).copied().unwrap_or(0) >= n,
            "{o}: {outcomes:?}"
        );
    }
    assert!(batches >= 300 && words >= 10_000 && after_break >= 100 && refused >= 300);
}

/// The committed seeds of the raw fuzz targets keep their contract; the
/// `raw_walk` seeds found by fuzzing the batched script (seed-8 on) reach
/// every walk outcome through PTE batches.
#[test]
fn fuzz_seeds() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let read = |target: &str| {
        let mut seeds: Vec<_> = std::fs::read_dir(corpus.join(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        seeds.sort();
        seeds
            .into_iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(p).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut batched = std::collections::BTreeSet::new();
    for (name, data) in read("raw_walk") {
        let (out, log) = hmm_verify::raw::check_walk_logged(&data);
        let out = out.unwrap_or_else(|e| panic!("raw_walk {name}: {e}"));
        if log.batches > 0 {
            batched.insert(out);
        }
    }
    for o in ["done", "need-fault", "wait-migration", "efault", "eperm"] {
        assert!(
            batched.contains(o),
            "no seed reaches {o} through batches: {batched:?}"
        );
    }
    for (name, data) in read("raw_driver") {
        if let Err(e) = check_driver(&data) {
            panic!("raw_driver {name}: {e}");
        }
    }
}
