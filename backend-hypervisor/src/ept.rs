//! Intel EPT descriptors (Intel SDM Vol. 3C, "EPT Translation Mechanism",
//! the tables of EPT PML4E / PDPTE / PDE / PTE formats).
//!
//! ```text
//!  bit  0  R    read access                     (every level)
//!  bit  1  W    write access                    (every level)
//!  bit  2  X    execute access                  (every level)
//!  bits 5:3     EPT memory type                 (leaves only; 0 UC, 6 WB)
//!  bit  6  IPAT ignore guest PAT                (leaves only)
//!  bit  7  PS   leaf at PDPTE (1 GiB) / PDE (2 MiB); 0 in a table pointer
//!  bit  8  A    accessed (set by the CPU when EPTP[6] enables A/D)
//!  bit  9  D    dirty    (leaves only, likewise)
//!  bits 51:12   physical address (51:21 for 2 MiB, 51:30 for 1 GiB leaves)
//! ```
//!
//! An entry is present when any of bits 2:0 is set. Table pointers are
//! written with R/W/X all set so that only leaves restrict access. Guest RAM
//! is mapped write-back with IPAT set (the guest PAT cannot make it
//! uncacheable, as KVM does without non-coherent DMA); device memory is
//! mapped UC with IPAT clear.

use bitflags::bitflags;

use super::descriptor::{Attrs, Descriptor, Format, MemType, Perm, GPA_BITS};
use super::layout::TableConfig;

bitflags! {
    /// The flag bits of an EPT entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EptFlags: u64 {
        /// Bit 0: read access.
        const READ = 1 << 0;
        /// Bit 1: write access.
        const WRITE = 1 << 1;
        /// Bit 2: execute access.
        const EXEC = 1 << 2;
        /// Bit 6: ignore the guest PAT memory type.
        const IGNORE_PAT = 1 << 6;
        /// Bit 7: this PDPTE / PDE maps a 1 GiB / 2 MiB page.
        const LARGE = 1 << 7;
        /// Bit 8: accessed.
        const ACCESSED = 1 << 8;
        /// Bit 9: dirty (leaves).
        const DIRTY = 1 << 9;
    }
}

/// First bit of the memory-type field.
pub const MEMTYPE_SHIFT: u32 = 3;
/// Mask of the memory-type field (bits 5:3).
pub const MEMTYPE_MASK: u64 = 0b111 << MEMTYPE_SHIFT;
/// Memory type UC (uncacheable).
pub const MEMTYPE_UC: u64 = 0;
/// Memory type WB (write-back).
pub const MEMTYPE_WB: u64 = 6;
/// Address field of a 4 KiB-aligned entry (bits 51:12).
pub const ADDR_MASK: u64 = ((1 << 52) - 1) & !0xfff;
/// The R/W/X bits.
const RWX: u64 = 0b111;

const _: () = assert!(MEMTYPE_MASK == 0x38);
const _: () = assert!(ADDR_MASK == 0x000f_ffff_ffff_f000);

/// The Intel EPT format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ept;

impl Ept {
    /// The accessed bit of `desc`.
    pub const fn accessed(desc: u64) -> bool {
        desc & EptFlags::ACCESSED.bits() != 0
    }
    /// The dirty bit of `desc`.
    pub const fn dirty(desc: u64) -> bool {
        desc & EptFlags::DIRTY.bits() != 0
    }
    /// The memory-type field of `desc`.
    pub const fn memtype(desc: u64) -> u64 {
        (desc & MEMTYPE_MASK) >> MEMTYPE_SHIFT
    }
}

impl Format for Ept {
    const OA_BITS: u32 = 52;
    const NAME: &'static str = "Intel EPT";

    fn table(pa: u64) -> u64 {
        (pa & ADDR_MASK) | RWX
    }

    fn leaf(level: u8, pa: u64, attrs: Attrs) -> u64 {
        let mut d = pa & ADDR_MASK;
        if attrs.perm.contains(Perm::R) {
            d |= EptFlags::READ.bits();
        }
        if attrs.perm.contains(Perm::W) {
            d |= EptFlags::WRITE.bits();
        }
        if attrs.perm.contains(Perm::X) {
            d |= EptFlags::EXEC.bits();
        }
        d |= match attrs.mem {
            MemType::WriteBack => (MEMTYPE_WB << MEMTYPE_SHIFT) | EptFlags::IGNORE_PAT.bits(),
            MemType::Device => MEMTYPE_UC << MEMTYPE_SHIFT,
        };
        if level < 3 {
            d |= EptFlags::LARGE.bits();
        }
        d
    }

    fn decode(level: u8, desc: u64) -> Descriptor {
        if desc & RWX == 0 {
            return Descriptor::Invalid;
        }
        let large = desc & EptFlags::LARGE.bits() != 0;
        let is_leaf = level == 3 || (large && (level == 1 || level == 2));
        if !is_leaf {
            if level == 3 || large {
                return Descriptor::Invalid;
            }
            return Descriptor::Table(desc & ADDR_MASK);
        }
        let mut perm = Perm::empty();
        perm.set(Perm::R, desc & EptFlags::READ.bits() != 0);
        perm.set(Perm::W, desc & EptFlags::WRITE.bits() != 0);
        perm.set(Perm::X, desc & EptFlags::EXEC.bits() != 0);
        let mem = if Ept::memtype(desc) == MEMTYPE_UC {
            MemType::Device
        } else {
            MemType::WriteBack
        };
        let size_mask = (1u64 << (12 + 9 * (3 - level as u32))) - 1;
        Descriptor::Leaf {
            pa: desc & ADDR_MASK & !size_mask,
            attrs: Attrs { perm, mem },
        }
    }

    /// A 4-level EPT walk translates 48 bits from the PML4 (level 0), one
    /// table page; 5-level EPT is not used.
    fn supports_layout(cfg: &TableConfig) -> bool {
        cfg.start_level() == 0 && u32::from(cfg.ia_bits()) == GPA_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field positions from the SDM's EPT entry format tables.
    #[test]
    fn flag_bits_are_the_sdm_positions() {
        assert_eq!(EptFlags::READ.bits(), 1 << 0);
        assert_eq!(EptFlags::WRITE.bits(), 1 << 1);
        assert_eq!(EptFlags::EXEC.bits(), 1 << 2);
        assert_eq!(EptFlags::IGNORE_PAT.bits(), 1 << 6);
        assert_eq!(EptFlags::LARGE.bits(), 1 << 7);
        assert_eq!(EptFlags::ACCESSED.bits(), 1 << 8);
        assert_eq!(EptFlags::DIRTY.bits(), 1 << 9);
        assert_eq!(MEMTYPE_SHIFT, 3);
        assert_eq!(MEMTYPE_WB, 6);
    }

    #[test]
    fn four_k_rw_wb_page() {
        let d = Ept::leaf(3, 0x1234_5000, Attrs::ram(Perm::R | Perm::W));
        // R | W | WB(6)<<3 | IPAT, no PS bit in a PTE.
        assert_eq!(d, 0x1234_5000 | 0b011 | (6 << 3) | (1 << 6));
        assert_eq!(
            Ept::decode(3, d),
            Descriptor::Leaf {
                pa: 0x1234_5000,
                attrs: Attrs::ram(Perm::R | Perm::W)
            }
        );
    }

    #[test]
    fn large_pages_set_bit_7() {
        let d2m = Ept::leaf(2, 0x4020_0000, Attrs::ram(Perm::R | Perm::X));
        assert_eq!(d2m, 0x4020_0000 | 0b101 | (6 << 3) | (1 << 6) | (1 << 7));
        let d1g = Ept::leaf(1, 0xc000_0000, Attrs::ram(Perm::R));
        assert_eq!(d1g, 0xc000_0000 | 0b001 | (6 << 3) | (1 << 6) | (1 << 7));
        assert_eq!(
            Ept::decode(1, d1g),
            Descriptor::Leaf {
                pa: 0xc000_0000,
                attrs: Attrs::ram(Perm::R)
            }
        );
        // The same bits at the PDE level are a 2 MiB leaf too.
        assert!(matches!(
            Ept::decode(2, d2m),
            Descriptor::Leaf {
                pa: 0x4020_0000,
                ..
            }
        ));
    }

    #[test]
    fn device_memory_is_uc_without_ipat() {
        let d = Ept::leaf(
            3,
            0xfee0_0000,
            Attrs {
                perm: Perm::R | Perm::W,
                mem: MemType::Device,
            },
        );
        assert_eq!(Ept::memtype(d), MEMTYPE_UC);
        assert_eq!(d & EptFlags::IGNORE_PAT.bits(), 0);
        assert!(matches!(
            Ept::decode(3, d),
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
    fn table_pointers_allow_everything_and_have_no_ps() {
        let t = Ept::table(0x7000);
        assert_eq!(t, 0x7000 | 0b111);
        for level in 0..3 {
            assert_eq!(Ept::decode(level, t), Descriptor::Table(0x7000));
        }
    }

    #[test]
    fn not_present_and_reserved_encodings() {
        assert_eq!(Ept::decode(3, 0), Descriptor::Invalid);
        // Address and memory type without any of R/W/X: not present.
        assert_eq!(
            Ept::decode(2, 0x20_0000 | (6 << 3) | (1 << 7)),
            Descriptor::Invalid
        );
        // PS in a PML4E is reserved.
        assert_eq!(
            Ept::decode(0, 0x1000 | 0b111 | (1 << 7)),
            Descriptor::Invalid
        );
    }

    #[test]
    fn address_bits_are_51_to_12_and_hardware_bits_decode() {
        let pa = (1u64 << 51) | 0x1000;
        let d = Ept::leaf(3, pa | 0xfff, Attrs::ram(Perm::R));
        assert_eq!(d & ADDR_MASK, pa);
        assert_eq!(d & (0xfff0_0000_0000_0000), 0);
        let ad = d | EptFlags::ACCESSED.bits() | EptFlags::DIRTY.bits();
        assert!(Ept::accessed(ad) && Ept::dirty(ad));
        assert!(!Ept::accessed(d) && !Ept::dirty(d));
        assert!(matches!(Ept::decode(3, ad), Descriptor::Leaf { pa: p, .. } if p == pa));
    }
}
