//! Label selectors (`matchLabels` + `matchExpressions`) compiled into requirements, matched
//! against label sets the way Cilium does: a key written with a source (`k8s:app`) only matches
//! labels of that source, a key without one (or with `any:`) matches every source.

use crate::labels::{split_source, LabelSet, SOURCE_ANY};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// `None` = any source.
    pub source: Option<String>,
    pub key: String,
    pub op: Operator,
}

impl Requirement {
    pub fn new(key_with_source: &str, op: Operator) -> Requirement {
        let (source, key) = split_source(key_with_source);
        Requirement {
            source: source.filter(|s| *s != SOURCE_ANY).map(str::to_string),
            key: key.to_string(),
            op,
        }
    }

    fn matches(&self, labels: &LabelSet) -> bool {
        let mut values = labels.values(self.source.as_deref(), &self.key);
        match &self.op {
            Operator::In(allowed) => values.any(|v| allowed.iter().any(|a| a == v)),
            Operator::NotIn(denied) => values.all(|v| !denied.iter().any(|d| d == v)),
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
        }
    }
}

/// A compiled label selector. The empty selector selects every label set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_wildcard(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Adds a requirement unless one on the same key already exists (namespace injection only
    /// applies to selectors that do not name a namespace themselves).
    pub fn inject_if_absent(&mut self, req: Requirement) {
        if !self.requirements.iter().any(|r| r.key == req.key) {
            self.requirements.push(req);
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = match &r.source {
                Some(s) => format!("{s}:{}", r.key),
                None => r.key.clone(),
            };
            match &r.op {
                Operator::In(v) if v.len() == 1 => write!(f, "{key}={}", v[0])?,
                Operator::In(v) => write!(f, "{key} in ({})", v.join("|"))?,
                Operator::NotIn(v) => write!(f, "{key} notin ({})", v.join("|"))?,
                Operator::Exists => write!(f, "{key}")?,
                Operator::DoesNotExist => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Label;

    fn set(labels: &[&str]) -> LabelSet {
        LabelSet::new(labels.iter().map(|l| Label::parse(l, "k8s")).collect())
    }

    #[test]
    fn requirement_table() {
        let pod = set(&["k8s:org=empire", "k8s:class=deathstar", "reserved:x"]);
        let cases: Vec<(&str, Operator, bool)> = vec![
            ("org", Operator::In(vec!["empire".into()]), true),
            ("k8s:org", Operator::In(vec!["empire".into()]), true),
            ("any:org", Operator::In(vec!["empire".into()]), true),
            ("reserved:org", Operator::In(vec!["empire".into()]), false),
            ("org", Operator::In(vec!["alliance".into()]), false),
            ("org", Operator::NotIn(vec!["alliance".into()]), true),
            ("org", Operator::NotIn(vec!["empire".into()]), false),
            ("missing", Operator::NotIn(vec!["x".into()]), true),
            ("class", Operator::Exists, true),
            ("missing", Operator::Exists, false),
            ("missing", Operator::DoesNotExist, true),
            ("class", Operator::DoesNotExist, false),
        ];
        for (key, op, want) in cases {
            let sel = LabelSelector {
                requirements: vec![Requirement::new(key, op.clone())],
            };
            assert_eq!(sel.matches(&pod), want, "{key} {op:?}");
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(LabelSelector::default().matches(&set(&["k8s:a=b"])));
        assert!(LabelSelector::default().matches(&LabelSet::default()));
    }
}
