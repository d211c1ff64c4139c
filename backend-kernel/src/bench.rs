//! What `tests-vm/hmm_bench.c` prints: timings,
//! `bench <op> pages=<n> rounds=<r> min_ns=<ns> median_ns=<ns> samples_ns=<ns>,...`,
//! fault counts of a READ of fresh memory,
//! `faults <op> pages=<n> pmd_leaves=<n> minflt=<n> module_calls=<n>`,
//! and, in paired mode (both drivers loaded, calls alternating),
//! `pair <op> pages=<n> rounds=<r> a_ns=<ns>,... b_ns=<ns>,...`.

/// One timed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Operation and mapping kind, e.g. `read_4k`, `snapshot_thp`.
    pub op: String,
    /// Pages per call.
    pub pages: u64,
    /// Calls timed.
    pub rounds: u64,
    /// Fastest call.
    pub min_ns: u64,
    /// Median call.
    pub median_ns: u64,
    /// Every call's time, sorted (empty from an older hmm_bench).
    pub samples: Vec<u64>,
}

/// The fault count of one READ of fresh memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultCount {
    /// `read_fresh_thp` or `read_fresh_4k`.
    pub op: String,
    /// Pages read.
    pub pages: u64,
    /// PMD leaves a SNAPSHOT saw after the READ.
    pub pmd_leaves: u64,
    /// `handle_mm_fault` calls of the ioctl's thread (its minor-fault count).
    pub minflt: u64,
    /// The driver's own count of its `handle_mm_fault` calls (`None` for a
    /// driver without one).
    pub module_calls: Option<u64>,
}

/// Paired calls of one operation: `a[i]` and `b[i]` ran back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairs {
    /// Operation and mapping kind, e.g. `snapshot_4k`.
    pub op: String,
    /// Pages per call.
    pub pages: u64,
    /// Driver A's calls (the C driver), in call order.
    pub a: Vec<u64>,
    /// Driver B's calls (hmm_rs), in call order.
    pub b: Vec<u64>,
}

impl Pairs {
    /// `b[i] / a[i]` for every pair, sorted.
    pub fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .a
            .iter()
            .zip(&self.b)
            .filter(|(&a, _)| a > 0)
            .map(|(&a, &b)| b as f64 / a as f64)
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }
}

/// A distribution-free confidence interval of at least 95% for the median
/// of `sorted` (ascending): the order statistics of ranks
/// `n/2 -+ 0.98 sqrt(n)`, rounded outwards (the sign test's normal
/// approximation). `None` below 6 values, where no such interval exists.
pub fn median_ci95(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    if n < 6 {
        return None;
    }
    let nf = n as f64;
    // 1-based rank of the lower bound, at least 1.
    let j = ((nf / 2.0 - 0.98 * nf.sqrt()).floor() as usize).max(1);
    let k = n + 1 - j;
    Some((sorted[j - 1], sorted[k - 1]))
}

/// The `q` quantile of `sorted` (ascending floats), by nearest rank.
pub fn quantile_f(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (q.clamp(0.0, 1.0) * last as f64).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// The median of `sorted` (ascending); `None` if it is empty.
pub fn median_f(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Parse the `pair` lines of one section.
pub fn parse_pairs<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> Vec<Pairs> {
    let list = |v: &str| -> Option<Vec<u64>> { v.split(',').map(|x| x.parse().ok()).collect() };
    lines
        .into_iter()
        .filter_map(|l| {
            let (op, kv) = fields(l, "pair")?;
            let mut p = Pairs {
                op: op.to_string(),
                pages: 0,
                a: Vec::new(),
                b: Vec::new(),
            };
            for (k, v) in kv {
                match k {
                    "pages" => p.pages = v.parse().ok()?,
                    "a_ns" => p.a = list(v)?,
                    "b_ns" => p.b = list(v)?,
                    _ => {}
                }
            }
            (p.a.len() == p.b.len() && !p.a.is_empty()).then_some(p)
        })
        .collect()
}

/// The `key=value` words after the first two words of a line that starts
/// with `tag`: `(op, pairs)`.
fn fields<'a>(line: &'a str, tag: &str) -> Option<(&'a str, Vec<(&'a str, &'a str)>)> {
    let mut w = line.split_whitespace();
    if w.next()? != tag {
        return None;
    }
    let op = w.next()?;
    let kv = w.map(|kv| kv.split_once('=')).collect::<Option<Vec<_>>>()?;
    Some((op, kv))
}

/// Parse the `bench` lines of one section.
pub fn parse<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> Vec<Timing> {
    lines
        .into_iter()
        .filter_map(|l| {
            let (op, kv) = fields(l, "bench")?;
            let mut t = Timing {
                op: op.to_string(),
                pages: 0,
                rounds: 0,
                min_ns: 0,
                median_ns: 0,
                samples: Vec::new(),
            };
            for (k, v) in kv {
                if k == "samples_ns" {
                    let mut s = v
                        .split(',')
                        .map(|x| x.parse().ok())
                        .collect::<Option<Vec<u64>>>()?;
                    s.sort_unstable();
                    t.samples = s;
                    continue;
                }
                let v: u64 = v.parse().ok()?;
                match k {
                    "pages" => t.pages = v,
                    "rounds" => t.rounds = v,
                    "min_ns" => t.min_ns = v,
                    "median_ns" => t.median_ns = v,
                    _ => {}
                }
            }
            Some(t)
        })
        .collect()
}

/// Parse the `faults` lines of one section.
pub fn parse_faults<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> Vec<FaultCount> {
    lines
        .into_iter()
        .filter_map(|l| {
            let (op, kv) = fields(l, "faults")?;
            let mut f = FaultCount {
                op: op.to_string(),
                pages: 0,
                pmd_leaves: 0,
                minflt: 0,
                module_calls: None,
            };
            for (k, v) in kv {
                let v: i64 = v.parse().ok()?;
                let u = u64::try_from(v).ok();
                match k {
                    "pages" => f.pages = u?,
                    "pmd_leaves" => f.pmd_leaves = u?,
                    "minflt" => f.minflt = u?,
                    // -1: the driver has no count.
                    "module_calls" => f.module_calls = u,
                    _ => {}
                }
            }
            Some(f)
        })
        .collect()
}

/// The `q` quantile (0.0 to 1.0) of `sorted` (ascending), by nearest rank;
/// `None` if it is empty.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (q.clamp(0.0, 1.0) * last as f64).round() as usize;
    sorted.get(i.min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines() {
        let t = parse([
            "noise",
            "bench read_4k pages=16384 rounds=5 min_ns=46041640 median_ns=46068481",
            "bench snapshot_4k pages=8 rounds=3 min_ns=1 median_ns=2 samples_ns=3,1,2",
            "bench broken pages=x",
            "bench broken2 pages=1 samples_ns=1,x",
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].op, "read_4k");
        assert_eq!(t[0].pages, 16384);
        assert_eq!(t[0].min_ns, 46_041_640);
        assert_eq!(t[0].median_ns, 46_068_481);
        assert!(t[0].samples.is_empty());
        assert_eq!(t[1].samples, vec![1, 2, 3]);
    }

    #[test]
    fn parses_fault_lines() {
        let f = parse_faults([
            "faults read_fresh_thp pages=2048 pmd_leaves=4 minflt=4 module_calls=4",
            "faults read_fresh_thp pages=2048 pmd_leaves=4 minflt=256 module_calls=-1",
            "faults broken pages=-2",
            "bench read_4k pages=1",
        ]);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            FaultCount {
                op: "read_fresh_thp".into(),
                pages: 2048,
                pmd_leaves: 4,
                minflt: 4,
                module_calls: Some(4),
            }
        );
        assert_eq!(f[1].minflt, 256);
        assert_eq!(f[1].module_calls, None);
    }

    #[test]
    fn parses_pairs_and_their_ratios() {
        let p = parse_pairs([
            "pair snapshot_4k pages=8 rounds=3 a_ns=100,200,400 b_ns=50,300,200",
            "pair broken pages=8 rounds=2 a_ns=1,2 b_ns=1",
            "bench read_4k pages=1",
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].op, "snapshot_4k");
        assert_eq!(p[0].ratios(), vec![0.5, 0.5, 1.5]);
    }

    #[test]
    fn median_and_its_confidence_interval() {
        assert_eq!(median_f(&[1.0, 2.0, 3.0]), Some(2.0));
        assert_eq!(median_f(&[1.0, 2.0, 3.0, 5.0]), Some(2.5));
        assert_eq!(median_f(&[]), None);
        assert_eq!(median_ci95(&[1.0; 5]), None);
        let v: Vec<f64> = (1..=15).map(f64::from).collect();
        // n = 15: ranks 3 and 13 (7.5 - 3.8 = 3.7, floored).
        assert_eq!(median_ci95(&v), Some((3.0, 13.0)));
        let v: Vec<f64> = (1..=51).map(f64::from).collect();
        // n = 51: ranks 18 and 34.
        assert_eq!(median_ci95(&v), Some((18.0, 34.0)));
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let s = [10, 20, 30, 40, 50];
        assert_eq!(quantile(&s, 0.0), Some(10));
        assert_eq!(quantile(&s, 0.25), Some(20));
        assert_eq!(quantile(&s, 0.5), Some(30));
        assert_eq!(quantile(&s, 0.75), Some(40));
        assert_eq!(quantile(&s, 1.0), Some(50));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.75), Some(7));
    }
}
