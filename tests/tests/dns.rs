//! The transparent DNS proxy with real peers: dnsmasq (and unbound) as the servers a pod
//! asks, `dig` as the client, on the real datapath under `ward run`.

use std::time::{Duration, Instant};
use ward_tests::{privileged, Scene, DNS_LISTENER};

const CLIENT_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-names, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns:
        - matchName: allowed.test
        - matchPattern: "*.ok.test"
        - matchName: big.test
        - matchName: alias.test
        - matchName: many.test
"#;

/// dnsmasq, authoritative for `.test`, on the pod's address, logging every query.
fn dnsmasq_conf(s: &Scene, ip: std::net::Ipv4Addr) -> String {
    let dir = s.dir.display();
    let mut many = String::new();
    for i in 1..=40 {
        many.push_str(&format!("host-record=many.test,10.99.1.{i}\n"));
    }
    let big = |c: char| std::iter::repeat_n(c, 255).collect::<String>();
    format!(
        "port=53\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
         user=root\ncache-size=0\nlocal-ttl=300\nlog-queries\nlog-facility={dir}/dnsmasq-queries.log\n\
         pid-file={dir}/dnsmasq.pid\nlocal=/test/\n\
         host-record=allowed.test,10.99.0.1\nhost-record=www.ok.test,10.99.0.2\n\
         host-record=denied.test,10.99.0.3\ncname=alias.test,allowed.test\n{many}\
         txt-record=big.test,\"{}\",\"{}\",\"{}\"\n",
        big('A'),
        big('B'),
        big('C')
    )
}

fn dig(s: &Scene, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=3", "+tries=1"];
    full.extend_from_slice(args);
    let out = s.exec("client", &full);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn scene(tag: &str, node_config: &str) -> Scene {
    let mut s = Scene::new(tag);
    s.add_pod("client", "default", &[("app", "client")]);
    let server = s.add_pod("dns", "default", &[("app", "dns")]);
    s.dns_listener = Some(DNS_LISTENER);
    if !node_config.is_empty() {
        s.node_config = format!("node: {{name: {}}}\n{node_config}", s.id);
    }
    let conf = s.dir.join("dnsmasq.conf");
    std::fs::write(&conf, dnsmasq_conf(&s, server.ip)).unwrap();
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
    s.write_policy("dns.yaml", CLIENT_POLICY);
    s.start_ward();
    s
}

#[test]
fn dns_queries_are_judged_by_name_over_udp_and_tcp() {
    if !privileged("dns_queries_are_judged_by_name_over_udp_and_tcp") {
        return;
    }
    let s = scene("dn", "");
    let server = s.pod("dns").ip.to_string();
    let at = format!("@{server}");
    let client_ip = s.pod("client").ip.to_string();
    ward_tests::eventually("an allowed name resolves", Duration::from_secs(5), || {
        dig(&s, &[&at, "+short", "allowed.test"]).trim() == "10.99.0.1"
    });
    // A denied name: REFUSED, with the question echoed and the same id.
    let out = dig(&s, &[&at, "denied.test"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    assert!(out.contains(";denied.test.\t\t\tIN\tA"), "{out}");
    // Names are compared lower-cased and fully qualified; patterns match one label.
    assert_eq!(
        dig(&s, &[&at, "+short", "ALLOWED.Test."]).trim(),
        "10.99.0.1"
    );
    assert_eq!(dig(&s, &[&at, "+short", "www.ok.test"]).trim(), "10.99.0.2");
    assert!(dig(&s, &[&at, "a.b.ok.test"]).contains("status: REFUSED"));
    // Over TCP, both ways.
    assert_eq!(
        dig(&s, &[&at, "+tcp", "+short", "allowed.test"]).trim(),
        "10.99.0.1"
    );
    assert!(dig(&s, &[&at, "+tcp", "denied.test"]).contains("status: REFUSED"));
    // TC=1 over UDP: dig retries over TCP and gets the whole answer.
    let out = dig(&s, &[&at, "+bufsize=512", "big.test", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains(&"C".repeat(255)), "{out}");
    // A CNAME chain and more than 24 A records arrive whole.
    let out = dig(&s, &[&at, "+short", "alias.test"]);
    assert!(
        out.contains("allowed.test.") && out.contains("10.99.0.1"),
        "{out}"
    );
    let out = dig(&s, &[&at, "+short", "many.test"]);
    assert_eq!(out.lines().count(), 40, "{out}");
    // EDNS0 with DO and a client subnet goes through untouched: the server answers it.
    let out = dig(
        &s,
        &[&at, "+dnssec", "+subnet=10.200.0.0/24", "allowed.test"],
    );
    assert!(
        out.contains("status: NOERROR") && out.contains("10.99.0.1"),
        "{out}"
    );
    // The server saw the queries from the pod's own address, not the node's.
    let log = std::fs::read_to_string(s.dir.join("dnsmasq-queries.log")).unwrap();
    assert!(
        log.contains(&format!("query[A] allowed.test from {client_ip}")),
        "{log}"
    );
    assert!(
        !log.contains("denied.test"),
        "a denied query reached the server:\n{log}"
    );
    // Flows: an answered query is a dns-response with its addresses; a denied one a dropped
    // dns-request.
    let f = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["dns"]["query"] == "allowed.test." && f["l7"]["dns"]["type"] == "response"
        })
        .expect("a dns-response flow");
    assert_eq!(f["verdict"], "FORWARDED");
    assert_eq!(f["l7"]["dns"]["ips"][0], "10.99.0.1");
    assert_eq!(f["l7"]["dns"]["rcode"], 0);
    assert_eq!(f["l7"]["dns"]["ttl"], 300);
    let f = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["dns"]["query"] == "denied.test."
        })
        .expect("a dns-request flow");
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(f["l7"]["dns"]["rcode"], 5);
    assert_eq!(f["policy"], "default/dns-names");
    assert!(f["summary"]
        .as_str()
        .unwrap()
        .contains("dns-request DROPPED"));
    // `ward observe --protocol dns` prints Hubble's lines.
    let out = s.ward_cli(&["observe", "--protocol", "dns"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "dns-response FORWARDED (DNS Answer \"10.99.0.1\" TTL: 300 (Proxy allowed.test. A))"
        ),
        "{text}"
    );
    assert!(
        text.contains("dns-request DROPPED (DNS Query denied.test. A"),
        "{text}"
    );
    // `ward status` no longer lists DNS as unproxied.
    let status = String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout).into_owned();
    assert!(!status.to_lowercase().contains("unproxied"), "{status}");
}

#[test]
fn malformed_datagrams_and_a_dead_upstream_leave_the_proxy_serving() {
    if !privileged("malformed_datagrams_and_a_dead_upstream_leave_the_proxy_serving") {
        return;
    }
    let s = scene("dm", "dns: {upstream_timeout_ms: 1000}");
    let server = s.pod("dns").ip.to_string();
    let at = format!("@{server}");
    ward_tests::eventually("an allowed name resolves", Duration::from_secs(5), || {
        dig(&s, &[&at, "+short", "allowed.test"]).trim() == "10.99.0.1"
    });
    // Documented answers: no question or two → FORMERR; opcode other than QUERY → REFUSED;
    // shorter than a header, or a response → nothing.
    let script = format!(
        r#"
import os, random, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
def ask(msg):
    s.sendto(msg, ("{server}", 53))
    try:
        while True:
            r = s.recv(4096)
            # A late answer to an earlier probe is not this one's.
            if len(msg) < 2 or r[:2] == msg[:2]:
                return r
    except socket.timeout:
        return None
def rcode(r):
    return None if r is None else r[3] & 15
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07allowed\x04test\x00\x00\x01\x00\x01"
print("ok", rcode(ask(q)))
print("noquestion", rcode(ask(b"\x12\x35\x01\x00" + b"\x00" * 8)))
two = bytearray(q); two[5] = 2
print("two", rcode(ask(bytes(two))))
notify = bytearray(q); notify[2] = 0x20
print("opcode", rcode(ask(bytes(notify))))
print("cut", rcode(ask(q[:20])))
print("short", rcode(ask(b"\x01\x02\x03")))
resp = bytearray(q); resp[2] |= 0x80
print("response", rcode(ask(bytes(resp))))
# One label that reads "allowed.test" when printed carelessly: a different name, denied.
dot = b"\x12\x36\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0callowed.test\x00\x00\x01\x00\x01"
print("dotlabel", rcode(ask(dot)))
# The allowed name behind a compression pointer to itself (a loop): malformed, not forwarded.
loop = b"\x12\x37\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
print("pointerloop", rcode(ask(loop)))
# A query that arrives just as the session's idle time (2 s after its last datagram) runs
# out is still answered (clients that retry every 2 s do this).
import time
for i, delay in enumerate([1.998, 2.0, 2.001, 2.002, 2.004]):
    s.sendto(b"\x01\x02\x03", ("{server}", 53))
    time.sleep(delay)
    edge = bytearray(q); edge[1] = 0x40 + i
    print("edge", i, rcode(ask(bytes(edge))))
# 10,000 random and mangled datagrams, from several source ports.
rnd = random.Random(7)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
for i in range(10000):
    k = rnd.randrange(4)
    if k == 0:
        m = os.urandom(rnd.randrange(0, 600))
    elif k == 1:
        m = bytearray(q); m[rnd.randrange(len(m))] = rnd.randrange(256); m = bytes(m)
    elif k == 2:
        m = q[: rnd.randrange(len(q))]
    else:
        m = struct.pack(">HHHHHH", i, 0x0100, 0xffff, 0xffff, 0xffff, 0xffff) + os.urandom(20)
    socks[i % 8].sendto(m, ("{server}", 53))
print("sent")
"#
    );
    let out = s.exec("client", &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ok 0",
        "noquestion 1",
        "two 1",
        "opcode 5",
        "cut 1",
        "short None",
        "response None",
        "dotlabel 5",
        "pointerloop 1",
        "edge 0 0",
        "edge 1 0",
        "edge 2 0",
        "edge 3 0",
        "edge 4 0",
        "sent",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "{want:?} in:\n{text}\nward's log:\n{}",
            s.ward_log()
        );
    }
    // The label with a dot was refused by Ward itself (its flow), not passed to the server.
    let f = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["dns"]["query"] == "allowed\\.test."
        })
        .expect("a flow for the dotted label");
    assert_eq!(f["verdict"], "DROPPED");
    // Still serving, over both transports.
    assert_eq!(
        dig(&s, &[&at, "+short", "allowed.test"]).trim(),
        "10.99.0.1"
    );
    assert_eq!(
        dig(&s, &[&at, "+tcp", "+short", "allowed.test"]).trim(),
        "10.99.0.1"
    );
    // A framing error on TCP closes that connection only.
    let bad = s.exec(
        "client",
        &[
            "python3",
            "-c",
            &format!(
                "import socket; c = socket.create_connection(('{server}', 53), 2); \
                 c.sendall(b'\\x00\\x03abc'); c.settimeout(2); print(repr(c.recv(10)))"
            ),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&bad.stdout).trim(), "b''");
    assert_eq!(
        dig(&s, &[&at, "+short", "allowed.test"]).trim(),
        "10.99.0.1"
    );
    // The upstream dies: SERVFAIL after upstream_timeout_ms (1 s here), well before the
    // client's own 3 s, over UDP (the server's port-unreachable is about the proxy's leg and
    // never reaches the pod) and over TCP; the proxy lives on.
    let pid = std::fs::read_to_string(s.dir.join("dnsmasq.pid")).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = dig(&s, &[&at, "allowed.test"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let out = dig(&s, &[&at, "+tcp", "allowed.test"]);
    assert!(
        out.contains("status: SERVFAIL") || out.contains("connection refused"),
        "{out}"
    );
    assert!(s.ward_cli(&["status"]).status.success(), "{}", s.ward_log());
    // Denied names are still answered by the proxy itself.
    assert!(dig(&s, &[&at, "denied.test"]).contains("status: REFUSED"));
}

#[test]
fn the_nxdomain_option_answers_denied_names() {
    if !privileged("the_nxdomain_option_answers_denied_names") {
        return;
    }
    let s = scene("dx", "dns: {deny_response: nxdomain}");
    let server = s.pod("dns").ip.to_string();
    let at = format!("@{server}");
    ward_tests::eventually("an allowed name resolves", Duration::from_secs(5), || {
        dig(&s, &[&at, "+short", "allowed.test"]).trim() == "10.99.0.1"
    });
    let out = dig(&s, &[&at, "denied.test"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
}

const FQDN_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchName: api.test}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"#;

#[test]
fn to_fqdns_learns_addresses_from_answers_before_releasing_them() {
    if !privileged("to_fqdns_learns_addresses_from_answers_before_releasing_them") {
        return;
    }
    let mut s = Scene::new("df");
    s.add_pod("client", "default", &[("app", "client")]);
    let server = s.add_pod("dns", "default", &[("app", "dns")]);
    s.add_outside();
    s.dns_listener = Some(DNS_LISTENER);
    s.node_config = format!(
        "node: {{name: {}}}\ndns: {{min_ttl: 3, max_release_delay_ms: 2000}}",
        s.id
    );
    // Two outside addresses: one the policy's name resolves to, one another name does.
    let out = s.exec(
        "outside",
        &["ip", "addr", "add", "10.250.0.3/24", "dev", "eth0"],
    );
    assert!(out.status.success(), "{out:?}");
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
             user=root\ncache-size=0\nlocal-ttl=1\npid-file={dir}/dnsmasq.pid\nlocal=/test/\n\
             host-record=api.test,10.250.0.2\nhost-record=other.test,10.250.0.3\n",
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
    s.write_policy("fqdn.yaml", FQDN_POLICY);
    s.start_ward();
    let at = format!("@{}", server.ip);
    let api = std::net::Ipv4Addr::new(10, 250, 0, 2);
    let other = std::net::Ipv4Addr::new(10, 250, 0, 3);
    ward_tests::eventually("the outside server", Duration::from_secs(10), || {
        s.exec(
            "outside",
            &[
                "python3",
                "-c",
                "import socket; socket.create_connection(('10.250.0.2', 8080), 1)",
            ],
        )
        .status
        .success()
    });
    // Before the name is resolved, its address is just "world": no connection.
    assert!(!s.tcp_reachable("client", api, 8080));
    // Resolving it: the answer comes back only once the maps allow the address.
    assert_eq!(dig(&s, &[&at, "+short", "api.test"]).trim(), "10.250.0.2");
    assert!(s.tcp_reachable("client", api, 8080), "{}", s.ward_log());
    // Another name's address is not selected by the policy.
    assert_eq!(dig(&s, &[&at, "+short", "other.test"]).trim(), "10.250.0.3");
    assert!(!s.tcp_reachable("client", other, 8080));
    // The cache, as `cilium fqdn cache list` shows it.
    let list = String::from_utf8_lossy(&s.ward_cli(&["fqdn", "cache", "list"]).stdout).into_owned();
    assert!(
        list.contains("default/client")
            && list.contains("api.test.")
            && list.contains("10.250.0.2"),
        "{list}"
    );
    assert!(!list.contains("other.test"), "{list}");
    // A connection held open past the TTL (1 s, raised to min_ttl 3 s) keeps the address
    // as a zombie; once it closes (and conntrack lets it go), the address expires.
    s.spawn_in(
        "client",
        &[
            "python3",
            "-c",
            "import socket, time; c = socket.create_connection(('10.250.0.2', 8080), 2); time.sleep(6); c.close()",
        ],
        "holder.log",
    );
    std::thread::sleep(Duration::from_secs(5));
    let list = String::from_utf8_lossy(&s.ward_cli(&["fqdn", "cache", "list"]).stdout).into_owned();
    assert!(list.contains("zombie"), "{list}");
    ward_tests::eventually(
        "the address expires after its connection",
        Duration::from_secs(25),
        || {
            let list = String::from_utf8_lossy(&s.ward_cli(&["fqdn", "cache", "list"]).stdout)
                .into_owned();
            !list.contains("10.250.0.2")
        },
    );
    assert!(!s.tcp_reachable("client", api, 8080));
}

/// unbound, a second server implementation, authoritative for `.test`, logging queries.
fn unbound_conf(s: &Scene, ip: std::net::Ipv4Addr) -> String {
    let dir = s.dir.display();
    let big = |c: char| std::iter::repeat_n(c, 255).collect::<String>();
    format!(
        "server:\n  interface: {ip}@53\n  port: 53\n  access-control: 0.0.0.0/0 allow\n  \
         username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"{dir}/unbound.pid\"\n  \
         logfile: \"{dir}/unbound-queries.log\"\n  use-syslog: no\n  log-queries: yes\n  \
         num-threads: 1\n  do-not-query-localhost: yes\n  local-zone: \".\" refuse\n  \
         local-zone: \"test.\" static\n  local-data: \"allowed.test. 300 IN A 10.99.0.1\"\n  \
         local-data: \"denied.test. 300 IN A 10.99.0.3\"\n  \
         local-data: 'big.test. 300 IN TXT \"{}\" \"{}\" \"{}\"'\n\
         remote-control:\n  control-enable: no\n",
        big('A'),
        big('B'),
        big('C')
    )
}

#[test]
fn a_second_server_implementation_unbound() {
    if !privileged("a_second_server_implementation_unbound") {
        return;
    }
    let mut s = Scene::new("du");
    s.add_pod("client", "default", &[("app", "client")]);
    let server = s.add_pod("dns", "default", &[("app", "dns")]);
    s.dns_listener = Some(DNS_LISTENER);
    let conf = s.dir.join("unbound.conf");
    std::fs::write(&conf, unbound_conf(&s, server.ip)).unwrap();
    let conf = conf.display().to_string();
    s.spawn_in("dns", &["unbound", "-d", "-c", &conf], "unbound.log");
    s.write_policy("dns.yaml", CLIENT_POLICY);
    s.start_ward();
    let at = format!("@{}", server.ip);
    let client_ip = s.pod("client").ip.to_string();
    ward_tests::eventually("an allowed name resolves", Duration::from_secs(10), || {
        dig(&s, &[&at, "+short", "allowed.test"]).trim() == "10.99.0.1"
    });
    assert!(dig(&s, &[&at, "denied.test"]).contains("status: REFUSED"));
    assert_eq!(
        dig(&s, &[&at, "+tcp", "+short", "allowed.test"]).trim(),
        "10.99.0.1"
    );
    let out = dig(&s, &[&at, "+bufsize=512", "big.test", "TXT"]);
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains(&"C".repeat(255)), "{out}");
    // unbound saw the pod's own address, and never the denied name.
    let log = std::fs::read_to_string(s.dir.join("unbound-queries.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("{client_ip} allowed.test. A IN")),
        "{log}"
    );
    assert!(!log.contains("denied.test"), "{log}");
}

/// A case file's verdicts, `ward-check --cases` and the running proxy side by side: every DNS
/// case is asked with dig through `ward run`, every connection case is tried for real.
#[test]
fn the_fqdn_case_file_gets_the_same_verdicts_from_ward_check_and_the_node() {
    if !privileged("the_fqdn_case_file_gets_the_same_verdicts_from_ward_check_and_the_node") {
        return;
    }
    let root = ward_tests::workspace_root();
    let cases_path = root.join("config/cases/seed001-fqdn.jsonl");
    let policies = root.join("config/policies/seed001-fqdn");
    // 1. ward-check on the file: its verdict per case.
    let ward_check = ward_tests::target_dir().join("debug/ward-check");
    let out = std::process::Command::new(&ward_check)
        .arg("--policy")
        .arg(&policies)
        .arg("--cases")
        .arg(&cases_path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", ward_check.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let offline: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["verdict"].as_str().map(str::to_string))
        .collect();
    let cases: Vec<serde_json::Value> = std::fs::read_to_string(&cases_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(offline.len(), cases.len(), "{text}");
    // 2. The node: mediabot, kube-dns (dnsmasq on 53, a server on 80), and the outside with
    // the case file's addresses.
    let mut s = Scene::new("dc");
    s.add_pod(
        "mediabot",
        "default",
        &[("org", "empire"), ("class", "mediabot")],
    );
    let dns = s.add_pod("kube-dns", "kube-system", &[("k8s-app", "kube-dns")]);
    s.add_outside();
    s.dns_listener = Some(DNS_LISTENER);
    let mut hosts = String::new();
    for c in &cases {
        if let (Some(name), Some(ip)) = (c["to"]["fqdn"].as_str(), c["to"]["ip"].as_str()) {
            hosts.push_str(&format!("host-record={name},{ip}\n"));
        }
    }
    let mut outside: Vec<String> = cases
        .iter()
        .filter_map(|c| c["to"]["ip"].as_str().map(str::to_string))
        .collect();
    outside.sort();
    outside.dedup();
    for ip in &outside {
        let out = s.exec(
            "outside",
            &["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        );
        assert!(out.status.success(), "{out:?}");
        s.node(&[
            "ip",
            "route",
            "add",
            &format!("{ip}/32"),
            "via",
            "10.250.0.2",
        ]);
    }
    for port in ["80", "443"] {
        s.spawn_in(
            "outside",
            &["python3", "-m", "http.server", port, "--bind", "0.0.0.0"],
            &format!("http-outside-{port}.log"),
        );
    }
    s.spawn_in(
        "kube-dns",
        &["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"],
        "http-dns.log",
    );
    let conf = s.dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "port=53\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
             user=root\ncache-size=0\nlocal-ttl=60\nlocal=/com/\n{hosts}",
            dns.ip
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    s.spawn_in(
        "kube-dns",
        &[
            "dnsmasq",
            "--keep-in-foreground",
            &format!("--conf-file={conf}"),
        ],
        "dnsmasq.log",
    );
    for f in std::fs::read_dir(&policies).unwrap() {
        let f = f.unwrap().path();
        s.write_policy(
            f.file_name().unwrap().to_str().unwrap(),
            &std::fs::read_to_string(&f).unwrap(),
        );
    }
    s.start_ward();
    let dns_at = format!("@{}", dns.ip);
    ward_tests::eventually("the node's DNS answers", Duration::from_secs(10), || {
        let out = s.exec(
            "mediabot",
            &[
                "dig",
                "+time=2",
                "+tries=1",
                "+short",
                &dns_at,
                "api.github.com",
            ],
        );
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    for (c, offline) in cases.iter().zip(&offline) {
        let name = c["name"].as_str().unwrap();
        let port = c["port"].as_u64().unwrap() as u16;
        let tcp = c["protocol"] == "TCP";
        let to_ip: std::net::Ipv4Addr = match c["to"]["ip"].as_str() {
            Some(ip) => ip.parse().unwrap(),
            None => dns.ip,
        };
        let live = if let Some(q) = c["dns"]["name"].as_str() {
            let at = format!("@{to_ip}");
            let mut args = vec!["dig", "+time=2", "+tries=1", &at, q];
            if tcp {
                args.push("+tcp");
            }
            let out = s.exec("mediabot", &args);
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("status: NOERROR") {
                "allow"
            } else {
                "deny"
            }
        } else {
            if let Some(fqdn) = c["to"]["fqdn"].as_str() {
                // A learned address: ask for the name first, as the pod would.
                let _ = s.exec("mediabot", &["dig", "+time=2", "+tries=1", &dns_at, fqdn]);
            }
            if s.tcp_reachable("mediabot", to_ip, port) {
                "allow"
            } else {
                "deny"
            }
        };
        assert_eq!(
            (live, offline.as_str()),
            (c["expect"].as_str().unwrap(), c["expect"].as_str().unwrap()),
            "{name}: the node said {live}, ward-check said {offline}"
        );
    }
}
