//! Compiled HTTP rules (docs/policy-semantics.md §1) and the rule-set matcher used per request.
//!
//! Every pattern is RE2-style and must match the *whole* value. Patterns that are plain
//! literals (the common case: `/v1/request-landing`, `GET`) are compared as strings, and the
//! literal paths of a rule set sit in a hash map, so a set of 10,000 literal path rules costs one
//! lookup. Regex paths of a set are compiled together into one multi-pattern automaton.

use crate::RuleRef;
use regex_automata::meta::Regex as MetaRegex;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A full-match string pattern: a literal when the regex has no metacharacters.
#[derive(Clone)]
pub enum Pattern {
    Literal(Box<str>),
    Regex { source: Box<str>, re: regex::Regex },
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source())
    }
}

impl Pattern {
    /// Compiles `source` for full-string matching. The error text is the regex crate's.
    pub fn compile(source: &str) -> Result<Pattern, String> {
        if let Some(lit) = literal_of(source) {
            return Ok(Pattern::Literal(lit.into()));
        }
        let re = regex::Regex::new(&format!("^(?:{source})$")).map_err(|e| match e {
            regex::Error::Syntax(s) => s.lines().last().unwrap_or("").trim().to_string(),
            other => other.to_string(),
        })?;
        Ok(Pattern::Regex {
            source: source.into(),
            re,
        })
    }

    pub fn source(&self) -> &str {
        match self {
            Pattern::Literal(l) => l,
            Pattern::Regex { source, .. } => source,
        }
    }

    pub fn is_match(&self, value: &str) -> bool {
        match self {
            Pattern::Literal(l) => **l == *value,
            Pattern::Regex { re, .. } => re.is_match(value),
        }
    }

    fn literal(&self) -> Option<&str> {
        match self {
            Pattern::Literal(l) => Some(l),
            Pattern::Regex { .. } => None,
        }
    }
}

/// If the regex matches exactly one string, that string. `^` and `$` at the ends are redundant
/// under full-match semantics and are ignored.
fn literal_of(source: &str) -> Option<String> {
    use regex_syntax::hir::{HirKind, Look};
    let hir = regex_syntax::Parser::new().parse(source).ok()?;
    let parts: Vec<&regex_syntax::hir::Hir> = match hir.kind() {
        HirKind::Concat(parts) => parts.iter().collect(),
        _ => vec![&hir],
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        match part.kind() {
            HirKind::Literal(lit) => out.extend_from_slice(&lit.0),
            HirKind::Empty => {}
            HirKind::Look(Look::Start) if i == 0 => {}
            HirKind::Look(Look::End) if i == parts.len() - 1 => {}
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The literal bytes every match of the regex starts with (possibly empty).
fn literal_prefix(source: &str) -> Vec<u8> {
    use regex_syntax::hir::{HirKind, Look};
    let Ok(hir) = regex_syntax::Parser::new().parse(source) else {
        return Vec::new();
    };
    let parts: Vec<&regex_syntax::hir::Hir> = match hir.kind() {
        HirKind::Concat(parts) => parts.iter().collect(),
        _ => vec![&hir],
    };
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        match part.kind() {
            HirKind::Literal(lit) => out.extend_from_slice(&lit.0),
            HirKind::Look(Look::Start) if i == 0 => {}
            _ => break,
        }
    }
    out
}

/// A byte trie of the literal prefixes of regex path rules: walking a request path through it
/// yields the only regex rules that can match.
#[derive(Default)]
struct PrefixTrie {
    /// Node 0 is the root. Children sorted by byte.
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    rules: Vec<u32>,
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &[u8], rule: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for &b in prefix {
            let next = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (b, id as u32));
                    id
                }
            };
            at = next;
        }
        self.nodes[at].rules.push(rule);
    }

    fn candidates(&self, path: &[u8], mut f: impl FnMut(u32)) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        node.rules.iter().copied().for_each(&mut f);
        for b in path {
            match node.children.binary_search_by_key(b, |c| c.0) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => return,
            }
            node.rules.iter().copied().for_each(&mut f);
        }
    }
}

/// `headers: ["X-K: v"]` or `["X-K"]` and `headerMatches` entries without actions: the request
/// must carry the header (with exactly this value when one is given).
#[derive(Clone, Debug)]
pub struct HeaderRequirement {
    /// Lower-cased header name.
    pub name: Box<str>,
    pub value: Option<Box<str>>,
}

/// What to do when a `headerMatches` entry does not match (§1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchAction {
    /// Empty `mismatch`: the rule fails.
    Fail,
    Log,
    Add,
    Delete,
    Replace,
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: Box<str>,
    /// Value to compare; `None` = presence match.
    pub value: Option<Box<str>>,
    pub mismatch: MismatchAction,
    /// The value comes from a secret and must never be logged.
    pub secret: bool,
    /// A secret was named but cannot be read and no inline value exists: never matches.
    pub unreadable_secret: bool,
}

/// A header mutation the proxy must apply before forwarding (headerMatches actions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderAction {
    Log { name: Box<str> },
    Add { name: Box<str>, value: Box<str> },
    Delete { name: Box<str> },
    Replace { name: Box<str>, value: Box<str> },
}

/// One compiled `http` rule.
#[derive(Clone, Debug)]
pub struct HttpRule {
    pub method: Option<Pattern>,
    pub path: Option<Pattern>,
    pub host: Option<Pattern>,
    pub headers: Vec<HeaderRequirement>,
    pub header_matches: Vec<HeaderMatch>,
    pub origin: RuleRef,
    /// Human form for explanations: `POST /v1/request-landing`.
    pub summary: String,
}

/// The request as the rules see it. `path` includes the query string and is already normalised
/// (see [`crate::l7::request`]); it is empty for CONNECT, whose target is the authority (`host`).
/// Header names are compared case-insensitively; several values of one header are joined with
/// `,` before exact comparison (as Envoy does).
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `:authority` / `Host`, including any port.
    pub host: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
}

impl HttpRequest<'_> {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut it = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        let first = it.next()?;
        match it.next() {
            None => Some(std::borrow::Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for v in it {
                    joined.push(',');
                    joined.push_str(v);
                }
                Some(std::borrow::Cow::Owned(joined))
            }
        }
    }
}

impl HttpRule {
    /// Method/path/host/headers (everything but headerMatches).
    fn matches_basic(&self, req: &HttpRequest<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m.is_match(req.method))
            // A CONNECT request has no path (empty here): a path pattern never matches it, as
            // Envoy's `:path` header matcher fails on an absent header. And since an allowed
            // CONNECT opens a raw tunnel, it only matches a rule that names a method.
            && self.path.as_ref().is_none_or(|p| !req.path.is_empty() && p.is_match(req.path))
            && (!req.path.is_empty() || self.method.is_some())
            && self.host.as_ref().is_none_or(|h| h.is_match(req.host))
            && self.headers.iter().all(|h| match req.header(&h.name) {
                None => false,
                Some(v) => h.value.as_deref().is_none_or(|want| *v == *want),
            })
    }

    /// headerMatches: whether they all pass, and the actions they ask for.
    fn header_matches(&self, req: &HttpRequest<'_>, actions: &mut Vec<HeaderAction>) -> bool {
        let mut ok = true;
        for hm in &self.header_matches {
            if hm.unreadable_secret {
                ok = false;
                continue;
            }
            let present = req.header(&hm.name);
            let matched = match (&present, &hm.value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(want)) => constant_time_eq(v.as_bytes(), want.as_bytes()),
            };
            if matched {
                continue;
            }
            match hm.mismatch {
                MismatchAction::Fail => ok = false,
                MismatchAction::Log => actions.push(HeaderAction::Log {
                    name: hm.name.clone(),
                }),
                MismatchAction::Add => {
                    if let Some(v) = &hm.value {
                        actions.push(HeaderAction::Add {
                            name: hm.name.clone(),
                            value: v.clone(),
                        })
                    }
                }
                MismatchAction::Delete => {
                    if present.is_some() && hm.value.is_some() {
                        actions.push(HeaderAction::Delete {
                            name: hm.name.clone(),
                        })
                    }
                }
                MismatchAction::Replace => {
                    if let Some(v) = &hm.value {
                        actions.push(HeaderAction::Replace {
                            name: hm.name.clone(),
                            value: v.clone(),
                        })
                    }
                }
            }
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The verdict of a rule set for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpVerdict {
    /// The first rule (in policy order) that allowed the request.
    pub allowed_by: Option<usize>,
    /// headerMatches actions to apply (also when the request is denied, as Envoy does).
    pub actions: Vec<HeaderAction>,
}

/// The HTTP rules that apply to one (direction, port, peer): OR of all rules.
pub struct HttpRuleSet {
    rules: Vec<Arc<HttpRule>>,
    /// Rules whose path is a literal, by that path.
    literal_paths: HashMap<Box<str>, Vec<u32>>,
    /// Regex-path rules with a literal prefix, indexed by it.
    prefixed: PrefixTrie,
    /// Regex-path rules without a literal prefix, in the order of the multi-pattern automaton.
    regex_rules: Vec<u32>,
    regex_paths: Option<MetaRegex>,
    /// Rules without a path constraint.
    pathless: Vec<u32>,
    /// Any rule has headerMatches: evaluate every rule (§1.2).
    evaluate_all: bool,
    /// Lower-cased names of the request headers the rules read (`host` for host patterns).
    header_names: Vec<Box<str>>,
}

impl fmt::Debug for HttpRuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRuleSet")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Lazy-DFA cache per thread for a rule set's combined path automaton.
const REGEX_SET_CACHE_BYTES: usize = 8 * 1024 * 1024;

thread_local! {
    static PATTERN_SET: RefCell<PatternSet> = RefCell::new(PatternSet::new(0));
}

impl HttpRuleSet {
    pub fn new(rules: Vec<Arc<HttpRule>>) -> HttpRuleSet {
        let mut literal_paths: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut regex_rules = Vec::new();
        let mut regex_sources = Vec::new();
        let mut pathless = Vec::new();
        let mut prefixed = PrefixTrie::default();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            match &r.path {
                None => pathless.push(i),
                Some(p) => match p.literal() {
                    Some(lit) => literal_paths.entry(lit.into()).or_default().push(i),
                    None => {
                        let prefix = literal_prefix(p.source());
                        if prefix.is_empty() {
                            regex_rules.push(i);
                            regex_sources.push(format!("^(?:{})$", p.source()));
                        } else {
                            prefixed.insert(&prefix, i);
                        }
                    }
                },
            }
        }
        let regex_paths = if regex_sources.is_empty() {
            None
        } else {
            // Each source compiled alone already, so building the set cannot fail on syntax;
            // a size-limit failure falls back to checking the rules one by one.
            MetaRegex::builder()
                .configure(
                    MetaRegex::config()
                        .match_kind(MatchKind::All)
                        .hybrid_cache_capacity(REGEX_SET_CACHE_BYTES),
                )
                .build_many(&regex_sources)
                .ok()
        };
        let evaluate_all = rules.iter().any(|r| !r.header_matches.is_empty());
        let mut header_names: Vec<Box<str>> = Vec::new();
        for r in &rules {
            let names = r
                .headers
                .iter()
                .map(|h| &h.name)
                .chain(r.header_matches.iter().map(|h| &h.name))
                .map(|n| Box::<str>::from(n.to_ascii_lowercase()))
                .chain(r.host.is_some().then(|| Box::from("host")));
            for n in names {
                if !header_names.contains(&n) {
                    header_names.push(n);
                }
            }
        }
        HttpRuleSet {
            header_names,
            rules,
            literal_paths,
            prefixed,
            regex_rules,
            regex_paths,
            pathless,
            evaluate_all,
        }
    }

    pub fn rules(&self) -> &[Arc<HttpRule>] {
        &self.rules
    }

    /// Lower-cased names of the request headers these rules read (`host` for host patterns).
    pub fn header_names(&self) -> &[Box<str>] {
        &self.header_names
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides one request. Allocation-free unless headerMatches actions fire.
    pub fn check(&self, req: &HttpRequest<'_>) -> HttpVerdict {
        let mut actions = Vec::new();
        if self.evaluate_all {
            let mut allowed_by = None;
            for (i, rule) in self.rules.iter().enumerate() {
                if rule.matches_basic(req) && rule.header_matches(req, &mut actions) {
                    allowed_by.get_or_insert(i);
                }
            }
            return HttpVerdict {
                allowed_by,
                actions,
            };
        }
        let mut best: Option<u32> = None;
        let mut consider = |i: u32| {
            if best.is_none_or(|b| i < b) && self.rules[i as usize].matches_basic(req) {
                best = Some(i);
            }
        };
        if let Some(ids) = self.literal_paths.get(req.path) {
            ids.iter().copied().for_each(&mut consider);
        }
        self.pathless.iter().copied().for_each(&mut consider);
        self.prefixed.candidates(req.path.as_bytes(), &mut consider);
        if !self.regex_rules.is_empty() {
            match &self.regex_paths {
                Some(set) => PATTERN_SET.with(|cell| {
                    let mut patset = cell.borrow_mut();
                    if patset.capacity() < set.pattern_len() {
                        *patset = PatternSet::new(set.pattern_len());
                    } else {
                        patset.clear();
                    }
                    let input = Input::new(req.path).anchored(Anchored::Yes);
                    set.which_overlapping_matches(&input, &mut patset);
                    for pid in patset.iter() {
                        consider(self.regex_rules[pid.as_usize()]);
                    }
                }),
                None => self.regex_rules.iter().copied().for_each(&mut consider),
            }
        }
        HttpVerdict {
            allowed_by: best.map(|b| b as usize),
            actions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> RuleRef {
        RuleRef::test("http")
    }

    fn rule(method: Option<&str>, path: Option<&str>) -> Arc<HttpRule> {
        Arc::new(HttpRule {
            method: method.map(|m| Pattern::compile(m).unwrap()),
            path: path.map(|p| Pattern::compile(p).unwrap()),
            host: None,
            headers: vec![],
            header_matches: vec![],
            origin: origin(),
            summary: String::new(),
        })
    }

    #[test]
    fn connect_matches_only_rules_that_name_a_method_and_have_no_path() {
        let connect = HttpRequest {
            method: "CONNECT",
            path: "",
            host: "tunnel.example:443",
            headers: &[],
        };
        let allows = |r: Arc<HttpRule>| HttpRuleSet::new(vec![r]).check(&connect).allowed_by;
        assert_eq!(allows(rule(Some("CONNECT"), None)), Some(0));
        assert_eq!(allows(rule(Some(".*"), None)), Some(0));
        // A tunnel is raw bytes past every later rule: a rule that names no method (a host-only
        // rule, an empty rule) does not open one, nor does a path rule (no `:path`).
        assert_eq!(allows(rule(None, None)), None);
        assert_eq!(allows(rule(Some("CONNECT"), Some(".*"))), None);
        assert_eq!(allows(rule(None, Some("/.*"))), None);
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> HttpRequest<'a> {
        HttpRequest {
            method,
            path,
            host: "deathstar",
            headers,
        }
    }

    #[test]
    fn literal_detection() {
        let cases = [
            ("/v1/request-landing", true),
            ("/path1$", true),
            ("^/path1$", true),
            ("GET", true),
            ("/public.*", false),
            ("GET|POST", false),
            ("/a\\.b", true),
        ];
        for (src, lit) in cases {
            assert_eq!(
                matches!(Pattern::compile(src).unwrap(), Pattern::Literal(_)),
                lit,
                "{src}"
            );
        }
        assert!(Pattern::compile("/a\\.b").unwrap().is_match("/a.b"));
        assert!(!Pattern::compile("/a\\.b").unwrap().is_match("/aXb"));
    }

    /// §1.1: full-string match; `:path` includes the query; case-sensitive method/path.
    #[test]
    fn full_match_semantics() {
        let set = HttpRuleSet::new(vec![
            rule(Some("GET"), Some("/public")),
            rule(Some("GET"), Some("/status.*")),
        ]);
        let cases = [
            ("GET", "/public", true),
            ("GET", "/public?x=1", false),
            ("GET", "/public/x", false),
            ("GET", "/xx/public", false),
            ("get", "/public", false),
            ("POST", "/public", false),
            ("GET", "/status", true),
            ("GET", "/status/ready?x", true),
        ];
        for (m, p, want) in cases {
            assert_eq!(
                set.check(&req(m, p, &[])).allowed_by.is_some(),
                want,
                "{m} {p}"
            );
        }
    }

    #[test]
    fn rules_are_or_and_first_rule_reported() {
        let set = HttpRuleSet::new(vec![
            rule(Some("POST"), Some("/v1/request-landing")),
            rule(None, Some("/v1/.*")),
            rule(Some("PUT"), None),
        ]);
        assert_eq!(
            set.check(&req("POST", "/v1/request-landing", &[]))
                .allowed_by,
            Some(0)
        );
        assert_eq!(set.check(&req("GET", "/v1/x", &[])).allowed_by, Some(1));
        assert_eq!(set.check(&req("PUT", "/other", &[])).allowed_by, Some(2));
        assert_eq!(set.check(&req("GET", "/other", &[])).allowed_by, None);
    }

    #[test]
    fn empty_rule_matches_everything() {
        let set = HttpRuleSet::new(vec![rule(None, None)]);
        assert!(set
            .check(&req("DELETE", "/anything?q", &[]))
            .allowed_by
            .is_some());
    }

    #[test]
    fn header_requirements() {
        let mut r = (*rule(Some("PUT"), Some("/path2$"))).clone();
        r.headers = vec![HeaderRequirement {
            name: "x-my-header".into(),
            value: Some("true".into()),
        }];
        let mut presence = (*rule(Some("GET"), None)).clone();
        presence.headers = vec![HeaderRequirement {
            name: "x-token".into(),
            value: None,
        }];
        let set = HttpRuleSet::new(vec![Arc::new(r), Arc::new(presence)]);
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: [(&str, Headers<'_>, bool); 6] = [
            ("PUT", &[("X-My-Header", "true")], true),
            ("PUT", &[("x-my-header", "true")], true),
            ("PUT", &[("X-My-Header", "false")], false),
            ("PUT", &[], false),
            ("GET", &[("X-Token", "")], true),
            ("GET", &[], false),
        ];
        for (m, h, want) in cases {
            let path = if m == "PUT" { "/path2" } else { "/x" };
            assert_eq!(
                set.check(&req(m, path, h)).allowed_by.is_some(),
                want,
                "{m} {h:?}"
            );
        }
    }

    /// §1.2: with headerMatches every rule is evaluated, actions of all L7-matching rules are
    /// collected, and the request passes if one rule passed with all its header matches.
    #[test]
    fn header_match_actions() {
        let mk = |name: &str, value: Option<&str>, mismatch| HeaderMatch {
            name: name.into(),
            value: value.map(Into::into),
            mismatch,
            secret: false,
            unreadable_secret: false,
        };
        let mut a = (*rule(None, Some("/a"))).clone();
        a.header_matches = vec![
            mk("x-add", Some("1"), MismatchAction::Add),
            mk("x-del", Some("keep"), MismatchAction::Delete),
            mk("x-rep", Some("new"), MismatchAction::Replace),
            mk("x-log", Some("v"), MismatchAction::Log),
        ];
        let mut b = (*rule(None, Some("/a"))).clone();
        b.header_matches = vec![mk("x-required", Some("yes"), MismatchAction::Fail)];
        let set = HttpRuleSet::new(vec![Arc::new(b), Arc::new(a)]);
        let v = set.check(&req("GET", "/a", &[("x-del", "bad"), ("x-rep", "old")]));
        assert_eq!(v.allowed_by, Some(1));
        assert_eq!(
            v.actions,
            vec![
                HeaderAction::Add {
                    name: "x-add".into(),
                    value: "1".into()
                },
                HeaderAction::Delete {
                    name: "x-del".into()
                },
                HeaderAction::Replace {
                    name: "x-rep".into(),
                    value: "new".into()
                },
                HeaderAction::Log {
                    name: "x-log".into()
                },
            ]
        );
        // Only the failing rule applies to /b? No rule matches /b at all: denied, no actions.
        let v = set.check(&req("GET", "/b", &[]));
        assert_eq!(v.allowed_by, None);
        assert!(v.actions.is_empty());
    }

    #[test]
    fn unreadable_secret_never_matches() {
        let mut r = (*rule(None, None)).clone();
        r.header_matches = vec![HeaderMatch {
            name: "authorization".into(),
            value: None,
            mismatch: MismatchAction::Log,
            secret: true,
            unreadable_secret: true,
        }];
        let set = HttpRuleSet::new(vec![Arc::new(r)]);
        assert_eq!(
            set.check(&req("GET", "/", &[("authorization", "x")]))
                .allowed_by,
            None
        );
    }

    #[test]
    fn many_regex_paths_use_the_set() {
        let rules: Vec<_> = (0..500)
            .map(|i| rule(Some("GET"), Some(&format!("(/api)?/v{i}/items/[0-9]+"))))
            .collect();
        let set = HttpRuleSet::new(rules);
        assert!(set.regex_paths.is_some());
        assert_eq!(
            set.check(&req("GET", "/api/v42/items/7", &[])).allowed_by,
            Some(42)
        );
        assert_eq!(
            set.check(&req("GET", "/api/v42/items/x", &[])).allowed_by,
            None
        );
        assert_eq!(
            set.check(&req("GET", "/v7/items/1", &[])).allowed_by,
            Some(7)
        );
    }

    #[test]
    fn regex_rules_found_through_their_literal_prefix() {
        let rules: Vec<_> = (0..300)
            .map(|i| rule(Some("GET"), Some(&format!("/api/v{i}/items/[0-9]+"))))
            .chain([
                rule(None, Some("/api/v1.*")),
                rule(None, Some("^/static/(css|js)/.+")),
            ])
            .collect();
        let set = HttpRuleSet::new(rules);
        assert!(
            set.regex_paths.is_none(),
            "every regex has a literal prefix"
        );
        assert_eq!(
            set.check(&req("GET", "/api/v42/items/7", &[])).allowed_by,
            Some(42)
        );
        assert_eq!(
            set.check(&req("GET", "/api/v4/items/7", &[])).allowed_by,
            Some(4)
        );
        assert_eq!(
            set.check(&req("GET", "/api/v1/items/7", &[])).allowed_by,
            Some(1)
        );
        assert_eq!(
            set.check(&req("PUT", "/api/v1/items/7", &[])).allowed_by,
            Some(300)
        );
        assert_eq!(
            set.check(&req("PUT", "/api/v17", &[])).allowed_by,
            Some(300)
        );
        assert_eq!(
            set.check(&req("GET", "/static/js/app.js", &[])).allowed_by,
            Some(301)
        );
        assert_eq!(
            set.check(&req("GET", "/static/img/a.png", &[])).allowed_by,
            None
        );
        assert_eq!(
            set.check(&req("GET", "/api/v42/items/x", &[])).allowed_by,
            None
        );
    }
}
