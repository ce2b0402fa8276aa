//! Datapath bench (root only; prints `SKIPPED (needs root)` otherwise):
//! sequential HTTP/1.0 connections client-ns -> server-ns through the node
//! namespace, with no program attached (baseline) and with Ward's programs and
//! an allow entry, in short alternating rounds (the machine is shared: each
//! round is paired with the baseline round before it and the median of the
//! paired ratios is the headline figure). Reports connections/s, the ratio,
//! and the programs' per-packet cost from `kernel.bpf_stats_enabled`
//! (run_time_ns / run_cnt). Restores the sysctl.
//!
//! `cargo bench -p ward-tests --bench datapath` (env WARD_BENCH_CONNS, default 300 per round).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use bpf_redirect::{
    common::precedence, Datapath, DesiredState, Endpoint, Hook, Interface, PolicyEntry,
};
use ward_tests::datapath::PinRoot;
use ward_tests::netns::*;
use ward_tests::privileged;

const ROUNDS: usize = 12;

struct SysctlGuard {
    path: &'static str,
    old: String,
}

impl SysctlGuard {
    fn set(path: &'static str, value: &str) -> Self {
        let old = std::fs::read_to_string(path)
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_string();
        std::fs::write(path, value).expect("write sysctl");
        SysctlGuard { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

fn connections(client_ns: &str, n: usize) -> f64 {
    let ns = client_ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let addr = SocketAddr::from((SERVER_IP, 80));
        let start = Instant::now();
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut buf = Vec::with_capacity(256);
            s.read_to_end(&mut buf).unwrap();
            assert!(buf.starts_with(b"HTTP/1.0 200"));
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
    .join()
    .expect("client thread")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !privileged("bench datapath") {
        return;
    }
    let n: usize = std::env::var("WARD_BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let t = Topology::new();
    for ns in [&t.client, &t.server] {
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ],
        );
    }
    let root = PinRoot::new();
    let _server = HttpServer::start(&t.server, &[80], "bench");
    let (node, rootp) = (t.node.clone(), root.path().to_path_buf());
    let (cv, sv) = (t.client_veth.clone(), t.server_veth.clone());
    let state = DesiredState {
        endpoints: vec![
            Endpoint {
                endpoint_id: 1,
                interface: Interface::Name(cv.clone()),
                ips: vec![CLIENT_IP],
                identity: 1001,
                ingress_enforced: true,
                egress_enforced: true,
                audit: false,
            },
            Endpoint {
                endpoint_id: 2,
                interface: Interface::Name(sv.clone()),
                ips: vec![SERVER_IP],
                identity: 1002,
                ingress_enforced: true,
                egress_enforced: true,
                audit: false,
            },
        ],
        ipcache: vec![],
        policy: [(1u16, 1002u32, true), (2, 1001, false)]
            .into_iter()
            .map(|(ep, id, egress)| PolicyEntry {
                endpoint_id: ep,
                identity: id,
                egress,
                proto: 6,
                port: 80,
                port_prefix_len: 16,
                deny: false,
                proxy_port: 0,
                precedence: precedence::allow(0),
                cookie: 0,
            })
            .collect(),
    };
    let mut dp = in_netns(&node, move || {
        let mut dp = Datapath::open(&rootp).expect("open");
        dp.apply(&state).expect("apply");
        dp
    });
    let stats = SysctlGuard::set("/proc/sys/kernel/bpf_stats_enabled", "1");

    // Warm-up (ARP, caches).
    connections(&t.client, 100);
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        base.push(connections(&t.client, n));
        dp = in_netns(&node, {
            let (cv, sv) = (cv.clone(), sv.clone());
            move || {
                for iface in [&cv, &sv] {
                    for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                        dp.attach(iface, hook).expect("attach");
                    }
                }
                dp
            }
        });
        with.push(connections(&t.client, n));
        for (iface, hook) in dp.attached().unwrap() {
            dp.detach(&iface, hook).unwrap();
        }
    }
    let mut per_hook = Vec::new();
    for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
        let (ns, cnt) = dp.program_stats(hook).unwrap();
        per_hook.push((hook, ns, cnt));
    }
    drop(stats);
    let (b, w) = (median(base.clone()), median(with.clone()));
    println!(
        "datapath bench: {n} sequential HTTP/1.0 connections per round, {ROUNDS} rounds, medians"
    );
    println!("  no program        : {b:>9.0} conn/s   rounds {base:.0?}");
    println!("  ward, allow entry : {w:>9.0} conn/s   rounds {with:.0?}");
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let paired = median(with.iter().zip(&base).map(|(w, b)| w / b).collect());
    println!(
        "  ratio (ward / none): median of paired rounds {paired:.3}, of medians {:.3}, best-of-rounds {:.3}",
        w / b,
        best(&with) / best(&base)
    );
    for (hook, ns, cnt) in per_hook {
        if cnt > 0 {
            println!(
                "  {hook:?}: {cnt} runs, {:.0} ns per packet (bpf_stats)",
                ns as f64 / cnt as f64
            );
        }
    }
    apply_cost(&node, &root);
}

/// The cost of applying a one-entry change (an ipcache upsert, as an FQDN learning makes) to
/// maps holding `ENTRIES` policy and ipcache entries: diffed against what the last apply
/// wrote, and against the maps read back from the kernel (every apply before the datapath
/// kept its record; now after `resync`).
fn apply_cost(node: &str, root: &PinRoot) {
    const ENTRIES: u32 = 20_000;
    let rootp = root.path().to_path_buf();
    let (cached, read) = in_netns(node, move || {
        let mut dp = Datapath::open(&rootp).expect("open");
        let mut state = DesiredState {
            endpoints: vec![],
            ipcache: (0..ENTRIES / 4)
                .map(|i| bpf_redirect::IpcacheEntry {
                    addr: std::net::Ipv4Addr::from(0x0a64_0000 + i),
                    prefix_len: 32,
                    identity: 100_000 + i,
                    endpoint_id: 0,
                })
                .collect(),
            policy: (0..ENTRIES)
                .map(|i| PolicyEntry {
                    endpoint_id: 1 + (i % 100) as u16,
                    identity: 100_000 + i / 100,
                    egress: i % 2 == 0,
                    proto: 6,
                    port: 1000 + (i % 50) as u16,
                    port_prefix_len: 16,
                    deny: false,
                    proxy_port: 0,
                    precedence: precedence::allow(0),
                    cookie: 0,
                })
                .collect(),
        };
        state.endpoints = (1..=100u16)
            .map(|id| Endpoint {
                endpoint_id: id,
                interface: Interface::Index(1),
                ips: vec![std::net::Ipv4Addr::new(10, 99, (id >> 8) as u8, id as u8)],
                identity: 1000 + u32::from(id),
                ingress_enforced: true,
                egress_enforced: true,
                audit: false,
            })
            .collect();
        dp.apply(&state).expect("apply");
        let mut time = |resync: bool, n: u32| {
            let mut v = Vec::new();
            for i in 0..n {
                state.ipcache[0].identity = 200_000 + i + u32::from(resync) * 1000;
                if resync {
                    dp.resync();
                }
                let t = Instant::now();
                dp.apply(&state).expect("apply");
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            median(v)
        };
        (time(false, 21), time(true, 5))
    });
    println!(
        "  apply one ipcache change with {ENTRIES} policy + {} ipcache entries: {cached:.2} ms \
         against the last apply's record, {read:.2} ms reading the maps back",
        ENTRIES / 4
    );
}
