//! The virtual machine: the host address space, backend-hypervisor's guest
//! memory manager over the Arm stage-2 format, the TLB maintenance behind
//! its flush hook, and the EL2 registers that turn stage 2 on.
//!
//! Guest physical layout (each region backed by a host VMA of the kind
//! named; every stage-2 mapping is made by a guest fault through hmm-core):
//!
//! | region | GPA | size | host VMA |
//! |---|---|---|---|
//! | image | `0x4008_0000` (= link address) | text + rodata | pre-populated read-only image |
//! | stack | `0x0800_0000` | 64 KiB | anonymous, demand-zero (guest stack) |
//! | anon | `0x1000_0000` | 1 MiB | anonymous, demand-zero |
//! | huge2m | `0x2000_0000` | 4 MiB | hugetlb 2 MiB |
//! | huge1g | `0x1_0000_0000` | 1 GiB | hugetlb 1 GiB |
//! | uffd | `0x3000_0000` | 1 MiB | userfaultfd, pager on CPU 1 |
//! | uffd_async | `0x3800_0000` | 1 MiB | userfaultfd, faulted in no-wait mode |
//! | top | the last 2 MiB below the IPA limit | 2 MiB | anonymous, demand-zero |
//!
//! The IPA limit is the CPU's (see [`layout`]): the top region lies in the
//! last entry of the stage-2 root, in the second concatenated root table
//! when the walk starts at level 1 with two of them (40-bit PA), so the
//! guest's accesses there prove the hardware walks the root the way the
//! engine lays it out.

use core::sync::atomic::{AtomicU64, Ordering};

use backend_hypervisor::{
    Config, GuestMemory, PageSize, Perm, RegionId, RegionSpec, Stage2, Stage2Vtcr, StaticPool,
    TlbFlush,
};
use hmm_core::{Clock, Env, NoSignals, VmFlags};

use crate::hostmm::notifier::{IntervalOps, MmSeq, Subscription};
use crate::hostmm::pgtable::HostTablePool;
use crate::hostmm::{HostMm, VmaKind};
use crate::sysreg::{dsb_ish, dsb_ishst, dsb_nsh, isb, read_sysreg, write_sysreg};

/// The generic timer as hmm-core's clock.
pub struct CounterClock;

impl Clock for CounterClock {
    fn now_ns(&self) -> u64 {
        let (cnt, freq) = crate::sysreg::counter();
        if freq == 0 {
            return 0;
        }
        ((u128::from(cnt) * 1_000_000_000) / u128::from(freq)) as u64
    }
}

/// TLB maintenance for stage 2 of VMID 1, and the barrier that publishes
/// new descriptors.
///
/// * [`flush_range`](TlbFlush::flush_range) (removal, downgrade): by IPA
///   for small ranges, the whole VMID otherwise, then the combined
///   stage-1+2 entries (tagged by VA), all broadcast to the inner-shareable
///   domain.
/// * [`flush_upgrade`](TlbFlush::flush_upgrade) (a leaf gained
///   permissions, or a fault found it already wide): as KVM's
///   `__kvm_tlb_flush_vmid_ipa_nsh`, for this CPU only: `DSB ISHST` (the
///   descriptor store reaches the walkers), `TLBI IPAS2E1` at the leaf's
///   IPA (one TLBI removes a block's entry too), `DSB NSH`, `TLBI
///   VMALLE1`, `DSB NSH`, `ISB`. A CPU that still holds the narrower
///   translation faults and flushes for itself.
/// * [`publish`](TlbFlush::publish): `DSB ISHST` after a fault wrote new
///   descriptors, before the vCPU re-enters the guest.
///
/// TLBI by IPA or by VMID acts on the VMID in the *issuing* CPU's
/// VTTBR_EL2, so a CPU that is not running this guest (the pager CPU
/// migrating a page under it) first loads the guest's VTCR_EL2/VTTBR_EL2
/// and restores its own afterwards, as KVM's `__tlb_switch_to_guest` does.
pub struct ArmTlb {
    vtcr: AtomicU64,
    vttbr: AtomicU64,
    switches: AtomicU64,
    flushes: AtomicU64,
    tlbi_ipa: AtomicU64,
    tlbi_all: AtomicU64,
    upgrades: AtomicU64,
    tlbi_ipa_local: AtomicU64,
    tlbi_vmalle1_local: AtomicU64,
    publishes: AtomicU64,
}

/// Ranges up to this many pages are flushed page by page.
const TLBI_BY_IPA_MAX: u64 = 32;

impl ArmTlb {
    /// Run `f` with the guest's VMID loaded on this CPU (switching and
    /// restoring VTCR_EL2/VTTBR_EL2 if this CPU holds another context),
    /// ending with an `ISB`.
    fn in_guest_vmid(&self, f: impl FnOnce()) {
        let (vtcr, vttbr) = (
            self.vtcr.load(Ordering::Acquire),
            self.vttbr.load(Ordering::Acquire),
        );
        let (own_vtcr, own_vttbr) = (read_sysreg!("vtcr_el2"), read_sysreg!("vttbr_el2"));
        let switch = own_vttbr != vttbr;
        if switch {
            self.switches.fetch_add(1, Ordering::Relaxed);
            // SAFETY: this CPU does not run the guest (its VTTBR_EL2 is not
            // the guest's), so no EL1 code uses these registers while they
            // hold the guest's values; they are restored below.
            unsafe {
                write_sysreg!("vtcr_el2", vtcr);
                write_sysreg!("vttbr_el2", vttbr);
            }
            isb();
        }
        f();
        if switch {
            // SAFETY: restores this CPU's own stage-2 context.
            unsafe {
                write_sysreg!("vtcr_el2", own_vtcr);
                write_sysreg!("vttbr_el2", own_vttbr);
            }
        }
        isb();
    }
}

impl TlbFlush for ArmTlb {
    fn flush_range(&self, start: u64, end: u64) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let pages = (end.saturating_sub(start) + 0xfff) >> 12;
        self.in_guest_vmid(|| {
            dsb_ishst();
            if pages <= TLBI_BY_IPA_MAX {
                for p in 0..pages {
                    let ipa = (start >> 12) + p;
                    // SAFETY: TLB invalidation by IPA for the current VMID
                    // only removes cached translations; it cannot break
                    // memory safety.
                    unsafe {
                        core::arch::asm!("tlbi ipas2e1is, {}", in(reg) ipa, options(nostack))
                    };
                }
                self.tlbi_ipa.fetch_add(pages, Ordering::Relaxed);
            } else {
                // SAFETY: as above, for every stage-1 and stage-2 entry of
                // the current VMID.
                unsafe { core::arch::asm!("tlbi vmalls12e1is", options(nostack)) };
                self.tlbi_all.fetch_add(1, Ordering::Relaxed);
            }
            dsb_ish();
            // SAFETY: as above; combined stage-1+2 entries are tagged by VA.
            unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) };
            dsb_ish();
        });
    }

    fn flush_upgrade(&self, gpa: u64, _size: PageSize) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
        self.in_guest_vmid(|| {
            dsb_ishst();
            let ipa = gpa >> 12;
            // SAFETY: non-broadcast TLB invalidation by IPA for the current
            // VMID only removes this CPU's cached translations.
            unsafe { core::arch::asm!("tlbi ipas2e1, {}", in(reg) ipa, options(nostack)) };
            dsb_nsh();
            // SAFETY: as above, for this CPU's stage-1 (and combined)
            // entries of the current VMID, tagged by VA.
            unsafe { core::arch::asm!("tlbi vmalle1", options(nostack)) };
            dsb_nsh();
        });
        self.tlbi_ipa_local.fetch_add(1, Ordering::Relaxed);
        self.tlbi_vmalle1_local.fetch_add(1, Ordering::Relaxed);
    }

    fn publish(&self) {
        dsb_ishst();
        self.publishes.fetch_add(1, Ordering::Relaxed);
    }
}

impl ArmTlb {
    /// Flushes issued from a CPU that had to load the guest's VMID first.
    pub fn context_switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// (flush calls, TLBI IPAS2E1IS issued, TLBI VMALLS12E1IS issued).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.flushes.load(Ordering::Relaxed),
            self.tlbi_ipa.load(Ordering::Relaxed),
            self.tlbi_all.load(Ordering::Relaxed),
        )
    }

    /// (upgrade flushes, TLBI IPAS2E1 issued, TLBI VMALLE1 issued): the
    /// local invalidations after permission upgrades.
    pub fn upgrade_counts(&self) -> (u64, u64, u64) {
        (
            self.upgrades.load(Ordering::Relaxed),
            self.tlbi_ipa_local.load(Ordering::Relaxed),
            self.tlbi_vmalle1_local.load(Ordering::Relaxed),
        )
    }

    /// `DSB ISHST` barriers issued to publish new descriptors.
    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }
}

/// Stage-2 table pages.
pub static STAGE2_TABLES: StaticPool<128> = StaticPool::new();
/// Host page-table pages.
pub static HOST_TABLES: HostTablePool = StaticPool::new();
static MM_SEQ: MmSeq = MmSeq::new();
/// The host address space.
pub static HOST_MM: HostMm = HostMm::new(&HOST_TABLES, &MM_SEQ);
static CLOCK: CounterClock = CounterClock;

/// The host as backend-hypervisor sees it.
pub type HostView = Env<'static, HostMm, HostMm, NoSignals, CounterClock>;
/// The guest memory manager.
pub type Vm =
    GuestMemory<'static, Stage2, &'static StaticPool<128>, &'static ArmTlb, HostView, Subscription>;

/// The TLB hook.
pub static TLB: ArmTlb = ArmTlb {
    vtcr: AtomicU64::new(0),
    vttbr: AtomicU64::new(0),
    switches: AtomicU64::new(0),
    flushes: AtomicU64::new(0),
    tlbi_ipa: AtomicU64::new(0),
    tlbi_all: AtomicU64::new(0),
    upgrades: AtomicU64::new(0),
    tlbi_ipa_local: AtomicU64::new(0),
    tlbi_vmalle1_local: AtomicU64::new(0),
    publishes: AtomicU64::new(0),
};

static VM: spin::Once<Vm> = spin::Once::new();

/// The VM (after [`init`]).
pub fn vm() -> &'static Vm {
    VM.get().expect("vm::init not called")
}

/// A guest region and the host VMA behind it.
pub struct RegionDef {
    /// Name for reports.
    pub name: &'static str,
    /// Guest-physical start.
    pub gpa: u64,
    /// Size.
    pub size: u64,
    /// Host virtual start.
    pub hva: u64,
    /// Guest permissions.
    pub perm: Perm,
    /// Host VMA kind.
    pub kind: VmaKind,
    /// Host VMA flags.
    pub flags: VmFlags,
    /// Guest faults in this region use the no-wait (async) path.
    pub nowait: bool,
}

const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);

/// GPA of the guest stack region.
pub const STACK_GPA: u64 = 0x0800_0000;
/// Size of the guest stack region.
pub const STACK_SIZE: u64 = 64 << 10;
/// GPA of the anonymous region.
pub const ANON_GPA: u64 = 0x1000_0000;
/// GPA of the 2 MiB hugetlb region.
pub const HUGE2M_GPA: u64 = 0x2000_0000;
/// GPA of the 1 GiB hugetlb region.
pub const HUGE1G_GPA: u64 = 0x1_0000_0000;
/// GPA of the userfault region.
pub const UFFD_GPA: u64 = 0x3000_0000;
/// GPA of the userfault region faulted in no-wait mode.
pub const UFFD_ASYNC_GPA: u64 = 0x3800_0000;
/// Size of the anonymous region.
pub const ANON_SIZE: u64 = 1 << 20;
/// Size of the 2 MiB hugetlb region.
pub const HUGE2M_SIZE: u64 = 4 << 20;
/// Size of the 1 GiB hugetlb region.
pub const HUGE1G_SIZE: u64 = 1 << 30;
/// Size of each userfault region.
pub const UFFD_SIZE: u64 = 1 << 20;
/// Size of the region at the top of the IPA space.
pub const TOP_SIZE: u64 = 2 << 20;

/// GPA of the region at the top of the IPA space (0 before [`init`]).
pub fn top_gpa() -> u64 {
    layout().map_or(0, |l| l.table().ia_limit() - TOP_SIZE)
}

/// Host address of the image region.
const IMAGE_HVA: u64 = 0x100_0000_0000;

/// Number of regions.
pub const NREGIONS: usize = 8;

/// The regions; index 0 (the image) gets its addresses at run time.
pub fn regions() -> [RegionDef; NREGIONS] {
    let (img_start, img_end) = crate::image_text();
    [
        RegionDef {
            name: "image",
            gpa: img_start,
            size: img_end - img_start,
            hva: IMAGE_HVA + img_start,
            perm: Perm::R | Perm::X,
            kind: VmaKind::Image,
            flags: VmFlags::READ.union(VmFlags::EXEC),
            nowait: false,
        },
        RegionDef {
            name: "stack",
            gpa: STACK_GPA,
            size: STACK_SIZE,
            hva: 0x180_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Anon,
            flags: RW,
            nowait: false,
        },
        RegionDef {
            name: "anon",
            gpa: ANON_GPA,
            size: ANON_SIZE,
            hva: 0x200_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Anon,
            flags: RW,
            nowait: false,
        },
        RegionDef {
            name: "huge2m",
            gpa: HUGE2M_GPA,
            size: HUGE2M_SIZE,
            hva: 0x300_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Hugetlb(9),
            flags: RW.union(VmFlags::HUGETLB),
            nowait: false,
        },
        RegionDef {
            name: "huge1g",
            gpa: HUGE1G_GPA,
            size: HUGE1G_SIZE,
            hva: 0x400_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Hugetlb(18),
            flags: RW.union(VmFlags::HUGETLB),
            nowait: false,
        },
        RegionDef {
            name: "uffd",
            gpa: UFFD_GPA,
            size: UFFD_SIZE,
            hva: 0x500_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Userfault,
            flags: RW,
            nowait: false,
        },
        RegionDef {
            name: "uffd_async",
            gpa: UFFD_ASYNC_GPA,
            size: UFFD_SIZE,
            hva: 0x600_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Userfault,
            flags: RW,
            nowait: true,
        },
        RegionDef {
            name: "top",
            gpa: top_gpa(),
            size: TOP_SIZE,
            hva: 0x700_0000_0000,
            perm: Perm::R | Perm::W,
            kind: VmaKind::Anon,
            flags: RW,
            nowait: false,
        },
    ]
}

/// One region's notifier subscription and the ops routing its
/// invalidations to the VM.
struct RegionNotifier {
    sub: spin::Once<Subscription>,
    id: spin::Once<RegionId>,
}

static NOTIFIERS: [RegionNotifier; NREGIONS] = {
    #[allow(clippy::declare_interior_mutable_const)]
    const R: RegionNotifier = RegionNotifier {
        sub: spin::Once::new(),
        id: spin::Once::new(),
    };
    [R; NREGIONS]
};

impl IntervalOps for RegionNotifier {
    fn invalidate(&self, sub: &Subscription, start: u64, end: u64, cur_seq: u64) {
        match self.id.get() {
            Some(&id) => {
                vm().invalidate(id, start, end, true, || sub.set_seq(cur_seq));
            }
            None => sub.set_seq(cur_seq),
        }
    }
}

/// The region definition containing `gpa`.
pub fn region_of(gpa: u64) -> Option<(usize, RegionDef)> {
    regions()
        .into_iter()
        .enumerate()
        .find(|(_, r)| r.gpa <= gpa && gpa < r.gpa + r.size)
}

/// The host address backing `gpa`.
pub fn hva_of(gpa: u64) -> Option<u64> {
    region_of(gpa).map(|(_, r)| r.hva + (gpa - r.gpa))
}

/// The stage-2 configuration chosen for this CPU (after [`init`]).
static LAYOUT: spin::Once<Stage2Vtcr> = spin::Once::new();

/// The stage-2 configuration chosen for this CPU's PA range.
pub fn layout() -> Option<&'static Stage2Vtcr> {
    LAYOUT.get()
}

/// Build the host address space and the VM, and program stage 2.
pub fn init() -> Result<(), &'static str> {
    HOST_MM.init().map_err(|_| "host page-table root")?;
    let host = Env::new(&HOST_MM, &HOST_MM)
        .with_signals(&NoSignals)
        .with_clock(&CLOCK);
    // T0SZ, the start level and the concatenated root from the PA range,
    // as KVM's kvm_get_vtcr chooses them.
    let layout = *LAYOUT.call_once(|| Stage2Vtcr::for_parange(read_sysreg!("id_aa64mmfr0_el1")));
    let config = Config {
        table: layout.table(),
        ..Config::default()
    };
    let vm = GuestMemory::new(host, &STAGE2_TABLES, &TLB, config).map_err(|_| "stage-2 root")?;
    let vm = VM.call_once(|| vm);
    for (i, r) in regions().iter().enumerate() {
        HOST_MM
            .mmap(r.hva, r.hva + r.size, r.flags, r.kind)
            .map_err(|_| "host mmap")?;
        if r.kind == VmaKind::Image {
            HOST_MM
                .populate_image(r.hva, r.gpa, r.size)
                .map_err(|_| "image populate")?;
        }
        let n = &NOTIFIERS[i];
        let sub = n
            .sub
            .call_once(|| Subscription::new(&MM_SEQ, r.hva, r.hva + r.size));
        let spec = RegionSpec {
            gpa: r.gpa,
            size: r.size,
            hva: r.hva,
            perm: r.perm,
        };
        let id = vm.add_region(spec, sub).map_err(|_| "add region")?;
        n.id.call_once(|| id);
        if !HOST_MM.notifiers.insert(sub, n) {
            return Err("notifier insert");
        }
    }
    enable_stage2(vm.root(), &layout)
}

/// VTCR_EL2 / VTTBR_EL2 / HCR_EL2 for the stage 2 `layout` describes (4 KiB
/// granule; the start level and concatenation the PA range allows; HA and
/// HD off, checked by reading VTCR_EL2 back).
fn enable_stage2(root: u64, layout: &Stage2Vtcr) -> Result<(), &'static str> {
    let vtcr = layout.vtcr();
    let vttbr = Stage2Vtcr::vttbr(root, 1); // VMID 1
    TLB.vtcr.store(vtcr, Ordering::Release);
    TLB.vttbr.store(vttbr, Ordering::Release);
    // HCR_EL2: VM (stage 2 on), SWIO, DC (guest MMU off = Normal WB, as
    // EL2 sees RAM), TSC (guest SMC traps), RW (EL1 is AArch64).
    let hcr: u64 = (1 << 0) | (1 << 1) | (1 << 12) | (1 << 19) | (1 << 31);
    // SAFETY: the stage-2 root is `root_tables()` zeroed, contiguous table
    // pages of STAGE2_TABLES aligned to their total size (identity mapped,
    // so the address is the PA), as VTTBR_EL2 requires for this VTCR_EL2;
    // nothing runs at EL1 yet, so switching its translation regime cannot
    // affect live code. The TLB is invalidated for the VMID before first
    // use.
    unsafe {
        write_sysreg!("vtcr_el2", vtcr);
        write_sysreg!("vttbr_el2", vttbr);
        isb();
        core::arch::asm!("tlbi vmalls12e1is", options(nostack));
        dsb_ish();
        write_sysreg!("hcr_el2", hcr);
        // EL1 may use FP/SIMD (CPACR_EL1.FPEN = 0b11); EL1 MMU off.
        write_sysreg!("cpacr_el1", 3 << 20);
        write_sysreg!("sctlr_el1", 0x30d0_0800);
    }
    isb();
    let readback = read_sysreg!("vtcr_el2");
    crate::println!(
        "stage 2: root {root:#x}, VTCR_EL2 {readback:#x} (PA {} bits, IPA {} bits, T0SZ {}, start level {}, {} root table(s)), HCR_EL2 {hcr:#x}",
        layout.pa_bits(),
        layout.ipa_bits(),
        layout.t0sz(),
        layout.start_level(),
        layout.root_tables(),
    );
    // The engine's plain-store descriptor updates rely on the walker never
    // writing descriptors.
    if Stage2Vtcr::hw_ad_enabled(readback) {
        return Err("VTCR_EL2 has hardware access/dirty updates on");
    }
    Ok(())
}
