//! `hmm-sim`: the simulator's main job. Run with no arguments to mirror a
//! 1 GiB userfaultfd-backed region into a simulated device while CPU threads
//! invalidate it; `hmm-sim --help` lists the options.
//!
//! The scenario lives in `backend_sim::demo`; this binary only parses the
//! command line (clap), shows progress (indicatif) and prints the report,
//! as text or, with `--json`, as one JSON object for scripts. Exit status:
//! 0 if the coherence and data checks passed, 1 if not, 2 for bad
//! arguments.

use std::process::ExitCode;
use std::time::Duration;

use backend_sim::demo::{run, Config, PageSize, Report};
use clap::{Parser, ValueEnum};
use hmm_core::Policy;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Mirror a userfaultfd-backed region into a simulated device.
///
/// The region's pages are supplied by a userfaultfd handler thread
/// (post-copy migration), faulted into the device through hmm-core's
/// lock-dropping entry point while CPU threads invalidate parts of it
/// (MADV_DONTNEED, swap-out, migration, mprotect, THP split). Ends with a
/// coherence check (device page table vs CPU page tables) and a data check
/// (every byte read back through the device).
#[derive(Debug, Parser)]
#[command(name = "hmm-sim", version)]
struct Cli {
    /// After a fault drops the mmap lock, resume the walk where it stopped,
    /// or restart it from the range start like the kernel patch.
    #[arg(long, value_enum, default_value_t = CliPolicy::Resume)]
    policy: CliPolicy,
    /// Region size, a multiple of 2M: e.g. 64M, 1G (at most 16G).
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    size: u64,
    /// 4 KiB pages resolved one per fault, or THP memory or 2 MiB hugetlb
    /// pages resolved 2 MiB per fault.
    #[arg(long, value_enum, default_value_t = CliPageSize::Small)]
    page_size: CliPageSize,
    /// Handler latency per 4 KiB page supplied, in microseconds (0: as fast
    /// as the handler thread can copy; waits under 1 ms spin, longer ones
    /// sleep).
    #[arg(long, default_value_t = 0)]
    latency_us: u64,
    /// Seed of the data pattern and of the invalidators' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU threads invalidating the region.
    #[arg(long, default_value_t = 2)]
    invalidators: usize,
    /// Device threads faulting the region.
    #[arg(long, default_value_t = 2)]
    device_threads: usize,
    /// Pages per range fault call.
    #[arg(long = "chunk", value_name = "PAGES", default_value_t = 512)]
    chunk_pages: u64,
    /// Device windows completed per invalidation, per invalidator.
    #[arg(long, default_value_t = 2)]
    invalidate_every: u64,
    /// Print the report as one JSON object (and no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CliPolicy {
    /// Resume where the walk stopped (linear work).
    Resume,
    /// Restart from the range start (the seed series).
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CliPageSize {
    /// 4 KiB anonymous pages.
    #[value(name = "4k", alias = "small")]
    Small,
    /// THP-eligible anonymous memory.
    Thp,
    /// hugetlb with 2 MiB pages.
    #[value(alias = "2m")]
    Hugetlb,
}

/// A size with an optional K, M or G suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("bad size suffix in '{s}' (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size '{s}'"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("size '{s}' too large"))
}

impl Cli {
    fn config(&self) -> Config {
        Config {
            policy: match self.policy {
                CliPolicy::Resume => Policy::Resume,
                CliPolicy::Restart => Policy::Restart,
            },
            size: self.size,
            page_size: match self.page_size {
                CliPageSize::Small => PageSize::Small,
                CliPageSize::Thp => PageSize::Thp,
                CliPageSize::Hugetlb => PageSize::Hugetlb,
            },
            latency_us: self.latency_us,
            seed: self.seed,
            invalidators: self.invalidators,
            device_threads: self.device_threads,
            chunk_pages: self.chunk_pages,
            invalidate_every: self.invalidate_every,
        }
    }
}

/// The report as one JSON object.
fn json(r: &Report) -> serde_json::Value {
    let s = &r.stats;
    serde_json::json!({
        "ok": r.ok(),
        "policy": if r.policy == Some(Policy::Restart) { "restart" } else { "resume" },
        "page_size": r.page_size,
        "size_bytes": r.size,
        "latency_us": r.latency_us,
        "device_threads": r.device_threads,
        "invalidators": r.invalidators,
        "seed": r.seed,
        "pages": r.pages,
        "uffd_faults": r.uffd_faults,
        "stats": {
            "walks": s.walks,
            "pages_filled": s.pages_filled,
            "leaves": s.leaves,
            "faults": s.faults,
            "tried_faults": s.tried_faults,
            "lock_drops": s.lock_drops,
            "resumes": s.resumes,
            "restarts": s.restarts,
            "migration_waits": s.migration_waits,
        },
        "invalidations": r.invalidations,
        "notifier_invalidations": r.notifier_invalidations,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "coherent_entries": r.coherent_entries,
        "coherence_error": r.coherence_error,
        "data_ok_pages": r.data_ok_pages,
        "data_error": r.data_error,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = cli.config();
    if let Err(e) = cfg.check() {
        eprintln!("hmm-sim: error: {e}");
        eprintln!("Try 'hmm-sim --help' for the options.");
        return ExitCode::from(2);
    }
    // indicatif draws on a terminal and stays silent otherwise (and with
    // --json, whose output is for scripts).
    let pages = cfg.size / hmm_core::PAGE_SIZE;
    let bar = if cli.json {
        ProgressBar::with_draw_target(Some(pages), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(pages)
    };
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {percent:>3}%  {pos}/{len} pages  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = run(&cfg, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            if cli.json {
                println!("{}", json(&report));
            } else {
                print!("{report}");
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hmm-sim: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("hmm-sim").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let cfg = cli.config();
        cfg.check()?;
        Ok(cfg)
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
        let c = parse(&[
            "--policy",
            "restart",
            "--size=64M",
            "--page-size",
            "thp",
            "--latency-us",
            "5",
            "--seed",
            "9",
            "--invalidators",
            "0",
        ])
        .unwrap();
        assert_eq!(c.policy, Policy::Restart);
        assert_eq!(c.size, 64 << 20);
        assert_eq!(c.page_size, PageSize::Thp);
        assert_eq!((c.latency_us, c.seed, c.invalidators), (5, 9, 0));
        assert_eq!(
            parse(&["--page-size", "2m"]).unwrap().page_size,
            PageSize::Hugetlb
        );
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        for (args, needle) in [
            (&["--bogus"][..], "unexpected argument"),
            (
                &["--policy", "sideways"][..],
                "possible values: resume, restart",
            ),
            (&["--size", "3M"][..], "multiple of 2M"),
            (&["--size", "12Q"][..], "suffix"),
            (
                &["--page-size", "1g"][..],
                "possible values: 4k, thp, hugetlb",
            ),
            (&["--seed"][..], "a value is required"),
            (&["--latency-us", "x"][..], "invalid digit"),
            (&["--chunk", "0"][..], "--chunk"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn json_report_has_the_checks() {
        let v = json(&Report::default());
        assert_eq!(v["ok"], true);
        assert_eq!(v["policy"], "resume");
        assert!(v["stats"]["lock_drops"].is_u64());
    }
}
