//! `hmm-bench-report CRITERION_HOME EXTRAS OUT.md MODE COMMIT COMMAND...`:
//! write the benchmark tables from criterion's estimates and the extra
//! measurements recorded by the bench binaries, followed by the file named
//! by `HMM_BENCH_NOTES` if set. `HMM_KERNEL_REPORT` names a kernel-harness
//! report (its standard output) whose timing sections go into section 6.

use std::path::PathBuf;

use hmm_benches::report::{read_extras, render, RunInfo};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: hmm-bench-report CRITERION_HOME EXTRAS OUT.md MODE COMMIT [COMMAND...]");
        std::process::exit(2);
    }
    let home = PathBuf::from(&args[0]);
    let extras = read_extras(&PathBuf::from(&args[1]));
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let run = RunInfo {
        mode: args[3].clone(),
        date,
        commit: args[4].clone(),
        command: if args.len() > 5 {
            args[5..].join(" ")
        } else {
            "benches/run.sh".into()
        },
        kernel: std::env::var_os("HMM_KERNEL_REPORT").and_then(|p| std::fs::read_to_string(p).ok()),
    };
    let mut text = render(&home, &extras, &run);
    // Hand-written analysis (profiles, proposed fixes) appended verbatim.
    if let Some(notes) =
        std::env::var_os("HMM_BENCH_NOTES").and_then(|p| std::fs::read_to_string(p).ok())
    {
        text.push('\n');
        text.push_str(&notes);
    }
    if let Err(e) = std::fs::write(&args[2], text) {
        eprintln!("writing {}: {e}", args[2]);
        std::process::exit(1);
    }
}
