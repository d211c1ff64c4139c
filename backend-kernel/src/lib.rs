//! Host side of the kernel backend's test harness.
//!
//! The kernel module itself (`module/`, built by Kbuild, not by cargo) and
//! the in-VM test programs (`tests-vm/`) are run by `vm/run.sh`, which boots
//! the test kernel under QEMU and leaves a serial log. This crate judges that
//! log: it splits it into the per-driver sections the guest script framed
//! ([`log`]), parses each kselftest TAP stream ([`tap`]), applies the list
//! of hmm-tests cases the module claims ([`claims`]), reads the timings
//! ([`bench`]) and renders the side-by-side report and the verdict
//! ([`report`]). The `kernel-harness` binary runs the script and prints the
//! report; its exit status is the verdict.

pub mod bench;
pub mod claims;
pub mod fuzz;
pub mod klog;
pub mod log;
pub mod report;
pub mod tap;
