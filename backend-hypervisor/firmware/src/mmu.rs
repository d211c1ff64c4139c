//! The EL2 stage-1 MMU: an identity map of the low 4 GiB with 1 GiB blocks,
//! so that firmware data (spin locks, atomics, page contents) is Normal
//! cacheable memory and the UART/GIC window is Device memory.
//!
//! ```text
//! [0, 1 GiB)      Device-nGnRnE, execute-never   (MMIO of the virt machine)
//! [1 GiB, 4 GiB)  Normal write-back, inner shareable (RAM)
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sysreg::{dsb_ish, isb, write_sysreg};

/// The level-1 table of the EL2 map (39-bit VA, start level 1).
#[repr(C, align(4096))]
struct Level1([AtomicU64; 512]);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static EL2_L1: Level1 = Level1([ZERO; 512]);

/// MAIR_EL2: attribute 0 Device-nGnRnE, attribute 1 Normal write-back.
const MAIR: u64 = 0xff << 8;
const BLOCK: u64 = 0b01;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const XN: u64 = 1 << 54;

/// TCR_EL2: T0SZ 25 (39-bit VA), non-cacheable table walks (the table is
/// written before the MMU is on), 4 KiB granule, 40-bit PA, RES1 bits 23
/// and 31.
const TCR: u64 = 25 | (0b010 << 16) | (1 << 23) | (1 << 31);

/// SCTLR_EL2 bits set: M, C, SA, I, and the RES1 bits of the non-VHE layout.
const SCTLR: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12) | 0x30c5_0830;

/// Fill the table (boot CPU, once, before any CPU enables the MMU).
pub fn build() {
    EL2_L1.0[0].store(ATTR_DEVICE | BLOCK | AF | XN, Ordering::Relaxed);
    for i in 1..4u64 {
        EL2_L1.0[i as usize].store(
            (i << 30) | ATTR_NORMAL | SH_INNER | BLOCK | AF,
            Ordering::Relaxed,
        );
    }
    dsb_ish();
}

/// Turn this CPU's EL2 MMU on with the identity map.
pub fn enable() {
    let ttbr = core::ptr::addr_of!(EL2_L1) as u64;
    // SAFETY: the table identity-maps all of RAM and the MMIO window, so
    // every address in use (code, stack, statics, UART) translates to
    // itself and execution continues seamlessly after the ISB; the TLB is
    // invalidated before the translation regime changes.
    unsafe {
        write_sysreg!("mair_el2", MAIR);
        write_sysreg!("tcr_el2", TCR);
        write_sysreg!("ttbr0_el2", ttbr);
        core::arch::asm!("tlbi alle2", options(nostack));
        dsb_ish();
        isb();
        write_sysreg!("sctlr_el2", SCTLR);
    }
    isb();
}
