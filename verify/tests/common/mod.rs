//! Proptest strategies for recipes.

#![allow(dead_code)]

use hmm_verify::recipe::{LeafRecipe, Recipe, RequestRecipe, VmaRecipe};
use proptest::collection::vec;
use proptest::prelude::*;

/// Cases per property, from `HMM_VERIFY_CASES` (default `default`).
pub fn cases(default: u32) -> u32 {
    std::env::var("HMM_VERIFY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A proptest configuration with `cases(default)` cases and no failure
/// files (failures print the minimal case instead).
pub fn config(default: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: cases(default),
        failure_persistence: None,
        ..Default::default()
    }
}

pub fn vma() -> impl Strategy<Value = VmaRecipe> {
    (any::<u8>(), any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(gap, len, kind, fault)| {
        VmaRecipe {
            gap,
            len,
            kind,
            fault,
        }
    })
}

pub fn leaf() -> impl Strategy<Value = LeafRecipe> {
    (
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
    )
        .prop_map(|(offset, level, kind, flags, pfn)| LeafRecipe {
            offset,
            level,
            kind,
            flags,
            pfn,
        })
}

pub fn request() -> impl Strategy<Value = RequestRecipe> {
    (
        (any::<u8>(), any::<u8>(), any::<i8>(), any::<u8>()),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..8)),
        (any::<u8>(), any::<u8>()),
    )
        .prop_map(
            |(
                (anchor_vma, anchor, delta, npages),
                (default_flags, mask, per_page),
                (owner, from),
            )| {
                RequestRecipe {
                    anchor_vma,
                    anchor,
                    delta,
                    npages,
                    default_flags,
                    mask,
                    per_page,
                    owner,
                    from,
                }
            },
        )
}

pub fn recipe() -> impl Strategy<Value = Recipe> {
    (
        vec(vma(), 1..6),
        vec(leaf(), 0..32),
        request(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(
            |(vmas, leaves, request, cached, invalidate_on_drop)| Recipe {
                vmas,
                leaves,
                request,
                cached,
                invalidate_on_drop,
            },
        )
}
