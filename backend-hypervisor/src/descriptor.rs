//! The descriptor-format trait: what one page-table engine needs to know
//! about a second-stage table format.
//!
//! Both formats this crate implements ([`Ept`](super::ept::Ept) and
//! [`Stage2`](super::stage2::Stage2)) are 4-level, 4 KiB-granule formats with
//! 512 eight-byte descriptors per table. Levels are numbered from the root:
//! level 0 maps 512 GiB per entry (EPT PML4 / Arm level 0), level 1 1 GiB
//! (PDPT / level 1), level 2 2 MiB (PD / level 2) and level 3 4 KiB
//! (PT / level 3). Leaves are allowed at levels 1, 2 and 3.
//!
//! A format turns the engine's format-neutral [`Attrs`] into descriptor bits
//! and back; the engine never looks at a bit itself.
//!
//! A table need not use all four levels: an Arm stage 2 may start its walk
//! at level 1 or 2 (see [`layout`](super::layout)); [`GPA_BITS`] is the
//! widest input size either format translates with these descriptors.

use bitflags::bitflags;

/// Number of translation levels.
pub const LEVELS: u8 = 4;
/// Descriptors per table.
pub const ENTRIES: usize = 512;
/// Size of one table page.
pub const TABLE_SIZE: u64 = 4096;
/// Width of the widest guest-physical address space a table translates
/// (a 4-level walk from level 0).
pub const GPA_BITS: u32 = 48;
/// One past the highest translatable guest-physical address.
pub const GPA_LIMIT: u64 = 1 << GPA_BITS;

bitflags! {
    /// Access permissions of a guest mapping (and of a guest access).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Perm: u8 {
        /// Readable.
        const R = 1 << 0;
        /// Writable.
        const W = 1 << 1;
        /// Executable.
        const X = 1 << 2;
    }
}

/// Memory type of a guest mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemType {
    /// Normal write-back memory (guest RAM).
    #[default]
    WriteBack,
    /// Device memory: uncacheable (EPT UC) or Device-nGnRE (Arm).
    Device,
}

/// Format-neutral attributes of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// Permissions.
    pub perm: Perm,
    /// Memory type.
    pub mem: MemType,
}

impl Attrs {
    /// Write-back guest RAM with `perm`.
    pub const fn ram(perm: Perm) -> Self {
        Attrs {
            perm,
            mem: MemType::WriteBack,
        }
    }
}

/// Size of a leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB page (level 3).
    Size4K,
    /// 2 MiB block (level 2).
    Size2M,
    /// 1 GiB block (level 1).
    Size1G,
}

impl PageSize {
    /// All sizes, largest first.
    pub const LARGEST_FIRST: [PageSize; 3] = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K];

    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }
    /// log2 of the size.
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }
    /// Order in 4 KiB pages (0, 9, 18), as hmm-core reports it.
    pub const fn order(self) -> u8 {
        (self.shift() - 12) as u8
    }
    /// The table level whose leaves have this size.
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 3,
            PageSize::Size2M => 2,
            PageSize::Size1G => 1,
        }
    }
    /// The leaf size at `level`, if leaves are allowed there.
    pub const fn at_level(level: u8) -> Option<PageSize> {
        match level {
            3 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            1 => Some(PageSize::Size1G),
            _ => None,
        }
    }
}

/// Bytes covered by one entry at `level` (0..=3).
pub const fn level_size(level: u8) -> u64 {
    1 << level_shift(level)
}

/// log2 of the bytes covered by one entry at `level`.
pub const fn level_shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// Index of `gpa`'s entry in its table at `level`.
pub const fn level_index(gpa: u64, level: u8) -> usize {
    ((gpa >> level_shift(level)) & 0x1ff) as usize
}

/// A decoded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// Not present: the guest faults on access.
    Invalid,
    /// A pointer to the next-level table at this physical address.
    Table(u64),
    /// A leaf (page or block) mapping this output address.
    Leaf {
        /// Output (host-physical) address of the leaf's first byte.
        pa: u64,
        /// Its attributes.
        attrs: Attrs,
    },
}

/// A second-stage descriptor format.
///
/// Implementations encode and decode descriptors only; they hold no state.
/// `leaf` is only called with a level where leaves are allowed (1, 2, 3),
/// a `pa` aligned to that level's size and a permission set containing
/// [`Perm::R`] whenever it contains [`Perm::W`].
pub trait Format {
    /// Human-readable name of the format.
    const NAME: &'static str;

    /// Width of the output-address field: leaves can map physical
    /// addresses below `1 << OA_BITS`.
    const OA_BITS: u32;

    /// The not-present descriptor.
    const INVALID: u64 = 0;

    /// A table descriptor pointing at the table page at `pa`.
    fn table(pa: u64) -> u64;

    /// A leaf descriptor at `level` mapping `pa` with `attrs`.
    fn leaf(level: u8, pa: u64, attrs: Attrs) -> u64;

    /// Decode the descriptor `desc` found at `level`. Encodings the format
    /// reserves (and which this crate never writes) decode as
    /// [`Descriptor::Invalid`].
    fn decode(level: u8, desc: u64) -> Descriptor;

    /// Whether the hardware walks tables of this format laid out by `cfg`
    /// (input size, start level, concatenated root). Every layout
    /// [`TableConfig`](super::layout::TableConfig) accepts unless the
    /// format says otherwise.
    fn supports_layout(cfg: &super::layout::TableConfig) -> bool {
        let _ = cfg;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_geometry() {
        assert_eq!(level_size(3), 4096);
        assert_eq!(level_size(2), 2 << 20);
        assert_eq!(level_size(1), 1 << 30);
        assert_eq!(level_size(0), 512 << 30);
        let gpa = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!([0, 1, 2, 3].map(|l| level_index(gpa, l)), [3, 5, 7, 9]);
        for s in PageSize::LARGEST_FIRST {
            assert_eq!(level_size(s.level()), s.bytes());
            assert_eq!(PageSize::at_level(s.level()), Some(s));
            assert_eq!(1u64 << (12 + s.order() as u32), s.bytes());
        }
        assert_eq!(PageSize::at_level(0), None);
    }
}
