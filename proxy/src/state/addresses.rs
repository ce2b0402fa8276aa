//! Addresses that stand for a peer by themselves (/32s in the ipcache), kept as persistent maps
//! changed one address at a time, with a count per identity so that the identity table shows
//! one peer per identity while any address has it.

use std::net::Ipv4Addr;
use std::sync::Arc;

use l7_rules::identity::{Identity, Peer};

#[derive(Clone, Default)]
pub struct AddressPeers {
    peers: imbl::OrdMap<Ipv4Addr, Arc<Peer>>,
    /// Per identity: the peer the identity table shows (the first address given it that is
    /// still there) and how many addresses have it.
    ids: imbl::OrdMap<Identity, (Arc<Peer>, usize)>,
}

impl AddressPeers {
    pub fn get(&self, ip: &Ipv4Addr) -> Option<&Arc<Peer>> {
        self.peers.get(ip)
    }

    pub fn peers(&self) -> &imbl::OrdMap<Ipv4Addr, Arc<Peer>> {
        &self.peers
    }

    /// The peer shown for `id`, when an address has it.
    pub fn shown_for(&self, id: Identity) -> Option<&Arc<Peer>> {
        self.ids.get(&id).map(|(p, _)| p)
    }

    /// One peer per identity some address has.
    pub fn shown(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.ids.values().map(|(p, _)| p)
    }

    /// `ip` now stands for `peer` (or for nothing).
    pub fn set(&mut self, ip: Ipv4Addr, peer: Option<Arc<Peer>>) {
        if let Some(old) = self.peers.remove(&ip) {
            self.forget(&old);
        }
        let Some(peer) = peer else { return };
        match self.ids.get_mut(&peer.identity) {
            Some((_, n)) => *n += 1,
            None => {
                self.ids.insert(peer.identity, (peer.clone(), 1));
            }
        }
        self.peers.insert(ip, peer);
    }

    fn forget(&mut self, gone: &Arc<Peer>) {
        let id = gone.identity;
        let Some((shown, n)) = self.ids.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.ids.remove(&id);
            return;
        }
        if Arc::ptr_eq(shown, gone) {
            // Rare (the shown address went): a walk of the addresses.
            if let Some(other) = self.peers.values().find(|p| p.identity == id) {
                *shown = other.clone();
            }
        }
    }
}
