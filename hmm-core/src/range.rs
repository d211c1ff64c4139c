//! The range to mirror (`struct hmm_range`): addresses, the PFN array, the
//! request, the interval notifier and its sequence.

use super::error::Error;
use super::need::Request;
use super::pfn::{PAGE_SHIFT, PAGE_SIZE};

/// A range fault request and its output array.
///
/// `pfns` holds one word per 4 KiB page of `[start, end)`: request bits on
/// input, PFN and flags on output (see [`HmmPfn`](super::pfn::HmmPfn)).
///
/// As Linux's `hmm_range.notifier`, the range carries the interval notifier
/// subscribed over it: `N` is its type. [`Range::new`] makes a range with
/// none yet (`N = ()`), which [`walk`](super::walk::walk) accepts but the
/// entry points do not, since `()` is no
/// [`IntervalNotifier`](super::notifier::IntervalNotifier):
/// [`Range::with_notifier`] attaches one.
#[derive(Debug)]
pub struct Range<'p, N: ?Sized = ()> {
    /// First address, page aligned.
    pub start: u64,
    /// One past the last address, page aligned, above `start`.
    pub end: u64,
    /// One entry per page.
    pub pfns: &'p mut [u64],
    /// `default_flags` and `pfn_flags_mask`.
    pub request: Request,
    /// Device-private pages whose owner equals this are reported, not faulted.
    pub dev_private_owner: Option<u64>,
    /// The notifier sequence this range's output is valid against. The
    /// owning entry point sets it; with the locked ones the caller sets it
    /// from `read_begin` before taking the lock.
    pub notifier_seq: u64,
    /// The interval notifier covering `[start, end)` (`hmm_range.notifier`).
    pub notifier: &'p N,
}

impl<'p> Range<'p> {
    /// A range over `[start, end)` with output array `pfns`, a snapshot
    /// request (no faults), no device-private owner, no notifier yet and
    /// sequence 0.
    pub fn new(start: u64, end: u64, pfns: &'p mut [u64]) -> Self {
        Range {
            start,
            end,
            pfns,
            request: Request::SNAPSHOT,
            dev_private_owner: None,
            notifier_seq: 0,
            notifier: &(),
        }
    }
}

impl<'p, N: ?Sized> Range<'p, N> {
    /// Attach the interval notifier subscribed over the range (what the
    /// entry points read the sequence from).
    pub fn with_notifier<N2: ?Sized>(self, notifier: &'p N2) -> Range<'p, N2> {
        Range {
            start: self.start,
            end: self.end,
            pfns: self.pfns,
            request: self.request,
            dev_private_owner: self.dev_private_owner,
            notifier_seq: self.notifier_seq,
            notifier,
        }
    }

    /// Set the request.
    pub fn with_request(mut self, request: Request) -> Self {
        self.request = request;
        self
    }

    /// Set `default_flags` (and keep the mask).
    pub fn with_default_flags(mut self, default_flags: u64) -> Self {
        self.request.default_flags = default_flags;
        self
    }

    /// Set the device-private owner.
    pub fn with_owner(mut self, owner: u64) -> Self {
        self.dev_private_owner = Some(owner);
        self
    }

    /// Number of pages in `[start, end)` (0 if the range is inverted).
    pub const fn npages(&self) -> u64 {
        if self.end > self.start {
            (self.end - self.start) >> PAGE_SHIFT
        } else {
            0
        }
    }

    /// Check the range: page aligned, `start < end <= limit`, and exactly one
    /// entry per page. Anything else is [`Error::Inval`].
    pub fn validate(&self, limit: u64) -> Result<(), Error> {
        let mask = PAGE_SIZE - 1;
        if self.start & mask != 0 || self.end & mask != 0 || self.start >= self.end {
            return Err(Error::Inval);
        }
        if self.end > limit {
            return Err(Error::Inval);
        }
        let n = (self.end - self.start) >> PAGE_SHIFT;
        if u64::try_from(self.pfns.len()) != Ok(n) {
            return Err(Error::Inval);
        }
        Ok(())
    }

    /// Index into `pfns` of the page at `addr` (no bounds check).
    pub(crate) const fn index(&self, addr: u64) -> usize {
        (addr.wrapping_sub(self.start) >> PAGE_SHIFT) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ranges_are_einval() {
        let mut buf = [0u64; 8];
        let lim = 1 << 47;
        let cases: [(u64, u64, usize); 11] = [
            (0x1000, 0x5000, 3),             // array too short
            (0x1000, 0x5000, 4),             // ok (checked below)
            (0x1001, 0x5001, 4),             // unaligned
            (0x1001, 0x5000, 3),             // start unaligned, length matching
            (0x1000, 0x4fff, 3),             // end unaligned, length matching
            (0x1000, 0x5000, 5),             // array too long
            (0x5000, 0x1000, 4),             // inverted
            (0x5000, 0x5000, 0),             // empty
            (lim - 0x1000, lim + 0x3000, 4), // beyond the limit
            (u64::MAX - 0xfff, 0, 0),        // wraps
            (lim - 0x4000, lim, 4),          // ends exactly at the limit: ok
        ];
        for (i, &(s, e, n)) in cases.iter().enumerate() {
            let r = Range::new(s, e, &mut buf[..n]);
            let got = r.validate(lim);
            if i == 1 || i == 10 {
                assert_eq!(got, Ok(()), "case {i}");
            } else {
                assert_eq!(got, Err(Error::Inval), "case {i}");
            }
        }
    }

    #[test]
    fn npages_and_index() {
        let mut buf = [0u64; 3];
        let r = Range::new(0x10000, 0x13000, &mut buf);
        assert_eq!(r.npages(), 3);
        assert_eq!(r.index(0x12000), 2);
        let mut none: [u64; 0] = [];
        assert_eq!(Range::new(5, 1, &mut none).npages(), 0);
    }
}
