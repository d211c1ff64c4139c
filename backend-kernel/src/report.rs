//! The side-by-side report and the verdict of one VM run.
//!
//! The verdict is a list of checks, each passed, failed or skipped:
//!
//! * every claimed hmm-tests case passes with hmm_rs (a case both drivers
//!   skip is reported as skipped, never as passed; a skip by hmm_rs alone
//!   fails);
//! * every case of our userfaultfd test passes with hmm_rs;
//! * every hmm-tests case the C driver passes is either claimed or has a
//!   reason in the claims file;
//! * the VM reserved the huge pages the hugetlb cases need;
//! * the ioctl fuzzer ran against hmm_rs to its end with no contract
//!   violation, no hang and no error;
//! * the differential test (`tests-vm/hmm_diff.c`: both drivers loaded side
//!   by side, SNAPSHOT and READ of seeded random layouts) found no
//!   difference;
//! * the run completed, hmm_rs loaded and unloaded, its benchmark's data
//!   checks held, the paired benchmark (both drivers side by side) too, and
//!   a READ of fresh THP memory called `handle_mm_fault` at most once per
//!   PMD leaf (not on the debug kernel, which runs no benchmark), lockdep
//!   was still validating after hmm_rs's phases (when the kernel has it),
//!   and the kernel logged no splat in any phase other than the C driver's
//!   own (those are listed, not judged: they are not ours).
//!
//! The report ends with the line `N passed, M failed, K skipped` over those
//! checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bench;
use crate::claims::Claims;
use crate::fuzz::{self, FuzzRun};
use crate::klog;
use crate::log::{Section, SerialLog};
use crate::tap::{self, Outcome, TestResult};

/// Section-name prefix of the kernel's C driver (lib/test_hmm.ko).
pub const C_DRIVER: &str = "c";
/// Section-name prefix of hmm_rs.
pub const RS_DRIVER: &str = "rs";

/// The rendered report and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Human-readable report, ending with `N passed, M failed, K skipped`.
    pub text: String,
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
    /// Checks that did not run (claimed cases both drivers skipped).
    pub skipped: usize,
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
    skipped: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.into());
        }
    }

    fn skip(&mut self, what: impl Into<String>) {
        self.skipped.push(what.into());
    }
}

/// The value of `key=<n>` in an event's words.
fn event_field(event: &str, key: &str) -> Option<u64> {
    event
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Events `<what> <driver> ...` of `driver`, without the prefix.
fn driver_events<'a>(log: &'a SerialLog, what: &str, driver: &str) -> Vec<&'a str> {
    let prefix = format!("{what} {driver} ");
    log.events
        .iter()
        .filter_map(|e| e.strip_prefix(prefix.as_str()))
        .collect()
}

/// Huge pages the hugetlb cases need free (`compound`, `anon_write_hugetlbfs`
/// and the hugetlb userfaultfd case take one or two 2 MiB pages each, in
/// turn). With fewer, `compound` returns early and passes without testing.
const HUGEPAGES_NEEDED: u64 = 2;

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
            let both_skip = rr.is_some_and(|t| t.outcome == Outcome::Skip)
                && cr.is_some_and(|t| t.outcome == Outcome::Skip);
            let ok = rr.is_some_and(|t| t.outcome == Outcome::Pass);
            if both_skip {
                let why = rr.map_or("", |t| t.detail.as_str());
                checks.skip(format!(
                    "claimed case {name}: skipped by both drivers ({why})"
                ));
                note = "SKIPPED by both drivers: not counted as passed".into();
            } else {
                checks.check(ok, format!("claimed case {name}: hmm_rs {}", label(rr)));
            }
            if !ok && !both_skip {
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

    // ------------------------------------------------------------ our tests
    own_tests(
        log,
        "uffd",
        "userfaultfd test (tests-vm/uffd_read.c)",
        &mut out,
        &mut checks,
    );
    own_tests(
        log,
        "hostile",
        "hostile arguments (tests-vm/hostile.c; the expectations are hmm_rs's answers)",
        &mut out,
        &mut checks,
    );

    // ------------------------------------------------------------ huge pages
    let _ = writeln!(out, "\n== huge pages reserved for the hugetlb cases");
    for drv in [C_DRIVER, RS_DRIVER] {
        for e in driver_events(log, "HUGEPAGES", drv) {
            let _ = writeln!(out, "{drv}: {e}");
        }
    }
    let rs_free = driver_events(log, "HUGEPAGES", RS_DRIVER)
        .iter()
        .filter_map(|e| event_field(e, "free"))
        .min();
    checks.check(
        rs_free.is_some_and(|f| f >= HUGEPAGES_NEEDED),
        format!(
            "huge pages free before hmm_rs's tests: {} (need {HUGEPAGES_NEEDED}; without them \
             the hugetlb cases pass without testing)",
            rs_free.map_or("unknown".to_string(), |f| f.to_string())
        ),
    );

    // ------------------------------------------------------------ coherent memory
    let spm = log
        .events
        .iter()
        .find(|e| e.starts_with("SPM "))
        .and_then(|e| event_field(e, "ranges"));
    let _ = writeln!(
        out,
        "soft-reserved ranges for the device-coherent devices: {}",
        spm.map_or("unknown".to_string(), |n| n.to_string())
    );
    checks.check(
        spm.is_some_and(|n| n >= 2),
        "the VM has no soft-reserved memory for the device-coherent devices (their cases \
         would skip)",
    );

    // ------------------------------------------------------------ fuzzer
    fuzz_report(log, &mut out, &mut checks);
    diff_report(log, &mut out, &mut checks);

    // ------------------------------------------------------------ timings
    let debug = log
        .events
        .iter()
        .any(|e| e.starts_with("CONFIG ") && e.contains("flavor=debug"));
    timing_report(log, &mut out);
    let rs_bench = bench_sections(log, RS_DRIVER);
    if debug {
        let _ = writeln!(out, "(debug kernel: no benchmark)");
    } else {
        checks.check(
            !rs_bench.is_empty() && rs_bench.iter().all(|s| s.rc == Some(0)),
            "hmm_bench with hmm_rs failed (ioctl error or wrong data) or did not run",
        );
        paired_report(log, &mut out, &mut checks);
        fault_report(log, &mut out, &mut checks);
    }

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
    let _ = writeln!(
        out,
        "loaded: {}, unloaded: {}",
        if loaded { "yes" } else { "NO" },
        if loaded && !log.has_event(&format!("RMMOD-FAILED {RS_DRIVER}")) {
            "yes"
        } else {
            "NO"
        },
    );
    let lockdep = driver_events(log, "LOCKDEP", RS_DRIVER);
    if debug || !lockdep.is_empty() {
        let on = !lockdep.is_empty() && lockdep.iter().all(|e| e.trim() == "debug_locks=1");
        checks.check(
            on,
            "lockdep was not validating through hmm_rs's phases (no report, or it switched itself off)",
        );
        let _ = writeln!(
            out,
            "lockdep after hmm_rs's phases: {}",
            if lockdep.is_empty() {
                "no report".to_string()
            } else {
                lockdep.join(", ")
            }
        );
    }
    kernel_log_report(log, &mut out, &mut checks);

    // ------------------------------------------------------------ verdict
    if !checks.failed.is_empty() {
        let _ = writeln!(out, "\n== failed checks");
        for f in &checks.failed {
            let _ = writeln!(out, "  - {f}");
        }
    }
    if !checks.skipped.is_empty() {
        let _ = writeln!(out, "\n== skipped checks");
        for f in &checks.skipped {
            let _ = writeln!(out, "  - {f}");
        }
    }
    let (failed, skipped) = (checks.failed.len(), checks.skipped.len());
    let _ = writeln!(
        out,
        "\n{} passed, {} failed, {} skipped",
        checks.passed, failed, skipped
    );
    Report {
        text: out,
        passed: checks.passed,
        failed,
        skipped,
    }
}

/// One of our own TAP programs (section `<driver>.<program>`): every case
/// must pass with hmm_rs; the C driver's results are shown beside.
fn own_tests(log: &SerialLog, program: &str, title: &str, out: &mut String, checks: &mut Checks) {
    let cu = results(log, &format!("{C_DRIVER}.{program}"));
    let ru = results(log, &format!("{RS_DRIVER}.{program}"));
    let (cum, rum) = (by_name(&cu), by_name(&ru));
    let _ = writeln!(out, "\n== {title}");
    let _ = writeln!(out, "{:30}  {:6} {:6} detail", "test", "C", "hmm_rs");
    checks.check(
        !ru.is_empty(),
        format!("{program} produced no results with hmm_rs"),
    );
    for name in union(&cu, &ru) {
        let (cr, rr) = (cum.get(name), rum.get(name));
        let ok = rr.is_some_and(|t| t.outcome == Outcome::Pass);
        checks.check(ok, format!("{program} case {name}: hmm_rs {}", label(rr)));
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
}

/// Section of the differential test (both drivers loaded).
pub const DIFF_SECTION: &str = "both.diff";
/// Section of its self-check (two different devices compared).
pub const DIFF_SELFCHECK_SECTION: &str = "both.diff-selfcheck";

/// The differential test: one TAP result per layout; every difference is a
/// `#` line before its layout's result.
fn diff_report(log: &SerialLog, out: &mut String, checks: &mut Checks) {
    let _ = writeln!(
        out,
        "\n== differential test (tests-vm/hmm_diff.c: test_hmm and hmm_rs loaded together, \
         SNAPSHOT and READ of the same seeded layouts)"
    );
    let Some(sec) = log.section(DIFF_SECTION) else {
        let _ = writeln!(out, "did not run");
        checks.check(false, "the differential test did not run");
        return;
    };
    let r = tap::parse(sec.lines.iter().map(String::as_str));
    let differing: Vec<&TestResult> = r.iter().filter(|t| t.outcome != Outcome::Pass).collect();
    let _ = writeln!(
        out,
        "{} layouts compared, {} with differences",
        r.len(),
        differing.len()
    );
    // The diagnostics of the layouts that differ (and their descriptions).
    let mut pending: Vec<&str> = Vec::new();
    for line in &sec.lines {
        if let Some(d) = line.strip_prefix("# ") {
            pending.push(d);
        } else if line.starts_with("not ok ") {
            for d in pending.drain(..) {
                let _ = writeln!(out, "  {d}");
            }
            let _ = writeln!(out, "  {line}");
        } else if line.starts_with("ok ") {
            pending.clear();
        }
    }
    if let Some(summary) = sec.lines.iter().find(|l| l.starts_with("# compared: ")) {
        let _ = writeln!(out, "{}", &summary[2..]);
    }
    // The self-check compares two devices of the C driver, which answer
    // differently for pages on one of them: the test must see that.
    let selfcheck = log
        .section(DIFF_SELFCHECK_SECTION)
        .map(|s| tap::parse(s.lines.iter().map(String::as_str)))
        .unwrap_or_default();
    let caught = selfcheck
        .iter()
        .filter(|t| t.outcome == Outcome::Fail)
        .count();
    let _ = writeln!(
        out,
        "self-check (test_hmm's two devices compared with each other): {caught} of {} layouts \
         differ, as they must",
        selfcheck.len()
    );
    checks.check(
        caught > 0,
        "the differential test's self-check found no difference between two different devices",
    );
    checks.check(
        sec.rc == Some(0) && !r.is_empty() && differing.is_empty(),
        format!(
            "differential test: {} of {} layouts differ (exit status {:?})",
            differing.len(),
            r.len(),
            sec.rc
        ),
    );
}

/// The kernel log of every phase (`kernel-log.<phase>` sections, judged by
/// [`klog`]): any splat fails the run unless the phase is the C driver's
/// (`c.*`).
fn kernel_log_report(log: &SerialLog, out: &mut String, checks: &mut Checks) {
    let mut ours: Vec<(&str, &str)> = Vec::new();
    let mut theirs: Vec<(&str, &str)> = Vec::new();
    let (mut phases, mut notices) = (0, 0);
    for (name, s) in &log.sections {
        let Some(phase) = name.strip_prefix("kernel-log.") else {
            continue;
        };
        phases += 1;
        let judged = klog::judge(s.lines.iter().map(String::as_str));
        notices += judged.uffd_notices;
        let mine = !phase.starts_with(&format!("{C_DRIVER}."));
        for l in judged.splats {
            if mine {
                ours.push((phase, l));
            } else {
                theirs.push((phase, l));
            }
        }
    }
    checks.check(phases > 0, "no kernel log was captured");
    checks.check(
        ours.is_empty(),
        format!(
            "{} kernel splat line(s) outside the C driver's phases",
            ours.len()
        ),
    );
    let _ = writeln!(
        out,
        "kernel log: {phases} phases; splat lines outside the C driver's phases: {}; \
         in the C driver's phases (not judged): {}; expected handle_userfault notices \
         (DEBUG_VM, the *_read_efault cases): {notices}",
        ours.len(),
        theirs.len()
    );
    for (phase, l) in ours.iter().take(40) {
        let _ = writeln!(out, "    [{phase}] {l}");
    }
    for (phase, l) in theirs.iter().take(10) {
        let _ = writeln!(out, "    C driver [{phase}] {l}");
    }
}

/// The ioctl fuzzer: both drivers' outcome counts side by side; hmm_rs's run
/// must end, with no violation.
fn fuzz_report(log: &SerialLog, out: &mut String, checks: &mut Checks) {
    let sect = |drv: &str| log.section(&format!("{drv}.fuzz"));
    let parse = |s: Option<&Section>| {
        s.map(|s| fuzz::parse(s.lines.iter().map(String::as_str)))
            .unwrap_or_default()
    };
    let (cf, rf): (FuzzRun, FuzzRun) = (parse(sect(C_DRIVER)), parse(sect(RS_DRIVER)));
    let _ = writeln!(
        out,
        "\n== ioctl fuzzer (tests-vm/ioctl_fuzz.c), seed {}",
        rf.seed.as_deref().unwrap_or("?")
    );
    let summary = |r: &FuzzRun, s: Option<&Section>| match (r.calls, s) {
        (_, None) => "did not run".to_string(),
        (Some(n), Some(s)) => format!(
            "{n} calls in {:.1} s, {} violation(s), exit {}",
            r.elapsed_ms.unwrap_or(0) as f64 / 1e3,
            r.violations.len(),
            s.rc.map_or("none".to_string(), |rc| rc.to_string())
        ),
        (None, Some(_)) => "did not finish".to_string(),
    };
    let _ = writeln!(out, "C driver: {}", summary(&cf, sect(C_DRIVER)));
    let _ = writeln!(out, "hmm_rs:   {}", summary(&rf, sect(RS_DRIVER)));
    let mut keys: Vec<&(String, String)> = cf.counts.keys().chain(rf.counts.keys()).collect();
    keys.sort();
    keys.dedup();
    // The drivers make different numbers of calls in the same time, and the
    // concurrent stressors make the targets differ anyway: compare the share
    // of each command's calls, and mark the outcomes one driver never gave.
    let per_cmd = |r: &FuzzRun, cmd: &str| -> u64 {
        r.counts
            .iter()
            .filter(|((c, _), _)| c == cmd)
            .map(|(_, n)| n)
            .sum()
    };
    let share = |r: &FuzzRun, k: &(String, String)| {
        let n = r.counts.get(k).copied().unwrap_or(0);
        match per_cmd(r, &k.0) {
            0 => "-".to_string(),
            total => format!("{n} ({:.0}%)", 100.0 * n as f64 / total as f64),
        }
    };
    let _ = writeln!(
        out,
        "{:16} {:10} {:>14} {:>14}",
        "command", "outcome", "C", "hmm_rs"
    );
    for k in keys {
        let (c, r) = (cf.counts.contains_key(k), rf.counts.contains_key(k));
        let mark = match (c, r) {
            (true, false) => "  only C",
            (false, true) => "  only hmm_rs",
            _ => "",
        };
        let _ = writeln!(
            out,
            "{:16} {:10} {:>14} {:>14}{mark}",
            k.0,
            k.1,
            share(&cf, k),
            share(&rf, k)
        );
    }
    for v in cf.violations.iter().take(5) {
        let _ = writeln!(out, "    C driver: {v}");
    }
    for v in rf.violations.iter().chain(&rf.errors).take(20) {
        let _ = writeln!(out, "    hmm_rs: {v}");
    }
    let ran = sect(RS_DRIVER).is_some_and(|s| s.rc == Some(0));
    checks.check(
        ran && rf.calls.is_some_and(|n| n > 0) && rf.violations.is_empty() && rf.errors.is_empty(),
        format!(
            "ioctl fuzzer with hmm_rs: {}",
            summary(&rf, sect(RS_DRIVER))
        ),
    );
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

/// One operation's timings over all passes of one driver.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpTimes {
    op: String,
    pages: u64,
    /// The fastest call of all passes.
    min_ns: u64,
    /// The median of the passes' medians.
    median_ns: u64,
    /// Every call of every pass, sorted (empty from an older hmm_bench).
    samples: Vec<u64>,
    /// Each pass's median, by pass (the section name's suffix).
    pass_medians: BTreeMap<String, u64>,
}

impl OpTimes {
    /// The interquartile range of all calls as a share of their median.
    fn iqr(&self) -> Option<f64> {
        let q1 = bench::quantile(&self.samples, 0.25)?;
        let q2 = bench::quantile(&self.samples, 0.5)?;
        let q3 = bench::quantile(&self.samples, 0.75)?;
        (q2 > 0).then(|| (q3 - q1) as f64 / q2 as f64)
    }
}

/// Timings of `driver` over all its passes: per operation the fastest call,
/// the median of the passes' medians, every call and each pass's median.
fn section_timings(log: &SerialLog, driver: &str) -> Vec<OpTimes> {
    let prefix = format!("{driver}.bench");
    let mut merged: Vec<OpTimes> = Vec::new();
    for (name, s) in log.sections.iter() {
        if *name != prefix && !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let pass = name[prefix.len()..].trim_start_matches('.').to_string();
        for t in bench::parse(s.lines.iter().map(String::as_str)) {
            let i = match merged.iter().position(|m| m.op == t.op) {
                Some(i) => i,
                None => {
                    merged.push(OpTimes {
                        op: t.op.clone(),
                        pages: t.pages,
                        min_ns: t.min_ns,
                        median_ns: 0,
                        samples: Vec::new(),
                        pass_medians: BTreeMap::new(),
                    });
                    merged.len() - 1
                }
            };
            let m = &mut merged[i];
            m.min_ns = m.min_ns.min(t.min_ns);
            m.samples.extend_from_slice(&t.samples);
            m.pass_medians.insert(pass.clone(), t.median_ns);
        }
    }
    for m in &mut merged {
        m.samples.sort_unstable();
        let mut medians: Vec<u64> = m.pass_medians.values().copied().collect();
        medians.sort_unstable();
        m.median_ns = medians[medians.len() / 2];
    }
    merged
}

/// The timing table: hmm_rs against the C driver, fastest call and median,
/// with the spread (each driver's interquartile range over all its calls,
/// and the range of the per-pass ratios of medians: the drivers take turns,
/// so the two medians of one pass saw the same machine).
fn timing_report(log: &SerialLog, out: &mut String) {
    let ct = section_timings(log, C_DRIVER);
    let rt = section_timings(log, RS_DRIVER);
    let _ = writeln!(
        out,
        "\n== timing (same VM, same buffer, drivers taking turns; fastest call, median of passes)"
    );
    let _ = writeln!(
        out,
        "{:18} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>6} {:>6}  per-pass ratio of medians",
        "operation",
        "pages",
        "C min",
        "rs min",
        "ratio",
        "C med",
        "rs med",
        "ratio",
        "C IQR",
        "rs IQR"
    );
    let ratio = |a: u64, b: Option<u64>| match b {
        Some(b) if b > 0 => format!("{:.2}", a as f64 / b as f64),
        _ => "-".into(),
    };
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
    let (mut below, mut above, mut mixed) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rt {
        // The C driver has no lock-dropping READ: compare with its READ.
        let c_op = match r.op.strip_prefix("read_unlocked_") {
            Some(kind) => format!("read_{kind}"),
            None => r.op.clone(),
        };
        let c = ct.iter().find(|c| c.op == c_op);
        let mut pass_ratios: Vec<f64> = c
            .map(|c| {
                r.pass_medians
                    .iter()
                    .filter_map(|(pass, &rm)| {
                        let cm = *c.pass_medians.get(pass)?;
                        (cm > 0).then(|| rm as f64 / cm as f64)
                    })
                    .collect()
            })
            .unwrap_or_default();
        pass_ratios.sort_by(f64::total_cmp);
        let spread = match (pass_ratios.first(), pass_ratios.last()) {
            (Some(lo), Some(hi)) => {
                if *hi < 1.0 {
                    below.push(r.op.as_str());
                } else if *lo > 1.0 {
                    above.push(r.op.as_str());
                } else {
                    mixed.push(r.op.as_str());
                }
                format!("{lo:.2}..{hi:.2} over {} passes", pass_ratios.len())
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:18} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>6} {:>6}  {}",
            r.op,
            r.pages,
            c.map_or("-".into(), |c| ms(c.min_ns)),
            ms(r.min_ns),
            ratio(r.min_ns, c.map(|c| c.min_ns)),
            c.map_or("-".into(), |c| ms(c.median_ns)),
            ms(r.median_ns),
            ratio(r.median_ns, c.map(|c| c.median_ns)),
            pct(c.and_then(OpTimes::iqr)),
            pct(r.iqr()),
            spread,
        );
    }
    let _ = writeln!(
        out,
        "(ratio = hmm_rs / C; below 1 is faster. IQR: interquartile range of all calls of all \
         passes, as a share of their median. read_unlocked_* is hmm_rs's lock-dropping READ, \
         compared with the C driver's READ. READ is dominated by copying the data twice; \
         SNAPSHOT is the range walk alone.)"
    );
    let _ = writeln!(
        out,
        "hmm_rs faster in every pass: {}; slower in every pass: {}; within the spread: {}",
        names(&below),
        names(&above),
        names(&mixed)
    );
}

/// Section of the paired benchmark: both drivers loaded, calls alternating.
const PAIRED_SECTION: &str = "both.bench-paired";

/// The paired timing: both drivers loaded side by side, each call of the C
/// driver followed or preceded by the same call of hmm_rs on the same
/// buffer, so each pair saw the same machine. Per operation the median of
/// the per-pair ratios, its confidence interval and the interquartile range
/// of the ratios: the margin is the median's distance from 1, the spread
/// the interval around it.
fn paired_report(log: &SerialLog, out: &mut String, checks: &mut Checks) {
    let Some(section) = log.section(PAIRED_SECTION) else {
        let _ = writeln!(out, "\n(no paired timing in this run)");
        return;
    };
    checks.check(
        section.rc == Some(0),
        "the paired hmm_bench failed (ioctl error or wrong data)",
    );
    let pairs = bench::parse_pairs(section.lines.iter().map(String::as_str));
    let _ = writeln!(
        out,
        "\n== paired timing (both drivers loaded, each call of one next to the same call of the \
         other, on the same buffer; ratio = hmm_rs / C per pair)"
    );
    let _ = writeln!(
        out,
        "{:18} {:>6} {:>9} {:>9} {:>7} {:>15} {:>15}",
        "operation", "pairs", "C med", "rs med", "ratio", "95% CI", "IQR of ratios"
    );
    let (mut clear, mut unclear) = (Vec::new(), Vec::new());
    for p in &pairs {
        let r = p.ratios();
        let (mut a, mut b) = (p.a.clone(), p.b.clone());
        a.sort_unstable();
        b.sort_unstable();
        let med = |v: &[u64]| bench::quantile(v, 0.5).map_or("-".into(), ms);
        let ci = bench::median_ci95(&r);
        let q = |x: f64| bench::quantile_f(&r, x);
        let _ = writeln!(
            out,
            "{:18} {:>6} {:>9} {:>9} {:>7} {:>15} {:>15}",
            p.op,
            r.len(),
            med(&a),
            med(&b),
            bench::median_f(&r).map_or("-".into(), |m| format!("{m:.2}")),
            ci.map_or("-".into(), |(lo, hi)| format!("{lo:.2}..{hi:.2}")),
            match (q(0.25), q(0.75)) {
                (Some(lo), Some(hi)) => format!("{lo:.2}..{hi:.2}"),
                _ => "-".into(),
            }
        );
        match ci {
            Some((_, hi)) if hi < 1.0 => clear.push(p.op.as_str()),
            _ => unclear.push(p.op.as_str()),
        }
    }
    let _ = writeln!(
        out,
        "(95% CI: distribution-free interval of the median ratio, from the order statistics.) \
         hmm_rs faster, the whole interval below 1: {}; interval reaching 1: {}",
        names(&clear),
        names(&unclear)
    );
}

/// The fault counts of a READ of fresh memory, both drivers; hmm_rs must
/// fault each PMD leaf of a THP READ at most once.
fn fault_report(log: &SerialLog, out: &mut String, checks: &mut Checks) {
    let faults = |driver: &str| -> Vec<bench::FaultCount> {
        bench_sections(log, driver)
            .iter()
            .flat_map(|s| bench::parse_faults(s.lines.iter().map(String::as_str)))
            .collect()
    };
    let (cf, rf) = (faults(C_DRIVER), faults(RS_DRIVER));
    let _ = writeln!(
        out,
        "\n== handle_mm_fault calls of one READ of fresh memory (first pass; the READ's thread's \
         minor faults, and hmm_rs's own count)"
    );
    let _ = writeln!(
        out,
        "{:8} {:16} {:>6} {:>10} {:>14} {:>13}",
        "driver", "operation", "pages", "PMD leaves", "calls (minflt)", "module count"
    );
    let mut shown: Vec<(&str, &str)> = Vec::new();
    for (driver, f) in cf
        .iter()
        .map(|f| ("C", f))
        .chain(rf.iter().map(|f| ("hmm_rs", f)))
    {
        if shown.contains(&(driver, f.op.as_str())) {
            continue;
        }
        shown.push((driver, f.op.as_str()));
        let _ = writeln!(
            out,
            "{:8} {:16} {:>6} {:>10} {:>14} {:>13}",
            driver,
            f.op,
            f.pages,
            f.pmd_leaves,
            f.minflt,
            f.module_calls.map_or("-".into(), |n| n.to_string())
        );
    }
    let thp: Vec<&bench::FaultCount> = rf.iter().filter(|f| f.op == "read_fresh_thp").collect();
    if thp.is_empty() {
        checks.check(
            false,
            "hmm_bench printed no fault count for hmm_rs's THP READ",
        );
    } else if thp.iter().any(|f| f.pmd_leaves == 0) {
        checks
            .skip("the fresh THP READ got no PMD leaf (no THP in the VM): fault count not checked");
    } else {
        let bad: Vec<String> = thp
            .iter()
            .filter(|f| f.module_calls.is_none_or(|n| n > f.pmd_leaves))
            .map(|f| {
                format!(
                    "{} calls for {} PMD leaves",
                    f.module_calls.map_or("no".into(), |n| n.to_string()),
                    f.pmd_leaves
                )
            })
            .collect();
        checks.check(
            bad.is_empty(),
            format!(
                "hmm_rs faulted a fresh THP READ more than once per PMD leaf: {}",
                bad.join("; ")
            ),
        );
    }
}

/// Operation names joined by commas, or "none".
fn names(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMS: &str = "claim t.a\nclaim t.s\nlacks t.m needs MIGRATE_TO_DEV\n";

    /// A log whose parts can be varied: hmm_rs's `t.a` and uffd outcomes, an
    /// extra C case, kernel splats in hmm_rs's phase and in the C driver's,
    /// the events and the end of the fuzzer's output.
    struct Log<'a> {
        rs_a: &'a str,
        extra_c: &'a str,
        rs_uffd: &'a str,
        rs_splat: &'a str,
        c_splat: &'a str,
        events: &'a str,
        rs_fuzz_end: &'a str,
        c_skips_s: bool,
        diff: &'a str,
        rs_faults: &'a str,
    }

    impl Default for Log<'_> {
        fn default() -> Self {
            Log {
                rs_a: "ok",
                extra_c: "",
                rs_uffd: "ok",
                rs_splat: "",
                c_splat: "",
                events: "@@HMM-HUGEPAGES rs free=8 total=8\n@@HMM-SPM ranges=2\n",
                rs_fuzz_end:
                    "fuzz-done calls=10 elapsed_ms=5 violations=0\n@@HMM-SECTION END rc=0\n",
                c_skips_s: true,
                diff: "# layout 1: empty\nok 1 layout_1\n# layout 2: written\nok 2 layout_2\n\
                       @@HMM-SECTION END rc=0\n",
                rs_faults:
                    "faults read_fresh_thp pages=2048 pmd_leaves=4 minflt=4 module_calls=4\n",
            }
        }
    }

    impl Log<'_> {
        fn parse(&self) -> SerialLog {
            let Log {
                rs_a,
                extra_c,
                rs_uffd,
                rs_splat,
                c_splat,
                events,
                rs_fuzz_end,
                c_skips_s,
                diff,
                rs_faults,
            } = self;
            let c_s = if *c_skips_s {
                "ok 3 t.s # SKIP no huge pages"
            } else {
                "ok 3 t.s"
            };
            let text = format!(
                "{events}\
                 @@HMM-SECTION BEGIN kernel-log.boot\n@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN c.hmm-tests\nok 1 t.a\nok 2 t.m\n{c_s}\n{extra_c}\
                 @@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN c.uffd\nok 1 u.efault\nnot ok 2 u.unlocked\n@@HMM-SECTION END rc=1\n\
                 @@HMM-SECTION BEGIN kernel-log.c.uffd\n{c_splat}@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN c.bench\nbench read_4k pages=8 rounds=1 min_ns=200 median_ns=200\n\
                 faults read_fresh_thp pages=2048 pmd_leaves=4 minflt=256 module_calls=-1\n\
                 @@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN rs.hmm-tests\n{rs_a} 1 t.a\nnot ok 2 t.m\nok 3 t.s # SKIP no huge pages\n\
                 @@HMM-SECTION END rc=1\n\
                 @@HMM-SECTION BEGIN rs.uffd\nok 1 u.efault\n{rs_uffd} 2 u.unlocked\n@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN kernel-log.rs.uffd\n{rs_splat}@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN c.hostile\nnot ok 1 h.enotty\n@@HMM-SECTION END rc=1\n\
                 @@HMM-SECTION BEGIN rs.hostile\nok 1 h.enotty\n@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN rs.fuzz\nfuzz-seed 7\nfuzz-result READ EINVAL 6\nfuzz-result UNKNOWN ENOTTY 4\n\
                 {rs_fuzz_end}\
                 @@HMM-SECTION BEGIN c.fuzz\nfuzz-seed 7\nfuzz-result READ EINVAL 6\nfuzz-result UNKNOWN EINVAL 4\n\
                 fuzz-done calls=10 elapsed_ms=5 violations=0\n@@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN both.diff\n{diff}\
                 @@HMM-SECTION BEGIN both.diff-selfcheck\n# x\nnot ok 1 layout_1\n@@HMM-SECTION END rc=1\n\
                 @@HMM-SECTION BEGIN rs.bench.1\nbench read_4k pages=8 rounds=1 min_ns=100 median_ns=300\n\
                 {rs_faults}\
                 @@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN rs.bench.2\nbench read_4k pages=8 rounds=1 min_ns=900 median_ns=900\n\
                 @@HMM-SECTION END rc=0\n\
                 @@HMM-SECTION BEGIN rs.bench.3\nbench read_4k pages=8 rounds=1 min_ns=300 median_ns=300\n\
                 bench read_unlocked_4k pages=8 rounds=1 min_ns=50 median_ns=50\n\
                 @@HMM-SECTION END rc=0\n\
                 @@HMM-HARNESS TEST-END rc=0\n"
            );
            SerialLog::parse(&text)
        }

        fn report(&self) -> Report {
            build(&self.parse(), &Claims::parse(CLAIMS).unwrap())
        }
    }

    #[test]
    fn all_good() {
        let r = Log::default().report();
        assert!(r.ok(), "{}", r.text);
        assert!(r
            .text
            .ends_with(&format!("{} passed, 0 failed, 1 skipped\n", r.passed)));
        assert!(r.text.contains("needs MIGRATE_TO_DEV"));
        // 1 claimed + unexplained + 2 uffd + uffd-ran + 1 hostile +
        // hostile-ran + huge pages + coherent memory + fuzz + diff + diff
        // self-check + bench + THP fault count + 3 module checks
        // (completed, loaded, unloaded) + kernel log captured + no splat.
        assert_eq!(r.passed, 19, "{}", r.text);
        assert!(r.text.contains("2 layouts compared, 0 with differences"));
        assert!(r.text.contains("0.50"), "{}", r.text); // min ratio 100/200
        assert!(r.text.contains("1.50"), "{}", r.text); // median ratio 300/200
        assert!(r.text.contains("0.25"), "{}", r.text); // read_unlocked vs C's read
                                                        // The fuzzer's counts side by side, as shares of each command's
                                                        // calls; outcomes only one driver gave are marked.
        assert!(r.text.contains("6 (100%)"), "{}", r.text);
        assert!(r.text.contains("only hmm_rs"), "{}", r.text);
        assert!(r.text.contains("only C"), "{}", r.text);
    }

    #[test]
    fn a_case_both_drivers_skip_is_skipped_not_passed() {
        let r = Log::default().report();
        assert_eq!(r.skipped, 1);
        assert!(r.text.contains("claimed case t.s: skipped by both drivers"));
        // A skip by hmm_rs alone fails.
        let r = Log {
            c_skips_s: false,
            ..Log::default()
        }
        .report();
        assert_eq!((r.failed, r.skipped), (1, 0), "{}", r.text);
    }

    #[test]
    fn claimed_failure_fails() {
        let r = Log {
            rs_a: "not ok",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("CLAIMED BUT FAIL"));
    }

    #[test]
    fn uffd_failure_fails() {
        let r = Log {
            rs_uffd: "not ok",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
    }

    #[test]
    fn unexplained_c_pass_fails() {
        let r = Log {
            extra_c: "ok 4 t.x\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("UNEXPLAINED"));
    }

    #[test]
    fn a_splat_in_any_of_our_phases_fails_and_the_c_drivers_is_listed() {
        let r = Log {
            rs_splat: "WARNING: CPU: 0 PID: 1 at mm/x.c:1\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("[rs.uffd] WARNING: CPU"), "{}", r.text);
        let r = Log {
            c_splat: "BUG: KASAN: slab-out-of-bounds\n",
            ..Log::default()
        }
        .report();
        assert!(r.ok(), "{}", r.text);
        assert!(
            r.text.contains("C driver [c.uffd] BUG: KASAN"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_difference_between_the_drivers_fails_and_is_shown() {
        let r = Log {
            diff: "# layout 1: empty\nok 1 layout_1\n# layout 2: written +fork\n\
                   # snapshot (page) at 5: A 2 (0x2), B 1 (0x1)\nnot ok 2 layout_2\n\
                   @@HMM-SECTION END rc=1\n",
            ..Log::default()
        }
        .report();
        assert!(!r.ok(), "{}", r.text);
        assert!(r.text.contains("differential test: 1 of 2 layouts differ"));
        assert!(r
            .text
            .contains("  snapshot (page) at 5: A 2 (0x2), B 1 (0x1)"));
        assert!(r.text.contains("  layout 2: written +fork"));
        assert!(!r.text.contains("  layout 1: empty"));
    }

    #[test]
    fn missing_huge_pages_fail() {
        let r = Log {
            events: "@@HMM-HUGEPAGES rs free=0 total=0\n@@HMM-SPM ranges=2\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
        assert!(r.text.contains("huge pages free before hmm_rs's tests: 0"));
        let r = Log {
            events: "@@HMM-SPM ranges=2\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1);
    }

    #[test]
    fn missing_coherent_memory_fails() {
        let r = Log {
            events: "@@HMM-HUGEPAGES rs free=8 total=8\n@@HMM-SPM ranges=0\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
        assert!(r.text.contains("no soft-reserved memory"));
    }

    #[test]
    fn an_unfinished_or_violating_fuzz_run_fails() {
        let r = Log {
            rs_fuzz_end: "fuzz-hang last_call=READ addr=0x0 npages=1\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
        let r = Log {
            rs_fuzz_end: "fuzz-violation READ ok with cpages 0 != npages 1\n\
                          fuzz-done calls=10 elapsed_ms=5 violations=1\n@@HMM-SECTION END rc=1\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
    }

    #[test]
    fn debug_kernel_needs_lockdep_on_and_runs_no_bench() {
        let events = "@@HMM-HUGEPAGES rs free=8 total=8\n@@HMM-SPM ranges=2\n\
                      @@HMM-CONFIG flavor=debug benches=0\n";
        let r = Log {
            events,
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
        assert!(r.text.contains("lockdep was not validating"));
        let on = format!("{events}@@HMM-LOCKDEP rs debug_locks=1\n");
        let r = Log {
            events: &on,
            ..Log::default()
        }
        .report();
        assert!(r.ok(), "{}", r.text);
        assert!(r.text.contains("debug kernel: no benchmark"));
        let off = format!("{on}@@HMM-LOCKDEP rs debug_locks=0\n");
        let r = Log {
            events: &off,
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
    }

    #[test]
    fn more_than_one_fault_per_thp_leaf_fails_and_no_thp_skips() {
        let r = Log {
            rs_faults:
                "faults read_fresh_thp pages=2048 pmd_leaves=4 minflt=256 module_calls=256\n",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
        assert!(r.text.contains("256 calls for 4 PMD leaves"), "{}", r.text);
        let r = Log {
            rs_faults:
                "faults read_fresh_thp pages=2048 pmd_leaves=0 minflt=2048 module_calls=2048\n",
            ..Log::default()
        }
        .report();
        assert!(r.ok(), "{}", r.text);
        assert!(r.text.contains("no THP in the VM"), "{}", r.text);
        let r = Log {
            rs_faults: "",
            ..Log::default()
        }
        .report();
        assert_eq!(r.failed, 1, "{}", r.text);
        // Both drivers' counts are shown.
        let r = Log::default().report();
        assert!(
            r.text.contains(
                "C        read_fresh_thp     2048          4            256             -"
            ),
            "{}",
            r.text
        );
    }

    #[test]
    fn spread_over_passes_is_reported() {
        let text = "@@HMM-SECTION BEGIN c.bench.1\n\
                    bench snapshot_4k pages=8 rounds=4 min_ns=100 median_ns=200 samples_ns=100,200,200,400\n\
                    @@HMM-SECTION END rc=0\n\
                    @@HMM-SECTION BEGIN rs.bench.1\n\
                    bench snapshot_4k pages=8 rounds=4 min_ns=50 median_ns=100 samples_ns=50,100,100,100\n\
                    @@HMM-SECTION END rc=0\n\
                    @@HMM-SECTION BEGIN c.bench.2\n\
                    bench snapshot_4k pages=8 rounds=1 min_ns=300 median_ns=300 samples_ns=300\n\
                    @@HMM-SECTION END rc=0\n\
                    @@HMM-SECTION BEGIN rs.bench.2\n\
                    bench snapshot_4k pages=8 rounds=1 min_ns=240 median_ns=240 samples_ns=240\n\
                    @@HMM-SECTION END rc=0\n";
        let log = SerialLog::parse(text);
        let c = section_timings(&log, C_DRIVER);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].samples, vec![100, 200, 200, 300, 400]);
        assert_eq!(c[0].min_ns, 100);
        // Median of the pass medians 200 and 300 (the upper one).
        assert_eq!(c[0].median_ns, 300);
        // IQR (q1 200, q3 300) over the median 200.
        assert_eq!(c[0].iqr(), Some(0.5));
        let mut out = String::new();
        timing_report(&log, &mut out);
        // Per-pass ratios 100/200 and 240/300.
        assert!(out.contains("0.50..0.80 over 2 passes"), "{out}");
        assert!(out.contains("50%"), "{out}");
        assert!(
            out.contains("hmm_rs faster in every pass: snapshot_4k;"),
            "{out}"
        );
    }

    #[test]
    fn paired_timing_reports_the_median_ratio_and_its_interval() {
        let text = "@@HMM-SECTION BEGIN both.bench-paired\n\
                    pair snapshot_4k pages=8 rounds=8 a_ns=100,100,100,100,100,100,100,100 \
                    b_ns=50,60,70,80,55,65,75,85\n\
                    pair read_4k pages=8 rounds=6 a_ns=100,100,100,100,100,100 \
                    b_ns=50,90,95,105,110,120\n\
                    @@HMM-SECTION END rc=0\n";
        let mut out = String::new();
        let mut checks = Checks::default();
        paired_report(&SerialLog::parse(text), &mut out, &mut checks);
        assert_eq!((checks.passed, checks.failed.len()), (1, 0));
        // Ratios 0.50 .. 0.85: median 0.675, CI ranks 1 and 8.
        assert!(out.contains("0.68"), "{out}");
        assert!(out.contains("0.50..0.85"), "{out}");
        assert!(
            out.contains("whole interval below 1: snapshot_4k;"),
            "{out}"
        );
        assert!(out.contains("interval reaching 1: read_4k"), "{out}");
        let mut out = String::new();
        paired_report(&SerialLog::default(), &mut out, &mut checks);
        assert!(out.contains("no paired timing"), "{out}");
    }

    #[test]
    fn empty_log_fails_everything_it_can() {
        let r = build(&SerialLog::default(), &Claims::parse(CLAIMS).unwrap());
        assert!(!r.ok());
        assert!(r.text.contains("claimed case t.a did not run"));
        assert!(r.text.contains("no kernel log was captured"));
    }
}
