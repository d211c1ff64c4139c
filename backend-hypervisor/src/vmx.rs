//! Intel VMX support for the EPT format: the capabilities the CPU reports
//! in `IA32_VMX_EPT_VPID_CAP`, the EPT pointer, and `INVEPT`.
//!
//! Not every VMX processor supports every EPT feature this crate can
//! write. [`EptCaps`] parses the MSR (Intel SDM Vol. 3D, appendix "VPID and
//! EPT Capabilities") and everything that depends on it consults it:
//!
//! | bit | capability | consulted by |
//! |---|---|---|
//! | 0 | execute-only entries | [`EptCaps::table_config`]: the engine refuses execute-only leaves without it |
//! | 6 | page-walk length 4 | [`EptCaps::table_config`], [`EptCaps::eptp`]: required |
//! | 8 / 14 | UC / WB paging-structure memory type | [`EptCaps::eptp`]: WB if allowed, else UC |
//! | 16 / 17 | 2 MiB / 1 GiB leaves | [`EptCaps::table_config`]: the fault path falls back to smaller leaves |
//! | 20 | `INVEPT` | [`EptCaps::invept_kind`]: required |
//! | 21 | accessed / dirty flags | never enabled (see below) |
//! | 25 / 26 | single-context / all-context `INVEPT` | [`EptCaps::invept_kind`]: single-context preferred |
//!
//! **Hardware accessed/dirty flags stay off.** [`EptCaps::eptp`] never
//! sets EPTP bit 6 and [`Invept::new`] refuses an EPTP that has it: the
//! engine updates live entries with plain 64-bit stores, which would lose
//! an accessed or dirty flag the CPU set between the engine's read and its
//! store. [`eptp_ad_enabled`] lets a VMM check the EPTP it loads.
//!
//! [`Invept`] is the [`TlbFlush`] for EPT: `INVEPT` of the EPTP's context
//! (single-context, or all-context where single-context is unsupported) on
//! every CPU the guest may run on. The instruction is behind
//! `target_arch = "x86_64"`; the type choice and descriptor are plain code,
//! tested on any host.

use core::sync::atomic::{AtomicU64, Ordering};

use bitflags::bitflags;

#[cfg(target_arch = "x86_64")]
use super::descriptor::PageSize;
use super::descriptor::GPA_BITS;
use super::layout::{LayoutError, LeafSizes, TableConfig};
#[cfg(any(target_arch = "x86_64", doc))]
use super::tlb::TlbFlush;

/// Index of the `IA32_VMX_EPT_VPID_CAP` MSR.
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;

bitflags! {
    /// The bits of `IA32_VMX_EPT_VPID_CAP` this crate reads.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptVpidCap: u64 {
        /// Bit 0: execute-only EPT entries (bits 2:0 = 100b) are allowed.
        const EXEC_ONLY = 1 << 0;
        /// Bit 6: a page-walk length of 4 is supported.
        const WALK_4 = 1 << 6;
        /// Bit 7: a page-walk length of 5 is supported.
        const WALK_5 = 1 << 7;
        /// Bit 8: the EPTP may give paging structures memory type UC.
        const MEMTYPE_UC = 1 << 8;
        /// Bit 14: the EPTP may give paging structures memory type WB.
        const MEMTYPE_WB = 1 << 14;
        /// Bit 16: 2 MiB leaves (EPT PDE with bit 7 set).
        const PAGE_2M = 1 << 16;
        /// Bit 17: 1 GiB leaves (EPT PDPTE with bit 7 set).
        const PAGE_1G = 1 << 17;
        /// Bit 20: the `INVEPT` instruction.
        const INVEPT = 1 << 20;
        /// Bit 21: accessed and dirty flags for EPT.
        const ACCESS_DIRTY = 1 << 21;
        /// Bit 22: advanced VM-exit information for EPT violations.
        const ADVANCED_EXIT_INFO = 1 << 22;
        /// Bit 25: the single-context `INVEPT` type.
        const INVEPT_SINGLE = 1 << 25;
        /// Bit 26: the all-context `INVEPT` type.
        const INVEPT_ALL = 1 << 26;
        /// Bit 32: the `INVVPID` instruction.
        const INVVPID = 1 << 32;
    }
}

/// EPTP bit 6: enable accessed and dirty flags (never set by this crate).
pub const EPTP_AD: u64 = 1 << 6;
/// EPTP memory type WB (bits 2:0).
pub const EPTP_MEMTYPE_WB: u64 = 6;
/// EPTP memory type UC (bits 2:0).
pub const EPTP_MEMTYPE_UC: u64 = 0;
/// EPTP bits 5:3: page-walk length minus one (4-level walk).
pub const EPTP_WALK_4: u64 = 3 << 3;

/// Why EPT cannot be used as this crate uses it on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptError {
    /// No 4-level page walk (bit 6).
    NoFourLevelWalk,
    /// Neither WB nor UC is allowed for the paging structures (bits 8, 14).
    NoMemoryType,
    /// No `INVEPT`, or neither its single- nor all-context type (bits 20,
    /// 25, 26).
    NoInvept,
    /// The root is not 4 KiB aligned or lies beyond the physical-address
    /// width.
    BadRoot,
    /// The EPTP enables accessed/dirty flags, which the engine's plain-store
    /// updates do not allow.
    AccessDirtyOn,
    /// The physical-address width is outside 32..=52 bits.
    Layout(LayoutError),
}

/// The `INVEPT` type used to flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InveptKind {
    /// Type 1: the mappings tagged with the descriptor's EPTP.
    SingleContext = 1,
    /// Type 2: the mappings of every EPTP.
    AllContext = 2,
}

/// The EPT capabilities of a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EptCaps(EptVpidCap);

impl EptCaps {
    /// The capabilities in a value of `IA32_VMX_EPT_VPID_CAP`.
    pub const fn from_msr(value: u64) -> Self {
        EptCaps(EptVpidCap::from_bits_retain(value))
    }

    /// The raw capability bits.
    pub const fn bits(&self) -> EptVpidCap {
        self.0
    }

    /// Leaf sizes above 4 KiB the CPU supports.
    pub const fn leaf_sizes(&self) -> LeafSizes {
        let mut s = LeafSizes::empty();
        if self.0.contains(EptVpidCap::PAGE_2M) {
            s = s.union(LeafSizes::SIZE_2M);
        }
        if self.0.contains(EptVpidCap::PAGE_1G) {
            s = s.union(LeafSizes::SIZE_1G);
        }
        s
    }

    /// Whether execute-only entries are allowed.
    pub const fn exec_only(&self) -> bool {
        self.0.contains(EptVpidCap::EXEC_ONLY)
    }

    /// The table layout for this CPU: a 4-level walk of 48 bits, output
    /// addresses below `2^maxphyaddr` (`CPUID.80000008H:EAX[7:0]`), only the
    /// supported leaf sizes, execute-only leaves only if supported.
    pub const fn table_config(&self, maxphyaddr: u8) -> Result<TableConfig, EptError> {
        if !self.0.contains(EptVpidCap::WALK_4) {
            return Err(EptError::NoFourLevelWalk);
        }
        let cfg = match TableConfig::new(GPA_BITS as u8, 0) {
            Ok(c) => c,
            Err(e) => return Err(EptError::Layout(e)),
        };
        let cfg = match cfg.with_oa_bits(maxphyaddr) {
            Ok(c) => c,
            Err(e) => return Err(EptError::Layout(e)),
        };
        Ok(cfg
            .with_leaf_sizes(self.leaf_sizes())
            .with_exec_only(self.exec_only()))
    }

    /// The EPT pointer for the table rooted at `root` (a
    /// [`GuestMemory::root`](super::GuestMemory::root)): paging-structure
    /// memory type WB where allowed, else UC; a 4-level walk; accessed and
    /// dirty flags off (bit 6 clear) whatever the CPU supports.
    pub const fn eptp(&self, root: u64) -> Result<u64, EptError> {
        if !self.0.contains(EptVpidCap::WALK_4) {
            return Err(EptError::NoFourLevelWalk);
        }
        if !root.is_multiple_of(4096) || root >= 1 << 52 {
            return Err(EptError::BadRoot);
        }
        let memtype = if self.0.contains(EptVpidCap::MEMTYPE_WB) {
            EPTP_MEMTYPE_WB
        } else if self.0.contains(EptVpidCap::MEMTYPE_UC) {
            EPTP_MEMTYPE_UC
        } else {
            return Err(EptError::NoMemoryType);
        };
        Ok(root | EPTP_WALK_4 | memtype)
    }

    /// The `INVEPT` type to flush one EPTP's mappings with: single-context
    /// where supported, else all-context (which flushes more, never less).
    pub const fn invept_kind(&self) -> Result<InveptKind, EptError> {
        if !self.0.contains(EptVpidCap::INVEPT) {
            return Err(EptError::NoInvept);
        }
        if self.0.contains(EptVpidCap::INVEPT_SINGLE) {
            Ok(InveptKind::SingleContext)
        } else if self.0.contains(EptVpidCap::INVEPT_ALL) {
            Ok(InveptKind::AllContext)
        } else {
            Err(EptError::NoInvept)
        }
    }
}

/// Whether an EPTP enables hardware accessed/dirty flags (bit 6).
pub const fn eptp_ad_enabled(eptp: u64) -> bool {
    eptp & EPTP_AD != 0
}

/// Read `IA32_VMX_EPT_VPID_CAP`.
///
/// # Safety
///
/// Must run at CPL 0 on a processor where the MSR exists: one that
/// supports the 1-setting of "activate secondary controls" and of "enable
/// EPT" or "enable VPID" (`IA32_VMX_PROCBASED_CTLS` bit 63,
/// `IA32_VMX_PROCBASED_CTLS2` bit 33 or 37). Otherwise `RDMSR` raises #GP.
#[cfg(target_arch = "x86_64")]
pub unsafe fn read_ept_vpid_cap() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that the MSR exists; RDMSR
    // only reads it into EDX:EAX.
    unsafe {
        core::arch::asm!(
            "rdmsr",
            in("ecx") IA32_VMX_EPT_VPID_CAP,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Running a function on every CPU that may hold the guest's EPT
/// translations (an IPI broadcast in a multi-CPU hypervisor).
pub trait OnEachCpu {
    /// Run `f` on each of those CPUs (in VMX root operation) and return
    /// once every run has finished.
    fn on_each_cpu(&self, f: &(dyn Fn() + Sync));
}

/// [`OnEachCpu`] for a VM whose vCPUs only ever run on the calling CPU:
/// runs `f` here.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisCpuOnly;

impl OnEachCpu for ThisCpuOnly {
    fn on_each_cpu(&self, f: &(dyn Fn() + Sync)) {
        f()
    }
}

/// The 128-bit `INVEPT` descriptor: the EPTP, then 64 reserved bits (0).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InveptDescriptor {
    /// The EPTP whose mappings to invalidate (ignored by all-context).
    pub eptp: u64,
    /// Reserved, must be 0.
    pub reserved: u64,
}

const _: () = assert!(core::mem::size_of::<InveptDescriptor>() == 16);

/// The EPT [`TlbFlush`]: `INVEPT` of one EPTP's mappings on every CPU of
/// `C` (on x86_64 targets).
///
/// * [`flush_range`](TlbFlush::flush_range): `INVEPT` (single-context for
///   the EPTP, or all-context) on each CPU. `INVEPT` has no by-address
///   type, so any range flushes the whole context.
/// * [`flush_upgrade`](TlbFlush::flush_upgrade): nothing. An EPT violation
///   invalidates the guest-physical mappings the processor used for the
///   faulting address (Intel SDM Vol. 3C, "Operations that Invalidate
///   Cached Mappings"), so the faulting CPU holds no stale narrower entry,
///   and a CPU that cached one faults and is fixed the same way.
/// * [`publish`](TlbFlush::publish): nothing (stores are seen in program
///   order and VM entry serializes).
#[derive(Debug)]
pub struct Invept<C> {
    desc: InveptDescriptor,
    kind: InveptKind,
    cpus: C,
    issued: AtomicU64,
    failed: AtomicU64,
}

impl<C: OnEachCpu> Invept<C> {
    /// A flush for `eptp` (from [`EptCaps::eptp`]) with the `INVEPT` type
    /// `caps` allow, run on `cpus`.
    pub fn new(caps: &EptCaps, eptp: u64, cpus: C) -> Result<Self, EptError> {
        if eptp_ad_enabled(eptp) {
            return Err(EptError::AccessDirtyOn);
        }
        Ok(Invept {
            desc: InveptDescriptor { eptp, reserved: 0 },
            kind: caps.invept_kind()?,
            cpus,
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The `INVEPT` type used.
    pub const fn kind(&self) -> InveptKind {
        self.kind
    }

    /// The descriptor passed to `INVEPT`.
    pub const fn descriptor(&self) -> &InveptDescriptor {
        &self.desc
    }

    /// The CPUs flushed.
    pub const fn cpus(&self) -> &C {
        &self.cpus
    }

    /// (`INVEPT` executed, of which failed with VMfail). A failure means
    /// the type or the EPTP was invalid, which the constructor rules out
    /// for a CPU matching `caps`.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.issued.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// `INVEPT` on the calling CPU. Returns false on VMfail.
    #[cfg(target_arch = "x86_64")]
    pub fn invept_local(&self) -> bool {
        let failed: u8;
        // SAFETY: INVEPT only invalidates cached EPT translations; it reads
        // the 16-byte descriptor borrowed here and writes RFLAGS. The
        // caller runs in VMX root operation at CPL 0 (the only place a
        // hypervisor flushes from); the type is one `caps` reported
        // supported.
        unsafe {
            core::arch::asm!(
                "invept {kind}, [{desc}]",
                "setbe {failed}",
                kind = in(reg) self.kind as u64,
                desc = in(reg) core::ptr::addr_of!(self.desc),
                failed = out(reg_byte) failed,
                options(nostack),
            );
        }
        self.issued.fetch_add(1, Ordering::Relaxed);
        if failed != 0 {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        failed == 0
    }
}

#[cfg(target_arch = "x86_64")]
impl<C: OnEachCpu + Sync> TlbFlush for Invept<C> {
    fn flush_range(&self, _start: u64, _end: u64) {
        self.cpus.on_each_cpu(&|| {
            self.invept_local();
        });
    }

    fn flush_upgrade(&self, _gpa: u64, _size: PageSize) {}

    fn publish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::{PageSize, Perm};
    use crate::tlb::TlbFlush;

    /// A capability value with every bit this crate reads (bits 0, 6, 8,
    /// 14, 16, 17, 20, 21, 22, 25, 26, 32 and INVVPID types 40..=43), as
    /// recent server processors report.
    const FULL: u64 = 0x0000_0f01_0673_4141;
    /// 4-level walk, WB, INVEPT all-context only: no large pages, no
    /// execute-only, no single-context INVEPT.
    const MINIMAL: u64 = (1 << 6) | (1 << 14) | (1 << 20) | (1 << 26);

    #[test]
    fn bit_positions_are_the_sdm_ones() {
        assert_eq!(EptVpidCap::EXEC_ONLY.bits(), 1);
        assert_eq!(EptVpidCap::WALK_4.bits(), 1 << 6);
        assert_eq!(EptVpidCap::MEMTYPE_UC.bits(), 1 << 8);
        assert_eq!(EptVpidCap::MEMTYPE_WB.bits(), 1 << 14);
        assert_eq!(EptVpidCap::PAGE_2M.bits(), 1 << 16);
        assert_eq!(EptVpidCap::PAGE_1G.bits(), 1 << 17);
        assert_eq!(EptVpidCap::INVEPT.bits(), 1 << 20);
        assert_eq!(EptVpidCap::ACCESS_DIRTY.bits(), 1 << 21);
        assert_eq!(EptVpidCap::INVEPT_SINGLE.bits(), 1 << 25);
        assert_eq!(EptVpidCap::INVEPT_ALL.bits(), 1 << 26);
        assert_eq!(IA32_VMX_EPT_VPID_CAP, 0x48c);
        assert_eq!(EPTP_WALK_4, 0x18);
    }

    #[test]
    fn a_full_msr_value_allows_everything_but_access_dirty() {
        let caps = EptCaps::from_msr(FULL);
        assert!(caps.bits().contains(EptVpidCap::ACCESS_DIRTY));
        assert_eq!(caps.leaf_sizes(), LeafSizes::all());
        assert!(caps.exec_only());
        let cfg = caps.table_config(46).unwrap();
        assert_eq!(
            (cfg.ia_bits(), cfg.start_level(), cfg.oa_bits()),
            (48, 0, 46)
        );
        assert!(cfg.allows_size(PageSize::Size1G) && cfg.allows_perm(Perm::X));
        // WB, 4-level, A/D off although the CPU has it.
        let eptp = caps.eptp(0x1234_5000).unwrap();
        assert_eq!(eptp, 0x1234_5000 | 0x18 | 6);
        assert!(!eptp_ad_enabled(eptp));
        assert_eq!(caps.invept_kind(), Ok(InveptKind::SingleContext));
    }

    #[test]
    fn a_minimal_cpu_gets_small_leaves_no_execute_only_and_all_context() {
        let caps = EptCaps::from_msr(MINIMAL);
        let cfg = caps.table_config(39).unwrap();
        for s in [PageSize::Size1G, PageSize::Size2M] {
            assert!(!cfg.allows_size(s), "{s:?}");
        }
        assert!(cfg.allows_size(PageSize::Size4K));
        assert!(!cfg.allows_perm(Perm::X));
        assert!(cfg.allows_perm(Perm::R | Perm::X));
        assert_eq!(caps.invept_kind(), Ok(InveptKind::AllContext));
        // 2 MiB but not 1 GiB.
        let caps = EptCaps::from_msr(MINIMAL | (1 << 16));
        assert_eq!(caps.leaf_sizes(), LeafSizes::SIZE_2M);
    }

    #[test]
    fn missing_requirements_are_errors() {
        let no_walk = EptCaps::from_msr(FULL & !(1 << 6));
        assert_eq!(no_walk.table_config(46), Err(EptError::NoFourLevelWalk));
        assert_eq!(no_walk.eptp(0x1000), Err(EptError::NoFourLevelWalk));
        let no_wb = EptCaps::from_msr(FULL & !(1 << 14));
        assert_eq!(
            no_wb.eptp(0x1000),
            Ok(0x1000 | 0x18),
            "UC paging structures"
        );
        let no_memtype = EptCaps::from_msr(FULL & !(1 << 14) & !(1 << 8));
        assert_eq!(no_memtype.eptp(0x1000), Err(EptError::NoMemoryType));
        assert_eq!(EptCaps::from_msr(FULL).eptp(0x1008), Err(EptError::BadRoot));
        let no_invept = EptCaps::from_msr(FULL & !(1 << 20));
        assert_eq!(no_invept.invept_kind(), Err(EptError::NoInvept));
        let no_types = EptCaps::from_msr(FULL & !(3 << 25));
        assert_eq!(no_types.invept_kind(), Err(EptError::NoInvept));
        assert!(matches!(
            EptCaps::from_msr(FULL).table_config(60),
            Err(EptError::Layout(_))
        ));
    }

    #[test]
    fn invept_takes_the_eptp_and_refuses_access_dirty() {
        let caps = EptCaps::from_msr(FULL);
        let eptp = caps.eptp(0x8000).unwrap();
        let f = Invept::new(&caps, eptp, ThisCpuOnly).unwrap();
        assert_eq!(f.kind(), InveptKind::SingleContext);
        assert_eq!(*f.descriptor(), InveptDescriptor { eptp, reserved: 0 });
        assert_eq!(f.counts(), (0, 0));
        assert_eq!(
            Invept::new(&caps, eptp | EPTP_AD, ThisCpuOnly).map(|_| ()),
            Err(EptError::AccessDirtyOn)
        );
        let all = EptCaps::from_msr(MINIMAL);
        assert_eq!(
            Invept::new(&all, eptp, ThisCpuOnly).map(|f| f.kind()),
            Ok(InveptKind::AllContext)
        );
        assert_eq!(
            Invept::new(&EptCaps::from_msr(0), eptp, ThisCpuOnly).map(|_| ()),
            Err(EptError::NoInvept)
        );
    }

    /// From the MSR value to the guest-fault path: a 1 GiB host page is
    /// mapped with the largest leaf the CPU has.
    #[test]
    fn the_fault_path_uses_only_leaf_sizes_the_msr_reports() {
        use crate::testutil::*;
        use crate::{Config, Ept, GuestFault, RegionSpec};
        use hmm_core::doubles::{FaultMode, TestMm};
        use hmm_core::VmFlags;
        let hva = 0x7e00_0000_0000;
        for (msr, want, n) in [
            (FULL, PageSize::Size1G, 1),
            (MINIMAL | (1 << 16), PageSize::Size2M, 1),
            (MINIMAL, PageSize::Size4K, 512),
        ] {
            let mm = TestMm::new();
            let flags = VmFlags::READ | VmFlags::WRITE | VmFlags::HUGETLB;
            mm.add_vma(hva, hva + G1, flags, 18, FaultMode::Populate);
            let (pool, tlb) = (pool(), CountTlb::default());
            // 52 bits: the test pool's "physical" addresses are host heap
            // addresses.
            let config = Config {
                table: EptCaps::from_msr(msr).table_config(52).unwrap(),
                ..Config::default()
            };
            let vm: Vm<'_, Ept, TestMm> = vm(&mm, &pool, &tlb, config);
            let spec = RegionSpec {
                gpa: G1,
                size: G1,
                hva,
                perm: Perm::R | Perm::W,
            };
            vm.add_region(spec, &mm).unwrap();
            assert_eq!(
                vm.handle_fault(G1 + 0x10_0000, Perm::W),
                GuestFault::Mapped {
                    size: want,
                    leaves: n
                },
                "{msr:#x}"
            );
            assert_eq!(vm.audit(), Ok(n as u64 * (want.bytes() >> 12)));
        }
    }

    /// Execute-only leaves reach the table only where the MSR allows them.
    #[test]
    fn execute_only_leaves_follow_bit_0() {
        use crate::alloc::StaticPool;
        use crate::descriptor::{Attrs, Format};
        use crate::{Ept, MapError, PageTable};
        extern crate std;
        struct NoTlb;
        impl TlbFlush for NoTlb {
            fn flush_range(&self, _: u64, _: u64) {}
        }
        let x = Attrs::ram(Perm::X);
        for (msr, ok) in [(FULL, true), (FULL & !1, false)] {
            let pool: std::boxed::Box<StaticPool<8>> = std::boxed::Box::default();
            let cfg = EptCaps::from_msr(msr).table_config(52).unwrap();
            let mut pt = PageTable::<Ept>::with_config(&*pool, cfg).unwrap();
            let r = pt.map(&*pool, &NoTlb, 0, 0x5000, PageSize::Size4K, x);
            if ok {
                assert!(r.is_ok());
                let m = pt.translate(&*pool, 0).unwrap();
                assert_eq!(Ept::leaf(3, m.pa, m.attrs) & 0b111, 0b100);
            } else {
                assert_eq!(r, Err(MapError::ExecOnlyUnsupported));
                assert!(pt.translate(&*pool, 0).is_none());
            }
        }
    }
}
