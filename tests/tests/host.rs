//! Host policies (Cilium's host firewall) through the real datapath and `ward run`: a
//! `CiliumClusterwideNetworkPolicy` with `nodeSelector` (`config/policies/host-firewall`)
//! enforced on the node's own traffic — from and to local pods at the pods' hooks, from and to
//! the outside at the uplink — with real curl and ping; replies pass, removing the policy
//! restores traffic, and the host endpoint's audit mode drops nothing.

use std::process::Command;
use std::time::{Duration, Instant};
use ward_tests::{privileged, scene_policy, Scene, NODE_UPLINK_IP, OUTSIDE_IP};

/// A small HTTP server answering 200 to everything, on `port`.
fn http_server(port: u16) -> Vec<String> {
    vec![
        "python3".into(),
        "-m".into(),
        "http.server".into(),
        "--bind".into(),
        "0.0.0.0".into(),
        port.to_string(),
    ]
}

/// Whether an HTTP request from `who` (a pod, `"outside"`, or `"node"`) to `ip:port` gets any
/// answer within 2 s (a drop times out).
fn reaches(s: &Scene, who: &str, ip: &str, port: u16) -> bool {
    let url = format!("http://{ip}:{port}/");
    let args = ["curl", "-s", "-o", "/dev/null", "--max-time", "2", &url];
    let out = if who == "node" {
        Command::new("ip")
            .args(["netns", "exec", &s.node_ns])
            .args(args)
            .output()
            .expect("curl from the node")
    } else {
        s.exec(who, &args)
    };
    out.status.success()
}

fn pings(s: &Scene, who: &str, ip: &str) -> bool {
    s.exec(who, &["ping", "-c", "1", "-W", "1", ip])
        .status
        .success()
}

/// Policy changes apply asynchronously: waits up to 10 s for `f`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    ward_tests::eventually(what, Duration::from_secs(10), f);
}

/// A client in the outside network that connects to `ip:port` at once, waits until the file
/// `go` appears, then sends a request on that same connection and writes the status line to
/// `status`: a connection that was open before a host policy came.
const LONG_LIVED_CLIENT: &str = r#"
import os, socket, sys, time
ip, port, go, status = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = socket.create_connection((ip, port), timeout=5)
while not os.path.exists(go):
    time.sleep(0.05)
c.settimeout(5)
try:
    c.sendall(b"GET / HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
    line = c.recv(4096).split(b"\r\n")[0].decode()
except OSError as e:
    line = "error: %s" % e
open(status, "w").write(line)
"#;

/// Starts [`LONG_LIVED_CLIENT`] in the outside network; returns (go file, status file).
fn long_lived(s: &mut Scene, port: u16) -> (std::path::PathBuf, std::path::PathBuf) {
    let go = s.dir.join(format!("go-{port}"));
    let status = s.dir.join(format!("status-{port}"));
    let args = [
        "python3".to_string(),
        "-c".into(),
        LONG_LIVED_CLIENT.into(),
        NODE_UPLINK_IP.to_string(),
        port.to_string(),
        go.to_string_lossy().into_owned(),
        status.to_string_lossy().into_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.spawn_in("outside", &args, &format!("long-lived-{port}.log"));
    (go, status)
}

/// Lets a [`long_lived`] client send its request, and returns the status line it got.
fn long_lived_status(go: &std::path::Path, status: &std::path::Path) -> String {
    std::fs::write(go, "").expect("go file");
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        if let Ok(line) = std::fs::read_to_string(status) {
            return line;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    "no answer".into()
}

/// The node's address on `pod`'s veth (the pod's default gateway).
fn node_side(s: &Scene, pod: &str) -> String {
    let [a, b, c, _] = s.pod(pod).ip.octets();
    format!("{a}.{b}.{c}.1")
}

/// The scene: client, intruder and server pods, an outside network on the node's uplink,
/// HTTP servers on the node (8080, 9090), in the server and intruder pods (80) and outside
/// (8081, 8082), and `ward run` on a node labelled `node-access=restricted`.
fn host_scene(tag: &str, audit: bool) -> Scene {
    let mut s = Scene::new(tag);
    s.add_pod("client", "default", &[("app", "client")]);
    s.add_pod("intruder", "default", &[("app", "intruder")]);
    s.add_pod("server", "default", &[("app", "server")]);
    s.add_outside();
    s.node_config = format!(
        "node: {{name: {}, labels: {{node-access: restricted}}, audit: {audit}}}",
        s.id
    );
    for port in [8080, 9090] {
        let args = http_server(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.spawn_node(&args, &format!("node-{port}.log"));
    }
    for port in [8081, 8082] {
        let args = http_server(port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.spawn_in("outside", &args, &format!("outside-{port}.log"));
    }
    s.start_deathstar("server", 80);
    s.start_deathstar("intruder", 80);
    s.start_ward();
    let host = node_side(&s, "client");
    eventually("the node's server", || reaches(&s, "client", &host, 8080));
    eventually("the outside server", || {
        reaches(&s, "node", &OUTSIDE_IP.to_string(), 8081)
    });
    s
}

#[test]
fn host_policy_is_enforced_on_the_node_and_lifted_when_removed() {
    if !privileged("host_policy_is_enforced_on_the_node_and_lifted_when_removed") {
        return;
    }
    let mut s = host_scene("hf", false);
    // Connections the node had before any host policy: one the policy allows (8080), one it
    // does not (9090).
    let (go_allowed, status_allowed) = long_lived(&mut s, 8080);
    let (go_denied, status_denied) = long_lived(&mut s, 9090);
    std::thread::sleep(Duration::from_millis(500));
    // The node's address on each pod's veth, and on the uplink.
    let (client_side, intruder_side) = (node_side(&s, "client"), node_side(&s, "intruder"));
    let uplink = NODE_UPLINK_IP.to_string();
    let outside = OUTSIDE_IP.to_string();
    let server = s.pod("server").ip.to_string();
    let intruder = s.pod("intruder").ip.to_string();

    // No host policy: everything passes.
    assert!(reaches(&s, "intruder", &intruder_side, 8080));
    assert!(pings(&s, "intruder", &intruder_side));
    assert!(reaches(&s, "node", &intruder, 80));
    let status = String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("Host firewall:    ingress Disabled, egress Disabled"),
        "{status}"
    );

    s.write_policy("host-fw.yaml", &scene_policy("host-firewall"));
    eventually("the host policy", || {
        !reaches(&s, "intruder", &intruder_side, 8080)
    });
    // Host ingress from local pods (at the pods' hooks).
    assert!(
        reaches(&s, "client", &client_side, 8080),
        "client → node:8080"
    );
    assert!(
        !reaches(&s, "client", &client_side, 9090),
        "client → node:9090"
    );
    assert!(pings(&s, "client", &client_side), "client pings the node");
    assert!(
        !pings(&s, "intruder", &intruder_side),
        "intruder pings the node"
    );
    // Host ingress from outside (at the uplink), replies included.
    assert!(reaches(&s, "outside", &uplink, 8080), "outside → node:8080");
    assert!(
        !reaches(&s, "outside", &uplink, 9090),
        "outside → node:9090"
    );
    // Host egress to local pods and to the outside.
    assert!(reaches(&s, "node", &server, 80), "node → server:80");
    assert!(!reaches(&s, "node", &intruder, 80), "node → intruder:80");
    assert!(reaches(&s, "node", &outside, 8081), "node → outside:8081");
    assert!(!reaches(&s, "node", &outside, 8082), "node → outside:8082");
    // Connections open before the policy: the allowed one goes on, the other is cut.
    let allowed = long_lived_status(&go_allowed, &status_allowed);
    assert!(
        allowed.starts_with("HTTP/1.0 200") || allowed.starts_with("HTTP/1.1 200"),
        "{allowed}"
    );
    let denied = long_lived_status(&go_denied, &status_denied);
    assert!(
        !denied.contains(" 200"),
        "a connection the policy denies went on: {denied}"
    );
    // Pod-to-pod traffic through the node is not the host's: unaffected.
    assert!(reaches(&s, "intruder", &server, 80), "intruder → server:80");

    // The host endpoint, as `cilium endpoint list` shows reserved:host.
    let eps = String::from_utf8_lossy(&s.ward_cli(&["endpoint", "list"]).stdout).into_owned();
    let host_row = eps
        .lines()
        .skip_while(|l| !l.starts_with("65535"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(host_row.contains("Enabled"), "{eps}");
    assert!(eps.contains("reserved:host"), "{eps}");
    assert!(eps.contains("k8s:node-access=restricted"), "{eps}");
    let status = String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("Host firewall:    ingress Enabled, egress Enabled"),
        "{status}"
    );
    // Drops are flows with the host as a peer.
    let drop = s.wait_flow(Duration::from_secs(3), |f| {
        f["verdict"] == "DROPPED" && f["destination"]["name"] == "host"
    });
    assert!(drop.is_some(), "no DROPPED flow to the host");

    // Removing the policy restores traffic.
    s.remove_policy("host-fw.yaml");
    eventually("the host policy's removal", || {
        reaches(&s, "intruder", &intruder_side, 8080)
    });
    assert!(pings(&s, "intruder", &intruder_side));
    assert!(reaches(&s, "node", &intruder, 80));
    assert!(reaches(&s, "outside", &uplink, 9090));
    assert!(reaches(&s, "node", &outside, 8082));
}

#[test]
fn host_audit_mode_logs_and_drops_nothing() {
    if !privileged("host_audit_mode_logs_and_drops_nothing") {
        return;
    }
    let mut s = host_scene("ha", true);
    let (go, status) = long_lived(&mut s, 9090);
    std::thread::sleep(Duration::from_millis(500));
    let intruder_side = node_side(&s, "intruder");
    let intruder = s.pod("intruder").ip.to_string();
    s.write_policy("host-fw.yaml", &scene_policy("host-firewall"));
    // The policy is in force (the endpoint enforces, in audit) once status says so.
    eventually("the host policy", || {
        String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout)
            .contains("ingress Enabled, egress Enabled (audit")
    });
    assert!(reaches(&s, "intruder", &intruder_side, 9090));
    assert!(pings(&s, "intruder", &intruder_side));
    assert!(reaches(&s, "node", &intruder, 80));
    assert!(reaches(&s, "outside", &NODE_UPLINK_IP.to_string(), 9090));
    // A connection open before the policy, which the policy would deny, goes on in audit.
    let line = long_lived_status(&go, &status);
    assert!(line.contains(" 200"), "{line}");
    let audit = s.wait_flow(Duration::from_secs(3), |f| {
        f["verdict"] == "AUDIT" && f["destination"]["name"] == "host"
    });
    assert!(audit.is_some(), "no AUDIT flow to the host");
    assert!(
        !s.flows().iter().any(|f| f["verdict"] == "DROPPED"),
        "audit mode dropped something"
    );
}

#[test]
fn a_host_policy_without_an_uplink_is_refused_with_its_location() {
    if !privileged("a_host_policy_without_an_uplink_is_refused_with_its_location") {
        return;
    }
    let mut s = Scene::new("hn");
    s.add_pod("client", "default", &[("app", "client")]);
    s.node_config = format!(
        "node: {{name: {}, labels: {{node-access: restricted}}}}",
        s.id
    );
    s.write_config();
    s.write_policy("host-fw.yaml", &scene_policy("host-firewall"));
    let out = s.ward_cli(&["check-config"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("host-fw.yaml:12:")
            && text.contains("spec.nodeSelector")
            && text.contains("uplink"),
        "{text}"
    );
}
