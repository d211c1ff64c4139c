//! Asynchronous guest faults (KVM-style async page faults): a no-wait fault
//! that would block in the host is deferred to a worker, so the vCPU can
//! run something else meanwhile.
//!
//! 1. The vCPU calls [`GuestMemory::handle_fault_nowait`]. The window fault
//!    runs with hmm-core's `Options { nowait: true }`: host faults carry
//!    `RETRY_NOWAIT`, and one that would sleep (a userfaultfd-registered
//!    page nobody has supplied yet) ends the range fault with `-EAGAIN`
//!    without dropping the host lock. The fault is then queued and the vCPU
//!    gets [`GuestFault::Pending`] with an [`AsyncToken`] (to hand to the
//!    guest as the "page not present" token, or to halt on). A second fault
//!    on a window already queued gets the same token.
//! 2. A worker takes queued faults with [`GuestMemory::claim_async`] and
//!    completes each with [`GuestMemory::complete_async`], which runs the
//!    blocking fault path (the host fault may sleep and drop its lock) and
//!    maps the window. The returned [`Completion`] is the "page ready"
//!    event the worker delivers to the vCPU.
//! 3. The vCPU collects the outcome with [`GuestMemory::poll_async`], which
//!    frees the slot, and resumes the guest.
//!
//! If every slot is busy a no-wait fault returns [`GuestFault::Retry`] and
//! counts `async_full`; the vCPU should then wait for a completion (KVM's
//! "APF halt") rather than spin.

use hmm_core::IntervalNotifier;

use super::fault::WindowOutcome;
pub use super::outcome::AsyncToken;
use super::outcome::{Access, GuestFault};
use super::{bump, GuestMemory};
use crate::alloc::TableAlloc;
use crate::descriptor::{Format, Perm};
use crate::region::RegionId;
use crate::tlb::TlbFlush;
use hmm_core::Host;

/// How often a worker retries a deferred fault whose result was
/// invalidated before it could map it.
pub const ASYNC_ATTEMPTS: u32 = 8;

/// The state of a deferred fault, as the vCPU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsyncStatus {
    /// Queued or running.
    Pending,
    /// Completed with this outcome; the token is now released.
    Done(GuestFault),
    /// No such deferred fault (already collected, cancelled or never
    /// issued).
    Unknown,
}

/// A completed deferred fault: the "page ready" event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Completion {
    /// The deferred fault.
    pub token: AsyncToken,
    /// The GPA that faulted.
    pub gpa: u64,
    /// What the blocking fault path did.
    pub outcome: GuestFault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Queued,
    Running,
    Done(GuestFault),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct AsyncSlot {
    state: State,
    gen: u32,
    gpa: u64,
    window: u64,
    access: Perm,
    region: Option<RegionId>,
}

impl AsyncSlot {
    pub(crate) const FREE: AsyncSlot = AsyncSlot {
        state: State::Free,
        gen: 0,
        gpa: 0,
        window: 0,
        access: Perm::empty(),
        region: None,
    };
}

fn token(slot: usize, gen: u32) -> AsyncToken {
    AsyncToken {
        slot: slot as u16,
        gen,
    }
}

impl<'h, F, A, T, H, N, const R: usize, const P: usize> GuestMemory<'h, F, A, T, H, N, R, P>
where
    F: Format,
    A: TableAlloc,
    T: TlbFlush,
    H: Host,
    N: IntervalNotifier + ?Sized,
{
    /// Handle a second-stage fault without blocking in the host. Returns
    /// [`GuestFault::Pending`] when the host fault would block; otherwise
    /// what [`handle_fault`](GuestMemory::handle_fault) would.
    pub fn handle_fault_nowait(&self, gpa: u64, access: Access) -> GuestFault {
        bump(&self.counters.faults, 1);
        let out = match self.fault_window(gpa, access, true) {
            WindowOutcome::Done(out) => out,
            WindowOutcome::WouldBlock { id, window } => {
                self.queue(id, window, gpa, access).unwrap_or_else(|| {
                    bump(&self.counters.async_full, 1);
                    GuestFault::Retry
                })
            }
        };
        self.count(out);
        out
    }

    fn queue(&self, id: RegionId, window: u64, gpa: u64, access: Access) -> Option<GuestFault> {
        let mut slots = self.slots.lock();
        for (i, s) in slots.iter_mut().enumerate() {
            let same = s.region == Some(id) && s.window == window;
            if same && s.state == State::Queued {
                s.access |= access;
                return Some(GuestFault::Pending(token(i, s.gen)));
            }
            if same && s.state == State::Running && s.access.contains(access) {
                return Some(GuestFault::Pending(token(i, s.gen)));
            }
        }
        let (i, s) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.state == State::Free)?;
        s.gen = s.gen.wrapping_add(1).max(1);
        s.state = State::Queued;
        s.gpa = gpa;
        s.window = window;
        s.access = access;
        s.region = Some(id);
        Some(GuestFault::Pending(token(i, s.gen)))
    }

    /// Take the oldest-slot queued fault for a worker to complete.
    pub fn claim_async(&self) -> Option<AsyncToken> {
        let mut slots = self.slots.lock();
        let (i, s) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.state == State::Queued)?;
        s.state = State::Running;
        Some(token(i, s.gen))
    }

    /// Complete a claimed fault with the blocking path (which may sleep in
    /// the host), record its outcome for [`poll_async`](Self::poll_async)
    /// and return the completion event. `None` if `token` is not a claimed,
    /// running fault.
    pub fn complete_async(&self, token: AsyncToken) -> Option<Completion> {
        let (gpa, access) = {
            let slots = self.slots.lock();
            let s = slots.get(usize::from(token.slot))?;
            if s.gen != token.gen || s.state != State::Running {
                return None;
            }
            (s.gpa, s.access)
        };
        let mut outcome = GuestFault::Retry;
        for _ in 0..ASYNC_ATTEMPTS {
            match self.fault_window(gpa, access, false) {
                WindowOutcome::Done(GuestFault::Retry) => continue,
                WindowOutcome::Done(o) => {
                    outcome = o;
                    break;
                }
                WindowOutcome::WouldBlock { .. } => break,
            }
        }
        bump(&self.counters.async_completed, 1);
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get_mut(usize::from(token.slot)) {
            if s.gen == token.gen && s.state == State::Running {
                s.state = State::Done(outcome);
            }
        }
        Some(Completion {
            token,
            gpa,
            outcome,
        })
    }

    /// The state of a deferred fault; a `Done` result releases the token.
    pub fn poll_async(&self, token: AsyncToken) -> AsyncStatus {
        let mut slots = self.slots.lock();
        let Some(s) = slots.get_mut(usize::from(token.slot)) else {
            return AsyncStatus::Unknown;
        };
        if s.gen != token.gen {
            return AsyncStatus::Unknown;
        }
        match s.state {
            State::Free => AsyncStatus::Unknown,
            State::Queued | State::Running => AsyncStatus::Pending,
            State::Done(out) => {
                s.state = State::Free;
                s.region = None;
                AsyncStatus::Done(out)
            }
        }
    }

    /// Drop a deferred fault (the vCPU is going away). A worker running it
    /// finishes, but its outcome is discarded.
    pub fn cancel_async(&self, token: AsyncToken) -> bool {
        let mut slots = self.slots.lock();
        match slots.get_mut(usize::from(token.slot)) {
            Some(s) if s.gen == token.gen && s.state != State::Free => {
                s.state = State::Free;
                s.region = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ept::Ept;
    use crate::region::RegionSpec;
    use crate::testutil::*;
    use crate::{Config, PageSize};
    use hmm_core::doubles::{FaultMode, TestMm};
    use hmm_core::VmFlags;

    const HVA: u64 = 0x7f00_0000_0000;
    const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

    fn region(gpa: u64, hva: u64) -> RegionSpec {
        RegionSpec {
            gpa,
            size: 0x4000,
            hva,
            perm: Perm::R | Perm::W,
        }
    }

    #[test]
    fn would_block_fault_is_deferred_and_completed_by_a_worker() {
        let mm = TestMm::new();
        mm.add_vma(
            HVA,
            HVA + 0x4000,
            RW,
            0,
            FaultMode::Userfault { resolve: true },
        );
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(region(0, HVA), &mm).unwrap();

        let GuestFault::Pending(t) = vm.handle_fault_nowait(0x1000, Perm::R) else {
            panic!("expected pending");
        };
        assert!(leaves(&vm).is_empty(), "nothing mapped while pending");
        assert_eq!(mm.readers(), 0, "the host lock is not held while pending");
        // A second fault on the same window (a write) joins the same token.
        assert_eq!(
            vm.handle_fault_nowait(0x3000, Perm::W),
            GuestFault::Pending(t)
        );
        assert_eq!(vm.poll_async(t), AsyncStatus::Pending);
        assert_eq!(AsyncToken::from_u64(t.to_u64()), t);

        let claimed = vm.claim_async().unwrap();
        assert_eq!(claimed, t);
        assert!(vm.claim_async().is_none());
        let c = vm.complete_async(claimed).unwrap();
        assert_eq!(c.gpa, 0x1000);
        assert_eq!(
            c.outcome,
            GuestFault::Mapped {
                size: PageSize::Size4K,
                leaves: 4
            }
        );
        assert!(vm.complete_async(claimed).is_none(), "completes once");
        assert_eq!(vm.poll_async(t), AsyncStatus::Done(c.outcome));
        assert_eq!(vm.poll_async(t), AsyncStatus::Unknown);
        // The merged write access was honoured: the pages are writable.
        assert!(leaves(&vm).iter().all(|m| m.attrs.perm.contains(Perm::W)));
        assert_eq!(vm.audit(), Ok(4));
        let st = vm.stats();
        assert_eq!((st.pending, st.async_completed), (2, 1));
        // Now resident: a no-wait fault maps directly.
        assert!(matches!(
            vm.handle_fault_nowait(0x2000, Perm::R),
            GuestFault::Mapped { .. }
        ));
    }

    #[test]
    fn full_queue_is_retry_and_cancel_frees_a_slot() {
        let mm = TestMm::new();
        for i in 0..3 {
            let h = HVA + i * M2;
            mm.add_vma(h, h + 0x4000, RW, 0, FaultMode::Userfault { resolve: true });
        }
        let (pool, tlb) = (pool(), CountTlb::default());
        // Two async slots (see `Vm`).
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        for i in 0..3 {
            vm.add_region(region(i * M2, HVA + i * M2), &mm).unwrap();
        }
        let GuestFault::Pending(a) = vm.handle_fault_nowait(0, Perm::R) else {
            panic!()
        };
        let GuestFault::Pending(b) = vm.handle_fault_nowait(M2, Perm::R) else {
            panic!()
        };
        assert_ne!(a, b);
        assert_eq!(vm.handle_fault_nowait(2 * M2, Perm::R), GuestFault::Retry);
        assert_eq!(vm.stats().async_full, 1);
        assert!(vm.cancel_async(a));
        assert!(!vm.cancel_async(a));
        assert_eq!(vm.poll_async(a), AsyncStatus::Unknown);
        let GuestFault::Pending(c) = vm.handle_fault_nowait(2 * M2, Perm::R) else {
            panic!()
        };
        assert_ne!(c, a, "a reused slot gets a new generation");
        // The worker completes b then c; a was cancelled.
        let mut done = 0;
        while let Some(t) = vm.claim_async() {
            assert!(matches!(
                vm.complete_async(t).unwrap().outcome,
                GuestFault::Mapped { .. }
            ));
            done += 1;
        }
        assert_eq!(done, 2);
        assert!(vm.translate(0).is_none());
        assert!(vm.translate(M2).is_some() && vm.translate(2 * M2).is_some());
    }

    #[test]
    fn errors_are_not_deferred() {
        let mm = TestMm::new();
        let (pool, tlb) = (pool(), CountTlb::default());
        let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, Config::default());
        vm.add_region(region(0, HVA), &mm).unwrap();
        // No host VMA at all: -EFAULT, not pending.
        assert_eq!(
            vm.handle_fault_nowait(0, Perm::R),
            GuestFault::Error(crate::FaultError::Host(hmm_core::Error::Fault))
        );
        assert!(vm.claim_async().is_none());
    }
}
