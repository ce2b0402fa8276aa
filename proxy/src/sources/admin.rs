//! The admin socket as a source: `ward endpoint add/remove` and `ward-cni`'s ADD/DEL become
//! endpoint events, and the caller waits for the controller's answer.

use std::sync::mpsc;
use std::time::Duration;

use super::SourceEvent;
use crate::config::EndpointConfig;

/// How long an admin command waits for the controller: less than the CLI waits for its
/// answer, so a slow command is reported as such rather than as a lost connection.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct AdminSource {
    events: mpsc::Sender<SourceEvent>,
}

impl AdminSource {
    pub fn new(events: mpsc::Sender<SourceEvent>) -> AdminSource {
        AdminSource { events }
    }

    fn ask<T>(&self, event: impl FnOnce(super::Reply<T>) -> SourceEvent) -> Result<T, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.events
            .send(event(reply))
            .map_err(|_| "the controller has stopped".to_string())?;
        answer
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| "the controller did not answer".to_string())?
    }

    /// Adds a local endpoint; answers its id.
    pub fn add_endpoint(&self, endpoint: EndpointConfig) -> Result<u16, String> {
        self.ask(|reply| SourceEvent::EndpointAdd { endpoint, reply })
    }

    pub fn remove_endpoint(&self, name: String) -> Result<(), String> {
        self.ask(|reply| SourceEvent::EndpointRemove { name, reply })
    }

    /// `ward-cni` ADD; answers the endpoint's id once the pod is one.
    pub fn cni_add(
        &self,
        attachment: crate::admin::api::CniAttachment,
    ) -> Result<Option<u16>, String> {
        self.ask(|reply| SourceEvent::CniAdd { attachment, reply })
    }

    /// `ward-cni` DEL.
    pub fn cni_del(
        &self,
        container_id: String,
        namespace: String,
        name: String,
    ) -> Result<(), String> {
        self.ask(|reply| SourceEvent::CniDel {
            container_id,
            namespace,
            name,
            reply,
        })
    }
}
