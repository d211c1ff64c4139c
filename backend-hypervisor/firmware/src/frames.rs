//! Host physical memory: the frame pool behind the host address space, and
//! the only code that touches frame contents.
//!
//! ```text
//! 0x4000_0000  RAM start (firmware image at 0x4008_0000)
//! 0x4800_0000  4 KiB and 2 MiB frames: 448 chunks of 2 MiB
//! 0x8000_0000  one 1 GiB frame (hugetlb 1 GiB page)
//! 0xc000_0000  RAM end with `-m 2G`
//! ```
//!
//! A 2 MiB chunk is either free, one 2 MiB frame, or a slab of 512 4 KiB
//! frames. Frames are identity mapped by the EL2 MMU, so a frame's physical
//! address is also where the firmware reads and writes its contents.
//!
//! QEMU hands RAM over zeroed, so the 1 GiB frame is not cleared again the
//! first time it is allocated (the analogue of a pre-zeroed huge page pool);
//! every other allocation is zeroed.

use core::sync::atomic::{AtomicU64, Ordering};

/// Base of the 4 KiB / 2 MiB frame area.
pub const SMALL_BASE: u64 = 0x4800_0000;
/// Number of 2 MiB chunks in it.
pub const CHUNKS: usize = 448;
/// The 1 GiB frame.
pub const GIANT_BASE: u64 = 0x8000_0000;
/// End of RAM the firmware needs (QEMU `-m 2G`).
pub const RAM_END: u64 = 0xc000_0000;

const SZ_4K: u64 = 4096;
const SZ_2M: u64 = 2 << 20;
const SZ_1G: u64 = 1 << 30;

/// Sizes of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// 4 KiB.
    Base,
    /// 2 MiB.
    Huge2M,
    /// 1 GiB.
    Huge1G,
}

impl FrameSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            FrameSize::Base => SZ_4K,
            FrameSize::Huge2M => SZ_2M,
            FrameSize::Huge1G => SZ_1G,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Free,
    Huge,
    Slab,
}

struct State {
    chunks: [Chunk; CHUNKS],
    slab_used: [[u64; 8]; CHUNKS],
    giant_used: bool,
    giant_dirty: bool,
}

/// The frame allocator.
pub struct FramePool {
    state: spin::Mutex<State>,
    in_use_4k: AtomicU64,
    in_use_2m: AtomicU64,
}

/// The firmware's one frame pool.
pub static FRAMES: FramePool = FramePool {
    state: spin::Mutex::new(State {
        chunks: [Chunk::Free; CHUNKS],
        slab_used: [[0; 8]; CHUNKS],
        giant_used: false,
        giant_dirty: false,
    }),
    in_use_4k: AtomicU64::new(0),
    in_use_2m: AtomicU64::new(0),
};

impl FramePool {
    /// A zeroed frame of `size`, by physical address.
    pub fn alloc(&self, size: FrameSize) -> Option<u64> {
        let mut zeroed = false;
        let pa = {
            let mut st = self.state.lock();
            match size {
                FrameSize::Base => Self::alloc_4k(&mut st)?,
                FrameSize::Huge2M => {
                    let i = st.chunks.iter().rposition(|c| *c == Chunk::Free)?;
                    st.chunks[i] = Chunk::Huge;
                    SMALL_BASE + i as u64 * SZ_2M
                }
                FrameSize::Huge1G => {
                    if st.giant_used {
                        return None;
                    }
                    st.giant_used = true;
                    // Never handed out since reset: still zero.
                    zeroed = !st.giant_dirty;
                    st.giant_dirty = true;
                    GIANT_BASE
                }
            }
        };
        match size {
            FrameSize::Base => self.in_use_4k.fetch_add(1, Ordering::Relaxed),
            FrameSize::Huge2M => self.in_use_2m.fetch_add(1, Ordering::Relaxed),
            FrameSize::Huge1G => 0,
        };
        if !zeroed {
            fill(pa, size.bytes(), 0);
        }
        Some(pa)
    }

    fn alloc_4k(st: &mut State) -> Option<u64> {
        let slab = st
            .chunks
            .iter()
            .zip(st.slab_used.iter())
            .position(|(c, used)| *c == Chunk::Slab && used.iter().any(|w| *w != u64::MAX));
        let i = match slab {
            Some(i) => i,
            None => {
                let i = st.chunks.iter().position(|c| *c == Chunk::Free)?;
                st.chunks[i] = Chunk::Slab;
                st.slab_used[i] = [0; 8];
                i
            }
        };
        let used = &mut st.slab_used[i];
        let w = used.iter().position(|w| *w != u64::MAX)?;
        let b = used[w].trailing_ones() as u64;
        used[w] |= 1 << b;
        Some(SMALL_BASE + i as u64 * SZ_2M + (w as u64 * 64 + b) * SZ_4K)
    }

    /// Give back a frame obtained from [`alloc`](Self::alloc).
    pub fn free(&self, pa: u64, size: FrameSize) {
        let mut st = self.state.lock();
        match size {
            FrameSize::Huge1G => {
                if pa == GIANT_BASE {
                    st.giant_used = false;
                }
            }
            FrameSize::Huge2M | FrameSize::Base => {
                let Some(off) = pa.checked_sub(SMALL_BASE) else {
                    return;
                };
                let i = (off / SZ_2M) as usize;
                if i >= CHUNKS {
                    return;
                }
                if size == FrameSize::Huge2M {
                    if st.chunks[i] == Chunk::Huge {
                        st.chunks[i] = Chunk::Free;
                        self.in_use_2m.fetch_sub(1, Ordering::Relaxed);
                    }
                } else if st.chunks[i] == Chunk::Slab {
                    let k = (off % SZ_2M) / SZ_4K;
                    let (w, b) = ((k / 64) as usize, k % 64);
                    if st.slab_used[i][w] & (1 << b) != 0 {
                        st.slab_used[i][w] &= !(1 << b);
                        self.in_use_4k.fetch_sub(1, Ordering::Relaxed);
                    }
                    if st.slab_used[i].iter().all(|w| *w == 0) {
                        st.chunks[i] = Chunk::Free;
                    }
                }
            }
        }
    }

    /// Frames in use: (4 KiB, 2 MiB).
    pub fn in_use(&self) -> (u64, u64) {
        (
            self.in_use_4k.load(Ordering::Relaxed),
            self.in_use_2m.load(Ordering::Relaxed),
        )
    }
}

/// Whether `pa` is a frame of the pool (not the zero page, not the image).
pub fn is_pool_frame(pa: u64) -> bool {
    (SMALL_BASE..RAM_END).contains(&pa)
}

/// Whether `[pa, pa + len)` lies in RAM the firmware manages as frames or
/// in the firmware image (the only memory the helpers below may touch).
fn in_ram(pa: u64, len: u64) -> bool {
    pa.is_multiple_of(8)
        && len.is_multiple_of(8)
        && pa >= 0x4000_0000
        && pa.checked_add(len).is_some_and(|e| e <= RAM_END)
}

/// Fill `[pa, pa + len)` with the 64-bit word `v`.
pub fn fill(pa: u64, len: u64, v: u64) {
    assert!(in_ram(pa, len), "fill outside RAM");
    let p = pa as *mut u64;
    for i in 0..(len / 8) as usize {
        // SAFETY: the range is inside identity-mapped RAM (checked above)
        // and belongs to a frame the caller owns (allocated and not yet
        // freed); frames are never Rust objects, so volatile word writes
        // alias nothing the compiler tracks.
        unsafe { p.add(i).write_volatile(v) };
    }
}

/// Read the 64-bit word at `pa`.
pub fn read(pa: u64) -> u64 {
    assert!(in_ram(pa, 8), "read outside RAM");
    // SAFETY: as for `fill`: an aligned word of identity-mapped RAM that is
    // not a Rust object.
    unsafe { (pa as *const u64).read_volatile() }
}

/// Write the 64-bit word at `pa`.
pub fn write(pa: u64, v: u64) {
    assert!(in_ram(pa, 8), "write outside RAM");
    // SAFETY: as for `fill`.
    unsafe { (pa as *mut u64).write_volatile(v) };
}

/// Copy `len` bytes from frame memory at `src` to frame memory at `dst`.
pub fn copy(dst: u64, src: u64, len: u64) {
    for off in (0..len).step_by(8) {
        write(dst + off, read(src + off));
    }
}

/// The shared zero page (`ZERO_PAGE(0)`): never written.
#[repr(C, align(4096))]
pub struct ZeroPage([u64; 512]);

/// The zero page.
pub static ZERO_PAGE: ZeroPage = ZeroPage([0; 512]);

/// Physical address of the zero page.
pub fn zero_page_pa() -> u64 {
    core::ptr::addr_of!(ZERO_PAGE) as u64
}
