//! `cargo run -p backend-kernel --bin kernel-harness [-- OPTIONS]`
//!
//! Runs `vm/run.sh` (set up the host, build the kernel once and cache it,
//! build hmm_rs.ko and the in-VM tests, boot QEMU, run hmm-tests, the
//! userfaultfd test and the benchmark against the kernel's C driver and
//! against hmm_rs), then judges the serial log: the side-by-side table, the
//! claims, the timings, and `N passed, M failed`. Exits non-zero if a
//! claimed case or one of our own tests failed, or the run did not finish.
//!
//! Options:
//!   --debug        use the debug kernel (lockdep, KASAN, DEBUG_VM, ...;
//!                  `harness/kernel-debug.config`); no benchmark
//!   --log FILE     judge an existing serial log instead of running the VM
//!   --out DIR      output directory of the run (default: run.sh's)
//!   --claims FILE  claims file (default: vm/claims.txt)

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use backend_kernel::claims::Claims;
use backend_kernel::log::SerialLog;
use backend_kernel::report;

fn main() -> ExitCode {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut log_file: Option<PathBuf> = None;
    let mut out_dir: Option<PathBuf> = None;
    let mut claims_file = crate_dir.join("vm/claims.txt");
    let mut debug = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| match args.next() {
            Some(v) => Ok(PathBuf::from(v)),
            None => Err(format!("{name} needs a value")),
        };
        let r = match a.as_str() {
            "--log" => value("--log").map(|v| log_file = Some(v)),
            "--out" => value("--out").map(|v| out_dir = Some(v)),
            "--claims" => value("--claims").map(|v| claims_file = v),
            "--debug" => {
                debug = true;
                Ok(())
            }
            "-h" | "--help" => {
                println!(
                    "usage: kernel-harness [--debug] [--log FILE] [--out DIR] [--claims FILE]"
                );
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = r {
            eprintln!("kernel-harness: {e}");
            return ExitCode::from(2);
        }
    }

    let log_path = match log_file {
        Some(p) => p,
        None => {
            let out = out_dir.unwrap_or_else(|| {
                let root = std::env::var("HMM_CACHE_ROOT")
                    .unwrap_or_else(|_| "/var/cache/hmm-rs".to_string());
                let name = if debug {
                    "kernel-harness-debug"
                } else {
                    "kernel-harness"
                };
                PathBuf::from(root).join("runs").join(name)
            });
            let status = Command::new("bash")
                .arg(crate_dir.join("vm/run.sh"))
                .arg(&out)
                .env("HMM_KERNEL_FLAVOR", if debug { "debug" } else { "release" })
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    eprintln!("kernel-harness: vm/run.sh failed ({s})");
                    // Judge whatever log there is, then fail.
                    if let Ok(text) = std::fs::read_to_string(out.join("serial.log")) {
                        judge(&text, &claims_file);
                    }
                    return ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1).max(1));
                }
                Err(e) => {
                    eprintln!("kernel-harness: cannot run bash: {e}");
                    return ExitCode::from(1);
                }
            }
            out.join("serial.log")
        }
    };
    let text = match std::fs::read_to_string(&log_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kernel-harness: {}: {e}", log_path.display());
            return ExitCode::from(1);
        }
    };
    if judge(&text, &claims_file) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Print the report of `text`; true if every check passed.
fn judge(text: &str, claims_file: &PathBuf) -> bool {
    let claims = match std::fs::read_to_string(claims_file)
        .map_err(|e| e.to_string())
        .and_then(|t| Claims::parse(&t))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kernel-harness: {}: {e}", claims_file.display());
            return false;
        }
    };
    let r = report::build(&SerialLog::parse(text), &claims);
    print!("{}", r.text);
    r.ok()
}
