//! The machine every simulated process runs on: physical memory, the swap
//! device, the registry of device-private memory owners (`dev_pagemap`),
//! and the fault-injection switches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::frame::{FrameKind, Frames};
use crate::inject::Inject;

/// Words per page.
const WORDS: usize = 512;

/// The driver side of device-private memory (`struct dev_pagemap_ops`).
pub trait Pagemap: Send + Sync {
    /// The owner token (`pgmap->owner`), as compared with a range's
    /// `dev_private_owner`.
    fn owner(&self) -> u64;

    /// A CPU fault moved device page `dev_pfn`, mapped at `addr` in mm
    /// `mm_id`, back to system memory (`migrate_to_ram` has copied it).
    /// The driver drops its own references to it.
    fn migrated_to_ram(&self, mm_id: u64, addr: u64, dev_pfn: u64);

    /// Whether the driver fails the next large (THP) system-page allocation
    /// of a fault back to RAM in mm `mm_id` (test_hmm's one-shot
    /// `HMM_DMIRROR_FLAG_FAIL_ALLOC`); a `true` consumes it. The default
    /// never fails.
    fn fail_huge_alloc(&self, mm_id: u64) -> bool {
        let _ = mm_id;
        false
    }
}

/// Physical memory, swap, device memory owners and fault injection.
pub struct Machine {
    /// The frame allocator.
    pub frames: Arc<Frames>,
    swap: Mutex<HashMap<u64, Box<[u64]>>>,
    next_slot: AtomicU64,
    pagemaps: RwLock<HashMap<u64, Weak<dyn Pagemap>>>,
    /// Fault injection.
    pub inject: Inject,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("frames", &self.frames)
            .finish()
    }
}

impl Machine {
    /// A fresh machine.
    pub fn new() -> Arc<Machine> {
        Arc::new(Machine {
            frames: Arc::new(Frames::new()),
            swap: Mutex::new(HashMap::new()),
            next_slot: AtomicU64::new(1),
            pagemaps: RwLock::new(HashMap::new()),
            inject: Inject::default(),
        })
    }

    /// Allocate a page run for a fault or an operation, honouring injected
    /// allocation failures.
    pub fn alloc(&self, order: u8, kind: FrameKind) -> Option<u64> {
        if self.inject.should_fail_alloc() {
            return None;
        }
        self.frames.alloc(order, kind)
    }

    /// Register device memory owned by `pm.owner()`.
    pub fn register_pagemap(&self, pm: Weak<dyn Pagemap>, owner: u64) {
        self.pagemaps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(owner, pm);
    }

    /// The pagemap of `owner`, if still alive.
    pub fn pagemap(&self, owner: u64) -> Option<Arc<dyn Pagemap>> {
        self.pagemaps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&owner)
            .and_then(Weak::upgrade)
    }

    /// Write page `pfn` to a new swap slot.
    pub fn swap_out(&self, pfn: u64) -> u64 {
        let mut w = vec![0u64; WORDS].into_boxed_slice();
        self.frames.read_words(pfn, &mut w);
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.swap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, w);
        slot
    }

    /// Read swap slot `slot` into page `pfn` (the slot stays allocated).
    pub fn swap_in(&self, slot: u64, pfn: u64) -> bool {
        let s = self.swap.lock().unwrap_or_else(|e| e.into_inner());
        match s.get(&slot) {
            Some(w) => {
                self.frames.write_words(pfn, w);
                true
            }
            None => false,
        }
    }

    /// Duplicate a swap slot (fork of a swapped-out private page).
    pub fn swap_dup(&self, slot: u64) -> u64 {
        let mut s = self.swap.lock().unwrap_or_else(|e| e.into_inner());
        let copy = s
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| vec![0u64; WORDS].into());
        let new = self.next_slot.fetch_add(1, Ordering::Relaxed);
        s.insert(new, copy);
        new
    }

    /// Free a swap slot.
    pub fn swap_free(&self, slot: u64) {
        self.swap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot);
    }

    /// Swap slots in use.
    pub fn swap_used(&self) -> usize {
        self.swap.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
