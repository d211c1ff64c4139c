//! The `hmm-sim` binary: help, bad flags, and small runs end to end (text
//! and `--json`).

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
    assert!(
        err.contains("invalid value 'sideways' for '--policy"),
        "{err}"
    );
    assert!(err.contains("[possible values: resume, restart]"), "{err}");
    let (code, _, err) = hmm_sim(&["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
    let (code, _, err) = hmm_sim(&["--size", "3M"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--size must be a non-zero multiple of 2M"),
        "{err}"
    );
}

#[test]
fn a_small_run_passes_its_checks() {
    let (code, out, err) = hmm_sim(&["--size", "8M", "--seed", "5", "--invalidators", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("coherence         OK (2048 device entries"),
        "{out}"
    );
    assert!(out.contains("data              OK"), "{out}");
}

#[test]
fn json_is_one_object_for_scripts() {
    let (code, out, err) = hmm_sim(&["--size", "4M", "--page-size", "thp", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let line = out.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{out}");
    for field in [
        "\"ok\":true",
        "\"page_size\":\"thp\"",
        "\"pages\":1024",
        "\"coherent_entries\":1024",
        "\"lock_drops\":",
    ] {
        assert!(line.contains(field), "{field} missing: {out}");
    }
}
