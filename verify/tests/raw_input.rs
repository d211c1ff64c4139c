//! hmm-core driven by arbitrary bytes over a misbehaving environment (see
//! `hmm_verify::raw`): the walk and every entry point keep their contract
//! (no panic, no hang, the documented errno, nothing written outside the
//! range, sticky bits kept, partial output, saturating counters).
//! `HMM_VERIFY_CASES` sets the number of cases (default 3000 per target).

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
