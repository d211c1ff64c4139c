//! Fuzz target: `hmm_core::walk` on a range, request, cursor and counters
//! read from raw bytes, over a page-table view that misbehaves as the bytes
//! say (see `hmm_verify::raw::check_walk`).

#![no_main]

use hmm_verify::raw::check_walk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_walk(data) {
        panic!("{e}");
    }
});
