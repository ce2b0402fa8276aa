//! Hostile requests through the real datapath and `ward run`: request smuggling (CL/TE), invalid
//! framing, path, Host and header-rule confusion, `Upgrade: h2c`, WebSocket and CONNECT tunnels,
//! HTTP/2 pseudo-header edge cases, and one client port reused for 300 connections.
//!
//! Every case is sent as raw bytes from the client pod. Afterwards the suite reads what the
//! backends saw — nginx's access log (its own normalised `$uri`) and a raw TCP recorder that
//! keeps every byte it received — and checks that nothing the policy denies reached a backend as
//! a request it acts on, that allowed requests still work, and that the proxy never dies or
//! wedges.
//! Each case prints one line; all failures are reported together at the end.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use ward_tests::{in_netns, privileged, Scene};

/// nginx, HTTP/1.1.
const NGINX: u16 = 80;
/// nginx, HTTP/2 with prior knowledge (h2c).
const NGINX_H2: u16 = 81;
/// The raw recorder.
const RAW: u16 = 8080;
/// The longest wait for any one answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long to keep listening after the expected answers, for answers nobody asked for.
const GRACE: Duration = Duration::from_millis(200);

/// nginx's `http {}`: every request logged with what nginx made of it.
const NGINX_HTTP: &str = r#"
    log_format hostile '$server_port\t$status\t$request_method\t$uri\t$host\t$http_host\t$http_upgrade\t$http_http2_settings\t$request';
    access_log DIR/access.log hostile;
    server {
        listen 80;
        listen 81 http2;
        keepalive_requests 100000;
        location /admin { return 200 "admin\n"; }
        location /internal { return 200 "internal\n"; }
        location /public/ { return 200 "public $uri\n"; }
        location /books/ { return 200 "books $uri\n"; }
        location /api/ { return 200 "api $uri\n"; }
        location /ws { return 200 "ws\n"; }
        location / { return 404 "nowhere $uri\n"; }
    }
"#;

/// Keeps every byte of each connection in `OUT/conn-N.bin`; answers each complete request (head,
/// then a Content-Length or chunked body) with a fixed 200, and a CONNECT with `200 Connection
/// Established`, after which it echoes every byte.
const RECORDER_PY: &str = r#"import os, socket, sys, threading

OUT, PORT = sys.argv[1], int(sys.argv[2])
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
TUNNEL = b"HTTP/1.1 200 Connection Established\r\n\r\n"
os.makedirs(OUT, exist_ok=True)

def request_end(buf):
    """(end of the first request in buf, or None while it is incomplete; its head)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, b""
    head, pos = buf[:end], end + 4
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return None, head
            try:
                size = int(buf[pos:nl].split(b";")[0], 16)
            except ValueError:
                return len(buf), head
            pos = nl + 2
            if size == 0:
                if buf[pos:pos + 2] == b"\r\n":
                    return pos + 2, head
                t = buf.find(b"\r\n\r\n", pos)
                return (None, head) if t < 0 else (t + 4, head)
            if len(buf) < pos + size + 2:
                return None, head
            pos += size + 2
    length = fields.get(b"content-length", b"0")
    pos += int(length) if length.isdigit() else 0
    return (pos, head) if len(buf) >= pos else (None, head)

def serve(conn, n):
    buf, tunnel = b"", False
    with conn, open(os.path.join(OUT, "conn-%d.bin" % n), "wb", buffering=0) as log:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                log.write(data)
                if tunnel:
                    conn.sendall(data)
                    continue
                buf += data
                while True:
                    end, head = request_end(buf)
                    if end is None:
                        break
                    buf = buf[end:]
                    if head.startswith(b"CONNECT "):
                        conn.sendall(TUNNEL + buf)
                        buf, tunnel = b"", True
                        break
                    conn.sendall(OK)
        except OSError:
            pass

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", PORT))
srv.listen(128)
n = 0
while True:
    conn, _ = srv.accept()
    n += 1
    threading.Thread(target=serve, args=(conn, n), daemon=True).start()
"#;

/// What the suite allows; [`policy_allows`] mirrors it.
const POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "hostile"
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      - port: "81"
        protocol: TCP
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: "GET"
          path: "/public/.*"
        - method: "GET"
          path: "/books/[0-9]+"
          host: "books\\.example(:80)?"
        - method: "POST"
          path: "/api/submit"
          headers:
          - "X-Token: ok"
        - method: "CONNECT"
          host: "tunnel\\.example:443"
        - method: "GET"
          path: "/ws"
        - host: "open\\.example(:[0-9]+)?"
"#;

/// May `method path` pass with this Host (and, when known, these `X-Token` values joined with
/// `,`; `Some("")` when there is none)? `path` is what the rules see: normalised, query included.
fn policy_allows(method: &str, path: &str, host: &str, token: Option<&str>) -> bool {
    // The host-only rule: any method and path, but no CONNECT (a tunnel needs a rule that
    // names the method).
    let open = host == "open.example"
        || host
            .strip_prefix("open.example:")
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if open && method != "CONNECT" {
        return true;
    }
    let books = path
        .strip_prefix("/books/")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match method {
        "GET" => {
            path.starts_with("/public/")
                || path == "/ws"
                || (books && matches!(host, "books.example" | "books.example:80"))
        }
        "POST" => path == "/api/submit" && token.is_none_or(|t| t == "ok"),
        "CONNECT" => host == "tunnel.example:443",
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The scene

struct Hostile {
    scene: Scene,
    server: Ipv4Addr,
    client_netns: String,
    /// Where the access log stood when the policy was in force.
    log_offset: usize,
}

/// Pods `server` (nginx on 80/81, the raw recorder on 8080) and `client`, the policy, `ward run`.
fn hostile_scene(tag: &str) -> Hostile {
    let mut s = Scene::new(tag);
    let server = s.add_pod("server", "default", &[("app", "server")]).ip;
    let client_netns = s.add_pod("client", "default", &[("app", "client")]).netns;
    let dir = s.dir.to_string_lossy().into_owned();
    s.start_nginx("server", NGINX_HTTP);
    let recorder = s.dir.join("recorder.py");
    std::fs::write(&recorder, RECORDER_PY).expect("recorder.py");
    let raw_dir = format!("{dir}/raw");
    s.spawn_in(
        "server",
        &[
            "python3",
            &recorder.to_string_lossy(),
            &raw_dir,
            &RAW.to_string(),
        ],
        "recorder.log",
    );
    for port in [NGINX, NGINX_H2, RAW] {
        s.wait_port("server", port);
    }
    // The policy is there before ward starts, so no request ever passes unchecked.
    s.write_policy("hostile.yaml", POLICY);
    s.start_ward();
    let in_force = in_netns(&client_netns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if first_status(&exchange(
                server,
                NGINX,
                &[get("/admin")],
                1,
                Duration::ZERO,
            )) == Some(403)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    assert!(
        in_force,
        "the policy did not take effect:\n{}",
        s.ward_log()
    );
    let log_offset = std::fs::read(s.dir.join("access.log")).map_or(0, |l| l.len());
    Hostile {
        scene: s,
        server,
        client_netns,
        log_offset,
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

/// What the client must get back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// 200 from the backend.
    Allowed,
    /// Exactly this status, first.
    Status(u16),
    /// The escaped-slash answer: 307 with a `Location` that has no escaped slash.
    Redirect,
    /// A refusal: 4xx (501/505 for an unknown coding/version), `RST_STREAM`/`GOAWAY` on h2, or
    /// the connection closed without an answer.
    AnyRefusal,
    /// Served (200) or refused: the RFCs allow both; the backends' records decide.
    Tolerated,
    /// These statuses in order, and nothing more on the connection.
    Seq(&'static [u16]),
    /// 200 to a CONNECT, then bytes echo through the tunnel.
    Tunnel,
}
use Expect::*;

struct Case {
    what: String,
    port: u16,
    /// The start of what was sent, for the report.
    sent: String,
    /// Written one after the other, each after the previous one's answer.
    writes: Vec<Vec<u8>>,
    expect: Expect,
}

#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn add(&mut self, what: &str, port: u16, bytes: Vec<u8>, expect: Expect) {
        self.steps(what, port, vec![bytes], expect);
    }

    fn steps(&mut self, what: &str, port: u16, writes: Vec<Vec<u8>>, expect: Expect) {
        let sent = escape(&writes[0], 100);
        self.0.push(Case {
            what: what.to_string(),
            port,
            sent,
            writes,
            expect,
        });
    }

    /// The same bytes to nginx and to the raw recorder.
    fn both(&mut self, what: &str, bytes: Vec<u8>, expect: Expect) {
        self.add(what, NGINX, bytes.clone(), expect);
        self.add(what, RAW, bytes, expect);
    }

    fn h2(&mut self, what: &str, fields: &[(&str, &str)], body: Option<&str>, expect: Expect) {
        let sent: Vec<String> = fields.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        self.0.push(Case {
            what: format!("h2: {what}"),
            port: NGINX_H2,
            sent: escape(sent.join(", ").as_bytes(), 100),
            writes: vec![h2_request(fields, body)],
            expect,
        });
    }
}

/// A request head: the request line and each header line, CRLF-terminated.
fn head(line: &str, fields: &[&str]) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for f in fields {
        s.push_str(f);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    head(&format!("GET {path} HTTP/1.1"), &["Host: server"])
}

fn get_host(path: &str, host: &str) -> Vec<u8> {
    head(&format!("GET {path} HTTP/1.1"), &[&format!("Host: {host}")])
}

/// `POST /api/submit` with `Host: server`, these header lines and this body (framing is the
/// caller's).
fn submit(fields: &[&str], body: &str) -> Vec<u8> {
    let mut all = vec!["Host: server"];
    all.extend_from_slice(fields);
    let mut r = head("POST /api/submit HTTP/1.1", &all);
    r.extend_from_slice(body.as_bytes());
    r
}

/// `POST /api/submit` with these header lines and no body.
fn token(fields: &[&str]) -> Vec<u8> {
    let mut all = fields.to_vec();
    all.push("Content-Length: 0");
    submit(&all, "")
}

fn content_length(body: &str) -> String {
    format!("Content-Length: {}", body.len())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The request a smuggler hides.
const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nHost: server\r\n\r\n";
const HTTP2_SETTINGS: &str = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA";
const PING: &[u8] = b"ping through the tunnel\n";

/// An allowed POST whose Content-Length covers a chunked body that ends at once, followed by
/// [`SMUGGLED`]; `te` are its Transfer-Encoding lines (a reader trusting them sees the smuggled
/// request, one trusting Content-Length does not).
fn cl_and_te(te: &[&str]) -> Vec<u8> {
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let mut fields = vec!["X-Token: ok"];
    fields.extend_from_slice(te);
    let cl = content_length(&body);
    fields.push(&cl);
    submit(&fields, &body)
}

fn h2_get(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "server"),
        (":path", path),
    ]
}

/// The table: what the attack is, the port, the raw bytes, what must come back; one row a case.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    let mut t = Table::default();

    // Allowed requests work, in their ordinary and less ordinary spellings.
    t.both("baseline: allowed GET /public/x", get("/public/x"), Allowed);
    t.add("books rule with Host: books.example", NGINX, get_host("/books/12", "books.example"), Allowed);
    t.add("books rule with Host: books.example:80", NGINX, get_host("/books/12", "books.example:80"), Allowed);
    t.both("POST /api/submit with X-Token: ok and a body", submit(&["X-Token: ok", "Content-Length: 5"], "hello"), Allowed);
    t.both("chunked POST /api/submit", submit(&["X-Token: ok", "Transfer-Encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n"), Allowed);
    t.both("keep-alive: two allowed requests on one connection", cat(&[&get("/public/a"), &get("/public/b")]), Seq(&[200, 200]));
    t.both("HTTP/1.0 allowed path without Host", b"GET /public/x HTTP/1.0\r\n\r\n".to_vec(), Allowed);
    t.both("query string with JSON, quotes and angle brackets", get(r#"/public/x?q={"a":[1,2]}&b=<c>"#), Allowed);
    t.both("Host with an explicit port: server:80", head("GET /public/x HTTP/1.1", &["Host: server:80"]), Allowed);
    t.both("a 6,000-byte path", get(&format!("/public/{}", "a".repeat(6000))), Allowed);
    t.both("absolute-form target whose authority equals Host", head("GET http://server/public/x HTTP/1.1", &["Host: server"]), Allowed);
    t.both("absolute-form target with a port, equal to Host", head("GET http://server:80/public/x HTTP/1.1", &["Host: server:80"]), Allowed);
    t.both("absolute-form target without Host (the authority is the Host)", head("GET http://server/public/x HTTP/1.1", &[]), Allowed);
    t.add("absolute-form books target without Host", NGINX, head("GET http://books.example/books/1 HTTP/1.1", &[]), Allowed);

    // Plainly denied.
    t.both("GET /admin", get("/admin"), Status(403));
    t.add("GET /internal", NGINX, get("/internal"), Status(403));
    t.add("POST to a GET-only path", NGINX, head("POST /public/x HTTP/1.1", &["Host: server", "Content-Length: 0"]), Status(403));
    t.add("DELETE /public/x", NGINX, head("DELETE /public/x HTTP/1.1", &["Host: server"]), Status(403));
    t.add("books path with another Host", NGINX, get_host("/books/12", "other"), Status(403));
    t.add("books path that is not a number", NGINX, get_host("/books/abc", "books.example"), Status(403));
    t.add("books path with a query string", NGINX, get_host("/books/1?x=1", "books.example"), Status(403));
    t.both("POST /api/submit without X-Token", submit(&["Content-Length: 0"], ""), Status(403));
    t.both("POST /api/submit with X-Token: bad", token(&["X-Token: bad"]), Status(403));
    t.add("GET /Public/x: paths are case-sensitive", NGINX, get("/Public/x"), Status(403));
    t.add("lower-case method `get`", NGINX, head("get /public/x HTTP/1.1", &["Host: server"]), AnyRefusal);

    // CL/TE request smuggling and obfuscated Transfer-Encoding.
    for (what, te, expect) in [
        ("CL.TE: Content-Length covers a chunked body that ends at once, then GET /admin", &["Transfer-Encoding: chunked"][..], AnyRefusal),
        ("Transfer-Encoding:  chunked (extra leading space)", &["Transfer-Encoding:  chunked"], AnyRefusal),
        ("Transfer-Encoding:<TAB>chunked", &["Transfer-Encoding:\tchunked"], AnyRefusal),
        ("Transfer-Encoding: CHUNKED", &["Transfer-Encoding: CHUNKED"], AnyRefusal),
        // Chunked is not the final coding: RFC 9112 §6.3 wants a 400 (an unknown coding may get 501).
        ("TE.TE: Transfer-Encoding: xchunked", &["Transfer-Encoding: xchunked"], AnyRefusal),
        ("Transfer-Encoding: chunked, identity", &["Transfer-Encoding: chunked, identity"], AnyRefusal),
        ("Transfer-Encoding in two lines: chunked + Transfer-encoding: identity", &["Transfer-Encoding: chunked", "Transfer-encoding: identity"], AnyRefusal),
        ("Transfer-Encoding: chunked twice", &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], AnyRefusal),
        ("Transfer-Encoding: identity", &["Transfer-Encoding: identity"], AnyRefusal),
        ("Transfer-Encoding as an obs-fold line after X-Token", &[" Transfer-Encoding: chunked"], AnyRefusal),
    ] {
        t.both(what, cl_and_te(te), expect);
    }
    t.both("Transfer-Encoding : chunked (space before the colon)", cl_and_te(&["Transfer-Encoding : chunked"]), Status(400));
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    t.both("TE.CL: chunked body, Content-Length covers only the chunk size", submit(&["X-Token: ok", "Transfer-Encoding: chunked", "Content-Length: 4"], &chunk), AnyRefusal);
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let cl = content_length(&body);
    t.both("HTTP/1.0 with Transfer-Encoding: chunked and Content-Length", cat(&[&head("POST /api/submit HTTP/1.0", &["Host: server", "X-Token: ok", "Transfer-Encoding: chunked", &cl]), body.as_bytes()]), AnyRefusal);
    t.add("Transfer-Encoding: xchunked without Content-Length", NGINX, submit(&["X-Token: ok", "Transfer-Encoding: xchunked"], "0\r\n\r\n"), AnyRefusal);

    // Invalid Content-Length; a denied request follows the body.
    let body = format!("hello{SMUGGLED}");
    for (what, cl) in [
        ("Content-Length: 1, 2", &["Content-Length: 1, 2"][..]),
        ("Content-Length: +5", &["Content-Length: +5"]),
        ("Content-Length: -1", &["Content-Length: -1"]),
        ("Content-Length: 0x10", &["Content-Length: 0x10"]),
        ("two different Content-Length lines (5, 6)", &["Content-Length: 5", "Content-Length: 6"]),
        ("Content-Length : 5 (space before the colon)", &["Content-Length : 5"]),
        ("Content-Length: 99999999999999999999 (overflow)", &["Content-Length: 99999999999999999999"]),
    ] {
        let mut fields = vec!["X-Token: ok"];
        fields.extend_from_slice(cl);
        t.both(what, submit(&fields, &body), Status(400));
    }

    // Line endings, obs-fold, control bytes, whitespace.
    t.both("bare LF line endings, allowed path", b"GET /public/x HTTP/1.1\nHost: server\n\n".to_vec(), Status(400));
    t.add("bare LF line endings, denied path", NGINX, b"GET /admin HTTP/1.1\nHost: server\n\n".to_vec(), AnyRefusal);
    // A bare LF may end a line (RFC 9112 §2.2), which makes this CL + TE; a bare CR may not.
    let body = format!("0\r\n\r\n{SMUGGLED}");
    for (what, sep, expect) in [("bare LF inside a header line hides Transfer-Encoding", "\n", AnyRefusal), ("bare CR inside a header line hides Transfer-Encoding", "\r", AnyRefusal)] {
        let req = format!("POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: ok\r\nX-A: b{sep}Transfer-Encoding: chunked\r\n{}\r\n\r\n{body}", content_length(&body));
        t.both(what, req.into_bytes(), expect);
    }
    t.add("NUL in a header value", RAW, head("GET /public/x HTTP/1.1", &["Host: server", "X-A: a\0b"]), AnyRefusal);
    t.add("obs-fold continuation line", RAW, head("GET /public/x HTTP/1.1", &["Host: server", "X-A: a", " b"]), Status(400));
    t.both("obs-fold continues X-Token: ok", token(&["X-Token: ok", " bad"]), AnyRefusal);
    t.add("whitespace before the colon: Host : server", NGINX, head("GET /public/x HTTP/1.1", &["Host : server"]), Status(400));
    t.add("header line without a colon", NGINX, head("GET /public/x HTTP/1.1", &["Host: server", "NoColonHere"]), AnyRefusal);
    t.both("an empty line before the request line", cat(&[b"\r\n", &get("/public/x")]), Tolerated);
    t.add("tabs between the request-line parts", NGINX, b"GET\t/admin\tHTTP/1.1\r\nHost: server\r\n\r\n".to_vec(), AnyRefusal);
    t.add("two spaces in the request line", NGINX, head("GET  /admin HTTP/1.1", &["Host: server"]), AnyRefusal);

    // Pipelining and bodies.
    t.both("pipelined: a denied request right behind an allowed one", cat(&[&get("/public/x"), &get("/admin")]), Seq(&[200, 403]));
    t.add("pipelined: allowed, denied, allowed", NGINX, cat(&[&get("/public/a"), &get("/admin"), &get("/public/b")]), Seq(&[200, 403, 200]));
    t.both("a denied request after an allowed POST with Content-Length: 0", cat(&[&token(&["X-Token: ok"]), SMUGGLED.as_bytes()]), Seq(&[200, 403]));
    t.add("a denied request inside an allowed POST's body (Content-Length covers it)", RAW, submit(&["X-Token: ok", &content_length(SMUGGLED)], SMUGGLED), Seq(&[200]));
    let inner = "GET /public/smuggled HTTP/1.1\r\nHost: server\r\n\r\n";
    t.both("an allowed request inside a denied POST's body", cat(&[&head("POST /admin HTTP/1.1", &["Host: server", &content_length(inner)]), inner.as_bytes()]), Seq(&[403]));
    t.both("pipelined: an allowed request, then a malformed head (the 200 is still owed)", cat(&[&get("/public/x"), &head("GET /public/y HTTP/1.1", &["Host : server"])]), Allowed);
    t.add("denied POST with Expect: 100-continue gets 403, not 100", NGINX, head("POST /admin HTTP/1.1", &["Host: server", "Expect: 100-continue", "Content-Length: 5"]), Status(403));

    // Path tricks.
    for (path, expect) in [
        ("/public/../admin", Status(403)),
        ("/public/%2e%2e/admin", Status(403)),
        ("/public/%2E%2E/admin", Status(403)),
        ("/public/.%2e/admin", Status(403)),
        ("//admin", Status(403)),
        ("/./admin", Status(403)),
        ("/%61dmin", Status(403)),
        ("/public/x/../../internal", Status(403)),
        ("/public//../admin", Allowed),
        ("/public/..%2fadmin", Redirect),
        ("/public/..%2Fadmin", Redirect),
        ("/public%2f..%2fadmin", Redirect),
        ("/public/%2e%2e%2fadmin", Redirect),
        ("/public/%5c..%5cadmin", Redirect),
        ("/public\\..\\admin", Status(403)),
        ("/public/..\\admin", Status(403)),
        ("/admin;/public/x", Status(403)),
        ("/public/x;/../../admin", Status(403)),
        ("/public/..;/admin", Status(403)),
        ("/public/x%00", Status(400)),
        ("/public/%c0%ae%c0%ae/admin", Allowed),
        ("/public/%252e%252e/admin", Allowed),
        ("/public/x#/../../admin", Status(400)),
        ("/public/./x", Allowed),
    ] {
        t.both(&format!("path {path}"), get(path), expect);
    }

    // Request-target forms.
    t.add("absolute-form authority differs from Host", NGINX, head("GET http://server/public/x HTTP/1.1", &["Host: evil"]), Status(400));
    t.add("absolute-form authority books.example, Host other", NGINX, head("GET http://books.example/books/1 HTTP/1.1", &["Host: other"]), Status(400));
    t.add("absolute-form authority other, Host books.example", NGINX, head("GET http://other/books/1 HTTP/1.1", &["Host: books.example"]), Status(400));
    t.add("absolute-form with userinfo books.example@evil", NGINX, head("GET http://books.example@evil/books/1 HTTP/1.1", &["Host: evil"]), AnyRefusal);
    t.add("absolute-form target with dot segments", NGINX, head("GET http://server/public/../admin HTTP/1.1", &["Host: server"]), Status(403));
    t.add("absolute-form https target", RAW, head("GET https://server/public/x HTTP/1.1", &["Host: server"]), Tolerated);
    t.add("authority-form target on GET", NGINX, head("GET server:80 HTTP/1.1", &["Host: server:80"]), AnyRefusal);
    t.add("OPTIONS *", NGINX, head("OPTIONS * HTTP/1.1", &["Host: server"]), AnyRefusal);
    t.add("GET *", NGINX, head("GET * HTTP/1.1", &["Host: server"]), AnyRefusal);

    // Host confusion.
    t.both("two Host lines: books.example, then evil", head("GET /books/1 HTTP/1.1", &["Host: books.example", "Host: evil"]), Status(400));
    t.add("two Host lines: evil, then books.example", NGINX, head("GET /books/1 HTTP/1.1", &["Host: evil", "Host: books.example"]), Status(400));
    t.add("two identical Host lines", NGINX, head("GET /public/x HTTP/1.1", &["Host: server", "Host: server"]), Status(400));
    t.both("no Host on HTTP/1.1", head("GET /public/x HTTP/1.1", &[]), Status(400));
    t.add("Host in upper case: BOOKS.EXAMPLE", NGINX, get_host("/books/1", "BOOKS.EXAMPLE"), Status(403));
    t.add("Host with another port: books.example:8080", NGINX, get_host("/books/1", "books.example:8080"), Status(403));
    t.add("Host with a trailing dot: books.example.", NGINX, get_host("/books/1", "books.example."), Status(403));
    t.add("empty Host on the books path", NGINX, head("GET /books/1 HTTP/1.1", &["Host:"]), AnyRefusal);
    t.add("Host: books.example@evil", NGINX, get_host("/books/1", "books.example@evil"), AnyRefusal);
    t.add("Host: books.example, evil (a list)", NGINX, get_host("/books/1", "books.example, evil"), AnyRefusal);
    t.add("Host with a NUL: books.example<NUL>evil", NGINX, get_host("/books/1", "books.example\0evil"), AnyRefusal);

    // Header-rule confusion.
    t.both("X-Token twice: ok, ok", token(&["X-Token: ok", "X-Token: ok"]), AnyRefusal);
    t.both("X-Token twice: ok, bad", token(&["X-Token: ok", "X-Token: bad"]), AnyRefusal);
    t.add("X-Token twice: bad, ok", RAW, token(&["X-Token: bad", "X-Token: ok"]), AnyRefusal);
    t.add("X-Token: ok plus an empty X-Token", RAW, token(&["X-Token: ok", "X-Token:"]), AnyRefusal);
    let obs_text = b"POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: \xffbad\r\nX-Token: ok\r\nContent-Length: 0\r\n\r\n";
    t.both("X-Token: <0xff>bad, then X-Token: ok", obs_text.to_vec(), Status(400));
    t.add("X-Token: ok<0x01> (a control byte)", RAW, token(&["X-Token: ok\x01"]), Status(400));
    t.add("X-Token: ok<DEL>", RAW, token(&["X-Token: ok\x7f"]), Status(400));
    t.add("X-Token: o<NUL>k", RAW, token(&["X-Token: o\0k"]), Status(400));
    t.both("X-Token named in Connection (hop-by-hop: neither checked nor sent)", token(&["X-Token: ok", "Connection: X-Token"]), Status(403));
    t.add("x-token: ok (lower-case name)", RAW, token(&["x-token: ok"]), Allowed);
    t.add("X-TOKEN: ok (upper-case name)", RAW, token(&["X-TOKEN: ok"]), Allowed);
    t.add("X-Token:ok (no space)", RAW, token(&["X-Token:ok"]), Allowed);
    t.add("X-Token: ok with trailing whitespace", RAW, token(&["X-Token: ok  "]), Allowed);
    t.add("X-Token:<TAB>ok", RAW, token(&["X-Token:\tok"]), Allowed);
    t.both("X-Token : ok (space before the colon)", token(&["X-Token : ok"]), Status(400));
    t.add("X-Token only in the trailer of a chunked body", RAW, submit(&["Transfer-Encoding: chunked"], "0\r\nX-Token: ok\r\n\r\n"), Status(403));
    t.add("X_Token: ok (underscore)", RAW, token(&["X_Token: ok"]), Status(403));

    // Upgrade: h2c in every spelling: served as HTTP/1.1, never 101, never forwarded.
    for (what, fields) in [
        ("Upgrade: h2c with HTTP2-Settings (as curl --http2 sends it)", &["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", HTTP2_SETTINGS][..]),
        ("Upgrade: H2C", &["Connection: Upgrade, HTTP2-Settings", "Upgrade: H2C", HTTP2_SETTINGS]),
        ("Upgrade: websocket, h2c", &["Connection: Upgrade, HTTP2-Settings", "Upgrade: websocket, h2c", HTTP2_SETTINGS]),
        ("Upgrade: h2c, websocket", &["Connection: Upgrade", "Upgrade: h2c, websocket", HTTP2_SETTINGS]),
        ("Upgrade: h2c without HTTP2-Settings", &["Connection: Upgrade", "Upgrade: h2c"]),
        ("Upgrade: h2c not named in Connection", &["Upgrade: h2c", HTTP2_SETTINGS]),
        ("HTTP2-Settings without Upgrade", &[HTTP2_SETTINGS]),
        ("Connection: Upgrade and Connection: HTTP2-Settings in two lines", &["Connection: Upgrade", "Connection: HTTP2-Settings", "Upgrade: h2c", HTTP2_SETTINGS]),
    ] {
        let mut all = vec!["Host: server"];
        all.extend_from_slice(fields);
        t.both(what, head("GET /public/x HTTP/1.1", &all), Allowed);
    }
    let h2c = head("GET /public/x HTTP/1.1", &["Host: server", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", HTTP2_SETTINGS]);
    t.both("Upgrade: h2c followed at once by the HTTP/2 preface", cat(&[&h2c, PREFACE]), Allowed);
    t.add("Upgrade: h2c on a denied path", NGINX, head("GET /admin HTTP/1.1", &["Host: server", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", HTTP2_SETTINGS]), Status(403));

    // WebSocket upgrades the backend does not accept.
    let ws = |path: &str| {
        head(&format!("GET {path} HTTP/1.1"), &["Host: server", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"])
    };
    // A switch asked for and not made ends the connection after the answer (`Connection:
    // close`): the bytes that follow are never read as a request, nor tunnelled.
    for port in [NGINX, RAW] {
        t.steps("WebSocket upgrade to /ws answered without 101, then GET /admin on that connection", port, vec![ws("/ws"), get("/admin")], Seq(&[200]));
    }
    t.both("WebSocket upgrade to /ws with GET /admin in the same write", cat(&[&ws("/ws"), &get("/admin")]), Seq(&[200]));
    let ws_h2c = head("GET /public/x HTTP/1.1", &["Host: server", "Connection: Upgrade", "Upgrade: websocket", "Upgrade: h2c"]);
    t.both("Upgrade: websocket and Upgrade: h2c in two fields, then a bare-LF request", cat(&[&ws_h2c, b"GET /public/x HTTP/1.1\nHost: server\n\n"]), Seq(&[200]));
    t.both("Upgrade: TLS/1.0 (only WebSocket is tunnelled), then GET /admin", cat(&[&head("GET /public/x HTTP/1.1", &["Host: server", "Connection: Upgrade", "Upgrade: TLS/1.0"]), &get("/admin")]), Seq(&[200]));
    t.add("WebSocket upgrade to a denied path", NGINX, ws("/admin"), Status(403));

    // CONNECT.
    t.add("CONNECT tunnel.example:443 (allowed): 200, then bytes echo through", RAW, head("CONNECT tunnel.example:443 HTTP/1.1", &["Host: tunnel.example:443"]), Tunnel);
    t.add("CONNECT other:443", RAW, head("CONNECT other:443 HTTP/1.1", &["Host: other:443"]), Status(403));
    t.add("CONNECT tunnel.example:443 with Host: other:443", RAW, head("CONNECT tunnel.example:443 HTTP/1.1", &["Host: other:443"]), AnyRefusal);
    t.add("CONNECT tunnel.example:443 to nginx, which does not tunnel", NGINX, head("CONNECT tunnel.example:443 HTTP/1.1", &["Host: tunnel.example:443"]), AnyRefusal);
    t.add("CONNECT server:80 to nginx", NGINX, head("CONNECT server:80 HTTP/1.1", &["Host: server:80"]), Status(403));
    t.add("CONNECT with an origin-form target", RAW, head("CONNECT /public/x HTTP/1.1", &["Host: server"]), AnyRefusal);
    t.add("CONNECT open.example:443 (its rule names no method: no tunnel)", RAW, head("CONNECT open.example:443 HTTP/1.1", &["Host: open.example:443"]), Status(403));
    t.add("GET /anything with Host: open.example (the host-only rule)", NGINX, get_host("/anything", "open.example"), Status(404));
    // A chunked body whose trailer ends in a bare LF: hyper and a lenient reader would find the
    // next head in different places.
    t.both(
        "chunked trailer ended by a bare LF, hiding a head behind it",
        submit(&["X-Token: ok", "Transfer-Encoding: chunked"], "0\r\nX-T: a\n\nPOST /p\"x HTTP/1.1\r\nHost: server\r\nContent-Length: 50\r\n\r\n"),
        AnyRefusal,
    );
    t.add("`connect` in lower case", RAW, head("connect tunnel.example:443 HTTP/1.1", &["Host: tunnel.example:443"]), AnyRefusal);

    // Versions and sizes.
    t.add("HTTP/1.0, denied path", NGINX, b"GET /admin HTTP/1.0\r\n\r\n".to_vec(), Status(403));
    t.add("HTTP/0.9 request line, denied path", NGINX, b"GET /admin\r\n".to_vec(), AnyRefusal);
    t.add("HTTP/0.9 request line, allowed path", RAW, b"GET /public/x\r\n".to_vec(), AnyRefusal);
    t.add("HTTP/2.0 in an HTTP/1 request line", NGINX, head("GET /admin HTTP/2.0", &["Host: server"]), AnyRefusal);
    t.add("HTTP/1.2 in the request line", NGINX, head("GET /admin HTTP/1.2", &["Host: server"]), AnyRefusal);
    let big = format!("X-Big: {}", "a".repeat(70_000));
    t.add("a head larger than 64 KiB", NGINX, head("GET /public/x HTTP/1.1", &["Host: server", &big]), AnyRefusal);
    let many: Vec<String> = (0..120).map(|i| format!("X-H{i}: v")).collect();
    let mut fields: Vec<&str> = vec!["Host: server"];
    fields.extend(many.iter().map(String::as_str));
    t.add("more than 100 header lines", NGINX, head("GET /public/x HTTP/1.1", &fields), Status(431));
    t.add("a path longer than 64 KiB", NGINX, get(&format!("/public/{}", "a".repeat(70_000))), AnyRefusal);

    // HTTP/2 (prior knowledge) to nginx.
    let post = |fields: &[(&'static str, &'static str)]| {
        let mut all = vec![(":method", "POST"), (":scheme", "http"), (":authority", "server"), (":path", "/api/submit"), ("content-length", "5")];
        all.extend_from_slice(fields);
        all
    };
    t.h2("allowed GET /public/x", &h2_get("/public/x"), None, Allowed);
    t.h2("GET /admin", &h2_get("/admin"), None, Status(403));
    t.h2("POST /api/submit with x-token: ok", &post(&[("x-token", "ok")]), Some("hello"), Allowed);
    t.h2("POST /api/submit without x-token", &post(&[]), Some("hello"), Status(403));
    // Known limit (proxy/README.md): over HTTP/2 the `http` crate refuses a raw `"`, `<`, `>` in
    // `:path` (a stream reset; RFC 9113 §8.3.1 lets a server treat such a target as malformed).
    // HTTP/1.1 has the gate that encodes them; HPACK-encoded heads have none.
    t.h2("query string with JSON and angle brackets (refused over h2: known limit)", &h2_get(r#"/public/x?q={"a":[1,2]}&b=<c>"#), None, AnyRefusal);
    for (path, expect) in [
        ("/public/../admin", Status(403)),
        ("/public/%2e%2e/admin", Status(403)),
        ("//admin", Status(403)),
        ("/admin;/public/x", Status(403)),
        ("/public/./x", Allowed),
        ("/public/..%2fadmin", Redirect),
        ("/public/%5c..%5cadmin", Redirect),
        ("/public/x#/../../admin", Tolerated),
        ("public/x", AnyRefusal),
        ("http://server/admin", AnyRefusal),
        ("*", AnyRefusal),
        ("", AnyRefusal),
    ] {
        t.h2(&format!(":path {path:?}"), &h2_get(path), None, expect);
    }
    let no_path = [(":method", "GET"), (":scheme", "http"), (":authority", "server")];
    t.h2("no :path", &no_path, None, AnyRefusal);
    t.h2("two :path (/public/x, /admin)", &[&h2_get("/public/x")[..], &[(":path", "/admin")]].concat(), None, AnyRefusal);
    t.h2("two :path (/admin, /public/x)", &[&h2_get("/admin")[..], &[(":path", "/public/x")]].concat(), None, AnyRefusal);
    let books = |authority: Option<&'static str>, host: Option<&'static str>| {
        let mut f = vec![(":method", "GET"), (":scheme", "http")];
        f.extend(authority.map(|a| (":authority", a)));
        f.push((":path", "/books/1"));
        f.extend(host.map(|h| ("host", h)));
        f
    };
    t.h2(":authority books.example, host other", &books(Some("books.example"), Some("other")), None, Status(400));
    t.h2(":authority other, host books.example", &books(Some("other"), Some("books.example")), None, Status(400));
    t.h2("host books.example without :authority", &books(None, Some("books.example")), None, Allowed);
    t.h2(":authority books.example:80", &books(Some("books.example:80"), None), None, Allowed);
    t.h2(":authority books.example@evil", &books(Some("books.example@evil"), None), None, AnyRefusal);
    t.h2("host server without :authority", &[(":method", "GET"), (":scheme", "http"), (":path", "/public/x"), ("host", "server")], None, Allowed);
    t.h2("neither :authority nor host", &[(":method", "GET"), (":scheme", "http"), (":path", "/public/x")], None, Status(400));
    t.h2("upper-case header name X-Token", &post(&[("X-Token", "ok")]), Some("hello"), AnyRefusal);
    t.h2("x-token twice", &post(&[("x-token", "ok"), ("x-token", "ok")]), Some("hello"), AnyRefusal);
    t.h2("x-token with a NUL", &post(&[("x-token", "o\0k")]), Some("hello"), AnyRefusal);
    for (name, value) in [("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("te", "gzip"), ("transfer-encoding", "chunked"), ("upgrade", "h2c")] {
        t.h2(&format!("connection-specific {name}: {value}"), &[&h2_get("/public/x")[..], &[(name, value)]].concat(), None, AnyRefusal);
    }
    t.h2("te: trailers", &[&h2_get("/public/x")[..], &[("te", "trailers")]].concat(), None, Allowed);
    t.h2("pseudo-header after a regular header", &[(":method", "GET"), (":scheme", "http"), (":authority", "server"), ("accept", "*/*"), (":path", "/public/x")], None, AnyRefusal);
    t.h2("unknown pseudo-header :foo", &[&h2_get("/public/x")[..], &[(":foo", "bar")]].concat(), None, AnyRefusal);
    t.h2("no :method", &[(":scheme", "http"), (":authority", "server"), (":path", "/public/x")], None, AnyRefusal);
    t.h2("no :scheme", &[(":method", "GET"), (":authority", "server"), (":path", "/public/x")], None, AnyRefusal);
    t.h2("two :method (GET, POST)", &[&h2_get("/public/x")[..], &[(":method", "POST")]].concat(), None, AnyRefusal);
    t.h2("lower-case :method get", &[(":method", "get"), (":scheme", "http"), (":authority", "server"), (":path", "/public/x")], None, AnyRefusal);
    t.h2("CONNECT other:443", &[(":method", "CONNECT"), (":authority", "other:443")], None, AnyRefusal);

    t.0
}

// ---------------------------------------------------------------------------------------------
// The client side: send, then read what comes back

#[derive(Debug, Default)]
struct Resp {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the connection stood when the client stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Still open, every expected answer in.
    Open,
    Closed,
    Reset,
    /// Still open, an expected answer missing.
    Timeout,
    Unreachable,
    RstStream(u32),
    GoAway(u32),
}

struct Seen {
    responses: Vec<Resp>,
    end: End,
    /// What came back through a CONNECT tunnel.
    echo: Option<Vec<u8>>,
}

fn first_status(seen: &Seen) -> Option<u16> {
    seen.responses.first().map(|r| r.status)
}

/// Sends `writes` to `server:port` (each after the previous one's answer) and reads `want`
/// answers, then listens `grace` longer for answers nobody asked for.
fn exchange(server: Ipv4Addr, port: u16, writes: &[Vec<u8>], want: usize, grace: Duration) -> Seen {
    let addr = SocketAddr::from((server, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, TIMEOUT) else {
        return Seen {
            responses: Vec::new(),
            end: End::Unreachable,
            echo: None,
        };
    };
    if port == NGINX_H2 {
        return exchange_h2(stream, &writes[0]);
    }
    let mut c = H1 {
        stream,
        buf: Vec::new(),
        responses: Vec::new(),
        ended: None,
        connect: writes[0].starts_with(b"CONNECT "),
        switched: false,
    };
    for (i, w) in writes.iter().enumerate() {
        // A refusal may close the connection before everything is written; read it anyway.
        let _ = c.stream.write_all(w);
        let n = if i + 1 < writes.len() {
            c.responses.len() + 1
        } else {
            want
        };
        c.read_until(n, Instant::now() + TIMEOUT);
    }
    let mut echo = None;
    if c.connect && c.switched && c.responses.first().is_some_and(|r| r.status == 200) {
        let _ = c.stream.write_all(PING);
        c.read_raw(PING.len(), Instant::now() + TIMEOUT);
        echo = Some(std::mem::take(&mut c.buf));
    }
    if !grace.is_zero() {
        c.read_until(usize::MAX, Instant::now() + grace);
    }
    let end = c.ended.unwrap_or(if c.responses.len() >= want {
        End::Open
    } else {
        End::Timeout
    });
    Seen {
        responses: c.responses,
        end,
        echo,
    }
}

struct H1 {
    stream: TcpStream,
    buf: Vec<u8>,
    responses: Vec<Resp>,
    ended: Option<End>,
    /// The first request is a CONNECT: its 2xx has no body and starts a tunnel.
    connect: bool,
    /// After a 101 or a CONNECT's 2xx: the bytes are no longer HTTP.
    switched: bool,
}

impl H1 {
    /// Reads until `n` responses are in, the connection ends, or `until`.
    fn read_until(&mut self, n: usize, until: Instant) {
        loop {
            self.parse();
            if self.responses.len() >= n || self.ended.is_some() || !self.read_some(until) {
                self.parse();
                return;
            }
        }
    }

    /// Reads until `n` bytes are buffered (tunnel payload).
    fn read_raw(&mut self, n: usize, until: Instant) {
        while self.buf.len() < n && self.ended.is_none() && self.read_some(until) {}
    }

    /// One read; false on timeout.
    fn read_some(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.ended = Some(End::Closed),
            Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.ended = Some(End::Reset),
        }
        true
    }

    fn parse(&mut self) {
        while !self.switched {
            let to_connect = self.connect && self.responses.is_empty();
            let Some((r, used)) = parse_response(&self.buf, self.ended.is_some(), to_connect)
            else {
                return;
            };
            self.buf.drain(..used);
            self.switched = r.status == 101 || (to_connect && (200..300).contains(&r.status));
            self.responses.push(r);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1 response from the front of `buf` and the bytes it used; `None` while incomplete.
/// Bytes that are no response come back as status 0.
fn parse_response(buf: &[u8], eof: bool, to_connect: bool) -> Option<(Resp, usize)> {
    let garbage = |len: usize| {
        let r = Resp {
            body: buf[..len].to_vec(),
            ..Resp::default()
        };
        Some((r, len))
    };
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            garbage(buf.len())
        } else {
            None
        };
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [v, code, ..] if v.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    };
    let Some(status) = status else {
        return garbage(end + 4);
    };
    let fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Resp {
        status,
        fields,
        body: Vec::new(),
    };
    let start = end + 4;
    let rest = &buf[start..];
    if (100..200).contains(&status)
        || status == 204
        || status == 304
        || (to_connect && (200..300).contains(&status))
    {
        return Some((r, start));
    }
    if r.field("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        let (body, used) = dechunk(rest)?;
        r.body = body;
        return Some((r, start + used));
    }
    if let Some(len) = r
        .field("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        if rest.len() < len {
            return if eof { garbage(buf.len()) } else { None };
        }
        r.body = rest[..len].to_vec();
        return Some((r, start + len));
    }
    if !eof {
        return None;
    }
    r.body = rest.to_vec();
    Some((r, buf.len()))
}

/// A chunked body (trailers skipped): its bytes and the length it used; `None` while incomplete.
fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut body, mut pos) = (Vec::new(), 0);
    loop {
        let nl = find(&buf[pos..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[pos..pos + nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        pos += nl + 2;
        if size == 0 {
            let trailers_end = if buf[pos..].starts_with(b"\r\n") {
                2
            } else {
                find(&buf[pos..], b"\r\n\r\n")? + 4
            };
            return Some((body, pos + trailers_end));
        }
        if buf.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: frames and HPACK, built by hand so that malformed pseudo-headers can be sent

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix; `flags` fills the rest of the first byte.
fn hpack_int(out: &mut Vec<u8>, mut value: usize, n: u32, flags: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Preface, empty SETTINGS, and stream 1: HEADERS with every field as a literal without
/// indexing (no Huffman), in the order given, then the body as one DATA frame.
fn h2_request(fields: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        hpack_int(&mut block, name.len(), 7, 0);
        block.extend_from_slice(name.as_bytes());
        hpack_int(&mut block, value.len(), 7, 0);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let end = if body.is_none() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, END_HEADERS | end, 1, &block));
    if let Some(b) = body {
        out.extend(frame(DATA, END_STREAM, 1, b.as_bytes()));
    }
    out
}

/// Writes the request, acknowledges the server's SETTINGS, and reads stream 1's answer.
fn exchange_h2(mut stream: TcpStream, request: &[u8]) -> Seen {
    let _ = stream.write_all(request);
    let deadline = Instant::now() + TIMEOUT;
    let mut hpack = Hpack::default();
    let (mut buf, mut block) = (Vec::new(), Vec::new());
    let (mut resp, mut end, mut done, mut end_pending) = (None::<Resp>, None, false, false);
    let mut chunk = [0u8; 65536];
    while !done {
        while buf.len() >= 9 && !done {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let sid = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf.drain(..9 + len).skip(9).collect();
            let word = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    let _ = stream.write_all(&frame(SETTINGS, 1, 0, &[]));
                }
                HEADERS | CONTINUATION if sid == 1 => {
                    if kind == HEADERS {
                        block.extend_from_slice(unpad(&payload, flags, true));
                        end_pending = flags & END_STREAM != 0;
                    } else {
                        block.extend_from_slice(&payload);
                    }
                    if flags & END_HEADERS != 0 {
                        let decoded = hpack.decode(&block);
                        block.clear();
                        match decoded {
                            Ok(fields) if resp.is_none() => {
                                let fields: Vec<(String, String)> = fields
                                    .into_iter()
                                    .map(|(n, v)| {
                                        (
                                            String::from_utf8_lossy(&n).into_owned(),
                                            String::from_utf8_lossy(&v).into_owned(),
                                        )
                                    })
                                    .collect();
                                let status = fields
                                    .iter()
                                    .find(|(n, _)| n == ":status")
                                    .and_then(|(_, v)| v.parse().ok())
                                    .unwrap_or(0);
                                resp = Some(Resp {
                                    status,
                                    fields,
                                    body: Vec::new(),
                                });
                            }
                            Ok(_) => {}
                            Err(e) => {
                                resp = Some(Resp {
                                    body: format!("undecodable HPACK: {e}").into_bytes(),
                                    ..Resp::default()
                                });
                                done = true;
                            }
                        }
                        done |= end_pending;
                    }
                }
                DATA if sid == 1 => {
                    if let Some(r) = resp.as_mut() {
                        r.body.extend_from_slice(unpad(&payload, flags, false));
                    }
                    done |= flags & END_STREAM != 0;
                }
                RST_STREAM if sid == 1 => {
                    end = Some(End::RstStream(word(0)));
                    done = true;
                }
                GOAWAY => {
                    let (last, code) = (word(0) & 0x7fff_ffff, word(4));
                    end = Some(End::GoAway(code));
                    done |= code != 0 || last < 1;
                }
                _ => {}
            }
        }
        if done {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => {
                end = end.or(Some(End::Closed));
                break;
            }
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                end = end.or(Some(End::Reset));
                break;
            }
        }
    }
    let end = end.unwrap_or(if done { End::Open } else { End::Timeout });
    Seen {
        responses: resp.into_iter().collect(),
        end,
        echo: None,
    }
}

/// A HEADERS or DATA payload without its padding (and HEADERS' priority fields).
fn unpad(payload: &[u8], flags: u8, headers: bool) -> &[u8] {
    let (mut p, mut pad) = (payload, 0);
    if flags & PADDED != 0 {
        pad = usize::from(p.first().copied().unwrap_or(0));
        p = p.get(1..).unwrap_or(&[]);
    }
    if headers && flags & PRIORITY != 0 {
        p = p.get(5..).unwrap_or(&[]);
    }
    &p[..p.len().saturating_sub(pad)]
}

/// RFC 7541 Appendix A, names; the values that matter are in [`static_value`].
const STATIC_NAMES: &str = ":authority :method :method :path :path :scheme :scheme :status \
    :status :status :status :status :status :status accept-charset accept-encoding \
    accept-language accept-ranges accept access-control-allow-origin age allow authorization \
    cache-control content-disposition content-encoding content-language content-length \
    content-location content-range content-type cookie date etag expect expires from host \
    if-match if-modified-since if-none-match if-range if-unmodified-since last-modified link \
    location max-forwards proxy-authenticate proxy-authorization range referer refresh \
    retry-after server set-cookie strict-transport-security transfer-encoding user-agent vary \
    via www-authenticate";

fn static_value(index: usize) -> &'static str {
    match index {
        2 => "GET",
        3 => "POST",
        4 => "/",
        5 => "/index.html",
        6 => "http",
        7 => "https",
        8 => "200",
        9 => "204",
        10 => "206",
        11 => "304",
        12 => "400",
        13 => "404",
        14 => "500",
        16 => "gzip, deflate",
        _ => "",
    }
}

type Field = (Vec<u8>, Vec<u8>);

/// An HPACK decoder (RFC 7541) for the server's answers.
struct Hpack {
    dynamic: VecDeque<Field>,
    max: usize,
}

impl Default for Hpack {
    fn default() -> Hpack {
        Hpack {
            dynamic: VecDeque::new(),
            max: 4096,
        }
    }
}

impl Hpack {
    fn entry(&self, index: usize) -> Result<Field, String> {
        match index {
            1..=61 => {
                let name = STATIC_NAMES.split_whitespace().nth(index - 1).unwrap_or("");
                Ok((name.into(), static_value(index).into()))
            }
            _ => self
                .dynamic
                .get(index.wrapping_sub(62))
                .cloned()
                .ok_or(format!("no table entry {index}")),
        }
    }

    fn evict(&mut self) {
        while self
            .dynamic
            .iter()
            .map(|(n, v)| 32 + n.len() + v.len())
            .sum::<usize>()
            > self.max
        {
            self.dynamic.pop_back();
        }
    }

    fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, String> {
        let (mut pos, mut out) = (0, Vec::new());
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let index = read_int(block, &mut pos, 7)?;
                out.push(self.entry(index)?);
                continue;
            }
            if b & 0xe0 == 0x20 {
                self.max = read_int(block, &mut pos, 5)?;
                self.evict();
                continue;
            }
            // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
            let indexed = b & 0x40 != 0;
            let index = read_int(block, &mut pos, if indexed { 6 } else { 4 })?;
            let name = if index == 0 {
                read_str(block, &mut pos)?
            } else {
                self.entry(index)?.0
            };
            let value = read_str(block, &mut pos)?;
            if indexed {
                self.dynamic.push_front((name.clone(), value.clone()));
                self.evict();
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

fn read_int(buf: &[u8], pos: &mut usize, n: u32) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = usize::from(*buf.get(*pos).ok_or("truncated integer")?) & max;
    *pos += 1;
    if first < max {
        return Ok(first);
    }
    let (mut value, mut shift) = (max, 0);
    loop {
        let b = *buf.get(*pos).ok_or("truncated integer")?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

fn read_str(buf: &[u8], pos: &mut usize) -> Result<Vec<u8>, String> {
    let huffman = buf.get(*pos).is_some_and(|b| b & 0x80 != 0);
    let len = read_int(buf, pos, 7)?;
    let raw = buf.get(*pos..*pos + len).ok_or("truncated string")?;
    *pos += len;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// The HPACK Huffman code (RFC 7541 Appendix B) is canonical, so the code length of each
/// symbol (0..=255, then EOS) defines it; here as `b'a' + length - 5`.
const HUFFMAN_LENGTHS: &[u8; 257] =
    b"isxxxxxxxtzxxzxxxxxxxxzxxxxxxxxxbffhibdgffdgdbbbaaabbbbbbbcdkbhf\
ibccccccccccccccccccccccdcdioijbkabababbbaccbbbabcbaabccccckgjix\
prpprrrsrssssststtrstssssqrsrsstrqprrssqsrrtqrssqqrqsrssprrrsrrs\
vvporsruvvvwwvtuoqvwwvwtqqvvxwwwptpqrqqsrruuttvsvwvvwwwwwxwwwwwv\
z";

fn huffman_decode(bits: &[u8]) -> Result<Vec<u8>, String> {
    let len = |s: usize| u32::from(HUFFMAN_LENGTHS[s] - b'a') + 5;
    let mut symbols: Vec<usize> = (0..257).collect();
    symbols.sort_by_key(|&s| (len(s), s));
    // Per code length: (first code, index of its first symbol in `symbols`, how many).
    let mut by_len = [(0u32, 0usize, 0usize); 31];
    let mut code = 0u32;
    for (i, &s) in symbols.iter().enumerate() {
        if i > 0 {
            code = (code + 1) << (len(s) - len(symbols[i - 1]));
        }
        let e = &mut by_len[len(s) as usize];
        if e.2 == 0 {
            *e = (code, i, 0);
        }
        e.2 += 1;
    }
    let (mut out, mut acc, mut n) = (Vec::new(), 0u32, 0usize);
    for byte in bits {
        for k in (0..8).rev() {
            acc = (acc << 1) | u32::from(byte >> k & 1);
            n += 1;
            let (first, at, count) = by_len[n.min(30)];
            if count > 0 && acc >= first && ((acc - first) as usize) < count {
                match symbols[at + (acc - first) as usize] {
                    256 => return Err("EOS inside a Huffman string".into()),
                    s => out.push(s as u8),
                }
                (acc, n) = (0, 0);
            } else if n >= 30 {
                return Err("invalid Huffman code".into());
            }
        }
    }
    if n > 7 || acc != (1 << n) - 1 {
        return Err("invalid Huffman padding".into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Judging what the client saw

fn refused(seen: &Seen) -> bool {
    match seen.responses.first() {
        Some(r) => (400..500).contains(&r.status) || r.status == 501 || r.status == 505,
        None => matches!(
            seen.end,
            End::Closed | End::Reset | End::RstStream(_) | End::GoAway(_)
        ),
    }
}

fn has_escaped_slash(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    s.contains("%2f") || s.contains("%5c")
}

fn judge(expect: Expect, seen: &Seen) -> Result<(), String> {
    if seen.responses.iter().any(|r| r.status == 101) {
        return Err("101 Switching Protocols".into());
    }
    if let Some(r) = seen
        .responses
        .iter()
        .find(|r| r.body.starts_with(b"admin\n") || r.body.starts_with(b"internal\n"))
    {
        return Err(format!(
            "a denied resource was served: {}",
            escape(&r.body, 40)
        ));
    }
    let first = seen.responses.first();
    let status = first.map(|r| r.status);
    let ok = match expect {
        Allowed => status == Some(200),
        Status(code) => status == Some(code),
        Redirect => {
            status == Some(307)
                && first
                    .and_then(|r| r.field("location"))
                    .is_some_and(|l| !has_escaped_slash(l))
        }
        AnyRefusal => refused(seen),
        Tolerated => status == Some(200) || refused(seen),
        Seq(codes) => seen
            .responses
            .iter()
            .map(|r| r.status)
            .eq(codes.iter().copied()),
        Tunnel => status == Some(200) && seen.echo.as_deref() == Some(PING),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}"))
    }
}

fn escape(bytes: &[u8], max: usize) -> String {
    let shown: String = bytes
        .iter()
        .take(max)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    if bytes.len() > max {
        format!("{shown}…")
    } else {
        shown
    }
}

fn describe(seen: &Seen) -> String {
    let mut parts: Vec<String> = seen
        .responses
        .iter()
        .map(|r| {
            let location = r
                .field("location")
                .map(|l| format!(" → {l}"))
                .unwrap_or_default();
            format!("{}{location} \"{}\"", r.status, escape(&r.body, 30))
        })
        .collect();
    if let Some(echo) = &seen.echo {
        parts.push(format!("tunnel echoed \"{}\"", escape(echo, 30)));
    }
    parts.push(format!("{:?}", seen.end).to_lowercase());
    parts.join(", ")
}

/// Whether the `ward run` process still exists (and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A normal allowed request on a new connection to each backend answers 200 within 2 s.
fn still_serving(server: Ipv4Addr, ward_pid: u32, h2: bool) -> Result<(), String> {
    if !alive(ward_pid) {
        return Err("`ward run` is gone".into());
    }
    let mut checks = vec![(NGINX, get("/public/health")), (RAW, get("/public/health"))];
    if h2 {
        checks.push((NGINX_H2, h2_request(&h2_get("/public/health"), None)));
    }
    for (port, req) in checks {
        let started = Instant::now();
        let seen = exchange(server, port, &[req], 1, Duration::ZERO);
        if first_status(&seen) != Some(200) || started.elapsed() > TIMEOUT {
            return Err(format!(
                "an allowed request to :{port} got {} after {:?}",
                describe(&seen),
                started.elapsed()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Judging what the backends saw

/// nginx's access log: every request nginx acted on must be one the policy allows, judged by
/// nginx's own normalised `$uri`; no `Upgrade: h2c` or `HTTP2-Settings` may reach it.
fn nginx_violations(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [port, status, method, uri, host, http_host, upgrade, settings, request] = f[..] else {
            out.push(format!("nginx: unparsable access-log line {line:?}"));
            continue;
        };
        if upgrade.to_ascii_lowercase().contains("h2c") {
            out.push(format!("nginx :{port} saw Upgrade: {upgrade} ({request})"));
        }
        if settings != "-" {
            out.push(format!("nginx :{port} saw HTTP2-Settings ({request})"));
        }
        // Refused by nginx's own parser: not acted on.
        if matches!(status, "400" | "408" | "414" | "494") {
            continue;
        }
        let host = if http_host == "-" { host } else { http_host };
        // An absolute-form target names a host of its own, which nginx prefers.
        let target = request.split(' ').nth(1).unwrap_or("");
        let authority = target
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        let allowed = policy_allows(method, uri, host, None)
            && authority.is_none_or(|a| policy_allows(method, uri, a, None));
        if !allowed {
            out.push(format!(
                "nginx :{port} acted ({status}) on {method} {uri} with Host {host:?}, which the policy denies (request line {request:?})"
            ));
        }
    }
    out
}

/// Every connection file of the raw recorder, parsed strictly.
fn raw_violations(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let data = std::fs::read(&f).unwrap_or_default();
        out.extend(
            check_raw_connection(&data)
                .into_iter()
                .map(|e| format!("raw {name}: {e}")),
        );
    }
    out
}

/// Walks one connection's bytes request by request (strict HTTP/1.1: CRLF heads, one Host,
/// no CL with TE, normalised origin-form targets); each request must be one the policy allows,
/// header rule included. After a CONNECT, the rest is tunnel payload.
fn check_raw_connection(data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let Some(end) = find(&data[pos..], b"\r\n\r\n") else {
            out.push(format!(
                "bytes that are no complete request head: {}",
                escape(&data[pos..], 120)
            ));
            break;
        };
        let head = &data[pos..pos + end];
        pos += end + 4;
        let req = match parse_head(head) {
            Ok(r) => r,
            Err(e) => {
                out.push(format!("{e}: {}", escape(head, 200)));
                break;
            }
        };
        let hosts = [
            Some(req.host.as_str()),
            (req.method == "CONNECT").then_some(req.target.as_str()),
        ];
        let allowed = hosts
            .iter()
            .flatten()
            .all(|h| policy_allows(&req.method, &req.target, h, Some(&req.token)));
        if !allowed {
            out.push(format!(
                "a request the policy denies: {}",
                escape(head, 200)
            ));
        }
        if req.method == "CONNECT" {
            break;
        }
        match req.body {
            Body::None => {}
            Body::Length(n) => pos += n,
            Body::Chunked => match skip_chunked(&data[pos..]) {
                Ok(Some(n)) => pos += n,
                // Truncated: the backend is still waiting for the rest of this body.
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("{e} in the body of {}", escape(head, 80)));
                    break;
                }
            },
        }
    }
    out
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

struct RawRequest {
    method: String,
    target: String,
    /// The Host value ("" when there is none).
    host: String,
    /// The X-Token values joined with ","; "" when there is none.
    token: String,
    body: Body,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_head(head: &[u8]) -> Result<RawRequest, String> {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(i) = find(rest, b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    if lines
        .iter()
        .any(|l| l.contains(&b'\r') || l.contains(&b'\n'))
    {
        return Err("bare CR or LF in the head".into());
    }
    let parts: Vec<&[u8]> = lines[0].split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err("malformed request line".into());
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err("malformed method".into());
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err("not HTTP/1.0 or HTTP/1.1".into()),
    };
    let method = String::from_utf8_lossy(method).into_owned();
    let target = String::from_utf8_lossy(target).into_owned();
    check_target(&method, &target)?;
    let (mut hosts, mut cls, mut tes, mut tokens) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in &lines[1..] {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err("obs-fold continuation line".into());
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("header line without a colon")?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err("malformed header name".into());
        }
        let value = value.trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control byte in a header value".into());
        }
        let value = String::from_utf8_lossy(value).into_owned();
        match String::from_utf8_lossy(name).to_ascii_lowercase().as_str() {
            "host" => hosts.push(value),
            "content-length" => cls.push(value),
            "transfer-encoding" => tes.push(value),
            "x-token" => tokens.push(value),
            "upgrade" if value.to_ascii_lowercase().contains("h2c") => {
                return Err("Upgrade: h2c forwarded".into())
            }
            "http2-settings" => return Err("HTTP2-Settings forwarded".into()),
            _ => {}
        }
    }
    if hosts.len() > 1 || (hosts.is_empty() && !http10) {
        return Err(format!("{} Host lines", hosts.len()));
    }
    let body = match (&cls[..], &tes[..]) {
        ([], []) => Body::None,
        ([cl], []) if !cl.is_empty() && cl.bytes().all(|b| b.is_ascii_digit()) => {
            Body::Length(cl.parse().map_err(|_| "Content-Length out of range")?)
        }
        ([], [te]) if te.eq_ignore_ascii_case("chunked") && !http10 => Body::Chunked,
        _ => {
            return Err(format!(
                "ambiguous framing: Content-Length {cls:?}, Transfer-Encoding {tes:?}"
            ))
        }
    };
    Ok(RawRequest {
        method,
        target,
        host: hosts.pop().unwrap_or_default(),
        token: tokens.join(","),
        body,
    })
}

/// An origin-form target already normalised (or `*` for OPTIONS, host:port for CONNECT).
fn check_target(method: &str, target: &str) -> Result<(), String> {
    if method == "CONNECT" {
        return if !target.contains('/') && target.contains(':') {
            Ok(())
        } else {
            Err("CONNECT without an authority-form target".into())
        };
    }
    if target == "*" && method == "OPTIONS" {
        return Ok(());
    }
    if !target.starts_with('/') {
        return Err("request target not in origin-form".into());
    }
    if target
        .bytes()
        .any(|b| b <= 0x20 || b >= 0x7f || b == b'#' || b == b'\\')
    {
        return Err("invalid byte in the request target".into());
    }
    let path = target.split('?').next().unwrap_or("");
    if has_escaped_slash(path) {
        return Err("escaped slash in the path".into());
    }
    if path.contains("//") {
        return Err("path not normalised (//)".into());
    }
    let dots = path
        .split('/')
        .map(|s| s.to_ascii_lowercase().replace("%2e", "."))
        .any(|s| s == "." || s == "..");
    if dots {
        return Err("path not normalised (dot segment)".into());
    }
    Ok(())
}

/// The length of a strictly chunked body with its trailers; `None` when it is cut short.
fn skip_chunked(data: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(nl) = find(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = &data[pos..pos + nl];
        let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("bad chunk-size line {}", escape(line, 40)));
        }
        let size = usize::from_str_radix(&String::from_utf8_lossy(size), 16)
            .map_err(|_| "chunk size out of range")?;
        pos += nl + 2;
        if size == 0 {
            loop {
                let Some(nl) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                let line = &data[pos..pos + nl];
                pos += nl + 2;
                if line.is_empty() {
                    return Ok(Some(pos));
                }
                if !line.contains(&b':') || line[0] == b' ' || line[0] == b'\t' {
                    return Err(format!("bad trailer line {}", escape(line, 40)));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        if &data[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn hostile_requests_never_reach_a_backend_as_something_else() {
    if !privileged("hostile_requests_never_reach_a_backend_as_something_else") {
        return;
    }
    let h = hostile_scene("hs");
    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let total = cases.len();
    let (server, ward_pid) = (h.server, h.scene.ward_pid().expect("ward runs"));
    let mut failures = in_netns(&h.client_netns, move || {
        let mut failures = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let want = match case.expect {
                Seq(codes) => codes.len(),
                _ => 1,
            };
            let seen = exchange(server, case.port, &case.writes, want, GRACE);
            let verdict = judge(case.expect, &seen);
            eprintln!(
                "[hostile {:>3}/{total}] {} :{:<4} {} | sent \"{}\" | got {}",
                i + 1,
                if verdict.is_ok() { "ok  " } else { "FAIL" },
                case.port,
                case.what,
                case.sent,
                describe(&seen)
            );
            if let Err(why) = verdict {
                failures.push(format!(
                    "#{} :{} {}: {why}, got {}",
                    i + 1,
                    case.port,
                    case.what,
                    describe(&seen)
                ));
            }
            if let Err(why) = still_serving(server, ward_pid, case.port == NGINX_H2) {
                eprintln!(
                    "[hostile {:>3}/{total}] WEDGED after this case: {why}",
                    i + 1
                );
                failures.push(format!("after #{} ({}): {why}", i + 1, case.what));
                if !alive(ward_pid) {
                    break;
                }
            }
        }
        failures
    });
    let log = std::fs::read(h.scene.dir.join("access.log")).unwrap_or_default();
    let log = String::from_utf8_lossy(log.get(h.log_offset..).unwrap_or_default()).into_owned();
    let mut backend = nginx_violations(&log);
    backend.extend(raw_violations(&h.scene.dir.join("raw")));
    for v in &backend {
        eprintln!("[hostile] BACKEND {v}");
    }
    failures.extend(backend.into_iter().map(|v| format!("backend: {v}")));
    assert!(
        failures.is_empty(),
        "{} of {total} cases, or the backends' records, failed (WARD_KEEP_SCENE=1 keeps {}):\n{}",
        failures.len(),
        h.scene.dir.display(),
        failures.join("\n")
    );
}

/// The client port every connection of [`one_client_port_reused_for_300_connections`] uses.
const FIXED_CLIENT_PORT: u16 = 41_234;

/// `setsockopt(2)` of one option on a descriptor the caller owns.
fn set_option<T>(fd: libc::c_int, name: libc::c_int, value: &T) -> Result<(), String> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to `len` readable bytes for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// A connection to `server:80` from `FIXED_CLIENT_PORT` (SO_REUSEADDR, SO_LINGER: closing waits
/// until the proxy acknowledged the client's FIN). A local EADDRNOTAVAIL (the client kernel still
/// holding the last connection's tuple; nothing was sent) is retried until `deadline`.
fn connect_from_fixed_port(server: Ipv4Addr, deadline: Instant) -> Result<TcpStream, String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sockaddr(Ipv4Addr::UNSPECIFIED, FIXED_CLIENT_PORT);
    let remote = sockaddr(server, NGINX);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    loop {
        // SAFETY: socket(2) has no memory effects.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor that nothing else owns; `stream` closes it.
        let stream = unsafe { TcpStream::from_raw_fd(fd) };
        let fd = stream.as_raw_fd();
        set_option(fd, libc::SO_REUSEADDR, &(1 as libc::c_int))?;
        // A send timeout also bounds connect(2) on Linux.
        set_option(
            fd,
            libc::SO_SNDTIMEO,
            &libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            },
        )?;
        set_option(
            fd,
            libc::SO_LINGER,
            &libc::linger {
                l_onoff: 1,
                l_linger: 2,
            },
        )?;
        // SAFETY: an address of the size given, on a descriptor we own.
        if unsafe { libc::bind(fd, std::ptr::from_ref(&local).cast(), len) } != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) } == 0 {
            return Ok(stream);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // What holds the port on the client side (`ss` runs in this thread's namespace).
        let ss = std::process::Command::new("ss")
            .args(["-tanoH", &format!("sport = :{FIXED_CLIENT_PORT}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        return Err(format!(
            "connect: {err}; client sockets on the port: [{ss}]"
        ));
    }
}

/// One `Connection: close` request from `FIXED_CLIENT_PORT`, read to the server's close (so the
/// proxy side holds the TIME_WAIT); returns the status.
fn request_from_fixed_port(server: Ipv4Addr, n: usize) -> Result<u16, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = connect_from_fixed_port(server, deadline)?;
    let req = head(
        &format!("GET /public/reuse-{n} HTTP/1.1"),
        &["Host: server", "Connection: close"],
    );
    stream.write_all(&req).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no close within 2 s; got {}", escape(&buf, 60)));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}; got {}", escape(&buf, 60))),
        }
    }
    let closing = Instant::now();
    drop(stream);
    if closing.elapsed() >= TIMEOUT {
        return Err("the client's FIN was not acknowledged within 2 s".into());
    }
    parse_response(&buf, true, false)
        .map(|(r, _)| r.status)
        .ok_or_else(|| format!("no response: {}", escape(&buf, 60)))
}

#[test]
fn one_client_port_reused_for_300_connections() {
    if !privileged("one_client_port_reused_for_300_connections") {
        return;
    }
    let h = hostile_scene("hr");
    let server = h.server;
    let failures = in_netns(&h.client_netns, move || {
        let mut failures = Vec::new();
        for n in 0..300 {
            let started = Instant::now();
            let result = request_from_fixed_port(server, n);
            let took = started.elapsed();
            if result != Ok(200) || took > TIMEOUT {
                eprintln!("[reuse] connection {n}: {result:?} after {took:?}");
                failures.push(format!(
                    "connection {n} from port {FIXED_CLIENT_PORT}: {result:?} after {took:?}"
                ));
                if failures.len() >= 10 {
                    failures.push("(stopped after 10 failures)".into());
                    break;
                }
            }
        }
        failures
    });
    let ward_alive = h.scene.ward_pid().is_some_and(alive);
    assert!(
        failures.is_empty() && ward_alive,
        "300 connections from one client port (ward alive: {ward_alive}):\n{}",
        failures.join("\n")
    );
}

/// The hand-written HPACK decoder against RFC 7541 §C.6.1 (Huffman, indexed and literal
/// fields, the dynamic table); needs no root.
#[test]
fn hpack_decoder_reads_the_rfc_example() {
    let hex = "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff\
               6e919d29ad171863c78f0b97c8e9ae82ae43d3";
    let block: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let mut hpack = Hpack::default();
    let fields: Vec<(String, String)> = hpack
        .decode(&block)
        .expect("decodes")
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    let want = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    assert_eq!(fields, want.map(|(n, v)| (n.to_string(), v.to_string())));
    // Indexed from the dynamic table on the next block (§C.6.2: `4883640effc1c0bf`).
    let next = hpack
        .decode(&[0x48, 0x83, 0x64, 0x0e, 0xff, 0xc1, 0xc0, 0xbf])
        .expect("decodes");
    assert_eq!(next[0], (b":status".to_vec(), b"307".to_vec()));
    assert_eq!(next[3].1, b"https://www.example.com");
}

/// The backend checks flag what they must and pass what they may; needs no root.
#[test]
fn backend_checks_flag_forbidden_requests() {
    let ok = b"GET /public/x HTTP/1.1\r\nHost: server\r\n\r\n\
               POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: ok\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\n0\r\n\r\n\
               CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\nGET /admin tunnel payload";
    assert_eq!(check_raw_connection(ok), Vec::<String>::new());
    for bad in [
        &b"GET /admin HTTP/1.1\r\nHost: server\r\n\r\n"[..],
        b"GET /public/../admin HTTP/1.1\r\nHost: server\r\n\r\n",
        b"GET /public/..%2Fadmin HTTP/1.1\r\nHost: server\r\n\r\n",
        b"GET http://server/public/x HTTP/1.1\r\nHost: server\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: server\r\nUpgrade: h2c\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: server\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        b"POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: \xffbad\r\nX-Token: ok\r\nContent-Length: 0\r\n\r\n",
        b"POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: ok\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // The request after a body the backend reads by its Content-Length.
        b"POST /api/submit HTTP/1.1\r\nHost: server\r\nX-Token: ok\r\nContent-Length: 0\r\n\r\nGET /admin HTTP/1.1\r\nHost: server\r\n\r\n",
        b"GET /books/1 HTTP/1.1\r\nHost: books.example:8080\r\n\r\n",
        b"CONNECT other:443 HTTP/1.1\r\nHost: other:443\r\n\r\n",
    ] {
        assert!(!check_raw_connection(bad).is_empty(), "{}", escape(bad, 200));
    }
    let line = |method: &str, uri: &str, host: &str, request: &str| {
        format!("80\t200\t{method}\t{uri}\t{host}\t{host}\t-\t-\t{request}")
    };
    assert_eq!(
        nginx_violations(&line(
            "GET",
            "/public/x",
            "server",
            "GET /public/x HTTP/1.1"
        )),
        Vec::<String>::new()
    );
    for bad in [
        line(
            "GET",
            "/admin",
            "server",
            "GET /public/%2e%2e/admin HTTP/1.1",
        ),
        line(
            "GET",
            "/books/1",
            "evil",
            "GET http://books.example/books/1 HTTP/1.1",
        ),
        line(
            "GET",
            "/books/1",
            "books.example",
            "GET http://evil/books/1 HTTP/1.1",
        ),
        "80\t200\tGET\t/public/x\tserver\tserver\th2c\t-\tGET /public/x HTTP/1.1".to_string(),
        "80\t200\tGET\t/public/x\tserver\tserver\t-\tAAMA\tGET /public/x HTTP/1.1".to_string(),
    ] {
        assert!(!nginx_violations(&bad).is_empty(), "{bad}");
    }
}
