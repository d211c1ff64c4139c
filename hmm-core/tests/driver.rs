//! The fault driver: the three entry points, resume vs restart, TRIED,
//! fatal signals, the budget, no-wait, and handler contract violations.

use hmm_core::doubles::{FaultMode, TestGuard, TestMm};
use hmm_core::*;

const BASE: u64 = 0x10_0000_0000;
const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);
const REQ_RW: u64 = PfnFlags::REQ_FAULT.bits() | PfnFlags::REQ_WRITE.bits();

fn mm_with(pages: u64, flags: VmFlags, order: u8, mode: FaultMode) -> TestMm {
    let mm = TestMm::new();
    assert!(mm.add_vma(BASE, BASE + pages * PAGE_SIZE, flags, order, mode));
    mm
}

fn unlocked(
    mm: &TestMm,
    pfns: &mut [u64],
    req: u64,
    opts: Options,
) -> (Result<(), Error>, Stats, u64) {
    let end = BASE + pfns.len() as u64 * PAGE_SIZE;
    let mut range = Range::new(BASE, end, pfns)
        .with_default_flags(req)
        .with_notifier(mm);
    let env = Env::new(mm, mm).with_signals(mm).with_clock(mm);
    let mut stats = Stats::default();
    let r = range_fault_owning_lock(&env, &mut range, &opts, &mut stats);
    assert_eq!(
        mm.readers(),
        0,
        "the owning entry point must return unlocked"
    );
    (r, stats, range.notifier_seq)
}

/// A writable present PTE mapping `pfn`.
fn rw_page(pfn: u64) -> Leaf {
    Leaf::Present(Present {
        pfn,
        write: true,
        ..Present::default()
    })
}

fn all_writable(pfns: &[u64]) -> bool {
    pfns.iter().all(|&p| HmmPfn(p).is_writable())
}

#[test]
fn linux_entry_point_faults_without_dropping() {
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    range.notifier_seq = mm.read_begin();
    let env = Env::new(&mm, &mm);
    let mut stats = Stats::default();
    let out = range_fault(&env, &mut range, mm.read(), &mut stats);
    assert_eq!(out.result, Ok(()));
    assert!(out.guard.is_some(), "the caller's lock is handed back");
    drop(out);
    assert!(all_writable(&pfns));
    // Faults carry REMOTE|WRITE and never ALLOW_RETRY.
    let (log, n) = mm.faults();
    assert_eq!(n, 4);
    assert!(log[..n]
        .iter()
        .all(|f| f.flags == (FaultFlags::REMOTE | FaultFlags::WRITE).bits()));
}

#[test]
fn linux_entry_point_fails_userfaultfd_with_efault() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    let env = Env::new(&mm, &mm);
    let out = range_fault(&env, &mut range, mm.read(), &mut Stats::default());
    assert_eq!(out.result, Err(Error::Fault));
    assert!(out.guard.is_some());
}

#[test]
fn linux_entry_point_coarse_errors_and_busy() {
    let mm = mm_with(2, RW, 0, FaultMode::Fail(VmFaultError::Oom));
    let mut pfns = [0u64; 2];
    let mut range = Range::new(BASE, BASE + 0x2000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    let env = Env::new(&mm, &mm);
    let out = range_fault(&env, &mut range, mm.read(), &mut Stats::default());
    assert_eq!(
        out.result,
        Err(Error::Fault),
        "the kernel maps every VM_FAULT_ERROR to -EFAULT"
    );
    drop(out);
    // A sequence that moved before the call: -EBUSY, lock still held.
    range.notifier_seq = mm.read_begin();
    mm.invalidate();
    let out = range_fault(&env, &mut range, mm.read(), &mut Stats::default());
    assert_eq!(out.result, Err(Error::Busy));
    assert!(out.guard.is_some());
}

#[test]
fn bad_ranges_are_einval_with_the_guard_back() {
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    let env = Env::new(&mm, &mm);
    let mut short = [0u64; 3];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut short).with_notifier(&mm);
    let out = range_fault(&env, &mut range, mm.read(), &mut Stats::default());
    assert_eq!(out.result, Err(Error::Inval));
    assert!(out.guard.is_some());
    drop(out);
    let mut one = [0u64; 1];
    let mut beyond = Range::new(TASK_SIZE, TASK_SIZE + 0x1000, &mut one).with_notifier(&mm);
    let r = range_fault_owning_lock(
        &env,
        &mut beyond,
        &Options::default(),
        &mut Stats::default(),
    );
    assert_eq!(r, Err(Error::Inval));
    let mut empty: [u64; 0] = [];
    let mut e = Range::new(BASE, BASE, &mut empty).with_notifier(&mm);
    assert_eq!(
        range_fault_owning_lock(&env, &mut e, &Options::default(), &mut Stats::default()),
        Err(Error::Inval)
    );
}

#[test]
fn resume_is_linear_and_restart_is_quadratic() {
    let n = 32u64;
    for (policy, filled, restarts) in [
        (Policy::Resume, n, 0),
        (Policy::Restart, n * (n + 1) / 2, n),
    ] {
        let mm = mm_with(n, RW, 0, FaultMode::Userfault { resolve: true });
        let mut pfns = vec![0u64; n as usize];
        let (r, stats, seq) = unlocked(&mm, &mut pfns, REQ_RW, Options::with_policy(policy));
        assert_eq!(r, Ok(()));
        assert!(all_writable(&pfns));
        assert!(!mm.read_retry(seq));
        assert_eq!(stats.lock_drops, n);
        assert_eq!(stats.pages_filled, filled, "{policy:?}");
        assert_eq!(stats.restarts, restarts, "{policy:?}");
        if policy == Policy::Resume {
            assert_eq!(stats.resumes, n);
        }
    }
}

#[test]
fn a_drop_inside_a_fault_span_resumes_at_the_span_start() {
    // One 4-page hole span: page 0 is served without a drop (cached), page 1
    // drops the lock. The entry of page 0 must still receive output: the
    // resume starts at the walk's stop address, not at the dropping page.
    // (With per-page requests the restart policy returns -EBUSY after a
    // drop instead; see `per_page_requests_are_never_reread_after_a_restart`.)
    for policy in [Policy::Resume] {
        let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
        assert!(mm.cache_page(BASE));
        // Per-page requests: an entry left holding its input would look VALID.
        let req = PfnFlags::REQ_FAULT.bits();
        let mut pfns = [req; 4];
        let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
            .with_request(Request::new(0, req))
            .with_notifier(&mm);
        let env = Env::new(&mm, &mm);
        let r = range_fault_owning_lock(
            &env,
            &mut range,
            &Options::with_policy(policy),
            &mut Stats::default(),
        );
        assert_eq!(r, Ok(()));
        let seq = range.notifier_seq;
        assert!(!mm.read_retry(seq));
        // Every entry is a real mapping: the PFNs are the test double's
        // allocations (0x1000 and up), distinct, and writable.
        let mut seen = std::collections::BTreeSet::new();
        for &p in &pfns {
            let e = HmmPfn(p);
            assert!(e.is_valid() && e.pfn() >= 0x1000, "{policy:?}: {p:#x}");
            assert!(seen.insert(e.pfn()));
        }
    }
}

#[test]
fn per_page_requests_are_never_reread_after_a_restart() {
    // Page 0 carries no request and is present; page 1 asks for a fault and
    // its userfault invalidates the range while the lock is dropped. A
    // restart from the range start would read page 0's output (VALID) as a
    // fault request; instead the owning entry point returns -EBUSY.
    let mm = mm_with(2, RW, 0, FaultMode::Userfault { resolve: true });
    assert!(mm.map(BASE, 1, rw_page(9)));
    mm.invalidate_on_drop(1);
    let req = PfnFlags::REQ_FAULT.bits();
    let mut pfns = [0, req];
    let mut range = Range::new(BASE, BASE + 0x2000, &mut pfns)
        .with_request(Request::new(0, req))
        .with_notifier(&mm);
    let env = Env::new(&mm, &mm);
    let r = range_fault_owning_lock(&env, &mut range, &Options::default(), &mut Stats::default());
    assert_eq!(r, Err(Error::Busy));
    // The restart policy with per-page requests: -EBUSY after any drop.
    let mm = mm_with(2, RW, 0, FaultMode::Userfault { resolve: true });
    let mut pfns = [req; 2];
    let mut range = Range::new(BASE, BASE + 0x2000, &mut pfns)
        .with_request(Request::new(0, req))
        .with_notifier(&mm);
    let env = Env::new(&mm, &mm);
    let opts = Options::with_policy(Policy::Restart);
    assert_eq!(
        range_fault_owning_lock(&env, &mut range, &opts, &mut Stats::default()),
        Err(Error::Busy)
    );
    // With default flags only there is nothing to re-read: it restarts.
    let mm = mm_with(2, RW, 0, FaultMode::Userfault { resolve: true });
    mm.invalidate_on_drop(1);
    let mut pfns = [0u64; 2];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!((r, stats.restarts), (Ok(()), 1));
}

#[test]
fn an_invalidation_during_the_drop_restarts_with_a_new_sequence() {
    let mm = mm_with(8, RW, 0, FaultMode::Userfault { resolve: true });
    mm.invalidate_on_drop(1);
    let mut pfns = [0u64; 8];
    let (r, stats, seq) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert!(all_writable(&pfns));
    assert_eq!(stats.restarts, 1);
    assert_eq!(stats.resumes, 7);
    assert_eq!(
        seq,
        mm.read_begin(),
        "output is valid against the new sequence"
    );
}

#[test]
fn locked_entry_point_resumes_and_hands_back_the_retaken_lock() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    range.notifier_seq = mm.read_begin();
    let env = Env::new(&mm, &mm).with_signals(&mm);
    let mut stats = Stats::default();
    let out = range_fault_may_unlock(&env, &mut range, mm.read(), &Options::default(), &mut stats);
    assert_eq!(out.result, Ok(()));
    assert!(out.guard.is_some());
    assert_eq!(mm.readers(), 1);
    drop(out);
    assert_eq!(stats.lock_drops, 4);
    assert!(all_writable(&pfns));
    // The retried faults carry ALLOW_RETRY|KILLABLE.
    let (log, n) = mm.faults();
    let want =
        FaultFlags::REMOTE | FaultFlags::WRITE | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    assert!(log[..n].iter().all(|f| f.flags == want.bits()));
}

#[test]
fn locked_entry_point_restart_policy_returns_busy_unlocked() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    let env = Env::new(&mm, &mm);
    let opts = Options::with_policy(Policy::Restart);
    let out = range_fault_may_unlock(&env, &mut range, mm.read(), &opts, &mut Stats::default());
    assert_eq!(out.result, Err(Error::Busy));
    assert!(out.guard.is_none());
    assert_eq!(mm.readers(), 0);
}

#[test]
fn locked_entry_point_busy_when_sequence_moved_during_drop() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    mm.invalidate_on_drop(1);
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    range.notifier_seq = mm.read_begin();
    let env = Env::new(&mm, &mm);
    let out = range_fault_may_unlock(
        &env,
        &mut range,
        mm.read(),
        &Options::default(),
        &mut Stats::default(),
    );
    assert_eq!(out.result, Err(Error::Busy));
    assert!(out.guard.is_some(), "re-taken lock handed back with -EBUSY");
}

#[test]
fn retried_fault_of_the_same_page_carries_tried_and_a_dead_handler_hits_the_budget() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: false });
    mm.set_fault_cost_ns(1_000);
    let mut pfns = [0u64; 4];
    let opts = Options {
        timeout_ns: 10_000,
        ..Options::default()
    };
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(r.unwrap_err().to_errno(), -16);
    let (log, n) = mm.faults();
    assert!((2..=11).contains(&n), "bounded by the budget: {n}");
    assert_eq!(log[0].flags & FaultFlags::TRIED.bits(), 0);
    assert!(log[1..n]
        .iter()
        .all(|f| f.addr == BASE && f.flags & FaultFlags::TRIED.bits() != 0));
    assert_eq!(stats.tried_faults as usize, n - 1);
    // Nothing was mapped: the entries still hold their (zero) input.
    assert_eq!(pfns, [0; 4]);
}

#[test]
fn budget_is_reset_by_progress() {
    // Each fault costs 1000 ns and the budget is 2500 ns: without the reset
    // after each resolved lock-dropping fault, 16 faults could never finish.
    let mm = mm_with(16, RW, 0, FaultMode::Userfault { resolve: true });
    mm.set_fault_cost_ns(1_000);
    let mut pfns = [0u64; 16];
    let opts = Options {
        timeout_ns: 2_500,
        ..Options::default()
    };
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Ok(()));
    assert_eq!(stats.lock_drops, 16);
}

#[test]
fn a_slow_fault_that_resolved_its_page_is_progress_not_expiry() {
    // Each fault takes 150 ms and resolves its page; the budget is 40 ms.
    // The re-walk after the drop sees the progress before expiry is judged.
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    mm.set_fault_cost_ns(150_000_000);
    let mut pfns = [0u64; 4];
    let opts = Options {
        timeout_ns: 40_000_000,
        ..Options::default()
    };
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Ok(()));
    assert_eq!(stats.lock_drops, 4);
    assert!(all_writable(&pfns));
    // The same slow handler resolving nothing hits the budget at the first
    // re-walk that finds no progress.
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: false });
    mm.set_fault_cost_ns(150_000_000);
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Err(Error::Busy));
    assert_eq!(stats.faults, 1);
}

#[test]
fn fatal_signal_during_the_wait_is_eintr_and_unlocked() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    mm.signal_on_drop();
    let mut pfns = [0u64; 4];
    let (r, _, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Err(Error::Intr));
    // A pending signal before the call: the killable lock fails.
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    mm.set_fatal(true);
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Err(Error::Intr));
    assert_eq!(stats.faults, 0);
}

#[test]
fn nowait_returns_eagain_without_dropping() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    let mut pfns = [0u64; 4];
    let opts = Options {
        nowait: true,
        ..Options::default()
    };
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Err(Error::Again));
    assert_eq!(stats.lock_drops, 0);
    let (log, _) = mm.faults();
    assert_ne!(log[0].flags & FaultFlags::RETRY_NOWAIT.bits(), 0);
    // Populated memory needs no sleeping fault: no-wait succeeds.
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    let (r, _, _) = unlocked(&mm, &mut pfns, REQ_RW, opts);
    assert_eq!(r, Ok(()));
    assert!(all_writable(&pfns));
}

#[test]
fn completed_faults_and_precise_errnos_on_the_unlocked_path() {
    let mm = mm_with(4, RW, 0, FaultMode::Completed);
    let mut pfns = [0u64; 4];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!((stats.lock_drops, stats.tried_faults), (4, 0));
    for (mode, err) in [
        (VmFaultError::Oom, Error::NoMem),
        (VmFaultError::HwPoison, Error::HwPoison),
        (VmFaultError::Sigbus, Error::Fault),
    ] {
        let mm = mm_with(4, RW, 0, FaultMode::Fail(mode));
        let (r, _, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
        assert_eq!(r, Err(err));
    }
}

#[test]
fn write_request_on_read_only_vma_is_eperm() {
    let mm = mm_with(4, VmFlags::READ, 0, FaultMode::Populate);
    let mut pfns = [0u64; 4];
    let (r, _, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r.map_err(Error::to_errno), Err(-1));
    let (r, _, _) = unlocked(
        &mm,
        &mut pfns,
        PfnFlags::REQ_FAULT.bits(),
        Options::default(),
    );
    assert_eq!(r, Ok(()));
    assert!(pfns.iter().all(|&p| HmmPfn(p).is_valid()));
}

#[test]
fn migration_entries_are_waited_on_then_resumed() {
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    assert!(mm.map(BASE + 0x2000, 1, Leaf::Migration));
    let mut pfns = [0u64; 4];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!((stats.migration_waits, mm.migration_waits()), (1, 1));
    assert!(all_writable(&pfns));
}

#[test]
fn a_fatal_signal_during_a_migration_wait_is_eintr() {
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    // Every page is present; page 2 is under migration.
    for p in [0u64, 1, 3] {
        assert!(mm.map(BASE + p * PAGE_SIZE, 1, rw_page(9 + p)));
    }
    assert!(mm.map(BASE + 0x2000, 1, Leaf::Migration));
    mm.signal_on_migration_wait();
    let mut pfns = [0u64; 4];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Err(Error::Intr));
    assert_eq!((stats.migration_waits, stats.faults), (1, 0));
}

#[test]
fn hugetlb_faults_work_on_the_lock_dropping_path() {
    let mm = mm_with(
        1024,
        RW | VmFlags::HUGETLB,
        PMD_ORDER,
        FaultMode::Userfault { resolve: true },
    );
    let mut pfns = vec![0u64; 1024];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!(stats.lock_drops, 2, "one userfault per 2 MiB huge page");
    assert!(pfns
        .iter()
        .all(|&p| HmmPfn(p).is_writable() && HmmPfn(p).order() == 9));
}

/// A handler that breaks the contract: it drops the lock although the
/// fault did not allow it.
struct Rogue;

impl FaultHandler<TestMm> for Rogue {
    fn fault<'a>(
        &self,
        guard: TestGuard<'a>,
        _addr: u64,
        _flags: FaultFlags,
    ) -> FaultOutcome<TestGuard<'a>>
    where
        TestMm: 'a,
    {
        drop(guard);
        FaultOutcome::Retry
    }
    fn migration_wait(&self, _guard: &TestGuard<'_>, _addr: u64) {}
}

#[test]
fn a_handler_dropping_the_lock_without_allow_retry_is_efault_not_a_crash() {
    let mm = mm_with(2, RW, 0, FaultMode::Populate);
    let mut pfns = [0u64; 2];
    let mut range = Range::new(BASE, BASE + 0x2000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    let env = Env::new(&mm, &Rogue);
    let out = range_fault(&env, &mut range, mm.read(), &mut Stats::default());
    assert_eq!(out.result, Err(Error::Fault));
    assert!(out.guard.is_none());
    assert_eq!(mm.readers(), 0);
    // Same with no-wait on the owning path.
    let opts = Options {
        nowait: true,
        ..Options::default()
    };
    let r = range_fault_owning_lock(&env, &mut range, &opts, &mut Stats::default());
    assert_eq!(r, Err(Error::Fault));
}

#[test]
fn snapshot_does_not_fault_and_keeps_sticky_bits() {
    let mm = mm_with(4, RW, 0, FaultMode::Userfault { resolve: true });
    assert!(mm.map(BASE, 1, rw_page(9)));
    let mut pfns = [PfnFlags::DMA_MAPPED.bits() | PfnFlags::P2PDMA.bits(); 4];
    let (r, stats, _) = unlocked(&mm, &mut pfns, 0, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!(stats.faults, 0);
    let sticky = PfnFlags::DMA_MAPPED.bits() | PfnFlags::P2PDMA.bits();
    assert_eq!(pfns[0], sticky | HmmPfn::cpu_flags(true, 0) | 9);
    assert_eq!(&pfns[1..], &[sticky; 3]);
}

#[test]
fn caller_stats_saturate_instead_of_overflowing() {
    let mm = mm_with(4, RW, 0, FaultMode::Populate);
    let mut pfns = [0u64; 4];
    let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    range.notifier_seq = mm.read_begin();
    let env = Env::new(&mm, &mm);
    let full = u64::MAX;
    let mut stats = Stats {
        walks: full,
        faults: full,
        pages_filled: full,
        leaves: full,
        ..Stats::default()
    };
    let out = range_fault(&env, &mut range, mm.read(), &mut stats);
    assert_eq!(out.result, Ok(()));
    drop(out);
    assert_eq!(
        (stats.walks, stats.faults, stats.pages_filled, stats.leaves),
        (full, full, full, full)
    );
    assert!(all_writable(&pfns));
}

#[test]
fn one_fault_per_huge_leaf_and_one_per_small_page() {
    // Two 2 MiB hugetlb pages: two faults, on every entry point.
    let huge = || mm_with(1024, RW | VmFlags::HUGETLB, PMD_ORDER, FaultMode::Populate);
    let mm = huge();
    let mut pfns = vec![0u64; 1024];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!(stats.faults, 2, "one handler call per 2 MiB leaf");
    assert!(pfns.iter().all(|&p| HmmPfn(p).order() == 9));
    let (log, n) = mm.faults();
    let addrs: Vec<u64> = log[..n].iter().map(|f| f.addr).collect();
    assert_eq!(
        addrs,
        [BASE, BASE + (2 << 20)],
        "faults at each leaf's first page"
    );

    let mm = huge();
    let mut pfns = vec![0u64; 1024];
    let mut range = Range::new(BASE, BASE + (4 << 20), &mut pfns)
        .with_default_flags(REQ_RW)
        .with_notifier(&mm);
    range.notifier_seq = mm.read_begin();
    let env = Env::new(&mm, &mm);
    let mut stats = Stats::default();
    let out = range_fault(&env, &mut range, mm.read(), &mut stats);
    assert_eq!(out.result, Ok(()));
    drop(out);
    assert_eq!(stats.faults, 2);

    // 4 KiB pages: a fault per page, and no page faulted twice.
    let mm = mm_with(8, RW, 0, FaultMode::Populate);
    let mut pfns = [0u64; 8];
    let (r, stats, _) = unlocked(&mm, &mut pfns, REQ_RW, Options::default());
    assert_eq!(r, Ok(()));
    assert_eq!(stats.faults, 8);
    assert!(all_writable(&pfns));
}

#[test]
fn a_fatal_signal_before_the_first_fault_ends_only_the_lock_dropping_modes() {
    // A signal already pending when the caller's walk first needs a fault:
    // the lock-dropping locked entry point returns -EINTR without faulting
    // (GUP checks before every page) and hands the lock back; Linux's
    // hmm_range_fault does not look at signals and completes.
    for may_unlock in [true, false] {
        let mm = mm_with(4, RW, 0, FaultMode::Populate);
        mm.set_fatal(true);
        let mut pfns = [0u64; 4];
        let mut range = Range::new(BASE, BASE + 0x4000, &mut pfns)
            .with_default_flags(REQ_RW)
            .with_notifier(&mm);
        range.notifier_seq = mm.read_begin();
        let env = Env::new(&mm, &mm).with_signals(&mm);
        let mut stats = Stats::default();
        let out = if may_unlock {
            range_fault_may_unlock(&env, &mut range, mm.read(), &Options::default(), &mut stats)
        } else {
            range_fault(&env, &mut range, mm.read(), &mut stats)
        };
        assert!(out.guard.is_some(), "the caller's lock is handed back");
        drop(out.guard);
        if may_unlock {
            assert_eq!(out.result, Err(Error::Intr));
            assert_eq!((stats.faults, mm.faults().1), (0, 0));
            assert_eq!(pfns, [0; 4]);
        } else {
            assert_eq!(out.result, Ok(()));
            assert_eq!(stats.faults, 4);
            assert!(all_writable(&pfns));
        }
    }
}
