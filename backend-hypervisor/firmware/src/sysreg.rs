//! System-register access and barriers used by the firmware.

/// Read a system register by name: `read!("esr_el2")`.
macro_rules! read_sysreg {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a system register has no side effect on memory;
        // the register named is accessible at EL2.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// Write a system register by name: `write!("vbar_el2", v)`. The caller
/// states why the write is sound with a `// SAFETY:` comment on the
/// enclosing `unsafe` block.
macro_rules! write_sysreg {
    ($reg:literal, $val:expr) => {{
        let v: u64 = $val;
        core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags));
    }};
}

pub(crate) use read_sysreg;
pub(crate) use write_sysreg;

/// `ISB`.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

/// `DSB ISH`.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// `DSB NSH`: completes this CPU's non-broadcast TLB maintenance.
#[inline(always)]
pub fn dsb_nsh() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb nsh", options(nostack, preserves_flags)) };
}

/// `DSB ISHST`.
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// `SEV`: wake CPUs waiting in `WFE`.
#[inline(always)]
pub fn sev() {
    // SAFETY: an event hint has no memory-safety effect.
    unsafe { core::arch::asm!("sev", options(nomem, nostack, preserves_flags)) };
}

/// `WFE`: wait for an event (or return spuriously).
#[inline(always)]
pub fn wfe() {
    // SAFETY: a wait hint has no memory-safety effect.
    unsafe { core::arch::asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// This CPU's number (MPIDR_EL1.Aff0).
pub fn cpu_id() -> u64 {
    read_sysreg!("mpidr_el1") & 0xff
}

/// The generic timer's counter (CNTPCT_EL0) and frequency.
pub fn counter() -> (u64, u64) {
    isb();
    (read_sysreg!("cntpct_el0"), read_sysreg!("cntfrq_el0"))
}
