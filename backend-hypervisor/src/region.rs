//! Guest memory regions: a guest-physical range backed by a host virtual
//! range of the host address space, with guest permissions, and the
//! fixed-capacity table that holds them.
//!
//! Each region carries the read side of the host MMU interval notifier
//! subscribed over its host range, and has a *region lock*: the lock under
//! which a guest fault validates its notifier sequence (`read_retry`) and
//! installs its mappings, and which the invalidate callback takes before it
//! moves the sequence and unmaps. Regions are identified by a
//! [`RegionId`] whose generation makes a stale id (of a removed region whose
//! slot was reused) harmless.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use super::descriptor::{Perm, GPA_LIMIT};

/// Page size regions are aligned to.
const PAGE: u64 = 4096;

/// What a region maps: guest `[gpa, gpa + size)` to host `[hva, hva + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionSpec {
    /// First guest-physical address (4 KiB aligned).
    pub gpa: u64,
    /// Size in bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// First host virtual address (4 KiB aligned).
    pub hva: u64,
    /// What the guest may do; must include [`Perm::R`].
    pub perm: Perm,
}

impl RegionSpec {
    /// One past the last guest-physical address.
    pub const fn gpa_end(&self) -> u64 {
        self.gpa + self.size
    }
    /// One past the last host virtual address.
    pub const fn hva_end(&self) -> u64 {
        self.hva + self.size
    }
    /// Whether `gpa` lies inside.
    pub const fn contains_gpa(&self, gpa: u64) -> bool {
        self.gpa <= gpa && gpa < self.gpa_end()
    }
    /// The host address backing `gpa` (inside the region).
    pub const fn hva_of(&self, gpa: u64) -> u64 {
        self.hva + (gpa - self.gpa)
    }
    /// The guest address backed by `hva` (inside the region).
    pub const fn gpa_of(&self, hva: u64) -> u64 {
        self.gpa + (hva - self.hva)
    }

    fn check(&self) -> Result<(), RegionError> {
        if self.size == 0 {
            return Err(RegionError::Empty);
        }
        if !(self.gpa | self.size | self.hva).is_multiple_of(PAGE) {
            return Err(RegionError::Unaligned);
        }
        let gpa_ok = self
            .gpa
            .checked_add(self.size)
            .is_some_and(|e| e <= GPA_LIMIT);
        if !gpa_ok || self.hva.checked_add(self.size).is_none() {
            return Err(RegionError::OutOfRange);
        }
        if !self.perm.contains(Perm::R) {
            return Err(RegionError::NoRead);
        }
        Ok(())
    }
}

/// A region's identity: its slot and the generation it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionId {
    slot: u16,
    gen: u32,
}

impl RegionId {
    /// The slot index.
    pub const fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Why a region operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionError {
    /// The new region's guest range overlaps an existing region.
    Overlap {
        /// The rejected guest range `[gpa, end)`.
        gpa: u64,
        /// One past its end.
        end: u64,
        /// The region it overlaps.
        existing: RegionId,
        /// That region's guest range start.
        existing_gpa: u64,
        /// That region's guest range end.
        existing_end: u64,
    },
    /// Zero size.
    Empty,
    /// An address or the size is not 4 KiB aligned.
    Unaligned,
    /// The guest range passes the 48-bit guest-physical limit (or the
    /// table's smaller input size, see
    /// [`GuestMemory::add_region`](super::GuestMemory::add_region)), or the
    /// host range wraps.
    OutOfRange,
    /// The permissions lack read access (required by both formats and by
    /// the host fault path).
    NoRead,
    /// Every region slot is in use.
    Full,
    /// No region with this id (removed, or never existed).
    NotFound,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegionError::Overlap {
                gpa,
                end,
                existing,
                existing_gpa,
                existing_end,
            } => write!(
                f,
                "guest range [{gpa:#x}, {end:#x}) overlaps region {} at [{existing_gpa:#x}, {existing_end:#x})",
                existing.slot
            ),
            RegionError::Empty => f.write_str("region size is zero"),
            RegionError::Unaligned => f.write_str("region address or size is not 4 KiB aligned"),
            RegionError::OutOfRange => {
                f.write_str("guest range exceeds the table's input size or host range wraps")
            }
            RegionError::NoRead => f.write_str("region permissions lack read access"),
            RegionError::Full => f.write_str("no free region slot"),
            RegionError::NotFound => f.write_str("no such region"),
        }
    }
}

/// A region as stored: its spec, its notifier and its id.
#[derive(Debug)]
pub struct Region<'h, N: ?Sized> {
    /// Ranges and permissions.
    pub spec: RegionSpec,
    /// Read side of the interval notifier over `[spec.hva, spec.hva_end())`.
    pub notifier: &'h N,
    /// Identity.
    pub id: RegionId,
}

impl<N: ?Sized> Clone for Region<'_, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<N: ?Sized> Copy for Region<'_, N> {}

/// The region table: up to `R` regions, their locks and generations.
#[derive(Debug)]
pub struct Regions<'h, N: ?Sized, const R: usize> {
    slots: spin::RwLock<[Option<Region<'h, N>>; R]>,
    /// Region locks; each holds the generation of the slot's live region
    /// (0 when the slot is free or its region is being removed).
    locks: [spin::Mutex<u32>; R],
    next_gen: AtomicU32,
}

impl<'h, N: ?Sized, const R: usize> Default for Regions<'h, N, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'h, N: ?Sized, const R: usize> Regions<'h, N, R> {
    /// An empty table.
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const L: spin::Mutex<u32> = spin::Mutex::new(0);
        Regions {
            slots: spin::RwLock::new([None; R]),
            locks: [L; R],
            next_gen: AtomicU32::new(1),
        }
    }

    /// Add a region. Fails with [`RegionError::Overlap`] if its guest range
    /// overlaps an existing region's.
    pub fn insert(&self, spec: RegionSpec, notifier: &'h N) -> Result<RegionId, RegionError> {
        spec.check()?;
        let mut slots = self.slots.write();
        if let Some(e) = slots
            .iter()
            .flatten()
            .find(|e| e.spec.gpa < spec.gpa_end() && spec.gpa < e.spec.gpa_end())
        {
            return Err(RegionError::Overlap {
                gpa: spec.gpa,
                end: spec.gpa_end(),
                existing: e.id,
                existing_gpa: e.spec.gpa,
                existing_end: e.spec.gpa_end(),
            });
        }
        let slot = slots
            .iter()
            .position(Option::is_none)
            .ok_or(RegionError::Full)?;
        let mut gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        if gen == 0 {
            gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        }
        let id = RegionId {
            slot: u16::try_from(slot).map_err(|_| RegionError::Full)?,
            gen,
        };
        *self.locks[slot].lock() = gen;
        slots[slot] = Some(Region { spec, notifier, id });
        Ok(id)
    }

    /// Take a region out of the table. The caller then takes its region
    /// lock with [`Regions::lock_slot`], marks it dead and unmaps it.
    pub fn remove(&self, id: RegionId) -> Result<Region<'h, N>, RegionError> {
        let mut slots = self.slots.write();
        let s = slots.get_mut(id.slot()).ok_or(RegionError::NotFound)?;
        match s {
            Some(r) if r.id == id => Ok(s.take().ok_or(RegionError::NotFound)?),
            _ => Err(RegionError::NotFound),
        }
    }

    /// The region containing `gpa`.
    pub fn find_gpa(&self, gpa: u64) -> Option<Region<'h, N>> {
        self.slots
            .read()
            .iter()
            .flatten()
            .find(|r| r.spec.contains_gpa(gpa))
            .copied()
    }

    /// The region with this id, if it still exists.
    pub fn get(&self, id: RegionId) -> Option<Region<'h, N>> {
        self.slots
            .read()
            .get(id.slot())
            .copied()
            .flatten()
            .filter(|r| r.id == id)
    }

    /// Every region whose host range overlaps `[hva_start, hva_end)`, copied
    /// out (so no table lock is held while the caller works on them).
    pub fn overlapping_hva(&self, hva_start: u64, hva_end: u64) -> [Option<Region<'h, N>>; R] {
        let mut out = [None; R];
        for (o, r) in out.iter_mut().zip(self.slots.read().iter()) {
            *o = r.filter(|r| r.spec.hva < hva_end && hva_start < r.spec.hva_end());
        }
        out
    }

    /// Every region, copied out.
    pub fn all(&self) -> [Option<Region<'h, N>>; R] {
        *self.slots.read()
    }

    /// The region lock of `id`'s slot (its value is the live generation).
    pub fn lock_slot(&self, id: RegionId) -> Option<spin::MutexGuard<'_, u32>> {
        self.locks.get(id.slot()).map(|l| l.lock())
    }

    /// Try to take the region lock of `id`'s slot without spinning.
    pub fn try_lock_slot(&self, id: RegionId) -> Option<Option<spin::MutexGuard<'_, u32>>> {
        self.locks.get(id.slot()).map(|l| l.try_lock())
    }

    /// Whether `guard` (a region lock) belongs to the live region `id`.
    pub fn is_live(id: RegionId, guard: &u32) -> bool {
        *guard == id.gen
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    fn spec(gpa: u64, size: u64) -> RegionSpec {
        RegionSpec {
            gpa,
            size,
            hva: 0x7000_0000_0000 + gpa,
            perm: Perm::R | Perm::W,
        }
    }

    #[test]
    fn overlapping_regions_are_rejected_with_both_ranges() {
        let n = ();
        let t: Regions<'_, (), 4> = Regions::new();
        let a = t.insert(spec(0x10_0000, 0x10_0000), &n).unwrap();
        // Adjacent on both sides is fine.
        t.insert(spec(0x0, 0x10_0000), &n).unwrap();
        t.insert(spec(0x20_0000, 0x1000), &n).unwrap();
        let err = t.insert(spec(0x1f_f000, 0x2000), &n).unwrap_err();
        assert_eq!(
            err,
            RegionError::Overlap {
                gpa: 0x1f_f000,
                end: 0x20_1000,
                existing: a,
                existing_gpa: 0x10_0000,
                existing_end: 0x20_0000,
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("[0x1ff000, 0x201000)") && msg.contains("[0x100000, 0x200000)"),
            "{msg}"
        );
        // Containing an existing region is an overlap too.
        assert!(matches!(
            t.insert(spec(0, 0x40_0000), &n),
            Err(RegionError::Overlap { .. })
        ));
    }

    #[test]
    fn invalid_specs() {
        let n = ();
        let t: Regions<'_, (), 1> = Regions::new();
        assert_eq!(t.insert(spec(0, 0), &n), Err(RegionError::Empty));
        assert_eq!(
            t.insert(spec(0x800, 0x1000), &n),
            Err(RegionError::Unaligned)
        );
        assert_eq!(
            t.insert(spec(GPA_LIMIT - 0x1000, 0x2000), &n),
            Err(RegionError::OutOfRange)
        );
        let wo = RegionSpec {
            perm: Perm::W,
            ..spec(0, 0x1000)
        };
        assert_eq!(t.insert(wo, &n), Err(RegionError::NoRead));
        t.insert(spec(0, 0x1000), &n).unwrap();
        assert_eq!(t.insert(spec(0x1000, 0x1000), &n), Err(RegionError::Full));
    }

    #[test]
    fn stale_ids_do_not_resolve() {
        let n = ();
        let t: Regions<'_, (), 2> = Regions::new();
        let a = t.insert(spec(0, 0x1000), &n).unwrap();
        assert_eq!(t.find_gpa(0x800).unwrap().id, a);
        t.remove(a).unwrap();
        let b = t.insert(spec(0, 0x1000), &n).unwrap();
        assert_eq!(a.slot(), b.slot());
        assert!(t.get(a).is_none() && t.get(b).is_some());
        assert_eq!(t.remove(a).unwrap_err(), RegionError::NotFound);
        let g = t.lock_slot(a).unwrap();
        assert!(!Regions::<(), 2>::is_live(a, &g) && Regions::<(), 2>::is_live(b, &g));
    }
}
