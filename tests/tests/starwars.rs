//! The Star Wars demo as tests: real curl in network namespaces, the real datapath, `ward run`.
//! Each test builds its own scene (node namespace, deathstar ×2, tiefighter, xwing) and removes
//! it afterwards, also on failure.

use std::time::{Duration, Instant};
use ward_tests::{privileged, scene_policy as policy, starwars};

const LAND: &[&str] = &["-XPOST", "http://deathstar/v1/request-landing"];
const EXHAUST: &[&str] = &["-XPUT", "http://deathstar/v1/exhaust-port"];

/// Policy changes apply asynchronously: waits up to 2 s for `f`.
fn eventually(what: &str, f: impl Fn() -> bool) {
    ward_tests::eventually(what, Duration::from_secs(2), f);
}

#[test]
fn starwars_story() {
    if !privileged("starwars_story") {
        return;
    }
    let s = starwars("sw");

    // 1. No policy: both ships land; the exhaust port is exposed.
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    assert_eq!(s.curl("xwing", LAND), (0, "Ship landed\n".into()));
    let (code, body) = s.curl("tiefighter", EXHAUST);
    assert_eq!(code, 0);
    assert!(body.starts_with("Panic: deathstar exploded"), "{body}");

    // 2. L3/L4 policy: only org=empire reaches deathstar:80; xwing's SYN is dropped.
    s.write_policy("rule1.yaml", &policy("starwars-l3l4"));
    eventually("xwing being dropped", || s.curl("xwing", LAND).0 == 28);
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    assert_eq!(
        s.curl(
            "xwing",
            &["-XPOST", "http://deathstar-2/v1/request-landing"]
        )
        .0,
        28,
        "every replica is enforced"
    );

    // 3. L7 policy: tiefighter lands, exhaust-port gets Access denied, xwing still dropped.
    s.write_policy("rule1.yaml", &policy("starwars-l7"));
    eventually("the L7 rule", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    let out = s.exec(
        "tiefighter",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{content_type}",
            "--max-time",
            "3",
            "-XPUT",
            "http://deathstar/v1/exhaust-port",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403 text/plain");
    assert_eq!(s.curl("xwing", LAND).0, 28);

    // HTTP/2 prior knowledge is denied the same way.
    let (code, body) = s.curl(
        "tiefighter",
        &[
            "--http2-prior-knowledge",
            "-XPUT",
            "http://deathstar/v1/exhaust-port",
        ],
    );
    assert_eq!((code, body.as_str()), (0, "Access denied\r\n"));

    // Keep-alive: the connection that got the 403 is reused for the next request.
    let out = s.exec(
        "tiefighter",
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            " connects=%{num_connects}\n",
            "-XPUT",
            "http://deathstar/v1/exhaust-port",
            "--next",
            "-s",
            "--max-time",
            "3",
            "-w",
            " connects=%{num_connects}\n",
            "-XPOST",
            "http://deathstar/v1/request-landing",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text, "Access denied\r\n connects=1\nShip landed\n connects=0\n",
        "second request must reuse the connection"
    );

    // 4. Observability: the L3/L4 drop and the L7 deny, with method and path.
    let out = s.ward_cli(&["observe", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let l3 = flows.iter().find(|f| {
        f["verdict"] == "DROPPED"
            && f["type"] == "l3l4"
            && f["source"]["name"] == "xwing"
            && f["destination"]["port"] == 80
    });
    assert!(l3.is_some(), "no L3/L4 drop of xwing in {flows:#?}");
    assert_eq!(l3.unwrap()["drop_reason"], "Policy denied");
    let l7 = flows.iter().find(|f| {
        f["verdict"] == "DROPPED" && f["type"] == "l7" && f["l7"]["http"]["method"] == "PUT"
    });
    let l7 = l7.unwrap_or_else(|| panic!("no L7 deny in {flows:#?}"));
    assert!(
        l7["l7"]["http"]["url"]
            .as_str()
            .unwrap_or("")
            .ends_with("/v1/exhaust-port"),
        "{l7}"
    );
    assert_eq!(l7["source"]["name"], "tiefighter");
    assert_eq!(l7["policy"], "default/rule1");
    let text = s.ward_cli(&["observe", "--verdict", "DROPPED"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)"),
        "{text}"
    );
    assert!(
        text.contains("Policy denied DROPPED (TCP Flags: SYN)"),
        "{text}"
    );

    // 5. Metrics: the kernel's drops by reason (read from its counters at scrape time) and
    // the proxy's verdicts.
    let metrics = s.metrics();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
    };
    assert!(value("ward_datapath_drops_total{reason=\"Policy denied\"}") >= 1.0);
    assert!(value("ward_proxy_requests_total{protocol=\"http\",verdict=\"DROPPED\"}") >= 1.0);
    assert!(
        metrics.contains("# TYPE ward_datapath_drops counter"),
        "{metrics}"
    );
    // File mode is ready from the start.
    assert_eq!(value("ward_ready"), 1.0);

    let id = s.id.clone();
    drop(s);
    assert_eq!(ward_tests::leftovers(&id), Vec::<String>::new());
}

/// A keep-alive client in the tiefighter pod: one request, wait for a flag file, a second
/// request on the same connection. Prints each status and whether the socket was reused.
const TWO_REQUESTS_PY: &str = r#"import http.client, os, sys, time
flag = sys.argv[1]
c = http.client.HTTPConnection("deathstar", 80, timeout=5)
c.request("PUT", "/v1/exhaust-port"); r = c.getresponse(); r.read()
print("first", r.status, flush=True)
sock = c.sock
while not os.path.exists(flag):
    time.sleep(0.05)
c.request("PUT", "/v1/exhaust-port"); r = c.getresponse(); r.read()
print("second", r.status, "same-connection" if c.sock is sock else "new-connection", flush=True)
"#;

#[test]
fn policy_edits_apply_live_and_invalid_edits_are_rejected() {
    if !privileged("policy_edits_apply_live_and_invalid_edits_are_rejected") {
        return;
    }
    let s = starwars("ed");
    let l7 = policy("starwars-l7");
    s.write_policy("rule1.yaml", &l7);
    eventually("the L7 rule", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });

    // An established keep-alive connection sees the new rules on its next request, unreset.
    let script = s.dir.join("two.py");
    std::fs::write(&script, TWO_REQUESTS_PY).expect("script");
    let flag = s.dir.join("go");
    let mut client = s.cmd_in("tiefighter", "python3");
    client
        .arg(&script)
        .arg(&flag)
        .stdout(std::process::Stdio::piped());
    let child = client.spawn().expect("python client");
    std::thread::sleep(Duration::from_millis(500));
    let widened = l7.replace(
        "        - method: \"POST\"\n          path: \"/v1/request-landing\"",
        "        - method: \"POST\"\n          path: \"/v1/request-landing\"\n        - method: \"PUT\"\n          path: \"/v1/exhaust-port\"",
    );
    assert_ne!(
        widened, l7,
        "the policy text changed shape; update the test"
    );
    let edited_at = Instant::now();
    s.write_policy("rule1.yaml", &widened);
    eventually("the widened rule", || {
        s.curl("tiefighter", EXHAUST).0 == 0 && s.curl("tiefighter", EXHAUST).1.starts_with("Panic")
    });
    assert!(edited_at.elapsed() < Duration::from_secs(2));
    std::fs::write(&flag, "").expect("flag");
    let out = child.wait_with_output().expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "first 403\nsecond 503 same-connection\n");

    // An invalid edit is rejected with a precise error and the previous policy keeps enforcing.
    s.write_policy(
        "rule1.yaml",
        &l7.replace("/v1/request-landing", "/v1/request-landing(["),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.curl("tiefighter", EXHAUST).1.starts_with("Panic"),
        "the last good policy (widened) must still apply"
    );
    assert_eq!(s.curl("xwing", LAND).0, 28, "L3/L4 enforcement continues");
    let log = s.ward_log();
    assert!(
        log.contains("rule1.yaml") && log.contains("invalid path regex"),
        "no precise error in the log:\n{log}"
    );
}

#[test]
fn enforcement_survives_a_killed_ward_and_resumes_after_restart() {
    if !privileged("enforcement_survives_a_killed_ward_and_resumes_after_restart") {
        return;
    }
    let mut s = starwars("rs");
    s.write_policy("rule1.yaml", &policy("starwars-l7"));
    eventually("the L7 rule", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });
    s.kill_ward();
    // L3/L4 holds while the daemon is down; redirected flows fail closed (no proxy socket).
    assert_eq!(s.curl("xwing", LAND).0, 28);
    assert_eq!(
        s.curl("tiefighter", LAND).0,
        28,
        "fail closed while the proxy is down"
    );
    s.start_ward();
    eventually("tiefighter landing again", || {
        s.curl("tiefighter", LAND) == (0, "Ship landed\n".into())
    });
    assert_eq!(s.curl("tiefighter", EXHAUST).1, "Access denied\r\n");
    assert_eq!(s.curl("xwing", LAND).0, 28);
}
