//! The fault handler: the one place a page fault happens, outside the walk.
//!
//! The walker never faults. It stops and tells its driver "fault needed at
//! `[addr, end)`, write or not"; the driver then calls
//! [`FaultHandler::fault`] with only the mmap read lock held (no page-table
//! lock, no hugetlb VMA lock, no VMA reference), GUP style. The handler
//! takes the read guard by value:
//!
//! | outcome | lock | Linux analogue |
//! |---|---|---|
//! | [`FaultOutcome::Done`] | kept, guard returned | `handle_mm_fault` returned 0 |
//! | [`FaultOutcome::Error`] | kept, guard returned | `VM_FAULT_ERROR` bits |
//! | [`FaultOutcome::Retry`] | dropped (guard consumed) | `VM_FAULT_RETRY` |
//! | [`FaultOutcome::Completed`] | dropped (guard consumed) | `VM_FAULT_COMPLETED` |
//! | [`FaultOutcome::WouldBlock`] | kept, guard returned | `VM_FAULT_RETRY` with `RETRY_NOWAIT` |
//!
//! A handler may only drop the lock when [`FaultFlags::ALLOW_RETRY`] is set
//! and [`FaultFlags::RETRY_NOWAIT`] is not; the drivers treat a handler that
//! breaks this as a failed fault (`-EFAULT`), never as a crash.

use super::error::Error;
use super::mm::MmapLock;

hmm_bitflags! {
    /// Fault flags (`enum fault_flag`), with Linux's bit values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FaultFlags: u32 {
        /// Write fault.
        const WRITE = 1 << 0;
        /// The handler may drop the mmap lock and return `Retry`.
        const ALLOW_RETRY = 1 << 2;
        /// Do not sleep and do not drop the lock: return `WouldBlock`.
        const RETRY_NOWAIT = 1 << 3;
        /// The wait may be ended by a fatal signal.
        const KILLABLE = 1 << 4;
        /// This is a retry of a fault that returned `Retry`.
        const TRIED = 1 << 5;
        /// The fault is on behalf of user space.
        const USER = 1 << 6;
        /// The fault is on another mm's behalf (a device, GUP remote).
        const REMOTE = 1 << 7;
        /// The wait may be ended by any signal.
        const INTERRUPTIBLE = 1 << 9;
    }
}

/// The error half of a `vm_fault_t` (`VM_FAULT_ERROR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmFaultError {
    /// `VM_FAULT_OOM`.
    Oom,
    /// `VM_FAULT_SIGBUS` (also userfaultfd without `ALLOW_RETRY`).
    Sigbus,
    /// `VM_FAULT_SIGSEGV`.
    Sigsegv,
    /// `VM_FAULT_HWPOISON` or `VM_FAULT_HWPOISON_LARGE`.
    HwPoison,
}

impl VmFaultError {
    /// `vm_fault_to_errno`: OOM is `-ENOMEM`, hwpoison `-EHWPOISON`, the rest
    /// `-EFAULT`.
    pub const fn to_error(self) -> Error {
        match self {
            VmFaultError::Oom => Error::NoMem,
            VmFaultError::HwPoison => Error::HwPoison,
            VmFaultError::Sigbus | VmFaultError::Sigsegv => Error::Fault,
        }
    }
}

/// The result of one fault. `G` is the read guard type.
#[derive(Debug)]
pub enum FaultOutcome<G> {
    /// The page was faulted in; the lock is still held.
    Done(G),
    /// The fault failed; the lock is still held.
    Error(G, VmFaultError),
    /// The handler dropped the lock while waiting; the fault must be retried
    /// (with [`FaultFlags::TRIED`]).
    Retry,
    /// The handler dropped the lock and the fault is complete.
    Completed,
    /// No-wait mode: the fault would have to sleep; the lock is still held.
    WouldBlock(G),
}

/// Something that can fault pages of the address space behind `L`.
pub trait FaultHandler<L: MmapLock + ?Sized> {
    /// Fault the page at `addr` (page aligned) with `flags`
    /// (`handle_mm_fault`). The handler finds the VMA itself through the
    /// guard.
    fn fault<'a>(
        &self,
        guard: L::Guard<'a>,
        addr: u64,
        flags: FaultFlags,
    ) -> FaultOutcome<L::Guard<'a>>
    where
        L: 'a;

    /// Wait for the migration entry at `addr` to be resolved
    /// (`migration_entry_wait`). Returns with the lock still held; the caller
    /// re-walks from `addr`.
    fn migration_wait(&self, guard: &L::Guard<'_>, addr: u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_fault_errno_mapping() {
        assert_eq!(VmFaultError::Oom.to_error().to_errno(), -12);
        assert_eq!(VmFaultError::Sigbus.to_error().to_errno(), -14);
        assert_eq!(VmFaultError::Sigsegv.to_error().to_errno(), -14);
        assert_eq!(VmFaultError::HwPoison.to_error().to_errno(), -133);
    }

    #[test]
    fn fault_flag_values_are_linux() {
        assert_eq!(FaultFlags::WRITE.bits(), 0x1);
        assert_eq!(FaultFlags::ALLOW_RETRY.bits(), 0x4);
        assert_eq!(FaultFlags::RETRY_NOWAIT.bits(), 0x8);
        assert_eq!(FaultFlags::KILLABLE.bits(), 0x10);
        assert_eq!(FaultFlags::TRIED.bits(), 0x20);
        assert_eq!(FaultFlags::REMOTE.bits(), 0x80);
    }
}
