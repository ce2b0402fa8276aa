//! Kubernetes mode's checkpoint: the policy documents in force, the endpoints and the pods'
//! interfaces `ward-cni` reported, and other nodes' pods, written
//! after every change of either, so that a `ward run` restarted while the API server is
//! unreachable enforces the last state at once instead of starting from nothing (and detaching
//! the pods' hooks, which would leave them open). Written to a temporary file and renamed into
//! place: a reader never sees half of one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::EndpointConfig;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Document name (`CiliumNetworkPolicy default/rule1`) → its text.
    pub documents: BTreeMap<String, String>,
    /// This node's pods (the endpoints that are not the node config file's).
    pub endpoints: Vec<EndpointConfig>,
    /// The pods' interfaces `ward-cni` reported.
    #[serde(default)]
    pub cni: Vec<crate::admin::api::CniAttachment>,
    /// Other nodes' pods, by address (their traffic keeps its identity after a restart).
    #[serde(default)]
    pub remote: Vec<(std::net::Ipv4Addr, crate::state::RemotePod)>,
}

impl Checkpoint {
    /// The checkpoint at `path`; none when there is none, or it cannot be read (logged).
    pub fn read(path: &Path) -> Option<Checkpoint> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the Kubernetes checkpoint; starting without it");
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the Kubernetes checkpoint does not parse; starting without it");
                None
            }
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_and_a_broken_one_is_none() {
        let dir = std::env::temp_dir().join(format!("ward-checkpoint-{}", std::process::id()));
        let path = dir.join("k.json");
        let c = Checkpoint {
            documents: [("CiliumNetworkPolicy default/a".into(), "kind: x\n".into())].into(),
            endpoints: Vec::new(),
            cni: Vec::new(),
            remote: vec![(
                std::net::Ipv4Addr::new(10, 1, 2, 3),
                crate::state::RemotePod {
                    namespace: "default".into(),
                    name: "p".into(),
                    labels: [("app".to_string(), "x".to_string())].into(),
                },
            )],
        };
        c.write(&path).unwrap();
        assert_eq!(Checkpoint::read(&path), Some(c));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(Checkpoint::read(&path), None);
        assert_eq!(Checkpoint::read(&dir.join("absent.json")), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
