//! One test per behaviour stated in docs/policy-semantics.md §1, §2, §4, §5.1 and §6, driven
//! through the same path `ward-check` uses: YAML → load → engine → answer.

use l7_rules::check::{answer, parse_peer, Answer, L7Question, Question};
use l7_rules::diag::Severity;
use l7_rules::engine::{Engine, L3L4Verdict, Stage};
use l7_rules::model::{Direction, Protocol};
use l7_rules::source::{load_sources, LoadError};

fn engine(yaml: &str) -> Engine {
    match load_sources(&[("test.yaml".to_string(), yaml.to_string())]) {
        Ok(set) => Engine::new(set),
        Err(e) => panic!(
            "policy should load: {}",
            e.diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn load_err(yaml: &str) -> LoadError {
    match load_sources(&[("bad.yaml".to_string(), yaml.to_string())]) {
        Ok(_) => panic!("policy should be rejected:\n{yaml}"),
        Err(e) => e,
    }
}

fn warnings(yaml: &str) -> Vec<String> {
    load_sources(&[("test.yaml".to_string(), yaml.to_string())])
        .expect("loads")
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.to_string())
        .collect()
}

struct Ask<'a> {
    from: &'a str,
    to: &'a str,
    port: u16,
    protocol: Protocol,
    direction: Option<Direction>,
    l7: Option<L7Question>,
    audit: bool,
}

fn ask(from: &str, to: &str, port: u16) -> Ask<'static> {
    // Peers live for the test; leaking two tiny strings per test keeps the table readable.
    Ask {
        from: Box::leak(from.to_string().into_boxed_str()),
        to: Box::leak(to.to_string().into_boxed_str()),
        port,
        protocol: Protocol::Tcp,
        direction: None,
        l7: None,
        audit: false,
    }
}

impl Ask<'_> {
    fn http(mut self, method: &str, path: &str) -> Self {
        self.l7 = Some(L7Question::Http {
            method: method.into(),
            path: path.into(),
            host: "svc".into(),
            headers: vec![],
        });
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        if let Some(L7Question::Http { headers, .. }) = &mut self.l7 {
            headers.push((k.into(), v.into()));
        }
        self
    }
    fn host(mut self, h: &str) -> Self {
        if let Some(L7Question::Http { host, .. }) = &mut self.l7 {
            *host = h.into();
        }
        self
    }
    fn proto(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }
    fn dir(mut self, d: Direction) -> Self {
        self.direction = Some(d);
        self
    }
    fn kafka(mut self, key: i16, topics: &[&str]) -> Self {
        self.l7 = Some(L7Question::Kafka {
            api_key: key,
            api_version: 5,
            client_id: Some("client".into()),
            topics: topics.iter().map(|t| t.to_string()).collect(),
        });
        self
    }
    fn dns(mut self, name: &str) -> Self {
        self.l7 = Some(L7Question::Dns { name: name.into() });
        self.protocol = Protocol::Udp;
        self
    }
    fn audit(mut self) -> Self {
        self.audit = true;
        self
    }
    fn run(&self, e: &Engine) -> Answer {
        let q = Question {
            from: parse_peer(self.from).unwrap(),
            to: parse_peer(self.to).unwrap(),
            direction: self.direction,
            protocol: self.protocol,
            port: self.port,
            l7: self.l7.clone(),
            audit: self.audit,
        };
        answer(e, &q).unwrap()
    }
}

fn allowed(e: &Engine, a: Ask<'_>) -> bool {
    a.run(e).allowed
}

const STARWARS_L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
"#;

const TIE: &str = "org=empire,class=tiefighter";
const XWING: &str = "org=alliance,class=xwing";
const DEATHSTAR: &str = "org=empire,class=deathstar";

#[test]
fn starwars_story() {
    let e = engine(STARWARS_L7);
    let a = ask(TIE, DEATHSTAR, 80)
        .http("POST", "/v1/request-landing")
        .run(&e);
    assert!(a.allowed);
    assert_eq!(a.stage, Stage::L7);
    let a = ask(TIE, DEATHSTAR, 80)
        .http("PUT", "/v1/exhaust-port")
        .run(&e);
    assert!(!a.allowed);
    assert_eq!(a.stage, Stage::L7);
    assert_eq!(a.policy.as_deref(), Some("default/rule1"));
    assert!(
        a.reason
            .contains("PUT /v1/exhaust-port matched no http rule"),
        "{}",
        a.reason
    );
    let a = ask(XWING, DEATHSTAR, 80)
        .http("POST", "/v1/request-landing")
        .run(&e);
    assert!(!a.allowed);
    assert_eq!(a.stage, Stage::L3L4);
    assert_eq!(a.l3l4, L3L4Verdict::Deny);
}

// ---------------------------------------------------------------- §1 HTTP

fn http_policy(rules: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: web}}
spec:
  endpointSelector: {{matchLabels: {{app: svc}}}}
  ingress:
  - toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http:
{rules}
"#
    )
}

#[test]
fn s1_1_http_field_semantics() {
    let e = engine(&http_policy(
        r#"        - method: GET
          path: /public
        - method: GET
          path: "/status.*"
          host: "api\\.example\\.com"
        - method: PUT
          path: /path2
          headers: ["X-My-Header: true"]
        - path: /token
          headers: ["X-Token"]
"#,
    ));
    let to = "app=svc";
    let cases: Vec<(Ask<'_>, bool, &str)> = vec![
        (
            ask("a=b", to, 80).http("GET", "/public"),
            true,
            "exact path",
        ),
        (
            ask("a=b", to, 80).http("GET", "/public?x=1"),
            false,
            "path includes the query",
        ),
        (
            ask("a=b", to, 80).http("GET", "/public/x"),
            false,
            "full match, not prefix",
        ),
        (
            ask("a=b", to, 80).http("get", "/public"),
            false,
            "method is case-sensitive",
        ),
        (
            ask("a=b", to, 80)
                .http("GET", "/status/x")
                .host("api.example.com"),
            true,
            "host regex",
        ),
        (
            ask("a=b", to, 80)
                .http("GET", "/status/x")
                .host("api.example.com:8080"),
            false,
            "host includes the port",
        ),
        (
            ask("a=b", to, 80)
                .http("PUT", "/path2")
                .header("x-my-header", "true"),
            true,
            "header names are case-insensitive",
        ),
        (
            ask("a=b", to, 80)
                .http("PUT", "/path2")
                .header("X-My-Header", "false"),
            false,
            "header value is exact",
        ),
        (
            ask("a=b", to, 80).http("PUT", "/path2"),
            false,
            "missing header",
        ),
        (
            ask("a=b", to, 80)
                .http("GET", "/path2")
                .header("X-My-Header", "true"),
            false,
            "fields are AND",
        ),
        (
            ask("a=b", to, 80)
                .http("POST", "/token")
                .header("X-Token", "anything"),
            true,
            "header without value is a presence match",
        ),
        (
            ask("a=b", to, 80).http("POST", "/token"),
            false,
            "presence match needs the header",
        ),
        (
            ask("a=b", to, 80).http("GET", "/a/../public"),
            true,
            "paths are normalised before matching",
        ),
    ];
    for (a, want, what) in cases {
        assert_eq!(allowed(&e, a), want, "{what}");
    }
}

#[test]
fn s1_1_header_without_space_is_a_trap() {
    let yaml = http_policy(
        r#"        - method: GET
          headers: ["X-My-Header:true"]
"#,
    );
    let w = warnings(&yaml);
    assert!(w.iter().any(|w| w.contains("no space after ':'")), "{w:?}");
    let e = engine(&yaml);
    assert!(!allowed(
        &e,
        ask("a=b", "app=svc", 80)
            .http("GET", "/")
            .header("X-My-Header", "true")
    ));
}

#[test]
fn s1_1_empty_rule_matches_every_request() {
    let e = engine(&http_policy("        - {}\n"));
    let a = ask("a=b", "app=svc", 80)
        .http("DELETE", "/anything")
        .run(&e);
    assert!(a.allowed);
    assert_eq!(
        a.l3l4,
        L3L4Verdict::Redirect(l7_rules::model::L7Parser::Http)
    );
}

#[test]
fn s1_2_header_match_mismatch_fail_denies() {
    let e = engine(&http_policy(
        r#"        - path: /a
          headerMatches:
          - name: x-required
            value: "yes"
"#,
    ));
    assert!(allowed(
        &e,
        ask("a=b", "app=svc", 80)
            .http("GET", "/a")
            .header("X-Required", "yes")
    ));
    assert!(!allowed(
        &e,
        ask("a=b", "app=svc", 80)
            .http("GET", "/a")
            .header("X-Required", "no")
    ));
}

#[test]
fn s1_4_empty_vs_omitted_l7_rules() {
    let none = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: []}
"#;
    let a = ask("a=b", "app=svc", 80)
        .http("PUT", "/x")
        .run(&engine(none));
    assert!(a.allowed);
    assert_eq!(
        a.l3l4,
        L3L4Verdict::Allow,
        "`http: []` is no L7 rule: no redirect"
    );
    assert_eq!(a.l7, None);
    let wildcard = none.replace("{http: []}", "{http: [{}]}");
    let a = ask("a=b", "app=svc", 80)
        .http("PUT", "/x")
        .run(&engine(&wildcard));
    assert!(a.allowed);
    assert!(
        matches!(a.l3l4, L3L4Verdict::Redirect(_)),
        "`http: [{{}}]` redirects"
    );
}

#[test]
fn s1_4_l7_validation() {
    let base = |ports: &str, rules: &str| {
        format!(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p}}
spec:
  endpointSelector: {{}}
  ingress:
  - toPorts:
    - ports: {ports}
      rules: {rules}
"#
        )
    };
    let cases = [
        (
            base("[{port: '80', protocol: UDP}]", "{http: [{}]}"),
            "only apply to TCP",
        ),
        (
            base("[{port: '0', protocol: TCP}]", "{http: [{}]}"),
            "port 0",
        ),
        (
            base("[{port: '80', protocol: TCP}]", "{http: [{}], kafka: [{}]}"),
            "multiple L7 protocol",
        ),
        (
            base(
                "[{port: '53', protocol: UDP}]",
                "{dns: [{matchPattern: '*'}]}",
            ),
            "only valid on egress",
        ),
        (
            base(
                &format!(
                    "[{}]",
                    (1..=41)
                        .map(|p| format!("{{port: '{p}'}}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "{}",
            ),
            "at most 40",
        ),
    ];
    for (yaml, needle) in cases {
        let e = load_err(&yaml);
        assert!(
            e.errors().any(|d| d.message.contains(needle)),
            "{needle}: {:?}",
            e.diagnostics
        );
    }
}

// ---------------------------------------------------------------- §2 combination

#[test]
fn s2_1_unselected_endpoint_is_unrestricted_and_selection_enables_default_deny() {
    let e = engine(STARWARS_L7);
    // xwing has no policy: its egress is unrestricted; tiefighter → xwing passes both sides.
    assert!(allowed(&e, ask(TIE, XWING, 9999)));
    // deathstar ingress is default-deny for anything not allowed.
    assert!(!allowed(&e, ask(TIE, DEATHSTAR, 8080)));
}

#[test]
fn s2_1_enable_default_deny_false_keeps_other_traffic_and_wildcards_l7() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {role: admin}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /admin}]}
"#;
    let e = engine(yaml);
    assert!(
        allowed(&e, ask("role=other", "app=svc", 8080)),
        "default-allow: other ports pass"
    );
    // Since 1.18 L7 rules in a default-allow direction get a wildcard: other requests pass.
    assert!(allowed(
        &e,
        ask("role=admin", "app=svc", 80).http("POST", "/x")
    ));
}

#[test]
fn s2_1_any_enabling_rule_wins_over_default_allow() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-ish}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {role: a}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: strict}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: b}}]
"#;
    let e = engine(yaml);
    assert!(allowed(&e, ask("role=a", "app=svc", 80)));
    assert!(allowed(&e, ask("role=b", "app=svc", 80)));
    assert!(!allowed(&e, ask("role=c", "app=svc", 80)));
}

#[test]
fn s2_1_empty_rule_denies_all_but_empty_section_does_nothing() {
    let deny_all = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress: [{}]
"#;
    assert!(!allowed(&engine(deny_all), ask("a=b", "app=svc", 80)));
    let empty = deny_all.replace("ingress: [{}]", "ingress: []");
    assert!(
        allowed(&engine(&empty), ask("a=b", "app=svc", 80)),
        "len == 0: no default deny"
    );
    assert!(warnings(&empty).iter().any(|w| w.contains("empty section")));
}

#[test]
fn s2_1_peer_selector_nuances() {
    let mk = |peers: &str| {
        format!(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p, namespace: prod}}
spec:
  endpointSelector: {{matchLabels: {{app: svc}}}}
  ingress:
  - {peers}
    toPorts: [{{ports: [{{port: "80"}}]}}]
"#
        )
    };
    // Omitted fromEndpoints with toPorts: every peer, including world.
    let e = engine(&mk("{}").replace("- {}\n    toPorts", "- toPorts"));
    assert!(allowed(
        &e,
        ask("cidr:8.8.8.8", "app=svc,namespace=prod", 80)
    ));
    // Explicit empty list selects nothing.
    let e = engine(&mk("fromEndpoints: []\n   "));
    assert!(!allowed(
        &e,
        ask("a=b,namespace=prod", "app=svc,namespace=prod", 80)
    ));
    // `[{}]` is every pod of the policy's namespace only: not other namespaces, not world.
    let e = engine(&mk("fromEndpoints: [{}]\n   "));
    assert!(allowed(
        &e,
        ask("a=b,namespace=prod", "app=svc,namespace=prod", 80)
    ));
    assert!(!allowed(
        &e,
        ask("a=b,namespace=dev", "app=svc,namespace=prod", 80)
    ));
    assert!(!allowed(
        &e,
        ask("cidr:8.8.8.8", "app=svc,namespace=prod", 80)
    ));
    // fromEntities: [all] is the true wildcard.
    let e = engine(&mk("fromEntities: [all]\n   "));
    assert!(allowed(
        &e,
        ask("cidr:8.8.8.8", "app=svc,namespace=prod", 80)
    ));
    assert!(allowed(&e, ask("host", "app=svc,namespace=prod", 80)));
}

#[test]
fn s2_2_protocol_any_expands_to_tcp_udp_sctp() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - toPorts: [{ports: [{port: "53", protocol: ANY}]}]
"#;
    let e = engine(yaml);
    for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert!(allowed(&e, ask("a=b", "app=svc", 53).proto(p)), "{p}");
    }
}

#[test]
fn s2_2_combining_peer_kinds_is_rejected() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  egress:
  - toEndpoints: [{}]
    toFQDNs: [{matchName: a.com}]
"#;
    let e = load_err(yaml);
    assert!(e.errors().any(|d| d.message.contains("is not supported")));
}

#[test]
fn s2_2_same_selector_l4_only_and_l7_redirects_but_allows_all() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: fe}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - fromEndpoints: [{matchLabels: {role: fe}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let e = engine(yaml);
    let a = ask("role=fe", "app=svc", 80).http("DELETE", "/x").run(&e);
    assert!(a.allowed);
    assert!(
        matches!(a.l3l4, L3L4Verdict::Redirect(_)),
        "still goes through the proxy"
    );
    assert!(warnings(yaml).iter().any(|w| w.contains("have no effect")));
}

#[test]
fn s2_2_broader_l4_only_allow_neutralises_l7_of_narrower_selector() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let e = engine(yaml);
    let a = ask("role=a", "app=svc", 80).http("DELETE", "/x").run(&e);
    assert!(a.allowed, "all traffic is allowed");
    assert!(
        matches!(a.l3l4, L3L4Verdict::Redirect(_)),
        "traffic to A goes via the proxy"
    );
    let b = ask("role=b", "app=svc", 80).http("DELETE", "/x").run(&e);
    assert!(b.allowed);
    assert_eq!(b.l3l4, L3L4Verdict::Allow);
}

fn deny_policy(allow: &str, deny: &str) -> String {
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p}}
spec:
  endpointSelector: {{matchLabels: {{app: svc}}}}
  egress:
{allow}
  egressDeny:
{deny}
"#
    )
}

#[test]
fn s2_3_deny_wins_regardless_of_specificity() {
    // L3 deny overrides an L3L4 allow.
    let e = engine(&deny_policy(
        "  - toEndpoints: [{matchLabels: {role: db}}]\n    toPorts: [{ports: [{port: '5432'}]}]",
        "  - toEndpoints: [{matchLabels: {role: db}}]",
    ));
    assert!(!allowed(
        &e,
        ask("app=svc", "role=db", 5432).dir(Direction::Egress)
    ));
    // An L4 deny on a port overrides an identity-specific allow.
    let e = engine(&deny_policy(
        "  - toEndpoints: [{matchLabels: {role: db}}]",
        "  - toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
    ));
    assert!(!allowed(
        &e,
        ask("app=svc", "role=db", 5432).dir(Direction::Egress)
    ));
    assert!(allowed(
        &e,
        ask("app=svc", "role=db", 5433).dir(Direction::Egress)
    ));
}

#[test]
fn s2_3_cidr_deny_covers_contained_allow_and_except_reopens() {
    let e = engine(&deny_policy(
        "  - toCIDR: [192.0.2.3/32]\n  - toCIDR: [10.0.0.0/8]",
        "  - toCIDR: [192.0.2.0/24]\n  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]",
    ));
    assert!(
        !allowed(&e, ask("app=svc", "cidr:192.0.2.3", 443)),
        "/24 deny beats /32 allow"
    );
    assert!(!allowed(&e, ask("app=svc", "cidr:10.2.3.4", 443)));
    assert!(
        allowed(&e, ask("app=svc", "cidr:10.1.2.3", 443)),
        "deny except re-opens the hole"
    );
}

#[test]
fn s2_3_port_range_deny_punches_hole_in_allow_range() {
    let e = engine(&deny_policy(
        "  - toPorts: [{ports: [{port: '8000', endPort: 8999, protocol: TCP}]}]",
        "  - toPorts: [{ports: [{port: '8080', endPort: 8089, protocol: TCP}]}]",
    ));
    let cases = [
        (7999, false),
        (8000, true),
        (8079, true),
        (8080, false),
        (8089, false),
        (8090, true),
        (8999, true),
        (9000, false),
    ];
    for (port, want) in cases {
        assert_eq!(
            allowed(&e, ask("app=svc", "cidr:1.2.3.4", port)),
            want,
            "{port}"
        );
    }
}

#[test]
fn s2_3_deny_rules_take_no_l7_and_no_fqdns() {
    let with_rules = deny_policy(
        "  - toEntities: [world]",
        "  - toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]",
    );
    let e = load_err(&with_rules);
    assert!(
        e.errors()
            .any(|d| d.message.contains("unknown field `rules`")),
        "{:?}",
        e.diagnostics
    );
    let with_fqdn = deny_policy(
        "  - toEntities: [world]",
        "  - toFQDNs: [{matchName: a.com}]",
    );
    let e = load_err(&with_fqdn);
    assert!(e
        .errors()
        .any(|d| d.message.contains("unknown field `toFQDNs`")));
}

#[test]
fn s2_4_audit_turns_denies_into_audited_allows() {
    let e = engine(STARWARS_L7);
    let a = ask(XWING, DEATHSTAR, 80).audit().run(&e);
    assert!(a.allowed && a.audit);
    assert!(a.reason.contains("would be denied"));
    let a = ask(TIE, DEATHSTAR, 80)
        .http("PUT", "/v1/exhaust-port")
        .audit()
        .run(&e);
    assert!(a.allowed && a.audit);
    assert_eq!(a.l7, Some(false), "the would-be L7 deny is still reported");
}

// ---------------------------------------------------------------- §3 gRPC

#[test]
fn s3_native_grpc_rules() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: g}
spec:
  endpointSelector: {matchLabels: {app: grpc}}
  ingress:
  - toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        grpc:
        - {service: peers.Echo, method: Unary}
        - {service: grpc.health.v1.Health}
"#;
    let e = engine(yaml);
    let g = |svc: &str, m: &str| {
        let mut a = ask("a=b", "app=grpc", 50051);
        a.l7 = Some(L7Question::Grpc {
            service: svc.into(),
            method: m.into(),
        });
        allowed(&e, a)
    };
    assert!(g("peers.Echo", "Unary"));
    assert!(!g("peers.Echo", "ServerStream"));
    assert!(g("grpc.health.v1.Health", "Check"));
    assert!(!g("peersXEcho", "Unary"), "the dot is literal");
    let bad = yaml.replace("service: peers.Echo", "service: \"peers Echo\"");
    assert!(load_err(&bad)
        .errors()
        .any(|d| d.field.ends_with("grpc[0].service")));
}

// ---------------------------------------------------------------- §4 Kafka

#[test]
fn s4_kafka_roles_keys_and_topic_coverage() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: k}
spec:
  endpointSelector: {matchLabels: {app: consumer}}
  egress:
  - toEndpoints: [{matchLabels: {app: kafka}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: consume, topic: orders}
        - {role: consume, topic: events}
        - {apiKey: produce, topic: audit}
"#;
    let e = engine(yaml);
    let k = |key: i16, topics: &[&str]| {
        allowed(
            &e,
            ask("app=consumer", "app=kafka", 9092).kafka(key, topics),
        )
    };
    assert!(k(1, &["orders"]));
    assert!(k(1, &["orders", "events"]), "covered by two rules");
    assert!(
        !k(1, &["orders", "payments"]),
        "every topic must be covered"
    );
    assert!(!k(0, &["orders"]), "produce is not in consume");
    assert!(k(0, &["audit"]));
    assert!(k(18, &[]), "apiversions is in both roles");
    assert!(k(12, &[]), "heartbeat has no topics: matches outright");
    assert!(!k(19, &["orders"]), "createtopics is in no role");
}

#[test]
fn s4_kafka_validation() {
    let mk = |rule: &str| {
        format!(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: k}}
spec:
  endpointSelector: {{}}
  egress:
  - toPorts: [{{ports: [{{port: "9092", protocol: TCP}}], rules: {{kafka: [{rule}]}}}}]
"#
        )
    };
    for (rule, needle) in [
        ("{role: consume, apiKey: fetch}", "mutually exclusive"),
        ("{role: admin}", "unknown role"),
        ("{apiKey: nosuchkey}", "unknown Kafka API key"),
        ("{topic: 'bad topic!'}", "not a valid topic"),
        ("{apiVersion: 'x'}", "not a Kafka API version"),
    ] {
        let e = load_err(&mk(rule));
        assert!(
            e.errors().any(|d| d.message.contains(needle)),
            "{rule}: {:?}",
            e.diagnostics
        );
    }
    assert!(load_sources(&[("k.yaml".into(), mk("{apiKey: FETCH, apiVersion: '11'}"))]).is_ok());
}

// ---------------------------------------------------------------- §5 DNS

const FQDN: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {class: mediabot}}
  egress:
  - toFQDNs:
    - matchName: api.github.com
    - matchPattern: "*.cilium.io"
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns:
        - matchPattern: "*.github.com"
        - matchName: cilium.io
"#;

#[test]
fn s5_dns_rules_and_fqdn_selection() {
    let e = engine(FQDN);
    let dnsserver = "k8s-app=kube-dns,namespace=kube-system";
    let q = |name: &str| allowed(&e, ask("class=mediabot", dnsserver, 53).dns(name));
    assert!(q("api.github.com"));
    assert!(
        q("API.GitHub.com."),
        "case-insensitive, trailing dot optional"
    );
    assert!(!q("github.com"), "*.github.com does not match github.com");
    assert!(q("cilium.io"));
    assert!(!q("docs.cilium.io"), "not covered by the DNS rules");
    // toFQDNs: learned addresses of matching names are allowed, others are not.
    assert!(allowed(
        &e,
        ask("class=mediabot", "fqdn:api.github.com=140.82.1.1", 443)
    ));
    assert!(allowed(
        &e,
        ask("class=mediabot", "fqdn:docs.cilium.io=1.1.1.1", 443)
    ));
    assert!(
        !allowed(&e, ask("class=mediabot", "fqdn:cilium.io=1.1.1.2", 443)),
        "*.cilium.io excludes cilium.io"
    );
    assert!(!allowed(
        &e,
        ask("class=mediabot", "fqdn:support.github.com=140.82.1.2", 443)
    ));
    assert!(
        !allowed(&e, ask("class=mediabot", "cidr:140.82.1.1", 443)),
        "an address not learned from DNS is world"
    );
    assert!(warnings(FQDN)
        .iter()
        .any(|w| w.contains("not cilium.io itself")));
}

#[test]
fn s5_2_selector_without_dns_rules_allows_all_names() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchName: a.com}]}}]
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"#;
    let e = engine(yaml);
    assert!(allowed(&e, ask("app=c", "app=dns", 53).dns("anything.org")));
}

#[test]
fn s5_dns_validation() {
    let mk = |rule: &str| {
        format!(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: d}}
spec:
  endpointSelector: {{}}
  egress:
  - toPorts: [{{ports: [{{port: "53", endPort: 60, protocol: UDP}}], rules: {{dns: [{rule}]}}}}]
"#
        )
    };
    assert!(load_err(&mk("{matchName: a.com}"))
        .errors()
        .any(|d| d.message.contains("port ranges")));
    let bad_chars = mk("{matchPattern: 'a b'}").replace(", endPort: 60", "");
    assert!(load_err(&bad_chars)
        .errors()
        .any(|d| d.message.contains("not allowed")));
}

// ---------------------------------------------------------------- §6 datapath semantics

#[test]
fn s6_2_l4_only_redirect_beats_l3l4_allow_on_same_port() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - fromEndpoints: [{matchLabels: {role: x}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;
    let e = engine(yaml);
    let a = ask("role=x", "app=svc", 80).http("PUT", "/").run(&e);
    assert!(
        matches!(a.l3l4, L3L4Verdict::Redirect(_)),
        "redirect precedence beats plain allow"
    );
}

#[test]
fn s6_3_icmp_rules() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: ping}}]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  - fromEndpoints: [{matchLabels: {role: l3}}]
  - fromEndpoints: [{matchLabels: {role: l4}}]
    toPorts: [{ports: [{port: "80"}]}]
"#;
    let e = engine(yaml);
    let icmp = |from: &str, ty: u16, p| {
        let mut a = ask(from, "app=svc", ty);
        a.protocol = p;
        allowed(&e, a)
    };
    assert!(icmp("role=ping", 8, Protocol::Icmp));
    assert!(!icmp("role=ping", 13, Protocol::Icmp));
    assert!(icmp("role=ping", 128, Protocol::Icmpv6));
    assert!(
        icmp("role=l3", 8, Protocol::Icmp),
        "an L3-only allow also allows ICMP"
    );
    assert!(
        !icmp("role=l4", 8, Protocol::Icmp),
        "port rules do not allow ICMP"
    );
    let both = yaml.replace(
        "icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]",
        "icmps: [{fields: [{type: 8}]}]\n    toPorts: [{ports: [{port: '80'}]}]",
    );
    assert!(load_err(&both)
        .errors()
        .any(|d| d.message.contains("cannot be combined")));
}

#[test]
fn s6_3_named_ports_resolve_against_the_destination() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: http-alt, protocol: TCP}]}]
"#;
    let e = engine(yaml);
    let mut to = parse_peer("app=web").unwrap();
    to.named_ports.insert("http-alt".into(), 8080);
    let q = |port| Question {
        from: parse_peer("app=client").unwrap(),
        to: to.clone(),
        direction: Some(Direction::Egress),
        protocol: Protocol::Tcp,
        port,
        l7: None,
        audit: false,
    };
    assert!(answer(&e, &q(8080)).unwrap().allowed);
    assert!(!answer(&e, &q(80)).unwrap().allowed);
}

#[test]
fn s6_4_entities() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {env: dev}}
  egress:
  - toEntities: [host]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "8080"}]}]
"#;
    let e = engine(yaml);
    assert!(allowed(&e, ask("env=dev", "host", 22)));
    assert!(!allowed(&e, ask("env=dev", "remote-node", 22)));
    assert!(
        allowed(&e, ask("env=dev", "remote-node", 8080)),
        "cluster includes remote-node"
    );
    assert!(
        allowed(&e, ask("env=dev", "app=x,namespace=other", 8080)),
        "cluster includes every pod"
    );
    assert!(
        !allowed(&e, ask("env=dev", "cidr:8.8.8.8", 8080)),
        "cluster excludes world"
    );
    let unknown = yaml.replace("[host]", "[hosts]");
    assert!(load_err(&unknown)
        .errors()
        .any(|d| d.message.contains("unknown entity")));
}

// ---------------------------------------------------------------- Kubernetes NetworkPolicy

const KNP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: network-policy, namespace: db}
spec:
  podSelector: {matchLabels: {app: postgres}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: 10.10.0.0/16, except: [10.10.9.0/24]}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: app1}}
      podSelector: {matchLabels: {app: nginx}}
    ports: [{protocol: TCP, port: 5432}]
"#;

#[test]
fn k8s_network_policy_peers() {
    let e = engine(KNP);
    let pg = "app=postgres,namespace=db";
    assert!(allowed(&e, ask("cidr:10.10.3.4", pg, 5432)));
    assert!(!allowed(&e, ask("cidr:10.10.9.4", pg, 5432)), "except");
    assert!(!allowed(&e, ask("cidr:10.60.1.1", pg, 5432)));
    assert!(allowed(&e, ask("app=nginx,namespace=app1", pg, 5432)));
    assert!(!allowed(&e, ask("app=nginx,namespace=app2", pg, 5432)));
    assert!(
        !allowed(&e, ask("app=nginx2,namespace=app1", pg, 5432)),
        "AND of namespace and pod"
    );
    assert!(!allowed(&e, ask("app=nginx,namespace=app1", pg, 5433)));
}

#[test]
fn k8s_policy_types_egress_without_rules_denies_all_egress() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#;
    let e = engine(yaml);
    assert!(!allowed(&e, ask("app=a", "cidr:1.1.1.1", 443)));
    assert!(
        allowed(&e, ask("cidr:1.1.1.1", "app=a", 443)),
        "ingress untouched"
    );
}

// ---------------------------------------------------------------- validation and reporting

#[test]
fn errors_name_file_line_document_object_and_field_and_all_come_at_once() {
    let yaml = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ok}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [world]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - path: /ok
        - path: "/bad(["
        - method: "GET("
"#;
    let e = load_err(yaml);
    let errs: Vec<_> = e.errors().collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    let d = errs[0];
    assert_eq!(d.file(), Some("bad.yaml"));
    assert_eq!(d.document(), Some(1));
    assert_eq!(d.object.as_deref(), Some("CiliumNetworkPolicy rule1"));
    assert_eq!(d.field, "spec.ingress[0].toPorts[0].rules.http[1].path");
    assert_eq!(d.line(), Some(20));
    assert!(d.message.starts_with("invalid path regex"), "{}", d.message);
    let text = d.to_string();
    assert!(text.starts_with("error: bad.yaml:20: document 1 (CiliumNetworkPolicy rule1): spec.ingress[0].toPorts[0].rules.http[1].path: invalid path regex"), "{text}");
    assert_eq!(
        errs[1].field,
        "spec.ingress[0].toPorts[0].rules.http[2].method"
    );
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let yaml = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoint: [{}]
"#;
    let e = load_err(yaml);
    let d = e.errors().next().unwrap();
    assert_eq!(d.field, "spec.ingress[0].fromEndpoint");
    assert_eq!(d.line(), Some(7));
    assert!(d.message.contains("unknown field `fromEndpoint`"));
}

#[test]
fn a_bad_file_contributes_nothing_and_yaml_syntax_errors_have_a_line() {
    let e = load_err("apiVersion: cilium.io/v2\nkind: [unclosed\n");
    let d = e.errors().next().unwrap();
    assert!(d.line().is_some());
    assert!(d.message.contains("invalid YAML"));
}

#[test]
fn unsupported_kinds_and_fields_say_so() {
    let e = load_err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(e.errors().any(|d| d.message.contains("unsupported kind")));
    let e = load_err(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromNodes: [{}]\n",
    );
    assert!(e
        .errors()
        .any(|d| d.message.contains("not supported by Ward")));
}

#[test]
fn services_resolve_to_their_backends() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: myservice, namespace: default, labels: {env: staging}}
spec: {selector: {app: backend}}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: service-rule}
spec:
  endpointSelector: {matchLabels: {id: app2}}
  egress:
  - toServices:
    - k8sService: {serviceName: myservice, namespace: default}
"#;
    let e = engine(yaml);
    assert!(allowed(&e, ask("id=app2", "app=backend", 80)));
    assert!(!allowed(&e, ask("id=app2", "app=other", 80)));
}

#[test]
fn a_service_without_selector_is_its_endpoint_slices_addresses() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: external-db, namespace: default}
spec: {ports: [{port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-db-1
  namespace: default
  labels: {kubernetes.io/service-name: external-db}
addressType: IPv4
endpoints:
- addresses: [192.0.2.10]
- addresses: [192.0.2.12]
  conditions: {ready: false}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: service-rule}
spec:
  endpointSelector: {matchLabels: {id: app2}}
  egress:
  - toServices:
    - k8sService: {serviceName: external-db, namespace: default}
"#;
    let e = engine(yaml);
    // The address needs a CIDR identity, as a toCIDR's would.
    assert!(e.policy_cidrs().contains(&"192.0.2.10/32".parse().unwrap()));
    assert!(allowed(&e, ask("id=app2", "cidr:192.0.2.10", 5432)));
    assert!(!allowed(&e, ask("id=app2", "cidr:192.0.2.11", 5432)));
    assert!(
        !allowed(&e, ask("id=app2", "cidr:192.0.2.12", 5432)),
        "a not-ready endpoint is not behind the Service"
    );
    // A slice must name its Service.
    let bad = load_err(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: default}\nendpoints: []\n",
    );
    assert!(bad
        .errors()
        .any(|d| d.field == "metadata.labels" && d.message.contains("service-name")));
}

#[test]
fn map_entries_match_decisions() {
    use l7_rules::identity::{IdentityTable, Peer};
    let e = engine(STARWARS_L7);
    let ds = e.peer(&parse_peer(DEATHSTAR).unwrap());
    let tie = e.peer(&parse_peer(TIE).unwrap());
    let xw = e.peer(&parse_peer(XWING).unwrap());
    let mut ids = IdentityTable::with_reserved();
    ids.insert(tie.clone()).unwrap();
    ids.insert(xw.clone()).unwrap();
    ids.insert(ds.clone()).unwrap();
    let entries = e.map_entries(&ds, &ids);
    let ingress: Vec<_> = entries
        .iter()
        .filter(|m| m.key.direction == Direction::Ingress)
        .collect();
    // tiefighter (and deathstar itself: org=empire) get an HTTP redirect on 80/TCP; nobody else.
    assert!(ingress.iter().any(|m| m.key.identity == tie.identity
        && m.key.port == 80
        && m.key.prefix_len == 24
        && m.value.redirect.is_some()));
    assert!(!ingress.iter().any(|m| m.key.identity == xw.identity));
    assert!(!ingress
        .iter()
        .any(|m| m.key.identity == Peer::reserved(l7_rules::identity::Reserved::World).identity));
    // Egress of deathstar is unrestricted: one wildcard allow.
    assert!(entries
        .iter()
        .any(|m| m.key.direction == Direction::Egress && m.key.prefix_len == 0 && !m.value.deny));
}

#[test]
fn s6_2_identity_wide_deny_is_pushed_into_more_specific_allow_entries() {
    use l7_rules::identity::IdentityTable;
    // An LPM lookup returns the longest key: an allow on 5432 would hide an all-ports deny of
    // the same identity unless resolution gives the specific key the deny's verdict.
    let e = engine(&deny_policy(
        "  - toEndpoints: [{matchLabels: {role: db}}]\n    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]",
        "  - toEndpoints: [{matchLabels: {role: db}}]",
    ));
    let subject = e.peer(&parse_peer("app=svc").unwrap());
    let db = e.peer(&parse_peer("role=db").unwrap());
    let mut ids = IdentityTable::with_reserved();
    ids.insert(db.clone()).unwrap();
    let entries = e.map_entries(&subject, &ids);
    let db_egress: Vec<_> = entries
        .iter()
        .filter(|m| m.key.identity == db.identity && m.key.direction == Direction::Egress)
        .collect();
    assert!(!db_egress.is_empty());
    assert!(db_egress.iter().all(|m| m.value.deny), "{db_egress:#?}");
    let port_entry = db_egress
        .iter()
        .find(|m| m.key.port == 5432 && m.key.prefix_len == 24);
    assert!(
        port_entry.is_some_and(|m| m.value.deny),
        "the 5432 key must carry the deny"
    );
}

#[test]
fn s6_2_precedence_orders_deny_redirect_allow() {
    use l7_rules::identity::IdentityTable;
    let e = engine(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]
  - fromEndpoints: [{matchLabels: {role: a}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: a}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#,
    );
    let subject = e.peer(&parse_peer("app=svc").unwrap());
    let a = e.peer(&parse_peer("role=a").unwrap());
    let mut ids = IdentityTable::with_reserved();
    ids.insert(a.clone()).unwrap();
    let entries = e.map_entries(&subject, &ids);
    let find = |port: u16, prefix: u8| {
        entries
            .iter()
            .find(|m| {
                m.key.identity == a.identity
                    && m.key.port == port
                    && m.key.prefix_len == prefix
                    && m.key.direction == Direction::Ingress
            })
            .unwrap_or_else(|| panic!("no entry for {port}/{prefix} in {entries:#?}"))
            .value
            .clone()
    };
    let (deny, redirect, allow) = (find(22, 24), find(80, 24), find(0, 0));
    assert!(deny.deny && deny.precedence > redirect.precedence);
    assert!(redirect.redirect.is_some() && redirect.precedence > allow.precedence);
    assert!(!allow.deny && allow.redirect.is_none());
    assert_eq!(deny.precedence & 0xff, 255);
    assert_eq!(allow.precedence & 0xff, 1);
}

#[test]
fn s5_2_dns_rules_are_per_protocol() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]
"#;
    let e = engine(yaml);
    assert!(allowed(&e, ask("app=c", "app=dns", 53).dns("a.com")));
    let tcp = ask("app=c", "app=dns", 53)
        .dns("a.com")
        .proto(Protocol::Tcp)
        .run(&e);
    assert!(!tcp.allowed, "a UDP-only rule does not allow DNS over TCP");
    assert_eq!(tcp.stage, Stage::L3L4);
}

#[test]
fn s2_1_init_endpoints_are_always_enforced() {
    let e = engine(STARWARS_L7);
    // No policy selects a pod with only reserved:init, yet it is enforced (default deny).
    let a = ask("reserved:init=", "app=x", 80)
        .dir(Direction::Egress)
        .run(&e);
    assert!(!a.allowed, "{}", a.reason);
}

// ---------------------------------------------------------------- review regressions

#[test]
fn zero_prefix_cidr_selects_the_world_identity() {
    let e = engine(&deny_policy(
        "  - toEntities: [world]",
        "  - toCIDRSet: [{cidr: 0.0.0.0/0}]",
    ));
    assert!(!allowed(
        &e,
        ask("app=svc", "world", 443).dir(Direction::Egress)
    ));
    assert!(!allowed(
        &e,
        ask("app=svc", "cidr:8.8.8.8", 443).dir(Direction::Egress)
    ));
    let allow_only = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: svc}}
  egress: [{toCIDR: [0.0.0.0/0]}]
"#;
    assert!(allowed(
        &engine(allow_only),
        ask("app=svc", "world", 443).dir(Direction::Egress)
    ));
}

#[test]
fn namespaced_policy_subject_is_forced_into_its_namespace() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: n1, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web, "k8s:io.kubernetes.pod.namespace": prod}}
  ingress: [{fromEndpoints: [{matchLabels: {app: c}}]}]
"#;
    let e = engine(yaml);
    assert!(!allowed(
        &e,
        ask("app=x", "app=web,namespace=default", 80).dir(Direction::Ingress)
    ));
    assert!(
        allowed(
            &e,
            ask("app=x", "app=web,namespace=prod", 80).dir(Direction::Ingress)
        ),
        "a policy in default never governs prod"
    );
    assert!(warnings(yaml)
        .iter()
        .any(|w| w.contains("replaced by the policy's own namespace")));
}

#[test]
fn namespace_label_selectors_are_not_pinned_to_the_policy_namespace() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: db}
spec:
  endpointSelector: {matchLabels: {app: pg}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:io.cilium.k8s.namespace.labels.team": a}}]
"#;
    let mut e = engine(yaml);
    e.set.catalog.namespaces.insert(
        "app1".into(),
        [("team".to_string(), "a".to_string())].into(),
    );
    assert!(allowed(
        &e,
        ask("x=y,namespace=app1", "app=pg,namespace=db", 5432).dir(Direction::Ingress)
    ));
}

#[test]
fn allow_localhost_does_not_bypass_l7_rules() {
    let e = engine(&http_policy("        - {method: GET, path: /ok}\n"));
    let a = ask("host", "app=svc", 80)
        .http("POST", "/bad")
        .dir(Direction::Ingress)
        .run(&e);
    assert!(!a.allowed, "{}", a.reason);
    assert_eq!(a.stage, Stage::L7);
    assert!(allowed(
        &e,
        ask("host", "app=svc", 80)
            .http("GET", "/ok")
            .dir(Direction::Ingress)
    ));
    assert!(
        allowed(&e, ask("host", "app=svc", 22).dir(Direction::Ingress)),
        "other ports: localhost allowed"
    );
}

#[test]
fn l7_rules_need_explicit_tcp() {
    for ports in [
        "[{port: '80'}]",
        "[{port: '80', protocol: ANY}]",
        "[{port: '80', protocol: TCP}, {port: '81', protocol: UDP}]",
    ] {
        let yaml = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n  - toPorts: [{{ports: {ports}, rules: {{http: [{{method: GET}}]}}}}]\n"
        );
        assert!(
            load_err(&yaml)
                .errors()
                .any(|d| d.message.contains("only apply to TCP")),
            "{ports}"
        );
    }
}

#[test]
fn fqdn_rules_without_dns_visibility_warn() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress: [{toFQDNs: [{matchName: api.example.com}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]
"#;
    assert!(warnings(yaml).iter().any(|w| w.contains("rules.dns")));
    assert!(!warnings(FQDN)
        .iter()
        .any(|w| w.contains("no policy has one")));
}

#[test]
fn escaped_slashes_are_checked_as_the_redirected_path() {
    let e = engine(&http_policy(
        "        - {method: GET, path: \"/public/.*\"}\n",
    ));
    let a = ask("a=b", "app=svc", 80)
        .http("GET", "/public/..%2Fadmin")
        .run(&e);
    assert!(!a.allowed, "{}", a.reason);
    assert!(a.reason.contains("escaped slashes"));
}

#[test]
fn all_errors_of_a_document_come_at_once() {
    let yaml = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoint: [{}]
    toPorts:
    - ports: [{port: "70000", protocol: TCP}]
      rules:
        http:
        - pathh: /x
        - path: "/bad(["
  - fromEntities: [wrld]
"#;
    let e = load_err(yaml);
    let fields: Vec<&str> = e.errors().map(|d| d.field.as_str()).collect();
    for want in [
        "spec.ingress[0].fromEndpoint",
        "spec.ingress[0].toPorts[0].rules.http[0].pathh",
        "spec.ingress[0].toPorts[0].ports[0].port",
        "spec.ingress[0].toPorts[0].rules.http[1].path",
        "spec.ingress[1].fromEntities[0]",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
}

#[test]
fn l7_cache_respects_named_ports() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: /a}]}}]
  - toPorts: [{ports: [{port: web, protocol: TCP}], rules: {http: [{path: /b}]}}]
"#;
    let e = engine(yaml);
    let case = |named: &str| {
        format!(
            r#"{{"from": {{"labels": {{"app": "c"}}}}, "to": {{"labels": {{"app": "web"}}{named}}}, "port": 80, "http": {{"method": "GET", "path": "/b"}}, "expect": "deny"}}"#
        )
    };
    // With the named port 80 is `web` too (/b allowed); without it /b is denied, whatever ran first.
    let run = l7_rules::check::run_cases(
        &e,
        &format!(
            "{}\n{}\n",
            case(r#", "named_ports": {"web": 80}"#),
            case("")
        ),
    );
    assert_eq!((run.passed, run.failed), (1, 1), "{:#?}", run.lines);
    assert_eq!(run.lines[1]["pass"], true);
}
