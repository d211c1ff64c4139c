//! The need-fault decision (`hmm_pte_need_fault`, `hmm_range_need_fault`).
//!
//! A caller asks for faults in two ways that combine per entry:
//! `request = (entry & pfn_flags_mask) | default_flags`. If the request has
//! `REQ_FAULT` and the CPU mapping is not `VALID`, a fault is needed; if it
//! also has `REQ_WRITE` and the mapping is not `WRITE`, a write fault is
//! needed.
//!
//! ```
//! use hmm_core::{NeedFault, PfnFlags, Request};
//! let fault_all_write = Request::new(
//!     (PfnFlags::REQ_FAULT | PfnFlags::REQ_WRITE).bits(), 0);
//! let read_only = (PfnFlags::VALID).bits();
//! assert_eq!(fault_all_write.need_fault(0, read_only),
//!            NeedFault::FAULT | NeedFault::WRITE);
//! // Per-page requests: the mask lets each entry speak for itself.
//! let per_page = Request::new(0, u64::MAX);
//! assert_eq!(per_page.need_fault(0, 0), NeedFault::empty());
//! assert_eq!(per_page.need_fault(PfnFlags::REQ_FAULT.bits(), 0), NeedFault::FAULT);
//! ```

use super::pfn::PfnFlags;

hmm_bitflags! {
    /// Result of the need-fault decision (`HMM_NEED_FAULT`,
    /// `HMM_NEED_WRITE_FAULT`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct NeedFault: u8 {
        /// A fault is needed.
        const FAULT = 1;
        /// The fault must be a write fault.
        const WRITE = 2;
    }
}

/// The request half of a range: `default_flags` and `pfn_flags_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// Request bits OR-ed into every entry.
    pub default_flags: u64,
    /// Mask applied to each entry's own input before `default_flags`.
    pub pfn_flags_mask: u64,
}

impl Request {
    /// A request from `default_flags` and `pfn_flags_mask`.
    pub const fn new(default_flags: u64, pfn_flags_mask: u64) -> Self {
        Request {
            default_flags,
            pfn_flags_mask,
        }
    }

    /// Pure snapshot: never fault.
    pub const SNAPSHOT: Request = Request::new(0, 0);

    /// Whether any entry could request a fault at all. When this is false the
    /// per-entry loop is skipped (the kernel's short-cut).
    pub const fn may_fault(&self) -> bool {
        (self.default_flags | self.pfn_flags_mask) & PfnFlags::REQ_FAULT.bits() != 0
    }

    /// Need for one entry whose input word is `entry`, given the CPU flags
    /// (`VALID`, `WRITE`) of its current mapping.
    pub const fn need_fault(&self, entry: u64, cpu_flags: u64) -> NeedFault {
        let req = (entry & self.pfn_flags_mask) | self.default_flags;
        if req & PfnFlags::REQ_FAULT.bits() == 0 {
            return NeedFault::empty();
        }
        if req & PfnFlags::REQ_WRITE.bits() != 0 && cpu_flags & PfnFlags::WRITE.bits() == 0 {
            return NeedFault::FAULT.union(NeedFault::WRITE);
        }
        if cpu_flags & PfnFlags::VALID.bits() == 0 {
            return NeedFault::FAULT;
        }
        NeedFault::empty()
    }

    /// Need over several entries sharing one CPU mapping: the union of the
    /// per-entry needs, stopping early once both bits are set.
    pub fn need_fault_range(&self, entries: &[u64], cpu_flags: u64) -> NeedFault {
        if !self.may_fault() {
            return NeedFault::empty();
        }
        let all = NeedFault::FAULT | NeedFault::WRITE;
        let mut need = NeedFault::empty();
        for &e in entries {
            need |= self.need_fault(e, cpu_flags);
            if need == all {
                break;
            }
        }
        need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: u64 = PfnFlags::VALID.bits();
    const W: u64 = PfnFlags::WRITE.bits();

    /// The notes' rules written as a table and checked exhaustively over
    /// every combination of entry bits, default flags, mask bits and CPU flags.
    #[test]
    fn need_fault_exhaustive() {
        let bits = [0, V, W, V | W];
        let masks = [0, V, W, V | W, u64::MAX];
        for &entry in &bits {
            for &default in &bits {
                for &mask in &masks {
                    for &cpu in &bits {
                        let r = Request::new(default, mask);
                        let req = (entry & mask) | default;
                        let expect = if req & V == 0 {
                            NeedFault::empty()
                        } else if req & W != 0 && cpu & W == 0 {
                            NeedFault::FAULT | NeedFault::WRITE
                        } else if cpu & V == 0 {
                            NeedFault::FAULT
                        } else {
                            NeedFault::empty()
                        };
                        assert_eq!(
                            r.need_fault(entry, cpu),
                            expect,
                            "entry {entry:#x} default {default:#x} mask {mask:#x} cpu {cpu:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn may_fault_when_either_half_asks() {
        for (default, mask, want) in [
            (0, 0, false),
            (V, 0, true),
            (0, V, true),
            (V, V, true),
            (V | W, u64::MAX, true),
            (W, W, false),
        ] {
            let r = Request::new(default, mask);
            assert_eq!(r.may_fault(), want, "default {default:#x} mask {mask:#x}");
            // The range need agrees with the per-entry need.
            let need = r.need_fault_range(&[V], 0);
            assert_eq!(
                need.is_empty(),
                !want,
                "default {default:#x} mask {mask:#x}"
            );
        }
    }

    #[test]
    fn write_request_alone_is_ignored() {
        // REQ_WRITE without REQ_FAULT requests nothing.
        assert_eq!(Request::new(W, 0).need_fault(0, 0), NeedFault::empty());
    }

    #[test]
    fn range_need_is_union_and_shortcut_holds() {
        let per_page = Request::new(0, u64::MAX);
        let entries = [0, V, 0, V | W];
        assert_eq!(
            per_page.need_fault_range(&entries, V),
            NeedFault::FAULT | NeedFault::WRITE
        );
        assert_eq!(
            per_page.need_fault_range(&entries[..2], V),
            NeedFault::empty()
        );
        assert_eq!(
            per_page.need_fault_range(&entries[..2], 0),
            NeedFault::FAULT
        );
        assert_eq!(per_page.need_fault_range(&[], 0), NeedFault::empty());
        // Mask without REQ_FAULT: entries cannot ask, even if they carry bits.
        let masked = Request::new(0, W);
        assert!(!masked.may_fault());
        assert_eq!(masked.need_fault_range(&[V | W; 4], 0), NeedFault::empty());
        // Default write request against a read-only mapping.
        let all_write = Request::new(V | W, 0);
        assert_eq!(
            all_write.need_fault_range(&[0; 3], V),
            NeedFault::FAULT | NeedFault::WRITE
        );
        assert_eq!(
            Request::SNAPSHOT.need_fault_range(&[V | W; 3], 0),
            NeedFault::empty()
        );
    }
}
