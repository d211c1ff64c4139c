//! The real userfaultfd round trip, the baseline of the simulated one.
//!
//! [`RealUffd`] maps fresh anonymous memory of this process (4 KiB pages),
//! registers it with a real userfaultfd in MISSING mode and starts a
//! handler thread that answers each page-fault message with one
//! `UFFDIO_COPY` of one page. [`RealUffd::touch_all`] is the first touch of
//! every page by the calling thread (one byte read per page): each read
//! faults, the kernel queues a message and puts the thread to sleep until
//! the handler's copy wakes it. That is the same round trip as the
//! simulator's (message, lock drop, sleep, copy, wake-up, retry), with the
//! kernel's own CPU fault instead of hmm-core's range fault.
//!
//! Opening a userfaultfd may be refused: the `userfaultfd(2)` system call
//! needs `CAP_SYS_PTRACE` unless `/proc/sys/vm/unprivileged_userfaultfd` is
//! 1 or the descriptor asks for `UFFD_USER_MODE_ONLY` (enough here: every
//! fault comes from user space), and `/dev/userfaultfd` needs read-write
//! access to the device node. [`open_userfaultfd`] tries the three in that
//! order and returns the last error if all fail.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::baseline::{Backing, Region, PAGE};

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `UFFD_USER_MODE_ONLY` (a `userfaultfd(2)` flag).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// `_IOC(dir, 0xAA, nr, size)`.
const fn uffd_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg` (packed, 32 bytes): the event byte, then for a page
/// fault the flags at offset 8 and the address at offset 16.
const UFFD_MSG_SIZE: usize = 32;

const UFFDIO_API: u64 = uffd_ioc(IOC_READ | IOC_WRITE, 0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = uffd_ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
const UFFDIO_WAKE: u64 = uffd_ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = uffd_ioc(
    IOC_READ | IOC_WRITE,
    0x03,
    std::mem::size_of::<UffdioCopy>(),
);
/// `USERFAULTFD_IOC_NEW` = `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
const USERFAULTFD_IOC_NEW: u64 = 0xaa00;

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);

/// How [`open_userfaultfd`] obtained its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// `userfaultfd(O_CLOEXEC | O_NONBLOCK)`.
    Syscall,
    /// `userfaultfd(... | UFFD_USER_MODE_ONLY)`.
    UserModeOnly,
    /// `ioctl(open("/dev/userfaultfd"), USERFAULTFD_IOC_NEW)`.
    Device,
}

fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the `#[repr(C)]`
    // struct `T` matching its `_IOC` size (checked by the assertions
    // above), valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Open a non-blocking userfaultfd and complete the `UFFDIO_API`
/// handshake, trying the system call, then the system call with
/// `UFFD_USER_MODE_ONLY`, then `/dev/userfaultfd`.
pub fn open_userfaultfd() -> io::Result<(OwnedFd, Opened)> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let sys = |extra: libc::c_int| -> io::Result<OwnedFd> {
        // SAFETY: userfaultfd(2) takes only flags and returns a new
        // descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    };
    let dev = || -> io::Result<OwnedFd> {
        let node = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags by
        // value and returns a new descriptor or -1.
        let fd = unsafe { libc::ioctl(node.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let (fd, how) = match sys(0) {
        Ok(fd) => (fd, Opened::Syscall),
        Err(_) => match sys(UFFD_USER_MODE_ONLY) {
            Ok(fd) => (fd, Opened::UserModeOnly),
            Err(_) => (dev()?, Opened::Device),
        },
    };
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    ioctl(&fd, UFFDIO_API, &mut api)?;
    Ok((fd, how))
}

/// A fresh range of real anonymous memory registered with a real
/// userfaultfd (MISSING), and the handler thread serving it.
pub struct RealUffd {
    region: Region,
    /// How the descriptor was opened.
    pub opened: Opened,
    stop: OwnedFd,
    copied: Arc<AtomicU64>,
    handler: Option<JoinHandle<io::Result<()>>>,
}

impl RealUffd {
    /// Map `len` bytes (a multiple of 2 MiB) of 4 KiB pages, register them
    /// and start the handler thread.
    pub fn new(len: usize) -> io::Result<RealUffd> {
        let region = Region::mapped(len, Backing::Small)?;
        let (uffd, opened) = open_userfaultfd()?;
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: region.addr() as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&uffd, UFFDIO_REGISTER, &mut reg)?;
        // SAFETY: eventfd(2) takes an initial value and flags and returns a
        // new descriptor or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `stop` is a fresh descriptor owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let stop_rx = stop.try_clone()?;
        let copied = Arc::new(AtomicU64::new(0));
        let count = copied.clone();
        let handler = std::thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || serve(&uffd, &stop_rx, &count))?;
        Ok(RealUffd {
            region,
            opened,
            stop,
            copied,
            handler: Some(handler),
        })
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> usize {
        self.region.pages()
    }

    /// First touch of every page by this thread (one byte read per page),
    /// each a userfaultfd round trip; returns the wall time and the sum of
    /// the bytes read (every page holds the handler's `0x5a`).
    pub fn touch_all(&self) -> (Duration, u64) {
        let t = Instant::now();
        let sum = self.region.touch(PAGE, false);
        (t.elapsed(), sum)
    }

    /// Stop the handler and return the pages it copied.
    pub fn finish(mut self) -> io::Result<u64> {
        self.stop_handler()?;
        Ok(self.copied.load(Ordering::Relaxed))
    }

    fn stop_handler(&mut self) -> io::Result<()> {
        let Some(h) = self.handler.take() else {
            return Ok(());
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        h.join()
            .map_err(|_| io::Error::other("uffd handler panicked"))?
    }
}

impl Drop for RealUffd {
    fn drop(&mut self) {
        let _ = self.stop_handler();
    }
}

/// The handler thread: wait for messages (or the stop eventfd) with
/// `poll`, answer every page fault with a one-page `UFFDIO_COPY`.
fn serve(uffd: &OwnedFd, stop: &OwnedFd, copied: &AtomicU64) -> io::Result<()> {
    // The source page, page-aligned.
    let src = Region::mapped(2 << 20, Backing::Small)?;
    // SAFETY: the first page of `src` is ours, mapped read-write.
    unsafe { std::ptr::write_bytes(src.addr() as *mut u8, 0x5a, PAGE) };
    let mut msgs = [0u8; UFFD_MSG_SIZE * 16];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: reading into a live buffer of its own length.
        let n = unsafe { libc::read(uffd.as_raw_fd(), msgs.as_mut_ptr().cast(), msgs.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for m in msgs[..n as usize].chunks_exact(UFFD_MSG_SIZE) {
            if m[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let addr = u64::from_ne_bytes(m[16..24].try_into().expect("8 bytes"));
            let page = addr & !(PAGE as u64 - 1);
            let mut copy = UffdioCopy {
                dst: page,
                src: src.addr() as u64,
                len: PAGE as u64,
                mode: 0,
                copy: 0,
            };
            match ioctl(uffd, UFFDIO_COPY, &mut copy) {
                Ok(()) => {
                    copied.fetch_add(1, Ordering::Relaxed);
                }
                // Resolved meanwhile (a duplicate message): just wake.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let mut r = UffdioRange {
                        start: page,
                        len: PAGE as u64,
                    };
                    ioctl(uffd, UFFDIO_WAKE, &mut r)?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_supplied_by_the_handler() {
        let r = match RealUffd::new(2 << 20) {
            Ok(r) => r,
            Err(e) => {
                // Not permitted on this host: the bench reports it too.
                eprintln!("userfaultfd unavailable: {e}");
                return;
            }
        };
        let (_, sum) = r.touch_all();
        assert_eq!(sum, 0x5a * r.pages() as u64);
        assert_eq!(r.finish().expect("handler"), 512);
    }
}
