//! Fatal-signal checks (`fatal_signal_pending(current)`).

/// The calling task's signal state.
pub trait Signals {
    /// Whether a fatal signal is pending for the caller.
    fn fatal_signal_pending(&self) -> bool;
}

/// A caller that never receives signals (firmware, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignals;

impl Signals for NoSignals {
    fn fatal_signal_pending(&self) -> bool {
        false
    }
}
