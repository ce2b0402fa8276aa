//! Labels as Cilium writes them: `source:key=value`, with the `k8s:` source for pod and
//! namespace labels and `reserved:` for the reserved identities.

use std::collections::BTreeMap;
use std::fmt;

/// Label key Cilium puts on every pod for its namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Prefix of the namespace's own labels copied onto its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The label Kubernetes sets on every namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Label key for the cluster a pod belongs to.
pub const POLICY_CLUSTER: &str = "io.cilium.k8s.policy.cluster";
/// Label key for the pod's service account.
pub const POLICY_SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
/// The cluster name Ward's single-node model uses.
pub const DEFAULT_CLUSTER: &str = "default";

/// Sources Cilium knows. `any` in a selector matches every source.
pub const SOURCE_K8S: &str = "k8s";
pub const SOURCE_RESERVED: &str = "reserved";
pub const SOURCE_ANY: &str = "any";
pub const SOURCE_CIDR: &str = "cidr";
pub const SOURCE_FQDN: &str = "fqdn";
pub const SOURCE_UNSPEC: &str = "unspec";

/// One label. Ordering is by key first so label sets print like `cilium identity list`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub key: String,
    pub value: String,
    pub source: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Label {
        Label {
            source: source.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    /// Parses `source:key=value`, `key=value` (source `any`... here `k8s` is *not* assumed:
    /// the caller passes the default source) or a bare `key` (empty value).
    pub fn parse(text: &str, default_source: &str) -> Label {
        let (source, rest) = split_source(text);
        let source = source.unwrap_or(default_source);
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, v),
            None => (rest, ""),
        };
        Label::new(source, key, value)
    }
}

/// Splits a known `source:` prefix off a label key. Keys such as `kubernetes.io/x` contain no
/// colon, but `k8s:app` does; only the sources Cilium defines are recognised so that a key with
/// an unusual colon is not mangled.
pub fn split_source(text: &str) -> (Option<&str>, &str) {
    if let Some((src, rest)) = text.split_once(':') {
        if matches!(
            src,
            SOURCE_K8S
                | SOURCE_RESERVED
                | SOURCE_ANY
                | SOURCE_CIDR
                | SOURCE_FQDN
                | SOURCE_UNSPEC
                | "container"
                | "cni"
        ) {
            return (Some(src), rest);
        }
    }
    (None, text)
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A sorted, de-duplicated set of labels: the security-relevant labels of one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    pub fn new(mut labels: Vec<Label>) -> LabelSet {
        labels.sort();
        labels.dedup();
        LabelSet(labels)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Values of every label with this key whose source matches `source` (`any`/None = all).
    pub fn values<'a>(
        &'a self,
        source: Option<&'a str>,
        key: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |l| {
                l.key == key
                    && match source {
                        None | Some(SOURCE_ANY) => true,
                        Some(s) => l.source == s,
                    }
            })
            .map(|l| l.value.as_str())
    }

    pub fn has_source(&self, source: &str) -> bool {
        self.0.iter().any(|l| l.source == source)
    }

    /// The pod's namespace, if this is a pod's label set.
    pub fn namespace(&self) -> Option<&str> {
        self.values(Some(SOURCE_K8S), POD_NAMESPACE).next()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Builds the security labels Cilium derives for a pod: its own labels with the `k8s:` source,
/// its namespace, the namespace's labels (always including `kubernetes.io/metadata.name`), the
/// cluster, and the service account when known.
pub fn pod_labels(
    labels: &BTreeMap<String, String>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    service_account: Option<&str>,
) -> LabelSet {
    let mut out = Vec::with_capacity(labels.len() + namespace_labels.len() + 4);
    for (k, v) in labels {
        let (source, key) = split_source(k);
        out.push(Label::new(source.unwrap_or(SOURCE_K8S), key, v));
    }
    out.push(Label::new(SOURCE_K8S, POD_NAMESPACE, namespace));
    out.push(Label::new(
        SOURCE_K8S,
        &format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"),
        namespace,
    ));
    for (k, v) in namespace_labels {
        out.push(Label::new(
            SOURCE_K8S,
            &format!("{NAMESPACE_LABELS_PREFIX}{k}"),
            v,
        ));
    }
    out.push(Label::new(SOURCE_K8S, POLICY_CLUSTER, DEFAULT_CLUSTER));
    if let Some(sa) = service_account {
        out.push(Label::new(SOURCE_K8S, POLICY_SERVICE_ACCOUNT, sa));
    }
    LabelSet::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_label_forms() {
        let cases = [
            ("k8s:app=web", "k8s", "app", "web"),
            ("app=web", "any", "app", "web"),
            ("reserved:host", "reserved", "host", ""),
            (
                "kubernetes.io/metadata.name=db",
                "any",
                "kubernetes.io/metadata.name",
                "db",
            ),
        ];
        for (text, source, key, value) in cases {
            let l = Label::parse(text, "any");
            assert_eq!(
                (l.source.as_str(), l.key.as_str(), l.value.as_str()),
                (source, key, value),
                "{text}"
            );
        }
    }

    #[test]
    fn pod_labels_carry_namespace_and_cluster() {
        let mut labels = BTreeMap::new();
        labels.insert("org".to_string(), "empire".to_string());
        let set = pod_labels(&labels, "default", &BTreeMap::new(), None);
        assert_eq!(set.namespace(), Some("default"));
        assert_eq!(set.values(Some("k8s"), "org").next(), Some("empire"));
        assert_eq!(
            set.values(
                None,
                "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
            )
            .next(),
            Some("default")
        );
        assert_eq!(set.values(None, POLICY_CLUSTER).next(), Some("default"));
    }
}
