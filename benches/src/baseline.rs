//! Kernel baselines on real memory: pagemap, `PAGEMAP_SCAN`, `mincore`, and
//! the memory-bandwidth floor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Page size of the baselines.
pub const PAGE: usize = 4096;

/// An anonymous private mapping of real memory.
///
/// # Invariants
///
/// `ptr` is the start of a live mapping of `len` bytes owned by this value.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain anonymous memory owned by this value; nothing
// in it is tied to the creating thread.
unsafe impl Send for Region {}

/// How to back a [`Region`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// 4 KiB pages (`MADV_NOHUGEPAGE`).
    Small,
    /// Transparent huge pages (`MADV_HUGEPAGE`, 2 MiB aligned).
    Thp,
}

impl Region {
    /// Map `len` bytes (a multiple of 2 MiB), advise `backing`, and touch one
    /// byte per page so every page is present.
    pub fn populated(len: usize, backing: Backing) -> io::Result<Region> {
        let region = Region::mapped(len, backing)?;
        region.touch(PAGE, true);
        Ok(region)
    }

    /// Map `len` bytes (a multiple of 2 MiB, 2 MiB aligned) and advise
    /// `backing`, touching nothing: every page is a hole.
    pub fn mapped(len: usize, backing: Backing) -> io::Result<Region> {
        let huge = 2 << 20;
        if len == 0 || !len.is_multiple_of(huge) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // Over-allocate by 2 MiB to align the start for THP.
        let map_len = len + huge;
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = raw as usize;
        let aligned = (base + huge - 1) & !(huge - 1);
        // Trim the unaligned head and the tail so exactly `len` stays mapped.
        // SAFETY: both trimmed pieces lie inside the mapping made above and
        // are not referenced by anything.
        unsafe {
            if aligned > base {
                libc::munmap(base as *mut libc::c_void, aligned - base);
            }
            let tail = base + map_len - (aligned + len);
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let region = Region {
            ptr: aligned as *mut u8,
            len,
        };
        let advice = match backing {
            Backing::Small => libc::MADV_NOHUGEPAGE,
            Backing::Thp => libc::MADV_HUGEPAGE,
        };
        // SAFETY: the range is exactly our mapping (invariant).
        unsafe { libc::madvise(region.ptr as *mut libc::c_void, len, advice) };
        Ok(region)
    }

    /// Touch one byte every `stride` bytes (a multiple of the page size),
    /// writing if `write`, reading otherwise: the CPU page faults of a
    /// first touch. Returns a value depending on what was read.
    pub fn touch(&self, stride: usize, write: bool) -> u64 {
        let mut acc = 0u64;
        for off in (0..self.len).step_by(stride.max(PAGE)) {
            if write {
                // SAFETY: `off < len`, inside the writable mapping.
                unsafe { self.ptr.add(off).write_volatile(1) };
            } else {
                // SAFETY: `off < len`, inside the readable mapping.
                acc = acc.wrapping_add(u64::from(unsafe { self.ptr.add(off).read_volatile() }));
            }
        }
        acc
    }

    /// `madvise(MADV_DONTNEED)` over the whole region: every page becomes
    /// a hole again (the page tables themselves may stay).
    pub fn dontneed(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping (invariant).
        let r =
            unsafe { libc::madvise(self.ptr as *mut libc::c_void, self.len, libc::MADV_DONTNEED) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    /// Bytes of the region backed by THP, from `/proc/self/smaps`.
    pub fn thp_bytes(&self) -> io::Result<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((s, e)) = range.split_once('-') {
                    if let (Ok(s), Ok(e)) =
                        (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
                    {
                        inside = s <= self.addr() && self.addr() < e;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("AnonHugePages:") {
                    let kb: usize = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    return Ok(kb * 1024);
                }
            }
        }
        Ok(0)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours (invariant) and nothing borrows it.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// `/proc/self/pagemap`, opened once.
pub struct Pagemap {
    file: File,
    buf: Vec<u64>,
}

impl Pagemap {
    /// Open the pagemap of this process, with a read buffer of `chunk_pages`
    /// entries per `pread`.
    pub fn open(chunk_pages: usize) -> io::Result<Pagemap> {
        Ok(Pagemap {
            file: File::open("/proc/self/pagemap")?,
            buf: vec![0u64; chunk_pages.max(1)],
        })
    }
}

/// Read the pagemap entries of `region` and write one word per page into
/// `out` (present bit and PFN), the kernel walker's equivalent of a
/// snapshot. Returns the number of present pages.
pub fn pagemap_walk(pm: &mut Pagemap, region: &Region, out: &mut [u64]) -> io::Result<usize> {
    let pages = region.pages();
    let mut present = 0;
    let mut done = 0;
    while done < pages {
        let n = pm.buf.len().min(pages - done);
        let offset = ((region.addr() / PAGE + done) * 8) as u64;
        // SAFETY: reinterpreting the u64 buffer as bytes for the read; the
        // length is exactly n * 8 bytes of it.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(pm.buf.as_mut_ptr() as *mut u8, n * 8) };
        pm.file.read_exact_at(bytes, offset)?;
        for (o, &e) in out[done..done + n].iter_mut().zip(&pm.buf[..n]) {
            let is_present = e >> 63 & 1;
            present += is_present as usize;
            *o = (is_present << 63) | (e & ((1 << 55) - 1));
        }
        done += n;
    }
    Ok(present)
}

/// `struct pm_scan_arg` of `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region` of `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PAGE_IS_*` categories.
    pub categories: u64,
}

/// `PAGE_IS_PRESENT`.
const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Scan `region` with `PAGEMAP_SCAN` for present pages, filling `vec` with
/// the regions found; returns the number of present pages.
pub fn pagemap_scan(pm: &Pagemap, region: &Region, vec: &mut [PageRegion]) -> io::Result<usize> {
    let mut start = region.addr() as u64;
    let end = (region.addr() + region.len()) as u64;
    let mut present = 0usize;
    while start < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            category_mask: PAGE_IS_PRESENT,
            return_mask: PAGE_IS_PRESENT,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
        // `vec.len()` writable page_region structs that outlive the call.
        let n = unsafe {
            libc::ioctl(
                pm.file.as_raw_fd(),
                PAGEMAP_SCAN as _,
                &mut arg as *mut PmScanArg,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &vec[..n as usize] {
            present += ((r.end - r.start) / PAGE as u64) as usize;
        }
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(present)
}

/// `mincore()` over `region` into `out` (one byte per page); returns the
/// number of resident pages.
pub fn mincore_walk(region: &Region, out: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the range is our live mapping and `out` has one byte per page.
    let r = unsafe {
        libc::mincore(
            region.addr() as *mut libc::c_void,
            region.len(),
            out.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(out.iter().filter(|&&b| b & 1 != 0).count())
}

/// The floor: read one 8-byte word and write one 8-byte word per page
/// (`out[i] = table[i] | flag`), over as many pages as the walk covers.
pub fn bandwidth_floor(table: &[u64], out: &mut [u64]) -> u64 {
    let mut acc = 0u64;
    for (o, &t) in out.iter_mut().zip(table) {
        *o = t | (1 << 63);
        acc = acc.wrapping_add(t);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_agree_on_a_populated_region() {
        let r = Region::populated(4 << 20, Backing::Small).expect("mmap");
        let mut pm = Pagemap::open(4096).expect("pagemap");
        let mut out = vec![0u64; r.pages()];
        assert_eq!(
            pagemap_walk(&mut pm, &r, &mut out).expect("pagemap read"),
            r.pages()
        );
        assert!(out.iter().all(|&e| e >> 63 == 1));
        let mut vec = vec![PageRegion::default(); 64];
        match pagemap_scan(&pm, &r, &mut vec) {
            Ok(n) => assert_eq!(n, r.pages()),
            // Kernels before 6.7 lack PAGEMAP_SCAN.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTTY)),
        }
        let mut mc = vec![0u8; r.pages()];
        assert_eq!(mincore_walk(&r, &mut mc).expect("mincore"), r.pages());
    }

    #[test]
    fn touch_and_dontneed_change_what_the_kernel_reports_present() {
        let r = Region::mapped(4 << 20, Backing::Small).expect("mmap");
        let mut pm = Pagemap::open(4096).expect("pagemap");
        let mut out = vec![0u64; r.pages()];
        assert_eq!(pagemap_walk(&mut pm, &r, &mut out).expect("read"), 0);
        r.touch(2 << 20, true);
        assert_eq!(pagemap_walk(&mut pm, &r, &mut out).expect("read"), 2);
        assert!(out[0] >> 63 == 1 && out[512] >> 63 == 1 && out[1] >> 63 == 0);
        r.dontneed().expect("madvise");
        assert_eq!(pagemap_walk(&mut pm, &r, &mut out).expect("read"), 0);
    }
}
