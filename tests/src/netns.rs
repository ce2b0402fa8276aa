//! Network namespaces for the datapath tests and benches: a thread that enters (or unshares) a
//! namespace, the veth wiring shared with [`crate::Scene`], the three-namespace [`Topology`]
//! (client, node, server), and a tiny HTTP server running inside a namespace.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsFd,
    process::{Command, Output},
    sync::atomic::Ordering,
};

use nix::{
    poll::{poll, PollFd, PollFlags},
    sched::{setns, unshare, CloneFlags},
};

use crate::SEQ;

/// A short unique id for names: pid-based plus a per-process sequence.
pub fn unique_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() % 0xfffff, n)
}

/// Runs `cmd args` and returns its output (success not required).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    crate::run(Command::new(cmd).args(args))
}

/// Runs `cmd args` and insists on success.
pub fn must(cmd: &str, args: &[&str]) {
    crate::must(Command::new(cmd).args(args));
}

/// Moves the calling thread into a named network namespace (ip netns).
pub fn enter_netns(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // Affects only the calling thread.
    setns(f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {name}: {e}"));
}

/// Runs `f` on a new thread inside the named network namespace (for in-process clients and
/// servers, e.g. an open-loop load driver). The thread's namespace switch does not affect the
/// caller.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `f` on a new thread inside a fresh, anonymous network namespace that
/// disappears with the thread.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // Affects only this thread.
        unshare(CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("unshare: {e}"));
        must("ip", &["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Creates namespace `netns` joined to namespace `node_ns` by a veth (`node_if` in `node_ns`,
/// `eth0` inside, created as `peer_if`): `addr/24` inside routing `route` via the node's
/// `node_addr/24`, with forwarding on the node side.
pub fn wire(
    node_ns: &str,
    netns: &str,
    node_if: &str,
    peer_if: &str,
    addr: Ipv4Addr,
    node_addr: Ipv4Addr,
    route: &str,
) {
    must("ip", &["netns", "add", netns]);
    must(
        "ip",
        &[
            "link", "add", node_if, "type", "veth", "peer", "name", peer_if,
        ],
    );
    must("ip", &["link", "set", node_if, "netns", node_ns]);
    must("ip", &["link", "set", peer_if, "netns", netns]);
    let inside = |args: &[&str]| must("ip", &[&["-n", netns][..], args].concat());
    inside(&["link", "set", "lo", "up"]);
    inside(&["link", "set", peer_if, "name", "eth0"]);
    inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    inside(&["link", "set", "eth0", "up"]);
    inside(&["route", "add", route, "via", &node_addr.to_string()]);
    let node = |args: &[&str]| must("ip", &[&["-n", node_ns][..], args].concat());
    node(&["addr", "add", &format!("{node_addr}/24"), "dev", node_if]);
    node(&["link", "set", node_if, "up"]);
    must(
        "ip",
        &[
            "netns",
            "exec",
            node_ns,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{node_if}.forwarding=1"),
        ],
    );
}

/// Three namespaces: `node` (the host: veths' host sides, programs, proxy),
/// `client` (10.213.1.2) and `server` (10.213.2.2). Removed on drop.
pub struct Topology {
    pub id: String,
    pub node: String,
    pub client: String,
    pub server: String,
    /// Host-side veths in `node`.
    pub client_veth: String,
    pub server_veth: String,
}

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);
pub const NODE_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
pub const NODE_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 1);

impl Topology {
    pub fn new() -> Self {
        let id = unique_id();
        let t = Topology {
            node: format!("wt{id}n"),
            client: format!("wt{id}c"),
            server: format!("wt{id}s"),
            client_veth: format!("wt{id}c0"),
            server_veth: format!("wt{id}s0"),
            id,
        };
        assert!(t.client_veth.len() <= 15);
        must("ip", &["netns", "add", &t.node]);
        must("ip", &["-n", &t.node, "link", "set", "lo", "up"]);
        for (ns, veth, peer, addr, gw) in [
            (
                &t.client,
                &t.client_veth,
                format!("wt{}c1", t.id),
                CLIENT_IP,
                NODE_CLIENT_SIDE_IP,
            ),
            (
                &t.server,
                &t.server_veth,
                format!("wt{}s1", t.id),
                SERVER_IP,
                NODE_SERVER_SIDE_IP,
            ),
        ] {
            wire(&t.node, ns, veth, &peer, addr, gw, "default");
        }
        t
    }

    /// `curl` from the client namespace; returns curl's exit code (0 = ok, 28 = timeout).
    pub fn curl(&self, url: &str) -> (i32, String) {
        curl_from(&self.client, url)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// `curl -s --max-time 2` from namespace `ns`: (exit code, body).
pub fn curl_from(ns: &str, url: &str) -> (i32, String) {
    let out = run(
        "ip",
        &["netns", "exec", ns, "curl", "-s", "--max-time", "2", url],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server, &self.node] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// A tiny HTTP server on a thread inside a namespace; stopped and joined on drop.
pub struct HttpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(ns: &str, ports: &[u16], body: &'static str) -> Self {
        use std::io::{Read, Write};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let ports = ports.to_vec();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            enter_netns(&ns);
            let listeners: Vec<_> = ports
                .iter()
                .map(|p| {
                    let l = std::net::TcpListener::bind(("0.0.0.0", *p)).expect("bind");
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            tx.send(()).unwrap();
            let mut pfds: Vec<PollFd<'_>> = listeners
                .iter()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
                .collect();
            while !stop2.load(Ordering::Relaxed) {
                if !matches!(poll(&mut pfds, 20u8), Ok(n) if n > 0) {
                    continue;
                }
                for l in &listeners {
                    while let Ok((mut s, _)) = l.accept() {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                            .unwrap();
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf);
                        let port = l.local_addr().unwrap().port();
                        let msg = format!("{body} port={port}\n");
                        let _ = write!(
                            s,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
                            msg.len()
                        );
                    }
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("server start");
        HttpServer {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
