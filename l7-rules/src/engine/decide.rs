//! The one decision. Everything that says allow, deny or audit about a flow or a request goes
//! through here: the proxy (per connection, then per request), `ward-check` and its case files.
//!
//! A connection is resolved once into a [`ConnectionPolicy`]: for each side Ward enforces on
//! (the source's egress, the destination's ingress), the L3/L4 verdict with its explanation
//! and, when the port is redirected, the L7 rules. [`ConnectionPolicy::decide`] then judges one
//! request (or none, for an L3/L4 question) and returns a typed [`Decision`]. The request path
//! formats nothing: a [`Reason`] holds shared pointers to what decided, and its text is built
//! only when somebody displays it ([`Decision::explain`]).
//!
//! Combining the sides: a request passes only when every side allows it; the deciding side is
//! the first that denies (or audits), else the first that ran L7 rules, else the first that a
//! policy governs. Audit mode turns each side's deny into an audited allow (also at L7, which
//! goes beyond Cilium, whose audit mode covers L3/L4 only).

use super::{summarize, Engine, Flow, L3L4Verdict, L7Policy, L7Request, Stage};
use crate::l7::http::{HeaderAction, HttpRule, HttpRuleSet};
use crate::l7::kafka::{self, KafkaVerdict};
use crate::l7::request::{judge_request, Judged, RawHttpRequest};
use crate::model::{Direction, RuleRef};
use std::fmt;
use std::sync::Arc;

/// Allow, deny, or an audited allow (a deny that audit mode let through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    Audit,
}

impl Verdict {
    /// Whether the request goes on (allowed or audited).
    pub fn forwards(self) -> bool {
        self != Verdict::Deny
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
}

/// An explanation fixed when the connection policy is built: the L3/L4 reason of a side, or
/// an L7 outcome that does not depend on the request.
#[derive(Debug)]
pub struct Fixed {
    pub text: String,
    /// The responsible rule, when one is.
    pub origin: Option<RuleRef>,
}

/// One side of a connection, resolved once.
#[derive(Clone, Debug)]
struct Side {
    direction: Direction,
    l3l4: L3L4Verdict,
    /// Why L3/L4 said so; its origin is the rule that redirected, when redirected.
    l3l4_reason: Arc<Fixed>,
    /// The L7 rules, when the port is redirected.
    l7: Option<L7Policy>,
    /// The L7 outcome that does not depend on the request (every request allowed, or denied
    /// by a parser conflict), with its explanation.
    l7_fixed: Option<(bool, Arc<Fixed>)>,
}

/// What one connection enforces: its sides, resolved from one policy generation.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    sides: Vec<Side>,
    audit: bool,
    /// Lower-cased names of the request headers some HTTP rule of this connection reads
    /// (`host` included when a rule has a host pattern).
    http_reads: Vec<Box<str>>,
}

/// Why a side decided as it did. Cheap to build (shared pointers), formatted on display.
#[derive(Clone, Debug)]
pub enum Reason {
    /// Fixed text (L3/L4, or an L7 outcome that does not depend on the request).
    Fixed(Arc<Fixed>),
    /// An HTTP rule allowed the request.
    HttpAllowed(Arc<HttpRule>),
    /// No HTTP rule of the set allowed the request; `redirect` names the redirecting rule.
    HttpNoMatch {
        redirect: Arc<Fixed>,
        rules: Arc<HttpRuleSet>,
    },
    /// Kafka and DNS explanations, formatted when decided (their proxies build on this next).
    Text {
        text: String,
        origin: Option<RuleRef>,
    },
}

impl Reason {
    fn origin(&self) -> Option<&RuleRef> {
        match self {
            Reason::Fixed(f) => f.origin.as_ref(),
            Reason::HttpAllowed(rule) => Some(&rule.origin),
            Reason::HttpNoMatch { redirect, .. } => redirect.origin.as_ref(),
            Reason::Text { origin, .. } => origin.as_ref(),
        }
    }

    fn write(&self, out: &mut String, request: Option<&L7Request<'_>>) {
        use std::fmt::Write as _;
        match self {
            Reason::Fixed(f) => out.push_str(&f.text),
            Reason::HttpAllowed(rule) => {
                let _ = write!(out, "{} allows {}", rule.origin, rule.summary);
            }
            Reason::HttpNoMatch { redirect, rules } => {
                let redirect = redirect
                    .origin
                    .as_ref()
                    .map_or("a default-allow rule".to_string(), |o| o.to_string());
                let _ = write!(
                    out,
                    "{redirect} allows {}; ",
                    summarize(rules.rules().iter().map(|r| r.summary.as_str()))
                );
                match request {
                    Some(L7Request::Http(r)) if r.path.is_empty() => {
                        let _ = write!(out, "{} {} matched no http rule", r.method, r.host);
                    }
                    Some(L7Request::Http(r)) => {
                        let _ = write!(out, "{} {} matched no http rule", r.method, r.path);
                    }
                    _ => out.push_str("the request matched no http rule"),
                }
            }
            Reason::Text { text, .. } => out.push_str(text),
        }
    }
}

/// The outcome of one side for one request.
#[derive(Clone, Debug)]
struct SideOutcome {
    direction: Direction,
    allowed: bool,
    audit: bool,
    stage: Stage,
    l3l4: L3L4Verdict,
    l7: Option<bool>,
    reason: Reason,
}

impl SideOutcome {
    /// Sides that no policy governs add nothing to an explanation when another side does.
    fn relevant(&self) -> bool {
        self.reason.origin().is_some() || !self.allowed || self.audit || self.stage == Stage::L7
    }
}

/// The verdict on a flow or a request, with what decided it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    /// The stage of the deciding side.
    pub stage: Stage,
    /// The deciding side's direction (`None` when the connection has no side to enforce).
    pub direction: Option<Direction>,
    /// Combined L3/L4 verdict: deny if any side denies, else redirect if any side redirects.
    pub l3l4: L3L4Verdict,
    /// Combined L7 verdict, when L7 rules ran on some side.
    pub l7: Option<bool>,
    /// headerMatches mutations for the proxy to apply before forwarding.
    pub header_actions: Vec<HeaderAction>,
    sides: [Option<SideOutcome>; 2],
    deciding: usize,
}

impl Decision {
    fn deciding(&self) -> Option<&SideOutcome> {
        self.sides[self.deciding].as_ref()
    }

    /// The deciding reason (for flows: the policy and rule that decided).
    pub fn reason(&self) -> Option<&Reason> {
        self.deciding().map(|s| &s.reason)
    }

    /// `namespace/name` of the deciding policy.
    pub fn policy(&self) -> Option<String> {
        self.deciding()
            .and_then(|s| s.reason.origin())
            .map(|o| o.policy.id())
    }

    /// The deciding rule's field path inside its policy (`ingress[0].toPorts[0]`).
    pub fn rule(&self) -> Option<String> {
        self.deciding()
            .and_then(|s| s.reason.origin())
            .map(|o| o.path.clone())
            .filter(|p| !p.is_empty())
    }

    /// The explanation, for `request` (the one judged, or `None` for an L3/L4 question). Sides
    /// that no policy governs are left out when another side is; several relevant sides are
    /// joined as `[ingress] … | [egress] …`.
    pub fn explain(&self, request: Option<&L7Request<'_>>) -> String {
        let mut out = String::with_capacity(128);
        let relevant = || self.sides.iter().flatten().filter(|s| s.relevant());
        let write_side = |out: &mut String, s: &SideOutcome| {
            if s.audit {
                out.push_str("AUDIT (would be denied): ");
            }
            s.reason.write(out, request);
        };
        match (relevant().count(), self.deciding()) {
            (0, Some(d)) => write_side(&mut out, d),
            (0, None) => out.push_str("no side of this flow is an endpoint Ward enforces on"),
            (1, _) => relevant().for_each(|s| write_side(&mut out, s)),
            _ => {
                for (i, s) in relevant().enumerate() {
                    if i > 0 {
                        out.push_str(" | ");
                    }
                    out.push('[');
                    out.push_str(s.direction.as_str());
                    out.push_str("] ");
                    write_side(&mut out, s);
                }
            }
        }
        if request.is_some() && self.l7.is_none() && self.l3l4 != L3L4Verdict::Deny {
            out.push_str(" (no L7 check: the port is not redirected to the proxy)");
        }
        out
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Engine {
    /// Resolves what a connection is subject to: one [`Flow`] per side Ward enforces on (the
    /// source's egress and/or the destination's ingress, in that order). `audit` is the node's
    /// or the endpoints' audit mode.
    pub fn connection_policy(&self, flows: &[Flow<'_>], audit: bool) -> ConnectionPolicy {
        let mut sides = Vec::with_capacity(flows.len());
        let mut http_reads: Vec<Box<str>> = Vec::new();
        for flow in flows {
            let (l3l4, text, origin) = self.l3l4(flow);
            let l3l4_reason = Arc::new(Fixed {
                text,
                origin: origin.clone(),
            });
            let (l7, l7_fixed) = match l3l4 {
                L3L4Verdict::Redirect(_) => {
                    let policy = self.l7_policy(flow);
                    let fixed = match &policy {
                        L7Policy::AllowAll(by) => Some((
                            true,
                            Arc::new(Fixed {
                                text: format!(
                                    "{} has no L7 rules on this port, so every request passes",
                                    by.as_ref().map_or("a default-allow rule".to_string(), |o| {
                                        o.to_string()
                                    })
                                ),
                                origin: by.clone().or(origin),
                            }),
                        )),
                        L7Policy::Conflict(p) => Some((
                            false,
                            Arc::new(Fixed {
                                text: format!(
                                    "conflicting L7 parsers {p:?} for the same port and peer; Cilium cannot resolve this policy"
                                ),
                                origin,
                            }),
                        )),
                        L7Policy::Http(set) => {
                            for name in set.header_names() {
                                if !http_reads.contains(name) {
                                    http_reads.push(name.clone());
                                }
                            }
                            None
                        }
                        _ => None,
                    };
                    (Some(policy), fixed)
                }
                _ => (None, None),
            };
            sides.push(Side {
                direction: flow.direction,
                l3l4,
                l3l4_reason,
                l7,
                l7_fixed,
            });
        }
        ConnectionPolicy {
            sides,
            audit,
            http_reads,
        }
    }
}

impl ConnectionPolicy {
    /// Audit mode is on for this connection.
    pub fn audit(&self) -> bool {
        self.audit
    }

    /// Whether some HTTP rule of this connection reads the header `name` (lower-case).
    pub fn reads_header(&self, name: &str) -> bool {
        self.http_reads.iter().any(|n| **n == *name)
    }

    /// Turns a received HTTP request into the one to judge and forward
    /// ([`crate::l7::request::judge_request`], with this connection's header rules).
    pub fn judge_http<'a>(&self, raw: &RawHttpRequest<'a>) -> Judged<'a> {
        judge_request(raw, &|name| self.reads_header(name))
    }

    /// Some side redirects this connection to an L7 parser.
    pub fn is_redirected(&self) -> bool {
        self.sides
            .iter()
            .any(|s| matches!(s.l3l4, L3L4Verdict::Redirect(_)))
    }

    /// The one decision: every side's L3/L4 verdict, then (when the side redirects and a
    /// request is given) its L7 rules; audit mode; the sides combined.
    pub fn decide(&self, request: Option<&L7Request<'_>>) -> Decision {
        let mut sides: [Option<SideOutcome>; 2] = [None, None];
        let mut header_actions = Vec::new();
        for (slot, side) in sides.iter_mut().zip(&self.sides) {
            let mut o = judge_side(side, request, &mut header_actions);
            if !o.allowed && self.audit {
                o.allowed = true;
                o.audit = true;
            }
            *slot = Some(o);
        }
        let present = || {
            sides
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.as_ref()?)))
        };
        let deciding = present()
            .find(|(_, s)| !s.allowed || s.audit)
            .or_else(|| present().find(|(_, s)| s.stage == Stage::L7))
            .or_else(|| present().find(|(_, s)| s.reason.origin().is_some()))
            .or_else(|| present().next())
            .map_or(0, |(i, _)| i);
        let allowed = present().all(|(_, s)| s.allowed);
        let audit = present().any(|(_, s)| s.audit);
        let l3l4 = if present().any(|(_, s)| s.l3l4 == L3L4Verdict::Deny) {
            L3L4Verdict::Deny
        } else {
            present()
                .find_map(|(_, s)| matches!(s.l3l4, L3L4Verdict::Redirect(_)).then_some(s.l3l4))
                .unwrap_or(L3L4Verdict::Allow)
        };
        let l7 = if present().any(|(_, s)| s.l7.is_some()) {
            Some(present().all(|(_, s)| s.l7 != Some(false)))
        } else {
            None
        };
        let (stage, direction) = match &sides[deciding] {
            Some(s) => (s.stage, Some(s.direction)),
            None => (Stage::L3L4, None),
        };
        Decision {
            verdict: match (allowed, audit) {
                (false, _) => Verdict::Deny,
                (true, true) => Verdict::Audit,
                (true, false) => Verdict::Allow,
            },
            stage,
            direction,
            l3l4,
            l7,
            header_actions,
            sides,
            deciding,
        }
    }
}

/// One side's verdict for one request (before audit mode).
fn judge_side(
    side: &Side,
    request: Option<&L7Request<'_>>,
    actions: &mut Vec<HeaderAction>,
) -> SideOutcome {
    let mut o = SideOutcome {
        direction: side.direction,
        allowed: side.l3l4 != L3L4Verdict::Deny,
        audit: false,
        stage: Stage::L3L4,
        l3l4: side.l3l4,
        l7: None,
        reason: Reason::Fixed(side.l3l4_reason.clone()),
    };
    let (Some(policy), Some(request)) = (&side.l7, request) else {
        return o;
    };
    o.stage = Stage::L7;
    let (ok, reason) = match (&side.l7_fixed, policy, request) {
        (Some((ok, fixed)), _, _) => (*ok, Reason::Fixed(fixed.clone())),
        (None, L7Policy::Http(set), L7Request::Http(r)) => {
            let v = set.check(r);
            actions.extend(v.actions);
            match v.allowed_by {
                Some(i) => (true, Reason::HttpAllowed(set.rules()[i].clone())),
                None => (
                    false,
                    Reason::HttpNoMatch {
                        redirect: side.l3l4_reason.clone(),
                        rules: set.clone(),
                    },
                ),
            }
        }
        (None, L7Policy::Kafka(rules), L7Request::Kafka(r)) => {
            let redirect = describe_redirect(&side.l3l4_reason);
            match kafka::check(rules, r) {
                KafkaVerdict::Allowed { rules: used } => {
                    let first = &rules[used[0]];
                    (
                        true,
                        Reason::Text {
                            text: format!(
                                "{} allows {} (api key {})",
                                first.origin,
                                used.iter()
                                    .map(|i| rules[*i].summary.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" + "),
                                r.api_key
                            ),
                            origin: Some(first.origin.clone()),
                        },
                    )
                }
                KafkaVerdict::Denied { uncovered } => (
                    false,
                    Reason::Text {
                        text: if uncovered.is_empty() {
                            format!(
                                "{redirect} allows {}; kafka api key {} v{} matched no kafka rule",
                                summarize(rules.iter().map(|r| r.summary.as_str())),
                                r.api_key,
                                r.api_version,
                            )
                        } else {
                            format!(
                                "{redirect} allows {}; kafka api key {}: topic(s) {} not covered by any kafka rule",
                                summarize(rules.iter().map(|r| r.summary.as_str())),
                                r.api_key,
                                uncovered.join(", "),
                            )
                        },
                        origin: side.l3l4_reason.origin.clone(),
                    },
                ),
            }
        }
        (None, L7Policy::Dns(m), L7Request::Dns { name }) => match m.matching_pattern(name) {
            Some((pattern, origin)) => (
                true,
                Reason::Text {
                    text: format!("{origin} allows DNS {name} (pattern {pattern})"),
                    origin: Some(origin.clone()),
                },
            ),
            None if m.matches(name) => (
                true,
                Reason::Text {
                    text: format!("DNS {name} allowed"),
                    origin: side.l3l4_reason.origin.clone(),
                },
            ),
            None => (
                false,
                Reason::Text {
                    text: format!(
                        "{} restricts DNS names; {name} matched no dns rule",
                        describe_redirect(&side.l3l4_reason)
                    ),
                    origin: side.l3l4_reason.origin.clone(),
                },
            ),
        },
        (None, _, other) => (
            false,
            Reason::Text {
                text: format!(
                    "the port is redirected to the {} proxy but the request is {}",
                    match side.l3l4 {
                        L3L4Verdict::Redirect(p) => p.as_str(),
                        _ => "L7",
                    },
                    match other {
                        L7Request::Http(_) => "HTTP",
                        L7Request::Kafka(_) => "Kafka",
                        L7Request::Dns { .. } => "DNS",
                    }
                ),
                origin: side.l3l4_reason.origin.clone(),
            },
        ),
    };
    o.allowed = ok;
    o.l7 = Some(ok);
    o.reason = reason;
    o
}

fn describe_redirect(f: &Fixed) -> String {
    f.origin
        .as_ref()
        .map_or("a default-allow rule".to_string(), |o| o.to_string())
}
