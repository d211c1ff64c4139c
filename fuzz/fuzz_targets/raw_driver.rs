//! Fuzz target: an entry point (range, request, options, stats, signals,
//! clock) read from raw bytes, over an address space, fault handler and
//! notifier that misbehave as the bytes say (see
//! `hmm_verify::raw::check_driver`).

#![no_main]

use hmm_verify::raw::check_driver;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = check_driver(data) {
        panic!("{e}");
    }
});
