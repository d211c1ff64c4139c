//! # hmm-firmware: hmm-core in a bare-metal hypervisor
//!
//! An aarch64 image that QEMU's `virt` machine boots at EL2
//! (`virtualization=on`). It runs a tiny EL1 guest whose stage-2 faults are
//! served by backend-hypervisor's guest-fault path, which faults the host
//! address space through hmm-core. The host address space is the
//! firmware's own ([`hostmm`]): VMAs, page tables, an mmap lock, interval
//! notifiers, demand-zero and hugetlb memory and userfaultfd-style memory
//! whose faults drop the lock and are completed by a pager on the second
//! CPU ([`pager`]).
//!
//! Boot: [`entry`] (EL2 entry, vectors, world switch) -> [`fw_main`]: EL2
//! MMU ([`mmu`]), pager CPU up by PSCI, host mm and VM ([`vm`]), then the
//! vCPU loop ([`vcpu`]) runs the guest ([`guest`]) to completion; the
//! firmware adds its own checks, prints results and counters ([`report`])
//! and powers off ([`psci`]).

#![no_std]
#![no_main]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod sysreg;
#[macro_use]
pub mod uart;
pub mod entry;
pub mod frames;
pub mod guest;
pub mod hostmm;
pub mod mmu;
pub mod pager;
pub mod psci;
pub mod report;
pub mod vcpu;
pub mod vm;

use backend_hypervisor::PageSize;
use core::sync::atomic::Ordering;

use report::{counter, Tally};
use sysreg::{counter as timer, cpu_id, read_sysreg, wfe};
use vm::HOST_MM;

extern "C" {
    static __image_start: u8;
    static __guest_text_end: u8;
}

/// The image's text and read-only data, `[start, end)` (page aligned).
pub fn image_text() -> (u64, u64) {
    (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__guest_text_end) as u64,
    )
}

/// The boot CPU's Rust entry.
#[no_mangle]
pub extern "C" fn fw_main() -> ! {
    mmu::build();
    mmu::enable();
    let (t0, freq) = timer();
    println!(
        "hmm-firmware: EL{} on CPU {}, MIDR {:#x}",
        (read_sysreg!("currentel") >> 2) & 3,
        cpu_id(),
        read_sysreg!("midr_el1")
    );
    let mut tally = Tally::default();

    let rc = psci::cpu_on(1, entry::secondary_entry_pa(), entry::secondary_stack_top());
    if rc != 0 {
        println!("PSCI CPU_ON failed: {rc}");
        finish(&mut tally, false);
    }
    while !pager::running() {
        wfe();
    }
    println!("pager CPU 1 up");

    if let Err(e) = vm::init() {
        println!("vm init failed: {e}");
        finish(&mut tally, false);
    }
    let stop = vcpu::run(guest::entry(), guest::STACK_TOP, &mut tally);
    let guest_done = matches!(stop, vcpu::Stop::Done);
    tally.check("guest_ran_to_completion", guest_done, 0);
    firmware_checks(&mut tally);
    pager::stop();
    let (t1, _) = timer();
    print_counters();
    if let Some(ms) = ((t1 - t0) * 1000).checked_div(freq) {
        println!("elapsed {ms} ms");
    }
    finish(&mut tally, guest_done)
}

/// Checks of the final state the guest cannot see.
fn firmware_checks(tally: &mut Tally) {
    let vm = vm::vm();
    let size_at = |gpa: u64| vm.translate(gpa).map(|m| m.size);
    tally.check(
        "stage2_1g_block",
        size_at(vm::HUGE1G_GPA + (512 << 20)) == Some(PageSize::Size1G),
        vm::HUGE1G_GPA,
    );
    tally.check(
        "stage2_2m_block",
        size_at(vm::HUGE2M_GPA + (3 << 20)) == Some(PageSize::Size2M),
        vm::HUGE2M_GPA,
    );
    tally.check(
        "stage2_4k_page",
        size_at(vm::ANON_GPA) == Some(PageSize::Size4K),
        vm::ANON_GPA,
    );
    let st = vm.stats();
    let drops = HOST_MM.counters.lock_drops.load(Ordering::Relaxed);
    tally.check(
        "uffd_faults_dropped_the_lock",
        drops >= 32 && st.host_lock_drops >= 32,
        drops,
    );
    tally.check(
        "walks_resumed_after_lock_drops",
        st.host_resumes >= 32,
        st.host_resumes,
    );
    tally.check(
        "async_fault_deferred_and_completed",
        st.pending >= 1 && st.async_completed >= 1,
        st.pending,
    );
    tally.check(
        "guest_code_mapped_by_instruction_aborts",
        vcpu::EXITS.instruction_aborts.load(Ordering::Relaxed) >= 1,
        0,
    );
    tally.check("no_guest_fault_errors", st.errors == 0, st.errors);
    let (_, jobs_done, jobs_failed) = pager::counts();
    tally.check(
        "concurrent_migration_done",
        jobs_done == 1 && jobs_failed == 0,
        jobs_failed,
    );
    let waits = HOST_MM.counters.migration_waits.load(Ordering::Relaxed);
    tally.check("guest_fault_waited_on_migration_entry", waits >= 1, waits);
    stage2_layout_checks(tally);
    tlb_checks(tally);
}

/// Flushes and barriers the hardware needs, counted where the firmware
/// issues them.
fn tlb_checks(tally: &mut Tally) {
    let vm = vm::vm();
    // A fault on a leaf that already allows the access (a stale TLB entry
    // on real hardware): nothing is written, this CPU's translation of the
    // leaf is flushed (one TLBI IPAS2E1, one TLBI VMALLE1).
    let a = vm::top_gpa() + 2 * 4096;
    let before = (vm.translate(a), vm::TLB.upgrade_counts(), vm.stats());
    let out = vm.handle_fault(a, backend_hypervisor::Perm::W);
    let after = (vm.translate(a), vm::TLB.upgrade_counts(), vm.stats());
    let (u0, u1) = (before.1, after.1);
    tally.check(
        "stale_translation_fault_flushes_locally",
        matches!(out, backend_hypervisor::GuestFault::Mapped { .. })
            && before.0.is_some()
            && before.0 == after.0
            && (u1.0 - u0.0, u1.1 - u0.1, u1.2 - u0.2) == (1, 1, 1)
            && after.2.stale_flushes == before.2.stale_flushes + 1
            && after.2.published == before.2.published,
        u1.0 - u0.0,
    );
    // Every fault that wrote descriptors issued a DSB ISHST before the
    // vCPU went back to the guest (unmaps that split blocks publish too, at
    // most once per split), and the upgrades were flushed.
    let st = vm.stats();
    let dsb = vm::TLB.publishes();
    tally.check(
        "new_descriptors_published",
        st.published >= 1 && dsb >= st.published && dsb <= st.published + st.splits,
        dsb,
    );
    tally.check(
        "permission_upgrades_flushed",
        st.upgrades >= 2 && vm::TLB.upgrade_counts().0 == st.upgrades + st.stale_flushes,
        st.upgrades,
    );
}

/// The stage-2 configuration the hardware runs with is the one chosen for
/// its PA range, and the table is laid out for it.
fn stage2_layout_checks(tally: &mut Tally) {
    let vm = vm::vm();
    let Some(l) = vm::layout() else {
        tally.check("stage2_vtcr_for_pa_range", false, 0);
        return;
    };
    let vtcr = read_sysreg!("vtcr_el2");
    let pa_bits = backend_hypervisor::vtcr::parange_bits(read_sysreg!("id_aa64mmfr0_el1"));
    let vttbr = read_sysreg!("vttbr_el2");
    let root_bytes = l.root_tables() as u64 * 4096;
    // The architecture's own constraints, from the registers: a level-0
    // start needs a PA range of 44 bits or more, the IPA may not exceed the
    // PA range, and the root must be aligned to its concatenated size.
    let start = backend_hypervisor::Stage2Vtcr::start_level_of(vtcr);
    let ipa = 64 - (vtcr & 0x3f);
    let legal = start.is_some_and(|s| s > 0 || pa_bits >= 44)
        && ipa <= u64::from(pa_bits)
        && (vttbr & 0x0000_ffff_ffff_fffe) % root_bytes == 0;
    tally.check(
        "stage2_vtcr_for_pa_range",
        vtcr == l.vtcr() && legal && l.pa_bits() == pa_bits && start == Some(l.start_level()),
        vtcr,
    );
    tally.check(
        "stage2_hw_access_dirty_off",
        !backend_hypervisor::Stage2Vtcr::hw_ad_enabled(vtcr),
        vtcr,
    );
    let top = vm::top_gpa();
    tally.check(
        "stage2_top_of_ipa_mapped",
        top + vm::TOP_SIZE == l.table().ia_limit()
            && vm.translate(top + vm::TOP_SIZE - 8).is_some(),
        top,
    );
}

fn print_counters() {
    let vm = vm::vm();
    let st = vm.stats();
    let e = &vcpu::EXITS;
    let l = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let h = &HOST_MM.counters;
    counter("guest_faults", l(&e.stage2_aborts));
    counter("guest_permission_faults", l(&e.permission_faults));
    counter("guest_instruction_aborts", l(&e.instruction_aborts));
    counter("guest_fault_retries", st.retries);
    counter("hypercalls", l(&e.hypercalls));
    counter("stage2_map_4k", st.leaves_4k);
    counter("stage2_map_2m", st.leaves_2m);
    counter("stage2_map_1g", st.leaves_1g);
    counter("host_faults", st.host_faults);
    counter("lock_drops", st.host_lock_drops);
    counter("resumes", st.host_resumes);
    counter("restarts", st.host_restarts);
    counter("async_deferred", st.pending);
    counter("async_completed", st.async_completed);
    counter("invalidations_host", HOST_MM.notifiers.count());
    counter("invalidations_stage2", st.invalidations);
    let (flushes, by_ipa, all) = vm::TLB.counts();
    counter("tlb_flushes", flushes);
    counter("tlbi_ipas2e1is", by_ipa);
    counter("tlbi_vmalls12e1is", all);
    counter("tlb_flushes_from_other_cpu", vm::TLB.context_switches());
    let (upgrades, ipa_local, vmalle1_local) = vm::TLB.upgrade_counts();
    counter("tlb_upgrade_flushes", upgrades);
    counter("tlbi_ipas2e1", ipa_local);
    counter("tlbi_vmalle1", vmalle1_local);
    counter("dsb_ishst_publish", vm::TLB.publishes());
    counter("stage2_upgrades_in_place", st.upgrades);
    counter("stage2_stale_fault_flushes", st.stale_flushes);
    counter("host_wrprotected", l(&h.wrprotected));
    counter("host_wp_reuses", l(&h.wp_reuses));
    counter("host_zero_page_maps", l(&h.zero_maps));
    counter("host_cow_breaks", l(&h.cow));
    counter("host_anon_pages", l(&h.anon_pages));
    counter("host_huge_pages", l(&h.huge_pages));
    counter("host_migrations", l(&h.migrations));
    counter("host_migration_waits", l(&h.migration_waits));
    counter("host_zapped_leaves", l(&h.zapped));
    let (msgs, copies) = HOST_MM.uffd.counts();
    counter("uffd_messages", msgs);
    counter("uffd_copies", copies);
    counter("stage2_table_pages", vm::STAGE2_TABLES.in_use() as u64);
    counter("host_table_pages", HOST_MM.table_pages() as u64);
}

fn finish(tally: &mut Tally, ok: bool) -> ! {
    println!("RESULT {} passed, {} failed", tally.passed, tally.failed);
    println!(
        "{}",
        if ok && tally.failed == 0 {
            "FIRMWARE PASS"
        } else {
            "FIRMWARE FAIL"
        }
    );
    psci::system_off()
}

/// The second CPU's Rust entry: the pager.
#[no_mangle]
pub extern "C" fn fw_secondary_main() -> ! {
    mmu::enable();
    pager::main_loop();
    loop {
        wfe();
    }
}

/// An exception taken at EL2: a firmware bug.
#[no_mangle]
pub extern "C" fn el2_unexpected(slot: u64, esr: u64, elr: u64, far: u64) -> ! {
    uart::print_unlocked(format_args!(
        "EL2 exception: vector slot {slot} on CPU {}, ESR {esr:#x}, ELR {elr:#x}, FAR {far:#x}\nFIRMWARE FAIL\n",
        cpu_id()
    ));
    psci::system_off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    uart::print_unlocked(format_args!(
        "PANIC on CPU {}: {info}\nFIRMWARE FAIL\n",
        cpu_id()
    ));
    psci::system_off()
}
