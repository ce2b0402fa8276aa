//! DNS name patterns (docs/policy-semantics.md §5.1), shared by `rules.dns` and `toFQDNs`.
//!
//! Names are compared lower-cased with a trailing dot. `matchName` is exact; `matchPattern`
//! turns `*` into one label's characters, a leading `**.` into one or more whole labels, and a
//! pattern of only stars into "any name".

use crate::RuleRef;
use std::collections::HashSet;

/// The characters one label may contain in a pattern match.
const LABEL_CHARS: &str = "[-a-zA-Z0-9_]";
/// Regex for "any name" (a pattern consisting only of `*`).
const MATCH_ALL: &str = r"(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)";
/// Longest name or pattern accepted.
pub const MAX_NAME_LEN: usize = 255;

/// One `matchName` or `matchPattern`, as written and compiled.
#[derive(Clone, Debug)]
pub enum NamePattern {
    /// Sanitised name (lower-case, trailing dot).
    Name(String),
    Pattern {
        written: String,
        regex: String,
    },
}

impl NamePattern {
    /// Validates and compiles a `matchName`.
    pub fn name(written: &str) -> Result<NamePattern, String> {
        if written.len() > MAX_NAME_LEN {
            return Err(format!("longer than {MAX_NAME_LEN} characters"));
        }
        if let Some(c) = written
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "character {c:?} is not allowed (only letters, digits, '-', '_' and '.')"
            ));
        }
        Ok(NamePattern::Name(parsers::dns::normalize_name(written)))
    }

    /// Validates and compiles a `matchPattern` into an anchored regex source.
    pub fn pattern(written: &str) -> Result<NamePattern, String> {
        if written.len() > MAX_NAME_LEN {
            return Err(format!("longer than {MAX_NAME_LEN} characters"));
        }
        if let Some(c) = written
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*')))
        {
            return Err(format!(
                "character {c:?} is not allowed (only letters, digits, '-', '_', '.' and '*')"
            ));
        }
        Ok(NamePattern::Pattern {
            written: written.to_string(),
            regex: pattern_regex(written),
        })
    }

    pub fn written(&self) -> &str {
        match self {
            NamePattern::Name(n) => n,
            NamePattern::Pattern { written, .. } => written,
        }
    }
}

/// Cilium's `ToAnchoredRegexp` for one pattern.
pub fn pattern_regex(pattern: &str) -> String {
    let trimmed = pattern.trim_end_matches('.');
    if !trimmed.is_empty() && trimmed.chars().all(|c| c == '*') {
        return MATCH_ALL.to_string();
    }
    if pattern.is_empty() {
        return "^[.]$".to_string();
    }
    let mut p = pattern.to_ascii_lowercase();
    if !p.ends_with('.') {
        p.push('.');
    }
    let mut out = String::from("^");
    let mut rest = p.as_str();
    // A leading `**.` (two or more stars, then a dot) stands for one or more whole labels.
    let stars = rest.chars().take_while(|c| *c == '*').count();
    if stars >= 2 && rest[stars..].starts_with('.') {
        out.push_str(&format!("({LABEL_CHARS}+([.]{LABEL_CHARS}+){{0,}})[.]"));
        rest = &rest[stars + 1..];
    }
    let mut prev_star = false;
    for c in rest.chars() {
        match c {
            '*' => {
                if !prev_star {
                    out.push_str(LABEL_CHARS);
                    out.push('*');
                }
                prev_star = true;
                continue;
            }
            '.' => out.push_str("[.]"),
            c => out.push(c),
        }
        prev_star = false;
    }
    out.push('$');
    out
}

/// The DNS rules that apply to one (port, server peer): OR of names and patterns. An empty
/// set is never built: a selector without DNS rules allows every name.
#[derive(Debug)]
pub struct DnsMatcher {
    names: HashSet<String>,
    regex: Option<regex::Regex>,
    /// Each pattern as written, compiled, and the rule it came from (for explanations).
    origins: Vec<(String, Compiled, RuleRef)>,
}

impl DnsMatcher {
    pub fn new(patterns: &[(NamePattern, RuleRef)]) -> DnsMatcher {
        let mut names = HashSet::new();
        let mut sources = Vec::new();
        let mut origins = Vec::new();
        for (p, origin) in patterns {
            let Some(compiled) = Compiled::of(p) else {
                continue;
            };
            origins.push((p.written().to_string(), compiled, origin.clone()));
            match p {
                NamePattern::Name(n) => {
                    names.insert(n.clone());
                }
                NamePattern::Pattern { regex, .. } => sources.push(format!("(?:{regex})")),
            }
        }
        let regex = if sources.is_empty() {
            None
        } else {
            // Every part was built from validated characters, so this compiles.
            regex::Regex::new(&sources.join("|")).ok()
        };
        DnsMatcher {
            names,
            regex,
            origins,
        }
    }

    /// Whether `name` (any case, with or without trailing dot) is allowed.
    pub fn matches(&self, name: &str) -> bool {
        let fqdn = parsers::dns::normalize_name(name);
        self.names.contains(&fqdn) || self.regex.as_ref().is_some_and(|r| r.is_match(&fqdn))
    }

    /// The first pattern (as written) that matches, for explanations.
    pub fn matching_pattern(&self, name: &str) -> Option<(&str, &RuleRef)> {
        let fqdn = parsers::dns::normalize_name(name);
        self.origins
            .iter()
            .find(|(_, c, _)| c.matches(&fqdn))
            .map(|(written, _, origin)| (written.as_str(), origin))
    }
}

/// Every `toFQDNs` selector of a policy set, compiled once: which of them select a name.
#[derive(Debug, Default)]
pub struct FqdnSelectorSet {
    /// Each selector as written, with its compiled form.
    selectors: Vec<(String, Compiled)>,
}

/// One name or pattern, compiled for matching normalised names.
#[derive(Debug)]
enum Compiled {
    Name(String),
    Pattern(regex::Regex),
}

impl Compiled {
    /// `None` for a pattern whose regex does not compile (validated patterns always do).
    fn of(p: &NamePattern) -> Option<Compiled> {
        Some(match p {
            NamePattern::Name(n) => Compiled::Name(n.clone()),
            NamePattern::Pattern { regex, .. } => Compiled::Pattern(regex::Regex::new(regex).ok()?),
        })
    }

    /// Whether it matches `fqdn` (already normalised).
    fn matches(&self, fqdn: &str) -> bool {
        match self {
            Compiled::Name(n) => n == fqdn,
            Compiled::Pattern(r) => r.is_match(fqdn),
        }
    }
}

impl PartialEq for FqdnSelectorSet {
    /// The same selectors, as written, in the same order.
    fn eq(&self, other: &Self) -> bool {
        self.selectors.len() == other.selectors.len()
            && self
                .selectors
                .iter()
                .zip(&other.selectors)
                .all(|(a, b)| a.0 == b.0)
    }
}

impl FqdnSelectorSet {
    pub fn new(patterns: &[NamePattern]) -> FqdnSelectorSet {
        let mut selectors: Vec<(String, Compiled)> = Vec::new();
        for p in patterns {
            if selectors.iter().any(|(w, _)| w == p.written()) {
                continue;
            }
            let Some(compiled) = Compiled::of(p) else {
                continue;
            };
            selectors.push((p.written().to_string(), compiled));
        }
        FqdnSelectorSet { selectors }
    }

    pub fn is_empty(&self) -> bool {
        self.selectors.is_empty()
    }

    /// The selectors (as written) that select `name` (any case, with or without the dot).
    pub fn selecting(&self, name: &str) -> Vec<&str> {
        let fqdn = parsers::dns::normalize_name(name);
        self.selectors
            .iter()
            .filter(|(_, c)| c.matches(&fqdn))
            .map(|(w, _)| w.as_str())
            .collect()
    }

    /// Whether any selector selects `name`.
    pub fn selects(&self, name: &str) -> bool {
        !self.selecting(name).is_empty()
    }
}

/// Whether a single pattern (as in a toFQDNs selector) matches a name.
pub fn pattern_matches(p: &NamePattern, name: &str) -> bool {
    let fqdn = parsers::dns::normalize_name(name);
    match p {
        NamePattern::Name(n) => *n == fqdn,
        NamePattern::Pattern { regex, .. } => {
            regex::Regex::new(regex).is_ok_and(|r| r.is_match(&fqdn))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        pattern_matches(&NamePattern::pattern(pattern).unwrap(), name)
    }

    /// §5.1 consequences, one row per stated behaviour.
    #[test]
    fn pattern_table() {
        let cases = [
            ("*.cilium.io", "www.cilium.io", true),
            ("*.cilium.io", "cilium.io", false),
            ("*.cilium.io", "a.b.cilium.io", false),
            ("*cilium.io", "cilium.io", true),
            ("*cilium.io", "subcilium.io", true),
            ("*cilium.io", "www.cilium.io", false),
            ("*", "a.b.c.example.com", true),
            ("*", ".", true),
            ("**", "x.y", true),
            ("*.", "x.y.", true),
            ("**.cilium.io", "a.cilium.io", true),
            ("**.cilium.io", "a.b.cilium.io", true),
            ("**.cilium.io", "cilium.io", false),
            ("a.**.io", "a.x.io", true),
            ("a.**.io", "a.x.y.io", false),
            ("*.cilium.io", ".cilium.io.", true),
            ("_srv._tcp.*.io", "_srv._tcp.x.io", true),
            ("API.GitHub.com", "api.github.com", true),
            ("api.github.com", "API.GITHUB.COM.", true),
            ("api.github.com", "apixgithub.com", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(m(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn match_name_is_exact_and_case_insensitive() {
        let p = NamePattern::name("Api.GitHub.com").unwrap();
        assert!(pattern_matches(&p, "api.github.com."));
        assert!(!pattern_matches(&p, "www.api.github.com"));
        assert!(!pattern_matches(&p, "api-github.com"));
    }

    #[test]
    fn invalid_characters_are_rejected() {
        assert!(NamePattern::name("a*b.com").is_err());
        assert!(NamePattern::pattern("a b.com").is_err());
        assert!(NamePattern::pattern(&"a".repeat(256)).is_err());
        assert!(NamePattern::pattern("ok-_.*").is_ok());
    }

    #[test]
    fn matcher_ors_names_and_patterns() {
        let o = RuleRef::test("dns");
        let set = DnsMatcher::new(&[
            (NamePattern::name("api.github.com").unwrap(), o.clone()),
            (NamePattern::pattern("*.cilium.io").unwrap(), o),
        ]);
        assert!(set.matches("api.github.com"));
        assert!(set.matches("docs.cilium.io"));
        assert!(!set.matches("support.github.com"));
        assert_eq!(
            set.matching_pattern("docs.cilium.io").unwrap().0,
            "*.cilium.io"
        );
    }
}
