//! Fuzz target: every entry point, run to completion on an address space
//! and a request built from the input bytes, ends in the reference model's
//! fixpoint (see `hmm_verify::check::driver_matches`).

#![no_main]

use hmm_verify::check::{driver_matches, EntryPoint};
use hmm_verify::recipe::Recipe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Recipe)| {
    let (which, recipe) = input;
    let ep = EntryPoint::ALL[usize::from(which) % EntryPoint::ALL.len()];
    let case = recipe.build();
    if let Err(e) = driver_matches(&case, ep) {
        panic!("{ep:?}: {e}\ncase: {case:#x?}");
    }
});
