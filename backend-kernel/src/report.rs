//! The side-by-side report and the verdict of one VM run.
//!
//! The verdict is a list of checks, each passed or failed:
//!
//! * every claimed hmm-tests case passes with hmm_rs (a skip counts as a
//!   pass only where the C driver skipped it too);
//! * every case of our userfaultfd test passes with hmm_rs;
//! * every hmm-tests case the C driver passes is either claimed or has a
//!   reason in the claims file;
//! * the run completed, hmm_rs loaded and unloaded, the kernel logged no
//!   warning while it was loaded, and its benchmark's data checks held.
//!
//! The report ends with the line `N passed, M failed` over those checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bench::{self, Timing};
use crate::claims::Claims;
use crate::log::{Section, SerialLog};
use crate::tap::{self, Outcome, TestResult};

/// Section-name prefix of the kernel's C driver (lib/test_hmm.ko).
pub const C_DRIVER: &str = "c";
/// Section-name prefix of hmm_rs.
pub const RS_DRIVER: &str = "rs";

/// The rendered report and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Human-readable report, ending with `N passed, M failed`.
    pub text: String,
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.into());
        }
    }
}

fn results(log: &SerialLog, section: &str) -> Vec<TestResult> {
    log.section(section)
        .map(|s| tap::parse(s.lines.iter().map(String::as_str)))
        .unwrap_or_default()
}

fn by_name(r: &[TestResult]) -> BTreeMap<&str, &TestResult> {
    r.iter().map(|t| (t.name.as_str(), t)).collect()
}

/// Names of both lists, in the order of `a` then the extra ones of `b`.
fn union<'a>(a: &'a [TestResult], b: &'a [TestResult]) -> Vec<&'a str> {
    let mut names: Vec<&str> = a.iter().map(|t| t.name.as_str()).collect();
    for t in b {
        if !names.contains(&t.name.as_str()) {
            names.push(&t.name);
        }
    }
    names
}

fn label(r: Option<&&TestResult>) -> &'static str {
    r.map_or("-", |t| t.outcome.label())
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

/// Judge a serial log against the claims.
pub fn build(log: &SerialLog, claims: &Claims) -> Report {
    let mut out = String::new();
    let mut checks = Checks::default();

    // ------------------------------------------------------------ hmm-tests
    let c = results(log, &format!("{C_DRIVER}.hmm-tests"));
    let rs = results(log, &format!("{RS_DRIVER}.hmm-tests"));
    let (cm, rm) = (by_name(&c), by_name(&rs));
    let names = union(&c, &rs);
    let width = names.iter().map(|n| n.len()).max().unwrap_or(10).max(30);
    let _ = writeln!(
        out,
        "== hmm-tests: kernel C driver (test_hmm.ko) vs hmm_rs.ko"
    );
    let _ = writeln!(
        out,
        "{:width$}  {:6} {:6} {:8} note",
        "test", "C", "hmm_rs", "claimed"
    );
    let mut unexplained = 0;
    for name in &names {
        let (cr, rr) = (cm.get(name), rm.get(name));
        let claimed = claims.claimed.contains(*name);
        let c_pass = cr.is_some_and(|t| t.outcome == Outcome::Pass);
        let mut note = String::new();
        if claimed {
            let ok = match rr.map(|t| t.outcome) {
                Some(Outcome::Pass) => true,
                Some(Outcome::Skip) => cr.is_some_and(|t| t.outcome == Outcome::Skip),
                _ => false,
            };
            checks.check(ok, format!("claimed case {name}: hmm_rs {}", label(rr)));
            if !ok {
                note = format!("CLAIMED BUT {}", label(rr));
                if let Some(t) = rr.filter(|t| !t.detail.is_empty()) {
                    let _ = write!(note, ": {}", t.detail);
                }
            }
        } else if let Some(reason) = claims.lacks.get(*name) {
            note.clone_from(reason);
        } else if c_pass {
            unexplained += 1;
            note = "UNEXPLAINED: the C driver passes it; not claimed, no reason".into();
        }
        let _ = writeln!(
            out,
            "{:width$}  {:6} {:6} {:8} {}",
            name,
            label(cr),
            label(rr),
            if claimed { "yes" } else { "no" },
            note
        );
    }
    checks.check(
        unexplained == 0,
        format!("{unexplained} case(s) passed by the C driver are neither claimed nor explained"),
    );
    for name in &claims.claimed {
        if !names.contains(&name.as_str()) {
            checks.check(false, format!("claimed case {name} did not run"));
        }
    }
    let count = |r: &[TestResult], o: Outcome| r.iter().filter(|t| t.outcome == o).count();
    let claimed_pass = rs
        .iter()
        .filter(|t| claims.claimed.contains(&t.name) && t.outcome == Outcome::Pass)
        .count();
    let _ = writeln!(
        out,
        "C driver: {} passed, {} failed, {} skipped; hmm_rs: {} passed, {} failed, {} skipped; \
         claimed: {} of {} pass",
        count(&c, Outcome::Pass),
        count(&c, Outcome::Fail),
        count(&c, Outcome::Skip),
        count(&rs, Outcome::Pass),
        count(&rs, Outcome::Fail),
        count(&rs, Outcome::Skip),
        claimed_pass,
        claims.claimed.len()
    );

    // ------------------------------------------------------------ uffd_read
    let cu = results(log, &format!("{C_DRIVER}.uffd"));
    let ru = results(log, &format!("{RS_DRIVER}.uffd"));
    let (cum, rum) = (by_name(&cu), by_name(&ru));
    let _ = writeln!(out, "\n== userfaultfd test (tests-vm/uffd_read.c)");
    let _ = writeln!(out, "{:30}  {:6} {:6} detail", "test", "C", "hmm_rs");
    checks.check(!ru.is_empty(), "uffd_read produced no results with hmm_rs");
    for name in union(&cu, &ru) {
        let (cr, rr) = (cum.get(name), rum.get(name));
        let ok = rr.is_some_and(|t| t.outcome == Outcome::Pass);
        checks.check(ok, format!("uffd case {name}: hmm_rs {}", label(rr)));
        let detail = [("C", cr), ("hmm_rs", rr)]
            .iter()
            .filter_map(|(who, r)| {
                r.filter(|t| !t.detail.is_empty())
                    .map(|t| format!("{who}: {}", t.detail))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "{:30}  {:6} {:6} {}",
            name,
            label(cr),
            label(rr),
            detail
        );
    }

    // ------------------------------------------------------------ timings
    let ct = section_timings(log, C_DRIVER);
    let rt = section_timings(log, RS_DRIVER);
    let _ = writeln!(
        out,
        "\n== timing (same VM, same buffer, drivers taking turns; fastest call, median of passes)"
    );
    let _ = writeln!(
        out,
        "{:20} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "operation", "pages", "C min", "hmm_rs min", "ratio", "C median", "hmm_rs med", "ratio"
    );
    for r in &rt {
        // The C driver has no lock-dropping READ: compare with its READ.
        let c_op = match r.op.strip_prefix("read_unlocked_") {
            Some(kind) => format!("read_{kind}"),
            None => r.op.clone(),
        };
        let c = ct.iter().find(|c| c.op == c_op);
        let ratio = |a: u64, b: Option<u64>| match b {
            Some(b) if b > 0 => format!("{:.2}", a as f64 / b as f64),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:20} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
            r.op,
            r.pages,
            c.map_or("-".into(), |c| ms(c.min_ns)),
            ms(r.min_ns),
            ratio(r.min_ns, c.map(|c| c.min_ns)),
            c.map_or("-".into(), |c| ms(c.median_ns)),
            ms(r.median_ns),
            ratio(r.median_ns, c.map(|c| c.median_ns)),
        );
    }
    let _ = writeln!(
        out,
        "(ratio = hmm_rs / C; below 1 is faster. read_unlocked_* is hmm_rs's lock-dropping \
         READ, compared with the C driver's READ. READ is dominated by copying the data twice; \
         SNAPSHOT is the range walk alone.)"
    );
    let rs_bench = bench_sections(log, RS_DRIVER);
    checks.check(
        !rs_bench.is_empty() && rs_bench.iter().all(|s| s.rc == Some(0)),
        "hmm_bench with hmm_rs failed (ioctl error or wrong data) or did not run",
    );

    // ------------------------------------------------------------ module
    let _ = writeln!(out, "\n== hmm_rs module");
    checks.check(log.completed, "the VM run did not complete");
    let loaded = !log.has_event(&format!("INSMOD-FAILED {RS_DRIVER}"))
        && log.section(&format!("{RS_DRIVER}.hmm-tests")).is_some();
    checks.check(loaded, "hmm_rs.ko did not load");
    checks.check(
        loaded && !log.has_event(&format!("RMMOD-FAILED {RS_DRIVER}")),
        "hmm_rs.ko did not unload",
    );
    let klog = log.section(&format!("{RS_DRIVER}.kernel-log"));
    let warnings: Vec<&String> = klog
        .map(|s| s.lines.iter().filter(|l| !l.trim().is_empty()).collect())
        .unwrap_or_default();
    checks.check(
        klog.is_some() && warnings.is_empty(),
        "kernel warnings while hmm_rs was loaded",
    );
    let _ = writeln!(
        out,
        "loaded: {}, unloaded: {}, kernel warnings while loaded: {}",
        if loaded { "yes" } else { "NO" },
        if loaded && !log.has_event(&format!("RMMOD-FAILED {RS_DRIVER}")) {
            "yes"
        } else {
            "NO"
        },
        if klog.is_none() {
            "unknown (no kernel log section)".to_string()
        } else {
            warnings.len().to_string()
        }
    );
    for w in warnings.iter().take(20) {
        let _ = writeln!(out, "    {w}");
    }

    // ------------------------------------------------------------ verdict
    if !checks.failed.is_empty() {
        let _ = writeln!(out, "\n== failed checks");
        for f in &checks.failed {
            let _ = writeln!(out, "  - {f}");
        }
    }
    let failed = checks.failed.len();
    let _ = writeln!(out, "\n{} passed, {} failed", checks.passed, failed);
    Report {
        text: out,
        passed: checks.passed,
        failed,
    }
}

/// The benchmark sections of `driver`: `<driver>.bench` and
/// `<driver>.bench.<pass>`.
fn bench_sections<'a>(log: &'a SerialLog, driver: &str) -> Vec<&'a Section> {
    let exact = format!("{driver}.bench");
    let prefix = format!("{driver}.bench.");
    log.sections
        .iter()
        .filter(|(n, _)| **n == exact || n.starts_with(&prefix))
        .map(|(_, s)| s)
        .collect()
}

/// Timings of `driver` over all its passes: per operation the fastest call
/// and the median of the passes' medians.
fn section_timings(log: &SerialLog, driver: &str) -> Vec<Timing> {
    let mut merged: Vec<(Timing, Vec<u64>)> = Vec::new();
    for s in bench_sections(log, driver) {
        for t in bench::parse(s.lines.iter().map(String::as_str)) {
            match merged.iter_mut().find(|(m, _)| m.op == t.op) {
                Some((m, medians)) => {
                    m.min_ns = m.min_ns.min(t.min_ns);
                    m.rounds += t.rounds;
                    medians.push(t.median_ns);
                }
                None => {
                    let med = t.median_ns;
                    merged.push((t, vec![med]));
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(mut t, mut medians)| {
            medians.sort_unstable();
            t.median_ns = medians[medians.len() / 2];
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMS: &str = "claim t.a\nclaim t.s\nlacks t.m needs MIGRATE_TO_DEV\n";

    fn log(rs_a: &str, extra_c: &str, rs_uffd: &str, warn: &str) -> SerialLog {
        let text = format!(
            "@@HMM-SECTION BEGIN c.hmm-tests\nok 1 t.a\nok 2 t.m\nok 3 t.s # SKIP no huge pages\n{extra_c}\
             @@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN c.uffd\nok 1 u.efault\nnot ok 2 u.unlocked\n@@HMM-SECTION END rc=1\n\
             @@HMM-SECTION BEGIN c.bench\nbench read_4k pages=8 rounds=1 min_ns=200 median_ns=200\n\
             @@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN c.kernel-log\n@@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN rs.hmm-tests\n{rs_a} 1 t.a\nnot ok 2 t.m\nok 3 t.s # SKIP no huge pages\n\
             @@HMM-SECTION END rc=1\n\
             @@HMM-SECTION BEGIN rs.uffd\nok 1 u.efault\n{rs_uffd} 2 u.unlocked\n@@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN rs.bench.1\nbench read_4k pages=8 rounds=1 min_ns=100 median_ns=300\n\
             @@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN rs.bench.2\nbench read_4k pages=8 rounds=1 min_ns=900 median_ns=900\n\
             @@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN rs.bench.3\nbench read_4k pages=8 rounds=1 min_ns=300 median_ns=300\n\
             bench read_unlocked_4k pages=8 rounds=1 min_ns=50 median_ns=50\n\
             @@HMM-SECTION END rc=0\n\
             @@HMM-SECTION BEGIN rs.kernel-log\n{warn}@@HMM-SECTION END rc=0\n\
             @@HMM-HARNESS TEST-END rc=0\n"
        );
        SerialLog::parse(&text)
    }

    #[test]
    fn all_good() {
        let r = build(&log("ok", "", "ok", ""), &Claims::parse(CLAIMS).unwrap());
        assert!(r.ok(), "{}", r.text);
        assert!(r
            .text
            .ends_with(&format!("{} passed, 0 failed\n", r.passed)));
        assert!(r.text.contains("needs MIGRATE_TO_DEV"));
        // 2 claimed + unexplained + 2 uffd + uffd-ran + bench + 4 module checks.
        assert_eq!(r.passed, 11);
        assert!(r.text.contains("0.50"), "{}", r.text); // min ratio 100/200
        assert!(r.text.contains("1.50"), "{}", r.text); // median ratio 300/200
        assert!(r.text.contains("0.25"), "{}", r.text); // read_unlocked vs C's read
    }

    #[test]
    fn claimed_failure_fails() {
        let r = build(
            &log("not ok", "", "ok", ""),
            &Claims::parse(CLAIMS).unwrap(),
        );
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("CLAIMED BUT FAIL"));
    }

    #[test]
    fn uffd_failure_fails() {
        let r = build(
            &log("ok", "", "not ok", ""),
            &Claims::parse(CLAIMS).unwrap(),
        );
        assert_eq!(r.failed, 1);
    }

    #[test]
    fn unexplained_c_pass_fails() {
        let r = build(
            &log("ok", "ok 4 t.x\n", "ok", ""),
            &Claims::parse(CLAIMS).unwrap(),
        );
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("UNEXPLAINED"));
    }

    #[test]
    fn kernel_warning_fails() {
        let r = build(
            &log("ok", "", "ok", "WARNING: CPU: 0 PID: 1 at mm/x.c:1\n"),
            &Claims::parse(CLAIMS).unwrap(),
        );
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("WARNING: CPU"));
    }

    #[test]
    fn empty_log_fails_everything_it_can() {
        let r = build(&SerialLog::default(), &Claims::parse(CLAIMS).unwrap());
        assert!(!r.ok());
        assert!(r.text.contains("claimed case t.a did not run"));
    }
}
