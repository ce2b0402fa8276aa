//! Privileged end-to-end smoke test of the `ward` binary in its own network namespaces: a node
//! namespace holding the host side of two veths, a server pod and a client pod, the real
//! datapath under a private pin root, and `ward run`. Skips visibly when not root (panics when
//! `WARD_REQUIRE_PRIVILEGED=1`); removes everything it created, also on panic.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("WARD_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root but WARD_REQUIRE_PRIVILEGED=1");
    }
    let line = format!("SKIPPED (needs root): {test}\n");
    // SAFETY: writing a valid buffer to fd 2, past libtest's capture.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    must(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    must(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// Everything the test created; removed on drop.
struct Node {
    id: String,
    dir: PathBuf,
    pin_root: PathBuf,
    ward: Option<Child>,
    server: Option<Child>,
}

impl Node {
    fn ns(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.id)
    }
    fn config(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }
    fn ward(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns("n")])
            .arg(env!("CARGO_BIN_EXE_ward"))
            .args(args)
            .arg("--config")
            .arg(self.config()))
    }
    fn curl(&self, args: &[&str]) -> (i32, String) {
        let out = run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("c"),
                "curl",
                "-s",
                "--max-time",
                "3",
            ])
            .args(args));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ward.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.ward.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.ward(&["uninstall"]);
        if self.pin_root.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
        for s in ["s", "c", "n"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(s)])
                .output();
        }
        if std::env::var_os("WARD_KEEP_SCENE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const SERVER_PY: &str = r#"import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, body):
        n = int(self.headers.get("Content-Length") or 0)
        if n: self.rfile.read(n)
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_POST(self):
        self.reply(200, "Ship landed\n" if self.path == "/v1/request-landing" else "no\n")
    def do_PUT(self):
        self.reply(503, "Panic: deathstar exploded\n")
    def do_GET(self):
        self.reply(200, "x-extra=%s\n" % self.headers.get("x-extra", "-"))
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"#;

const POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
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
        - method: "GET"
          path: "/headers"
          headerMatches:
          - name: x-extra
            value: "added"
            mismatch: ADD
"#;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {timeout:?}");
}

fn setup() -> Node {
    let id = format!("wp{:x}", std::process::id() % 0xffff);
    let dir = std::env::temp_dir().join(format!("ward-smoke-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let node = Node {
        pin_root: PathBuf::from(format!("/sys/fs/bpf/ward-smoke-{id}")),
        id,
        dir,
        ward: None,
        server: None,
    };
    for s in ["n", "s", "c"] {
        ip(&["netns", "add", &node.ns(s)]);
    }
    in_ns(&node.ns("n"), &["ip", "link", "set", "lo", "up"]);
    for (i, pod) in [(1, "s"), (2, "c")] {
        let host = format!("{}h{i}", node.id);
        let peer = format!("{}p{i}", node.id);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &host, "netns", &node.ns("n")]);
        ip(&["link", "set", &peer, "netns", &node.ns(pod)]);
        let p = node.ns(pod);
        in_ns(&p, &["ip", "link", "set", "lo", "up"]);
        in_ns(
            &p,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.201.{i}.2/24"),
                "dev",
                &peer,
            ],
        );
        in_ns(&p, &["ip", "link", "set", &peer, "up"]);
        in_ns(
            &p,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.201.{i}.1"),
            ],
        );
        let n = node.ns("n");
        in_ns(
            &n,
            &[
                "ip",
                "addr",
                "add",
                &format!("10.201.{i}.1/24"),
                "dev",
                &host,
            ],
        );
        in_ns(&n, &["ip", "link", "set", &host, "up"]);
        in_ns(
            &n,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{host}.forwarding=1"),
            ],
        );
    }
    node
}

fn write_config(node: &Node) {
    let id = &node.id;
    let text = format!(
        "node: {{name: smoke}}\npin_root: {}\npolicy_dirs: [policies]\nlisteners: {{http: 15001}}\n\
         admin_socket: admin.sock\nmetrics: 127.0.0.1:9962\nflow_log: flows.jsonl\nendpoints:\n\
         - name: deathstar\n  labels: {{org: empire, class: deathstar}}\n  ips: [10.201.1.2]\n  interface: {id}h1\n\
         - name: tiefighter\n  labels: {{org: empire, class: tiefighter}}\n  ips: [10.201.2.2]\n  interface: {id}h2\n",
        node.pin_root.display()
    );
    std::fs::write(node.config(), text).unwrap();
}

fn start_ward(node: &mut Node) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join("ward.log"))
        .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &node.ns("n")])
        .arg(env!("CARGO_BIN_EXE_ward"))
        .args(["run", "--config"])
        .arg(node.config())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    node.ward = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(Ok(Some(st))) = node.ward.as_mut().map(|c| c.try_wait()) {
            panic!("ward run exited ({st}):\n{}", node.log());
        }
        if node.ward(&["status"]).status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "ward not ready:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn smoke_l7_deny_h2c_flows_admin_restart_uninstall() {
    if !privileged("smoke_l7_deny_h2c_flows_admin_restart_uninstall") {
        return;
    }
    let mut node = setup();
    let script = node.dir.join("server.py");
    std::fs::write(&script, SERVER_PY).unwrap();
    node.server = Some(
        Command::new("ip")
            .args(["netns", "exec", &node.ns("s"), "python3"])
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    write_config(&node);
    let check = node.ward(&["check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    start_ward(&mut node);
    let land = ["-XPOST", "http://10.201.1.2/v1/request-landing"];
    wait_for("the server", Duration::from_secs(10), || {
        node.curl(&land).0 == 0
    });
    assert_eq!(node.curl(&land), (0, "Ship landed\n".into()));

    // L7 policy arrives through the watched directory.
    let tmp = node.dir.join(".p.tmp");
    std::fs::File::create(&tmp)
        .unwrap()
        .write_all(POLICY.as_bytes())
        .unwrap();
    std::fs::rename(&tmp, node.dir.join("policies/rule1.yaml")).unwrap();
    let exhaust = ["-XPUT", "http://10.201.1.2/v1/exhaust-port"];
    wait_for("the L7 deny", Duration::from_secs(2), || {
        node.curl(&exhaust).1 == "Access denied\r\n"
    });
    assert_eq!(node.curl(&land), (0, "Ship landed\n".into()));
    let mut h2 = vec!["--http2-prior-knowledge"];
    h2.extend_from_slice(&exhaust);
    assert_eq!(node.curl(&h2), (0, "Access denied\r\n".into()));
    // headerMatches ADD reaches the upstream.
    assert_eq!(
        node.curl(&["http://10.201.1.2/headers"]),
        (0, "x-extra=added\n".into())
    );
    let grpc = node.curl(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-XPOST",
        "-H",
        "content-type: application/grpc",
        "http://10.201.1.2/pkg.Svc/Method",
    ]);
    assert!(grpc.1.contains("grpc-status: 7"), "{grpc:?}");

    // Flows and admin commands.
    wait_for("the L7 flow", Duration::from_secs(2), || {
        let out = node.ward(&[
            "observe",
            "-o",
            "json",
            "--verdict",
            "DROPPED",
            "--protocol",
            "http",
        ]);
        String::from_utf8_lossy(&out.stdout).contains("/v1/exhaust-port")
    });
    let text = String::from_utf8_lossy(&node.ward(&["observe"]).stdout).into_owned();
    assert!(
        text.contains("default/tiefighter:")
            && text
                .contains("http-request DROPPED (HTTP/1.1 PUT http://10.201.1.2/v1/exhaust-port)"),
        "{text}"
    );
    for args in [
        &["status"][..],
        &["endpoint", "list"],
        &["identity", "list"],
        &["policy", "get"],
        &["bpf", "policy", "get", "deathstar"],
    ] {
        let out = node.ward(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bpf = String::from_utf8_lossy(&node.ward(&["bpf", "policy", "get", "deathstar"]).stdout)
        .into_owned();
    assert!(bpf.contains("80/TCP") && bpf.contains("15001"), "{bpf}");

    // SIGTERM: exit 0, datapath stays; a restart re-attaches and enforces again.
    let mut c = node.ward.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = c.wait().unwrap();
    assert!(st.success(), "exit status {st}:\n{}", node.log());
    assert!(node.pin_root.join("links").read_dir().unwrap().count() >= 4);
    assert_eq!(
        node.curl(&land).0,
        28,
        "fails closed while the proxy is down"
    );
    start_ward(&mut node);
    wait_for("landing after restart", Duration::from_secs(5), || {
        node.curl(&land) == (0, "Ship landed\n".into())
    });
    assert!(node.log().contains("Kept"), "restart must keep the links");

    let mut c = node.ward.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
    let out = node.ward(&["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&node.pin_root).exists());
    assert_eq!(
        node.curl(&exhaust).1,
        "Panic: deathstar exploded\n",
        "no enforcement after uninstall"
    );
}
