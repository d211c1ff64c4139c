//! `mmap` (`mm/mmap.c`'s `do_mmap`, `get_unmapped_area`): new VMAs of
//! every kind the simulator models (private and shared anonymous, file,
//! hugetlb, `VM_PFNMAP` / `VM_IO`, `VM_MIXEDMAP`), with the address-space
//! limit checks; PFN and mixed maps are populated at once, as their
//! drivers do.

use std::sync::Arc;

use hmm_core::{VmFlags, PAGE_SIZE};

use super::{store, MMAP_BASE, PROT_MASK};
use crate::frame::FrameKind;
use crate::mm::Mm;
use crate::pagetable::{Pte, Slot, PMD_SIZE, PTE_SHIFT};
use crate::vma::{Backing, File, VmaInfo};
use crate::Errno;

impl Mm {
    fn mmap_vma(&self, hint: Option<u64>, len: u64, mut v: VmaInfo) -> Result<u64, Errno> {
        let align = if v.is_hugetlb() {
            PAGE_SIZE << v.hugetlb_order
        } else if len >= PMD_SIZE {
            PMD_SIZE
        } else {
            PAGE_SIZE
        };
        if len == 0 || !len.is_multiple_of(align) {
            return Err(Errno::EINVAL);
        }
        // get_unmapped_area: the mapping must end within the user address
        // space.
        let limit = hmm_core::TASK_SIZE;
        if len > limit {
            return Err(Errno::ENOMEM);
        }
        let _w = self.write();
        let mut vmas = self.vmas_mut();
        let start = match hint {
            Some(a) => {
                if a % align != 0 {
                    return Err(Errno::EINVAL);
                }
                if a > limit - len {
                    return Err(Errno::ENOMEM);
                }
                if vmas.overlaps(a, a + len) {
                    return Err(Errno::EEXIST);
                }
                a
            }
            None => vmas.free_area(MMAP_BASE, len, align.max(PMD_SIZE)),
        };
        if start > limit - len {
            return Err(Errno::ENOMEM);
        }
        v.start = start;
        v.end = start + len;
        let backing = v.backing.clone();
        let flags = v.flags;
        vmas.insert(v);
        drop(vmas);
        match backing {
            Backing::Pfnmap { base_pfn } => {
                let _ptl = self.ptl();
                for i in 0..len / PAGE_SIZE {
                    if let Slot::At(e) =
                        self.tables
                            .slot(self.root, start + i * PAGE_SIZE, PTE_SHIFT, true)
                    {
                        let p = Pte::Present {
                            pfn: base_pfn + i,
                            write: flags.contains(VmFlags::WRITE),
                            huge: false,
                            special: true,
                            protnone: false,
                            uffd_wp: false,
                        };
                        store(e, p);
                    }
                }
            }
            Backing::Mixedmap => {
                // The driver inserts a page per address (vm_insert_page).
                let _ptl = self.ptl();
                for i in 0..len / PAGE_SIZE {
                    let pfn = self
                        .machine
                        .alloc(0, FrameKind::System)
                        .ok_or(Errno::ENOMEM)?;
                    if let Slot::At(e) =
                        self.tables
                            .slot(self.root, start + i * PAGE_SIZE, PTE_SHIFT, true)
                    {
                        store(e, Pte::present(pfn, flags.contains(VmFlags::WRITE), false));
                    }
                }
            }
            _ => {}
        }
        Ok(start)
    }

    /// `mmap(MAP_PRIVATE | MAP_ANONYMOUS)` with protection `prot`
    /// (`READ`/`WRITE`/`EXEC`); at `addr` if given (`MAP_FIXED_NOREPLACE`).
    pub fn mmap_anon(&self, addr: Option<u64>, len: u64, prot: VmFlags) -> Result<u64, Errno> {
        self.mmap_vma(addr, len, VmaInfo::anon(0, 0, prot & PROT_MASK))
    }

    /// `mmap(MAP_SHARED | MAP_ANONYMOUS)`: a shmem object.
    pub fn mmap_shared_anon(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
    ) -> Result<u64, Errno> {
        let file = File::new(self.machine.frames.clone(), len, 0);
        self.mmap_file(addr, len, prot, true, &file, 0)
    }

    /// `mmap` of `file` at byte `offset`, shared or private.
    pub fn mmap_file(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        shared: bool,
        file: &Arc<File>,
        offset: u64,
    ) -> Result<u64, Errno> {
        let mut flags = prot & PROT_MASK;
        let mut v = VmaInfo::anon(0, 0, flags);
        if file.order() > 0 {
            flags |= VmFlags::HUGETLB;
            v.hugetlb_order = file.order();
        }
        if shared {
            flags |= VmFlags::SHARED;
        }
        v.flags = flags;
        v.backing = Backing::File {
            file: file.clone(),
            offset,
        };
        self.mmap_vma(addr, len, v)
    }

    /// `mmap(MAP_HUGETLB)` with huge pages of `order` (9: 2 MiB, 18: 1 GiB);
    /// private, or shared through a hugetlbfs file.
    pub fn mmap_hugetlb(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        order: u8,
        shared: bool,
    ) -> Result<u64, Errno> {
        if order != 9 && order != 18 {
            return Err(Errno::EINVAL);
        }
        if shared {
            let file = File::new(self.machine.frames.clone(), len, order);
            return self.mmap_file(addr, len, prot, true, &file, 0);
        }
        let mut v = VmaInfo::anon(0, 0, (prot & PROT_MASK) | VmFlags::HUGETLB);
        v.hugetlb_order = order;
        self.mmap_vma(addr, len, v)
    }

    /// `remap_pfn_range`: raw PFNs (`VM_PFNMAP`, plus `VM_IO` if `io`).
    pub fn mmap_pfnmap(
        &self,
        addr: Option<u64>,
        len: u64,
        prot: VmFlags,
        base_pfn: u64,
        io: bool,
    ) -> Result<u64, Errno> {
        let mut flags = (prot & PROT_MASK) | VmFlags::PFNMAP | VmFlags::SHARED;
        if io {
            flags |= VmFlags::IO;
        }
        let mut v = VmaInfo::anon(0, 0, flags);
        v.backing = Backing::Pfnmap { base_pfn };
        self.mmap_vma(addr, len, v)
    }

    /// A device's `VM_MIXEDMAP` mapping with a page inserted per address
    /// (what mmap of `/dev/hmm_dmirror` does).
    pub fn mmap_mixedmap(&self, addr: Option<u64>, len: u64, prot: VmFlags) -> Result<u64, Errno> {
        let mut v = VmaInfo::anon(0, 0, (prot & PROT_MASK) | VmFlags::MIXEDMAP);
        v.backing = Backing::Mixedmap;
        self.mmap_vma(addr, len, v)
    }

    /// The VMAs (copies), for inspection.
    pub fn vma_list(&self) -> Vec<VmaInfo> {
        self.vmas().iter().cloned().collect()
    }
}
