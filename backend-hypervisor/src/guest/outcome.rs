//! What a guest fault gives back to the vCPU: [`GuestFault`] (mapped,
//! retry, pending, error), its [`FaultError`]s and the [`AsyncToken`] of a
//! deferred fault. The fault path and the no-wait path both produce these,
//! so they live apart from both.

use hmm_core::Error;

use crate::descriptor::{PageSize, Perm};
use crate::pagetable::MapError;

/// A guest access that faulted.
pub type Access = Perm;

/// Why a guest fault cannot be resolved. The vCPU reflects it to the guest
/// or to the VMM (an MMIO exit, a machine check, a kill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultError {
    /// No region contains the GPA.
    NoRegion,
    /// The region does not allow the access.
    Permission {
        /// What the region allows.
        allowed: Perm,
        /// What the guest attempted.
        access: Perm,
    },
    /// The host could not provide the page: hmm-core's error (`-EFAULT`
    /// for an unmapped or inaccessible host range, `-EPERM` for a write to
    /// a read-only host mapping, `-EHWPOISON`, `-ENOMEM`, `-EINTR` for a
    /// fatal signal, ...).
    Host(Error),
    /// No table page was available to map it.
    NoTableMemory,
    /// The second-stage table refused the mapping (a corrupt table).
    Table(MapError),
    /// The host frame's physical address does not fit the format's output
    /// address field.
    AddressTooWide,
}

/// What became of a guest fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestFault {
    /// The GPA is mapped; re-enter the guest.
    Mapped {
        /// Size of the leaf now mapping the faulting GPA.
        size: PageSize,
        /// Leaves this fault installed or updated.
        leaves: u32,
    },
    /// Nothing was mapped because the host changed meanwhile; re-enter the
    /// guest (it faults again).
    Retry,
    /// No-wait mode only: the host fault would block; a worker completes it
    /// (see [`async_pf`](super::async_pf)).
    Pending(AsyncToken),
    /// The fault cannot be resolved.
    Error(FaultError),
}

/// Identifies one deferred fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsyncToken {
    /// The async slot (`guest::async_pf`).
    pub(super) slot: u16,
    /// The slot's generation when the fault was deferred.
    pub(super) gen: u32,
}

impl AsyncToken {
    /// The token as one word (for a paravirtual "page not present" event).
    pub const fn to_u64(self) -> u64 {
        ((self.gen as u64) << 16) | self.slot as u64
    }
    /// The token from [`AsyncToken::to_u64`]'s word.
    pub const fn from_u64(v: u64) -> Self {
        AsyncToken {
            slot: v as u16,
            gen: (v >> 16) as u32,
        }
    }
}
