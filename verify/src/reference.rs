//! The reference model of the walk: Linux's `hmm_range_fault` output rules,
//! page by page, written from the notes and nothing else.
//!
//! Every page gets a verdict on its own: its output word, what it requests
//! of its CPU mapping, and what happens if a fault is needed. A page-table
//! unit (one leaf, one empty slot, one unmirrorable VMA chunk or one gap,
//! clipped to the walk window) needs a fault if any of its pages does, and
//! the walk stops at the first unit that does. Nothing here calls into
//! `hmm_core` logic: the bit values, the need rule and the per-leaf table are
//! restated (notes section 1.1 and 1.3 to 1.5, and the table in
//! `hmm-core/src/walk.rs`, including its documented deviation: a hugetlb
//! entry's need is computed over all its pages, not only the first).

use hmm_core::{Error, Leaf, VmFlags, WalkStop, PAGE_SIZE};

use crate::space::{leaf_from, Space, VmaDesc};

/// `HMM_PFN_VALID` (also `HMM_PFN_REQ_FAULT`).
pub const VALID: u64 = 1 << 63;
/// `HMM_PFN_WRITE` (also `HMM_PFN_REQ_WRITE`).
pub const WRITE: u64 = 1 << 62;
/// `HMM_PFN_ERROR`.
pub const ERROR: u64 = 1 << 61;
/// The sticky bits: `DMA_MAPPED`, `P2PDMA`, `P2PDMA_BUS`.
pub const STICKY: u64 = 0b111 << 58;
/// The order field shift.
pub const ORDER_SHIFT: u32 = 53;
/// PFN bits (0..=52).
pub const PFN_BITS: u64 = (1 << 53) - 1;

/// A request: `default_flags`, `pfn_flags_mask`, device-private owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefRequest {
    /// OR-ed into every entry's request.
    pub default_flags: u64,
    /// Mask applied to each entry's input.
    pub mask: u64,
    /// Owner of device-private memory reported without a fault.
    pub owner: Option<u64>,
}

/// What a page asks of its mapping (`hmm_pte_need_fault`, notes 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Need {
    /// A fault is needed.
    pub fault: bool,
    /// A write fault is needed.
    pub write: bool,
}

impl Need {
    fn or(self, o: Need) -> Need {
        Need {
            fault: self.fault || o.fault,
            write: self.write || o.write,
        }
    }
}

/// `hmm_pte_need_fault` restated: `req = (input & mask) | default`; nothing
/// without `REQ_FAULT`; a write fault if `REQ_WRITE` and the mapping is not
/// writable; a read fault if the mapping is not valid.
pub fn need(req: &RefRequest, input: u64, cpu: u64) -> Need {
    let r = (input & req.mask) | req.default_flags;
    if r & VALID == 0 {
        return Need::default();
    }
    if r & WRITE != 0 && cpu & WRITE == 0 {
        return Need {
            fault: true,
            write: true,
        };
    }
    Need {
        fault: cpu & VALID == 0,
        write: false,
    }
}

/// What happens to a unit that needs a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnNeed {
    /// Fault it (after the `VM_WRITE` check).
    Fault,
    /// `-EFAULT` (no VMA, unmirrorable, hwpoison, bad entry).
    Efault,
    /// Wait for the migration and re-walk.
    Wait,
}

/// One page's verdict.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    /// The output word (before the sticky bits are merged in).
    out: u64,
    /// The page's need against its mapping's CPU flags.
    need: Need,
    /// What a needed fault turns into.
    on_need: OnNeed,
    /// Special (non-zero-page) present mapping: a request for even a read
    /// fault is `-EFAULT` once no fault is needed against the mapping.
    special_check: Need,
}

fn cpu_flags(write: bool, order: u8) -> u64 {
    VALID | if write { WRITE } else { 0 } | (u64::from(order & 0x1f) << ORDER_SHIFT)
}

/// The verdict for page `addr` whose (per-page) leaf is `leaf`, in a
/// mirrorable VMA `vma`.
fn leaf_verdict(req: &RefRequest, vma: &VmaDesc, leaf: Leaf, input: u64) -> Verdict {
    let none = |out: u64| Verdict {
        out,
        need: need(req, input, 0),
        on_need: OnNeed::Fault,
        special_check: Need::default(),
    };
    match leaf {
        // Empty or marker, swap, device-exclusive: 0, faultable.
        Leaf::Hole | Leaf::EmptyPtes | Leaf::Swap | Leaf::DeviceExclusive => none(0),
        Leaf::Present(p) => {
            let order = if vma.flags.contains(VmFlags::HUGETLB) {
                vma.hugetlb_order
            } else {
                p.order
            };
            // protnone: no flags at all (not even the order).
            let cpu = if p.protnone {
                0
            } else {
                cpu_flags(p.write, order)
            };
            let special = p.special && !p.zero;
            Verdict {
                out: if special {
                    ERROR
                } else {
                    (p.pfn & PFN_BITS) | cpu
                },
                need: need(req, input, cpu),
                on_need: OnNeed::Fault,
                special_check: if special {
                    need(req, input, 0)
                } else {
                    Need::default()
                },
            }
        }
        Leaf::DevicePrivate {
            owner,
            pfn,
            write,
            order,
        } => {
            if req.owner == Some(owner) {
                // Ours: reported as is, never faulted.
                Verdict {
                    out: (pfn & PFN_BITS) | cpu_flags(write, order),
                    need: Need::default(),
                    on_need: OnNeed::Fault,
                    special_check: Need::default(),
                }
            } else {
                // Someone else's: fault migrates it back; a huge one is ERROR.
                none(if order > 0 { ERROR } else { 0 })
            }
        }
        Leaf::Migration => Verdict {
            on_need: OnNeed::Wait,
            ..none(0)
        },
        Leaf::HwPoison => Verdict {
            on_need: OnNeed::Efault,
            ..none(0)
        },
        Leaf::Bad => Verdict {
            on_need: OnNeed::Efault,
            ..none(ERROR)
        },
    }
}

/// The reference walk of `[from, end)` over `space`: fills `pfns` (one
/// word per page of `[start, end)`) and returns where it stopped.
///
/// Invalid ranges (unaligned, empty, wrong array length, cursor outside) are
/// `-EINVAL` with nothing written.
pub fn walk(
    space: &Space,
    req: &RefRequest,
    start: u64,
    end: u64,
    from: u64,
    pfns: &mut [u64],
) -> Result<WalkStop, Error> {
    let pm = PAGE_SIZE - 1;
    if start & pm != 0 || end & pm != 0 || start >= end || from & pm != 0 {
        return Err(Error::Inval);
    }
    if ((end - start) / PAGE_SIZE) as usize != pfns.len() || from < start || from > end {
        return Err(Error::Inval);
    }
    let idx = |a: u64| ((a - start) / PAGE_SIZE) as usize;
    let mut a = from;
    while a < end {
        // The unit holding `a` and each page's verdict.
        let (ue, verdicts): (u64, Vec<Verdict>) = match space.find_vma(a) {
            // A gap (or past the last VMA): ERROR, -EFAULT if requested.
            None => gap(req, a, end, pfns, idx),
            Some(v) if v.start > a => {
                let ue = v.start.min(end);
                let vs = (a..ue)
                    .step_by(PAGE_SIZE as usize)
                    .map(|p| unmirrorable(req, pfns[idx(p)]))
                    .collect();
                (ue, vs)
            }
            Some(v) if !mirrorable(v) => {
                let ue = v.end.min(end);
                let vs = (a..ue)
                    .step_by(PAGE_SIZE as usize)
                    .map(|p| unmirrorable(req, pfns[idx(p)]))
                    .collect();
                (ue, vs)
            }
            Some(v) => {
                let (us, ue, leaf) = space.unit_at(v, a);
                let ue = ue.min(v.end).min(end);
                let vs = (a..ue)
                    .step_by(PAGE_SIZE as usize)
                    .map(|p| leaf_verdict(req, v, leaf_from(leaf, us, p), pfns[idx(p)]))
                    .collect();
                (ue, vs)
            }
        };
        let unit_need = verdicts.iter().fold(Need::default(), |n, v| n.or(v.need));
        let on_need = verdicts[0].on_need;
        if unit_need.fault {
            return match on_need {
                OnNeed::Efault => Err(Error::Fault),
                OnNeed::Wait => Ok(WalkStop::WaitMigration { addr: a }),
                OnNeed::Fault => {
                    let vma_write = space
                        .vma_at(a)
                        .is_some_and(|v| v.flags.contains(VmFlags::WRITE));
                    if unit_need.write && !vma_write {
                        Err(Error::Perm)
                    } else {
                        Ok(WalkStop::NeedFault {
                            addr: a,
                            end: ue,
                            write: unit_need.write,
                        })
                    }
                }
            };
        }
        if verdicts.iter().any(|v| v.special_check.fault) {
            return Err(Error::Fault);
        }
        for (i, v) in verdicts.iter().enumerate() {
            let e = &mut pfns[idx(a) + i];
            *e = (*e & STICKY) | (v.out & !STICKY);
        }
        a = ue;
    }
    Ok(WalkStop::Done)
}

/// The output page `addr` gets when a walk fills it (whatever a walk would
/// do about faults), merged with the sticky bits of `input`.
pub fn page_output(space: &Space, req: &RefRequest, addr: u64, input: u64) -> u64 {
    let out = match space.vma_at(addr) {
        Some(v) if mirrorable(v) => {
            let (us, _, leaf) = space.unit_at(v, addr);
            leaf_verdict(req, v, leaf_from(leaf, us, addr), input).out
        }
        _ => ERROR,
    };
    (input & STICKY) | (out & !STICKY)
}

/// `hmm_vma_walk_test`: not `VM_IO`, not `VM_PFNMAP`, and `VM_READ`.
pub fn mirrorable(v: &VmaDesc) -> bool {
    !v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) && v.flags.contains(VmFlags::READ)
}

fn gap(
    req: &RefRequest,
    a: u64,
    ue: u64,
    pfns: &[u64],
    idx: impl Fn(u64) -> usize,
) -> (u64, Vec<Verdict>) {
    let vs = (a..ue)
        .step_by(PAGE_SIZE as usize)
        .map(|p| unmirrorable(req, pfns[idx(p)]))
        .collect();
    (ue, vs)
}

fn unmirrorable(req: &RefRequest, input: u64) -> Verdict {
    Verdict {
        out: ERROR,
        need: need(req, input, 0),
        on_need: OnNeed::Efault,
        special_check: Need::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_rule_table() {
        let r = |d, m| RefRequest {
            default_flags: d,
            mask: m,
            owner: None,
        };
        let yes = |w| Need {
            fault: true,
            write: w,
        };
        assert_eq!(need(&r(VALID, 0), 0, 0), yes(false));
        assert_eq!(need(&r(VALID | WRITE, 0), 0, VALID), yes(true));
        assert_eq!(
            need(&r(VALID | WRITE, 0), 0, VALID | WRITE),
            Need::default()
        );
        assert_eq!(need(&r(WRITE, 0), 0, 0), Need::default());
        assert_eq!(need(&r(0, u64::MAX), VALID, 0), yes(false));
        assert_eq!(need(&r(0, WRITE), VALID | WRITE, 0), Need::default());
    }
}
