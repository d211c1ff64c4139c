//! VMAs: what backs each mapped range, its flags, and its userfaultfd
//! registration; the per-mm VMA tree; and files with a page cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use hmm_core::{VmFlags, PAGE_SIZE};

use crate::frame::{FrameKind, Frames};
use crate::userfaultfd::UffdCtx;

/// A file (tmpfs, hugetlbfs or a shared anonymous mapping's shmem object)
/// with a page cache. Pages are allocated on first use and zero-filled.
pub struct File {
    order: u8,
    size: Mutex<u64>,
    pages: Mutex<HashMap<u64, u64>>,
    frames: Arc<Frames>,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("order", &self.order).finish()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let pages = std::mem::take(self.pages.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (_, pfn) in pages {
            self.frames.put(pfn);
        }
    }
}

impl File {
    /// A file of `size` bytes whose pages have order `order` (0, or the
    /// hugetlb order for hugetlbfs).
    pub fn new(frames: Arc<Frames>, size: u64, order: u8) -> Arc<File> {
        Arc::new(File {
            order,
            size: Mutex::new(size),
            pages: Mutex::new(HashMap::new()),
            frames,
        })
    }

    /// Page order of the file's pages.
    pub fn order(&self) -> u8 {
        self.order
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        *self.size.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The page-cache page at byte offset `off` (its head PFN), allocating
    /// it if absent. `None` when out of memory.
    pub fn find_or_create(&self, off: u64) -> Option<u64> {
        let psize = PAGE_SIZE << self.order;
        let idx = off / psize;
        let mut p = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&pfn) = p.get(&idx) {
            return Some(pfn);
        }
        let pfn = self.frames.alloc(self.order, FrameKind::System)?;
        p.insert(idx, pfn);
        Some(pfn)
    }

    /// The PFN of the 4 KiB page at byte offset `off`, if cached.
    pub fn lookup(&self, off: u64) -> Option<u64> {
        let psize = PAGE_SIZE << self.order;
        let p = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        p.get(&(off / psize)).map(|h| h + (off % psize) / PAGE_SIZE)
    }

    /// `pwrite`: write `buf` at `off`, growing the file.
    pub fn pwrite(&self, off: u64, buf: &[u8]) -> Option<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let head = self.find_or_create(at)?;
            let psize = PAGE_SIZE << self.order;
            let pfn = head + (at % psize) / PAGE_SIZE;
            let po = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - po).min(buf.len() - done);
            self.frames.write(pfn, po, &buf[done..done + n]);
            done += n;
        }
        let mut s = self.size.lock().unwrap_or_else(|e| e.into_inner());
        *s = (*s).max(off + buf.len() as u64);
        Some(())
    }

    /// `pread`: read `buf.len()` bytes at `off` (holes read as zero).
    pub fn pread(&self, off: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let po = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - po).min(buf.len() - done);
            match self.lookup(at) {
                Some(pfn) => self.frames.read(pfn, po, &mut buf[done..done + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }
}

/// What backs a VMA.
#[derive(Debug, Clone)]
pub enum Backing {
    /// Private anonymous memory (also private hugetlb).
    Anon,
    /// A file (shared: the page cache is mapped; private: COW over it).
    File {
        /// The file.
        file: Arc<File>,
        /// Byte offset of the VMA start in the file.
        offset: u64,
    },
    /// Raw PFNs (`remap_pfn_range`): `VM_PFNMAP | VM_IO`.
    Pfnmap {
        /// PFN mapped at the VMA start.
        base_pfn: u64,
    },
    /// A device's `VM_MIXEDMAP` mapping with pages inserted at mmap time.
    Mixedmap,
}

/// A userfaultfd registration on a VMA.
#[derive(Debug, Clone)]
pub struct UffdReg {
    /// The context.
    pub ctx: Arc<UffdCtx>,
    /// `UFFDIO_REGISTER_MODE_MISSING`.
    pub missing: bool,
    /// `UFFDIO_REGISTER_MODE_WP`.
    pub wp: bool,
    /// `UFFDIO_REGISTER_MODE_MINOR` (shmem and hugetlb only).
    pub minor: bool,
}

/// One VMA.
#[derive(Debug, Clone)]
pub struct VmaInfo {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// Huge page order of a hugetlb VMA.
    pub hugetlb_order: u8,
    /// What backs it.
    pub backing: Backing,
    /// userfaultfd registration.
    pub uffd: Option<UffdReg>,
}

impl VmaInfo {
    /// Private anonymous memory with `flags`.
    pub fn anon(start: u64, end: u64, flags: VmFlags) -> Self {
        VmaInfo {
            start,
            end,
            flags,
            hugetlb_order: 0,
            backing: Backing::Anon,
            uffd: None,
        }
    }

    /// Whether writes are private (`is_cow_mapping`).
    pub fn is_cow(&self) -> bool {
        !self.flags.contains(VmFlags::SHARED)
    }

    /// Whether a hugetlb VMA.
    pub fn is_hugetlb(&self) -> bool {
        self.flags.contains(VmFlags::HUGETLB)
    }

    /// Whether anonymous (private, not file backed).
    pub fn is_anon(&self) -> bool {
        matches!(self.backing, Backing::Anon)
    }

    /// `userfaultfd_missing(vma)`: registered for missing faults.
    pub fn uffd_missing(&self) -> bool {
        self.uffd.as_ref().is_some_and(|r| r.missing)
    }

    /// `userfaultfd_minor(vma)`: registered for minor faults.
    pub fn uffd_minor(&self) -> bool {
        self.uffd.as_ref().is_some_and(|r| r.minor)
    }

    /// Whether shmem or hugetlb memory, the only kinds that take
    /// userfaultfd MINOR registrations (`vma_can_userfault`): a shared file
    /// mapping (`MAP_SHARED | MAP_ANONYMOUS` is a shmem file here) or any
    /// hugetlb mapping.
    pub fn minor_capable(&self) -> bool {
        self.is_hugetlb()
            || (self.flags.contains(VmFlags::SHARED)
                && matches!(self.backing, Backing::File { .. }))
    }

    /// Whether `pfn`, mapped at `addr`, is the backing file's page-cache
    /// page there (not an anonymous copy-on-write copy of it).
    pub fn maps_page_cache(&self, addr: u64, pfn: u64) -> bool {
        match &self.backing {
            Backing::File { file, .. } => file.lookup(self.file_offset(addr)) == Some(pfn),
            _ => false,
        }
    }

    /// Whether a PMD-sized THP can back the 2 MiB block at `addr`.
    pub fn thp_eligible(&self, addr: u64) -> bool {
        let base = addr & !(crate::pagetable::PMD_SIZE - 1);
        self.is_anon()
            && !self.is_hugetlb()
            && self.flags.contains(VmFlags::HUGEPAGE)
            && base >= self.start
            && base + crate::pagetable::PMD_SIZE <= self.end
    }

    /// Byte offset in the backing file of `addr`.
    pub fn file_offset(&self, addr: u64) -> u64 {
        match &self.backing {
            Backing::File { offset, .. } => offset + (addr - self.start),
            _ => addr - self.start,
        }
    }

    /// The view hmm-core sees.
    pub fn as_core(&self) -> hmm_core::Vma<'static> {
        hmm_core::Vma::new(self.start, self.end, self.flags, self.hugetlb_order)
    }

    fn split_at(&self, at: u64) -> (VmaInfo, VmaInfo) {
        let mut lo = self.clone();
        let mut hi = self.clone();
        lo.end = at;
        hi.start = at;
        if let Backing::File { offset, .. } = &mut hi.backing {
            *offset += at - self.start;
        }
        if let Backing::Pfnmap { base_pfn } = &mut hi.backing {
            *base_pfn += (at - self.start) / PAGE_SIZE;
        }
        (lo, hi)
    }
}

/// The VMAs of one mm, keyed by end address.
#[derive(Debug, Default, Clone)]
pub struct VmaTree {
    map: BTreeMap<u64, VmaInfo>,
}

impl VmaTree {
    /// `find_vma`: the first VMA ending above `addr`.
    pub fn find(&self, addr: u64) -> Option<&VmaInfo> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.map
            .range((Excluded(addr), Unbounded))
            .next()
            .map(|(_, v)| v)
    }

    /// `vma_lookup`: the VMA containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&VmaInfo> {
        self.find(addr).filter(|v| v.start <= addr)
    }

    /// Whether `[start, end)` overlaps any VMA.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.find(start).is_some_and(|v| v.start < end)
    }

    /// Insert a VMA (the range must be free).
    pub fn insert(&mut self, v: VmaInfo) {
        debug_assert!(!self.overlaps(v.start, v.end));
        self.map.insert(v.end, v);
    }

    /// Split VMAs so that `at` is a VMA boundary.
    pub fn split(&mut self, at: u64) {
        let Some(v) = self.lookup(at).cloned() else {
            return;
        };
        if v.start == at {
            return;
        }
        self.map.remove(&v.end);
        let (lo, hi) = v.split_at(at);
        self.map.insert(lo.end, lo);
        self.map.insert(hi.end, hi);
    }

    /// Split at `start` and `end`, then return mutable access to every VMA
    /// inside `[start, end)`.
    pub fn range_mut(&mut self, start: u64, end: u64) -> impl Iterator<Item = &mut VmaInfo> {
        self.split(start);
        self.split(end);
        use std::ops::Bound::{Excluded, Unbounded};
        self.map
            .range_mut((Excluded(start), Unbounded))
            .map(|(_, v)| v)
            .take_while(move |v| v.start < end)
    }

    /// The VMAs overlapping `[start, end)` (clones).
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<VmaInfo> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.map
            .range((Excluded(start), Unbounded))
            .map(|(_, v)| v)
            .take_while(|v| v.start < end)
            .cloned()
            .collect()
    }

    /// Remove `[start, end)` from the tree (splitting at the edges) and
    /// return the removed VMAs.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<VmaInfo> {
        self.split(start);
        self.split(end);
        let keys: Vec<u64> = self.overlapping(start, end).iter().map(|v| v.end).collect();
        keys.iter().filter_map(|k| self.map.remove(k)).collect()
    }

    /// All VMAs.
    pub fn iter(&self) -> impl Iterator<Item = &VmaInfo> {
        self.map.values()
    }

    /// A free, `align`-aligned range of `len` bytes at or above `hint`.
    pub fn free_area(&self, hint: u64, len: u64, align: u64) -> u64 {
        let mut a = hint.div_ceil(align) * align;
        loop {
            match self.find(a) {
                Some(v) if v.start < a + len => a = v.end.div_ceil(align) * align,
                _ => return a,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_remove_keep_the_tree_consistent() {
        let mut t = VmaTree::default();
        let rw = VmFlags::READ | VmFlags::WRITE;
        t.insert(VmaInfo::anon(0x1000, 0x9000, rw));
        for v in t.range_mut(0x3000, 0x5000) {
            v.flags = VmFlags::READ;
        }
        let all: Vec<(u64, u64, bool)> = t
            .iter()
            .map(|v| (v.start, v.end, v.flags.contains(VmFlags::WRITE)))
            .collect();
        assert_eq!(
            all,
            vec![
                (0x1000, 0x3000, true),
                (0x3000, 0x5000, false),
                (0x5000, 0x9000, true)
            ]
        );
        let gone = t.remove_range(0x2000, 0x4000);
        assert_eq!(gone.len(), 2);
        assert!(t.lookup(0x2000).is_none());
        assert_eq!(t.find(0x2000).map(|v| v.start), Some(0x4000));
        assert_eq!(t.free_area(0x1000, 0x2000, 0x1000), 0x2000);
        assert_eq!(t.free_area(0x1000, 0x3000, 0x1000), 0x9000);
    }

    #[test]
    fn file_page_cache_round_trip() {
        let f = File::new(Arc::new(Frames::new()), 0, 0);
        f.pwrite(4090, b"0123456789").unwrap();
        let mut b = [0u8; 10];
        f.pread(4090, &mut b);
        assert_eq!(&b, b"0123456789");
        assert_eq!(f.size(), 4100);
        assert!(f.lookup(0).is_some() && f.lookup(8192).is_none());
    }
}
