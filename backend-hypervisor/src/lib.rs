//! # backend-hypervisor: guest memory on hmm-core
//!
//! The memory manager a bare-metal hypervisor links in. It maps guest
//! physical memory on demand from a host address space through hmm-core,
//! the way mshv does with movable regions, into second-stage tables in the
//! real hardware formats, and keeps working when the host memory is
//! userfaultfd-backed (post-copy live migration, snapshot restore).
//!
//! * [`descriptor`], [`ept`], [`stage2`]: the format trait and Intel EPT /
//!   Arm VMSAv8-64 stage-2 descriptors.
//! * [`pagetable`]: one engine for both formats (4 KiB, 2 MiB and 1 GiB
//!   leaves, block split, break-before-make, flushed permission upgrades),
//!   laid out by a [`TableConfig`] ([`layout`]: input size, start level,
//!   concatenated root tables, what the hardware supports), over a
//!   table-page allocator ([`alloc`]) and a caller-implemented TLB and
//!   barrier hook ([`tlb`]).
//! * [`vtcr`]: the Arm VTCR_EL2 and stage-2 layout for a CPU's PA range;
//!   [`vmx`]: Intel EPT capabilities (`IA32_VMX_EPT_VPID_CAP`), the EPTP
//!   and the `INVEPT` flush.
//! * [`region`]: guest regions (GPA range -> host VA range, permissions).
//! * [`guest`]: [`GuestMemory`], the manager, one concern per file:
//!   [`guest::fault`], the guest-fault path (2 MiB windows through
//!   hmm-core's owning entry point, notifier validation under the region
//!   lock, largest-leaf mapping); [`guest::async_pf`], no-wait faults
//!   deferred to a worker; [`guest::invalidate`], the host notifier
//!   callback; and the counters ([`GuestStats`]).
//! * The host address space is hmm-core's [`Host`](hmm_core::Host) bundle
//!   (an [`Env`](hmm_core::Env): mmap lock, fault handler, signals, clock);
//!   each region brings its own interval notifier, which its window faults
//!   carry in their [`Range`](hmm_core::Range).
//! * [`audit`]: the coherence check of second-stage tables against the host.
//!
//! `#![no_std]` and allocation-free: tables come from a [`TableAlloc`]
//! (a [`StaticPool`] in firmware), regions and deferred faults live in
//! fixed arrays, locks are `spin`.
//!
//! ## Example
//!
//! ```
//! use backend_hypervisor::*;
//! use hmm_core::doubles::{FaultMode, TestMm};
//! use hmm_core::{Env, VmFlags};
//!
//! struct NoTlb;
//! impl TlbFlush for NoTlb {
//!     fn flush_range(&self, _: u64, _: u64) {}
//! }
//!
//! // A host address space: 2 MiB of anonymous memory at 0x4000_0000.
//! let mm = TestMm::new();
//! mm.add_vma(0x4000_0000, 0x4020_0000, VmFlags::READ | VmFlags::WRITE, 0, FaultMode::Populate);
//!
//! let pool: Box<StaticPool<8>> = Box::default();
//! let vm: GuestMemory<'_, Ept, _, _, _, TestMm> =
//!     GuestMemory::new(Env::new(&mm, &mm), &*pool, NoTlb, Config::default()).unwrap();
//! let spec = RegionSpec { gpa: 0x10_0000, size: 0x1000, hva: 0x4000_0000, perm: Perm::R | Perm::W };
//! vm.add_region(spec, &mm).unwrap();
//!
//! // The guest writes GPA 0x10_0000: the host page is faulted and mapped.
//! let out = vm.handle_fault(0x10_0000, Perm::W);
//! assert_eq!(out, GuestFault::Mapped { size: PageSize::Size4K, leaves: 1 });
//! let m = vm.translate(0x10_0000).unwrap();
//! assert_eq!(m.attrs.perm, Perm::R | Perm::W);
//!
//! // Outside any region: an error for the vCPU.
//! assert_eq!(vm.handle_fault(0x20_0000, Perm::R), GuestFault::Error(FaultError::NoRegion));
//! ```

#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    not(test),
    deny(clippy::panic, clippy::unwrap_used, clippy::expect_used)
)]

pub mod alloc;
pub mod audit;
pub mod descriptor;
pub mod ept;
pub mod guest;
pub mod layout;
pub mod pagetable;
pub mod region;
pub mod stage2;
pub mod tlb;
pub mod vmx;
pub mod vtcr;

pub use alloc::{SlicePool, StaticPool, TableAlloc, TablePage};
pub use audit::{Disagreement, Mismatch};
pub use descriptor::{Attrs, Descriptor, Format, MemType, PageSize, Perm};
pub use ept::Ept;
pub use guest::async_pf::{AsyncStatus, AsyncToken, Completion};
pub use guest::fault::{Access, FaultError, GuestFault, WINDOW};
pub use guest::{Config, GuestMemory, GuestStats};
pub use layout::{LayoutError, LeafSizes, TableConfig};
pub use pagetable::{Installed, MapError, Mapping, PageTable, UnmapStats};
pub use region::{RegionError, RegionId, RegionSpec};
pub use stage2::Stage2;
pub use tlb::TlbFlush;
pub use vmx::{EptCaps, Invept};
pub use vtcr::Stage2Vtcr;

#[cfg(test)]
mod testutil;
