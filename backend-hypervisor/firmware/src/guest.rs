//! The guest: EL1 code in the same image, entered with `ERET`, MMU off, so
//! every access it makes is an IPA translated by stage 2 only. It touches
//! its memory regions, asks the host to invalidate some of them midway, and
//! reports each check through `HVC`.
//!
//! The guest may only use its own memory (the regions of [`crate::vm`]) and
//! the image's text and read-only data: it must not touch firmware statics.

use crate::hostmm::uffd::source_word;
use crate::vm::{
    ANON_GPA, HUGE1G_GPA, HUGE1G_SIZE, HUGE2M_GPA, TOP_SIZE, UFFD_ASYNC_GPA, UFFD_GPA,
};

/// Hypercall numbers (x0), arguments in x1..x3, result in x0.
pub mod hc {
    /// Report a check: x1 = test id, x2 = 0 for pass or a failure code,
    /// x3 = a detail (the failing address, say).
    pub const REPORT: u64 = 1;
    /// Zap host pages backing `[x1, x1 + x2)` (`MADV_DONTNEED`). For
    /// userfault memory the post-copy source then re-sends pages at a new
    /// generation; x0 = the source generation now current.
    pub const ZAP: u64 = 2;
    /// Migrate the host page backing x1 to a new frame, then store x2 at
    /// x1 through the host mapping. x0 = 0 on success.
    pub const MIGRATE: u64 = 3;
    /// Store x2 at x1 through the host mapping. x0 = 0 on success.
    pub const HOST_WRITE: u64 = 4;
    /// Like `MIGRATE`, but done by the second CPU while the guest runs.
    pub const MIGRATE_ASYNC: u64 = 5;
    /// x0 = 1 once the last `MIGRATE_ASYNC` job has finished (2 if it
    /// failed), 0 while it runs.
    pub const JOB_STATUS: u64 = 7;
    /// Report a failed check: x1 = test id, x2 = the address, x3 = the
    /// value read, x4 = the value expected.
    pub const REPORT_MISMATCH: u64 = 6;
    /// x0 = the GPA of the region at the top of the IPA space.
    pub const TOP_GPA: u64 = 8;
    /// Write-protect the host pages backing `[x1, x1 + x2)` in place
    /// (userfaultfd write-protect); x0 = the leaves protected.
    pub const WRPROTECT: u64 = 9;
    /// x0 = the firmware counter x1 (see [`super::ctr`]).
    pub const COUNTER: u64 = 10;
    /// x0 = the stage-2 leaf mapping x1: its output address with the
    /// permissions in bits 2:0 (R 1, W 2, X 4) and the level in bits 5:4,
    /// or `u64::MAX` if unmapped.
    pub const S2_LEAF: u64 = 11;
    /// The guest is done.
    pub const DONE: u64 = 0xff;
}

/// Names of the guest's checks, by id.
pub const TESTS: [&str; 15] = [
    "anon_zero_page_read",
    "anon_cow_write_4k",
    "hugetlb_2m_rw",
    "hugetlb_1g_rw",
    "uffd_postcopy_read",
    "uffd_write_back",
    "uffd_zap_refetch",
    "migrate_sees_new_frame",
    "host_write_coherent",
    "hugetlb_2m_zap_refault",
    "uffd_nowait_async",
    "concurrent_migrate",
    "top_of_ipa_space",
    "perm_upgrade_4k_in_place",
    "perm_upgrade_2m_block_in_place",
];

/// Firmware counters the guest can read (x1 of `COUNTER`).
pub mod ctr {
    /// Stage-2 permission faults taken.
    pub const PERMISSION_FAULTS: u64 = 0;
    /// Local TLB flushes after permission upgrades.
    pub const UPGRADE_FLUSHES: u64 = 1;
    /// `TLBI IPAS2E1` issued by them.
    pub const TLBI_IPAS2E1: u64 = 2;
    /// `TLBI VMALLE1` issued by them.
    pub const TLBI_VMALLE1: u64 = 3;
    /// Stage-2 aborts taken.
    pub const STAGE2_ABORTS: u64 = 4;
}

/// Failure codes (x2 of `REPORT`).
pub mod fail {
    /// A word held the wrong value.
    pub const MISMATCH: u64 = 1;
    /// A host operation failed.
    pub const HOST_OP: u64 = 2;
}

/// Top of the guest stack (in the stack region).
pub const STACK_TOP: u64 = 0x0801_0000;

fn hvc(nr: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    hvc4(nr, a1, a2, a3, 0)
}

fn hvc4(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> u64 {
    let r: u64;
    // SAFETY: HVC traps to the firmware, which reads x0..x3, writes x0 and
    // restores every other register before resuming the guest.
    unsafe {
        core::arch::asm!("hvc #0", inout("x0") nr => r, in("x1") a1, in("x2") a2, in("x3") a3,
            in("x4") a4, options(nostack));
    }
    r
}

fn rd(gpa: u64) -> u64 {
    // SAFETY: the guest runs with its MMU off, so `gpa` is an IPA; every
    // address passed here lies in a guest RAM region, where stage 2 either
    // maps it or faults to the firmware, which maps it and retries.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

fn wr(gpa: u64, v: u64) {
    // SAFETY: as for `rd`.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, v) }
}

fn report(id: usize, code: u64, detail: u64) {
    hvc(hc::REPORT, id as u64, code, detail);
}

fn report_mismatch(id: usize, gpa: u64, got: u64, want: u64) {
    hvc4(hc::REPORT_MISMATCH, id as u64, gpa, got, want);
}

/// Check `[gpa + 8 * i]` against `f(i)` for the given word indices; the
/// first mismatch is the result.
fn check(id: usize, words: impl Iterator<Item = u64>, expect: impl Fn(u64) -> u64) -> bool {
    for gpa in words {
        let (got, want) = (rd(gpa), expect(gpa));
        if got != want {
            report_mismatch(id, gpa, got, want);
            return false;
        }
    }
    true
}

/// The counters of one upgrade: permission faults, upgrade flushes, TLBI
/// IPAS2E1, TLBI VMALLE1.
fn upgrade_counters() -> [u64; 4] {
    [
        ctr::PERMISSION_FAULTS,
        ctr::UPGRADE_FLUSHES,
        ctr::TLBI_IPAS2E1,
        ctr::TLBI_VMALLE1,
    ]
    .map(|c| hvc(hc::COUNTER, c, 0, 0))
}

/// Upgrade a leaf's permissions in place and touch it again: `a` is mapped
/// writable; the host write-protects the `len`-byte page (or huge page)
/// behind it in place, the guest reads it (stage 2 maps it read-only, same frame), then
/// writes it: one permission fault, whose handler widens the leaf in place
/// and issues one local `TLBI IPAS2E1` and one `TLBI VMALLE1`; the write
/// and a read back then go through without another fault. A mismatch is
/// reported with the address, or 1 / 2 for the leaf before / after, or
/// 10..=13 for the counter deltas.
fn upgrade_in_place(id: usize, a: u64, len: u64, level: u64) -> bool {
    wr(a, tag(a));
    if hvc(hc::WRPROTECT, a & !(len - 1), len, 0) != 1 {
        report(id, fail::HOST_OP, a);
        return false;
    }
    if !check(id, [a].into_iter(), tag) {
        return false;
    }
    let before = hvc(hc::S2_LEAF, a, 0, 0);
    let c0 = upgrade_counters();
    wr(a, !tag(a));
    let v = rd(a);
    let c1 = upgrade_counters();
    let after = hvc(hc::S2_LEAF, a, 0, 0);
    let leaf = |pa: u64, perm: u64| pa | perm | (level << 4);
    let base = before & !0xfff;
    let expected = [
        (a, v, !tag(a)),
        (1, before, leaf(base, 1)),
        (2, after, leaf(base, 3)),
        (10, c1[0] - c0[0], 1),
        (11, c1[1] - c0[1], 1),
        (12, c1[2] - c0[2], 1),
        (13, c1[3] - c0[3], 1),
    ];
    for (what, got, want) in expected {
        if got != want {
            report_mismatch(id, what, got, want);
            return false;
        }
    }
    true
}

fn pass(id: usize) {
    report(id, 0, 0);
}

fn tag(gpa: u64) -> u64 {
    gpa ^ 0xa5a5_0000_0000_0000
}

const PAGE: u64 = 4096;

/// The guest's program.
#[no_mangle]
pub extern "C" fn guest_main() -> ! {
    // 0: untouched anonymous memory reads as zeroes (the zero page, mapped
    // read-only at stage 2).
    let zero_pages = 16;
    if check(
        0,
        (0..zero_pages).map(|p| ANON_GPA + p * PAGE + 8 * (p % 512)),
        |_| 0,
    ) {
        pass(0);
    }

    // 1: writing them takes stage-2 permission faults; the host breaks COW
    // of the zero page (notifiers) and the new pages are mapped writable.
    let cow_pages = 64;
    for p in 0..cow_pages {
        for w in 0..512 {
            let a = ANON_GPA + p * PAGE + w * 8;
            wr(a, tag(a));
        }
    }
    if check(1, (0..cow_pages * 512).map(|i| ANON_GPA + i * 8), tag) {
        pass(1);
    }

    // 2: 2 MiB hugetlb pages, mapped with 2 MiB stage-2 blocks.
    let offs2m = [
        0,
        PAGE,
        1 << 20,
        (2 << 20) - 8,
        2 << 20,
        3 << 20,
        (4 << 20) - 8,
    ];
    for o in offs2m {
        wr(HUGE2M_GPA + o, tag(HUGE2M_GPA + o));
    }
    if check(2, offs2m.iter().map(|o| HUGE2M_GPA + o), tag) {
        pass(2);
    }

    // 3: a 1 GiB hugetlb page, mapped with one 1 GiB stage-2 block.
    let offs1g = [
        0,
        PAGE,
        2 << 20,
        256 << 20,
        (512 << 20) + 3 * PAGE,
        HUGE1G_SIZE - 8,
    ];
    for o in offs1g {
        wr(HUGE1G_GPA + o, tag(HUGE1G_GPA + o));
    }
    if check(3, offs1g.iter().map(|o| HUGE1G_GPA + o), tag) {
        pass(3);
    }

    // 4: post-copy: every page comes from the pager on the other CPU, each
    // host fault dropping the mmap lock while it waits.
    let mut generation = 0;
    let uffd_pages = 32;
    let words = |base: u64, pages: u64| {
        (0..pages).flat_map(move |p| {
            [
                base + p * PAGE,
                base + p * PAGE + 8 * 255,
                base + p * PAGE + 8 * 511,
            ]
        })
    };
    if check(4, words(UFFD_GPA, uffd_pages), |a| {
        source_word(a - UFFD_GPA, generation)
    }) {
        pass(4);
    }

    // 5: the post-copied pages are writable guest RAM.
    for p in 0..uffd_pages {
        wr(UFFD_GPA + p * PAGE + 16, tag(p));
    }
    if check(5, (0..uffd_pages).map(|p| UFFD_GPA + p * PAGE + 16), |a| {
        tag((a - UFFD_GPA) / PAGE)
    }) {
        pass(5);
    }

    // 6: the host zaps the first 8 pages; the source re-sends them at a new
    // generation. Zapped pages show the new contents, the rest keep theirs.
    let zapped = 8;
    generation = hvc(hc::ZAP, UFFD_GPA, zapped * PAGE, 0);
    let g = generation;
    let ok = check(6, words(UFFD_GPA, zapped), |a| source_word(a - UFFD_GPA, g))
        && check(
            6,
            (zapped..uffd_pages).map(|p| UFFD_GPA + p * PAGE + 16),
            |a| tag((a - UFFD_GPA) / PAGE),
        )
        && check(
            6,
            (zapped..uffd_pages).map(|p| UFFD_GPA + p * PAGE + 8),
            |a| source_word(a - UFFD_GPA, 0),
        );
    if ok {
        pass(6);
    }

    // 7: the host migrates an anonymous page and then stores a marker into
    // the new frame; the guest must see the marker (old frame poisoned).
    let mp = ANON_GPA + 5 * PAGE;
    wr(mp + 56, 0x1111_2222_3333_4444);
    let marker = 0x6d69_6772_6174_6521;
    if hvc(hc::MIGRATE, mp, marker, 0) != 0 {
        report(7, fail::HOST_OP, mp);
    } else if check(7, [mp, mp + 56, mp + 64].into_iter(), |a| match a - mp {
        0 => marker,
        56 => 0x1111_2222_3333_4444,
        _ => tag(mp + 64),
    }) {
        pass(7);
    }

    // 8: a host store into a mapped huge page is visible at once (same
    // frame, nothing to invalidate).
    let hw = HUGE2M_GPA + (3 << 20) + 0x1238;
    if hvc(hc::HOST_WRITE, hw, 0x0123_4567_89ab_cdef, 0) != 0 {
        report(8, fail::HOST_OP, hw);
    } else if check(8, [hw].into_iter(), |_| 0x0123_4567_89ab_cdef) {
        pass(8);
    }

    // 9: zapping a whole 2 MiB hugetlb page: the stage-2 block goes, the
    // next access faults a fresh zeroed huge page; the other one is intact.
    generation = hvc(hc::ZAP, HUGE2M_GPA, 2 << 20, 0);
    let ok = check(
        9,
        [HUGE2M_GPA, HUGE2M_GPA + PAGE, HUGE2M_GPA + (2 << 20) - 8].into_iter(),
        |_| 0,
    ) && check(
        9,
        [HUGE2M_GPA + (2 << 20), HUGE2M_GPA + (3 << 20)].into_iter(),
        tag,
    );
    wr(HUGE2M_GPA + 64, 77);
    if ok && check(9, [HUGE2M_GPA + 64].into_iter(), |_| 77) {
        pass(9);
    }

    // 10: the no-wait region: a fault that would block is deferred
    // (async page fault), completed by the worker, then the guest resumes.
    let g = generation;
    if check(10, words(UFFD_ASYNC_GPA, 8), |a| {
        source_word(a - UFFD_ASYNC_GPA, g)
    }) {
        pass(10);
    }

    // 11: the other CPU migrates a page while the guest keeps reading it:
    // the guest only ever sees the old value or the host's marker, and once
    // the host reports the job done its next read must show the marker.
    let cp = ANON_GPA + 9 * PAGE;
    wr(cp + 24, 0x7777);
    let old = rd(cp);
    let marker = 0x636f_6e63_7572_7221;
    if hvc(hc::MIGRATE_ASYNC, cp, marker, 0) != 0 {
        report(11, fail::HOST_OP, cp);
    } else {
        let mut i = 0u64;
        let outcome = loop {
            let v = rd(cp);
            if v == marker {
                break Ok(());
            }
            if v != old {
                break Err((v, old));
            }
            i += 1;
            if i.is_multiple_of(4096) && hvc(hc::JOB_STATUS, 0, 0, 0) != 0 {
                let v = rd(cp);
                break if v == marker {
                    Ok(())
                } else {
                    Err((v, marker))
                };
            }
        };
        match outcome {
            Err((got, want)) => report_mismatch(11, cp, got, want),
            Ok(()) => {
                if check(11, [cp + 24].into_iter(), |_| 0x7777) {
                    pass(11);
                }
            }
        }
    }

    // 12: the last 2 MiB below the IPA limit (the last root entry; on a
    // 40-bit CPU in the second concatenated root table).
    let top = hvc(hc::TOP_GPA, 0, 0, 0);
    let tops = [top, top + PAGE + 8, top + (1 << 20), top + TOP_SIZE - 8];
    for a in tops {
        wr(a, tag(a));
    }
    if check(12, tops.into_iter(), tag) {
        pass(12);
    }

    // 13: a 4 KiB page's permission upgraded in place (see
    // `upgrade_in_place`); the top region is all populated by now, so the
    // write fault's window faults nothing else.
    if upgrade_in_place(13, top + 2 * PAGE, PAGE, 3) {
        pass(13);
    }

    // 14: the same for a 2 MiB block (one TLBI for the whole block).
    let hp = HUGE2M_GPA + (2 << 20);
    if upgrade_in_place(14, hp + 0x40, 2 << 20, 2) {
        pass(14);
    }

    hvc(hc::DONE, 0, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

core::arch::global_asm!(
    r#"
.text
.global guest_entry
guest_entry:
    bl      guest_main
1:  b       1b
"#
);

extern "C" {
    fn guest_entry();
}

/// Where the guest starts (an IPA equal to its link address).
pub fn entry() -> u64 {
    guest_entry as *const () as usize as u64
}
