//! Host-side entry point of the firmware test: `cargo run` runs
//! `backend-hypervisor/firmware/run.sh`, which builds the bare-metal image
//! with Debian's toolchain and build-std, boots it under
//! `qemu-system-aarch64` on each CPU model of its matrix with a timeout,
//! parses the UART logs and reports "N passed, M failed" per model. The
//! exit status is run.sh's: non-zero on a build failure, or a timeout, a
//! bad QEMU exit status or any failed check on any model.
//!
//! Arguments are not used; the environment variables of run.sh
//! (`FW_CPUS`, `FW_TIMEOUT`, `FW_PROFILE`, `FW_LOG_DIR`, `CARGO_TARGET_DIR`)
//! pass through, except that cargo's own `RUSTC`/`RUSTFLAGS`-style variables set for this
//! host build are removed so that the bare-metal build gets Debian's rustc.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    // Variables cargo sets for this (host) build must not leak into the
    // nested bare-metal build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
    ] {
        cmd.env_remove(var);
    }
    match cmd.status() {
        Ok(st) if st.success() => ExitCode::SUCCESS,
        Ok(st) => {
            eprintln!("hmm-firmware-runner: {} failed ({st})", script.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hmm-firmware-runner: cannot run {}: {e}", script.display());
            ExitCode::FAILURE
        }
    }
}
