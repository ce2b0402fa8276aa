//! Shared helpers for the privileged datapath tests: skip/require policy,
//! per-test bpffs pin roots, throwaway network namespaces, packet builders.
#![allow(dead_code)]

pub mod prog;

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use bpf_redirect::Datapath;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Returns false (after printing `SKIPPED (needs root): <test>`) when not root;
/// panics instead when `WARD_REQUIRE_PRIVILEGED=1` (CI).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("WARD_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root but WARD_REQUIRE_PRIVILEGED=1");
    }
    // Straight to fd 2: libtest captures eprintln! of passing tests.
    let line = format!("SKIPPED (needs root): {test}\n");
    // SAFETY: writing a valid buffer to stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    false
}

/// A short unique id for names: pid-based plus a per-process sequence.
pub fn unique_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() % 0xfffff, n)
}

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

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = Datapath::uninstall(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    out
}

pub fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into a named network namespace (ip netns).
pub fn enter_netns(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
    // SAFETY: valid fd of a netns file; affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside a fresh, anonymous network namespace that
/// disappears with the thread.
pub fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare of the net namespace affects only this thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        must("ip", &["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Runs `f` on a new thread inside the named namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
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
        // Register cleanup before creating anything.
        for ns in [&t.node, &t.client, &t.server] {
            must("ip", &["netns", "add", ns]);
        }
        let n = t.node.as_str();
        must(
            "ip",
            &[
                "-n",
                n,
                "link",
                "add",
                &t.client_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &t.client,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                n,
                "link",
                "add",
                &t.server_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &t.server,
            ],
        );
        must("ip", &["-n", n, "link", "set", "lo", "up"]);
        must(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                "10.213.1.1/24",
                "dev",
                &t.client_veth,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                n,
                "addr",
                "add",
                "10.213.2.1/24",
                "dev",
                &t.server_veth,
            ],
        );
        must("ip", &["-n", n, "link", "set", &t.client_veth, "up"]);
        must("ip", &["-n", n, "link", "set", &t.server_veth, "up"]);
        for v in [&t.client_veth, &t.server_veth] {
            must(
                "ip",
                &[
                    "netns",
                    "exec",
                    n,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{v}.forwarding=1"),
                ],
            );
        }
        for (ns, addr, gw) in [
            (&t.client, "10.213.1.2/24", "10.213.1.1"),
            (&t.server, "10.213.2.2/24", "10.213.2.1"),
        ] {
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
            must("ip", &["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            must("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", ns, "route", "add", "default", "via", gw]);
        }
        t
    }

    /// `curl` from the client namespace; returns curl's exit code (0 = ok, 28 = timeout).
    pub fn curl(&self, url: &str) -> (i32, String) {
        curl_from(&self.client, url)
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
            let mut pfds: Vec<libc::pollfd> = listeners
                .iter()
                .map(|l| libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: pfds is a valid array of pollfd.
                let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
                if n <= 0 {
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

// ---- packet builders (Ethernet + IPv4) ----

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 14];
    p[12] = 0x08; // ETH_P_IP
    let total = (20 + l4.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    p.extend_from_slice(l4);
    p
}

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    ipv4(src, dst, 6, &t)
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = [0u8; 12];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, id: u16) -> Vec<u8> {
    let mut i = [0u8; 8];
    i[0] = ty;
    i[1] = code;
    i[4..6].copy_from_slice(&id.to_be_bytes());
    ipv4(src, dst, 1, &i)
}

/// A non-first fragment of a UDP datagram.
pub fn fragment(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = udp(src, 1, dst, 2);
    p[14 + 6..14 + 8].copy_from_slice(&(100u16).to_be_bytes()); // offset 800 bytes
    p
}
