//! The vCPU run loop on the boot CPU: enter the guest, decode each exit,
//! serve stage-2 aborts through backend-hypervisor and hypercalls through
//! the host memory manager.
//!
//! * EC 0x24 (data abort from a lower EL) and EC 0x20 (instruction abort):
//!   the faulting IPA is `HPFAR_EL2.FIPA << 8 | FAR_EL2[11:0]`; the access
//!   is a write if ESR.WnR, an instruction fetch for EC 0x20. The fault goes
//!   to [`GuestMemory::handle_fault`](backend_hypervisor::GuestMemory), or
//!   for a no-wait region to `handle_fault_nowait`; a deferred fault halts
//!   the vCPU (the guest has no paravirtual async-PF support) while the
//!   deferred-work queue is drained here, between exits, until the fault is
//!   complete. The guest then retries the access.
//! * EC 0x16 (HVC): the calls of [`crate::guest::hc`].

use core::sync::atomic::{AtomicU64, Ordering};

use backend_hypervisor::{AsyncStatus, GuestFault, Perm};

use crate::entry::{exit, guest_enter, VcpuContext};
use crate::guest::{self, hc};
use crate::hostmm::VmaKind;
use crate::pager;
use crate::report::Tally;
use crate::vm::{self, HOST_MM};

const EC_HVC64: u64 = 0x16;
const EC_IABT_LOW: u64 = 0x20;
const EC_DABT_LOW: u64 = 0x24;

/// Exit counters.
#[derive(Default)]
pub struct ExitCounters {
    /// Stage-2 aborts (data and instruction).
    pub stage2_aborts: AtomicU64,
    /// Of which permission faults.
    pub permission_faults: AtomicU64,
    /// Instruction aborts.
    pub instruction_aborts: AtomicU64,
    /// Hypercalls.
    pub hypercalls: AtomicU64,
    /// Faults deferred to the async worker.
    pub deferred: AtomicU64,
    /// Faults that returned retry.
    pub retries: AtomicU64,
}

/// The counters.
pub static EXITS: ExitCounters = ExitCounters {
    stage2_aborts: AtomicU64::new(0),
    permission_faults: AtomicU64::new(0),
    instruction_aborts: AtomicU64::new(0),
    hypercalls: AtomicU64::new(0),
    deferred: AtomicU64::new(0),
    retries: AtomicU64::new(0),
};

/// Why the run loop stopped.
pub enum Stop {
    /// The guest said it is done.
    Done,
    /// An exit the firmware cannot handle.
    Fatal,
}

/// The faulting IPA of a stage-2 abort.
fn fault_ipa(ctx: &VcpuContext) -> u64 {
    ((ctx.hpfar & 0x0000_0fff_ffff_fff0) << 8) | (ctx.far & 0xfff)
}

/// Run the guest from `entry` with its stack at `sp` until it is done.
pub fn run(entry: u64, sp: u64, tally: &mut Tally) -> Stop {
    let mut ctx = VcpuContext {
        sp_el1: sp,
        elr: entry,
        // EL1h with D, A, I, F masked.
        spsr: 0x3c5,
        ..VcpuContext::default()
    };
    loop {
        let kind = guest_enter(&mut ctx);
        if kind != exit::SYNC {
            crate::println!("vcpu: unexpected exit kind {kind} at {:#x}", ctx.elr);
            return Stop::Fatal;
        }
        let ec = (ctx.esr >> 26) & 0x3f;
        match ec {
            EC_DABT_LOW | EC_IABT_LOW => {
                if !stage2_abort(&ctx, ec) {
                    return Stop::Fatal;
                }
            }
            EC_HVC64 => {
                EXITS.hypercalls.fetch_add(1, Ordering::Relaxed);
                match hypercall(&mut ctx, tally) {
                    Some(stop) => return stop,
                    None => continue,
                }
            }
            _ => {
                crate::println!(
                    "vcpu: unhandled exit EC {ec:#x} ESR {:#x} ELR {:#x} FAR {:#x}",
                    ctx.esr,
                    ctx.elr,
                    ctx.far
                );
                return Stop::Fatal;
            }
        }
    }
}

/// Consecutive faults on one IPA after which the guest is deemed stuck (a
/// mapping the hardware does not walk the way the engine wrote it).
const STUCK_FAULTS: u64 = 10_000;

static LAST_FAULT: AtomicU64 = AtomicU64::new(u64::MAX);
static SAME_FAULTS: AtomicU64 = AtomicU64::new(0);

fn stage2_abort(ctx: &VcpuContext, ec: u64) -> bool {
    EXITS.stage2_aborts.fetch_add(1, Ordering::Relaxed);
    let ipa = fault_ipa(ctx);
    if LAST_FAULT.swap(ipa, Ordering::Relaxed) == ipa {
        if SAME_FAULTS.fetch_add(1, Ordering::Relaxed) + 1 >= STUCK_FAULTS {
            crate::println!(
                "vcpu: {STUCK_FAULTS} consecutive stage-2 faults at IPA {ipa:#x} (ESR {:#x}): the guest makes no progress",
                ctx.esr
            );
            return false;
        }
    } else {
        SAME_FAULTS.store(0, Ordering::Relaxed);
    }
    let dfsc = ctx.esr & 0x3f;
    if dfsc & 0x3c == 0x0c {
        EXITS.permission_faults.fetch_add(1, Ordering::Relaxed);
    }
    let access = if ec == EC_IABT_LOW {
        EXITS.instruction_aborts.fetch_add(1, Ordering::Relaxed);
        Perm::X
    } else if ctx.esr & (1 << 6) != 0 {
        Perm::W
    } else {
        Perm::R
    };
    let nowait = vm::region_of(ipa).is_some_and(|(_, r)| r.nowait);
    let vm = vm::vm();
    let out = if nowait {
        match vm.handle_fault_nowait(ipa, access) {
            GuestFault::Pending(token) => {
                EXITS.deferred.fetch_add(1, Ordering::Relaxed);
                // The vCPU halts until the page is ready; meanwhile this
                // CPU is the async worker (deferred work drained between
                // exits).
                loop {
                    if let Some(t) = vm.claim_async() {
                        vm.complete_async(t);
                    }
                    match vm.poll_async(token) {
                        AsyncStatus::Pending => core::hint::spin_loop(),
                        AsyncStatus::Done(out) => break out,
                        AsyncStatus::Unknown => break GuestFault::Retry,
                    }
                }
            }
            out => out,
        }
    } else {
        vm.handle_fault(ipa, access)
    };
    match out {
        GuestFault::Mapped { .. } => true,
        GuestFault::Retry => {
            EXITS.retries.fetch_add(1, Ordering::Relaxed);
            true
        }
        GuestFault::Pending(_) => true,
        GuestFault::Error(e) => {
            crate::println!(
                "vcpu: guest fault at IPA {ipa:#x} ({access:?}, ESR {:#x}, ELR {:#x}) failed: {e:?}",
                ctx.esr,
                ctx.elr
            );
            false
        }
    }
}

fn hypercall(ctx: &mut VcpuContext, tally: &mut Tally) -> Option<Stop> {
    let [nr, a1, a2, a3] = [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]];
    let ret = match nr {
        hc::REPORT => {
            let name = guest::TESTS.get(a1 as usize).copied().unwrap_or("?");
            tally.record(name, a2 == 0, a2, a3);
            0
        }
        hc::REPORT_MISMATCH => {
            let name = guest::TESTS.get(a1 as usize).copied().unwrap_or("?");
            if a2 < 0x1000 {
                crate::println!(
                    "guest: {name}: item {a2} is {a3:#x}, expected {:#x}",
                    ctx.x[4]
                );
            } else {
                crate::println!(
                    "guest: {name}: IPA {a2:#x} holds {a3:#x}, expected {:#x}",
                    ctx.x[4]
                );
            }
            tally.record(name, false, guest::fail::MISMATCH, a2);
            0
        }
        hc::ZAP => match vm::region_of(a1) {
            Some((_, r)) => {
                let hva = r.hva + (a1 - r.gpa);
                let n = HOST_MM.zap(hva, hva + a2);
                crate::println!(
                    "host: zapped {n} leaves at GPA {a1:#x}+{a2:#x} ({})",
                    r.name
                );
                if r.kind == VmaKind::Userfault {
                    // The post-copy source re-sends what was dropped.
                    HOST_MM.uffd.bump_generation()
                } else {
                    HOST_MM.uffd.generation()
                }
            }
            None => {
                crate::println!("host: zap of unknown GPA {a1:#x}");
                u64::MAX
            }
        },
        hc::MIGRATE => match vm::hva_of(a1) {
            Some(hva) => match HOST_MM.migrate(hva) {
                Ok((old, new)) => {
                    crate::println!("host: migrated GPA {a1:#x}: frame {old:#x} -> {new:#x}");
                    u64::from(HOST_MM.write_u64(hva, a2).is_err())
                }
                Err(e) => {
                    crate::println!("host: migrate GPA {a1:#x} failed: {e:?}");
                    1
                }
            },
            None => 1,
        },
        hc::HOST_WRITE => match vm::hva_of(a1) {
            Some(hva) => u64::from(HOST_MM.write_u64(hva, a2).is_err()),
            None => 1,
        },
        hc::MIGRATE_ASYNC => match vm::hva_of(a1) {
            Some(hva) => u64::from(!pager::post_migrate(hva, a2)),
            None => 1,
        },
        hc::JOB_STATUS => pager::job_status(),
        hc::TOP_GPA => vm::top_gpa(),
        hc::WRPROTECT => match vm::hva_of(a1) {
            Some(hva) => {
                let n = HOST_MM.wrprotect(hva, hva + a2);
                crate::println!("host: write-protected {n} leaves at GPA {a1:#x}+{a2:#x}");
                n
            }
            None => 0,
        },
        hc::COUNTER => {
            let (_, ipa, vmalle1) = vm::TLB.upgrade_counts();
            match a1 {
                guest::ctr::PERMISSION_FAULTS => EXITS.permission_faults.load(Ordering::Relaxed),
                guest::ctr::UPGRADE_FLUSHES => vm::TLB.upgrade_counts().0,
                guest::ctr::TLBI_IPAS2E1 => ipa,
                guest::ctr::TLBI_VMALLE1 => vmalle1,
                guest::ctr::STAGE2_ABORTS => EXITS.stage2_aborts.load(Ordering::Relaxed),
                _ => u64::MAX,
            }
        }
        hc::S2_LEAF => match vm::vm().translate(a1) {
            Some(m) => {
                let perm = [(Perm::R, 1), (Perm::W, 2), (Perm::X, 4)]
                    .iter()
                    .filter(|(p, _)| m.attrs.perm.contains(*p))
                    .fold(0, |acc, (_, b)| acc | b);
                m.pa | perm | (u64::from(m.size.level()) << 4)
            }
            None => u64::MAX,
        },
        hc::DONE => return Some(Stop::Done),
        _ => {
            crate::println!("vcpu: unknown hypercall {nr:#x} ({a1:#x}, {a2:#x}, {a3:#x})");
            u64::MAX
        }
    };
    ctx.x[0] = ret;
    None
}
