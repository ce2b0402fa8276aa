//! Helpers of the BPF_PROG_TEST_RUN tests: a private datapath per test, one verdict per
//! synthetic packet, the events it produced, allow entries.

use std::time::Duration;

use bpf_redirect::{common::precedence, Datapath, Event, Hook, PolicyEntry};

use super::{in_private_netns, privileged, PinRoot};

/// Interface index the synthetic packets claim to arrive on.
pub const LO: u32 = 1;

/// A plain allow entry (exact port, or any port/protocol when `proto`/`port` is 0).
pub fn allow(ep: u16, identity: u32, egress: bool, proto: u8, port: u16) -> PolicyEntry {
    PolicyEntry {
        endpoint_id: ep,
        identity,
        egress,
        proto,
        port,
        port_prefix_len: if proto == 0 || port == 0 { 0 } else { 16 },
        deny: false,
        proxy_port: 0,
        precedence: precedence::allow(0),
        cookie: 0,
    }
}

/// Opens a datapath in a fresh pin root inside a private netns and runs `f`.
pub fn with_datapath(name: &'static str, f: impl FnOnce(&mut Datapath) + Send + 'static) {
    if !privileged(name) {
        return;
    }
    in_private_netns(move || {
        let root = PinRoot::new();
        let mut dp = Datapath::open(root.path()).expect("open datapath");
        f(&mut dp);
        drop(dp);
        drop(root);
    });
}

/// The program's return code for one packet.
pub fn run(dp: &mut Datapath, hook: Hook, pkt: &[u8]) -> u32 {
    dp.test_run(hook, pkt, LO, 0).expect("test run").retval
}

/// The events emitted so far (waits briefly for one if none is there yet).
pub fn events(dp: &Datapath) -> Vec<Event> {
    let mut r = dp.events().expect("events");
    let mut out = r.drain();
    if out.is_empty() {
        if let Some(e) = r.next_timeout(Duration::from_millis(50)).unwrap() {
            out.push(e);
        }
    }
    out
}
