//! EL2 entry, the exception vectors and the world switch to the EL1 guest.
//!
//! * `_start`: the boot CPU arrives here at EL2 with the MMU off. It sets its
//!   stack, zeroes BSS, installs the vectors, stops FP/SIMD traps and calls
//!   [`crate::fw_main`].
//! * `_secondary_entry`: where PSCI `CPU_ON` starts the second CPU, with its
//!   stack top in `x0` (the context id); it calls
//!   [`crate::fw_secondary_main`].
//! * `__guest_enter(ctx)`: saves the host's callee-saved registers and stack
//!   pointer in `ctx`, loads the guest's registers from it and `ERET`s to
//!   EL1. Any exception from the guest comes back through the lower-EL
//!   vectors, which store the guest's registers and syndrome into the same
//!   `ctx` (found through `TPIDR_EL2`) and return from `__guest_enter` with
//!   the exit kind (KVM's model of a world switch).
//! * Exceptions taken at EL2 itself are firmware bugs: they print the
//!   syndrome and power off.

use core::arch::global_asm;

/// Exit kinds returned by [`guest_enter`].
pub mod exit {
    /// Synchronous exception from the guest (abort, HVC, trapped instruction).
    pub const SYNC: u64 = 0;
    /// IRQ from the guest.
    pub const IRQ: u64 = 1;
    /// FIQ from the guest.
    pub const FIQ: u64 = 2;
    /// SError from the guest.
    pub const SERROR: u64 = 3;
}

/// The guest's register state and the syndrome of its last exit. The layout
/// is fixed: the assembly below addresses it by offset.
#[repr(C)]
#[derive(Debug, Default, Clone)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    /// SP_EL1.
    pub sp_el1: u64,
    /// ELR_EL2: where the guest resumes.
    pub elr: u64,
    /// SPSR_EL2: the guest's PSTATE on resume.
    pub spsr: u64,
    /// The host stack pointer while the guest runs.
    pub host_sp: u64,
    /// ESR_EL2 of the last exit.
    pub esr: u64,
    /// FAR_EL2 of the last exit.
    pub far: u64,
    /// HPFAR_EL2 of the last exit.
    pub hpfar: u64,
}

const _: () = assert!(core::mem::offset_of!(VcpuContext, sp_el1) == 248);
const _: () = assert!(core::mem::offset_of!(VcpuContext, elr) == 256);
const _: () = assert!(core::mem::offset_of!(VcpuContext, spsr) == 264);
const _: () = assert!(core::mem::offset_of!(VcpuContext, host_sp) == 272);
const _: () = assert!(core::mem::offset_of!(VcpuContext, esr) == 280);
const _: () = assert!(core::mem::offset_of!(VcpuContext, far) == 288);
const _: () = assert!(core::mem::offset_of!(VcpuContext, hpfar) == 296);

/// Stack size of each CPU.
pub const STACK_SIZE: usize = 64 * 1024;

/// One CPU's EL2 stack.
#[repr(C, align(16))]
pub struct Stack(pub [u8; STACK_SIZE]);

/// The boot CPU's stack (its top is taken by `_start`).
#[no_mangle]
pub static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

/// The second CPU's stack.
pub static mut SECONDARY_STACK: Stack = Stack([0; STACK_SIZE]);

/// Top of the second CPU's stack, passed to PSCI `CPU_ON` as its context id.
pub fn secondary_stack_top() -> u64 {
    // Only the address is taken; the memory is used by the second CPU alone.
    core::ptr::addr_of!(SECONDARY_STACK) as u64 + STACK_SIZE as u64
}

extern "C" {
    fn __guest_enter(ctx: *mut VcpuContext) -> u64;
    fn _secondary_entry();
    static el2_vectors: u8;
}

/// Physical address where PSCI `CPU_ON` starts the second CPU.
pub fn secondary_entry_pa() -> u64 {
    _secondary_entry as *const () as usize as u64
}

/// Address of the EL2 vector table.
pub fn vectors() -> u64 {
    core::ptr::addr_of!(el2_vectors) as u64
}

/// Run the guest described by `ctx` until its next exit; returns the exit
/// kind (see [`exit`]) with `ctx` updated.
pub fn guest_enter(ctx: &mut VcpuContext) -> u64 {
    // SAFETY: `__guest_enter` saves every callee-saved register and the stack
    // pointer before the ERET and restores them on the way back, so to Rust
    // it is an ordinary `extern "C"` call; `ctx` stays exclusively borrowed
    // for its duration. Stage 2 (set up by the caller) confines the guest to
    // the memory the firmware mapped for it.
    unsafe { __guest_enter(ctx) }
}

global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, 9f
    ldr     x1, =BOOT_STACK
    add     x1, x1, #{stack_size}
    mov     sp, x1
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  bl      __el2_common_init
    bl      fw_main
9:  wfe
    b       9b

.global _secondary_entry
_secondary_entry:
    mov     sp, x0
    bl      __el2_common_init
    bl      fw_secondary_main
8:  wfe
    b       8b

// Per-CPU EL2 setup that must precede any Rust code: vectors, no FP/SIMD
// traps to EL2 (CPTR_EL2 RES1 bits with TFP = 0).
__el2_common_init:
    ldr     x1, =el2_vectors
    msr     vbar_el2, x1
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    isb
    ret

.text
.global __guest_enter
__guest_enter:
    stp     x29, x30, [sp, #-16]!
    stp     x27, x28, [sp, #-16]!
    stp     x25, x26, [sp, #-16]!
    stp     x23, x24, [sp, #-16]!
    stp     x21, x22, [sp, #-16]!
    stp     x19, x20, [sp, #-16]!
    str     x18, [sp, #-16]!
    mov     x1, sp
    str     x1, [x0, #272]
    msr     tpidr_el2, x0
    ldr     x1, [x0, #248]
    msr     sp_el1, x1
    ldr     x1, [x0, #256]
    msr     elr_el2, x1
    ldr     x1, [x0, #264]
    msr     spsr_el2, x1
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret
    dsb     nsh
    isb

// Guest exit: x0 = exit kind; the guest's x0 and x1 are on the stack.
__guest_exit:
    mrs     x1, tpidr_el2
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    mrs     x2, sp_el1
    str     x2, [x1, #248]
    mrs     x2, elr_el2
    str     x2, [x1, #256]
    mrs     x2, spsr_el2
    str     x2, [x1, #264]
    mrs     x2, esr_el2
    str     x2, [x1, #280]
    mrs     x2, far_el2
    str     x2, [x1, #288]
    mrs     x2, hpfar_el2
    str     x2, [x1, #296]
    ldr     x2, [x1, #272]
    mov     sp, x2
    ldr     x18, [sp], #16
    ldp     x19, x20, [sp], #16
    ldp     x21, x22, [sp], #16
    ldp     x23, x24, [sp], #16
    ldp     x25, x26, [sp], #16
    ldp     x27, x28, [sp], #16
    ldp     x29, x30, [sp], #16
    ret

// An exception taken at EL2 itself: x0 = vector slot.
__el2_unexpected:
    mrs     x1, esr_el2
    mrs     x2, elr_el2
    mrs     x3, far_el2
    bl      el2_unexpected
7:  wfe
    b       7b

.macro VEC_EL2 slot
    .balign 0x80
    mov     x0, #\slot
    b       __el2_unexpected
.endm

.macro VEC_GUEST kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       __guest_exit
.endm

.balign 0x800
.global el2_vectors
el2_vectors:
    VEC_EL2 0
    VEC_EL2 1
    VEC_EL2 2
    VEC_EL2 3
    VEC_EL2 4
    VEC_EL2 5
    VEC_EL2 6
    VEC_EL2 7
    VEC_GUEST 0
    VEC_GUEST 1
    VEC_GUEST 2
    VEC_GUEST 3
    VEC_EL2 12
    VEC_EL2 13
    VEC_EL2 14
    VEC_EL2 15
"#,
    stack_size = const STACK_SIZE,
);
