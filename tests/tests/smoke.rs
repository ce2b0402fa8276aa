//! Privileged end-to-end smoke test of the `ward` binary in a [`Scene`]: a node namespace
//! holding the host side of two veths, a server pod and a client pod, the real datapath under a
//! private pin root, and `ward run`. Skips visibly when not root (panics when
//! `WARD_REQUIRE_PRIVILEGED=1`); the scene removes everything it created, also on panic.

use std::path::Path;
use std::time::Duration;

use ward_tests::{eventually, privileged, Scene};

const SERVER_PY: &str = r#"import http.server, sys, time
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
        # A request held in flight (a drain must let it finish).
        time.sleep(int(self.headers.get("X-Delay-Ms") or 0) / 1000)
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

/// `curl -s --max-time 3` from the client pod.
fn curl(node: &Scene, args: &[&str]) -> (i32, String) {
    node.curl("tiefighter", args)
}

#[test]
fn smoke_l7_deny_h2c_flows_admin_restart_uninstall() {
    if !privileged("smoke_l7_deny_h2c_flows_admin_restart_uninstall") {
        return;
    }
    let mut node = Scene::empire_pair("smoke");
    let script = node.dir.join("server.py");
    std::fs::write(&script, SERVER_PY).unwrap();
    let script = script.to_string_lossy().into_owned();
    node.spawn_in("deathstar", &["python3", &script], "server.log");
    node.write_config();
    let check = node.ward_cli(&["check-config"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    node.start_ward();
    let deathstar = node.pod("deathstar").ip;
    let land_url = format!("http://{deathstar}/v1/request-landing");
    let land = ["-XPOST", land_url.as_str()];
    eventually("the server", Duration::from_secs(10), || {
        curl(&node, &land).0 == 0
    });
    assert_eq!(curl(&node, &land), (0, "Ship landed\n".into()));

    // L7 policy arrives through the watched directory.
    node.write_policy("rule1.yaml", POLICY);
    let exhaust_url = format!("http://{deathstar}/v1/exhaust-port");
    let exhaust = ["-XPUT", exhaust_url.as_str()];
    eventually("the L7 deny", Duration::from_secs(2), || {
        curl(&node, &exhaust).1 == "Access denied\r\n"
    });
    assert_eq!(curl(&node, &land), (0, "Ship landed\n".into()));
    let mut h2: Vec<&str> = vec!["--http2-prior-knowledge"];
    h2.extend_from_slice(&exhaust);
    assert_eq!(curl(&node, &h2), (0, "Access denied\r\n".into()));
    // headerMatches ADD reaches the upstream.
    assert_eq!(
        curl(&node, &[&format!("http://{deathstar}/headers")]),
        (0, "x-extra=added\n".into())
    );
    let grpc = curl(
        &node,
        &[
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-XPOST",
            "-H",
            "content-type: application/grpc",
            &format!("http://{deathstar}/pkg.Svc/Method"),
        ],
    );
    assert!(grpc.1.contains("grpc-status: 7"), "{grpc:?}");

    // Flows and admin commands.
    eventually("the L7 flow", Duration::from_secs(2), || {
        let out = node.ward_cli(&[
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
    let text = String::from_utf8_lossy(&node.ward_cli(&["observe"]).stdout).into_owned();
    assert!(
        text.contains("default/tiefighter:")
            && text.contains(&format!(
                "http-request DROPPED (HTTP/1.1 PUT http://{deathstar}/v1/exhaust-port)"
            )),
        "{text}"
    );
    for args in [
        &["status"][..],
        &["endpoint", "list"],
        &["identity", "list"],
        &["policy", "get"],
        &["bpf", "policy", "get", "deathstar"],
    ] {
        let out = node.ward_cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bpf =
        String::from_utf8_lossy(&node.ward_cli(&["bpf", "policy", "get", "deathstar"]).stdout)
            .into_owned();
    assert!(bpf.contains("80/TCP") && bpf.contains("15001"), "{bpf}");

    // SIGTERM: exit 0, datapath stays; a restart re-attaches and enforces again. An admin
    // client that stays connected does not hold the shutdown up.
    // A request in flight at SIGTERM is answered (with `Connection: close`) before Ward
    // exits: the workers drain.
    let idle_admin = std::os::unix::net::UnixStream::connect(node.admin_socket()).unwrap();
    let mut slow = node.cmd_in("tiefighter", "curl");
    slow.args([
        "-s",
        "-i",
        "--max-time",
        "8",
        "-H",
        "X-Delay-Ms: 1500",
        "-XPOST",
        &land_url,
    ]);
    let in_flight = std::thread::spawn(move || slow.output());
    std::thread::sleep(Duration::from_millis(500));
    let st = node.terminate_ward();
    drop(idle_admin);
    assert!(
        st.is_some_and(|s| s.success()),
        "exit status {st:?}:\n{}",
        node.ward_log()
    );
    let out = in_flight.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success() && text.contains("ship landed") && text.contains("connection: close"),
        "{out:?}\n{}",
        node.ward_log()
    );
    assert!(node.ward_log().contains("drained"), "{}", node.ward_log());
    assert!(node.pin_root.join("links").read_dir().unwrap().count() >= 4);
    assert_eq!(
        curl(&node, &land).0,
        28,
        "fails closed while the proxy is down"
    );
    node.start_ward();
    eventually("landing after restart", Duration::from_secs(5), || {
        curl(&node, &land) == (0, "Ship landed\n".into())
    });
    assert!(
        node.ward_log().contains("Kept"),
        "restart must keep the links"
    );

    node.stop_ward();
    let out = node.ward_cli(&["uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&node.pin_root).exists());
    assert_eq!(
        curl(&node, &exhaust).1,
        "Panic: deathstar exploded\n",
        "no enforcement after uninstall"
    );
}
