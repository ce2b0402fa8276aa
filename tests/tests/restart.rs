//! Hitless restart (issue 15): `ward run` is restarted again and again by handing its listening
//! sockets to a new process while HTTP/1.1 (keep-alive and new connections, to nginx) and h2c
//! (gRPC, grpcio on one channel) clients send requests through L7 rules at a fixed rate. Every
//! request must get its verdict: no failure, no wrong answer, no reset.

use std::time::{Duration, Instant};

use ward_tests::{eventually, peers_python, privileged, Scene, DNS_LISTENER, OUTSIDE_IP};

/// nginx's `http {}`: HTTP/1.1 on 80, the landing answers.
const NGINX: &str = r#"
    access_log off;
    server {
        listen 80;
        location = /v1/request-landing { return 200 "Ship landed\n"; }
        location / { return 404 "Not found\n"; }
    }
"#;

/// A gRPC server (h2c) on 50051 with `/pkg.Svc/Land` and `/pkg.Svc/Exhaust`, raw bytes.
const GRPC_SERVER: &str = r#"
import grpc, sys
from concurrent import futures
h = grpc.method_handlers_generic_handler("pkg.Svc", {
    "Land": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"landed"),
    "Exhaust": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"boom"),
})
s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
s.add_generic_rpc_handlers((h,))
s.add_insecure_port("0.0.0.0:50051")
s.start()
s.wait_for_termination()
"#;

/// gRPC at RATE calls/s on one channel until STOP exists; every fifth call is the denied
/// method. Prints one JSON line.
const GRPC_LOAD: &str = r#"
import grpc, json, os, sys, time
target, rate, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
st = {"ok": 0, "denied": 0, "wrong": 0, "failed": 0, "errors": []}
with grpc.insecure_channel(target) as ch:
    land, exhaust = ch.unary_unary("/pkg.Svc/Land"), ch.unary_unary("/pkg.Svc/Exhaust")
    start, i = time.time(), 0
    while not os.path.exists(stop) and time.time() - start < 7200:
        due = start + i / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        denied = i % 5 == 4
        try:
            out = (exhaust if denied else land)(b"x", timeout=5)
            if not denied and out == b"landed":
                st["ok"] += 1
            else:
                st["wrong"] += 1
                st["errors"].append("answered %r" % out)
        except grpc.RpcError as e:
            if denied and e.code() == grpc.StatusCode.PERMISSION_DENIED:
                st["denied"] += 1
            else:
                st["failed"] += 1
                st["errors"].append("%s %s" % (e.code(), e.details()))
        i += 1
st["errors"] = st["errors"][:10]
print(json.dumps(st), flush=True)
"#;

const POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "landing-only"
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
        - method: "POST"
          path: "/v1/request-landing"
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - method: "POST"
          path: "/pkg.Svc/Land"
"#;

/// HTTP/1.1 at RATE requests/s until STOP exists: every other request on one keep-alive
/// connection, the others each on a new one; every fifth is a denied PUT. A reused connection
/// that the server closed just as the request left (no byte of answer) is retried once on a
/// new connection, as curl and browsers do; everything else that is not the expected status
/// counts as failed or wrong. Prints one JSON line.
const HTTP1_LOAD: &str = r#"
import http.client, json, os, sys, time
host, rate, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
st = {"ok": 0, "denied": 0, "wrong": 0, "failed": 0, "stale_retried": 0, "errors": [], "lat": []}
keep = None
start, i = time.time(), 0
while not os.path.exists(stop) and time.time() - start < 7200:
    due = start + i / rate
    now = time.time()
    if due > now:
        time.sleep(due - now)
    method, path, want = ("PUT", "/v1/exhaust-port", 403) if i % 5 == 4 else ("POST", "/v1/request-landing", 200)
    reuse = i % 2 == 0
    t0 = time.time()
    for attempt in range(2):
        fresh = not reuse or keep is None
        try:
            conn = keep if (reuse and keep is not None) else http.client.HTTPConnection(host, 80, timeout=5)
            if reuse:
                keep = conn
            conn.request(method, path, body=b"x")
            r = conn.getresponse()
            body = r.read()
            if not reuse or r.will_close:
                conn.close()
                if reuse:
                    keep = None
            st["lat"].append([round(t0, 4), round((time.time() - t0) * 1000, 3)])
            if r.status == want:
                st["ok" if want == 200 else "denied"] += 1
            else:
                st["wrong"] += 1
                st["errors"].append("%s %s -> %d %r" % (method, path, r.status, body[:40]))
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            if keep is not None:
                keep.close()
            keep = None
            if reuse and not fresh and attempt == 0:
                st["stale_retried"] += 1
                continue
            st["failed"] += 1
            st["errors"].append(repr(e))
            break
        except Exception as e:
            if keep is not None:
                keep.close()
            keep = None
            st["failed"] += 1
            st["errors"].append(repr(e))
            break
    i += 1
st["errors"] = st["errors"][:10]
print(json.dumps(st), flush=True)
"#;

/// Rewrites a second policy file every `every` until `stop` exists: a rule for a path the
/// loads never ask comes and goes, so each write is a reload that changes no verdict. The
/// thread answers how many reloads it wrote.
fn reload_until(
    s: &Scene,
    stop: &std::path::Path,
    every: Duration,
) -> std::thread::JoinHandle<u32> {
    let (dir, stop) = (s.dir.clone(), stop.to_path_buf());
    std::thread::spawn(move || {
        let mut n = 0u32;
        while !stop.exists() {
            let path = if n.is_multiple_of(2) {
                "/v1/other"
            } else {
                "/v1/else"
            };
            let yaml = POLICY
                .replace("landing-only", "reloaded")
                .replace("/v1/request-landing", path)
                .replace("/pkg.Svc/Land", path);
            let tmp = dir.join(".reloaded.yaml.tmp");
            std::fs::write(&tmp, yaml).unwrap();
            std::fs::rename(&tmp, dir.join("policies/reloaded.yaml")).unwrap();
            n += 1;
            std::thread::sleep(every);
        }
        n
    })
}

#[test]
fn restarts_and_reloads_under_http1_and_h2c_load_lose_no_request() {
    if !privileged("restarts_and_reloads_under_http1_and_h2c_load_lose_no_request") {
        return;
    }
    let mut s = Scene::empire_pair("hitless");
    let python = peers_python().to_string_lossy().into_owned();
    s.start_nginx("deathstar", NGINX);
    let grpc_server = s.write_file("grpc_server.py", GRPC_SERVER);
    s.spawn_in("deathstar", &[&python, &grpc_server], "grpc-server.log");
    s.wait_port("deathstar", 80);
    s.wait_port("deathstar", 50051);
    s.start_ward();
    s.write_policy("landing.yaml", POLICY);
    let ip = s.pod("deathstar").ip.to_string();
    eventually("the L7 rule", Duration::from_secs(5), || {
        s.curl(
            "tiefighter",
            &["-XPUT", &format!("http://{ip}/v1/exhaust-port")],
        )
        .1 == "Access denied\r\n"
    });

    // A denied request's body is read and dropped, so its keep-alive connection serves the
    // next request; a body too large to drop closes the connection, and the answer says so.
    let out = s.exec(
        "tiefighter",
        &[
            "python3",
            "-c",
            &format!(
                r#"
import http.client
c = http.client.HTTPConnection("{ip}", 80, timeout=5)
for body in (b"x" * 1000, b"y" * 70000):
    c.request("PUT", "/v1/exhaust-port", body=body)
    r = c.getresponse(); r.read()
    print(r.status, "close" if r.will_close else "keep-alive")
    if not r.will_close:
        c.request("POST", "/v1/request-landing", body=b"z")
        r = c.getresponse(); print(r.status, r.read().decode().strip())
"#
            ),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403 keep-alive\n200 Ship landed\n403 close\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The loads, until told to stop: HTTP/1.1 and gRPC (h2c, one channel that reconnects
    // after a GOAWAY).
    let stop = s.dir.join("stop-load");
    let (h1_script, grpc_script) = (
        s.write_file("http1_load.py", HTTP1_LOAD),
        s.write_file("grpc_load.py", GRPC_LOAD),
    );
    let stop_path = stop.to_string_lossy().into_owned();
    s.spawn_in(
        "tiefighter",
        &["python3", &h1_script, &ip, "100", &stop_path],
        "http1-load.log",
    );
    let target = format!("{ip}:50051");
    s.spawn_in(
        "tiefighter",
        &[&python, &grpc_script, &target, "50", &stop_path],
        "grpc-load.log",
    );
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // Meanwhile the policy is reloaded 10 times a second: a second file whose rule (for a
    // path the loads never ask) comes and goes.
    let reloads = reload_until(&s, &stop, Duration::from_millis(100));
    // Restarts: each a new `ward run` taking the sockets over.
    let (mut took, mut windows) = (Vec::new(), Vec::new());
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    for _ in 0..20 {
        let start = epoch();
        took.push(s.upgrade_ward());
        windows.push((start, epoch()));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::fs::write(&stop, "").unwrap();
    let reloads = reloads.join().unwrap();
    let read = |log: &str| std::fs::read_to_string(s.dir.join(log)).unwrap_or_default();
    eventually("the loads to end", Duration::from_secs(20), || {
        read("http1-load.log").contains('}') && read("grpc-load.log").contains('}')
    });
    let log = s.ward_log();
    let result = |name: &str| -> serde_json::Value {
        let text = read(name);
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    };
    // Every request answered with its verdict.
    let (h1, grpc) = (result("http1-load.log"), result("grpc-load.log"));
    for r in [&h1, &grpc] {
        assert_eq!(r["failed"], 0, "{r}\n{log}");
        assert_eq!(r["wrong"], 0, "{r}");
    }
    // Not even a keep-alive connection closed under a request: each learnt of its close from
    // a `Connection: close` answer.
    assert_eq!(h1["stale_retried"], 0, "{h1}");
    assert!(h1["ok"].as_u64() > Some(500), "{h1}");
    assert!(h1["denied"].as_u64() > Some(100), "{h1}");
    assert!(grpc["ok"].as_u64() > Some(300), "{grpc}");
    assert!(grpc["denied"].as_u64() > Some(50), "{grpc}");
    assert!(
        started.elapsed() > Duration::from_secs(5),
        "the loads overlapped the restarts"
    );
    // Each new process re-attached to the pinned datapath without replacing it.
    assert!(log.matches("outcome=Kept").count() >= 20, "{log}");
    assert_eq!(log.matches("taking the listening sockets over").count(), 20);
    assert_eq!(log.matches("handed the listening sockets over").count(), 20);
    // The reloads were applied as they came (each process also applies once at start).
    assert!(reloads >= 50, "{reloads} reloads");
    assert!(log.matches("policy applied").count() >= 60, "{log}");
    // Latency of the HTTP/1.1 requests sent during a handover against the others.
    let (mut during, mut steady) = (Vec::new(), Vec::new());
    for l in h1["lat"].as_array().into_iter().flatten() {
        let (t, ms) = (l[0].as_f64().unwrap_or(0.0), l[1].as_f64().unwrap_or(0.0));
        if windows.iter().any(|(a, b)| t >= *a && t <= *b) {
            during.push(ms);
        } else {
            steady.push(ms);
        }
    }
    let p = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let lat = format!(
        "HTTP/1.1 p50/p99 during handovers {:.2}/{:.2} ms ({} requests), otherwise {:.2}/{:.2} ms ({})",
        p(&mut during, 0.5),
        p(&mut during, 0.99),
        during.len(),
        p(&mut steady, 0.5),
        p(&mut steady, 0.99),
        steady.len()
    );
    let mut h1 = h1;
    h1["lat"] = serde_json::Value::Null;
    took.sort();
    eprintln!("{lat}");
    eprintln!(
        "handover (new process start → old process exit): median {:?}, max {:?}; {reloads} policy reloads; HTTP/1.1 {h1}; gRPC {grpc}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

const DNS_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchName: api.test}, {matchName: allowed.test}]
  - toFQDNs: [{matchName: api.test}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"#;

/// DNS over UDP at RATE queries/s until STOP exists, each from a new socket (a new client
/// port): `allowed.test` must answer 10.99.0.1, every fifth query (`denied.test`) REFUSED;
/// no answer within 2 s is a lost query. Alongside, a new TCP connection to the learned
/// `api.test` address every 100 ms. Prints one JSON line.
const DNS_LOAD: &str = r#"
import json, os, random, socket, struct, sys, threading, time
server, rate, stop, api = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
st = {"answered": 0, "refused": 0, "lost": 0, "wrong": 0, "api_ok": 0, "api_failed": 0, "errors": []}
def query(name):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(q, (server, 53))
        while True:
            r = s.recv(4096)
            if struct.unpack(">H", r[:2])[0] == qid:
                return r
    except socket.timeout:
        return None
    finally:
        s.close()
def probe():
    while not os.path.exists(stop):
        try:
            socket.create_connection((api, 8080), 1).close()
            st["api_ok"] += 1
        except OSError as e:
            st["api_failed"] += 1
            st["errors"].append("api %r" % e)
        time.sleep(0.1)
t = threading.Thread(target=probe)
if api != "-":
    t.start()
start, i = time.time(), 0
while not os.path.exists(stop) and time.time() - start < 7200:
    due = start + i / rate
    now = time.time()
    if due > now:
        time.sleep(due - now)
    denied = i % 5 == 4
    r = query("denied.test" if denied else "allowed.test")
    if r is None:
        st["lost"] += 1
        st["errors"].append("lost %d at %.3f" % (i, time.time()))
    elif denied and r[3] & 0xF == 5:
        st["refused"] += 1
    elif not denied and r[3] & 0xF == 0 and r.endswith(socket.inet_aton("10.99.0.1")):
        st["answered"] += 1
    else:
        st["wrong"] += 1
        st["errors"].append("wrong %r" % r[:12])
    i += 1
if api != "-":
    t.join()
st["errors"] = st["errors"][:10]
print(json.dumps(st), flush=True)
"#;

#[test]
fn restarts_under_dns_load_lose_no_query_and_keep_learned_addresses() {
    if !privileged("restarts_under_dns_load_lose_no_query_and_keep_learned_addresses") {
        return;
    }
    let mut s = Scene::new("hitdns");
    s.add_pod("client", "default", &[("app", "client")]);
    let server = s.add_pod("dns", "default", &[("app", "dns")]);
    s.add_outside();
    s.dns_listener = Some(DNS_LISTENER);
    s.spawn_in(
        "outside",
        &["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"],
        "http-outside.log",
    );
    let conf = s.dir.join("dnsmasq.conf");
    let dir = s.dir.display().to_string();
    std::fs::write(
        &conf,
        format!(
            "port=53\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
             user=root\ncache-size=0\nlocal-ttl=300\npid-file={dir}/dnsmasq.pid\nlocal=/test/\n\
             host-record=api.test,{OUTSIDE_IP}\nhost-record=allowed.test,10.99.0.1\n\
             host-record=denied.test,10.99.0.3\n",
            server.ip
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    s.spawn_in(
        "dns",
        &[
            "dnsmasq",
            "--keep-in-foreground",
            &format!("--conf-file={conf}"),
        ],
        "dnsmasq.log",
    );
    s.write_policy("fqdn.yaml", DNS_POLICY);
    s.start_ward();
    s.wait_port("outside", 8080);
    // `api.test` learned once, before the restarts: its address must stay open across them.
    let out = s.exec(
        "client",
        &[
            "dig",
            "+time=3",
            "+tries=1",
            "+short",
            &format!("@{}", server.ip),
            "api.test",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        OUTSIDE_IP.to_string()
    );
    assert!(
        s.tcp_reachable("client", OUTSIDE_IP, 8080),
        "{}",
        s.ward_log()
    );

    let stop = s.dir.join("stop-load");
    let script = s.write_file("dns_load.py", DNS_LOAD);
    let stop_path = stop.to_string_lossy().into_owned();
    let (server_ip, api) = (server.ip.to_string(), OUTSIDE_IP.to_string());
    s.spawn_in(
        "client",
        &["python3", &script, &server_ip, "50", &stop_path, &api],
        "dns-load.log",
    );
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        s.upgrade_ward();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "").unwrap();
    let read = || std::fs::read_to_string(s.dir.join("dns-load.log")).unwrap_or_default();
    eventually("the DNS load to end", Duration::from_secs(20), || {
        read().contains('}')
    });
    let text = read();
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    let log = s.ward_log();
    assert_eq!(r["lost"], 0, "{r}\n{log}");
    assert_eq!(r["wrong"], 0, "{r}");
    assert_eq!(r["api_failed"], 0, "{r}\n{log}");
    assert!(r["answered"].as_u64() > Some(150), "{r}");
    assert!(r["refused"].as_u64() > Some(40), "{r}");
    assert!(r["api_ok"].as_u64() > Some(30), "{r}");
    // Each new process restored the learned address before its first commit.
    assert!(
        log.matches("learned DNS addresses restored from the FQDN checkpoint")
            .count()
            >= 10,
        "{log}"
    );
    eprintln!("DNS under 10 handovers: {r}");
}

/// A backend that switches every request to WebSocket (`101`), then echoes raw bytes.
const ECHO_UPGRADE: &str = r#"
import socket, threading
def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Upgrades one connection to WebSocket, then echoes a byte every 100 ms until the
/// connection ends; prints when it ended (epoch seconds).
const TUNNEL_CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection((sys.argv[1], 80), 5)
c.sendall(b"GET /ws HTTP/1.1\r\nHost: deathstar\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += c.recv(4096)
print("upgraded", head.split(b"\r\n")[0].decode(), flush=True)
c.settimeout(5)
echoes = 0
try:
    while True:
        c.sendall(b"x")
        got = c.recv(1)
        if got != b"x":
            print("echoed", repr(got), flush=True)
            break
        echoes += 1
        print("echo", echoes, "%.3f" % time.time(), flush=True)
        time.sleep(0.1)
except OSError as e:
    print("error", repr(e), flush=True)
print("ended %.3f after %d echoes" % (time.time(), echoes), flush=True)
"#;

#[test]
fn a_tunnel_is_kept_through_a_handover_until_the_drain_timeout() {
    if !privileged("a_tunnel_is_kept_through_a_handover_until_the_drain_timeout") {
        return;
    }
    let mut s = Scene::empire_pair("hittun");
    let backend = s.write_file("echo_upgrade.py", ECHO_UPGRADE);
    s.spawn_in("deathstar", &["python3", &backend], "echo.log");
    s.wait_port("deathstar", 80);
    s.start_ward();
    s.write_policy(
        "ws.yaml",
        &POLICY.replace(
            "        - method: \"POST\"\n          path: \"/v1/request-landing\"\n    - ports: [{port: \"50051\"",
            "        - method: \"GET\"\n          path: \"/ws\"\n    - ports: [{port: \"50051\"",
        ),
    );
    let ip = s.pod("deathstar").ip.to_string();
    eventually("the L7 rule", Duration::from_secs(5), || {
        s.curl(
            "tiefighter",
            &["-XPUT", &format!("http://{ip}/v1/exhaust-port")],
        )
        .1 == "Access denied\r\n"
    });
    let client = s.write_file("tunnel_client.py", TUNNEL_CLIENT);
    s.spawn_in("tiefighter", &["python3", &client, &ip], "tunnel.log");
    let tunnel_log = s.dir.join("tunnel.log");
    let read = || std::fs::read_to_string(&tunnel_log).unwrap_or_default();
    eventually("the tunnel", Duration::from_secs(5), || {
        read().contains("echo 3")
    });
    assert!(read().contains("upgraded HTTP/1.1 101"), "{}", read());
    // The handover: the old process keeps the tunnel for its drain timeout (3 s in scenes),
    // then cuts it and says so.
    let handover = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let took = s.upgrade_ward();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    eventually("the tunnel to end", Duration::from_secs(5), || {
        read().contains("ended")
    });
    let text = read();
    let last_echo: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("echo "))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .fold(0.0, f64::max);
    assert!(
        last_echo - handover > 2.0,
        "the tunnel echoed until {last_echo}, the handover began at {handover}:\n{text}"
    );
    assert!(
        s.ward_log()
            .contains("drain timeout: tunnels still open are cut"),
        "{}",
        s.ward_log()
    );
    // Meanwhile the new process serves.
    let denied = |s: &Scene| {
        s.curl(
            "tiefighter",
            &["-XPUT", &format!("http://{ip}/v1/exhaust-port")],
        )
        .1 == "Access denied\r\n"
    };
    assert!(denied(&s));

    // `after_handover: wait` (the DaemonSet's): the old process drains, then stays up, serving
    // nothing, until SIGTERM, so a supervisor does not start it again to take the sockets back.
    // (A process reads it at its start: the next one starts with it, the one after takes over.)
    s.node_config = format!("node: {{name: {}}}\nafter_handover: wait", s.id);
    s.write_config();
    s.upgrade_ward();
    let mut old = s.upgrade_ward_keeping_old();
    std::thread::sleep(Duration::from_millis(500));
    assert!(old.try_wait().unwrap().is_none(), "the old ward exited");
    assert!(denied(&s));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = old.wait().unwrap();
    assert!(status.success(), "{status}");
    // The new process still serves, on its own admin socket.
    assert!(denied(&s));
    assert!(s.ward_cli(&["status"]).status.success());
}

/// The soak: HTTP/1.1, gRPC and DNS load and a policy reload every second for
/// `WARD_SOAK_SECS` (45 in `cargo xtask test`, 600 in `cargo xtask soak`), on one `ward run`.
/// Its descriptors and memory at the end are within 10% of what they were after warming up,
/// no request fails, and every error counter stays 0.
#[test]
fn mixed_soak_keeps_descriptors_and_memory_flat() {
    if !privileged("mixed_soak_keeps_descriptors_and_memory_flat") {
        return;
    }
    let secs: u64 = std::env::var("WARD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let python = peers_python().to_string_lossy().into_owned();
    let mut s = Scene::empire_pair("soak");
    s.add_pod("client", "default", &[("app", "client")]);
    let dns = s.add_pod("dns", "default", &[("app", "dns")]);
    s.dns_listener = Some(DNS_LISTENER);
    s.start_nginx("deathstar", NGINX);
    let grpc_server = s.write_file("grpc_server.py", GRPC_SERVER);
    s.spawn_in("deathstar", &[&python, &grpc_server], "grpc-server.log");
    let dir = s.dir.display().to_string();
    let conf = s.write_file(
        "dnsmasq.conf",
        &format!(
            "port=53\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
             user=root\ncache-size=0\nlocal-ttl=300\npid-file={dir}/dnsmasq.pid\nlocal=/test/\n\
             host-record=allowed.test,10.99.0.1\nhost-record=denied.test,10.99.0.3\n",
            dns.ip
        ),
    );
    s.spawn_in(
        "dns",
        &[
            "dnsmasq",
            "--keep-in-foreground",
            &format!("--conf-file={conf}"),
        ],
        "dnsmasq.log",
    );
    s.wait_port("deathstar", 80);
    s.wait_port("deathstar", 50051);
    s.write_policy("landing.yaml", POLICY);
    s.write_policy("dns.yaml", &DNS_POLICY.replace("  - toFQDNs: [{matchName: api.test}]\n    toPorts:\n    - ports: [{port: \"8080\", protocol: TCP}]\n", ""));
    s.start_ward();
    let ip = s.pod("deathstar").ip.to_string();
    eventually("the L7 rule", Duration::from_secs(5), || {
        s.curl(
            "tiefighter",
            &["-XPUT", &format!("http://{ip}/v1/exhaust-port")],
        )
        .1 == "Access denied\r\n"
    });
    let stop = s.dir.join("stop-load");
    let stop_path = stop.to_string_lossy().into_owned();
    let (h1, grpc, dnsl) = (
        s.write_file("http1_load.py", HTTP1_LOAD),
        s.write_file("grpc_load.py", GRPC_LOAD),
        s.write_file("dns_load.py", DNS_LOAD),
    );
    let (target, dns_ip) = (format!("{ip}:50051"), dns.ip.to_string());
    s.spawn_in(
        "tiefighter",
        &["python3", &h1, &ip, "100", &stop_path],
        "http1-load.log",
    );
    s.spawn_in(
        "tiefighter",
        &[&python, &grpc, &target, "50", &stop_path],
        "grpc-load.log",
    );
    s.spawn_in(
        "client",
        &["python3", &dnsl, &dns_ip, "50", &stop_path, "-"],
        "dns-load.log",
    );
    let reloads = reload_until(&s, &stop, Duration::from_secs(1));
    let pid = s.ward_pid().expect("ward's pid");
    let warm = Duration::from_secs(10.min(secs / 4));
    std::thread::sleep(warm);
    let (fd0, rss0) = ward_tests::proc_usage(pid);
    std::thread::sleep(Duration::from_secs(secs) - warm);
    let (fd1, rss1) = ward_tests::proc_usage(pid);
    std::fs::write(&stop, "").unwrap();
    let reloads = reloads.join().unwrap();
    let read = |log: &str| std::fs::read_to_string(s.dir.join(log)).unwrap_or_default();
    eventually("the loads to end", Duration::from_secs(20), || {
        ["http1-load.log", "grpc-load.log", "dns-load.log"]
            .iter()
            .all(|l| read(l).contains('}'))
    });
    let result = |name: &str| -> serde_json::Value {
        let text = read(name);
        let mut v: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        v["lat"] = serde_json::Value::Null;
        v
    };
    let (h1, grpc, dnsr) = (
        result("http1-load.log"),
        result("grpc-load.log"),
        result("dns-load.log"),
    );
    let metrics = s.metrics();
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let requests = counter("ward_proxy_requests_total");
    eprintln!(
        "soak {secs} s: descriptors {fd0} → {fd1}, RSS {rss0} → {rss1} KiB; {requests} proxied requests, \
         {reloads} reloads; HTTP/1.1 {h1}; gRPC {grpc}; DNS {dnsr}"
    );
    for r in [&h1, &grpc] {
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(r["wrong"], 0, "{r}");
    }
    assert_eq!(h1["stale_retried"], 0, "{h1}");
    assert_eq!(dnsr["lost"], 0, "{dnsr}");
    assert_eq!(dnsr["wrong"], 0, "{dnsr}");
    for name in [
        "ward_flows_lost_total",
        "ward_dns_overflow_total",
        "ward_dns_upstream_timeouts_total",
        "ward_dns_malformed_total",
        "ward_dns_upstream_socket_errors_total",
        "ward_policy_reloads_total{result=\"rejected\"}",
    ] {
        assert_eq!(counter(name), 0.0, "{name}\n{metrics}");
    }
    assert!(requests > 100.0 * secs as f64, "{requests} requests");
    assert!(fd1 <= fd0 + (fd0 / 10).max(10), "descriptors {fd0} → {fd1}");
    assert!(rss1 <= rss0 + rss0 / 10, "RSS {rss0} → {rss1} KiB");
}
