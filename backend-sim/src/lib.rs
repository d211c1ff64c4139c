//! # backend-sim: a concurrent simulated Linux mm for hmm-core
//!
//! The proving ground of hmm-rs: a faithful, thread-safe model of the parts
//! of Linux memory management that HMM touches, driven by real threads and
//! real locks.
//!
//! * [`frame`]: physical frames with real 4 KiB contents, refcounts,
//!   compound pages and the zero page;
//! * [`pagetable`]: 4-level, 512-entry page tables with PMD/PUD leaves and
//!   the present / swap / migration / device-private / device-exclusive /
//!   hwpoison / marker encodings;
//! * [`vma`]: VMAs, files with a page cache;
//! * [`machine`]: what processes share: physical memory, swap, the
//!   device-private memory owners, fault injection;
//! * [`mm`]: the address space and its reader-writer mmap lock
//!   (implementing [`hmm_core::MmapLock`]; its read guard is the
//!   [`hmm_core::MmView`]);
//! * [`fault`]: `handle_mm_fault` (implementing [`hmm_core::FaultHandler`]);
//! * [`ops`]: CPU-side operations, one file per concern (touch, mmap,
//!   munmap, mprotect, mremap, madvise, fork, swap, migration, device
//!   memory, GUP, hwpoison, THP split and collapse, OOM reaping);
//! * [`notifier`]: MMU interval notifiers with the kernel's sequence rules;
//! * [`userfaultfd`]: MISSING / WP / MINOR registration, COPY / ZEROPAGE
//!   / CONTINUE / POISON / MOVE / WAKE / WRITEPROTECT, REMOVE / UNMAP /
//!   FORK / REMAP events, lock-dropping waits;
//! * [`task`]: tasks, fatal signals and killable sleeps;
//! * [`inject`]: fault injection with deterministic seeds;
//! * [`storm`]: invalidation storms from CPU threads;
//! * [`dmirror`]: a device mirror like `lib/test_hmm.c`;
//! * [`demo`]: the `hmm-sim` main job.
//!
//! ```
//! use backend_sim::{dmirror::{Cmd, Device}, mm::Mm, task::Task, Machine};
//! use hmm_core::VmFlags;
//!
//! let machine = Machine::new();
//! let mm = Mm::new(&machine);
//! let task = Task::new();
//! let addr = mm.mmap_anon(None, 4 * 4096, VmFlags::READ | VmFlags::WRITE).unwrap();
//! mm.write_bytes(&task, addr, &[7u8; 4 * 4096]).unwrap();
//!
//! let dev = Device::new(&machine);
//! let mirror = dev.open(&mm);
//! let mut cmd = Cmd::new(addr, 4);
//! mirror.read(&task, &mut cmd).unwrap();
//! assert_eq!((cmd.cpages, cmd.faults), (4, 1));
//! assert!(cmd.buf.iter().all(|&b| b == 7));
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod demo;
pub mod dmirror;
pub mod fault;
pub mod frame;
pub mod inject;
pub mod machine;
pub mod mm;
pub mod notifier;
pub mod ops;
pub mod pagetable;
pub mod storm;
pub mod task;
pub mod userfaultfd;
pub mod vma;

pub use machine::Machine;

/// A Linux errno, as returned by a simulated system call or ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such entry.
    pub const ENOENT: Errno = Errno(2);
    /// No such process (the mm behind a userfaultfd is gone).
    pub const ESRCH: Errno = Errno(3);
    /// Interrupted.
    pub const EINTR: Errno = Errno(4);
    /// Try again.
    pub const EAGAIN: Errno = Errno(11);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Bad address.
    pub const EFAULT: Errno = Errno(14);
    /// Busy.
    pub const EBUSY: Errno = Errno(16);
    /// Exists.
    pub const EEXIST: Errno = Errno(17);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// Value too large (an interval that wraps past the top of the address
    /// space, from `mmu_interval_notifier_insert`).
    pub const EOVERFLOW: Errno = Errno(75);
    /// Hardware poison.
    pub const EHWPOISON: Errno = Errno(133);

    /// The negative value a kernel function returns.
    pub fn to_errno(self) -> i32 {
        -self.0
    }
}

impl From<hmm_core::Error> for Errno {
    fn from(e: hmm_core::Error) -> Self {
        Errno(-e.to_errno())
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EINTR => "EINTR",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::EOVERFLOW => "EOVERFLOW",
            Errno::EHWPOISON => "EHWPOISON",
            _ => "E?",
        };
        write!(f, "{name} ({})", self.to_errno())
    }
}

impl std::error::Error for Errno {}
