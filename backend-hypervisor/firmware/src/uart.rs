//! The PL011 console of QEMU's `virt` machine (data register at
//! `0x0900_0000`), shared by both CPUs under a spin lock.

use core::fmt::{self, Write};

/// MMIO base of the PL011.
const UART_BASE: usize = 0x0900_0000;
/// Flag register offset.
const UARTFR: usize = 0x18;
/// Transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// The console writer.
pub struct Uart;

impl Uart {
    fn put(&mut self, b: u8) {
        // SAFETY: UART_BASE is the PL011 of QEMU's virt machine, mapped as
        // Device memory by the EL2 identity map (and accessed the same way
        // before the MMU is on); the flag and data registers are 32-bit
        // MMIO registers that tolerate volatile reads and writes.
        unsafe {
            while core::ptr::read_volatile((UART_BASE + UARTFR) as *const u32) & FR_TXFF != 0 {}
            core::ptr::write_volatile(UART_BASE as *mut u32, u32::from(b));
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

static CONSOLE: spin::Mutex<Uart> = spin::Mutex::new(Uart);

/// Print formatted text (one call's output is never interleaved with the
/// other CPU's).
pub fn print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Print without taking the console lock (panic and fatal-exception paths,
/// where the lock may be held by the failing context).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Uart.write_fmt(args);
}

/// `print!` to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::uart::print(format_args!($($arg)*)) };
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::uart::print(format_args!("{}\n", format_args!($($arg)*))) };
}
