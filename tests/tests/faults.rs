//! Faults around the HTTP proxy (issue 15), through the real datapath and `ward run`: an
//! upstream that dies mid-request, one that hangs, slowloris clients, and 10,000 idle client
//! connections. Each time the proxy answers as Envoy would and goes on serving everyone else,
//! with its descriptors and memory back where they were.

use std::time::Duration;

use ward_tests::{eventually, privileged, Scene};

/// A raw HTTP/1.1 backend: `/ok` answers, `/die` closes the connection without a word once
/// the request is in, `/hang` never answers.
const BACKEND: &str = r#"
import socket, threading, time
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                c.close()
                return
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1]
        if path == b"/die":
            c.close()
            return
        if path == b"/hang":
            time.sleep(3600)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(1024)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "get-anything"
spec:
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: "GET"
"#;

/// Opens N connections to the server (through Ward), holds them HOLD seconds, and reports
/// how many connected; a `/ok` request on a new connection is made while they are held.
const IDLE: &str = r#"
import resource, socket, sys, time
server, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
conns, failed, start = [], 0, time.time()
for i in range(n):
    try:
        conns.append(socket.create_connection((server, 80), 5))
    except OSError as e:
        failed += 1
    if i % 1000 == 999:
        print("progress", i + 1, "failed", failed, "%.1f s" % (time.time() - start), flush=True)
print("connected", len(conns), "failed", failed, flush=True)
c = socket.create_connection((server, 80), 5)
c.sendall(b"GET /ok HTTP/1.1\r\nHost: deathstar\r\n\r\n")
print("while held:", c.recv(100).split(b"\r\n")[0].decode(), flush=True)
c.close()
open(sys.argv[4], "w").write("held")
time.sleep(hold)
for c in conns:
    c.close()
print("closed", flush=True)
"#;

/// N slowloris connections: a request head sent one byte every 200 ms, never finished.
/// Prints how many the server closed within 20 s.
const SLOWLORIS: &str = r#"
import socket, sys, time
server, n = sys.argv[1], int(sys.argv[2])
head = b"GET /ok HTTP/1.1\r\nHost: deathstar\r\nX-Slow: " + b"a" * 1000
conns = [socket.create_connection((server, 80), 5) for _ in range(n)]
for c in conns:
    c.setblocking(False)
open_ = set(range(n))
start, i = time.time(), 0
while open_ and time.time() - start < 20:
    for k in list(open_):
        try:
            conns[k].send(head[i:i + 1])
            if conns[k].recv(100) == b"":
                open_.discard(k)
        except BlockingIOError:
            pass
        except OSError:
            open_.discard(k)
    i = min(i + 1, len(head) - 1)
    time.sleep(0.2)
print("closed by the server", n - len(open_), "of", n, flush=True)
"#;

#[test]
fn upstream_faults_slowloris_and_idle_connections_leave_the_proxy_serving() {
    if !privileged("upstream_faults_slowloris_and_idle_connections_leave_the_proxy_serving") {
        return;
    }
    let mut s = Scene::empire_pair("faults");
    let backend = s.write_file("backend.py", BACKEND);
    s.spawn_in("deathstar", &["python3", &backend], "backend.log");
    s.wait_port("deathstar", 80);
    s.node_config = format!(
        "node: {{name: {}}}\nhttp: {{upstream_timeout_ms: 1500, header_timeout_ms: 2000}}",
        s.id
    );
    s.write_config();
    s.start_ward();
    s.write_policy("get.yaml", POLICY);
    let ip = s.pod("deathstar").ip.to_string();
    let url = |path: &str| format!("http://{ip}{path}");
    // curl printing only the status code of GET `path`.
    let curl_status = |path: &str| {
        [
            "curl",
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]
        .map(String::from)
        .into_iter()
        .chain([url(path)])
        .collect::<Vec<_>>()
    };
    let status = |s: &Scene, path: &str| {
        let args = curl_status(path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        String::from_utf8_lossy(&s.exec("tiefighter", &args).stdout).into_owned()
    };
    eventually("the L7 rule", Duration::from_secs(5), || {
        s.curl("tiefighter", &["-XPUT", &url("/ok")]).1 == "Access denied\r\n"
    });
    let pid = s.ward_pid().expect("ward's pid");

    // 10,000 idle connections: accepted, held, and a request still served; once they close,
    // the descriptors are back. (First, on fresh client ports: a SYN that reuses the tuple of
    // a connection Ward closed waits in TIME_WAIT for a retransmission, as with any server.)
    let (fds0, rss0) = ward_tests::proc_usage(pid);
    let held = s.dir.join("held");
    let idle = s.write_file("idle.py", IDLE);
    let held_s = held.to_string_lossy().into_owned();
    s.spawn_in(
        "tiefighter",
        &["python3", &idle, &ip, "10000", "4", &held_s],
        "idle.log",
    );
    eventually("10,000 connections held", Duration::from_secs(60), || {
        held.exists()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (fds_held, rss_held) = ward_tests::proc_usage(pid);
    let idle_log = || std::fs::read_to_string(s.dir.join("idle.log")).unwrap_or_default();
    assert!(
        idle_log().contains("connected 10000 failed 0"),
        "{}",
        idle_log()
    );
    assert!(
        idle_log().contains("while held: HTTP/1.1 200 OK"),
        "{}",
        idle_log()
    );
    assert!(fds_held >= fds0 + 10_000, "{fds0} → {fds_held} descriptors");
    eventually(
        "the idle connections to close",
        Duration::from_secs(30),
        || idle_log().contains("closed") && ward_tests::proc_usage(pid).0 <= fds0 + 50,
    );
    let (fds1, rss1) = ward_tests::proc_usage(pid);
    assert_eq!(status(&s, "/ok"), "200");
    // The upstream dies mid-request: 503, as Envoy answers an upstream reset.
    assert_eq!(status(&s, "/die"), "503");
    assert_eq!(status(&s, "/ok"), "200");

    // The upstream hangs: that request gets 504 after `upstream_timeout_ms`; a request sent
    // meanwhile is answered before it.
    let hang_log = s.dir.join("hang.log");
    let hang = curl_status("/hang");
    let hang: Vec<&str> = hang.iter().map(String::as_str).collect();
    s.spawn_in("tiefighter", &hang, "hang.log");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(&s, "/ok"), "200");
    assert_eq!(
        std::fs::read_to_string(&hang_log).unwrap_or_default(),
        "",
        "the hung request was still waiting"
    );
    eventually("the hung request's 504", Duration::from_secs(10), || {
        std::fs::read_to_string(&hang_log).unwrap_or_default() == "504"
    });
    assert!(s.ward_log().contains("upstream response timeout"));

    // Slowloris: 200 connections that never finish their head are closed after
    // `header_timeout_ms`; others are served meanwhile.
    let slow = s.write_file("slowloris.py", SLOWLORIS);
    s.spawn_in(
        "tiefighter",
        &["python3", &slow, &ip, "200"],
        "slowloris.log",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&s, "/ok"), "200");
    let slow_log = || std::fs::read_to_string(s.dir.join("slowloris.log")).unwrap_or_default();
    eventually("the slowloris run", Duration::from_secs(25), || {
        slow_log().contains("closed by the server")
    });
    assert!(
        slow_log().contains("closed by the server 200 of 200"),
        "{}",
        slow_log()
    );

    eprintln!(
        "Ward: {fds0} descriptors, {rss0} KiB before; 10,000 idle connections: {fds_held} descriptors, \
         {rss_held} KiB ({:.1} KiB each); after: {fds1} descriptors, {rss1} KiB",
        (rss_held.saturating_sub(rss0)) as f64 / 10_000.0
    );
}
