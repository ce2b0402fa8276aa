//! Ward's kernel datapath loader: loads the C TC programs (`ebpf/ward.bpf.c`,
//! compiled by `build.rs` and embedded), pins their maps under a pin root
//! (default `/sys/fs/bpf/ward`), attaches them to interfaces through pinned TCX
//! links, applies a desired set of map entries as a diff, and reads counters and
//! events.
//!
//! Owns: map layouts (via `bpf-redirect-common`), attach/detach, pins, the
//! fwmark rule and local route for proxy redirects. Must not: know anything
//! about L7 or policy files — the proxy turns policy into [`DesiredState`].
//!
//! Everything here needs root (CAP_BPF + CAP_NET_ADMIN) and a bpffs.
//!
//! Feature `test-util`: hooks only tests and benches use (BPF_PROG_TEST_RUN on
//! a synthetic packet, attaching another hook's program, program ids and
//! run-time stats, conntrack, event and proxy-socket readers off a
//! [`Datapath`], `ProxySockets::{register, contains}`, `ifindex`). The
//! product (`ward`) never enables it; `ward-tests` does.

mod apply;
mod attach;
mod counters;
mod events;
mod proxy_sockets;
mod routing;
mod state;
mod sys;

use attach::detach_pin;
#[cfg(feature = "test-util")]
mod test_run;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

#[cfg(feature = "test-util")]
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::{
    programs::{SchedClassifier, SkLookup, TcAttachType},
    Ebpf, EbpfLoader,
};
pub use bpf_redirect_common as common;
use common::{map_names, program_names};

pub use counters::CounterReader;
pub use events::{tcp_flag_names, DropReason, Event, EventKind, EventReader, PolicyDirection};
pub use proxy_sockets::{register_listener, socket_cookie, ProxySockets};
pub use routing::ProxyRouting;
pub use state::{
    port_range_prefixes, ApplyStats, DesiredState, Endpoint, Interface, IpcacheEntry, MapDiff,
    PolicyEntry,
};
#[cfg(feature = "test-util")]
pub use test_run::TestRunOutput;

/// The default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ward";

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ward.bpf.o"));

/// Errors of the datapath loader. Most are the caller's environment (no root,
/// no bpffs, unknown interface) or the kernel refusing something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object or of the wrong type")]
    MissingMap(&'static str),
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("interface {0:?} not found in this network namespace")]
    NoSuchInterface(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("pinned map {path} does not match this build ({detail}); remove it (Datapath::uninstall) and reload")]
    IncompatiblePin { path: PathBuf, detail: String },
    #[error("invalid desired state: {0}")]
    Invalid(String),
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Host-side veth, TC ingress: packets leaving the pod.
    FromEndpoint,
    /// Host-side veth, TC egress: packets entering the pod.
    ToEndpoint,
    /// The node's uplink, TC ingress: packets from outside.
    FromNetdev,
    /// The node's uplink, TC egress: packets the node sends out (host policies).
    ToNetdev,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::FromEndpoint,
        Hook::ToEndpoint,
        Hook::FromNetdev,
        Hook::ToNetdev,
    ];

    fn program(self) -> &'static str {
        match self {
            Hook::FromEndpoint => program_names::FROM_ENDPOINT,
            Hook::ToEndpoint => program_names::TO_ENDPOINT,
            Hook::FromNetdev => program_names::FROM_NETDEV,
            Hook::ToNetdev => program_names::TO_NETDEV,
        }
    }
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromEndpoint | Hook::FromNetdev => TcAttachType::Ingress,
            Hook::ToEndpoint | Hook::ToNetdev => TcAttachType::Egress,
        }
    }
    /// The suffix of the link pin name `<iface>-<suffix>`.
    pub fn pin_suffix(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from-endpoint",
            Hook::ToEndpoint => "to-endpoint",
            Hook::FromNetdev => "from-netdev",
            Hook::ToNetdev => "to-netdev",
        }
    }
    /// The number the C side uses (`WARD_HOOK_*`).
    pub fn number(self) -> u8 {
        match self {
            Hook::FromEndpoint => common::HOOK_FROM_ENDPOINT,
            Hook::ToEndpoint => common::HOOK_TO_ENDPOINT,
            Hook::FromNetdev => common::HOOK_FROM_NETDEV,
            Hook::ToNetdev => common::HOOK_TO_NETDEV,
        }
    }
    pub fn from_number(n: u8) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.number() == n)
    }
}

/// What [`Datapath::attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No pinned link existed: a new TCX link was created and pinned.
    Created,
    /// A pinned link already ran this exact program: nothing changed.
    Kept,
    /// A pinned link ran another program: it was swapped atomically (BPF_LINK_UPDATE).
    Replaced,
}

/// Sum of the per-CPU counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: Vec<u64>,
}

impl Counters {
    /// Counters from their values by index (as summed over CPUs).
    pub fn from_values(values: Vec<u64>) -> Counters {
        Counters { values }
    }
    /// Raw counter by index (`common::counter::*`).
    pub fn get(&self, index: u32) -> u64 {
        self.values.get(index as usize).copied().unwrap_or(0)
    }
    /// Drops for one reason (`common::drop_reason::*`).
    pub fn drops(&self, reason: u16) -> u64 {
        self.get(common::counter::DROP_BASE + u32::from(reason))
    }
}

/// The loaded datapath: programs plus the pinned maps under one pin root.
pub struct Datapath {
    ebpf: Ebpf,
    pin_root: PathBuf,
    /// What the last successful [`Datapath::apply`] left in the maps, and when the maps were
    /// last read back: the next apply diffs against it instead of reading every map.
    applied: Option<(state::Compiled, std::time::Instant)>,
}

/// How long [`Datapath::apply`] trusts what it last wrote before it reads the maps back from
/// the kernel (an entry someone else changed is corrected within this time).
pub const RESYNC_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_root", &self.pin_root)
            .finish()
    }
}

impl Datapath {
    /// Loads the programs, reusing maps already pinned under `pin_root` (so a
    /// restarted daemon sees the same ipcache, policy and conntrack) and creating
    /// and pinning the missing ones. Mounts bpffs on `/sys/fs/bpf` if nothing is
    /// mounted there and `pin_root` lies below it.
    pub fn open(pin_root: impl AsRef<Path>) -> Result<Self> {
        let pin_root = pin_root.as_ref().to_path_buf();
        sys::ensure_bpffs(&pin_root)?;
        fs::create_dir_all(pin_root.join("links"))
            .map_err(io_err(format!("creating {}", pin_root.display())))?;
        let pin_paths: Vec<(&'static str, PathBuf)> = map_names::EVERY
            .iter()
            .map(|n| (*n, pin_root.join(n)))
            .collect();
        for (name, path) in &pin_paths {
            check_pinned_map(name, path)?;
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        for hook in Hook::ALL {
            let name = hook.program();
            typed_program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        let name = program_names::SK_LOOKUP;
        typed_program::<SkLookup>(&mut ebpf, name)?
            .load()
            .map_err(|source| Error::Program { name, source })?;
        Ok(Self {
            ebpf,
            pin_root,
            applied: None,
        })
    }

    /// The pin root this datapath uses.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Detaches everything and removes every pin under `pin_root` (the maps go
    /// with it). For uninstall and tests; a running datapath is cut.
    pub fn uninstall(pin_root: impl AsRef<Path>) -> Result<()> {
        let root = pin_root.as_ref();
        if !root.exists() {
            return Ok(());
        }
        let links = root.join("links");
        if links.exists() {
            for entry in
                fs::read_dir(&links).map_err(io_err(format!("reading {}", links.display())))?
            {
                let entry = entry.map_err(io_err("reading link dir"))?;
                detach_pin(&entry.path())?;
            }
            fs::remove_dir(&links).map_err(io_err(format!("removing {}", links.display())))?;
        }
        for name in map_names::EVERY {
            let p = root.join(name);
            if p.exists() {
                fs::remove_file(&p).map_err(io_err(format!("removing {}", p.display())))?;
            }
        }
        fs::remove_dir(root).map_err(io_err(format!("removing {}", root.display())))
    }

    /// Reads and sums the per-CPU counters (through the same reader the metrics use).
    #[cfg(feature = "test-util")]
    pub fn counters(&self) -> Result<Counters> {
        CounterReader::open(&self.pin_root)?.read()
    }

    /// Destination addresses of the live conntrack entries (not closing, seen within their
    /// lifetime): what `toFQDNs` keeps past a TTL while connections use it.
    pub fn live_destinations(&self) -> Result<std::collections::HashSet<std::net::Ipv4Addr>> {
        let name = map_names::CT;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let m: aya::maps::HashMap<&aya::maps::MapData, common::CtKey, common::CtValue> =
            aya::maps::HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        // bpf_ktime_get_ns is CLOCK_MONOTONIC.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and an output struct of the right type.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64;
        let mut out = std::collections::HashSet::new();
        for r in m.iter() {
            let (k, v) = match r {
                Ok(kv) => kv,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(Error::Map { name, source }),
            };
            let lifetime_s: u64 = if v.flags & common::CT_F_CLOSING != 0 {
                10
            } else if k.proto == 6 {
                21_600
            } else {
                60
            };
            if now.saturating_sub(v.last_seen_ns) <= lifetime_s * 1_000_000_000 {
                out.insert(std::net::Ipv4Addr::from(k.daddr));
            }
        }
        Ok(out)
    }

    /// Conntrack entries (for introspection and tests).
    #[cfg(feature = "test-util")]
    pub fn conntrack(&self) -> Result<Vec<(common::CtKey, common::CtValue)>> {
        let name = map_names::CT;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let m: BpfHashMap<&MapData, common::CtKey, common::CtValue> =
            BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        let mut out = Vec::new();
        for r in m.iter() {
            match r {
                Ok(kv) => out.push(kv),
                // LRU entries can vanish between get_next_key and lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(Error::Map { name, source }),
            }
        }
        Ok(out)
    }

    /// Removes all conntrack entries.
    #[cfg(feature = "test-util")]
    pub fn flush_conntrack(&mut self) -> Result<usize> {
        let keys: Vec<common::CtKey> = self.conntrack()?.into_iter().map(|(k, _)| k).collect();
        let name = map_names::CT;
        let mut m = self.hash::<common::CtKey, common::CtValue>(name)?;
        let mut n = 0;
        for k in keys {
            if m.remove(&k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The registry of the proxy's upstream socket cookies (opened from its pin).
    #[cfg(feature = "test-util")]
    pub fn proxy_sockets(&self) -> Result<ProxySockets> {
        ProxySockets::open(&self.pin_root)
    }

    /// A blocking reader of the event ring buffer (opened from its pin, so it can
    /// live on another thread).
    #[cfg(feature = "test-util")]
    pub fn events(&self) -> Result<EventReader> {
        EventReader::open(&self.pin_root)
    }

    /// Runs `hook`'s program once on `packet` (an Ethernet frame) with
    /// BPF_PROG_TEST_RUN (aya's `TestRun`). `ifindex`/`mark` set `skb->ifindex`/`skb->mark`
    /// (the interface must exist in the calling thread's network namespace).
    /// Note: the kernel's test run is not "at TC ingress", so `bpf_sk_assign`
    /// fails there; redirects are exercised by the namespace tests.
    #[cfg(feature = "test-util")]
    pub fn test_run(
        &mut self,
        hook: Hook,
        packet: &[u8],
        ifindex: u32,
        mark: u32,
    ) -> Result<TestRunOutput> {
        let name = hook.program();
        test_run::run(self.program(hook)?, name, packet, ifindex, mark)
    }

    /// Kernel run-time statistics `(run_time_ns, run_cnt)` of `hook`'s program as
    /// loaded by this process (needs `kernel.bpf_stats_enabled=1`).
    #[cfg(feature = "test-util")]
    pub fn program_stats(&mut self, hook: Hook) -> Result<(u64, u64)> {
        let name = hook.program();
        let info = self
            .program(hook)?
            .info()
            .map_err(|source| Error::Program { name, source })?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    }
}

/// `(key_size, value_size, max_entries)` each map must have.
/// The program `name` of the loaded object, as its program type.
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut aya::programs::Program: TryInto<&'a mut T, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn expected_map_shape(name: &str) -> Option<(u32, u32, u32)> {
    use std::mem::size_of;
    let s = |n: usize| n as u32;
    Some(match name {
        map_names::IPCACHE => (
            4 + s(size_of::<common::IpcacheKey>()),
            s(size_of::<common::IpcacheValue>()),
            common::IPCACHE_MAX,
        ),
        map_names::POLICY => (
            4 + s(size_of::<common::PolicyKey>()),
            s(size_of::<common::PolicyValue>()),
            common::POLICY_MAX,
        ),
        map_names::ENDPOINTS => (
            4,
            s(size_of::<common::EndpointValue>()),
            common::ENDPOINTS_MAX,
        ),
        map_names::CT => (
            s(size_of::<common::CtKey>()),
            s(size_of::<common::CtValue>()),
            common::CT_MAX,
        ),
        map_names::EVENTS => (0, 0, common::EVENTS_BYTES),
        map_names::COUNTERS => (4, 8, common::COUNTERS_MAX),
        map_names::PROXY_SOCKETS => (8, 1, common::PROXY_SOCKETS_MAX),
        map_names::TW_REDIRECT => (12, 4, common::TW_REDIRECT_MAX),
        map_names::LISTENERS => (4, 4, common::LISTENERS_MAX),
        _ => return None,
    })
}

/// Refuses to reuse a pinned map whose layout differs from this build's.
fn check_pinned_map(name: &str, path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let Some(want) = expected_map_shape(name) else {
        return Ok(());
    };
    let info = aya::maps::MapInfo::from_pin(path).map_err(|source| Error::Map {
        name: "pinned map",
        source,
    })?;
    let got = (info.key_size(), info.value_size(), info.max_entries());
    if got != want {
        return Err(Error::IncompatiblePin {
            path: path.to_path_buf(),
            detail: format!("key/value/max_entries {got:?}, expected {want:?}"),
        });
    }
    Ok(())
}

/// aya 0.14 reports a missing key on delete as `SyscallError(ENOENT)`.
pub(crate) fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => {
            s.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32)
        }
        _ => false,
    }
}

/// Resolves an interface name in the calling thread's network namespace.
#[cfg(feature = "test-util")]
pub fn ifindex(iface: &str) -> Result<u32> {
    sys::ifindex(iface)
}
