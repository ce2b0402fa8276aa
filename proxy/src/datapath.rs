//! The node's side of the kernel datapath: what the controller asks of it (apply a desired
//! state, attach and detach hooks), and the kernel's events turned into flows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bpf_redirect::{ApplyStats, AttachOutcome, DesiredState, Hook};
use tracing::{error, warn};

use crate::flows::{Flow, FlowWriter};
use crate::state::NodeState;

/// What the controller needs of the datapath. `bpf_redirect::Datapath` is the real one; the
/// controller's unit tests record what they are asked instead.
pub trait Kernel: Send + 'static {
    fn apply(&mut self, desired: &DesiredState) -> bpf_redirect::Result<ApplyStats>;
    /// Writes and deletes remote addresses' ipcache entries alone (learned DNS addresses
    /// whose identities the policy entries already name).
    fn write_ipcache(
        &mut self,
        upserts: &[bpf_redirect::IpcacheEntry],
        deletes: &[bpf_redirect::IpcacheEntry],
    ) -> bpf_redirect::Result<bpf_redirect::MapDiff>;
    fn attach(&mut self, iface: &str, hook: Hook) -> bpf_redirect::Result<AttachOutcome>;
    fn detach(&mut self, iface: &str, hook: Hook) -> bpf_redirect::Result<bool>;
    fn attached(&self) -> bpf_redirect::Result<Vec<(String, Hook)>>;
    /// Destinations conntrack has live flows to (learned DNS addresses stay while they do).
    fn live_destinations(
        &self,
    ) -> bpf_redirect::Result<std::collections::HashSet<std::net::Ipv4Addr>> {
        Ok(Default::default())
    }
}

impl Kernel for bpf_redirect::Datapath {
    fn apply(&mut self, desired: &DesiredState) -> bpf_redirect::Result<ApplyStats> {
        bpf_redirect::Datapath::apply(self, desired)
    }
    fn write_ipcache(
        &mut self,
        upserts: &[bpf_redirect::IpcacheEntry],
        deletes: &[bpf_redirect::IpcacheEntry],
    ) -> bpf_redirect::Result<bpf_redirect::MapDiff> {
        bpf_redirect::Datapath::write_ipcache(self, upserts, deletes)
    }
    fn attach(&mut self, iface: &str, hook: Hook) -> bpf_redirect::Result<AttachOutcome> {
        bpf_redirect::Datapath::attach(self, iface, hook)
    }
    fn detach(&mut self, iface: &str, hook: Hook) -> bpf_redirect::Result<bool> {
        bpf_redirect::Datapath::detach(self, iface, hook)
    }
    fn attached(&self) -> bpf_redirect::Result<Vec<(String, Hook)>> {
        bpf_redirect::Datapath::attached(self)
    }
    fn live_destinations(
        &self,
    ) -> bpf_redirect::Result<std::collections::HashSet<std::net::Ipv4Addr>> {
        bpf_redirect::Datapath::live_destinations(self)
    }
}

/// Reads the kernel's events until `stop` and writes them as flows, named from the current
/// snapshot.
pub fn spawn_events(
    pin_root: std::path::PathBuf,
    state: Arc<ArcSwap<NodeState>>,
    flows: FlowWriter,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let mut reader = match bpf_redirect::EventReader::open(&pin_root) {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "cannot read datapath events; kernel flows are not logged");
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                match reader.next_timeout(Duration::from_millis(250)) {
                    // IPv6 (router solicitations, ND) dropped at endpoint hooks carries no
                    // IPv4 tuple to show; it is counted in ward_datapath_drops_total only.
                    Ok(Some(e))
                        if e.kind
                            == bpf_redirect::EventKind::Drop(bpf_redirect::DropReason(
                                bpf_redirect::common::drop_reason::UNSUPPORTED_L3,
                            )) => {}
                    Ok(Some(e)) => flows.send(Flow::from_event(&e, &state.load())),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "reading datapath events");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        })
}
