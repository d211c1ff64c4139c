//! Arm VMSAv8-64 stage-2 descriptors, 4 KiB granule (Arm ARM D8, "Translation
//! table descriptor formats" and "Stage 2 memory region attributes").
//!
//! ```text
//!  bit  0       valid
//!  bit  1       levels 0-2: 1 table, 0 block; level 3: 1 page (0 reserved)
//!  bits 5:2     MemAttr[3:0]  (0b1111 Normal inner+outer write-back,
//!                              0b0001 Device-nGnRE)
//!  bits 7:6     S2AP[1:0]     (00 none, 01 read-only, 10 write-only, 11 read/write)
//!  bits 9:8     SH[1:0]       (11 inner shareable)
//!  bit  10      AF            access flag (set: no access-flag fault)
//!  bits 47:12   output address (47:21 for a level-2 block, 47:30 for level 1)
//!  bits 54:53   XN[1:0]       (00 executable; 10 execute-never at EL1 and EL0)
//! ```
//!
//! Blocks exist at level 1 (1 GiB) and level 2 (2 MiB); a level-0 block is
//! not allowed with the 4 KiB granule and decodes as invalid. Table
//! descriptors are `next-level address | 0b11`; stage 2 has no hierarchical
//! table attributes. XN is written as `0b10` (bit 54 only), which means
//! execute-never both with and without FEAT_XNX.

use bitflags::bitflags;

use super::descriptor::{Attrs, Descriptor, Format, MemType, Perm};

bitflags! {
    /// The single-bit fields of a stage-2 descriptor.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct S2Flags: u64 {
        /// Bit 0: valid.
        const VALID = 1 << 0;
        /// Bit 1: table (levels 0-2) or page (level 3).
        const TABLE_OR_PAGE = 1 << 1;
        /// Bit 6: S2AP[0], read permission.
        const S2AP_R = 1 << 6;
        /// Bit 7: S2AP[1], write permission.
        const S2AP_W = 1 << 7;
        /// Bit 10: access flag.
        const AF = 1 << 10;
        /// Bit 53: XN[0] (FEAT_XNX).
        const XN0 = 1 << 53;
        /// Bit 54: XN[1], execute-never.
        const XN1 = 1 << 54;
    }
}

/// First bit of MemAttr.
pub const MEMATTR_SHIFT: u32 = 2;
/// Mask of `MemAttr[3:0]` (bits 5:2).
pub const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
/// MemAttr for Normal memory, outer and inner write-back cacheable.
pub const MEMATTR_NORMAL_WB: u64 = 0b1111;
/// MemAttr for Device-nGnRE memory.
pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
/// First bit of S2AP.
pub const S2AP_SHIFT: u32 = 6;
/// First bit of SH.
pub const SH_SHIFT: u32 = 8;
/// Mask of `SH[1:0]` (bits 9:8).
pub const SH_MASK: u64 = 0b11 << SH_SHIFT;
/// SH value for inner shareable.
pub const SH_INNER: u64 = 0b11;
/// First bit of XN.
pub const XN_SHIFT: u32 = 53;
/// Output-address field of a page or table descriptor (bits 47:12).
pub const OA_MASK: u64 = ((1 << 48) - 1) & !0xfff;

const _: () = assert!(MEMATTR_MASK == 0x3c);
const _: () = assert!(SH_MASK == 0x300);
const _: () = assert!(OA_MASK == 0x0000_ffff_ffff_f000);

/// The Arm VMSAv8-64 stage-2 format with the 4 KiB granule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stage2;

impl Stage2 {
    /// The `MemAttr[3:0]` field of `desc`.
    pub const fn memattr(desc: u64) -> u64 {
        (desc & MEMATTR_MASK) >> MEMATTR_SHIFT
    }
    /// The `S2AP[1:0]` field of `desc`.
    pub const fn s2ap(desc: u64) -> u64 {
        (desc >> S2AP_SHIFT) & 0b11
    }
    /// The `SH[1:0]` field of `desc`.
    pub const fn sh(desc: u64) -> u64 {
        (desc & SH_MASK) >> SH_SHIFT
    }
    /// The `XN[1:0]` field of `desc`.
    pub const fn xn(desc: u64) -> u64 {
        (desc >> XN_SHIFT) & 0b11
    }
}

impl Format for Stage2 {
    const OA_BITS: u32 = 48;
    const NAME: &'static str = "Arm VMSAv8-64 stage 2";

    fn table(pa: u64) -> u64 {
        (pa & OA_MASK) | S2Flags::VALID.bits() | S2Flags::TABLE_OR_PAGE.bits()
    }

    fn leaf(level: u8, pa: u64, attrs: Attrs) -> u64 {
        let mut d = (pa & OA_MASK) | S2Flags::VALID.bits() | S2Flags::AF.bits();
        if level == 3 {
            d |= S2Flags::TABLE_OR_PAGE.bits();
        }
        if attrs.perm.contains(Perm::R) {
            d |= S2Flags::S2AP_R.bits();
        }
        if attrs.perm.contains(Perm::W) {
            d |= S2Flags::S2AP_W.bits();
        }
        if !attrs.perm.contains(Perm::X) {
            d |= S2Flags::XN1.bits();
        }
        d |= match attrs.mem {
            MemType::WriteBack => (MEMATTR_NORMAL_WB << MEMATTR_SHIFT) | (SH_INNER << SH_SHIFT),
            MemType::Device => MEMATTR_DEVICE_NGNRE << MEMATTR_SHIFT,
        };
        d
    }

    fn decode(level: u8, desc: u64) -> Descriptor {
        if desc & S2Flags::VALID.bits() == 0 {
            return Descriptor::Invalid;
        }
        let bit1 = desc & S2Flags::TABLE_OR_PAGE.bits() != 0;
        match (level, bit1) {
            (0..=2, true) => return Descriptor::Table(desc & OA_MASK),
            (1..=3, _) => {}
            _ => return Descriptor::Invalid,
        }
        if level == 3 && !bit1 {
            return Descriptor::Invalid;
        }
        let mut perm = Perm::empty();
        perm.set(Perm::R, desc & S2Flags::S2AP_R.bits() != 0);
        perm.set(Perm::W, desc & S2Flags::S2AP_W.bits() != 0);
        perm.set(Perm::X, Stage2::xn(desc) == 0);
        let mem = if Stage2::memattr(desc) & 0b1100 == 0 {
            MemType::Device
        } else {
            MemType::WriteBack
        };
        let size_mask = (1u64 << (12 + 9 * (3 - level as u32))) - 1;
        Descriptor::Leaf {
            pa: desc & OA_MASK & !size_mask,
            attrs: Attrs { perm, mem },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field positions from the Arm ARM's stage-2 block and page descriptor
    // figures.
    #[test]
    fn field_positions() {
        assert_eq!(S2Flags::VALID.bits(), 1);
        assert_eq!(S2Flags::TABLE_OR_PAGE.bits(), 2);
        assert_eq!(MEMATTR_SHIFT, 2);
        assert_eq!(S2AP_SHIFT, 6);
        assert_eq!(SH_SHIFT, 8);
        assert_eq!(S2Flags::AF.bits(), 1 << 10);
        assert_eq!(XN_SHIFT, 53);
        assert_eq!(S2Flags::XN1.bits(), 1 << 54);
    }

    #[test]
    fn rw_normal_page() {
        let d = Stage2::leaf(3, 0x8_1234_5000, Attrs::ram(Perm::R | Perm::W));
        // valid|page, MemAttr 0b1111, S2AP 0b11, SH 0b11, AF, XN 0b10.
        let want = 0x8_1234_5000
            | 0b11
            | (0xf << 2)
            | (0b11 << 6)
            | (0b11 << 8)
            | (1 << 10)
            | (0b10 << 53);
        assert_eq!(d, want);
        assert_eq!(Stage2::memattr(d), MEMATTR_NORMAL_WB);
        assert_eq!(Stage2::s2ap(d), 0b11);
        assert_eq!(Stage2::sh(d), SH_INNER);
        assert_eq!(Stage2::xn(d), 0b10);
        assert_eq!(
            Stage2::decode(3, d),
            Descriptor::Leaf {
                pa: 0x8_1234_5000,
                attrs: Attrs::ram(Perm::R | Perm::W)
            }
        );
    }

    #[test]
    fn s2ap_encodings() {
        let ro = Stage2::leaf(3, 0x1000, Attrs::ram(Perm::R | Perm::X));
        assert_eq!(Stage2::s2ap(ro), 0b01);
        assert_eq!(Stage2::xn(ro), 0b00);
        let none = Stage2::leaf(3, 0x1000, Attrs::ram(Perm::empty()));
        assert_eq!(Stage2::s2ap(none), 0b00);
    }

    #[test]
    fn blocks_clear_bit_1_and_align_the_address() {
        let b2 = Stage2::leaf(2, 0x4020_0000, Attrs::ram(Perm::R));
        assert_eq!(b2 & 0b11, 0b01);
        assert_eq!(
            Stage2::decode(2, b2),
            Descriptor::Leaf {
                pa: 0x4020_0000,
                attrs: Attrs::ram(Perm::R)
            }
        );
        let b1 = Stage2::leaf(1, 0x4000_0000, Attrs::ram(Perm::R | Perm::W | Perm::X));
        assert_eq!(b1 & 0b11, 0b01);
        assert!(matches!(
            Stage2::decode(1, b1),
            Descriptor::Leaf {
                pa: 0x4000_0000,
                ..
            }
        ));
        // A level-0 block is not allowed with the 4 KiB granule.
        assert_eq!(Stage2::decode(0, b1), Descriptor::Invalid);
        // Bits 1:0 = 0b01 at level 3 are reserved.
        assert_eq!(Stage2::decode(3, b2), Descriptor::Invalid);
    }

    #[test]
    fn device_memory() {
        let d = Stage2::leaf(
            3,
            0x900_0000,
            Attrs {
                perm: Perm::R | Perm::W,
                mem: MemType::Device,
            },
        );
        assert_eq!(Stage2::memattr(d), MEMATTR_DEVICE_NGNRE);
        assert!(matches!(
            Stage2::decode(3, d),
            Descriptor::Leaf {
                attrs: Attrs {
                    mem: MemType::Device,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn tables_and_invalid() {
        let t = Stage2::table(0x4_5678_9000);
        assert_eq!(t, 0x4_5678_9000 | 0b11);
        for level in 0..3 {
            assert_eq!(Stage2::decode(level, t), Descriptor::Table(0x4_5678_9000));
        }
        assert_eq!(Stage2::decode(2, t & !1), Descriptor::Invalid);
        assert_eq!(Stage2::decode(3, 0), Descriptor::Invalid);
    }

    /// Hardware access-flag and dirty-state updates (VTCR_EL2.HA / HD) are
    /// kept off (see [`vtcr`](crate::vtcr)); in addition no leaf this
    /// format writes gives the walker anything to update: AF is always set
    /// (no access-flag update) and DBM (bit 51) always clear (no dirty-state
    /// update).
    #[test]
    fn leaves_leave_nothing_for_hardware_to_update() {
        let perms = [
            Perm::empty(),
            Perm::R,
            Perm::R | Perm::W,
            Perm::R | Perm::X,
            Perm::X,
            Perm::R | Perm::W | Perm::X,
        ];
        for level in 1..=3 {
            for perm in perms {
                for mem in [MemType::WriteBack, MemType::Device] {
                    let d = Stage2::leaf(level, 0x4000_0000, Attrs { perm, mem });
                    assert_ne!(d & S2Flags::AF.bits(), 0, "AF at level {level}");
                    assert_eq!(d & (1 << 51), 0, "DBM at level {level}");
                }
            }
        }
    }

    #[test]
    fn output_address_is_bits_47_to_12() {
        let d = Stage2::leaf(3, !0xfff, Attrs::ram(Perm::R));
        assert_eq!(d & OA_MASK, OA_MASK);
        // Nothing spills into bits 63:48 other than XN.
        assert_eq!(d & 0xffff_0000_0000_0000 & !(0b11 << 53), 0);
    }
}
