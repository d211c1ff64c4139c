//! The equivalence checks shared by the property tests and the fuzz targets.
//!
//! * [`walk_matches`]: `hmm_core::walk` over [`ModelMm`] against
//!   [`reference::walk`] over the same [`Space`]: same stop (or error), same
//!   output words.
//! * [`driver_matches`]: an entry point run to completion (the caller
//!   retrying on `-EBUSY` with a fresh sequence), then judged against the
//!   reference walk of the final address space: success means every entry
//!   equals the reference output (so every requested entry is `VALID`, and
//!   `WRITE` if requested, except device-private pages of the caller's own
//!   device, which are never faulted); an error is either the reference's
//!   own error with the same partial output, or a fault error of the VMA
//!   the reference stops in, with outputs below some page and untouched
//!   inputs from it on (the partial-output contract).

use hmm_core::{
    range_fault, range_fault_may_unlock, range_fault_owning_lock, Env, Error, IntervalNotifier,
    MmapLock, Options, Policy, Range, Request, Stats, VmFaultError, WalkCounters, WalkStop,
    PAGE_SIZE,
};

use crate::model_mm::{BatchStats, ModelMm, PteMode};
use crate::recipe::Case;
use crate::reference::{self, RefRequest, ERROR, STICKY, VALID, WRITE};
use crate::space::{FaultKind, Space};

/// An entry point and its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// `range_fault` (Linux `hmm_range_fault`).
    Linux,
    /// `range_fault_may_unlock` with a policy.
    MayUnlock(Policy),
    /// `range_fault_owning_lock` with a policy.
    OwningLock(Policy),
    /// `range_fault_owning_lock` in no-wait mode.
    OwningLockNowait,
}

impl EntryPoint {
    /// Every entry point and policy.
    pub const ALL: [EntryPoint; 6] = [
        EntryPoint::Linux,
        EntryPoint::MayUnlock(Policy::Resume),
        EntryPoint::MayUnlock(Policy::Restart),
        EntryPoint::OwningLock(Policy::Resume),
        EntryPoint::OwningLock(Policy::Restart),
        EntryPoint::OwningLockNowait,
    ];

    /// Whether a lock drop resumes inside the range (rather than returning
    /// or restarting from its start).
    pub const fn resumes(self) -> bool {
        matches!(
            self,
            EntryPoint::MayUnlock(Policy::Resume) | EntryPoint::OwningLock(Policy::Resume)
        )
    }
}

fn request_of(r: &RefRequest) -> Request {
    Request::new(r.default_flags, r.mask)
}

fn range_of<'p>(case: &Case, pfns: &'p mut [u64]) -> Range<'p> {
    let mut range = Range::new(case.start, case.end, pfns).with_request(request_of(&case.request));
    range.dev_private_owner = case.request.owner;
    range
}

/// How a walk ended, for coverage counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WalkClass {
    /// Filled to the end.
    Done,
    /// Stopped for a fault.
    NeedFault,
    /// Stopped for a migration wait.
    WaitMigration,
    /// Failed with this errno.
    Error(i32),
}

/// Compare `hmm_core::walk` with the reference on `case`.
pub fn walk_matches(case: &Case) -> Result<WalkClass, String> {
    let mut want = case.input.clone();
    let expect = reference::walk(
        &case.space,
        &case.request,
        case.start,
        case.end,
        case.from,
        &mut want,
    );
    let mm = ModelMm::new(case.space.clone(), Default::default(), 0);
    // Once span by span, once with PTE runs as one span, twice with PTE
    // words in batches (two seeds of batch boundaries): outputs must agree.
    let seed = case_seed(case);
    for batch in [
        PteMode::Spans,
        PteMode::Runs,
        PteMode::Batched(seed),
        PteMode::Batched(!seed),
    ] {
        mm.set_pte_mode(batch);
        let mut got = case.input.clone();
        let mut range = range_of(case, &mut got);
        let guard = mm.read();
        let stop = hmm_core::walk(&guard, &mut range, case.from, &mut WalkCounters::default());
        drop(guard);
        if stop != expect {
            return Err(format!(
                "walk stop {stop:?}, reference {expect:?} (PTEs: {batch:?})"
            ));
        }
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            return Err(format!(
                "entry {i} (addr {:#x}, PTEs: {batch:?}): walk {:#018x}, reference {:#018x}",
                case.start + i as u64 * PAGE_SIZE,
                got[i],
                want[i]
            ));
        }
    }
    Ok(match expect {
        Ok(WalkStop::Done) => WalkClass::Done,
        Ok(WalkStop::NeedFault { .. }) => WalkClass::NeedFault,
        Ok(WalkStop::WaitMigration { .. }) => WalkClass::WaitMigration,
        Err(e) => WalkClass::Error(e.to_errno()),
    })
}

/// What the model hands the walker in [`walk_matches`]'s batched walks of
/// `case`, for coverage counting.
pub fn batch_coverage(case: &Case) -> BatchStats {
    let mm = ModelMm::new(case.space.clone(), Default::default(), 0);
    let seed = case_seed(case);
    for mode in [PteMode::Batched(seed), PteMode::Batched(!seed)] {
        mm.set_pte_mode(mode);
        let mut got = case.input.clone();
        let mut range = range_of(case, &mut got);
        let guard = mm.read();
        let _ = hmm_core::walk(&guard, &mut range, case.from, &mut WalkCounters::default());
    }
    mm.batch_stats()
}

/// A seed for the batch boundaries of a case, from its shape.
fn case_seed(case: &Case) -> u64 {
    let mut h = case.start ^ case.end.rotate_left(29) ^ case.from.rotate_left(47);
    for &w in &case.input {
        h = (h ^ w).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// How [`driver_matches`] has the model report PTEs for `case`.
pub fn pte_mode_of(case: &Case) -> PteMode {
    match ((case.start >> 12) ^ case.input.len() as u64) % 3 {
        0 => PteMode::Spans,
        1 => PteMode::Runs,
        _ => PteMode::Batched(case_seed(case)),
    }
}

/// What [`driver_matches`] saw.
#[derive(Debug, Clone, Copy)]
pub struct DriverRun {
    /// The final result.
    pub result: Result<(), Error>,
    /// Calls made (the caller retries on `-EBUSY`).
    pub calls: u32,
    /// The driver's counters over all calls.
    pub stats: Stats,
}

fn fault_error(ep: EntryPoint, kind: FaultKind) -> Option<Error> {
    let linux = ep == EntryPoint::Linux;
    match kind {
        FaultKind::Fail(_) if linux => Some(Error::Fault),
        FaultKind::Fail(VmFaultError::Oom) => Some(Error::NoMem),
        FaultKind::Fail(VmFaultError::HwPoison) => Some(Error::HwPoison),
        FaultKind::Fail(_) => Some(Error::Fault),
        FaultKind::Userfault if linux => Some(Error::Fault),
        FaultKind::Userfault | FaultKind::FileIo if ep == EntryPoint::OwningLockNowait => {
            Some(Error::Again)
        }
        _ => None,
    }
}

/// Run `ep` on `case` to completion and judge it against the reference
/// walk of the final address space.
pub fn driver_matches(case: &Case, ep: EntryPoint) -> Result<DriverRun, String> {
    let mm = ModelMm::new(
        case.space.clone(),
        case.cached.clone(),
        case.invalidate_on_drop,
    );
    // A third of the cases each (chosen by the case's shape) report PTEs
    // one span each, in runs, or as batches of words; the outcome must be
    // the same every way.
    mm.set_pte_mode(pte_mode_of(case));
    let env = Env::new(&mm, &mm);
    let mut stats = Stats::default();
    let max_calls = 4 * case.input.len() as u32 + 8;
    let mut calls = 0;
    let mut pfns;
    let result = loop {
        calls += 1;
        pfns = case.input.clone();
        let mut range = range_of(case, &mut pfns).with_notifier(&mm);
        let result = match ep {
            EntryPoint::Linux => {
                range.notifier_seq = mm.read_begin();
                let out = range_fault(&env, &mut range, mm.read(), &mut stats);
                if out.guard.is_none() {
                    return Err("range_fault returned without the caller's lock".into());
                }
                out.result
            }
            EntryPoint::MayUnlock(policy) => {
                range.notifier_seq = mm.read_begin();
                let opts = Options::with_policy(policy);
                let out = range_fault_may_unlock(&env, &mut range, mm.read(), &opts, &mut stats);
                if mm.readers() != u32::from(out.guard.is_some()) {
                    return Err(format!(
                        "guard returned: {}, readers held: {}",
                        out.guard.is_some(),
                        mm.readers()
                    ));
                }
                out.result
            }
            EntryPoint::OwningLock(policy) => {
                let opts = Options::with_policy(policy);
                range_fault_owning_lock(&env, &mut range, &opts, &mut stats)
            }
            EntryPoint::OwningLockNowait => {
                let opts = Options {
                    nowait: true,
                    ..Options::default()
                };
                range_fault_owning_lock(&env, &mut range, &opts, &mut stats)
            }
        };
        if mm.readers() != 0 {
            return Err(format!("{} read locks leaked", mm.readers()));
        }
        if result != Err(Error::Busy) {
            break result;
        }
        if calls >= max_calls {
            return Err(format!("still -EBUSY after {calls} calls"));
        }
    };
    let run = DriverRun {
        result,
        calls,
        stats,
    };
    judge(case, ep, &mm, result, &pfns)?;
    Ok(run)
}

/// Judge a finished run. Entries filled before a later fault may show an
/// earlier state of the same epoch (a fault populating a huge page also
/// fills pages the walk had already reported empty, which needs no
/// invalidation), so each output entry is accepted if it is the reference
/// output of its page in some state since the last invalidation, and every
/// `VALID` entry must still match the final state (nothing stale).
fn judge(
    case: &Case,
    ep: EntryPoint,
    mm: &ModelMm,
    result: Result<(), Error>,
    pfns: &[u64],
) -> Result<(), String> {
    let space = mm.space();
    let epoch = mm.epoch();
    let req = &case.request;
    let addr = |i: usize| case.start + i as u64 * PAGE_SIZE;
    let acceptable = |i: usize| {
        epoch
            .iter()
            .any(|s| reference::page_output(s, req, addr(i), case.input[i]) == pfns[i])
    };
    let n = pfns.len();
    // Longest prefix of acceptable outputs, shortest suffix of inputs.
    let out_prefix = (0..n).find(|&i| !acceptable(i)).unwrap_or(n);
    let in_suffix = (0..=n)
        .rev()
        .take_while(|&i| i == n || pfns[i] == case.input[i])
        .last()
        .unwrap_or(n);
    // Coherence: a VALID entry has its page's current PFN and order and is
    // WRITE only if the page is.
    for (i, &e) in pfns.iter().enumerate().take(out_prefix) {
        if e & VALID == 0 {
            continue;
        }
        let now = reference::page_output(&space, req, addr(i), case.input[i]);
        let order_pfn = !(VALID | WRITE | ERROR | STICKY);
        if now & VALID == 0
            || now & order_pfn != e & order_pfn
            || (e & WRITE != 0 && now & WRITE == 0)
        {
            return Err(format!(
                "stale entry {i} ({:#x}): {e:#018x}, now {now:#018x}",
                addr(i)
            ));
        }
    }
    let mut want = case.input.clone();
    let expect = reference::walk(&space, req, case.start, case.end, case.start, &mut want);
    match (result, expect) {
        (Ok(()), Ok(WalkStop::Done)) => {
            if out_prefix < n {
                return Err(format!(
                    "success, but entry {out_prefix} ({:#x}) is {:#018x}, not an output of its \
                     page since the last invalidation (now {:#018x})",
                    addr(out_prefix),
                    pfns[out_prefix],
                    want[out_prefix]
                ));
            }
            requested_valid(case, &space, pfns)?;
        }
        (Err(e), Err(r)) if e == r => {}
        (Err(e), Ok(WalkStop::NeedFault { addr: a, .. })) => {
            let kind = space.vma_at(a).map(|v| v.fault);
            let allowed = kind.and_then(|k| fault_error(ep, k));
            if allowed != Some(e) {
                return Err(format!(
                    "{e} with the reference stopped for a fault at {a:#x} in a {kind:?} VMA"
                ));
            }
        }
        (r, e) => {
            return Err(format!("driver {r:?}, reference on the final state {e:?}"));
        }
    }
    if result.is_err() && in_suffix > out_prefix {
        return Err(format!(
            "{result:?}: entries {out_prefix}..{in_suffix} are neither outputs nor untouched \
             inputs (partial-output contract): {pfns:#x?}"
        ));
    }
    Ok(())
}

/// Every entry that requested a fault is `VALID`, and `WRITE` if it
/// requested a write, unless it is a device-private page of the caller's
/// own device (reported as is, never faulted).
fn requested_valid(case: &Case, space: &Space, pfns: &[u64]) -> Result<(), String> {
    let r = &case.request;
    for (i, (&inp, &out)) in case.input.iter().zip(pfns).enumerate() {
        let req = (inp & r.mask) | r.default_flags;
        if req & VALID == 0 {
            continue;
        }
        let addr = case.start + i as u64 * PAGE_SIZE;
        if out & VALID == 0 {
            return Err(format!(
                "requested entry {i} ({addr:#x}) not VALID: {out:#x}"
            ));
        }
        let own = matches!(
            space.entry_at(addr).map(|e| e.leaf),
            Some(hmm_core::Leaf::DevicePrivate { owner, .. }) if Some(owner) == r.owner
        );
        if req & WRITE != 0 && out & WRITE == 0 && !own {
            return Err(format!(
                "write-requested entry {i} ({addr:#x}) not WRITE: {out:#x}"
            ));
        }
    }
    Ok(())
}

impl Case {
    /// Whether a VMA of this case faults like a file with page-cache I/O.
    pub fn has_file_io(&self) -> bool {
        self.space.vmas().any(|v| v.fault == FaultKind::FileIo)
    }
}
