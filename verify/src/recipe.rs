//! Recipes: small plain-data descriptions of an address space and a request,
//! built into a [`Case`].
//!
//! Every field is a small integer read modulo its range, so any value is a
//! valid recipe: proptest strategies and the fuzzer's `Arbitrary` bytes both
//! produce recipes and share [`Recipe::build`]. The layout puts VMAs of every
//! kind (anonymous read-write and read-only, no `VM_READ`, `VM_IO`,
//! `VM_PFNMAP`, `VM_MIXEDMAP`, hugetlb 2 MiB and 1 GiB) next to each other
//! with gaps, anchors a small request window at a VMA edge or a huge-page
//! boundary, and scatters leaves of every kind and level around the window,
//! so windows straddle VMA edges, gaps and partial huge leaves.

use std::collections::BTreeSet;

use hmm_core::{Leaf, Present, VmFaultError, VmFlags, PAGE_SIZE};

use crate::reference::{RefRequest, ERROR, STICKY, VALID, WRITE};
use crate::space::{Entry, FaultKind, Space, VmaDesc, PMD_PAGES, PUD_PAGES};

/// First address of the laid-out VMAs (1 GiB aligned).
pub const BASE: u64 = 0x40_0000_0000;
/// A device-private owner token.
pub const OWNER_A: u64 = 0xa;
/// Another device-private owner token.
pub const OWNER_B: u64 = 0xb;
/// Largest request window, in pages.
pub const MAX_PAGES: u64 = 96;

/// One VMA of a recipe.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VmaRecipe {
    /// Gap before it: 0, 0, 1, 3, 17 or 512 pages.
    pub gap: u8,
    /// Length selector (pages, or huge pages for hugetlb).
    pub len: u16,
    /// Kind: anon rw, anon ro, no-read, IO, PFNMAP, MIXEDMAP, hugetlb 2M, 1G.
    pub kind: u8,
    /// Fault behaviour; bit 7 makes a hugetlb VMA read-only.
    pub fault: u8,
}

/// One leaf of a recipe.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct LeafRecipe {
    /// Page offset from the window start (read modulo 320, minus 96).
    pub offset: u16,
    /// Level: PTE, PTE, PTE, PMD, PMD, PUD (the huge page size inside a
    /// hugetlb VMA unless the value is 200 or more).
    pub level: u8,
    /// Kind: present (twice), swap, device-private, device-exclusive,
    /// migration, hwpoison, bad.
    pub kind: u8,
    /// Bits: write, protnone, special, zero page, owner A (else B).
    pub flags: u8,
    /// PFN selector.
    pub pfn: u32,
}

/// The request of a recipe.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestRecipe {
    /// Which VMA anchors the window.
    pub anchor_vma: u8,
    /// Anchor: the VMA start, its end, or a 2 MiB boundary inside it.
    pub anchor: u8,
    /// Pages from the anchor to the window start.
    pub delta: i8,
    /// Window length selector (1 to [`MAX_PAGES`] pages).
    pub npages: u8,
    /// `default_flags`: none, `REQ_FAULT`, `REQ_FAULT | REQ_WRITE`, `REQ_WRITE`.
    pub default_flags: u8,
    /// `pfn_flags_mask`: 0, `REQ_FAULT`, `REQ_WRITE`, both, all ones.
    pub mask: u8,
    /// Per-page input bytes (cycled): bit 0 `REQ_FAULT`, 1 `REQ_WRITE`,
    /// 2..4 sticky DMA bits, 5 `ERROR`, 6 junk PFN bits, 7 junk order.
    pub per_page: Vec<u8>,
    /// Device-private owner: none, A, B.
    pub owner: u8,
    /// Bit 7 set: walk from a cursor inside the window (low bits pick it).
    pub from: u8,
}

/// A whole recipe.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Recipe {
    /// The VMAs, laid out in order from [`BASE`] (at most 6 are used).
    pub vmas: Vec<VmaRecipe>,
    /// The leaves (at most 32 are used; overlapping ones are skipped).
    pub leaves: Vec<LeafRecipe>,
    /// The request.
    pub request: RequestRecipe,
    /// `FaultKind::FileIo` pages already in the page cache: bit `i % 64` for
    /// window page `i`.
    pub cached: u64,
    /// Invalidations of the interval at each of the first lock drops.
    pub invalidate_on_drop: u8,
}

/// A built test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The address space.
    pub space: Space,
    /// Window start.
    pub start: u64,
    /// Window end.
    pub end: u64,
    /// Where the walk starts (`start` unless the recipe asks otherwise).
    pub from: u64,
    /// The input words.
    pub input: Vec<u64>,
    /// The request.
    pub request: RefRequest,
    /// Page-cache pages of file VMAs (addresses).
    pub cached: BTreeSet<u64>,
    /// Invalidations at lock drops.
    pub invalidate_on_drop: u8,
}

const GIB: u64 = PUD_PAGES * PAGE_SIZE;
const MIB2: u64 = PMD_PAGES * PAGE_SIZE;

fn align_up(a: u64, to: u64) -> u64 {
    a.div_ceil(to) * to
}

fn vma_of(r: &VmaRecipe, cursor: u64) -> VmaDesc {
    let rw = VmFlags::READ | VmFlags::WRITE;
    let fault = match r.fault % 8 {
        3 => FaultKind::Userfault,
        4 => FaultKind::FileIo,
        5 => FaultKind::Completed,
        6 => FaultKind::Fail(match (r.fault >> 3) % 4 {
            0 => VmFaultError::Oom,
            1 => VmFaultError::Sigbus,
            2 => VmFaultError::Sigsegv,
            _ => VmFaultError::HwPoison,
        }),
        _ => FaultKind::Populate,
    };
    let (flags, order) = match r.kind % 8 {
        0 => (rw, 0),
        1 => (VmFlags::READ, 0),
        2 => (VmFlags::WRITE, 0),
        3 => (rw | VmFlags::IO, 0),
        4 => (rw | VmFlags::PFNMAP | VmFlags::IO, 0),
        5 => (rw | VmFlags::MIXEDMAP, 0),
        6 => (rw | VmFlags::HUGETLB, 9),
        _ => (rw | VmFlags::HUGETLB, 18),
    };
    let flags = if order > 0 && r.fault & 0x80 != 0 {
        flags - VmFlags::WRITE
    } else {
        flags
    };
    let (start, end) = match order {
        0 => (cursor, cursor + (1 + u64::from(r.len) % 1100) * PAGE_SIZE),
        9 => {
            let s = align_up(cursor, MIB2);
            (s, s + (1 + u64::from(r.len) % 3) * MIB2)
        }
        _ => {
            let s = align_up(cursor, GIB);
            (s, s + GIB)
        }
    };
    VmaDesc {
        start,
        end,
        flags,
        hugetlb_order: order,
        fault,
    }
}

fn leaf_of(r: &LeafRecipe, order: u8) -> Leaf {
    let f = |bit: u8| r.flags & (1 << bit) != 0;
    let pfn = (u64::from(r.pfn) << order) & ((1 << 40) - 1);
    match r.kind % 8 {
        0 | 1 => Leaf::Present(Present {
            pfn,
            order,
            write: f(0),
            protnone: f(1),
            special: f(2) || f(3),
            zero: f(3),
        }),
        2 => Leaf::Swap,
        3 => Leaf::DevicePrivate {
            owner: if f(4) { OWNER_A } else { OWNER_B },
            pfn,
            write: f(0),
            order,
        },
        4 => Leaf::DeviceExclusive,
        5 => Leaf::Migration,
        6 => Leaf::HwPoison,
        _ => Leaf::Bad,
    }
}

fn input_word(b: u8) -> u64 {
    let f = |bit: u8| b & (1 << bit) != 0;
    let mut w = 0;
    if f(0) {
        w |= VALID;
    }
    if f(1) {
        w |= WRITE;
    }
    w |= (u64::from(b >> 2) & 0b111) << 58 & STICKY;
    if f(5) {
        w |= ERROR;
    }
    if f(6) {
        w |= 0x1234;
    }
    if f(7) {
        w |= 7 << 53;
    }
    w
}

impl Recipe {
    /// Lay the recipe out.
    pub fn build(&self) -> Case {
        let mut space = Space::new();
        let mut cursor = BASE;
        let mut vmas = Vec::new();
        for r in self.vmas.iter().take(6) {
            cursor += [0, 0, 1, 3, 17, 512][usize::from(r.gap % 6)] * PAGE_SIZE;
            let v = vma_of(r, cursor);
            let added = space.add_vma(v);
            debug_assert!(added);
            vmas.push(v);
            cursor = v.end;
        }
        let q = &self.request;
        let anchor = match vmas.get(usize::from(q.anchor_vma) % vmas.len().max(1)) {
            None => BASE,
            Some(v) => match q.anchor % 3 {
                0 => v.start,
                1 => v.end,
                _ => align_up(v.start + PAGE_SIZE, MIB2).min(v.end),
            },
        };
        let start = anchor
            .saturating_add_signed(i64::from(q.delta) * PAGE_SIZE as i64)
            .max(PAGE_SIZE);
        let npages = 1 + u64::from(q.npages) % MAX_PAGES;
        let end = start + npages * PAGE_SIZE;

        for l in self.leaves.iter().take(32) {
            let page = start as i64 + (i64::from(l.offset % 320) - 96) * PAGE_SIZE as i64;
            let Ok(page) = u64::try_from(page) else {
                continue;
            };
            let order = match space.vma_at(page) {
                // Mostly the huge page size; sometimes a smaller leaf, as
                // with contiguous-PTE hugetlb on some architectures.
                Some(v) if v.flags.contains(VmFlags::HUGETLB) && l.level < 200 => v.hugetlb_order,
                _ => [0, 0, 0, 9, 9, 18][usize::from(l.level % 6)],
            };
            let base = page & !((PAGE_SIZE << order) - 1);
            // Overlapping leaves are skipped: the table stays well formed.
            let _ = space.add_entry(Entry {
                base,
                order,
                leaf: leaf_of(l, order),
            });
        }

        let input = (0..npages)
            .map(|i| {
                if q.per_page.is_empty() {
                    0
                } else {
                    input_word(q.per_page[i as usize % q.per_page.len()])
                }
            })
            .collect();
        let request = RefRequest {
            default_flags: [0, VALID, VALID | WRITE, WRITE][usize::from(q.default_flags % 4)],
            mask: [0, VALID, WRITE, VALID | WRITE, u64::MAX][usize::from(q.mask % 5)],
            owner: [None, Some(OWNER_A), Some(OWNER_B)][usize::from(q.owner % 3)],
        };
        let from = if q.from & 0x80 != 0 {
            start + u64::from(q.from & 0x7f) % npages * PAGE_SIZE
        } else {
            start
        };
        let cached = (0..npages)
            .filter(|i| self.cached & (1 << (i % 64)) != 0)
            .map(|i| start + i * PAGE_SIZE)
            .collect();
        Case {
            space,
            start,
            end,
            from,
            input,
            request,
            cached,
            invalidate_on_drop: self.invalidate_on_drop % 3,
        }
    }
}
