//! L7 scenes with real peers: seed 001's header rule with curl, HTTP/2 (prior knowledge) to a
//! real h2c origin (nginx), and gRPC allow/deny seen by a real grpcio client.

use std::time::{Duration, Instant};
use ward_tests::{peers_python, privileged, scene_policy, Scene};

/// Policy changes apply asynchronously: waits up to 3 s for `f`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    ward_tests::eventually(what, Duration::from_secs(3), f);
}

fn status(s: &Scene, pod: &str, args: &[&str]) -> String {
    let mut full = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
    ];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&s.exec(pod, &full).stdout).into_owned()
}

#[test]
fn seed001_path_regex_and_header_rule() {
    if !privileged("seed001_path_regex_and_header_rule") {
        return;
    }
    let mut s = Scene::new("hd");
    s.add_pod("service", "default", &[("app", "myService")]);
    s.add_pod("client", "default", &[("env", "prod")]);
    s.start_deathstar("service", 80);
    s.start_ward();
    s.write_policy("l7-rule.yaml", &scene_policy("seed001-l7-headers"));
    eventually("the header rule", || {
        status(&s, "client", &["-XPUT", "http://service/path2"]) == "403"
    });
    assert_eq!(status(&s, "client", &["http://service/path1"]), "200");
    assert_eq!(
        status(&s, "client", &["http://service/path1/more"]),
        "403",
        "full-match path"
    );
    assert_eq!(
        status(
            &s,
            "client",
            &["-XPUT", "-H", "X-My-Header: true", "http://service/path2"]
        ),
        "200"
    );
    assert_eq!(
        status(
            &s,
            "client",
            &["-XPUT", "-H", "x-my-header: true", "http://service/path2"]
        ),
        "200"
    );
    assert_eq!(
        status(
            &s,
            "client",
            &["-XPUT", "-H", "X-My-Header: false", "http://service/path2"]
        ),
        "403"
    );
    assert_eq!(
        status(&s, "client", &["-XPUT", "http://service/path2"]),
        "403"
    );
    // A header the client names in `Connection` is hop-by-hop: not forwarded, so not checked.
    assert_eq!(
        status(
            &s,
            "client",
            &[
                "-XPUT",
                "-H",
                "X-My-Header: true",
                "-H",
                "Connection: X-My-Header",
                "http://service/path2"
            ]
        ),
        "403"
    );
    // The header reaches the server unchanged.
    let (_, body) = s.curl(
        "client",
        &["-H", "X-My-Header: yes", "http://service/path1"],
    );
    assert_eq!(body, "GET /path1 from yes\n");
}

/// Waits until the Star Wars L7 rule holds: tiefighter's `PUT /v1/exhaust-port` gets 403.
fn wait_for_exhaust_port_denied(s: &Scene) {
    eventually("the L7 rule", || {
        status(
            s,
            "tiefighter",
            &["-XPUT", "http://deathstar/v1/exhaust-port"],
        ) == "403"
    });
}

/// nginx's `http {}`: h2c on 80 (the landing answers, everything else 404).
const NGINX_H2: &str = r#"
    access_log off;
    server {
        listen 80 http2;
        location = /v1/request-landing { return 200 "Ship landed\n"; }
        location / { return 404 "Not found\n"; }
    }
"#;

#[test]
fn http2_prior_knowledge_allowed_and_denied() {
    if !privileged("http2_prior_knowledge_allowed_and_denied") {
        return;
    }
    let mut s = Scene::empire_pair("h2");
    s.start_nginx("deathstar", NGINX_H2);
    s.wait_port("deathstar", 80);
    s.start_ward();
    s.write_policy("rule1.yaml", &scene_policy("starwars-l7"));
    let h2 = |args: &[&str]| {
        let mut full = vec!["--http2-prior-knowledge"];
        full.extend_from_slice(args);
        s.curl("tiefighter", &full)
    };
    eventually("the L7 rule", || {
        h2(&["-XPUT", "http://deathstar/v1/exhaust-port"]).1 == "Access denied\r\n"
    });
    assert_eq!(
        h2(&["-XPOST", "http://deathstar/v1/request-landing"]),
        (0, "Ship landed\n".into())
    );
    let out = s.exec(
        "tiefighter",
        &[
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--max-time",
            "3",
            "-XPOST",
            "http://deathstar/v1/request-landing",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

/// nginx's `http {}`: two ports with different upstream keep-alive limits, connections logged.
const KEEPALIVE_NGINX: &str = r#"
    log_format conn '$server_port $connection $request_uri';
    access_log DIR/access.log conn;
    server {
        listen 80;
        keepalive_requests 1000;
        location / { return 200 "Ship landed\n"; }
    }
    server {
        listen 8080;
        keepalive_requests 2;
        location / { return 200 "Ship landed\n"; }
    }
"#;

const BOTH_PORTS_L7: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "landing"
spec:
  endpointSelector:
    matchLabels:
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing/[0-9]+"
"#;

/// Upstream HTTP/1.1 connections follow the client's keep-alive connection: one client
/// connection's requests share one upstream connection, and when the upstream closes it
/// (`keepalive_requests`), the next request opens another instead of failing.
#[test]
fn upstream_connections_follow_client_keepalive() {
    if !privileged("upstream_connections_follow_client_keepalive") {
        return;
    }
    let mut s = Scene::empire_pair("ka");
    s.start_nginx("deathstar", KEEPALIVE_NGINX);
    s.wait_port("deathstar", 80);
    s.wait_port("deathstar", 8080);
    s.start_ward();
    s.write_policy("landing.yaml", BOTH_PORTS_L7);
    wait_for_exhaust_port_denied(&s);
    // Five requests on one client connection per port (curl reuses it for every URL).
    let five = |port: u16| {
        let urls: Vec<String> = (1..=5)
            .map(|n| format!("http://deathstar:{port}/v1/request-landing/{n}"))
            .collect();
        let mut args = vec![
            "curl",
            "-s",
            "--max-time",
            "5",
            "-XPOST",
            "-w",
            "%{num_connects} ",
        ];
        args.extend(urls.iter().map(String::as_str));
        String::from_utf8_lossy(&s.exec("tiefighter", &args).stdout).into_owned()
    };
    let one_client_connection =
        "Ship landed\n1 Ship landed\n0 Ship landed\n0 Ship landed\n0 Ship landed\n0 ";
    assert_eq!(five(80), one_client_connection);
    assert_eq!(
        five(8080),
        one_client_connection,
        "no request fails when the upstream closes"
    );
    // The upstream's view: which connection served each request.
    let log = std::fs::read_to_string(s.dir.join("access.log")).expect("access log");
    let conns = |port: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.starts_with(port) && l.contains("request-landing/"))
            .map(|l| l.split(' ').nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let c80 = conns("80 ");
    assert_eq!(c80.len(), 5, "{log}");
    assert!(
        c80.iter().all(|c| *c == c80[0]),
        "one upstream connection: {log}"
    );
    let c8080 = conns("8080 ");
    assert_eq!(c8080.len(), 5, "{log}");
    let mut distinct = c8080.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "two requests per upstream connection: {log}"
    );
}

/// An origin that accepts a WebSocket upgrade with 101, then upper-cases what it receives (a
/// stand-in for a WebSocket server: the proxy only tunnels bytes).
const UPGRADE_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            break
        data += d
    head = data.split(b"\r\n\r\n")[0].decode().lower()
    if "upgrade: websocket" in head and "connection: upgrade" in head:
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        while True:
            d = c.recv(4096)
            if not d:
                break
            c.sendall(d.upper())
    else:
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()
"#;

/// Asks for the switch, prints the status line, then what the echo protocol answers.
const UPGRADE_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection(("deathstar", 80), timeout=3)
c.sendall(("%s %s HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n"
           "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" % (sys.argv[1], sys.argv[2])).encode())
data = b""
while b"\r\n\r\n" not in data:
    data += c.recv(4096)
head, rest = data.split(b"\r\n\r\n", 1)
print(head.split(b"\r\n")[0].decode())
if b" 101 " in head:
    c.sendall(b"hello")
    while len(rest) < 5:
        rest += c.recv(4096)
    print(rest.decode())
"#;

/// An allowed request that asks for a protocol switch is tunnelled after the 101 (the
/// `Upgrade`/`Connection` pair survives the hop-by-hop stripping); a denied one gets the 403.
#[test]
fn allowed_upgrade_is_tunnelled_and_denied_upgrade_gets_403() {
    if !privileged("allowed_upgrade_is_tunnelled_and_denied_upgrade_gets_403") {
        return;
    }
    let mut s = Scene::empire_pair("up");
    s.spawn_in(
        "deathstar",
        &["python3", "-c", UPGRADE_SERVER, "80"],
        "upgrade-server.log",
    );
    s.wait_port("deathstar", 80);
    s.start_ward();
    s.write_policy("rule1.yaml", &scene_policy("starwars-l7"));
    let client = |method: &str, path: &str| {
        let out = s.exec(
            "tiefighter",
            &["python3", "-c", UPGRADE_CLIENT, method, path],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("the L7 rule", || {
        client("PUT", "/v1/exhaust-port") == "HTTP/1.1 403 Forbidden\n"
    });
    assert_eq!(
        client("POST", "/v1/request-landing"),
        "HTTP/1.1 101 Switching Protocols\nHELLO\n"
    );
}

const ECHO_PROTO: &str = r#"syntax = "proto3";
package peers;
message EchoRequest { string message = 1; }
message EchoReply { string message = 1; }
service Echo {
  rpc Unary(EchoRequest) returns (EchoReply);
  rpc ServerStream(EchoRequest) returns (stream EchoReply);
}
"#;

const SERVER_PY: &str = r#"import sys, grpc
from concurrent import futures
sys.path.insert(0, sys.argv[2])
import echo_pb2 as pb, echo_pb2_grpc as pbg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
class Echo(pbg.EchoServicer):
    def Unary(self, req, ctx):
        return pb.EchoReply(message="echo " + req.message)
    def ServerStream(self, req, ctx):
        for i in range(3):
            yield pb.EchoReply(message="%s-%d" % (req.message, i))
s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
pbg.add_EchoServicer_to_server(Echo(), s)
h = health.HealthServicer(); h.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, s)
s.add_insecure_port(sys.argv[1]); s.start(); s.wait_for_termination()
"#;

const CLIENT_PY: &str = r#"import sys, grpc
sys.path.insert(0, sys.argv[2])
import echo_pb2 as pb, echo_pb2_grpc as pbg
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    stub = pbg.EchoStub(ch)
    def call(name, f):
        try:
            print(name, "OK", f(), flush=True)
        except grpc.RpcError as e:
            print(name, e.code().name, repr(e.details()), flush=True)
    call("Unary", lambda: stub.Unary(pb.EchoRequest(message="hi"), timeout=5).message)
    call("ServerStream", lambda: [m.message for m in stub.ServerStream(pb.EchoRequest(message="s"), timeout=5)])
    call("Health", lambda: health_pb2.HealthCheckResponse.ServingStatus.Name(
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status))
    call("Unary", lambda: stub.Unary(pb.EchoRequest(message="again"), timeout=5).message)
"#;

#[test]
fn grpc_allow_and_permission_denied() {
    if !privileged("grpc_allow_and_permission_denied") {
        return;
    }
    let python = peers_python();
    let mut s = Scene::new("gr");
    s.add_pod("grpc-server", "default", &[("app", "grpc-server")]);
    s.add_pod("grpc-client", "default", &[("app", "grpc-client")]);
    let gen = s.dir.join("gen");
    std::fs::create_dir_all(&gen).expect("gen dir");
    std::fs::write(gen.join("echo.proto"), ECHO_PROTO).expect("proto");
    std::fs::write(s.dir.join("server.py"), SERVER_PY).expect("server");
    std::fs::write(s.dir.join("client.py"), CLIENT_PY).expect("client");
    let out = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I."])
        .args(["--python_out=.", "--grpc_python_out=.", "echo.proto"])
        .current_dir(&gen)
        .output()
        .expect("protoc");
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py = python.to_string_lossy().into_owned();
    let server_ip = s.pod("grpc-server").ip;
    let (server, gen_s) = (s.dir.join("server.py"), gen.to_string_lossy().into_owned());
    s.spawn_in(
        "grpc-server",
        &[&py, &server.to_string_lossy(), "0.0.0.0:50051", &gen_s],
        "grpc-server.log",
    );
    s.wait_port("grpc-server", 50051);
    s.start_ward();
    s.write_policy("grpc.yaml", &scene_policy("grpc-native"));
    let client = s.dir.join("client.py").to_string_lossy().into_owned();
    let target = format!("{server_ip}:50051");
    let run = || {
        String::from_utf8_lossy(
            &s.exec("grpc-client", &[&py, &client, &target, &gen_s])
                .stdout,
        )
        .into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut text = run();
    while !text.contains("PERMISSION_DENIED") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = run();
    }
    assert_eq!(
        text,
        "Unary OK echo hi\nServerStream PERMISSION_DENIED 'Access denied'\nHealth OK SERVING\nUnary OK echo again\n",
        "ward log:\n{}",
        s.ward_log()
    );
}

/// Connects from `port` on this thread's namespace (SO_REUSEADDR, so a port whose last
/// connection the server closed can be bound again at once), sends `request`, and returns
/// everything the server sent before closing.
fn exchange_from_port(
    dst: std::net::Ipv4Addr,
    port: u16,
    request: &[u8],
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; it is handed to a
    // TcpStream (which closes it) right after creation.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // connect() on a blocking socket gives up after SO_SNDTIMEO.
        stream.set_write_timeout(Some(Duration::from_secs(3)))?;
        let mut local: libc::sockaddr_in = std::mem::zeroed();
        local.sin_family = libc::AF_INET as libc::sa_family_t;
        local.sin_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut remote = local;
        remote.sin_port = 80u16.to_be();
        remote.sin_addr.s_addr = u32::from(dst).to_be();
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream
    };
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn a_reused_client_port_is_not_swallowed_by_time_wait() {
    if !privileged("a_reused_client_port_is_not_swallowed_by_time_wait") {
        return;
    }
    let mut s = Scene::empire_pair("tw");
    s.start_deathstar("deathstar", 80);
    s.start_ward();
    s.write_policy("rule1.yaml", &scene_policy("starwars-l7"));
    wait_for_exhaust_port_denied(&s);
    let dst = s.pod("deathstar").ip;
    let netns = s.pod("tiefighter").netns.clone();
    // HTTP/1.0 without keep-alive: Ward closes each connection first, so its side of the
    // tuple sits in TIME_WAIT when the next connection reuses the same client port.
    let results = ward_tests::in_netns(&netns, move || {
        (0..5)
            .map(|_| {
                exchange_from_port(
                    dst,
                    40123,
                    b"POST /v1/request-landing HTTP/1.0\r\nHost: deathstar\r\n\r\n",
                )
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
            })
            .collect::<Vec<_>>()
    });
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(line) => assert!(line.contains(" 200 "), "connection {i}: {line:?}"),
            Err(e) => panic!("connection {i} from the reused port failed: {e}"),
        }
    }
}
