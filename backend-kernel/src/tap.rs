//! kselftest TAP results (`ok N name`, `not ok N name`, `# SKIP reason`).

/// The outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Pass,
    /// `not ok`.
    Fail,
    /// `ok ... # SKIP`.
    Skip,
}

impl Outcome {
    /// `PASS`, `FAIL` or `SKIP`.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One test result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The test name as printed.
    pub name: String,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// The skip reason, or for a failure the first diagnostic (`# ...`)
    /// line printed since the previous result (hmm-tests prints the failed
    /// assertion there).
    pub detail: String,
}

/// Parse the TAP lines of one program's output, in order.
pub fn parse<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> Vec<TestResult> {
    let mut out = Vec::new();
    let mut last_diag = String::new();
    for line in lines {
        let line = line.trim_end();
        let (rest, ok) = if let Some(r) = line.strip_prefix("not ok ") {
            (r, false)
        } else if let Some(r) = line.strip_prefix("ok ") {
            (r, true)
        } else {
            if let Some(d) = line.strip_prefix("#") {
                let d = d.trim();
                if d.starts_with("RUN") {
                    last_diag.clear();
                } else if last_diag.is_empty()
                    && !d.is_empty()
                    && !["OK", "FAIL", "SKIP", "PASSED", "FAILED"]
                        .iter()
                        .any(|p| d.starts_with(p))
                {
                    last_diag = d.to_string();
                }
            }
            continue;
        };
        // "<number> <name>[ # directive]"
        let Some((num, tail)) = rest.split_once(' ') else {
            continue;
        };
        if num.parse::<u32>().is_err() {
            continue;
        }
        let (name, directive) = match tail.split_once(" # ") {
            Some((n, d)) => (n.trim(), Some(d.trim())),
            None => (tail.trim(), None),
        };
        let (outcome, detail) = match directive {
            Some(d) if ok && d.to_ascii_uppercase().starts_with("SKIP") => {
                (Outcome::Skip, d[4..].trim().to_string())
            }
            _ if ok => (Outcome::Pass, String::new()),
            _ => (Outcome::Fail, std::mem::take(&mut last_diag)),
        };
        out.push(TestResult {
            name: name.to_string(),
            outcome,
            detail,
        });
        last_diag.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_fail_skip_and_details() {
        let lines = [
            "TAP version 13",
            "1..3",
            "#  RUN           hmm.hmm_device_private.migrate ...",
            "# hmm-tests.c:991:migrate:Expected ret (-22) == 0 (0)",
            "# migrate: Test terminated by assertion",
            "#          FAIL  hmm.hmm_device_private.migrate",
            "not ok 12 hmm.hmm_device_private.migrate",
            "ok 13 hmm.a",
            "ok 27 hmm.b # SKIP DEVICE_COHERENT not available",
            "ok x not-a-result",
        ];
        let r = parse(lines);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].name, "hmm.hmm_device_private.migrate");
        assert_eq!(r[0].outcome, Outcome::Fail);
        assert_eq!(
            r[0].detail,
            "hmm-tests.c:991:migrate:Expected ret (-22) == 0 (0)"
        );
        assert_eq!(r[1].outcome, Outcome::Pass);
        assert_eq!(r[1].detail, "");
        assert_eq!(r[2].outcome, Outcome::Skip);
        assert_eq!(r[2].detail, "DEVICE_COHERENT not available");
    }
}
