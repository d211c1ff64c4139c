//! Fuzz target: `hmm_core::walk` equals the reference model on an address
//! space and a request built from the input bytes.

#![no_main]

use hmm_verify::check::walk_matches;
use hmm_verify::recipe::Recipe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|recipe: Recipe| {
    let case = recipe.build();
    if let Err(e) = walk_matches(&case) {
        panic!("{e}\ncase: {case:#x?}");
    }
});
