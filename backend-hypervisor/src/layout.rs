//! The layout of one second-stage table and what the hardware lets it
//! hold: [`TableConfig`].
//!
//! Both formats use the 4 KiB granule: 512 entries per table, 9 input bits
//! resolved per level, levels 0 to 3 (see [`descriptor`](super::descriptor)).
//! What varies between CPUs:
//!
//! * **Input size and start level.** A table translates input addresses
//!   below `2^ia_bits`. Intel EPT with a 4-level walk always translates 48
//!   bits from level 0. An Arm stage 2 may start at level 0, 1 or 2 and may
//!   *concatenate* up to 16 tables at its start level instead of adding a
//!   level (Arm ARM, "Concatenated translation tables for the initial
//!   stage 2 lookup"). The rule, for the 4 KiB granule: starting at level
//!   `l`, whose entries each map `2^s` bytes (`s` = 39, 30, 21 for
//!   `l` = 0, 1, 2), the input size must resolve at least one bit and at
//!   most 9 + 4 bits at that level, `s + 1 <= ia_bits <= s + 13`, and the
//!   start level holds `2^(ia_bits - s - 9)` concatenated tables when that
//!   exceeds one. Which start levels a CPU accepts also depends on its
//!   physical-address range (level 0 needs 44 bits): that choice belongs to
//!   [`Stage2Vtcr`](super::vtcr::Stage2Vtcr).
//! * **Output size.** Leaves and table pointers must point below
//!   `2^oa_bits` (Arm: VTCR_EL2.PS; x86: MAXPHYADDR).
//! * **Leaf sizes.** 4 KiB leaves always exist; 2 MiB and 1 GiB leaves only
//!   where the CPU supports them (EPT: `IA32_VMX_EPT_VPID_CAP` bits 16 and
//!   17; Arm: always with the 4 KiB granule) and where the walk has the
//!   level (a stage 2 starting at level 2 has no 1 GiB blocks).
//! * **Execute-only leaves** (execute without read): EPT only where
//!   `IA32_VMX_EPT_VPID_CAP` bit 0 says so; always on Arm.
//!
//! The engine ([`PageTable`](super::pagetable::PageTable)) lays its root out
//! by the configuration and refuses any mapping the configuration does not
//! allow; the guest-fault path picks only leaf sizes it allows.

use bitflags::bitflags;

use super::descriptor::{level_shift, PageSize, Perm, GPA_BITS};

bitflags! {
    /// Leaf sizes above 4 KiB that the hardware supports (4 KiB leaves are
    /// always supported).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct LeafSizes: u8 {
        /// 2 MiB leaves (level 2).
        const SIZE_2M = 1 << 0;
        /// 1 GiB leaves (level 1).
        const SIZE_1G = 1 << 1;
    }
}

/// Most tables a start level may concatenate.
pub const MAX_ROOT_TABLES: usize = 16;

/// Why a [`TableConfig`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutError {
    /// The start level is not 0, 1 or 2.
    StartLevel(u8),
    /// The input size cannot be translated from this start level (too few
    /// bits for the level, more than 16 concatenated tables, or more than
    /// 48 bits).
    InputSize {
        /// The requested input size.
        ia_bits: u8,
        /// The requested start level.
        start_level: u8,
    },
    /// The output size is outside 32..=52 bits.
    OutputSize(u8),
}

/// The layout and hardware limits of one second-stage table (see the
/// module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableConfig {
    ia_bits: u8,
    start_level: u8,
    oa_bits: u8,
    leaf_sizes: LeafSizes,
    exec_only: bool,
}

impl Default for TableConfig {
    /// [`TableConfig::FULL`].
    fn default() -> Self {
        Self::FULL
    }
}

impl TableConfig {
    /// 48 input bits from level 0 (EPT's 4-level walk, an Arm stage 2 on a
    /// CPU with at least 44 PA bits), 52 output bits (capped by the
    /// format's field), every leaf size, execute-only allowed. Hardware
    /// with less must say so (see [`Stage2Vtcr`](super::vtcr::Stage2Vtcr)
    /// and [`EptCaps`](super::vmx::EptCaps)).
    pub const FULL: TableConfig = TableConfig {
        ia_bits: GPA_BITS as u8,
        start_level: 0,
        oa_bits: 52,
        leaf_sizes: LeafSizes::all(),
        exec_only: true,
    };

    /// A table translating `ia_bits` input bits from `start_level`, with
    /// the default output size, leaf sizes and execute-only permission.
    /// Checks the concatenation rule of the module docs.
    pub const fn new(ia_bits: u8, start_level: u8) -> Result<Self, LayoutError> {
        if start_level > 2 {
            return Err(LayoutError::StartLevel(start_level));
        }
        let s = level_shift(start_level);
        let ia = ia_bits as u32;
        if ia < s + 1 || ia > s + 9 + 4 || ia > GPA_BITS {
            return Err(LayoutError::InputSize {
                ia_bits,
                start_level,
            });
        }
        Ok(TableConfig {
            ia_bits,
            start_level,
            oa_bits: 52,
            leaf_sizes: LeafSizes::all(),
            exec_only: true,
        })
    }

    /// The same table with output addresses limited to `oa_bits`
    /// (32..=52).
    pub const fn with_oa_bits(mut self, oa_bits: u8) -> Result<Self, LayoutError> {
        if oa_bits < 32 || oa_bits > 52 {
            return Err(LayoutError::OutputSize(oa_bits));
        }
        self.oa_bits = oa_bits;
        Ok(self)
    }

    /// The same table with only these leaf sizes above 4 KiB.
    pub const fn with_leaf_sizes(mut self, sizes: LeafSizes) -> Self {
        self.leaf_sizes = sizes;
        self
    }

    /// The same table with execute-only leaves allowed or not.
    pub const fn with_exec_only(mut self, allowed: bool) -> Self {
        self.exec_only = allowed;
        self
    }

    /// Input-address size in bits.
    pub const fn ia_bits(&self) -> u8 {
        self.ia_bits
    }

    /// One past the highest input address.
    pub const fn ia_limit(&self) -> u64 {
        1 << self.ia_bits
    }

    /// Level the walk starts at.
    pub const fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Output-address size in bits (before the format's own limit).
    pub const fn oa_bits(&self) -> u8 {
        self.oa_bits
    }

    /// Leaf sizes above 4 KiB the hardware supports.
    pub const fn leaf_sizes(&self) -> LeafSizes {
        self.leaf_sizes
    }

    /// Whether execute-only leaves are allowed.
    pub const fn exec_only(&self) -> bool {
        self.exec_only
    }

    /// Tables concatenated at the start level: `2^(ia_bits - s - 9)`, at
    /// least 1 (`s` as in the module docs). The root is that many
    /// physically contiguous table pages, aligned to their total size.
    pub const fn root_tables(&self) -> usize {
        let s = level_shift(self.start_level) + 9;
        let ia = self.ia_bits as u32;
        if ia > s {
            1 << (ia - s)
        } else {
            1
        }
    }

    /// Bytes of input-address space one start-level table page covers
    /// (512 start-level entries).
    pub const fn root_span(&self) -> u64 {
        1 << (level_shift(self.start_level) + 9)
    }

    /// Entries of the start level the input size uses (across all its
    /// concatenated tables).
    pub const fn root_entries(&self) -> u64 {
        1 << (self.ia_bits as u32 - level_shift(self.start_level))
    }

    /// Whether leaves of `size` may be installed: the hardware supports
    /// the size and the walk has its level.
    pub const fn allows_size(&self, size: PageSize) -> bool {
        if size.level() < self.start_level {
            return false;
        }
        match size {
            PageSize::Size4K => true,
            PageSize::Size2M => self.leaf_sizes.contains(LeafSizes::SIZE_2M),
            PageSize::Size1G => self.leaf_sizes.contains(LeafSizes::SIZE_1G),
        }
    }

    /// Whether leaves with `perm` may be installed: execute-only only where
    /// allowed.
    pub fn allows_perm(&self, perm: Perm) -> bool {
        self.exec_only || !perm.contains(Perm::X) || perm.contains(Perm::R)
    }
}

const _: () = assert!(MAX_ROOT_TABLES == 1 << 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_full_four_level_walk() {
        let c = TableConfig::default();
        assert_eq!((c.ia_bits(), c.start_level(), c.root_tables()), (48, 0, 1));
        assert_eq!(c.root_entries(), 512);
        assert_eq!(c.ia_limit(), 1 << 48);
        assert_eq!(c.root_span(), 1 << 48);
        assert_eq!(TableConfig::new(40, 1).unwrap().root_span(), 512 << 30);
        assert_eq!(TableConfig::new(32, 2).unwrap().root_span(), 1 << 30);
        for s in PageSize::LARGEST_FIRST {
            assert!(c.allows_size(s));
        }
        assert!(c.allows_perm(Perm::X));
    }

    // Arm ARM, concatenated initial stage-2 tables with the 4 KiB granule:
    // level 0 takes 40..=48 bits (non-LPA2), level 1 31..=43, level 2
    // 22..=34; the number of tables is 2^(ia - shift - 9).
    #[test]
    fn input_size_ranges_per_start_level() {
        for (level, lo, hi) in [(0u8, 40u8, 48u8), (1, 31, 43), (2, 22, 34)] {
            assert!(TableConfig::new(lo - 1, level).is_err(), "level {level}");
            assert!(TableConfig::new(hi + 1, level).is_err(), "level {level}");
            for ia in lo..=hi {
                let c = TableConfig::new(ia, level).unwrap();
                let bits_at_root = ia as u32 - level_shift(level);
                assert_eq!(c.root_entries(), 1 << bits_at_root);
                assert_eq!(c.root_tables() as u64, c.root_entries().div_ceil(512));
                assert!(c.root_tables() <= MAX_ROOT_TABLES);
            }
        }
        assert_eq!(TableConfig::new(40, 1).unwrap().root_tables(), 2);
        assert_eq!(TableConfig::new(42, 1).unwrap().root_tables(), 8);
        assert_eq!(TableConfig::new(43, 1).unwrap().root_tables(), 16);
        assert_eq!(TableConfig::new(32, 2).unwrap().root_tables(), 4);
        assert_eq!(TableConfig::new(36, 1).unwrap().root_tables(), 1);
        assert_eq!(TableConfig::new(44, 0).unwrap().root_tables(), 1);
        assert_eq!(
            TableConfig::new(40, 3),
            Err(LayoutError::StartLevel(3)),
            "start level 3 is not supported"
        );
    }

    #[test]
    fn leaf_sizes_need_hardware_support_and_the_level() {
        let l2 = TableConfig::new(32, 2).unwrap();
        assert!(!l2.allows_size(PageSize::Size1G), "no level 1 in the walk");
        assert!(l2.allows_size(PageSize::Size2M));
        let no1g = TableConfig::default().with_leaf_sizes(LeafSizes::SIZE_2M);
        assert!(!no1g.allows_size(PageSize::Size1G));
        assert!(no1g.allows_size(PageSize::Size2M));
        let small = TableConfig::default().with_leaf_sizes(LeafSizes::empty());
        assert!(!small.allows_size(PageSize::Size2M));
        assert!(small.allows_size(PageSize::Size4K));
    }

    #[test]
    fn execute_only_needs_permission() {
        let c = TableConfig::default().with_exec_only(false);
        assert!(!c.allows_perm(Perm::X));
        assert!(c.allows_perm(Perm::R | Perm::X));
        assert!(c.allows_perm(Perm::R));
        assert!(c.allows_perm(Perm::empty()));
    }

    #[test]
    fn output_size_bounds() {
        let c = TableConfig::default();
        assert_eq!(c.with_oa_bits(40).unwrap().oa_bits(), 40);
        assert_eq!(c.with_oa_bits(31), Err(LayoutError::OutputSize(31)));
        assert_eq!(c.with_oa_bits(53), Err(LayoutError::OutputSize(53)));
    }
}
