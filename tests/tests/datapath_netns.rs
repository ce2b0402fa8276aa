//! The programs attached to real veths in throwaway namespaces, with real curl:
//! allow/deny with drop events, TCP and UDP redirects to transparent listeners
//! (original destination visible), fail-closed without a listener, enforcement
//! surviving the loader process, and detach restoring free traffic.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bpf_redirect::{
    common::{precedence, MARK_PROXY_UPSTREAM},
    AttachOutcome, Datapath, DesiredState, DropReason, Endpoint, Event, EventKind, EventReader,
    Hook, Interface, PolicyDirection, PolicyEntry, ProxyRouting, ProxySockets,
};
use socket2::{Domain, Socket, Type};
use ward_tests::datapath::PinRoot;
use ward_tests::netns::*;
use ward_tests::privileged;

const ID_CLIENT: u32 = 1001;
const ID_SERVER: u32 = 1002;
const CURL_TIMEOUT: i32 = 28;

fn entry(ep: u16, identity: u32, egress: bool, proto: u8, port: u16) -> PolicyEntry {
    PolicyEntry {
        endpoint_id: ep,
        identity,
        egress,
        proto,
        port,
        port_prefix_len: 16,
        deny: false,
        proxy_port: 0,
        precedence: precedence::allow(0),
        cookie: u32::from(port),
    }
}

fn redirect(ep: u16, identity: u32, proto: u8, port: u16, proxy_port: u16) -> PolicyEntry {
    PolicyEntry {
        proxy_port,
        precedence: precedence::redirect(0, 0),
        ..entry(ep, identity, true, proto, port)
    }
}

fn endpoints(t: &Topology) -> Vec<Endpoint> {
    vec![
        Endpoint {
            endpoint_id: 1,
            interface: Interface::Name(t.client_veth.clone()),
            ips: vec![CLIENT_IP],
            identity: ID_CLIENT,
            ingress_enforced: false,
            egress_enforced: true,
            audit: false,
        },
        Endpoint {
            endpoint_id: 2,
            interface: Interface::Name(t.server_veth.clone()),
            ips: vec![SERVER_IP],
            identity: ID_SERVER,
            ingress_enforced: true,
            egress_enforced: false,
            audit: false,
        },
    ]
}

/// Must run inside the node namespace.
fn attach_all(dp: &mut Datapath, veths: &[String]) -> Vec<AttachOutcome> {
    let mut out = Vec::new();
    for iface in veths {
        for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
            out.push(dp.attach(iface, hook).expect("attach"));
        }
    }
    out
}

fn quiet_ipv6(t: &Topology) {
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
}

/// Waits for an event matching `pred`.
fn wait_event(r: &mut EventReader, pred: impl Fn(&Event) -> bool) -> Option<Event> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(e) = r.next_timeout(Duration::from_millis(200)).unwrap() {
            if pred(&e) {
                return Some(e);
            }
        }
    }
    None
}

#[test]
fn curl_allowed_port_succeeds_denied_port_times_out_with_drop_event() {
    if !privileged("curl_allowed_port_succeeds_denied_port_times_out_with_drop_event") {
        return;
    }
    let t = Topology::new();
    quiet_ipv6(&t);
    let root = PinRoot::new();
    let _server = HttpServer::start(&t.server, &[80, 8080, 9999], "hello from server");
    let (node, rootp) = (t.node.clone(), root.path().to_path_buf());
    let eps = endpoints(&t);
    let t2 = (t.client_veth.clone(), t.server_veth.clone());
    let mut dp = in_netns(&node, move || {
        let mut dp = Datapath::open(&rootp).expect("open");
        for iface in [&t2.0, &t2.1] {
            for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                assert_eq!(dp.attach(iface, hook).unwrap(), AttachOutcome::Created);
                // Idempotent.
                assert_eq!(dp.attach(iface, hook).unwrap(), AttachOutcome::Kept);
            }
        }
        dp.apply(&DesiredState {
            endpoints: eps,
            ipcache: vec![],
            policy: vec![
                entry(1, ID_SERVER, true, 6, 80),
                entry(1, ID_SERVER, true, 6, 8080),
                entry(1, ID_SERVER, true, 6, 9999),
                entry(2, ID_CLIENT, false, 6, 80),
                PolicyEntry {
                    deny: true,
                    precedence: precedence::deny(0),
                    ..entry(2, ID_CLIENT, false, 6, 8080)
                },
            ],
        })
        .expect("apply");
        dp
    });
    assert_eq!(dp.attached().unwrap().len(), 4);
    let mut events = dp.events().unwrap();
    events.drain();

    let (code, body) = t.curl("http://10.213.2.2:80/");
    assert_eq!(code, 0, "allowed port");
    assert!(body.contains("hello from server port=80"), "{body}");
    let allow = wait_event(&mut events, |e| {
        e.kind == EventKind::Allow && e.dst.port() == 80
    });
    assert!(allow.is_some(), "allow event");

    let (code, _) = t.curl("http://10.213.2.2:9999/");
    assert_eq!(code, CURL_TIMEOUT, "default-denied port");
    let drop = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Drop(_)) && e.dst.port() == 9999
    })
    .expect("drop event for 9999");
    assert_eq!(drop.kind, EventKind::Drop(DropReason::POLICY));
    assert_eq!(
        (drop.src_identity, drop.dst_identity),
        (ID_CLIENT, ID_SERVER)
    );
    assert_eq!(drop.policy_direction, PolicyDirection::Ingress);
    assert_eq!(*drop.src.ip(), CLIENT_IP);
    assert_eq!(drop.hook, Some(Hook::FromEndpoint));
    assert!(
        drop.to_string()
            .ends_with("(ID:1002) Policy denied DROPPED (TCP Flags: SYN)"),
        "{drop}"
    );

    let (code, _) = t.curl("http://10.213.2.2:8080/");
    assert_eq!(code, CURL_TIMEOUT, "explicitly denied port");
    let drop = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Drop(_)) && e.dst.port() == 8080
    })
    .expect("drop event for 8080");
    assert_eq!(drop.kind, EventKind::Drop(DropReason::POLICY_DENY));
    let c = dp.counters().unwrap();
    assert!(c.drops(bpf_redirect::common::drop_reason::POLICY) >= 1);
    assert!(c.get(bpf_redirect::common::counter::CT_REPLY) >= 1);
    // Explicit detach works and leaves no link pins.
    for (iface, hook) in dp.attached().unwrap() {
        assert!(dp.detach(&iface, hook).unwrap());
    }
    assert!(dp.attached().unwrap().is_empty());
    let veths = [t.client_veth.clone(), t.server_veth.clone()];
    let remaining = in_netns(&t.node, move || {
        let mut n = 0;
        for v in &veths {
            for ty in [
                aya::programs::TcAttachType::Ingress,
                aya::programs::TcAttachType::Egress,
            ] {
                n += aya::programs::SchedClassifier::query_tcx(v, ty)
                    .unwrap()
                    .1
                    .len();
            }
        }
        n
    });
    assert_eq!(remaining, 0, "programs still attached after detach");
}

/// A transparent TCP proxy on 127.0.0.1:port in the node namespace: records
/// (peer, original destination), relays one request upstream with
/// `SO_MARK = MARK_PROXY_UPSTREAM` and, when `pin_root` is given, the upstream
/// socket's cookie registered in `ward_proxy_sockets` (after socket(), before
/// connect(); removed after close).
struct TcpProxy {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>,
    handle: Option<JoinHandle<()>>,
}

impl TcpProxy {
    fn start(ns: &str, port: u16, pin_root: Option<std::path::PathBuf>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns, stop2, seen2) = (ns.to_string(), stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            enter_netns(&ns);
            let mut registry = pin_root.map(|p| ProxySockets::open(p).expect("proxy sockets"));
            let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            l.set_reuse_address(true).unwrap();
            l.set_ip_transparent(true).expect("IP_TRANSPARENT");
            l.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
                .unwrap();
            l.listen(16).unwrap();
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                let Ok((c, peer)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let orig = c.local_addr().unwrap().as_socket().unwrap();
                seen2
                    .lock()
                    .unwrap()
                    .push((peer.as_socket().unwrap(), orig));
                let mut c: std::net::TcpStream = c.into();
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut req = vec![0u8; 4096];
                let n = c.read(&mut req).unwrap_or(0);
                let up = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                up.set_mark(MARK_PROXY_UPSTREAM).expect("SO_MARK");
                let cookie = registry.as_mut().map(|r| {
                    use std::os::fd::AsFd;
                    r.register(up.as_fd()).expect("register upstream socket")
                });
                if up
                    .connect_timeout(&orig.into(), Duration::from_secs(2))
                    .is_ok()
                {
                    let mut up: std::net::TcpStream = up.into();
                    up.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let _ = up.write_all(&req[..n]);
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    let _ = c.write_all(&resp);
                    drop(up);
                }
                if let (Some(r), Some(cookie)) = (registry.as_mut(), cookie) {
                    r.remove(cookie).expect("unregister");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("proxy start");
        TcpProxy {
            stop,
            seen,
            handle: Some(handle),
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A transparent UDP "DNS" proxy: IP_TRANSPARENT + IP_RECVORIGDSTADDR on
/// 127.0.0.1:port; answers from a transparent socket bound to the original
/// destination. Handles one datagram.
fn udp_proxy_once(
    ns: &str,
    port: u16,
) -> (
    std::sync::mpsc::Receiver<()>,
    JoinHandle<Option<(SocketAddrV4, SocketAddrV4)>>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let h = std::thread::spawn(move || {
        enter_netns(&ns);
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.set_ip_transparent(true).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: valid fd and option buffer.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_IP,
                libc::IP_RECVORIGDSTADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(r, 0);
        s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
        tx.send(()).unwrap();
        let (data, peer, orig) = recv_with_orig_dst(s.as_raw_fd())?;
        let reply = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        reply.set_reuse_address(true).unwrap();
        reply.set_ip_transparent(true).unwrap();
        reply.bind(&SocketAddr::V4(orig).into()).unwrap();
        let mut answer = b"answer:".to_vec();
        answer.extend_from_slice(&data);
        reply
            .send_to(&answer, &SocketAddr::V4(peer).into())
            .unwrap();
        Some((peer, orig))
    });
    (rx, h)
}

fn recv_with_orig_dst(fd: i32) -> Option<(Vec<u8>, SocketAddrV4, SocketAddrV4)> {
    let mut buf = [0u8; 512];
    let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all pointers reference live local buffers of the stated sizes.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let to_v4 = |sin: &libc::sockaddr_in| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            u16::from_be(sin.sin_port),
        )
    };
    let mut orig = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_IP && (*c).cmsg_type == libc::IP_ORIGDSTADDR {
                let sin = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::sockaddr_in>());
                orig = Some(to_v4(&sin));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((buf[..n as usize].to_vec(), to_v4(&name), orig?))
}

#[test]
fn redirects_land_on_transparent_listeners_and_fail_closed_without_one() {
    if !privileged("redirects_land_on_transparent_listeners_and_fail_closed_without_one") {
        return;
    }
    let t = Topology::new();
    quiet_ipv6(&t);
    let root = PinRoot::new();
    let _server = HttpServer::start(&t.server, &[80], "hello from server");
    let (node, rootp) = (t.node.clone(), root.path().to_path_buf());
    let rootp2 = rootp.clone();
    let eps = endpoints(&t);
    let tt = (t.client_veth.clone(), t.server_veth.clone(), t.node.clone());
    let dp = in_netns(&node, move || {
        let mut dp = Datapath::open(&rootp).expect("open");
        for iface in [&tt.0, &tt.1] {
            for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                dp.attach(iface, hook).unwrap();
            }
        }
        let routing = ProxyRouting::default();
        routing.install().unwrap();
        routing.install().unwrap(); // idempotent
        assert!(routing.is_installed().unwrap());
        dp.apply(&DesiredState {
            endpoints: eps,
            ipcache: vec![],
            policy: vec![
                redirect(1, ID_SERVER, 6, 80, 15001),
                redirect(1, ID_SERVER, 17, 53, 15053),
                // The server only admits the client; the proxy's upstream leg is
                // admitted because it is marked (decided at redirect time).
                entry(2, ID_CLIENT, false, 6, 80),
                entry(2, ID_CLIENT, false, 17, 53),
            ],
        })
        .unwrap();
        dp
    });
    let mut events = dp.events().unwrap();
    events.drain();

    // 1. No listener yet: fail closed.
    let (code, _) = t.curl("http://10.213.2.2:80/");
    assert_eq!(code, CURL_TIMEOUT, "redirect without a listener must drop");
    let e = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Drop(_)) && e.dst.port() == 80
    })
    .expect("drop event");
    assert_eq!(e.kind, EventKind::Drop(DropReason::NO_PROXY_SOCKET));

    // 2. TCP: the transparent listener sees the original destination and relays upstream.
    let proxy = TcpProxy::start(&t.node, 15001, Some(root.path().to_path_buf()));
    let (code, body) = t.curl("http://10.213.2.2:80/");
    assert_eq!(code, 0, "curl through the proxy");
    assert!(body.contains("hello from server port=80"), "{body}");
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].1,
        SocketAddr::from((SERVER_IP, 80)),
        "original destination"
    );
    assert_eq!(seen[0].0.ip(), std::net::IpAddr::V4(CLIENT_IP));
    let e = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Redirect { .. }) && e.proto == 6
    })
    .expect("redirect event");
    assert_eq!(e.kind, EventKind::Redirect { proxy_port: 15001 });
    drop(proxy);

    // 2b. The proxy-upstream mark without a registered socket is an ordinary
    // host flow: the server only admits the client, so it is denied.
    let node_ns = t.node.clone();
    let (forged, registered_ok) = std::thread::spawn(move || {
        enter_netns(&node_ns);
        let try_connect = |register: Option<&mut ProxySockets>| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_mark(MARK_PROXY_UPSTREAM).unwrap();
            let cookie = register.map(|r| {
                use std::os::fd::AsFd;
                let c = bpf_redirect::socket_cookie(s.as_fd()).unwrap();
                r.insert(c).unwrap();
                c
            });
            let ok = s
                .connect_timeout(
                    &SocketAddr::from((SERVER_IP, 80)).into(),
                    Duration::from_millis(1500),
                )
                .is_ok();
            (ok, cookie)
        };
        let (forged, _) = try_connect(None);
        let mut reg = ProxySockets::open(&rootp2).unwrap();
        let (ok, cookie) = try_connect(Some(&mut reg));
        let cookie = cookie.unwrap();
        assert!(reg.contains(cookie).unwrap());
        reg.remove(cookie).unwrap();
        (forged, ok)
    })
    .join()
    .unwrap();
    assert!(
        !forged,
        "forged proxy mark must not bypass the server's ingress policy"
    );
    assert!(registered_ok, "registered upstream socket is admitted");
    // The forged connection's drop (not, say, an IPv6 neighbour solicitation the hook also
    // drops now and then).
    let e = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Drop(_))
            && e.hook == Some(Hook::ToEndpoint)
            && *e.dst.ip() == SERVER_IP
            && e.dst.port() == 80
    })
    .expect("drop event for the forged mark");
    assert_eq!(e.kind, EventKind::Drop(DropReason::POLICY));
    assert!(
        dp.counters()
            .unwrap()
            .get(bpf_redirect::common::counter::PROXY_MARK_UNREGISTERED)
            >= 1
    );

    // 3. UDP/53: lands on the transparent socket with its original destination.
    let (ready, h) = udp_proxy_once(&t.node, 15053);
    ready.recv_timeout(Duration::from_secs(5)).unwrap();
    let client_ns = t.client.clone();
    let answer = std::thread::spawn(move || {
        enter_netns(&client_ns);
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"query", (SERVER_IP, 53)).unwrap();
        let mut buf = [0u8; 512];
        s.recv_from(&mut buf)
            .map(|(n, from)| (buf[..n].to_vec(), from))
            .ok()
    })
    .join()
    .unwrap();
    let (peer, orig) = h.join().unwrap().expect("proxy got the datagram");
    assert_eq!(orig, SocketAddrV4::new(SERVER_IP, 53));
    assert_eq!(*peer.ip(), CLIENT_IP);
    let (data, from) = answer.expect("client got an answer");
    assert_eq!(data, b"answer:query");
    assert_eq!(
        from,
        SocketAddr::from((SERVER_IP, 53)),
        "answer from the original destination"
    );

    // 3b. UDP original-tuple lookup first: a transparent socket bound exactly to
    // the original destination (a proxy session socket) receives the datagram;
    // a wildcard-bound host socket on the same port never does.
    let node_ns = t.node.clone();
    let client_ns = t.client.clone();
    let (exact, wildcard) = std::thread::spawn(move || {
        enter_netns(&node_ns);
        let wildcard = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        wildcard.set_reuse_address(true).unwrap();
        wildcard
            .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53)).into())
            .expect("bind 0.0.0.0:53");
        let wildcard: UdpSocket = wildcard.into();
        wildcard
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let send = |payload: &'static [u8]| {
            let client_ns = client_ns.clone();
            std::thread::spawn(move || {
                enter_netns(&client_ns);
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(payload, (SERVER_IP, 53)).unwrap();
            })
            .join()
            .unwrap();
        };
        // Only the wildcard socket (no proxy listener): dropped, not stolen.
        send(b"query-wild");
        let mut buf = [0u8; 64];
        let wild_alone = wildcard.recv_from(&mut buf).is_ok();
        let exact = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        exact.set_reuse_address(true).unwrap();
        exact.set_ip_transparent(true).unwrap();
        exact
            .bind(&SocketAddr::from((SERVER_IP, 53)).into())
            .unwrap();
        exact
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let exact: UdpSocket = exact.into();
        send(b"query2");
        let got_exact = exact
            .recv_from(&mut buf)
            .ok()
            .map(|(n, _)| buf[..n].to_vec());
        let got_wild = wildcard.recv_from(&mut buf).is_ok();
        (got_exact, wild_alone || got_wild)
    })
    .join()
    .unwrap();
    assert_eq!(
        exact.as_deref(),
        Some(&b"query2"[..]),
        "original-tuple socket"
    );
    assert!(
        !wildcard,
        "a wildcard-bound host socket must not receive pod traffic"
    );

    let node = t.node.clone();
    in_netns(&node, || {
        let routing = ProxyRouting::default();
        routing.remove().unwrap();
        assert!(!routing.is_installed().unwrap());
    });
}

/// Child half of the persistence test: attach + apply from another process, then exit.
#[test]
fn persistence_child_process() {
    let (Ok(ns), Ok(root), Ok(ifaces)) = (
        std::env::var("WARD_TEST_CHILD_NS"),
        std::env::var("WARD_TEST_CHILD_ROOT"),
        std::env::var("WARD_TEST_CHILD_IFACES"),
    ) else {
        return; // only meaningful when spawned by the test below
    };
    let (c, s) = ifaces.split_once(',').unwrap();
    let (c, s) = (c.to_string(), s.to_string());
    in_netns(&ns, move || {
        let mut dp = Datapath::open(&root).unwrap();
        for iface in [&c, &s] {
            for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
                dp.attach(iface, hook).unwrap();
            }
        }
        let t = (c.clone(), s.clone());
        dp.apply(&DesiredState {
            endpoints: vec![
                Endpoint {
                    endpoint_id: 1,
                    interface: Interface::Name(t.0),
                    ips: vec![CLIENT_IP],
                    identity: ID_CLIENT,
                    ingress_enforced: false,
                    egress_enforced: true,
                    audit: false,
                },
                Endpoint {
                    endpoint_id: 2,
                    interface: Interface::Name(t.1),
                    ips: vec![SERVER_IP],
                    identity: ID_SERVER,
                    ingress_enforced: true,
                    egress_enforced: false,
                    audit: false,
                },
            ],
            ipcache: vec![],
            policy: vec![
                entry(1, ID_SERVER, true, 6, 80),
                entry(2, ID_CLIENT, false, 6, 80),
            ],
        })
        .unwrap();
    });
}

#[test]
fn enforcement_survives_loader_exit_and_detach_restores_traffic() {
    if !privileged("enforcement_survives_loader_exit_and_detach_restores_traffic") {
        return;
    }
    let t = Topology::new();
    quiet_ipv6(&t);
    let root = PinRoot::new();
    let _server = HttpServer::start(&t.server, &[80, 9999], "hello from server");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "persistence_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WARD_TEST_CHILD_NS", &t.node)
        .env("WARD_TEST_CHILD_ROOT", root.path())
        .env(
            "WARD_TEST_CHILD_IFACES",
            format!("{},{}", t.client_veth, t.server_veth),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The loader process is gone; the pinned links keep enforcing.
    assert_eq!(t.curl("http://10.213.2.2:80/").0, 0);
    assert_eq!(t.curl("http://10.213.2.2:9999/").0, CURL_TIMEOUT);

    // A restarted loader re-attaches without a gap: the links are kept as they are.
    let (node, rootp) = (t.node.clone(), root.path().to_path_buf());
    let veths = vec![t.client_veth.clone(), t.server_veth.clone()];
    let eps = endpoints(&t);
    let (mut dp, written) = in_netns(&node, move || {
        let mut dp = Datapath::open(&rootp).unwrap();
        let outcomes = attach_all(&mut dp, &veths);
        assert!(
            outcomes.iter().all(|o| *o == AttachOutcome::Kept),
            "{outcomes:?}"
        );
        // Same maps: the applied state is still there.
        let written = dp
            .apply(&DesiredState {
                endpoints: eps,
                ipcache: vec![],
                policy: vec![
                    entry(1, ID_SERVER, true, 6, 80),
                    entry(2, ID_CLIENT, false, 6, 80),
                ],
            })
            .unwrap()
            .written();
        (dp, written)
    });
    assert_eq!(written, 0);
    assert_eq!(t.curl("http://10.213.2.2:9999/").0, CURL_TIMEOUT);

    // Detach: traffic flows freely again.
    for (iface, hook) in dp.attached().unwrap() {
        assert!(dp.detach(&iface, hook).unwrap());
    }
    let (code, body) = t.curl("http://10.213.2.2:9999/");
    assert_eq!(code, 0, "after detach");
    assert!(body.contains("port=9999"));
}

#[test]
fn uplink_ingress_enforces_local_ingress_policy_and_program_swaps_atomically() {
    if !privileged("uplink_ingress_enforces_local_ingress_policy_and_program_swaps_atomically") {
        return;
    }
    // Here the "server" namespace plays the outside world behind the uplink and
    // the client namespace is the local endpoint that serves.
    let t = Topology::new();
    quiet_ipv6(&t);
    let root = PinRoot::new();
    let _pod_server = HttpServer::start(&t.client, &[80, 8080], "hello from pod");
    let world_cidr_identity = 16_777_300;
    let (node, rootp) = (t.node.clone(), root.path().to_path_buf());
    let (cv, sv) = (t.client_veth.clone(), t.server_veth.clone());
    let dp = in_netns(&node, move || {
        let mut dp = Datapath::open(&rootp).expect("open");
        // A link running other code at the from-endpoint place is swapped in place.
        assert_eq!(
            dp.attach_program_for_test(&cv, Hook::FromEndpoint, Hook::ToEndpoint)
                .unwrap(),
            AttachOutcome::Created
        );
        let before = dp.attached_program_id(&cv, Hook::FromEndpoint).unwrap();
        assert_eq!(
            dp.attach(&cv, Hook::FromEndpoint).unwrap(),
            AttachOutcome::Replaced
        );
        let after = dp.attached_program_id(&cv, Hook::FromEndpoint).unwrap();
        assert_ne!(before, after);
        assert_eq!(after, Some(dp.program_id(Hook::FromEndpoint).unwrap()));
        assert_eq!(
            dp.attach(&cv, Hook::ToEndpoint).unwrap(),
            AttachOutcome::Created
        );
        assert_eq!(
            dp.attach(&sv, Hook::FromNetdev).unwrap(),
            AttachOutcome::Created
        );
        dp.apply(&DesiredState {
            endpoints: vec![Endpoint {
                endpoint_id: 1,
                interface: Interface::Name(cv.clone()),
                ips: vec![CLIENT_IP],
                identity: ID_CLIENT,
                ingress_enforced: true,
                egress_enforced: false,
                audit: false,
            }],
            ipcache: vec![bpf_redirect::IpcacheEntry {
                addr: Ipv4Addr::new(10, 213, 2, 0),
                prefix_len: 24,
                identity: world_cidr_identity,
                endpoint_id: 0,
            }],
            policy: vec![entry(1, world_cidr_identity, false, 6, 80)],
        })
        .unwrap();
        dp
    });
    let mut events = dp.events().unwrap();
    events.drain();
    let (code, body) = curl_from(&t.server, "http://10.213.1.2:80/");
    assert_eq!(code, 0, "allowed from outside");
    assert!(body.contains("hello from pod port=80"));
    let (code, _) = curl_from(&t.server, "http://10.213.1.2:8080/");
    assert_eq!(code, CURL_TIMEOUT, "denied from outside");
    let drop = wait_event(&mut events, |e| {
        matches!(e.kind, EventKind::Drop(_)) && e.dst.port() == 8080
    })
    .expect("drop event");
    assert_eq!(drop.kind, EventKind::Drop(DropReason::POLICY));
    assert_eq!(drop.hook, Some(Hook::FromNetdev));
    assert_eq!(
        (drop.src_identity, drop.dst_identity),
        (world_cidr_identity, ID_CLIENT)
    );
}
