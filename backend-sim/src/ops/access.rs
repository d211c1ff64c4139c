//! CPU access through the page tables: loads and stores that fault
//! (`handle_mm_fault` with a user fault's flags, so userfaultfd waits drop
//! the lock), copy-on-write breaks, `get_user_pages` (which faults
//! device-private pages back to system memory), and inspection of the leaf
//! entries.

use std::sync::atomic::Ordering;

use hmm_core::{FaultFlags, FaultOutcome, VmFaultError, VmFlags, PAGE_SIZE};

use crate::fault::handle_mm_fault;
use crate::frame::ZERO_PFN;
use crate::mm::Mm;
use crate::pagetable::{Pte, Slot, PTE_SHIFT};
use crate::task::Task;
use crate::Errno;

/// How a page of the address space is reached: by a CPU load or store
/// (a user fault), or by `get_user_pages` (no `FAULT_FLAG_USER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    GupRead,
    GupWrite,
}

impl Mm {
    /// One access to the page at `addr`: translate, fault if needed
    /// (`ALLOW_RETRY | KILLABLE`, plus `USER` for a CPU access, so
    /// userfaultfd waits drop the lock like a real user access), then run
    /// `f(pfn)` under the page-table lock so the access is atomic with
    /// respect to concurrent PTE changes.
    fn access_page(
        &self,
        task: &Task,
        addr: u64,
        how: Access,
        f: &mut dyn FnMut(u64),
    ) -> Result<(), Errno> {
        let write = matches!(how, Access::Write | Access::GupWrite);
        let mut flags = FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        if matches!(how, Access::Read | Access::Write) {
            flags |= FaultFlags::USER;
        }
        if write {
            flags |= FaultFlags::WRITE;
        }
        loop {
            let g = self.read_killable(task)?;
            {
                let vmas = self.vmas();
                let Some(v) = vmas.lookup(addr) else {
                    return Err(Errno::EFAULT);
                };
                let need = if write { VmFlags::WRITE } else { VmFlags::READ };
                if !v.flags.contains(need) {
                    return Err(Errno::EFAULT);
                }
            }
            {
                let _ptl = self.ptl();
                if let Some(pfn) = self.translate(addr, write) {
                    f(pfn);
                    return Ok(());
                }
            }
            match handle_mm_fault(g, addr, flags) {
                FaultOutcome::Done(_) => {}
                FaultOutcome::Error(_, e) => {
                    return Err(match e {
                        VmFaultError::Oom => Errno::ENOMEM,
                        VmFaultError::HwPoison => Errno::EHWPOISON,
                        _ => Errno::EFAULT,
                    })
                }
                FaultOutcome::WouldBlock(_) => return Err(Errno::EAGAIN),
                FaultOutcome::Retry | FaultOutcome::Completed => {
                    if task.fatal_signal_pending() {
                        return Err(Errno::EINTR);
                    }
                    flags |= FaultFlags::TRIED;
                }
            }
        }
    }

    /// The PFN mapped at `addr` if the mapping allows the access.
    fn translate(&self, addr: u64, write: bool) -> Option<u64> {
        let (w, shift) = match self.tables.slot(self.root, addr, PTE_SHIFT, false) {
            Slot::At(e) => (e.load(Ordering::Acquire), PTE_SHIFT),
            Slot::Huge(e, s) => (e.load(Ordering::Acquire), s),
            Slot::Missing(_) => return None,
        };
        match Pte::decode(w, shift != PTE_SHIFT) {
            Pte::Present {
                pfn,
                write: pw,
                protnone: false,
                special,
                ..
            } if (pw || !write) && (!special || pfn == ZERO_PFN) => {
                let off = (addr & ((1u64 << shift) - 1)) / PAGE_SIZE;
                Some(pfn + off)
            }
            _ => None,
        }
    }

    /// Read `buf.len()` bytes at `addr` as the CPU would.
    pub fn read_bytes(&self, task: &Task, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let frames = &self.machine.frames;
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr + done as u64;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            self.access_page(task, a & !(PAGE_SIZE - 1), Access::Read, &mut |pfn| {
                frames.read(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// Write `buf` at `addr` as the CPU would (faults, COW breaks).
    pub fn write_bytes(&self, task: &Task, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        let frames = &self.machine.frames;
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr + done as u64;
            let off = (a % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            let chunk = &buf[done..done + n];
            self.access_page(task, a & !(PAGE_SIZE - 1), Access::Write, &mut |pfn| {
                frames.write(pfn, off, chunk)
            })?;
            done += n;
        }
        Ok(())
    }

    /// Read `n` native-endian `i32`s at `addr` (the selftests' `int *ptr`).
    pub fn read_i32s(&self, task: &Task, addr: u64, n: usize) -> Result<Vec<i32>, Errno> {
        let mut b = vec![0u8; n * 4];
        self.read_bytes(task, addr, &mut b)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Write `i32`s at `addr`.
    pub fn write_i32s(&self, task: &Task, addr: u64, v: &[i32]) -> Result<(), Errno> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        self.write_bytes(task, addr, &b)
    }

    /// `get_user_pages` / `pin_user_pages` of `npages` pages at `addr`
    /// (`FOLL_WRITE` if `write`): each page is looked up and faulted in as
    /// GUP does (no `FAULT_FLAG_USER`; a write breaks copy-on-write; a
    /// device-private page is migrated back to system memory, since GUP
    /// never returns device-private pages), then referenced. Returns the
    /// PFNs, to be released with [`Mm::unpin_user_pages`]. A referenced
    /// page is pinned: it has an extra reference, so it neither migrates
    /// to a device nor is swapped out while held (`FOLL_LONGTERM` needs no
    /// more here: device-coherent memory, which it would move out, is not
    /// modelled). On an error the pages taken so far are released.
    pub fn get_user_pages(
        &self,
        task: &Task,
        addr: u64,
        npages: u64,
        write: bool,
    ) -> Result<Vec<u64>, Errno> {
        let frames = &self.machine.frames;
        let how = if write {
            Access::GupWrite
        } else {
            Access::GupRead
        };
        let mut pins = Vec::new();
        for i in 0..npages {
            let a = addr
                .checked_add(i * PAGE_SIZE)
                .map(|a| a & !(PAGE_SIZE - 1))
                .ok_or(Errno::EFAULT);
            let r = a.and_then(|a| {
                self.access_page(task, a, how, &mut |pfn| {
                    frames.get(pfn);
                    pins.push(pfn);
                })
            });
            if let Err(e) = r {
                self.unpin_user_pages(&pins);
                return Err(e);
            }
        }
        Ok(pins)
    }

    /// `unpin_user_pages` / `put_page` of the pages [`Mm::get_user_pages`]
    /// returned.
    pub fn unpin_user_pages(&self, pfns: &[u64]) {
        for &p in pfns {
            self.machine.frames.put(p);
        }
    }

    /// Touch every page of `[addr, addr + len)` for read or write.
    pub fn touch(&self, task: &Task, addr: u64, len: u64, write: bool) -> Result<(), Errno> {
        let how = if write { Access::Write } else { Access::Read };
        let mut a = addr & !(PAGE_SIZE - 1);
        while a < addr + len {
            self.access_page(task, a, how, &mut |_| {})?;
            a += PAGE_SIZE;
        }
        Ok(())
    }

    /// What the CPU page tables map at `addr`: the decoded leaf entry and
    /// the PFN of the 4 KiB page at `addr` (for huge leaves, the subpage).
    pub fn pte_at(&self, addr: u64) -> (Pte, Option<u64>) {
        let (w, shift) = match self.tables.slot(self.root, addr, PTE_SHIFT, false) {
            Slot::At(e) => (e.load(Ordering::Acquire), PTE_SHIFT),
            Slot::Huge(e, s) => (e.load(Ordering::Acquire), s),
            Slot::Missing(_) => return (Pte::None, None),
        };
        let p = Pte::decode(w, shift != PTE_SHIFT);
        let off = (addr & ((1u64 << shift) - 1)) / PAGE_SIZE;
        (p, p.pfn().map(|x| x + off))
    }
}
