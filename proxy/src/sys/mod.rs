//! What `ward run` asks of the host system: its mount namespace ([`mntns`]) and the node's own
//! addresses.

pub mod mntns;

use std::net::Ipv4Addr;

/// IPv4 addresses configured on interfaces of this network namespace (the host identity's),
/// without loopback, sorted.
pub fn local_ipv4_addresses() -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Addr> = addrs
        .filter_map(|ifa| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
        .filter(|ip| !ip.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Wall-clock time of a `CLOCK_MONOTONIC` instant in nanoseconds (kernel event timestamps).
pub fn monotonic_to_system(ts_ns: u64) -> std::time::SystemTime {
    use std::time::{Duration, SystemTime};
    let now = SystemTime::now();
    let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let now_mono = t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64;
    if ts_ns <= now_mono {
        now - Duration::from_nanos(now_mono - ts_ns)
    } else {
        now
    }
}
