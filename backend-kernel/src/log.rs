//! The serial log of one VM run, split into the sections the guest script
//! frames with `@@HMM-SECTION BEGIN <name>` / `@@HMM-SECTION END rc=<n>`.

use std::collections::BTreeMap;

/// One framed section: its lines and the exit status of its program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// Lines between the markers, without carriage returns.
    pub lines: Vec<String>,
    /// The exit status from the END marker; `None` if the section never
    /// ended (the guest hung or crashed inside it).
    pub rc: Option<i32>,
}

/// A parsed serial log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SerialLog {
    /// Sections by name, e.g. `rs.hmm-tests`.
    pub sections: BTreeMap<String, Section>,
    /// Lines `@@HMM-<WHAT> <driver>` outside sections, e.g.
    /// `INSMOD-FAILED rs`.
    pub events: Vec<String>,
    /// The guest reached `@@HMM-HARNESS TEST-END`.
    pub completed: bool,
}

impl SerialLog {
    /// Parse a serial log.
    pub fn parse(text: &str) -> SerialLog {
        let mut log = SerialLog::default();
        let mut current: Option<(String, Section)> = None;
        for raw in text.lines() {
            let line = raw.trim_end_matches('\r');
            if let Some(name) = line.strip_prefix("@@HMM-SECTION BEGIN ") {
                if let Some((n, s)) = current.take() {
                    log.sections.insert(n, s);
                }
                current = Some((name.trim().to_string(), Section::default()));
            } else if let Some(rc) = line.strip_prefix("@@HMM-SECTION END rc=") {
                if let Some((n, mut s)) = current.take() {
                    s.rc = rc.trim().parse().ok();
                    log.sections.insert(n, s);
                }
            } else if line.starts_with("@@HMM-HARNESS TEST-END") {
                log.completed = true;
            } else if let Some(ev) = line.strip_prefix("@@HMM-") {
                if !ev.starts_with("HARNESS") {
                    log.events.push(ev.to_string());
                }
            } else if let Some((_, s)) = current.as_mut() {
                s.lines.push(line.to_string());
            }
        }
        if let Some((n, s)) = current.take() {
            log.sections.insert(n, s);
        }
        log
    }

    /// The section `name`, if present.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.get(name)
    }

    /// Whether the event `what` (e.g. `INSMOD-FAILED rs`) was logged.
    pub fn has_event(&self, what: &str) -> bool {
        self.events.iter().any(|e| e == what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_events_and_completion() {
        let text = "boot noise\r\n@@HMM-SECTION BEGIN c.uffd\r\nok 1 a\r\n\
                    @@HMM-SECTION END rc=1\n@@HMM-INSMOD-FAILED rs\n\
                    @@HMM-SECTION BEGIN rs.bench\nbench x\n@@HMM-HARNESS TEST-END rc=0\n";
        let log = SerialLog::parse(text);
        let c = log.section("c.uffd").unwrap();
        assert_eq!(c.lines, vec!["ok 1 a"]);
        assert_eq!(c.rc, Some(1));
        // An unterminated section keeps its lines and has no status.
        let b = log.section("rs.bench").unwrap();
        assert_eq!(b.lines, vec!["bench x"]);
        assert_eq!(b.rc, None);
        assert!(log.has_event("INSMOD-FAILED rs"));
        assert!(!log.has_event("INSMOD-FAILED c"));
        assert!(log.completed);
        assert!(!SerialLog::parse("x\n").completed);
    }
}
