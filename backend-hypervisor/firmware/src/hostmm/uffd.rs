//! The bare-metal analogue of userfaultfd with a post-copy pager.
//!
//! A fault on a missing page of a [`VmaKind::Userfault`](super::VmaKind)
//! VMA queues a message, *drops the mmap lock*, waits until the pager has
//! resolved it and returns "retry", exactly like `handle_userfault()`. The
//! pager runs on the second CPU: it takes the message, fetches the page from
//! its source (here: a deterministic pattern standing in for the migration
//! source's memory, with a generation that moves when the source re-sends
//! pages), and installs it with [`HostMm::uffd_copy`](super::HostMm::uffd_copy)
//! (`UFFDIO_COPY`), then wakes the faulting context.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::sysreg::{sev, wfe};

const FREE: u8 = 0;
const QUEUED: u8 = 1;
const RUNNING: u8 = 2;
const RESOLVED: u8 = 3;

/// Message slots (`struct uffd_msg` queue).
const SLOTS: usize = 8;

struct Slot {
    state: AtomicU8,
    addr: AtomicU64,
}

/// The userfaultfd context of the host mm.
pub struct Uffd {
    slots: [Slot; SLOTS],
    generation: AtomicU64,
    messages: AtomicU64,
    copies: AtomicU64,
}

/// The word the migration source holds at byte offset `off` of the
/// userfault VMA, in source generation `generation`. The guest checks its
/// memory against the same function.
pub const fn source_word(off: u64, generation: u64) -> u64 {
    let mut x = off ^ (generation.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ 0x5eed_0000_0000;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl Default for Uffd {
    fn default() -> Self {
        Self::new()
    }
}

impl Uffd {
    /// No messages, generation 0.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const S: Slot = Slot {
            state: AtomicU8::new(FREE),
            addr: AtomicU64::new(0),
        };
        Uffd {
            slots: [S; SLOTS],
            generation: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            copies: AtomicU64::new(0),
        }
    }

    /// Queue a missing-page message for `addr`; returns its slot. Spins
    /// while every slot is taken (called without the mmap lock).
    pub fn post(&self, addr: u64) -> usize {
        loop {
            for (i, s) in self.slots.iter().enumerate() {
                if s.state
                    .compare_exchange(FREE, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    s.addr.store(addr, Ordering::Relaxed);
                    s.state.store(QUEUED, Ordering::Release);
                    self.messages.fetch_add(1, Ordering::Relaxed);
                    sev();
                    return i;
                }
            }
            wfe();
        }
    }

    /// Wait until the message in `slot` is resolved, then free the slot.
    pub fn wait(&self, slot: usize) {
        let s = &self.slots[slot];
        while s.state.load(Ordering::Acquire) != RESOLVED {
            wfe();
        }
        s.state.store(FREE, Ordering::Release);
        sev();
    }

    /// Pager side: take one queued message (its slot and address).
    pub fn take(&self) -> Option<(usize, u64)> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.state
                .compare_exchange(QUEUED, RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some((i, s.addr.load(Ordering::Relaxed)));
            }
        }
        None
    }

    /// Pager side: the message in `slot` is resolved; wake its waiter.
    pub fn resolve(&self, slot: usize) {
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.slots[slot].state.store(RESOLVED, Ordering::Release);
        sev();
    }

    /// The source generation pages are fetched at.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The source re-sends its pages at a new generation (after the host
    /// zapped them).
    pub fn bump_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// (messages queued, pages resolved).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.copies.load(Ordering::Relaxed),
        )
    }
}
