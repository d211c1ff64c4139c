//! The `hmm-sim` binary: help, bad flags, and a small run end to end.

use std::process::Command;

fn hmm_sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hmm-sim"))
        .args(args)
        .output()
        .expect("run hmm-sim");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_explains_every_flag() {
    let (code, out, _) = hmm_sim(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--policy",
        "--size",
        "--page-size",
        "--latency-us",
        "--seed",
        "--invalidators",
    ] {
        assert!(out.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn bad_flags_exit_non_zero_with_a_clear_error() {
    let (code, out, err) = hmm_sim(&["--policy", "sideways"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("--policy must be resume or restart"), "{err}");
    let (code, _, err) = hmm_sim(&["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option '--frobnicate'"), "{err}");
}

#[test]
fn a_small_run_passes_its_checks_with_plain_progress_lines() {
    let (code, out, err) = hmm_sim(&["--size", "8M", "--seed", "5", "--invalidators", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("progress: 2048/2048 pages"), "{out}");
    assert!(
        out.contains("coherence         OK (2048 device entries"),
        "{out}"
    );
    assert!(out.contains("data              OK"), "{out}");
}
