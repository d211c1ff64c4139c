//! Timings printed by `tests-vm/hmm_bench.c`:
//! `bench <op> pages=<n> rounds=<r> min_ns=<ns> median_ns=<ns>`.

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
}

/// Parse the `bench` lines of one section.
pub fn parse<'a, I: IntoIterator<Item = &'a str>>(lines: I) -> Vec<Timing> {
    lines
        .into_iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "bench" {
                return None;
            }
            let op = w.next()?.to_string();
            let mut t = Timing {
                op,
                pages: 0,
                rounds: 0,
                min_ns: 0,
                median_ns: 0,
            };
            for kv in w {
                let (k, v) = kv.split_once('=')?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines() {
        let t = parse([
            "noise",
            "bench read_4k pages=16384 rounds=5 min_ns=46041640 median_ns=46068481",
            "bench broken pages=x",
        ]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].op, "read_4k");
        assert_eq!(t[0].pages, 16384);
        assert_eq!(t[0].min_ns, 46_041_640);
        assert_eq!(t[0].median_ns, 46_068_481);
    }
}
