//! The datapath under test without `ward run` (feature `datapath`): a private bpffs pin root
//! per test, a [`Datapath`] opened in a private network namespace, one BPF_PROG_TEST_RUN
//! verdict per synthetic packet ([`crate::packet`]), the events it produced, allow entries.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Duration,
};

use bpf_redirect::{common::precedence, Datapath, Event, Hook, PolicyEntry};

use crate::{netns::in_private_netns, privileged, SEQ};

/// Interface index the synthetic packets claim to arrive on.
pub const LO: u32 = 1;

/// A per-test pin root under /sys/fs/bpf, removed (links detached, maps
/// unpinned) on drop.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/ward-test-{}-{n}",
            std::process::id()
        )))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for PinRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = Datapath::uninstall(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

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
