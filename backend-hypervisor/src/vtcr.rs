//! Arm stage-2 translation control: the VTCR_EL2 value and the table
//! layout for a CPU's physical-address range.
//!
//! [`Stage2Vtcr::for_parange`] takes `ID_AA64MMFR0_EL1.PARange` and chooses
//! as KVM's `kvm_get_vtcr` does for the 4 KiB granule:
//!
//! * IPA size = the PA size, capped at 48 bits (this crate writes the
//!   48-bit descriptor format, without FEAT_LPA2), so `T0SZ = 64 - IPA`.
//!   An IPA wider than the PA range is not allowed for an AArch64 EL1.
//! * Levels = `(IPA - 8) / 9`, at least 2 (KVM's
//!   `stage2_pgtable_levels`), so the walk starts at level `4 - levels`,
//!   and the start level concatenates `2^(IPA - shift - 9)` tables where
//!   the input size needs more than one (see
//!   [`layout`](super::layout)). Level 0 is chosen only for 44 bits and
//!   more, which is exactly where the architecture allows it
//!   (`AArch64.S2InvalidSL`: SL0 = 0b10 with the 4 KiB granule is invalid
//!   when the PA range is under 44 bits).
//!
//! | PA bits | IPA bits | T0SZ | start level (SL0) | root tables |
//! |---|---|---|---|---|
//! | 32 | 32 | 32 | 2 (0b00) | 4 |
//! | 36 | 36 | 28 | 1 (0b01) | 1 |
//! | 40 | 40 | 24 | 1 (0b01) | 2 |
//! | 42 | 42 | 22 | 1 (0b01) | 8 |
//! | 44 | 44 | 20 | 0 (0b10) | 1 |
//! | 48 | 48 | 16 | 0 (0b10) | 1 |
//! | 52 | 48 | 16 | 0 (0b10) | 1 |
//!
//! The other fields: TG0 = 4 KiB, SH0 inner shareable, IRGN0/ORGN0
//! write-back (the table walks are cacheable, like the tables' normal
//! write-back mapping at EL2), PS = the output size (the PA size, capped at
//! 48 bits), VS = 0 (8-bit VMIDs), bit 31 RES1.
//!
//! **Hardware access-flag and dirty-state updates stay off:** HA (bit 21)
//! and HD (bit 22) are never set. The engine updates live descriptors with
//! plain stores, which could overwrite a flag the walker set concurrently;
//! with HA and HD clear the walker never writes a descriptor. (Every leaf
//! this crate writes also has AF set and DBM clear, so even with HA/HD on
//! there would be nothing for the walker to update.) Firmware should read
//! VTCR_EL2 back and check [`Stage2Vtcr::hw_ad_enabled`] is false.

use super::layout::TableConfig;

/// VTCR_EL2.HA: hardware access-flag updates (never set here).
pub const VTCR_HA: u64 = 1 << 21;
/// VTCR_EL2.HD: hardware dirty-state updates (never set here).
pub const VTCR_HD: u64 = 1 << 22;
/// Bit 31 of VTCR_EL2 is RES1.
pub const VTCR_RES1: u64 = 1 << 31;

/// The widest IPA and output size this crate's descriptors express.
const MAX_BITS: u8 = 48;

/// The stage-2 configuration for one PA range (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stage2Vtcr {
    pa_bits: u8,
    ipa_bits: u8,
    start_level: u8,
    table: TableConfig,
}

/// The PA size of an `ID_AA64MMFR0_EL1.PARange` value (bits 3:0);
/// unknown encodings read as the largest defined one below them.
pub const fn parange_bits(parange: u64) -> u8 {
    match parange & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 56,
    }
}

/// The PARange / PS encoding of a PA size (one of 32, 36, 40, 42, 44, 48,
/// 52, 56; a size between two encodings rounds down).
pub const fn ps_field(bits: u8) -> u64 {
    match bits {
        0..=35 => 0,
        36..=39 => 1,
        40..=41 => 2,
        42..=43 => 3,
        44..=47 => 4,
        48..=51 => 5,
        52..=55 => 6,
        _ => 7,
    }
}

/// The SL0 encoding of a start level with the 4 KiB granule (0b10 level 0,
/// 0b01 level 1, 0b00 level 2).
pub const fn sl0_field(start_level: u8) -> u64 {
    match start_level {
        0 => 0b10,
        1 => 0b01,
        _ => 0b00,
    }
}

impl Stage2Vtcr {
    /// The configuration for a CPU whose `ID_AA64MMFR0_EL1.PARange` is
    /// `parange`.
    pub const fn for_parange(parange: u64) -> Self {
        Self::for_pa_bits(parange_bits(parange))
    }

    /// The configuration for a PA size of `pa_bits` (at least 32).
    pub const fn for_pa_bits(pa_bits: u8) -> Self {
        let pa_bits = if pa_bits < 32 { 32 } else { pa_bits };
        let ipa_bits = if pa_bits > MAX_BITS {
            MAX_BITS
        } else {
            pa_bits
        };
        let mut levels = (ipa_bits - 8) / 9;
        if levels < 2 {
            levels = 2;
        }
        let start_level = 4 - levels;
        let oa_bits = ipa_bits;
        // The IPA sizes reachable here (32..=48) with the start level above
        // always satisfy the concatenation rule (checked by the tests).
        let table = match TableConfig::new(ipa_bits, start_level) {
            Ok(t) => t,
            Err(_) => TableConfig::FULL,
        };
        let table = match table.with_oa_bits(oa_bits) {
            Ok(t) => t,
            Err(_) => table,
        };
        Stage2Vtcr {
            pa_bits,
            ipa_bits,
            start_level,
            table,
        }
    }

    /// The CPU's PA size.
    pub const fn pa_bits(&self) -> u8 {
        self.pa_bits
    }

    /// The IPA size the table translates.
    pub const fn ipa_bits(&self) -> u8 {
        self.ipa_bits
    }

    /// The level the walk starts at.
    pub const fn start_level(&self) -> u8 {
        self.start_level
    }

    /// VTCR_EL2.T0SZ.
    pub const fn t0sz(&self) -> u64 {
        64 - self.ipa_bits as u64
    }

    /// VTCR_EL2.SL0.
    pub const fn sl0(&self) -> u64 {
        sl0_field(self.start_level)
    }

    /// VTCR_EL2.PS.
    pub const fn ps(&self) -> u64 {
        ps_field(self.table.oa_bits())
    }

    /// Tables concatenated at the start level (the VTTBR_EL2 base must be
    /// aligned to `root_tables() * 4 KiB`).
    pub const fn root_tables(&self) -> usize {
        self.table.root_tables()
    }

    /// The layout to build the stage-2 table with.
    pub const fn table(&self) -> TableConfig {
        self.table
    }

    /// The VTCR_EL2 value.
    pub const fn vtcr(&self) -> u64 {
        self.t0sz()
            | (self.sl0() << 6)
            | (0b01 << 8) // IRGN0: normal, inner write-back
            | (0b01 << 10) // ORGN0: normal, outer write-back
            | (0b11 << 12) // SH0: inner shareable; TG0 (bits 15:14) 0b00: 4 KiB
            | (self.ps() << 16)
            | VTCR_RES1
    }

    /// The VTTBR_EL2 value for a root at `root` (aligned to the
    /// concatenated root's size) and an 8-bit VMID.
    pub const fn vttbr(root: u64, vmid: u8) -> u64 {
        root | ((vmid as u64) << 48)
    }

    /// Whether a VTCR_EL2 value enables hardware access-flag or dirty-state
    /// updates (HA or HD), which this crate's plain-store descriptor
    /// updates do not allow.
    pub const fn hw_ad_enabled(vtcr: u64) -> bool {
        vtcr & (VTCR_HA | VTCR_HD) != 0
    }

    /// The start level a VTCR_EL2 value selects (4 KiB granule), or `None`
    /// for a reserved SL0.
    pub const fn start_level_of(vtcr: u64) -> Option<u8> {
        match (vtcr >> 6) & 0b11 {
            0b10 => Some(0),
            0b01 => Some(1),
            0b00 => Some(2),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::descriptor::PageSize;
    use std::vec::Vec;

    /// The architecture's validity rules for a stage-2 VTCR_EL2 with the
    /// 4 KiB granule and FEAT_LPA2 off, written from the Arm ARM's
    /// `AArch64.S2InvalidSL`, `AArch64.S2InconsistentSL` and the T0SZ
    /// limits, independently of the code under test. Returns the start
    /// level and the number of concatenated tables.
    fn arch_check(vtcr: u64, pa_bits: u32) -> Result<(u32, u64), &'static str> {
        let t0sz = (vtcr & 0x3f) as u32;
        let sl0 = (vtcr >> 6) & 3;
        let tg0 = (vtcr >> 14) & 3;
        let ps = (vtcr >> 16) & 7;
        if tg0 != 0 {
            return Err("TG0 is not 4 KiB");
        }
        if vtcr & (1 << 31) == 0 {
            return Err("RES1 bit 31 clear");
        }
        // Without FEAT_LPA2 the smallest T0SZ is 16 (48 bits).
        if t0sz < 16 {
            return Err("T0SZ below 16");
        }
        let ia = 64 - t0sz;
        // An AArch64 EL1 with an IPA wider than the PA range: CONSTRAINED
        // UNPREDICTABLE, treated as a fault.
        if ia > pa_bits {
            return Err("IPA wider than the PA range");
        }
        // S2InvalidSL, 4 KiB granule: SL0 = 0b11 needs FEAT_TTST (level 3
        // start, not used); SL0 = 0b10 (level 0) needs PAMax >= 44.
        let start = match sl0 {
            0b00 => 2,
            0b01 => 1,
            0b10 => {
                if pa_bits < 44 {
                    return Err("level-0 start with a PA range under 44 bits");
                }
                0
            }
            _ => return Err("SL0 = 0b11"),
        };
        // S2InconsistentSL: stride 9, granule 12 bits; at least one bit and
        // at most stride + 4 bits (16 concatenated tables) at the start.
        let levels = 3 - start;
        let min = levels * 9 + 12 + 1;
        let max = min + 8 + 4;
        if ia < min || ia > max {
            return Err("input size inconsistent with the start level");
        }
        // PS must not exceed the PA range and must cover 48-bit outputs no
        // wider than the descriptors.
        let ps_bits = [32, 36, 40, 42, 44, 48, 52, 56][ps as usize];
        if ps_bits > pa_bits || ps_bits > 48 {
            return Err("PS wider than the PA range or the descriptor format");
        }
        let bits_at_start = ia - (12 + 9 * levels);
        let tables = if bits_at_start > 9 {
            1 << (bits_at_start - 9)
        } else {
            1
        };
        Ok((start, tables))
    }

    const PA_RANGES: [(u64, u32); 7] = [
        (0, 32),
        (1, 36),
        (2, 40),
        (3, 42),
        (4, 44),
        (5, 48),
        (6, 52),
    ];

    #[test]
    fn every_pa_range_gets_a_legal_vtcr() {
        for (parange, pa) in PA_RANGES {
            let v = Stage2Vtcr::for_parange(parange);
            assert_eq!(u32::from(v.pa_bits()), pa);
            let (start, tables) = arch_check(v.vtcr(), pa)
                .unwrap_or_else(|e| panic!("PA {pa} bits: {e} (VTCR {:#x})", v.vtcr()));
            assert_eq!(u32::from(v.start_level()), start, "PA {pa}");
            assert_eq!(v.root_tables() as u64, tables, "PA {pa}");
            assert_eq!(
                v.table().start_level(),
                v.start_level(),
                "the table is laid out like the VTCR says"
            );
            assert_eq!(v.table().ia_bits(), v.ipa_bits());
            assert!(!Stage2Vtcr::hw_ad_enabled(v.vtcr()), "PA {pa}: HA/HD set");
            assert_eq!(Stage2Vtcr::start_level_of(v.vtcr()), Some(v.start_level()));
        }
    }

    /// The chosen values, PA range by PA range (KVM's choice: the fewest
    /// levels, at least two, with the IPA as wide as the PA range up to
    /// 48 bits).
    #[test]
    fn chosen_ipa_t0sz_start_level_and_concatenation() {
        let want: [(u32, u8, u64, u8, u64, usize, u64); 7] = [
            // pa, ipa, t0sz, start, sl0, tables, ps
            (32, 32, 32, 2, 0b00, 4, 0),
            (36, 36, 28, 1, 0b01, 1, 1),
            (40, 40, 24, 1, 0b01, 2, 2),
            (42, 42, 22, 1, 0b01, 8, 3),
            (44, 44, 20, 0, 0b10, 1, 4),
            (48, 48, 16, 0, 0b10, 1, 5),
            (52, 48, 16, 0, 0b10, 1, 5),
        ];
        let got: Vec<_> = PA_RANGES
            .iter()
            .map(|&(parange, pa)| {
                let v = Stage2Vtcr::for_parange(parange);
                (
                    pa,
                    v.ipa_bits(),
                    v.t0sz(),
                    v.start_level(),
                    v.sl0(),
                    v.root_tables(),
                    v.ps(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    /// The old configuration (level 0, IPA clamped to 40..=48) is what the
    /// rules reject on a 40-bit CPU.
    #[test]
    fn level_zero_start_is_rejected_below_44_bits() {
        let old_a53 = 0x8002_3598u64; // T0SZ 24, SL0 0b10, PS 40 bits
        assert_eq!(
            arch_check(old_a53, 40),
            Err("level-0 start with a PA range under 44 bits")
        );
        let new_a53 = Stage2Vtcr::for_parange(2).vtcr();
        assert_eq!(new_a53, 0x8002_3558);
        assert_eq!(arch_check(new_a53, 40), Ok((1, 2)));
    }

    #[test]
    fn field_encodings() {
        let v = Stage2Vtcr::for_parange(5);
        // T0SZ 16, SL0 0b10, IRGN0 01, ORGN0 01, SH0 11, TG0 00, PS 101.
        assert_eq!(
            v.vtcr(),
            16 | (0b10 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (5 << 16) | (1 << 31)
        );
        assert_eq!(Stage2Vtcr::vttbr(0x4010_6000, 1), 0x0001_0000_4010_6000);
        assert!(Stage2Vtcr::hw_ad_enabled(v.vtcr() | VTCR_HA));
        assert!(Stage2Vtcr::hw_ad_enabled(v.vtcr() | VTCR_HD));
        assert_eq!(Stage2Vtcr::start_level_of(0b11 << 6), None);
        for bits in [32u8, 36, 40, 42, 44, 48, 52] {
            assert_eq!(parange_bits(ps_field(bits)), bits);
        }
        assert_eq!(
            parange_bits(0xf),
            56,
            "unknown encodings read as the widest"
        );
    }

    #[test]
    fn block_sizes_follow_the_start_level() {
        let small = Stage2Vtcr::for_pa_bits(32).table();
        assert!(!small.allows_size(PageSize::Size1G));
        assert!(small.allows_size(PageSize::Size2M));
        for pa in [36u8, 40, 42, 44, 48] {
            assert!(Stage2Vtcr::for_pa_bits(pa)
                .table()
                .allows_size(PageSize::Size1G));
        }
    }
}
