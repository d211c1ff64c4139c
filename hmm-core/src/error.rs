//! Errors, with the Linux errno each one stands for.
//!
//! Every failure of this crate is an [`Error`]; [`Error::to_errno`] gives the
//! negative errno a kernel caller of `hmm_range_fault()` would see, so a
//! backend can hand results straight back across an FFI or ioctl boundary.

use core::fmt;

/// A range-fault failure. Each variant is one Linux errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// `-EBUSY`: the range was invalidated (the notifier sequence moved) or the
    /// retry budget ran out; the caller restarts with a fresh sequence.
    Busy,
    /// `-EFAULT`: a requested page cannot be made valid (no VMA, `VM_IO`,
    /// `VM_PFNMAP`, no `VM_READ`, hwpoison, special page, fault error).
    Fault,
    /// `-EPERM`: write requested on a VMA without `VM_WRITE`.
    Perm,
    /// `-EINTR`: a fatal signal is pending.
    Intr,
    /// `-ENOMEM`: the fault handler ran out of memory.
    NoMem,
    /// `-EHWPOISON`: the fault hit a hardware-poisoned page.
    HwPoison,
    /// `-EINVAL`: bad arguments (unaligned, empty or inverted range, a PFN
    /// array whose length does not match the range, end past the
    /// address-space limit).
    Inval,
    /// `-EAGAIN`: no-wait mode and the fault would have to sleep.
    Again,
}

/// Linux errno values (positive), as in `include/uapi/asm-generic/errno*.h`.
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// Interrupted system call.
    pub const EINTR: i32 = 4;
    /// Try again.
    pub const EAGAIN: i32 = 11;
    /// Out of memory.
    pub const ENOMEM: i32 = 12;
    /// Bad address.
    pub const EFAULT: i32 = 14;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// Memory page has hardware error.
    pub const EHWPOISON: i32 = 133;
}

impl Error {
    /// Every variant, for exhaustive tests and tables.
    pub const ALL: [Error; 8] = [
        Error::Busy,
        Error::Fault,
        Error::Perm,
        Error::Intr,
        Error::NoMem,
        Error::HwPoison,
        Error::Inval,
        Error::Again,
    ];

    /// The negative Linux errno, as a kernel function would return it.
    ///
    /// ```
    /// assert_eq!(hmm_core::Error::Busy.to_errno(), -16);
    /// assert_eq!(hmm_core::Error::Perm.to_errno(), -1);
    /// ```
    pub const fn to_errno(self) -> i32 {
        -(match self {
            Error::Busy => errno::EBUSY,
            Error::Fault => errno::EFAULT,
            Error::Perm => errno::EPERM,
            Error::Intr => errno::EINTR,
            Error::NoMem => errno::ENOMEM,
            Error::HwPoison => errno::EHWPOISON,
            Error::Inval => errno::EINVAL,
            Error::Again => errno::EAGAIN,
        })
    }

    /// The error for a negative (or positive) errno, if it is one of ours.
    pub const fn from_errno(e: i32) -> Option<Error> {
        let e = if e < 0 { e.wrapping_neg() } else { e };
        Some(match e {
            errno::EBUSY => Error::Busy,
            errno::EFAULT => Error::Fault,
            errno::EPERM => Error::Perm,
            errno::EINTR => Error::Intr,
            errno::ENOMEM => Error::NoMem,
            errno::EHWPOISON => Error::HwPoison,
            errno::EINVAL => Error::Inval,
            errno::EAGAIN => Error::Again,
            _ => return None,
        })
    }

    /// The errno's symbolic name, e.g. `"EBUSY"`.
    pub const fn name(self) -> &'static str {
        match self {
            Error::Busy => "EBUSY",
            Error::Fault => "EFAULT",
            Error::Perm => "EPERM",
            Error::Intr => "EINTR",
            Error::NoMem => "ENOMEM",
            Error::HwPoison => "EHWPOISON",
            Error::Inval => "EINVAL",
            Error::Again => "EAGAIN",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.to_errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_are_linux() {
        let expect = [-16, -14, -1, -4, -12, -133, -22, -11];
        for (e, v) in Error::ALL.iter().zip(expect) {
            assert_eq!(e.to_errno(), v, "{e:?}");
        }
    }

    #[test]
    fn errno_round_trips() {
        for e in Error::ALL {
            assert_eq!(Error::from_errno(e.to_errno()), Some(e));
            assert_eq!(Error::from_errno(-e.to_errno()), Some(e));
        }
        assert_eq!(Error::from_errno(0), None);
        assert_eq!(Error::from_errno(i32::MIN), None);
        assert_eq!(Error::from_errno(-2), None);
    }
}
