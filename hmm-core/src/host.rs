//! The host side of a range fault, as one bundle: the mmap lock, the fault
//! handler, the caller's signals and the retry budget's clock.
//!
//! These belong to the address space and the calling context, and stay the
//! same from one range fault to the next. The interval notifier belongs to
//! the range and travels in it ([`Range::with_notifier`](super::range::Range::with_notifier)),
//! as Linux pairs the `mm` with `hmm_range.notifier`. So one [`Env`] serves
//! every range of an address space; code that keeps a host around for many
//! ranges (the hypervisor's guest-memory manager, one notifier per guest
//! region) is generic over [`Host`] and asks it for its [`Env`].

use super::clock::{Clock, NoClock};
use super::fault::FaultHandler;
use super::mm::MmapLock;
use super::signal::{NoSignals, Signals};

/// The outside world of a range fault, but for the range's notifier: the
/// mmap lock, the fault handler, signals and the clock, by reference.
#[derive(Debug)]
pub struct Env<'a, L: ?Sized, H: ?Sized, S: ?Sized = NoSignals, C: ?Sized = NoClock> {
    /// The mmap lock of the mirrored address space.
    pub lock: &'a L,
    /// The fault handler.
    pub handler: &'a H,
    /// The caller's signal state.
    pub signals: &'a S,
    /// The clock of the retry budget.
    pub clock: &'a C,
}

impl<L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Clone for Env<'_, L, H, S, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Copy for Env<'_, L, H, S, C> {}

impl<'a, L: ?Sized, H: ?Sized> Env<'a, L, H> {
    /// A host that never sees signals and whose budget never expires.
    pub fn new(lock: &'a L, handler: &'a H) -> Self {
        Env {
            lock,
            handler,
            signals: &NoSignals,
            clock: &NoClock,
        }
    }
}

impl<'a, L: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Env<'a, L, H, S, C> {
    /// Use `signals` for fatal-signal checks.
    pub fn with_signals<S2: ?Sized>(self, signals: &'a S2) -> Env<'a, L, H, S2, C> {
        Env {
            lock: self.lock,
            handler: self.handler,
            signals,
            clock: self.clock,
        }
    }

    /// Use `clock` for the retry budget.
    pub fn with_clock<C2: ?Sized>(self, clock: &'a C2) -> Env<'a, L, H, S, C2> {
        Env {
            lock: self.lock,
            handler: self.handler,
            signals: self.signals,
            clock,
        }
    }
}

/// A host address space and its calling context, as the range-fault entry
/// points need them: anything that can lend an [`Env`]. `Env` itself is
/// one; a type that owns its parts can be another.
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
    fn env(&self) -> Env<'_, Self::Lock, Self::Handler, Self::Signals, Self::Clock>;
}

impl<L, H, S, C> Host for Env<'_, L, H, S, C>
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
    fn env(&self) -> Env<'_, L, H, S, C> {
        *self
    }
}
