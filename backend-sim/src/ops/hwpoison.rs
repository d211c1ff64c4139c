//! Memory failure (`mm/memory-failure.c`): a poisoned frame's mapping
//! becomes a hwpoison entry.

use std::sync::atomic::Ordering;

use hmm_core::PAGE_SIZE;

use super::store;
use crate::mm::Mm;
use crate::notifier::{Event, InvalidateRange};
use crate::pagetable::{Pte, Slot, PTE_SHIFT};
use crate::task::Task;
use crate::Errno;

impl Mm {
    /// `memory_failure` on the page mapped at `addr`: mark the frame
    /// poisoned and replace its mapping by a hwpoison entry. The frame is
    /// never reused.
    pub fn hwpoison(&self, task: &Task, addr: u64) -> Result<(), Errno> {
        let addr = addr & !(PAGE_SIZE - 1);
        let _g = self.read_killable(task)?;
        self.split_all(addr, addr + PAGE_SIZE);
        let _inv = self.notifiers.invalidate_range_start(&InvalidateRange::new(
            addr,
            addr + PAGE_SIZE,
            Event::Clear,
        ));
        let _ptl = self.ptl();
        let Slot::At(e) = self.tables.slot(self.root, addr, PTE_SHIFT, false) else {
            return Err(Errno::EFAULT);
        };
        match Pte::decode(e.load(Ordering::Acquire), false) {
            Pte::Present {
                pfn,
                special: false,
                ..
            } => {
                self.machine.frames.set_poisoned(pfn);
                store(e, Pte::HwPoison { pfn });
                Ok(())
            }
            _ => Err(Errno::EFAULT),
        }
    }
}
