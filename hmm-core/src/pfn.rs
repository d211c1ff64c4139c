//! The HMM PFN word: Linux's 64-bit `hmm_pfns[]` entry, bit for bit.
//!
//! ```text
//!  63    62    61    60         59     58          57..53   52..0
//! VALID WRITE ERROR DMA_MAPPED P2PDMA P2PDMA_BUS  order     pfn
//! ```
//!
//! On input an entry carries request bits: [`PfnFlags::REQ_FAULT`] (the same
//! bit as `VALID`) and [`PfnFlags::REQ_WRITE`] (the same bit as `WRITE`). On
//! output it carries the PFN, its flags and the CPU mapping order. The three
//! DMA bits ([`PfnFlags::INOUT`]) are *sticky*: every write to an entry keeps
//! them and overwrites everything else ([`HmmPfn::sticky_update`]).
//!
//! # Which kernel's word
//!
//! This is **mainline's layout** (the one with `hmm_dma_map_*`): order at
//! bit 53, and the three sticky DMA bits at 58..60. Linux 6.12, the kernel
//! the project's module runs on, has an older layout:
//!
//! ```text
//!  63    62    61    60..56   55..0
//! VALID WRITE ERROR  order    pfn        (no sticky bits)
//! ```
//!
//! In 6.12 `HMM_PFN_ORDER_SHIFT` is 56, `HMM_PFN_FLAGS` is `0xff << 56`, and
//! every write replaces the whole word. `VALID`, `WRITE`, `ERROR` and the
//! request bits are the same in both; the order field moves, and bits 58..60
//! are order bits in 6.12 but sticky DMA bits here.
//!
//! The layout only matters where a word crosses into code compiled against
//! a kernel's `<linux/hmm.h>` (its `hmm_pfn_to_map_order`, `hmm_pfn_to_page`,
//! or a C driver reading the array). The project's 6.12 module never lets it
//! cross: it zeroes its arrays before each call and decodes the output with
//! this module's accessors ([`HmmPfn::order`], [`HmmPfn::pfn`], ...). A
//! backend whose caller *does* read the array with 6.12's helpers maps both
//! ways with [`v6_12`]:
//!
//! * on input, [`v6_12::input`] keeps only the request bits (63, 62). A 6.12
//!   caller that reuses an output array passes order bits at 56..60; taken
//!   as they are, bits 58..60 would read as sticky DMA bits here, survive
//!   every write and corrupt the order it reads back;
//! * on output, [`v6_12::output`] moves the order from 53 to 56 and drops the
//!   sticky bits (none are set when the input went through
//!   [`v6_12::input`]). PFNs fit: this layout has 53 PFN bits, 6.12 has 56,
//!   and no architecture HMM runs on has more than 52-bit physical
//!   addresses (40-bit PFNs).
//!
//! # Entries without `VALID`
//!
//! Only a `VALID` entry has a meaningful PFN and order; consumers check
//! `VALID` (or `ERROR`) first, as every in-tree driver and `test_hmm`'s
//! `dmirror_mkentry` do. This crate writes, for entries without `VALID`:
//! `ERROR` alone, 0, or (a protnone mapping) the PFN alone, never an order.
//!
//! One case is a deliberate difference from `mm/hmm.c`: a **non-present
//! hugetlb entry** (none, swap, migration, hwpoison) with no fault
//! requested. The kernel's hugetlb callback computes flags 0 for it but
//! still ORs in the hstate order and `pte_pfn()` of the non-present entry
//! (junk: swap-offset bits, or 0 for an empty slot) plus the page offset.
//! When no page table exists at that level the same state goes through the
//! hole callback instead and is written as 0. This crate writes 0 in both
//! cases, as for every other non-present entry: a 0 output means "not
//! present, faultable" at every level. A kernel backend that must match the
//! C function word for word on such entries would need to know which of the
//! two kernel paths applied; no consumer can observe the difference through
//! `VALID`, `WRITE`, `ERROR` or `dmirror_mkentry`. The test
//! `non_present_hugetlb_entries_are_zero` in `tests/walk_rules.rs` pins the
//! decision. (A protnone hugetlb entry, which Linux would report as
//! `pfn | order`, does not arise: NUMA hinting skips hugetlb VMAs. Here it
//! is reported as the PFN alone, like a protnone PMD.)
//!
//! ```
//! use hmm_core::{HmmPfn, PfnFlags};
//! let e = HmmPfn::new(0x1234, PfnFlags::VALID | PfnFlags::WRITE, 9);
//! assert_eq!(e.bits(), (1 << 63) | (1 << 62) | (9 << 53) | 0x1234);
//! assert_eq!((e.pfn(), e.order()), (0x1234, 9));
//! // A driver's DMA_MAPPED mark survives the walker's write.
//! let old = PfnFlags::DMA_MAPPED.bits() | PfnFlags::REQ_FAULT.bits();
//! assert_eq!(HmmPfn::sticky_update(old, 7), PfnFlags::DMA_MAPPED.bits() | 7);
//! ```

hmm_bitflags! {
    /// Flag bits of an HMM PFN word (`enum hmm_pfn_flags`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PfnFlags: u64 {
        /// Out: the PFN is valid and at least readable. In: see `REQ_FAULT`.
        const VALID = 1 << 63;
        /// Out: the page is writable. In: see `REQ_WRITE`.
        const WRITE = 1 << 62;
        /// Out: the page cannot be accessed (no VMA, `VM_IO`/`VM_PFNMAP`,
        /// no `VM_READ`, special page, bad or unknown huge entry).
        const ERROR = 1 << 61;
        /// Sticky: the driver has DMA-mapped this entry.
        const DMA_MAPPED = 1 << 60;
        /// Sticky: P2P page mapped through the host bridge.
        const P2PDMA = 1 << 59;
        /// Sticky: bus-address P2P mapping.
        const P2PDMA_BUS = 1 << 58;
    }
}

impl PfnFlags {
    /// In: the output must be `VALID`, faulting the page in if needed.
    pub const REQ_FAULT: PfnFlags = PfnFlags::VALID;
    /// In: the output must be `WRITE`. Only meaningful with `REQ_FAULT`.
    pub const REQ_WRITE: PfnFlags = PfnFlags::WRITE;
    /// The sticky in/out bits that survive every write (`HMM_PFN_INOUT_FLAGS`).
    pub const INOUT: PfnFlags = PfnFlags::from_bits_retain(
        PfnFlags::DMA_MAPPED.bits() | PfnFlags::P2PDMA.bits() | PfnFlags::P2PDMA_BUS.bits(),
    );
}

/// Page shift of the mirrored address space (4 KiB pages).
pub const PAGE_SHIFT: u32 = 12;
/// Page size of the mirrored address space.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// First bit of the 5-bit order field (`HMM_PFN_ORDER_SHIFT`).
pub const ORDER_SHIFT: u32 = 53;
/// Width mask of the order field.
pub const ORDER_MASK: u64 = 0x1f;
/// Mask of every flag bit, order included (`HMM_PFN_FLAGS`).
pub const FLAGS_MASK: u64 = !((1u64 << ORDER_SHIFT) - 1);
/// Mask of the PFN field (bits 0..=52).
pub const PFN_MASK: u64 = !FLAGS_MASK;
/// Order of a PMD leaf (2 MiB with 4 KiB pages).
pub const PMD_ORDER: u8 = 9;
/// Order of a PUD leaf (1 GiB with 4 KiB pages).
pub const PUD_ORDER: u8 = 18;

// Layout facts the kernel ABI depends on.
const _: () = assert!(PfnFlags::VALID.bits() == 1 << 63);
const _: () = assert!(PfnFlags::WRITE.bits() == 1 << 62);
const _: () = assert!(PfnFlags::ERROR.bits() == 1 << 61);
const _: () = assert!(PfnFlags::DMA_MAPPED.bits() == 1 << 60);
const _: () = assert!(PfnFlags::P2PDMA.bits() == 1 << 59);
const _: () = assert!(PfnFlags::P2PDMA_BUS.bits() == 1 << 58);
const _: () = assert!(PfnFlags::REQ_FAULT.bits() == PfnFlags::VALID.bits());
const _: () = assert!(PfnFlags::REQ_WRITE.bits() == PfnFlags::WRITE.bits());
// The order field sits right below the lowest flag and does not overlap it.
const _: () = assert!(ORDER_SHIFT + 5 == 58);
const _: () = assert!((ORDER_MASK << ORDER_SHIFT) & PfnFlags::all().bits() == 0);
const _: () = assert!(FLAGS_MASK == PfnFlags::all().bits() | (ORDER_MASK << ORDER_SHIFT));
const _: () = assert!(PFN_MASK == (1 << 53) - 1);
const _: () = assert!(core::mem::size_of::<HmmPfn>() == 8);
const _: () = assert!(PUD_ORDER as u64 <= ORDER_MASK);

/// One HMM PFN word. `#[repr(transparent)]` over `u64`, so a `&mut [u64]`
/// from C and a `&mut [HmmPfn]` hold the same bytes.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HmmPfn(pub u64);

impl HmmPfn {
    /// An entry from a PFN, flags and order. Out-of-range PFN and order bits
    /// are masked off, never spilled into the flags.
    pub const fn new(pfn: u64, flags: PfnFlags, order: u8) -> Self {
        HmmPfn(
            (pfn & PFN_MASK)
                | (flags.bits() & PfnFlags::all().bits())
                | (((order as u64) & ORDER_MASK) << ORDER_SHIFT),
        )
    }
    /// The raw word.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// The PFN (`hmm_pfn & ~HMM_PFN_FLAGS`).
    pub const fn pfn(self) -> u64 {
        self.0 & PFN_MASK
    }
    /// The CPU mapping order (`hmm_pfn_to_map_order`).
    pub const fn order(self) -> u8 {
        ((self.0 >> ORDER_SHIFT) & ORDER_MASK) as u8
    }
    /// The flag bits.
    pub const fn flags(self) -> PfnFlags {
        PfnFlags::from_bits_truncate(self.0)
    }
    /// Physical address of the page (`hmm_pfn_to_phys`).
    pub const fn phys(self) -> u64 {
        self.pfn() << PAGE_SHIFT
    }
    /// `VALID` is set.
    pub const fn is_valid(self) -> bool {
        self.0 & PfnFlags::VALID.bits() != 0
    }
    /// `VALID` and `WRITE` are set.
    pub const fn is_writable(self) -> bool {
        let vw = PfnFlags::VALID.bits() | PfnFlags::WRITE.bits();
        self.0 & vw == vw
    }
    /// `ERROR` is set.
    pub const fn is_error(self) -> bool {
        self.0 & PfnFlags::ERROR.bits() != 0
    }
    /// The sticky-bit rule: keep `old`'s [`PfnFlags::INOUT`] bits, take every
    /// other bit from `new`.
    pub const fn sticky_update(old: u64, new: u64) -> u64 {
        (old & PfnFlags::INOUT.bits()) | (new & !PfnFlags::INOUT.bits())
    }
    /// The CPU flags word for a mapping: `VALID`, `WRITE` if writable, and the
    /// order.
    pub const fn cpu_flags(write: bool, order: u8) -> u64 {
        let w = if write { PfnFlags::WRITE.bits() } else { 0 };
        PfnFlags::VALID.bits() | w | (((order as u64) & ORDER_MASK) << ORDER_SHIFT)
    }
}

/// Mapping to and from Linux 6.12's PFN-word layout (order at bit 56, no
/// sticky bits); see the [module docs](super::pfn) for when a backend needs it.
///
/// ```
/// use hmm_core::pfn::v6_12;
/// use hmm_core::{HmmPfn, PfnFlags};
/// let ours = HmmPfn::new(0x1234, PfnFlags::VALID | PfnFlags::WRITE, 9).bits();
/// assert_eq!(v6_12::output(ours), (1 << 63) | (1 << 62) | (9 << 56) | 0x1234);
/// // A stale 6.12 output reused as input keeps only its request bits.
/// assert_eq!(v6_12::input(v6_12::output(ours)), (1 << 63) | (1 << 62));
/// ```
pub mod v6_12 {
    use super::{PfnFlags, ORDER_MASK, ORDER_SHIFT, PFN_MASK as OUR_PFN_MASK};

    /// `HMM_PFN_ORDER_SHIFT` in 6.12.
    pub const ORDER_SHIFT_6_12: u32 = 56;
    /// `HMM_PFN_FLAGS` in 6.12: bits 56..63.
    pub const FLAGS_MASK_6_12: u64 = 0xff << ORDER_SHIFT_6_12;

    const KEEP: u64 = PfnFlags::VALID.bits() | PfnFlags::WRITE.bits() | PfnFlags::ERROR.bits();

    /// This crate's output word in 6.12's layout: `VALID`, `WRITE` and
    /// `ERROR` kept, the order moved to bit 56, the sticky DMA bits dropped,
    /// the PFN kept.
    pub const fn output(word: u64) -> u64 {
        (word & KEEP)
            | (((word >> ORDER_SHIFT) & ORDER_MASK) << ORDER_SHIFT_6_12)
            | (word & OUR_PFN_MASK)
    }

    /// A 6.12 caller's input word in this crate's layout: only the request
    /// bits (`REQ_FAULT`, `REQ_WRITE`), which are all 6.12 reads from an
    /// input entry; anything else (a stale order at 56..60) is dropped so it
    /// cannot land on the sticky bits.
    pub const fn input(word: u64) -> u64 {
        word & (PfnFlags::REQ_FAULT.bits() | PfnFlags::REQ_WRITE.bits())
    }
}

impl From<u64> for HmmPfn {
    fn from(v: u64) -> Self {
        HmmPfn(v)
    }
}

impl From<HmmPfn> for u64 {
    fn from(v: HmmPfn) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_decode_every_field() {
        let raw = (1u64 << 63) | (1 << 61) | (1 << 60) | (18 << 53) | 0xabcde;
        let e = HmmPfn(raw);
        assert_eq!(e.pfn(), 0xabcde);
        assert_eq!(e.order(), 18);
        assert!(e.is_valid() && e.is_error() && !e.is_writable());
        assert_eq!(
            e.flags(),
            PfnFlags::VALID | PfnFlags::ERROR | PfnFlags::DMA_MAPPED
        );
        assert_eq!(e.phys(), 0xabcde << 12);
    }

    #[test]
    fn predicates_are_false_without_their_bits() {
        let v = PfnFlags::VALID.bits();
        let w = PfnFlags::WRITE.bits();
        let e = PfnFlags::ERROR.bits();
        // (word, is_valid, is_writable, is_error)
        let cases = [
            (0, false, false, false),
            (0x1234 | (9 << 53), false, false, false),
            (w | PfnFlags::INOUT.bits(), false, false, false),
            (v, true, false, false),
            (v | w, true, true, false),
            (e, false, false, true),
            (!v, false, false, true),
            (!e, true, true, false),
        ];
        for (word, valid, writable, error) in cases {
            let p = HmmPfn(word);
            assert_eq!(
                (p.is_valid(), p.is_writable(), p.is_error()),
                (valid, writable, error),
                "{word:#x}"
            );
        }
    }

    #[test]
    fn cpu_flags_are_valid_write_and_order() {
        let v = PfnFlags::VALID.bits();
        let w = PfnFlags::WRITE.bits();
        assert_eq!(HmmPfn::cpu_flags(false, 0), v);
        assert_eq!(HmmPfn::cpu_flags(true, 0), v | w);
        assert_eq!(HmmPfn::cpu_flags(true, 9), v | w | (9 << 53));
        assert_eq!(HmmPfn::cpu_flags(false, 18), v | (18 << 53));
        // An order wider than the field is masked, never spilled into flags.
        assert_eq!(HmmPfn::cpu_flags(false, 0xff), v | (0x1f << 53));
    }

    #[test]
    fn conversions_keep_every_bit() {
        for w in [0, 1, 0x8000_0000_0000_0001, u64::MAX] {
            assert_eq!(HmmPfn::from(w), HmmPfn(w));
            assert_eq!(u64::from(HmmPfn(w)), w);
        }
    }

    #[test]
    fn new_masks_out_of_range_inputs() {
        let e = HmmPfn::new(u64::MAX, PfnFlags::empty(), 0xff);
        assert_eq!(e.pfn(), PFN_MASK);
        assert_eq!(e.order(), 0x1f);
        assert!(e.flags().is_empty());
    }

    #[test]
    fn sticky_bits_survive_and_nothing_else_does() {
        for old in [
            0u64,
            u64::MAX,
            PfnFlags::INOUT.bits(),
            0x5555_5555_5555_5555,
        ] {
            let new = HmmPfn::cpu_flags(true, 9) | 42;
            let got = HmmPfn::sticky_update(old, new);
            assert_eq!(got & PfnFlags::INOUT.bits(), old & PfnFlags::INOUT.bits());
            assert_eq!(got & !PfnFlags::INOUT.bits(), new & !PfnFlags::INOUT.bits());
        }
        // Request bits are overwritten.
        let req = PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE;
        assert_eq!(HmmPfn::sticky_update(req.bits(), 0), 0);
    }

    #[test]
    fn v6_12_mapping() {
        use super::v6_12::{input, output, FLAGS_MASK_6_12, ORDER_SHIFT_6_12};
        let v = PfnFlags::VALID;
        let w = PfnFlags::WRITE;
        let sticky = PfnFlags::INOUT.bits();
        // (ours, 6.12's) for each kind of output word.
        let cases = [
            (0, 0),
            (PfnFlags::ERROR.bits() | sticky, 1 << 61),
            (HmmPfn::new(0x1234, v | w, 0).bits(), (3 << 62) | 0x1234),
            (
                HmmPfn::new(PFN_MASK, v, 9).bits() | sticky,
                (1 << 63) | (9 << 56) | PFN_MASK,
            ),
            (HmmPfn::new(7, v | w, 18).bits(), (3 << 62) | (18 << 56) | 7),
            (0x4321, 0x4321),
        ];
        for (ours, theirs) in cases {
            let got = output(ours);
            assert_eq!(got, theirs, "{ours:#x}");
            // 6.12's own decoding reads back our PFN and order.
            assert_eq!(got & !FLAGS_MASK_6_12, HmmPfn(ours).pfn());
            assert_eq!(
                (got >> ORDER_SHIFT_6_12) & 0x1f,
                u64::from(HmmPfn(ours).order())
            );
        }
        // Input: request bits only. A stale order-9 6.12 word has bit 59
        // (our P2PDMA) set; it must not become sticky.
        let stale = (3 << 62) | (9 << 56) | 0x55;
        assert_eq!(input(stale), (3 << 62));
        assert_eq!(input(stale) & sticky, 0);
        assert_eq!(
            input(u64::MAX),
            PfnFlags::VALID.bits() | PfnFlags::WRITE.bits()
        );
    }

    #[test]
    fn flag_type_api_is_complete() {
        let mut f = PfnFlags::empty();
        f.insert(PfnFlags::VALID);
        f.set(PfnFlags::WRITE, true);
        assert!(f.contains(PfnFlags::VALID | PfnFlags::WRITE));
        f.remove(PfnFlags::WRITE);
        assert!(!f.intersects(PfnFlags::WRITE));
        assert_eq!(!PfnFlags::all(), PfnFlags::empty());
        assert_eq!(PfnFlags::from_bits_truncate(u64::MAX), PfnFlags::all());
        assert_eq!(
            PfnFlags::all() - PfnFlags::INOUT,
            PfnFlags::from_bits_truncate(0b111 << 61)
        );
        assert_eq!(PfnFlags::from_bits(1), None);
    }
}
