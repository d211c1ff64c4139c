//! The host side of a range fault, as one bundle: the mmap lock, the fault
//! handler, the caller's signals and the retry budget's clock.
//!
//! These belong to the address space and the calling context, and stay the
//! same from one range fault to the next; the interval notifier belongs to
//! the range. So an [`Env`] is a [`HostRefs`] plus the notifier covering
//! one range, as Linux pairs the `mm` with `hmm_range.notifier`. Code that
//! keeps a host around for many ranges (the hypervisor's guest-memory
//! manager, one notifier per guest region) is generic over [`Host`] and
//! pairs it with each range's notifier through
//! [`HostRefs::with_notifier`].

use super::clock::{Clock, NoClock};
use super::driver::Env;
use super::fault::FaultHandler;
use super::mm::MmapLock;
use super::signal::{NoSignals, Signals};

/// A host address space and its calling context, as the range-fault entry
/// points need them.
pub trait Host {
    /// The mmap lock (and, through its guard, VMAs and page tables).
    type Lock: MmapLock + ?Sized;
    /// The fault handler.
    type Handler: FaultHandler<Self::Lock> + ?Sized;
    /// Signal state of the faulting context.
    type Signals: Signals + ?Sized;
    /// Clock of the retry budget.
    type Clock: Clock + ?Sized;

    /// The parts, by reference.
    fn refs(&self) -> HostRefs<'_, Self::Lock, Self::Handler, Self::Signals, Self::Clock>;
}

/// A [`Host`] made of references to its parts.
#[derive(Debug)]
pub struct HostRefs<'a, L: ?Sized, H: ?Sized, S: ?Sized = NoSignals, C: ?Sized = NoClock> {
    /// The mmap lock of the mirrored address space.
    pub lock: &'a L,
    /// The fault handler.
    pub handler: &'a H,
    /// The caller's signal state.
    pub signals: &'a S,
    /// The clock of the retry budget.
    pub clock: &'a C,
}

impl<L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Clone for HostRefs<'_, L, H, S, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Copy for HostRefs<'_, L, H, S, C> {}

impl<'a, L: ?Sized, H: ?Sized> HostRefs<'a, L, H> {
    /// A host that never sees signals and whose budget never expires.
    pub fn new(lock: &'a L, handler: &'a H) -> Self {
        HostRefs {
            lock,
            handler,
            signals: &NoSignals,
            clock: &NoClock,
        }
    }
}

impl<'a, L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> HostRefs<'a, L, H, S, C> {
    /// Use `signals` for fatal-signal checks.
    pub fn with_signals<S2: ?Sized>(self, signals: &'a S2) -> HostRefs<'a, L, H, S2, C> {
        HostRefs {
            lock: self.lock,
            handler: self.handler,
            signals,
            clock: self.clock,
        }
    }

    /// Use `clock` for the retry budget.
    pub fn with_clock<C2: ?Sized>(self, clock: &'a C2) -> HostRefs<'a, L, H, S, C2> {
        HostRefs {
            lock: self.lock,
            handler: self.handler,
            signals: self.signals,
            clock,
        }
    }

    /// This host with the notifier covering one range: what the entry
    /// points take.
    pub fn with_notifier<N: ?Sized>(self, notifier: &'a N) -> Env<'a, L, H, N, S, C> {
        Env {
            host: self,
            notifier,
        }
    }
}

impl<L, H, S, C> Host for HostRefs<'_, L, H, S, C>
where
    L: MmapLock + ?Sized,
    H: FaultHandler<L> + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    type Lock = L;
    type Handler = H;
    type Signals = S;
    type Clock = C;
    fn refs(&self) -> HostRefs<'_, L, H, S, C> {
        *self
    }
}
