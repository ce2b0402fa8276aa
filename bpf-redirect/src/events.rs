//! Typed events from the `ward_events` ring buffer.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, RingBuf};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
};

use crate::{
    common::{self, drop_reason, map_names, RawEvent},
    Error, Hook, Result,
};

/// A stable drop reason code (`common::drop_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropReason(pub u16);

impl DropReason {
    pub const POLICY: Self = Self(drop_reason::POLICY);
    pub const POLICY_DENY: Self = Self(drop_reason::POLICY_DENY);
    pub const NO_PROXY_SOCKET: Self = Self(drop_reason::NO_PROXY_SOCKET);
    pub const INVALID_SOURCE: Self = Self(drop_reason::INVALID_SOURCE);
    pub const UNKNOWN_ENDPOINT: Self = Self(drop_reason::UNKNOWN_ENDPOINT);
    pub const CT_NO_ENTRY: Self = Self(drop_reason::CT_NO_ENTRY);

    pub fn name(self) -> &'static str {
        drop_reason::name(self.0)
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The packet was dropped.
    Drop(DropReason),
    /// A new flow was allowed.
    Allow,
    /// A new flow was assigned to the proxy listener.
    Redirect { proxy_port: u16 },
    /// Policy would have dropped (reason) but the endpoint is in audit mode.
    Audit(DropReason),
    /// A kind this library does not know (newer kernel object).
    Unknown(u8),
}

/// Direction of the policy that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyDirection {
    None,
    Ingress,
    Egress,
}

/// One datapath event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// `CLOCK_MONOTONIC` nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// IP protocol; for ICMP `dst.port()` is the ICMP type.
    pub proto: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub src_endpoint: u16,
    pub dst_endpoint: u16,
    pub ifindex: u32,
    pub hook: Option<Hook>,
    pub policy_direction: PolicyDirection,
    /// `common::CT_NEW` / `CT_ESTABLISHED` / `CT_REPLY`.
    pub ct_state: u8,
    pub tcp_flags: u8,
    pub cookie: u32,
}

impl From<&RawEvent> for Event {
    fn from(r: &RawEvent) -> Self {
        let kind = match r.kind {
            common::EVENT_DROP => EventKind::Drop(DropReason(r.reason)),
            common::EVENT_ALLOW => EventKind::Allow,
            common::EVENT_REDIRECT => EventKind::Redirect {
                proxy_port: r.proxy_port,
            },
            common::EVENT_AUDIT => EventKind::Audit(DropReason(r.reason)),
            k => EventKind::Unknown(k),
        };
        Event {
            kind,
            ts_ns: r.ts_ns,
            src: SocketAddrV4::new(Ipv4Addr::from(r.saddr), r.sport),
            dst: SocketAddrV4::new(Ipv4Addr::from(r.daddr), r.dport),
            proto: r.proto,
            src_identity: r.src_identity,
            dst_identity: r.dst_identity,
            src_endpoint: r.src_endpoint,
            dst_endpoint: r.dst_endpoint,
            ifindex: r.ifindex,
            hook: Hook::from_number(r.hook),
            policy_direction: match r.policy_dir {
                common::DIR_INGRESS => PolicyDirection::Ingress,
                common::DIR_EGRESS => PolicyDirection::Egress,
                _ => PolicyDirection::None,
            },
            ct_state: r.ct_state,
            tcp_flags: r.tcp_flags,
            cookie: r.cookie,
        }
    }
}

/// The names of the TCP flags set in `flags` (`SYN, ACK`), as Hubble writes them.
pub fn tcp_flag_names(flags: u8) -> String {
    const NAMES: [(u8, &str); 5] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(", ")
}

/// Hubble-like one-line form:
/// `10.0.1.2:40000 (ID:1001) -> 10.0.2.2:80 (ID:1002) Policy denied DROPPED (TCP Flags: SYN)`.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (ID:{}) -> {} (ID:{}) ",
            self.src, self.src_identity, self.dst, self.dst_identity
        )?;
        match self.kind {
            EventKind::Drop(r) => write!(f, "{} DROPPED", r.name())?,
            EventKind::Allow => write!(f, "policy-verdict ALLOWED")?,
            EventKind::Redirect { proxy_port } => write!(f, "to-proxy:{proxy_port} REDIRECTED")?,
            EventKind::Audit(r) => write!(f, "{} AUDITED", r.name())?,
            EventKind::Unknown(k) => write!(f, "unknown event kind {k}")?,
        }
        match self.proto {
            6 => write!(f, " (TCP Flags: {})", tcp_flag_names(self.tcp_flags)),
            17 => write!(f, " (UDP)"),
            1 => write!(f, " (ICMPv4 type {})", self.dst.port()),
            p => write!(f, " (proto {p})"),
        }
    }
}

/// Blocking reader of the event ring buffer. One consumer per ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader").finish_non_exhaustive()
    }
}

impl EventReader {
    /// Opens the ring buffer pinned under `pin_root`.
    pub fn open(pin_root: impl AsRef<Path>) -> Result<Self> {
        let name = map_names::EVENTS;
        let path = pin_root.as_ref().join(name);
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, source })?;
        let ring =
            RingBuf::try_from(Map::RingBuf(data)).map_err(|source| Error::Map { name, source })?;
        Ok(Self { ring })
    }

    /// The next event already in the buffer, without blocking.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let item = self.ring.next()?;
            if let Some(raw) = RawEvent::from_bytes(&item) {
                return Some(Event::from(&raw));
            }
        }
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_next() {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let timeout = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(Error::Io {
                        what: "polling the event ring buffer".into(),
                        source: errno.into(),
                    })
                }
            }
        }
    }

    /// Drains everything currently buffered.
    pub fn drain(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}
