//! The list of hmm-tests cases the module claims (`vm/claims.txt`).
//!
//! Format, one entry per line (`#` starts a comment):
//!
//! ```text
//! claim <test>
//! lacks <test> <reason...>
//! ```

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// Claimed cases and the reasons for the unclaimed ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claims {
    /// Cases the module must pass.
    pub claimed: BTreeSet<String>,
    /// Cases it does not claim, with the reason.
    pub lacks: BTreeMap<String, String>,
}

impl Claims {
    /// Parse the claims file. Errors name the offending line.
    pub fn parse(text: &str) -> Result<Claims, String> {
        let mut c = Claims::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.splitn(3, char::is_whitespace);
            let kind = words.next().unwrap_or("");
            let name = words.next().unwrap_or("").trim().to_string();
            let rest = words.next().unwrap_or("").trim().to_string();
            let dup = c.claimed.contains(&name) || c.lacks.contains_key(&name);
            match kind {
                _ if name.is_empty() => return Err(format!("line {}: no test name", i + 1)),
                _ if dup => return Err(format!("line {}: {name} listed twice", i + 1)),
                "claim" if rest.is_empty() => {
                    c.claimed.insert(name);
                }
                "lacks" if !rest.is_empty() => {
                    c.lacks.insert(name, rest);
                }
                "lacks" => return Err(format!("line {}: {name} has no reason", i + 1)),
                _ => return Err(format!("line {}: expected `claim` or `lacks`", i + 1)),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c = Claims::parse("# c\nclaim a.b\n\nlacks a.c needs X (y)\n").unwrap();
        assert!(c.claimed.contains("a.b"));
        assert_eq!(c.lacks["a.c"], "needs X (y)");
        assert!(Claims::parse("lacks a.c\n").is_err());
        assert!(Claims::parse("claim a\nlacks a why\n").is_err());
        assert!(Claims::parse("claim a extra\n").is_err());
        assert!(Claims::parse("want a\n").is_err());
    }

    #[test]
    fn the_shipped_file_parses() {
        let text = include_str!("../vm/claims.txt");
        let c = Claims::parse(text).unwrap();
        assert!(c.claimed.contains("hmm.hmm_device_private.anon_read"));
        assert!(c.claimed.contains("hmm.hmm_device_private.migrate"));
        assert!(c.claimed.contains("hmm.hmm_device_private.exclusive"));
        assert!(c.lacks.is_empty(), "{:?}", c.lacks);
    }
}
