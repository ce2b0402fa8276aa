//! The policy store: every parsed object (policies and the catalog objects that give them
//! context: Namespace, Node, Service) keyed by where it came from, changed one file or one
//! cluster object at a time, and turned into a [`PolicySet`] on demand.
//!
//! A change is all or nothing: a file (or an object) with any error changes nothing, and the
//! error carries every diagnostic. What did change is reported as a [`StoreChange`], with the
//! policies before and after, so a caller can find the endpoints it must look at again.

use super::object::{compile_object, Content, Object};
use super::{assemble, yaml, LoadError, PolicySet};
use crate::diag::{DocContext, Origin};
use crate::model::Policy;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a stored object came from. Files sort first, by path (component by component, the
/// order [`super::policy_files`] walks a directory in) and document; then cluster objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// Document `document` (0-based) of a policy file.
    File { path: String, document: usize },
    /// An object read from the cluster.
    Object {
        kind: String,
        namespace: Option<String>,
        name: String,
    },
}

impl ObjectKey {
    /// The file the object came from, if it came from one.
    pub fn file(&self) -> Option<&str> {
        match self {
            ObjectKey::File { path, .. } => Some(path),
            ObjectKey::Object { .. } => None,
        }
    }

    /// A cluster object's key.
    pub fn object(kind: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey::Object {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                ObjectKey::File { path, document },
                ObjectKey::File {
                    path: other_path,
                    document: other_document,
                },
            ) => Path::new(path)
                .cmp(Path::new(other_path))
                // Two spellings of one path (`a//b`, `a/b`) are still two keys.
                .then_with(|| path.cmp(other_path))
                .then(document.cmp(other_document)),
            (ObjectKey::File { .. }, ObjectKey::Object { .. }) => Ordering::Less,
            (ObjectKey::Object { .. }, ObjectKey::File { .. }) => Ordering::Greater,
            (
                ObjectKey::Object {
                    kind,
                    namespace,
                    name,
                },
                ObjectKey::Object {
                    kind: other_kind,
                    namespace: other_namespace,
                    name: other_name,
                },
            ) => (kind, namespace, name).cmp(&(other_kind, other_namespace, other_name)),
        }
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::File { path, document } => write!(f, "{path}: document {document}"),
            ObjectKey::Object {
                kind,
                namespace: Some(ns),
                name,
            } => write!(f, "{kind} {ns}/{name}"),
            ObjectKey::Object {
                kind,
                namespace: None,
                name,
            } => write!(f, "{kind} {name}"),
        }
    }
}

/// What one store operation changed. Objects whose content is the same as before (a file
/// rewritten with only comments or layout changed) are not listed.
#[derive(Clone, Debug, Default)]
pub struct StoreChange {
    /// Objects added or whose content changed.
    pub upserted: Vec<ObjectKey>,
    pub removed: Vec<ObjectKey>,
    /// The policies of the changed and removed objects, as they were: the endpoints their
    /// subjects select may lose rules.
    pub old_policies: Vec<Policy>,
    /// The policies of the changed and added objects, as they are now: the endpoints their
    /// subjects select may gain rules.
    pub new_policies: Vec<Policy>,
    /// A Namespace, Node or Service changed: selectors may select something else everywhere.
    pub catalog_changed: bool,
}

impl StoreChange {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    fn record(&mut self, key: ObjectKey, old: Option<&Object>, new: Option<&Object>) {
        if let (Some(o), Some(n)) = (old, new) {
            if o.value == n.value {
                return;
            }
        }
        for o in old.iter().chain(new.iter()) {
            if !matches!(o.content, Content::Policies(_)) {
                self.catalog_changed = true;
            }
        }
        if let Some(o) = old {
            self.old_policies
                .extend(o.content.policies().iter().cloned());
        }
        match new {
            Some(n) => {
                self.new_policies
                    .extend(n.content.policies().iter().cloned());
                self.upserted.push(key);
            }
            None => self.removed.push(key),
        }
    }
}

/// Every object of every source, keyed by [`ObjectKey`].
///
/// ```
/// use l7_rules::source::{ObjectKey, PolicyStore};
///
/// let mut store = PolicyStore::default();
/// let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n";
/// let change = store.put_file("ns.yaml", yaml).unwrap();
/// assert_eq!(change.upserted, [ObjectKey::File { path: "ns.yaml".into(), document: 0 }]);
/// assert!(store.put_file("ns.yaml", yaml).unwrap().is_empty());
/// assert!(store.snapshot().catalog.namespaces.contains_key("prod"));
/// assert_eq!(store.remove_file("ns.yaml").removed.len(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct PolicyStore {
    objects: BTreeMap<ObjectKey, Object>,
    /// Every file put and not removed, even one without documents: the snapshot's file list.
    files: BTreeSet<PathBuf>,
}

impl PolicyStore {
    /// Replaces every object of file `path` by the documents of `text`. A file with any error
    /// changes nothing: its previous objects stay, and every diagnostic is returned.
    pub fn put_file(&mut self, path: &str, text: &str) -> Result<StoreChange, LoadError> {
        let parsed =
            yaml::parse_file(path, text).map_err(|diagnostics| LoadError { diagnostics })?;
        self.files.insert(PathBuf::from(path));
        let objects = parsed
            .into_iter()
            .map(|(document, o)| {
                let key = ObjectKey::File {
                    path: path.to_string(),
                    document,
                };
                (key, o)
            })
            .collect();
        Ok(self.replace(|k| k.file() == Some(path), objects))
    }

    /// Forgets every object of file `path`.
    pub fn remove_file(&mut self, path: &str) -> StoreChange {
        self.files.remove(Path::new(path));
        self.replace(|k| k.file() == Some(path), BTreeMap::new())
    }

    /// Adds or replaces one object that did not come from a file (a cluster object, as JSON).
    /// Its key comes from its `kind` and `metadata`; its diagnostics name it by that key.
    pub fn put_object(&mut self, value: serde_json::Value) -> Result<StoreChange, LoadError> {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let metadata = value.get("metadata");
        let field = |f: &str| metadata.and_then(|m| m.get(f)).and_then(|v| v.as_str());
        let (namespace, name) = (field("namespace"), field("name").unwrap_or(""));
        let key = ObjectKey::object(kind, namespace, name);
        let mut cx = DocContext::for_object(kind, namespace, name);
        if kind.is_empty() || name.is_empty() {
            cx.error("", "a cluster object needs `kind` and `metadata.name`");
            return Err(LoadError {
                diagnostics: cx.diags,
            });
        }
        let value = match serde_yaml::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                cx.error("", format!("cannot read the object: {e}"));
                return Err(LoadError {
                    diagnostics: cx.diags,
                });
            }
        };
        let object = compile_object(value, cx).map_err(|diagnostics| LoadError { diagnostics })?;
        let filter_key = key.clone();
        Ok(self.replace(|k| *k == filter_key, BTreeMap::from([(key, object)])))
    }

    /// Forgets one object (usually a cluster object; a file's documents go with the file).
    pub fn remove_object(&mut self, key: &ObjectKey) -> StoreChange {
        self.replace(|k| k == key, BTreeMap::new())
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Object)> {
        self.objects.iter()
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.objects.keys()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The policy set of every stored object, in key order: the same set
    /// [`super::load_paths`] returns for the same files; the warnings that need every policy
    /// in view recomputed.
    pub fn snapshot(&self) -> PolicySet {
        assemble(self.objects.values(), self.files.iter().cloned().collect())
    }

    /// Replaces the objects whose keys `belongs` accepts by `objects`.
    fn replace(
        &mut self,
        belongs: impl Fn(&ObjectKey) -> bool,
        objects: BTreeMap<ObjectKey, Object>,
    ) -> StoreChange {
        let mut change = StoreChange::default();
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| belongs(k) && !objects.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let old = self.objects.remove(&key);
            change.record(key, old.as_ref(), None);
        }
        for (key, object) in objects {
            let old = self.objects.insert(key.clone(), object);
            change.record(key.clone(), old.as_ref(), self.objects.get(&key));
        }
        change
    }
}

impl Origin {
    /// The key of the object a diagnostic with this origin is about.
    pub fn key(&self) -> ObjectKey {
        match self {
            Origin::File { path, document, .. } => ObjectKey::File {
                path: path.clone(),
                document: *document,
            },
            Origin::Object {
                kind,
                namespace,
                name,
            } => ObjectKey::Object {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_paths;

    const RULE1: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}]
"#;

    const PROD: &str =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n";

    fn file_key(path: &str, document: usize) -> ObjectKey {
        ObjectKey::File {
            path: path.into(),
            document,
        }
    }

    fn names(set: &PolicySet) -> Vec<String> {
        set.policies
            .iter()
            .map(|p| format!("{} {}", p.meta.id(), p.spec_path))
            .collect()
    }

    #[test]
    fn put_replace_and_remove_a_file() {
        let mut store = PolicyStore::default();
        let change = store
            .put_file("a.yaml", &format!("{RULE1}---\n{PROD}"))
            .unwrap();
        assert_eq!(
            change.upserted,
            [file_key("a.yaml", 0), file_key("a.yaml", 1)]
        );
        assert!(change.removed.is_empty());
        assert_eq!(change.new_policies.len(), 1);
        assert!(change.catalog_changed);
        let set = store.snapshot();
        assert_eq!(names(&set), ["default/rule1 spec"]);
        assert!(set.catalog.namespaces.contains_key("prod"));
        assert_eq!(set.files, [PathBuf::from("a.yaml")]);

        // The same content, laid out differently: nothing changed.
        let change = store
            .put_file("a.yaml", &format!("# a comment\n{RULE1}---\n{PROD}"))
            .unwrap();
        assert!(change.is_empty(), "{change:?}");

        // The policy changes and the namespace goes.
        let rule1_post = RULE1.replace("method: GET", "method: POST");
        let change = store.put_file("a.yaml", &rule1_post).unwrap();
        assert_eq!(change.upserted, [file_key("a.yaml", 0)]);
        assert_eq!(change.removed, [file_key("a.yaml", 1)]);
        assert_eq!(change.old_policies.len(), 1);
        assert_eq!(change.new_policies.len(), 1);
        assert!(change.catalog_changed);
        assert!(store.snapshot().catalog.namespaces.is_empty());

        let change = store.remove_file("a.yaml");
        assert_eq!(change.removed, [file_key("a.yaml", 0)]);
        assert_eq!(change.old_policies.len(), 1);
        assert!(!change.catalog_changed);
        assert!(store.is_empty());
        assert!(store.snapshot().files.is_empty());
    }

    #[test]
    fn a_bad_file_changes_nothing() {
        let mut store = PolicyStore::default();
        store.put_file("a.yaml", RULE1).unwrap();
        let bad = format!(
            "{PROD}---\n{}",
            RULE1.replace("path: \"/\"", "path: \"/bad([\"")
        );
        let err = store.put_file("a.yaml", &bad).unwrap_err();
        let errors: Vec<_> = err.errors().collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document(), Some(1));
        assert_eq!(
            errors[0].field,
            "spec.ingress[0].toPorts[0].rules.http[0].path"
        );
        // The previous objects stay: the namespace of the rejected file never arrived.
        assert_eq!(store.keys().collect::<Vec<_>>(), [&file_key("a.yaml", 0)]);
        let set = store.snapshot();
        assert_eq!(names(&set), ["default/rule1 spec"]);
        assert!(set.catalog.namespaces.is_empty());
        // A bad new file is not listed either.
        assert!(store.put_file("b.yaml", "kind: [unclosed\n").is_err());
        assert_eq!(store.snapshot().files, [PathBuf::from("a.yaml")]);
    }

    #[test]
    fn snapshot_equals_load_paths() {
        let dir = std::env::temp_dir().join(format!("ward-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a-b")).unwrap();
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let l4_only = RULE1.replace("rule1", "l4").replace(
            "      rules:\n        http: [{method: GET, path: \"/\"}]\n",
            "",
        );
        let fqdn = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: example.com}]
"#;
        let files = [
            ("a/x.yaml", RULE1.to_string()),
            ("a-b/y.yaml", format!("{l4_only}---\n{PROD}")),
            ("z.yml", fqdn.to_string()),
            ("empty.yaml", String::new()),
        ];
        let mut store = PolicyStore::default();
        // Put in an order of their own: the snapshot orders by key.
        for (name, text) in files.iter().rev() {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            store.put_file(&path.display().to_string(), text).unwrap();
        }
        let loaded = load_paths(std::slice::from_ref(&dir)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let snap = store.snapshot();
        assert_eq!(names(&snap), names(&loaded));
        assert_eq!(snap.files, loaded.files);
        assert_eq!(snap.warnings, loaded.warnings);
        assert_eq!(
            format!("{:?}", snap.catalog),
            format!("{:?}", loaded.catalog)
        );
        // The L4-only allow and toFQDNs without DNS are both warned about.
        assert_eq!(snap.warnings.len(), 2, "{:?}", snap.warnings);
    }

    fn rule1_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "rule1", "namespace": "default"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                    "toPorts": [{
                        "ports": [{"port": "80", "protocol": "TCP"}],
                        "rules": {"http": [{"method": "GET", "path": "/"}]},
                    }],
                }],
            },
        })
    }

    #[test]
    fn cluster_objects_are_keyed_by_kind_namespace_and_name() {
        let mut store = PolicyStore::default();
        store.put_file("a.yaml", PROD).unwrap();
        let key = ObjectKey::object("CiliumNetworkPolicy", Some("default"), "rule1");
        let change = store.put_object(rule1_json()).unwrap();
        assert_eq!(change.upserted, std::slice::from_ref(&key));
        assert!(store.put_object(rule1_json()).unwrap().is_empty());
        let set = store.snapshot();
        assert_eq!(names(&set), ["default/rule1 spec"]);
        let meta = &set.policies[0].meta;
        assert_eq!(
            meta.origin(),
            Origin::Object {
                kind: "CiliumNetworkPolicy".into(),
                namespace: Some("default".into()),
                name: "rule1".into(),
            }
        );
        assert_eq!(store.keys().last(), Some(&key));

        let mut bad = rule1_json();
        bad["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["path"] = "/bad([".into();
        let err = store.put_object(bad).unwrap_err();
        let d = err.errors().next().unwrap();
        assert_eq!(d.origin.key(), key);
        assert!(
            d.to_string().starts_with(
                "error: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].rules.http[0].path: invalid path regex"
            ),
            "{d}"
        );
        // The good version stays.
        assert_eq!(store.len(), 2);

        let change = store.remove_object(&key);
        assert_eq!(change.removed, [key]);
        assert_eq!(change.old_policies.len(), 1);
        assert!(store.snapshot().policies.is_empty());

        let nameless = serde_json::json!({"kind": "Namespace", "metadata": {}});
        let err = store.put_object(nameless).unwrap_err();
        let text = err.diagnostics[0].to_string();
        assert!(text.starts_with("error: Namespace"), "{text}");
        assert!(text.ends_with(": a cluster object needs `kind` and `metadata.name`"));
    }
}
