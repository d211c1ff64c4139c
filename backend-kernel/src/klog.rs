//! Judging the kernel log of one phase of the VM run.
//!
//! The guest drains the kernel log after every phase into a section
//! `kernel-log.<phase>`. A line that looks like a splat (a warning, BUG,
//! oops, lockdep or RCU report, KASAN / UBSAN, a stall, a hung task, list or
//! slab corruption, a Rust panic) is a finding, except inside one notice the
//! kernel prints by design: with `CONFIG_DEBUG_VM`, `handle_userfault()`
//! reports a userfaultfd fault taken without `FAULT_FLAG_ALLOW_RETRY`
//! ("FAULT_FLAG_ALLOW_RETRY missing", then a stack dump) and fails it with
//! SIGBUS. That is Linux's own `hmm_range_fault()` meeting a userfaultfd
//! range, which the `*_read_efault` cases of `tests-vm/uffd_read.c` do on
//! purpose to show that Linux's path cannot drop the lock.

/// Substrings that make a kernel log line a splat.
pub const SPLAT: &[&str] = &[
    "WARNING:",
    "BUG:",
    "BUG kmalloc",
    "Oops",
    "RIP:",
    "Call Trace",
    "kernel BUG",
    "panicked",
    "Kernel panic",
    "turning off the locking correctness validator",
    "possible recursive locking",
    "possible circular locking",
    "inconsistent lock state",
    "Possible unsafe locking scenario",
    "bad unlock balance",
    "held lock freed",
    "lock held when returning to user",
    "DEBUG_LOCKS_WARN_ON",
    "trying to register non-static key",
    "suspicious RCU usage",
    "KASAN",
    "UBSAN",
    "rcu: INFO",
    "detected stalls",
    "self-detected stall",
    "soft lockup",
    "hard LOCKUP",
    "blocked for more than",
    "general protection",
    "list_add corruption",
    "list_del corruption",
    "sleeping function called",
    "Poison overwritten",
    "Redzone",
    "Object padding",
    "Padding overwritten",
    "Bad page",
    "bad page state",
    "page dumped because",
];

/// The first line of the expected `handle_userfault()` notice.
const UFFD_NOTICE: &str = "FAULT_FLAG_ALLOW_RETRY missing";

/// The line that ends a stack dump on x86-64.
const DUMP_END: &str = "</TASK>";

/// Lines a stack dump can take; a notice whose dump does not end within
/// them ends where it stopped looking.
const DUMP_MAX_LINES: usize = 120;

/// What one phase's kernel log holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhaseLog<'a> {
    /// Splat lines (findings).
    pub splats: Vec<&'a str>,
    /// Expected `handle_userfault()` notices (counted, not findings).
    pub uffd_notices: usize,
}

/// Whether `line` looks like a splat.
pub fn is_splat(line: &str) -> bool {
    SPLAT.iter().any(|p| line.contains(p))
}

/// Judge one phase's kernel log lines.
pub fn judge<'a>(lines: impl IntoIterator<Item = &'a str>) -> PhaseLog<'a> {
    let mut out = PhaseLog::default();
    // Lines left of the current notice's stack dump, if inside one.
    let mut in_notice = 0usize;
    for line in lines {
        if line.contains(UFFD_NOTICE) {
            out.uffd_notices += 1;
            in_notice = DUMP_MAX_LINES;
            continue;
        }
        if in_notice > 0 {
            in_notice = if line.contains(DUMP_END) {
                0
            } else {
                in_notice - 1
            };
            continue;
        }
        if is_splat(line) {
            out.splats.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splats_are_found_and_boot_banners_are_not() {
        let log = judge([
            "[    2.497150] rcu: \tRCU lockdep checking is enabled.",
            "[    0.000000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc.",
            "[    9.1] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1/0x2",
            "[    9.2] BUG: KASAN: slab-use-after-free in g+0x3/0x4",
            "[    9.3] =============================",
            "[    9.4] WARNING: suspicious RCU usage",
        ]);
        assert_eq!(log.splats.len(), 3, "{:?}", log.splats);
        assert_eq!(log.uffd_notices, 0);
    }

    #[test]
    fn the_handle_userfault_notice_is_expected_but_what_follows_is_not() {
        let log = judge([
            "[   23.51] FAULT_FLAG_ALLOW_RETRY missing 3e1",
            "[   23.51] CPU: 1 UID: 0 PID: 80 Comm: uffd_read Not tainted 6.12.118 #1",
            "[   23.51] Call Trace:",
            "[   23.51]  <TASK>",
            "[   23.51]  dump_stack_lvl+0x5d/0x80",
            "[   23.51] RIP: 0033:0x43fa4b",
            "[   23.51]  </TASK>",
            "[   24.00] BUG: sleeping function called from invalid context",
        ]);
        assert_eq!(log.uffd_notices, 1);
        assert_eq!(
            log.splats,
            vec!["[   24.00] BUG: sleeping function called from invalid context"]
        );
    }
}
