//! Regression tests for a defect this suite found in `hmm_core`'s resume
//! after a lock drop (fixed in hmm-core's `driver.rs`).
//!
//! The walk stops at `addr` for a fault over a multi-page span `[addr, end)`
//! (an empty PMD slot, a huge leaf). The driver faults the span page by page
//! with the lock held. If a *later* page's fault drops the lock (file I/O,
//! swap-in, userfaultfd on a page the earlier faults did not resolve), the
//! walk must resume at `addr`, not at that page: the entries of
//! `[addr, page)` still hold their *input* words (the partial-output
//! contract), and with a fault request (`REQ_FAULT` is the `VALID` bit) an
//! entry left unfilled looks "valid" with a garbage PFN while `read_retry`
//! passes because nothing was invalidated. The fixed driver resumes at the
//! walk's stop address and keeps `TRIED` for the dropping page.

mod common;

use std::collections::BTreeSet;

use hmm_core::{
    range_fault_owning_lock, Env, HmmPfn, IntervalNotifier, Options, PfnFlags, Policy, Range,
    Request, Stats, VmFlags, PAGE_SIZE,
};
use hmm_verify::check::{driver_matches, EntryPoint};
use hmm_verify::model_mm::ModelMm;
use hmm_verify::reference::{page_output, RefRequest};
use hmm_verify::space::{FaultKind, Space, VmaDesc};
use proptest::prelude::*;

const START: u64 = 0x40_0000_0000;

fn file_vma_with_first_page_cached(pages: u64) -> ModelMm {
    let mut space = Space::new();
    assert!(space.add_vma(VmaDesc {
        start: START,
        end: START + pages * PAGE_SIZE,
        flags: VmFlags::READ | VmFlags::WRITE | VmFlags::SHARED,
        hugetlb_order: 0,
        fault: FaultKind::FileIo,
    }));
    // The first page is in the page cache; the others need I/O, which
    // drops the mmap lock.
    ModelMm::new(space, BTreeSet::from([START]), 0)
}

#[test]
fn resume_after_a_later_page_drops_the_lock_fills_every_entry() {
    // Per-page requests: the restart policy answers a drop with -EBUSY (it
    // cannot re-read outputs as requests), so only resume is run to the end.
    for policy in [Policy::Resume] {
        let pages = 4;
        let mm = file_vma_with_first_page_cached(pages);
        // Per-page requests: every entry asks for a fault (REQ_FAULT is the
        // VALID bit, so an entry left holding its input looks valid).
        let req = PfnFlags::REQ_FAULT.bits();
        let mut pfns = vec![req; pages as usize];
        let mut range = Range::new(START, START + pages * PAGE_SIZE, &mut pfns)
            .with_request(Request::new(0, req))
            .with_notifier(&mm);
        let env = Env::new(&mm, &mm);
        let opts = Options::with_policy(policy);
        let r = range_fault_owning_lock(&env, &mut range, &opts, &mut Stats::default());
        assert_eq!(r, Ok(()), "{policy:?}");
        assert_eq!(mm.readers(), 0);
        // Nothing was invalidated: the caller's final check passes.
        assert!(!mm.read_retry(range.notifier_seq), "{policy:?}");
        let space = mm.space();
        let rr = RefRequest {
            default_flags: 0,
            mask: req,
            owner: None,
        };
        for (i, &e) in pfns.iter().enumerate() {
            let addr = START + i as u64 * PAGE_SIZE;
            let now = page_output(&space, &rr, addr, req);
            assert!(
                HmmPfn(now).is_valid(),
                "{policy:?}: page {i} was faulted in"
            );
            assert_eq!(
                e, now,
                "{policy:?}: entry {i} holds {e:#x}, the page is mapped as {now:#x}"
            );
        }
    }
}

proptest! {
    #![proptest_config(common::config(2000))]

    /// The resume policies on file-I/O VMAs too.
    #[test]
    fn resume_policies_with_file_io(r in common::recipe()) {
        let case = r.build();
        for ep in [EntryPoint::OwningLock(Policy::Resume), EntryPoint::MayUnlock(Policy::Resume)] {
            if let Err(e) = driver_matches(&case, ep) {
                prop_assert!(false, "{ep:?}: {e}\ncase: {case:#x?}");
            }
        }
    }
}
