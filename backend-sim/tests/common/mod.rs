//! Shared fixtures of the backend-sim scenario tests: the selftests'
//! `hmm` / `hmm2` fixtures and a userfaultfd handler thread.

#![allow(dead_code)]

use std::sync::Arc;
use std::thread::JoinHandle;

use backend_sim::dmirror::{Cmd, Device, Mirror};
use backend_sim::mm::Mm;
use backend_sim::task::Task;
use backend_sim::userfaultfd::{UffdCtx, UffdMsg};
use backend_sim::{Errno, Machine};
use hmm_core::{VmFlags, PAGE_SIZE};

/// `HMM_BUFFER_SIZE`: 4 MiB.
pub const HMM_BUFFER_SIZE: u64 = 4 << 20;
/// Pages in `HMM_BUFFER_SIZE`.
pub const NPAGES: u64 = HMM_BUFFER_SIZE / PAGE_SIZE;
/// 2 MiB.
pub const TWOMEG: u64 = 2 << 20;

pub const RW: VmFlags = VmFlags::READ.union(VmFlags::WRITE);
pub const RO: VmFlags = VmFlags::READ;

/// The `hmm` fixture: one process with one open mirror.
pub struct Hmm {
    pub machine: Arc<Machine>,
    pub mm: Arc<Mm>,
    pub task: Task,
    pub dev: Device,
    pub fd: Mirror,
}

impl Hmm {
    pub fn new() -> Hmm {
        let machine = Machine::new();
        let mm = Mm::new(&machine);
        let dev = Device::new(&machine);
        let fd = dev.open(&mm);
        Hmm {
            machine,
            mm,
            task: Task::new(),
            dev,
            fd,
        }
    }

    /// Write `ptr[i] = f(i)` as `int`s over `n` ints at `addr`.
    pub fn fill(&self, addr: u64, n: usize, f: impl Fn(i32) -> i32) {
        let v: Vec<i32> = (0..n as i32).map(f).collect();
        self.mm.write_i32s(&self.task, addr, &v).unwrap();
    }

    /// Read `n` ints at `addr`.
    pub fn ints(&self, addr: u64, n: usize) -> Vec<i32> {
        self.mm.read_i32s(&self.task, addr, n).unwrap()
    }
}

/// The `hmm2` fixture: one process, two devices, one mirror on each.
pub struct Hmm2 {
    pub h: Hmm,
    pub dev1: Device,
    pub fd1: Mirror,
}

impl Hmm2 {
    pub fn new() -> Hmm2 {
        let h = Hmm::new();
        let dev1 = Device::new(&h.machine);
        let fd1 = dev1.open(&h.mm);
        Hmm2 { h, dev1, fd1 }
    }
}

/// A SNAPSHOT command over `npages` at `addr` with one byte of buffer per
/// page, as the selftests allocate it.
pub fn snap_cmd(addr: u64, npages: u64) -> Cmd {
    Cmd::with_buf(addr, npages, vec![0; npages as usize])
}

/// `i` for every int of the buffer, as the selftests check.
pub fn iota(n: usize, f: impl Fn(i32) -> i32) -> Vec<i32> {
    (0..n as i32).map(f).collect()
}

/// A userfaultfd handler thread: answers every page fault with `COPY` of
/// `page(addr)` (or of `unit` bytes at once, aligned down), waking the
/// faulter; already-resolved faults get a `WAKE`. Events are read and
/// recorded. Ends when the context is closed.
pub struct Handler {
    pub thread: JoinHandle<Vec<UffdMsg>>,
}

impl Handler {
    pub fn spawn(
        uffd: &Arc<UffdCtx>,
        unit: u64,
        page: impl Fn(u64) -> Vec<u8> + Send + 'static,
    ) -> Handler {
        let uffd = uffd.clone();
        let thread = std::thread::spawn(move || {
            let task = Task::new();
            let mut seen = Vec::new();
            while let Some(msg) = uffd.read(&task) {
                seen.push(msg);
                if let UffdMsg::Pagefault { addr, .. } = msg {
                    let base = addr & !(unit - 1);
                    let mut src = Vec::with_capacity(unit as usize);
                    let mut a = base;
                    while a < base + unit {
                        src.extend(page(a));
                        a += PAGE_SIZE;
                    }
                    match uffd.copy_fill(&task, base, &src) {
                        Ok(_) | Err(Errno::ENOENT) | Err(Errno::EAGAIN) => {}
                        Err(e) => panic!("UFFDIO_COPY failed: {e}"),
                    }
                }
            }
            seen
        });
        Handler { thread }
    }

    /// Close the userfaultfd and collect what the handler saw.
    pub fn stop(self, uffd: &UffdCtx) -> Vec<UffdMsg> {
        uffd.close();
        self.thread.join().unwrap()
    }
}

/// A page of `byte`.
pub fn page_of(byte: u8) -> Vec<u8> {
    vec![byte; PAGE_SIZE as usize]
}

/// A page whose 64-bit words are `addr ^ seed`-derived: every page distinct.
pub fn pattern_page(addr: u64, seed: u64) -> Vec<u8> {
    (0..PAGE_SIZE / 8)
        .flat_map(|i| (addr.wrapping_add(i * 8) ^ seed).to_le_bytes())
        .collect()
}
