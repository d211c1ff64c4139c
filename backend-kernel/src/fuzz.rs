//! The ioctl fuzzer's output (`tests-vm/ioctl_fuzz.c`), one section per
//! driver:
//!
//! ```text
//! fuzz-seed <seed>
//! fuzz-config device=<dev> calls=<max> seconds=<max> cmds=<list>
//! fuzz-result <command> <OK | errno name> <count>
//! fuzz-violation <what>
//! fuzz-done calls=<n> elapsed_ms=<ms> violations=<n>
//! ```

use std::collections::BTreeMap;

/// One driver's fuzzing run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FuzzRun {
    /// The seed, as printed.
    pub seed: Option<String>,
    /// Calls per (command, outcome).
    pub counts: BTreeMap<(String, String), u64>,
    /// `fuzz-violation` lines (a successful call broke the ABI contract).
    pub violations: Vec<String>,
    /// Calls made, from `fuzz-done`; `None` if the run never finished.
    pub calls: Option<u64>,
    /// Wall time of the run in milliseconds, from `fuzz-done`.
    pub elapsed_ms: Option<u64>,
    /// Lines `fuzz-hang ...` / `fuzz-error ...`.
    pub errors: Vec<String>,
}

fn field(words: &[&str], key: &str) -> Option<u64> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Parse the fuzzer's lines; anything else is ignored.
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> FuzzRun {
    let mut run = FuzzRun::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("fuzz-seed") => run.seed = words.get(1).map(|s| s.to_string()),
            Some("fuzz-result") if words.len() == 4 => {
                if let Ok(n) = words[3].parse::<u64>() {
                    *run.counts
                        .entry((words[1].to_string(), words[2].to_string()))
                        .or_default() += n;
                }
            }
            Some("fuzz-violation") => run.violations.push(line.to_string()),
            Some("fuzz-hang") | Some("fuzz-error") => run.errors.push(line.to_string()),
            Some("fuzz-done") => {
                run.calls = field(&words, "calls");
                run.elapsed_ms = field(&words, "elapsed_ms");
            }
            _ => {}
        }
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_run() {
        let r = parse([
            "fuzz-seed 42",
            "fuzz-config device=/dev/hmm_dmirror0 calls=10 seconds=5 cmds=all",
            "fuzz-result READ EINVAL 3",
            "fuzz-result READ OK 2",
            "fuzz-result UNKNOWN ENOTTY 5",
            "fuzz-result READ bogus",
            "noise",
            "fuzz-done calls=10 elapsed_ms=123 violations=0",
        ]);
        assert_eq!(r.seed.as_deref(), Some("42"));
        assert_eq!(r.counts[&("READ".into(), "EINVAL".into())], 3);
        assert_eq!(r.counts[&("UNKNOWN".into(), "ENOTTY".into())], 5);
        assert_eq!(r.counts.len(), 3);
        assert_eq!(r.calls, Some(10));
        assert_eq!(r.elapsed_ms, Some(123));
        assert!(r.violations.is_empty());
    }

    #[test]
    fn an_unfinished_run_has_no_call_count() {
        let r = parse(["fuzz-seed 1", "fuzz-hang last_call=READ addr=0 npages=1"]);
        assert_eq!(r.calls, None);
        assert_eq!(r.errors.len(), 1);
    }
}
