//! PSCI calls to QEMU's firmware emulation, by `SMC` (the conduit when EL2 is
//! implemented and EL3 is not).

/// `SYSTEM_OFF`.
const SYSTEM_OFF: u64 = 0x8400_0008;
/// `CPU_ON` (SMC64).
const CPU_ON: u64 = 0xc400_0003;

fn call(fid: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: u64;
    // SAFETY: an SMC with a PSCI function id is handled by QEMU's PSCI
    // emulation; it clobbers only x0..x3 per the SMC calling convention
    // (SMCCC: x0..x17 may be clobbered, declared below).
    unsafe {
        core::arch::asm!(
            "smc #0",
            inout("x0") fid => ret,
            inout("x1") a1 => _,
            inout("x2") a2 => _,
            inout("x3") a3 => _,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack),
        );
    }
    ret as i64
}

/// Power the machine off (QEMU exits with status 0).
pub fn system_off() -> ! {
    call(SYSTEM_OFF, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// Start CPU `mpidr` at physical address `entry` with `context` in `x0`.
/// Returns the PSCI status (0 on success).
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> i64 {
    call(CPU_ON, mpidr, entry, context)
}
