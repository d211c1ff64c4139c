//! Benchmarks support: the baselines our walker is measured against, on
//! real memory of this machine.
//!
//! * [`baseline::Region`]: an anonymous mapping populated with 4 KiB pages or
//!   THP;
//! * [`baseline::pagemap_walk`]: the kernel's own page walker read through
//!   `/proc/self/pagemap` (8 bytes per page, large `pread`s);
//! * [`baseline::pagemap_scan`]: the `PAGEMAP_SCAN` ioctl;
//! * [`baseline::mincore_walk`]: `mincore()`;
//! * [`baseline::bandwidth_floor`]: read 8 bytes and write 8 bytes per page,
//!   the least any walker that reads a PTE and writes a PFN word can do.

pub mod baseline;
