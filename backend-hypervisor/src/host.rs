//! The host address space as the manager sees it: hmm-core's traits bundled
//! into one [`Host`], so the same manager runs over a simulator on a host
//! (threads, userfaultfd) and over firmware's own address space (no
//! threads).

use hmm_core::{Clock, FaultHandler, MmapLock, NoClock, NoSignals, Signals};

/// The host address space backing guest memory.
pub trait Host {
    /// The host mm's lock (and, through its guard, VMAs and page tables).
    type Mm: MmapLock + ?Sized;
    /// The host fault handler.
    type Handler: FaultHandler<Self::Mm> + ?Sized;
    /// Signal state of the faulting context.
    type Signals: Signals + ?Sized;
    /// Clock of the fault retry budget.
    type Clock: Clock + ?Sized;

    /// The mmap lock.
    fn mm(&self) -> &Self::Mm;
    /// The fault handler.
    fn handler(&self) -> &Self::Handler;
    /// The signal state.
    fn signals(&self) -> &Self::Signals;
    /// The clock.
    fn clock(&self) -> &Self::Clock;
}

/// A [`Host`] made of references to its parts.
#[derive(Debug)]
pub struct HostRefs<'a, M: ?Sized, H: ?Sized, S: ?Sized = NoSignals, C: ?Sized = NoClock> {
    /// The mmap lock.
    pub mm: &'a M,
    /// The fault handler.
    pub handler: &'a H,
    /// The signal state.
    pub signals: &'a S,
    /// The clock.
    pub clock: &'a C,
}

impl<M: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Clone for HostRefs<'_, M, H, S, C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> Copy for HostRefs<'_, M, H, S, C> {}

impl<'a, M: ?Sized, H: ?Sized> HostRefs<'a, M, H> {
    /// A host without signals and with a clock that never advances.
    pub fn new(mm: &'a M, handler: &'a H) -> Self {
        HostRefs {
            mm,
            handler,
            signals: &NoSignals,
            clock: &NoClock,
        }
    }
}

impl<'a, M: ?Sized, H: ?Sized, S: ?Sized, C: ?Sized> HostRefs<'a, M, H, S, C> {
    /// Use `signals`.
    pub fn with_signals<S2: ?Sized>(self, signals: &'a S2) -> HostRefs<'a, M, H, S2, C> {
        HostRefs {
            mm: self.mm,
            handler: self.handler,
            signals,
            clock: self.clock,
        }
    }
    /// Use `clock`.
    pub fn with_clock<C2: ?Sized>(self, clock: &'a C2) -> HostRefs<'a, M, H, S, C2> {
        HostRefs {
            mm: self.mm,
            handler: self.handler,
            signals: self.signals,
            clock,
        }
    }
}

impl<M, H, S, C> Host for HostRefs<'_, M, H, S, C>
where
    M: MmapLock + ?Sized,
    H: FaultHandler<M> + ?Sized,
    S: Signals + ?Sized,
    C: Clock + ?Sized,
{
    type Mm = M;
    type Handler = H;
    type Signals = S;
    type Clock = C;
    fn mm(&self) -> &M {
        self.mm
    }
    fn handler(&self) -> &H {
        self.handler
    }
    fn signals(&self) -> &S {
        self.signals
    }
    fn clock(&self) -> &C {
        self.clock
    }
}
