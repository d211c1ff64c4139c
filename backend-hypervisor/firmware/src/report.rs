//! Test results and the closing counters, in the line format `run.sh`
//! parses:
//!
//! ```text
//! TEST <name> ... ok
//! TEST <name> ... FAILED (code <c>, detail <d>)
//! RESULT <n> passed, <m> failed
//! COUNTER <name> <value>
//! ```

/// Pass/fail tally.
#[derive(Default)]
pub struct Tally {
    /// Checks that passed.
    pub passed: u32,
    /// Checks that failed.
    pub failed: u32,
}

impl Tally {
    /// Record and print one check.
    pub fn record(&mut self, name: &str, ok: bool, code: u64, detail: u64) {
        if ok {
            self.passed += 1;
            crate::println!("TEST {name} ... ok");
        } else {
            self.failed += 1;
            crate::println!("TEST {name} ... FAILED (code {code}, detail {detail:#x})");
        }
    }

    /// Record a firmware-side check.
    pub fn check(&mut self, name: &str, ok: bool, detail: u64) {
        self.record(name, ok, u64::from(!ok), detail);
    }
}

/// Print one counter.
pub fn counter(name: &str, value: u64) {
    crate::println!("COUNTER {name} {value}");
}
