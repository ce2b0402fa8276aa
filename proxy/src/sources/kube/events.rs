//! Refused objects get a Kubernetes Event (`events.k8s.io/v1`, type Warning, reason
//! `PolicyRejected`, the diagnostics as its note), so that `kubectl describe` and `kubectl get
//! events` show why Ward does not enforce an object's current version. The controller publishes
//! the refused documents in its status; this task reads them every second and reports each
//! refusal once (again if it changes, or after the object was accepted in between). A report
//! that fails is tried again on the next tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::warn;

use super::{KINDS, SOURCE};
use crate::controller::Status;

/// The longest note an Event takes (the API server refuses longer ones).
const NOTE_MAX: usize = 1024;

/// The object a document name (`Kind namespace/name` or `Kind name`) stands for, when it is
/// one of the watched kinds.
pub fn reference(document: &str) -> Option<ObjectReference> {
    let (kind, rest) = document.split_once(' ')?;
    let (group, version, kind, _) = KINDS.iter().find(|k| k.2 == kind)?;
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
        None => (None, rest.to_string()),
    };
    Some(ObjectReference {
        api_version: Some(if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        }),
        kind: Some(kind.to_string()),
        namespace,
        name: Some(name),
        ..ObjectReference::default()
    })
}

/// The note: the diagnostics, cut at [`NOTE_MAX`] bytes on a character boundary.
fn note(text: &str) -> String {
    if text.len() <= NOTE_MAX {
        return text.to_string();
    }
    let mut end = NOTE_MAX - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Reports refused objects until the task is dropped.
pub async fn report(client: Client, node: Option<String>, status: Arc<ArcSwap<Status>>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "ward".into(),
            instance: node,
        },
    );
    // Document → the text last reported for it.
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let rejected = status.load().rejected.clone();
        reported.retain(|doc, _| rejected.contains_key(doc));
        for (doc, text) in &rejected {
            if reported.get(doc) == Some(text) {
                continue;
            }
            let Some(object) = reference(doc) else {
                continue;
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "PolicyRejected".into(),
                note: Some(note(text)),
                action: "Enforce".into(),
                secondary: None,
            };
            match recorder.publish(&event, &object).await {
                Ok(()) => {
                    reported.insert(doc.clone(), text.clone());
                }
                Err(e) => {
                    warn!(object = %doc, error = %e, "{SOURCE}: cannot post the Event for a refused object; trying again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_name_is_its_objects_reference() {
        let r = reference("CiliumNetworkPolicy default/rule1").unwrap();
        assert_eq!(r.api_version.as_deref(), Some("cilium.io/v2"));
        assert_eq!(r.kind.as_deref(), Some("CiliumNetworkPolicy"));
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("rule1"));
        let r = reference("CiliumClusterwideNetworkPolicy cw").unwrap();
        assert_eq!((r.namespace, r.name.as_deref()), (None, Some("cw")));
        assert_eq!(
            reference("Namespace prod").unwrap().api_version.as_deref(),
            Some("v1")
        );
        // A policy file's name is no object.
        assert!(reference("/etc/ward/policies/a.yaml").is_none());
        assert!(reference("Pod default/x").is_none());
        let long = "é".repeat(1000);
        assert!(note(&long).len() <= NOTE_MAX);
    }
}
