//! `ward-check`: does a request pass these policies, and why? Offline, no root, no daemon.
//! Exit status: 0 allow, 1 deny (or a failed case), 2 usage or policy error.

use l7_rules::check::{self, L7Question, Question};
use l7_rules::diag::Severity;
use l7_rules::engine::{EnforcementMode, Engine};
use l7_rules::model::{Direction, Protocol};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
ward-check: does a request pass these network policies, and why?

USAGE:
  ward-check --policy PATH... --from PEER --to PEER [--port 80] [--protocol TCP]
             [--direction ingress|egress] [--icmp-type N] [--audit] [-o text|json]
             [--enforcement default|always|never] [--named-port NAME=PORT]... [REQUEST]
  ward-check --policy PATH... --cases FILE.jsonl|-      (one JSON case per line)
  ward-check --policy PATH... --validate                (check the policies only)
  [--node NAME]   the node host policies (nodeSelector) see: a `v1 Node` object among the
                  policies gives its labels (the only one is used by default)

REQUEST (optional; without it only L3/L4 is checked):
  http METHOD PATH [--host H] [--header 'K: V']...
  http CONNECT HOST:PORT [--header 'K: V']...
  grpc SERVICE METHOD
  kafka --api-key KEY [--topic T]... [--client-id C] [--api-version N]
  dns NAME

PEER:
  k=v,k=v            pod labels (optional k8s: prefixes; namespace=NS, default \"default\")
  world|host|remote-node|kube-apiserver|health|init|unmanaged|ingress
  cidr:10.0.0.5      an outside address
  fqdn:NAME[=IP]     an address learned from a DNS answer for NAME

--policy takes files or directories (*.yaml, *.yml, recursively), and may repeat.
Without --direction both the source's egress and the destination's ingress are checked
(where that side is a pod).
HTTP requests go through the node proxy's own request builder: the path is judged normalised
(dot segments, also %2E and ..;x; merged slashes; \\ as a separator; unreserved escapes), which
is also what the proxy forwards. A path with %2F or %5C is answered 307 by the proxy, and the
unescaped path it redirects to is what is checked. A request the proxy refuses before any rule
(%00 or a fragment in the path, a control or non-ASCII byte in a header a rule reads) is
reported with exit status 2. CONNECT is judged by method and authority: path rules never match.
Exit status: 0 allow, 1 deny, 2 usage, policy error, or a request the proxy refuses.
";

struct Args {
    policies: Vec<PathBuf>,
    from: Option<String>,
    to: Option<String>,
    port: Option<u16>,
    protocol: Protocol,
    /// `--protocol` was given (DNS defaults to UDP otherwise).
    protocol_explicit: bool,
    direction: Option<Direction>,
    icmp_type: Option<u8>,
    audit: bool,
    json: bool,
    cases: Option<String>,
    validate: bool,
    mode: EnforcementMode,
    /// Named container ports of the destination (`--named-port http=8080`).
    named_ports: Vec<(String, u16)>,
    /// The node whose labels host policies' `nodeSelector` sees (a `v1 Node` of the policies).
    node: Option<String>,
    l7: Option<L7Question>,
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("ward-check: {msg}\nRun `ward-check --help` for usage.");
    ExitCode::from(2)
}

fn parse_args(argv: Vec<String>) -> Result<Args, String> {
    let mut a = Args {
        policies: vec![],
        from: None,
        to: None,
        port: None,
        protocol: Protocol::Tcp,
        protocol_explicit: false,
        direction: None,
        icmp_type: None,
        audit: false,
        json: false,
        cases: None,
        validate: false,
        mode: EnforcementMode::Default,
        named_ports: vec![],
        node: None,
        l7: None,
    };
    let mut it = argv.into_iter().peekable();
    let need = |it: &mut std::iter::Peekable<std::vec::IntoIter<String>>, flag: &str| {
        it.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--policy" | "-p" => {
                a.policies.push(need(&mut it, "--policy")?.into());
                // Several paths may follow one --policy.
                while it
                    .peek()
                    .is_some_and(|n| !n.starts_with('-') && !is_request_word(n))
                {
                    a.policies.push(it.next().unwrap_or_default().into());
                }
            }
            "--from" => a.from = Some(need(&mut it, "--from")?),
            "--to" => a.to = Some(need(&mut it, "--to")?),
            "--port" => {
                let v = need(&mut it, "--port")?;
                a.port = Some(
                    v.parse()
                        .map_err(|_| format!("--port {v:?} is not a port number"))?,
                );
            }
            "--protocol" => {
                let v = need(&mut it, "--protocol")?;
                a.protocol = Protocol::parse(&v).ok_or_else(|| {
                    format!("--protocol {v:?}: use TCP, UDP, SCTP, ICMP or ICMPv6")
                })?;
                a.protocol_explicit = true;
            }
            "--direction" => {
                a.direction = Some(check::parse_direction(&need(&mut it, "--direction")?)?)
            }
            "--icmp-type" => {
                let v = need(&mut it, "--icmp-type")?;
                a.icmp_type = Some(
                    v.parse()
                        .map_err(|_| format!("--icmp-type {v:?} is not 0-255"))?,
                );
                if a.protocol == Protocol::Tcp {
                    a.protocol = Protocol::Icmp;
                }
            }
            "--audit" => a.audit = true,
            "--node" => a.node = Some(need(&mut it, "--node")?),
            "--named-port" => {
                let v = need(&mut it, "--named-port")?;
                let (name, port) = v
                    .split_once('=')
                    .and_then(|(n, p)| Some((n.to_string(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| format!("--named-port {v:?}: expected NAME=PORT"))?;
                a.named_ports.push((name, port));
            }
            "-o" | "--output" => match need(&mut it, "-o")?.as_str() {
                "json" => a.json = true,
                "text" => a.json = false,
                other => return Err(format!("-o {other:?}: use text or json")),
            },
            "--cases" => a.cases = Some(need(&mut it, "--cases")?),
            "--validate" => a.validate = true,
            "--enforcement" => {
                a.mode = match need(&mut it, "--enforcement")?.as_str() {
                    "default" => EnforcementMode::Default,
                    "always" => EnforcementMode::Always,
                    "never" => EnforcementMode::Never,
                    other => {
                        return Err(format!(
                            "--enforcement {other:?}: use default, always or never"
                        ))
                    }
                }
            }
            "http" => {
                let method = need(&mut it, "http METHOD")?;
                let path = need(&mut it, "http METHOD PATH")?;
                let mut host = String::new();
                let mut headers = Vec::new();
                while let Some(flag) = it.peek().cloned() {
                    match flag.as_str() {
                        "--host" => {
                            it.next();
                            host = need(&mut it, "--host")?;
                        }
                        "--header" | "-H" => {
                            it.next();
                            let h = need(&mut it, "--header")?;
                            let (k, v) = h
                                .split_once(':')
                                .ok_or_else(|| format!("--header {h:?}: expected 'Name: value'"))?;
                            headers.push((k.trim().to_string(), v.trim_start().to_string()));
                        }
                        _ => break,
                    }
                }
                a.l7 = Some(L7Question::Http {
                    method,
                    path,
                    host,
                    headers,
                });
            }
            "grpc" => {
                let service = need(&mut it, "grpc SERVICE")?;
                let method = need(&mut it, "grpc SERVICE METHOD")?;
                a.l7 = Some(L7Question::Grpc { service, method });
            }
            "kafka" => {
                let mut api_key = None;
                let mut topics = Vec::new();
                let mut client_id = None;
                let mut api_version = 0i16;
                while let Some(flag) = it.peek().cloned() {
                    match flag.as_str() {
                        "--api-key" => {
                            it.next();
                            api_key = Some(check::parse_api_key(&need(&mut it, "--api-key")?)?);
                        }
                        "--topic" => {
                            it.next();
                            topics.push(need(&mut it, "--topic")?);
                        }
                        "--client-id" => {
                            it.next();
                            client_id = Some(need(&mut it, "--client-id")?);
                        }
                        "--api-version" => {
                            it.next();
                            let v = need(&mut it, "--api-version")?;
                            api_version = v.parse().map_err(|_| format!("--api-version {v:?}"))?;
                        }
                        _ => break,
                    }
                }
                let api_key = api_key.ok_or("kafka needs --api-key")?;
                a.l7 = Some(L7Question::Kafka {
                    api_key,
                    api_version,
                    client_id,
                    topics,
                });
            }
            "dns" => {
                let name = need(&mut it, "dns NAME")?;
                a.l7 = Some(L7Question::Dns { name });
                if a.port.is_none() {
                    a.port = Some(53);
                }
                if !a.protocol_explicit {
                    a.protocol = Protocol::Udp;
                }
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(a)
}

fn is_request_word(w: &str) -> bool {
    matches!(w, "http" | "grpc" | "kafka" | "dns")
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return if argv.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    if args.policies.is_empty() {
        return usage_error("--policy is required");
    }
    let set = match l7_rules::source::load_paths(&args.policies) {
        Ok(set) => set,
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            eprintln!(
                "ward-check: policy rejected ({} error(s))",
                e.errors().count()
            );
            return ExitCode::from(2);
        }
    };
    for w in &set.warnings {
        debug_assert_eq!(w.severity, Severity::Warning);
        eprintln!("{w}");
    }
    // The node host policies apply to: `--node NAME`, or the only `v1 Node` of the policies.
    let node_labels = match (&args.node, set.catalog.nodes.len()) {
        (Some(n), _) => match set.catalog.nodes.get(n) {
            Some(labels) => Some(labels.clone()),
            None => {
                return usage_error(&format!(
                    "--node {n:?}: no `v1 Node` of that name in the policies"
                ))
            }
        },
        (None, 1) => set.catalog.nodes.values().next().cloned(),
        (None, 0) => None,
        (None, _) => {
            return usage_error(
                "the policies hold several `v1 Node` objects: name the node with --node",
            )
        }
    };
    let host_policies = set
        .policies
        .iter()
        .any(|p| matches!(p.subject, l7_rules::model::Subject::Nodes(_)));
    if host_policies {
        eprintln!(
            "warning: the live node differs here: `ward run` enforces host policies (nodeSelector) only when its node config names an `uplink` (it refuses them otherwise), and matches nodeSelector against the node config's labels{}",
            if node_labels.is_some() { "" } else { "; no `v1 Node` is given, so nodeSelector sees a node without labels" }
        );
    }
    let mut engine = Engine::new(set);
    engine.mode = args.mode;
    if let Some(labels) = node_labels {
        engine.node_labels = l7_rules::labels::LabelSet::new(
            labels
                .iter()
                .map(|(k, v)| l7_rules::labels::Label::new("k8s", k, v))
                .collect(),
        );
    }

    if args.validate {
        println!(
            "{} polic{} valid in {} file(s), {} warning(s)",
            engine.set.policies.len(),
            if engine.set.policies.len() == 1 {
                "y"
            } else {
                "ies"
            },
            engine.set.files.len(),
            engine.set.warnings.len()
        );
        return ExitCode::SUCCESS;
    }

    if let Some(src) = &args.cases {
        let mut text = String::new();
        let read = if src == "-" {
            std::io::stdin().read_to_string(&mut text).map(|_| ())
        } else {
            std::fs::read_to_string(src).map(|t| text = t)
        };
        if let Err(e) = read {
            return usage_error(&format!("cannot read cases {src}: {e}"));
        }
        let run = check::run_cases(&engine, &text);
        let mut out = std::io::stdout().lock();
        for line in &run.lines {
            let _ = writeln!(out, "{line}");
        }
        if run.any_expect {
            let _ = writeln!(
                out,
                "{} passed, {} failed",
                run.passed,
                run.failed + run.errors
            );
        }
        if run.errors > 0 {
            for line in run.lines.iter().filter(|l| l.get("error").is_some()) {
                eprintln!("ward-check: case error: {line}");
            }
            return ExitCode::from(2);
        }
        return if run.failed > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }

    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        return usage_error("--from and --to are required (or --cases / --validate)");
    };
    let from = match check::parse_peer(from) {
        Ok(p) => p,
        Err(e) => return usage_error(&format!("--from: {e}")),
    };
    let mut to = match check::parse_peer(to) {
        Ok(p) => p,
        Err(e) => return usage_error(&format!("--to: {e}")),
    };
    to.named_ports.extend(args.named_ports.iter().cloned());
    let port = if matches!(args.protocol, Protocol::Icmp | Protocol::Icmpv6) {
        match args.icmp_type {
            Some(t) => u16::from(t),
            None => return usage_error("ICMP needs --icmp-type"),
        }
    } else {
        match args.port {
            Some(p) => p,
            None if args.l7.is_some() => 80,
            None => return usage_error("--port is required for an L3/L4 question"),
        }
    };
    let q = Question {
        from,
        to,
        direction: args.direction,
        protocol: args.protocol,
        port,
        l7: args.l7,
        audit: args.audit,
    };
    match check::answer(&engine, &q) {
        Ok(a) => {
            if args.json {
                println!("{}", a.json());
            } else {
                println!("{}", a.text());
            }
            if a.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => usage_error(&e.to_string()),
    }
}
