//! Physical memory: a frame allocator whose frames hold real 4 KiB contents.
//!
//! Every frame has a PFN, a reference count, a compound order (THP and
//! hugetlb pages are naturally aligned runs of `1 << order` frames whose
//! reference count lives in the head frame, as with Linux folios), a kind
//! (system RAM or device-private memory of an owner) and a hwpoison bit.
//! Contents are stored as relaxed atomic words, so concurrent CPU and device
//! accesses race exactly like real memory (no undefined behaviour, no
//! locks), and are allocated lazily per 512-frame chunk: a frame never
//! written reads as zeroes.
//!
//! [`ZERO_PFN`] is the shared zero page and [`HUGE_ZERO_PFN`] the head of
//! the huge zero page (a PMD-sized run): always allocated, never freed,
//! never written, and their reference counts are never touched.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use hmm_core::PAGE_SIZE;

/// Frames per chunk (one PMD's worth).
pub const CHUNK_FRAMES: u64 = 512;
/// 64-bit words per page.
const WORDS: usize = (PAGE_SIZE / 8) as usize;
/// Maximum number of chunks (64 GiB of simulated memory).
const MAX_CHUNKS: usize = 1 << 15;

/// PFN of the shared zero page.
pub const ZERO_PFN: u64 = 1;
/// Head PFN of the huge zero page (`huge_zero_folio`): the last chunk of
/// frames, mapped read-only by a PMD on a read fault of an untouched
/// THP-eligible anonymous range. The allocator never hands it out.
pub const HUGE_ZERO_PFN: u64 = (MAX_CHUNKS as u64 - 1) * CHUNK_FRAMES;

/// Whether `pfn` is the zero page or a page of the huge zero page
/// (`is_zero_pfn` / `is_huge_zero_folio`): never referenced, never freed.
#[inline]
pub fn is_zero_frame(pfn: u64) -> bool {
    pfn == ZERO_PFN || (HUGE_ZERO_PFN..HUGE_ZERO_PFN + CHUNK_FRAMES).contains(&pfn)
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Ordinary system RAM.
    System,
    /// Device-private memory (`MEMORY_DEVICE_PRIVATE`) of the pagemap owner.
    DevicePrivate(u64),
}

#[derive(Debug, Default)]
struct FrameMeta {
    /// Reference count (head frames only for compound pages).
    refcount: AtomicU32,
    /// Compound order of the run this frame belongs to.
    order: AtomicU8,
    /// Device-private owner, 0 for system RAM.
    owner: AtomicU64,
    /// Hardware poison.
    poisoned: AtomicBool,
}

struct Chunk {
    meta: Box<[FrameMeta]>,
    data: OnceLock<Box<[AtomicU64]>>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            meta: (0..CHUNK_FRAMES).map(|_| FrameMeta::default()).collect(),
            data: OnceLock::new(),
        }
    }
    fn data(&self) -> &[AtomicU64] {
        self.data.get_or_init(|| {
            (0..CHUNK_FRAMES as usize * WORDS)
                .map(|_| AtomicU64::new(0))
                .collect()
        })
    }
}

#[derive(Default)]
struct FreeLists {
    /// Free runs per order (0, 9, 18 are used).
    lists: [Vec<u64>; 19],
    /// First never-allocated PFN.
    bump: u64,
    /// Frames currently allocated (for the optional limit).
    in_use: u64,
}

/// The frame allocator and the contents of every frame.
pub struct Frames {
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    free: Mutex<FreeLists>,
    limit: AtomicU64,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

impl Frames {
    /// An allocator with the zero page set up and no limit.
    pub fn new() -> Self {
        let f = Frames {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            free: Mutex::new(FreeLists {
                bump: CHUNK_FRAMES,
                // PFN 0 is never used; PFN 1 is the zero page.
                lists: Default::default(),
                in_use: 0,
            }),
            limit: AtomicU64::new(u64::MAX),
        };
        {
            let mut fl = f.free.lock().unwrap_or_else(|e| e.into_inner());
            fl.lists[0].extend((2..CHUNK_FRAMES).rev());
        }
        let m = f.meta(ZERO_PFN);
        m.refcount.store(1, Ordering::Relaxed);
        for p in HUGE_ZERO_PFN..HUGE_ZERO_PFN + CHUNK_FRAMES {
            f.meta(p).order.store(9, Ordering::Relaxed);
        }
        f.meta(HUGE_ZERO_PFN).refcount.store(1, Ordering::Relaxed);
        f
    }

    /// Limit the number of frames in use (allocation beyond it fails).
    pub fn set_limit(&self, frames: u64) {
        self.limit.store(frames, Ordering::Relaxed);
    }

    /// The size of simulated RAM in pages (`totalram_pages()`): the limit
    /// if one is set, else every frame the allocator can hand out.
    pub fn total_pages(&self) -> u64 {
        self.limit
            .load(Ordering::Relaxed)
            .min(MAX_CHUNKS as u64 * CHUNK_FRAMES)
    }

    /// Frames currently allocated.
    pub fn in_use(&self) -> u64 {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).in_use
    }

    fn chunk(&self, pfn: u64) -> &Chunk {
        let i = (pfn / CHUNK_FRAMES) as usize;
        self.chunks[i].get_or_init(|| Box::new(Chunk::new()))
    }

    fn meta(&self, pfn: u64) -> &FrameMeta {
        &self.chunk(pfn).meta[(pfn % CHUNK_FRAMES) as usize]
    }

    fn words(&self, pfn: u64) -> &[AtomicU64] {
        let off = (pfn % CHUNK_FRAMES) as usize * WORDS;
        &self.chunk(pfn).data()[off..off + WORDS]
    }

    /// Allocate a zero-filled run of `1 << order` frames, naturally aligned,
    /// with reference count 1 on the head. `None` when out of memory.
    pub fn alloc(&self, order: u8, kind: FrameKind) -> Option<u64> {
        let n = 1u64 << order;
        let pfn = {
            let mut fl = self.free.lock().unwrap_or_else(|e| e.into_inner());
            if fl.in_use + n > self.limit.load(Ordering::Relaxed) {
                return None;
            }
            let pfn = match fl.lists[order as usize].pop() {
                Some(p) => p,
                None => {
                    let start = fl.bump.div_ceil(n) * n;
                    // The last chunk is the huge zero page.
                    if (start + n).div_ceil(CHUNK_FRAMES) >= MAX_CHUNKS as u64 {
                        return None;
                    }
                    // Alignment padding goes to the order-0 list.
                    let pad: Vec<u64> = (fl.bump..start).collect();
                    fl.lists[0].extend(pad);
                    fl.bump = start + n;
                    start
                }
            };
            fl.in_use += n;
            pfn
        };
        let owner = match kind {
            FrameKind::System => 0,
            FrameKind::DevicePrivate(o) => o,
        };
        for p in pfn..pfn + n {
            let m = self.meta(p);
            m.order.store(order, Ordering::Relaxed);
            m.owner.store(owner, Ordering::Relaxed);
            m.poisoned.store(false, Ordering::Relaxed);
            m.refcount.store(0, Ordering::Relaxed);
            self.zero_words(p);
        }
        self.meta(pfn).refcount.store(1, Ordering::Release);
        Some(pfn)
    }

    fn zero_words(&self, pfn: u64) {
        // Untouched chunks read as zero without allocating their data.
        let c = self.chunk(pfn);
        if let Some(d) = c.data.get() {
            let off = (pfn % CHUNK_FRAMES) as usize * WORDS;
            for w in &d[off..off + WORDS] {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The head PFN of the compound page containing `pfn`.
    pub fn head(&self, pfn: u64) -> u64 {
        let order = self.meta(pfn).order.load(Ordering::Relaxed);
        pfn & !((1u64 << order) - 1)
    }

    /// Compound order of the page containing `pfn`.
    pub fn order(&self, pfn: u64) -> u8 {
        self.meta(pfn).order.load(Ordering::Relaxed)
    }

    /// Take a reference on the page containing `pfn` (`get_page`).
    pub fn get(&self, pfn: u64) {
        if is_zero_frame(pfn) {
            return;
        }
        self.meta(self.head(pfn))
            .refcount
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Take `n` references at once.
    pub fn get_many(&self, pfn: u64, n: u32) {
        if is_zero_frame(pfn) || n == 0 {
            return;
        }
        self.meta(self.head(pfn))
            .refcount
            .fetch_add(n, Ordering::AcqRel);
    }

    /// Drop a reference (`put_page`); the run is freed at zero.
    pub fn put(&self, pfn: u64) {
        if is_zero_frame(pfn) {
            return;
        }
        let head = self.head(pfn);
        let prev = self.meta(head).refcount.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev > 0, "put of a free frame {pfn:#x}");
        if prev == 1 {
            let order = self.order(head);
            let mut fl = self.free.lock().unwrap_or_else(|e| e.into_inner());
            fl.lists[order as usize].push(head);
            fl.in_use -= 1u64 << order;
        }
    }

    /// Reference count of the page containing `pfn`.
    pub fn refcount(&self, pfn: u64) -> u32 {
        self.meta(self.head(pfn)).refcount.load(Ordering::Acquire)
    }

    /// Split a compound page into order-0 pages (`split_folio`): every
    /// subpage gets the head's reference count divided as given by
    /// `refs(i)` for subpage `i`.
    pub fn split(&self, head: u64, refs: impl Fn(u64) -> u32) {
        let order = self.order(head);
        for i in 0..(1u64 << order) {
            let m = self.meta(head + i);
            m.order.store(0, Ordering::Relaxed);
            m.refcount.store(refs(i), Ordering::Release);
        }
        // Subpages left without references are freed now.
        for i in 0..(1u64 << order) {
            if self.meta(head + i).refcount.load(Ordering::Acquire) == 0 {
                let mut fl = self.free.lock().unwrap_or_else(|e| e.into_inner());
                fl.lists[0].push(head + i);
                fl.in_use -= 1;
            }
        }
    }

    /// The kind of the frame.
    pub fn kind(&self, pfn: u64) -> FrameKind {
        match self.meta(pfn).owner.load(Ordering::Relaxed) {
            0 => FrameKind::System,
            o => FrameKind::DevicePrivate(o),
        }
    }

    /// Mark the frame hardware-poisoned.
    pub fn set_poisoned(&self, pfn: u64) {
        self.meta(pfn).poisoned.store(true, Ordering::Release);
    }

    /// Whether the frame is hardware-poisoned.
    pub fn is_poisoned(&self, pfn: u64) -> bool {
        self.meta(pfn).poisoned.load(Ordering::Acquire)
    }

    /// Copy `buf.len()` bytes from the frame at byte offset `off`.
    pub fn read(&self, pfn: u64, off: usize, buf: &mut [u8]) {
        assert!(off + buf.len() <= PAGE_SIZE as usize);
        let c = self.chunk(pfn);
        let Some(d) = c.data.get() else {
            buf.fill(0);
            return;
        };
        let base = (pfn % CHUNK_FRAMES) as usize * WORDS;
        let words = &d[base..base + WORDS];
        for (i, b) in buf.iter_mut().enumerate() {
            let at = off + i;
            let w = words[at / 8].load(Ordering::Relaxed);
            *b = w.to_le_bytes()[at % 8];
        }
    }

    /// Copy `buf` into the frame at byte offset `off`.
    pub fn write(&self, pfn: u64, off: usize, buf: &[u8]) {
        assert!(off + buf.len() <= PAGE_SIZE as usize);
        assert_ne!(pfn, ZERO_PFN, "write to the zero page");
        let words = self.words(pfn);
        let mut i = 0;
        while i < buf.len() {
            let at = off + i;
            let (wi, bi) = (at / 8, at % 8);
            if bi == 0 && buf.len() - i >= 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[i..i + 8]);
                words[wi].store(u64::from_le_bytes(b), Ordering::Relaxed);
                i += 8;
            } else {
                let mut b = words[wi].load(Ordering::Relaxed).to_le_bytes();
                b[bi] = buf[i];
                words[wi].store(u64::from_le_bytes(b), Ordering::Relaxed);
                i += 1;
            }
        }
    }

    /// Read the whole page as words.
    pub fn read_words(&self, pfn: u64, out: &mut [u64]) {
        assert_eq!(out.len(), WORDS);
        match self.chunk(pfn).data.get() {
            None => out.fill(0),
            Some(d) => {
                let base = (pfn % CHUNK_FRAMES) as usize * WORDS;
                for (o, w) in out.iter_mut().zip(&d[base..base + WORDS]) {
                    *o = w.load(Ordering::Relaxed);
                }
            }
        }
    }

    /// Write the whole page from words.
    pub fn write_words(&self, pfn: u64, src: &[u64]) {
        assert_eq!(src.len(), WORDS);
        assert_ne!(pfn, ZERO_PFN, "write to the zero page");
        for (w, s) in self.words(pfn).iter().zip(src) {
            w.store(*s, Ordering::Relaxed);
        }
    }

    /// Copy the contents of page `src` into page `dst` (`copy_highpage`).
    pub fn copy_page(&self, src: u64, dst: u64) {
        let mut tmp = [0u64; WORDS];
        self.read_words(src, &mut tmp);
        self.write_words(dst, &tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_zeroed_write_read_free_reuse() {
        let f = Frames::new();
        let p = f.alloc(0, FrameKind::System).unwrap();
        let mut b = [1u8; 16];
        f.read(p, 100, &mut b);
        assert_eq!(b, [0; 16]);
        f.write(p, 3, b"hello, frame");
        let mut r = [0u8; 12];
        f.read(p, 3, &mut r);
        assert_eq!(&r, b"hello, frame");
        assert_eq!(f.in_use(), 1);
        f.put(p);
        assert_eq!(f.in_use(), 0);
        let q = f.alloc(0, FrameKind::System).unwrap();
        assert_eq!(q, p, "freed frame is reused");
        let mut r2 = [9u8; 12];
        f.read(q, 3, &mut r2);
        assert_eq!(r2, [0; 12], "reused frame is zeroed");
    }

    #[test]
    fn compound_pages_are_aligned_and_share_a_refcount() {
        let f = Frames::new();
        let h = f.alloc(9, FrameKind::System).unwrap();
        assert_eq!(h % 512, 0);
        assert_eq!(f.head(h + 77), h);
        f.get(h + 5);
        assert_eq!(f.refcount(h + 100), 2);
        f.put(h + 3);
        f.put(h);
        assert_eq!(f.in_use(), 0);
    }

    #[test]
    fn split_gives_each_subpage_its_refs_and_frees_unreferenced() {
        let f = Frames::new();
        let h = f.alloc(9, FrameKind::System).unwrap();
        f.split(h, |i| u32::from(i < 2));
        assert_eq!(f.in_use(), 2);
        assert_eq!(f.head(h + 1), h + 1);
        f.put(h);
        f.put(h + 1);
        assert_eq!(f.in_use(), 0);
    }

    #[test]
    fn limit_makes_allocation_fail() {
        let f = Frames::new();
        f.set_limit(1);
        let p = f.alloc(0, FrameKind::System).unwrap();
        assert!(f.alloc(0, FrameKind::System).is_none());
        f.put(p);
        assert!(f.alloc(0, FrameKind::DevicePrivate(7)).is_some());
    }

    #[test]
    fn zero_page_is_never_freed() {
        let f = Frames::new();
        f.put(ZERO_PFN);
        f.put(ZERO_PFN);
        let mut b = [1u8; 8];
        f.read(ZERO_PFN, 0, &mut b);
        assert_eq!(b, [0; 8]);
        assert_eq!(f.refcount(ZERO_PFN), 1);
    }
}
