//! `ward-check`: does a request pass these policies, and why? Offline, no root, no daemon.
//! Exit status: 0 allow, 1 deny (or a failed case), 2 usage or policy error.
//!
//! This file owns the command line and loading the policies; [`question`] asks one question,
//! [`cases`] runs a case file. The answers themselves come from `l7_rules::check`.

mod cases;
mod question;

use clap::{Parser, ValueEnum};
use l7_rules::check;
use l7_rules::diag::Severity;
use l7_rules::engine::{EnforcementMode, Engine};
use l7_rules::model::{Direction, Protocol};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
PEER:
  k=v,k=v            pod labels (optional k8s: prefixes; namespace=NS, default \"default\")
  world|host|remote-node|kube-apiserver|health|init|unmanaged|ingress
  cidr:10.0.0.5      an outside address
  fqdn:NAME[=IP]     an address learned from a DNS answer for NAME

Modes:
  ward-check --policy PATH... --from PEER --to PEER [--port 80] [REQUEST]
  ward-check --policy PATH... --cases FILE.jsonl|-      (one JSON case per line)
  ward-check --policy PATH... --validate                (check the policies only)

--policy takes files or directories (*.yaml, *.yml, recursively), and may repeat.
Without --direction both the source's egress and the destination's ingress are checked
(where that side is a pod). Without REQUEST only L3/L4 is checked.
HTTP requests go through the node proxy's own request builder: the path is judged normalised
(dot segments, also %2E and ..;x; merged slashes; \\ as a separator; unreserved escapes), which
is also what the proxy forwards. A path with %2F or %5C is answered 307 by the proxy, and the
unescaped path it redirects to is what is checked. A request the proxy refuses before any rule
(%00 or a fragment in the path, a control or non-ASCII byte in a header a rule reads) is
reported with exit status 2. CONNECT is judged by method and authority: path rules never match.
Exit status: 0 allow, 1 deny, 2 usage, policy error, or a request the proxy refuses.";

/// ward-check: does a request pass these network policies, and why?
///
/// The options may come before or after the REQUEST words.
#[derive(Debug, Parser)]
#[command(
    name = "ward-check",
    arg_required_else_help = true,
    disable_help_subcommand = true,
    after_help = AFTER_HELP,
    subcommand_value_name = "REQUEST",
    subcommand_help_heading = "REQUEST (optional)"
)]
struct Args {
    /// Policy files or directories; several may follow one --policy.
    #[arg(short = 'p', long = "policy", value_name = "PATH", global = true)]
    policies: Vec<PathBuf>,
    /// The source of the connection.
    #[arg(long, value_name = "PEER", global = true)]
    from: Option<String>,
    /// The destination of the connection.
    #[arg(long, value_name = "PEER", global = true)]
    to: Option<String>,
    /// The destination port (default 80 with an L7 request, 53 for DNS).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// TCP, UDP, SCTP, ICMP or ICMPv6 (default TCP; UDP for DNS).
    #[arg(long, value_parser = parse_protocol, global = true)]
    protocol: Option<Protocol>,
    /// Check only the source's egress or only the destination's ingress.
    #[arg(long, value_parser = check::parse_direction, global = true)]
    direction: Option<Direction>,
    /// An ICMP type (implies ICMP unless --protocol says otherwise).
    #[arg(long, value_name = "N", global = true)]
    icmp_type: Option<u8>,
    /// Audit mode: a denial is reported and allowed.
    #[arg(long, global = true)]
    audit: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// Run a case file (JSON lines; `-` for stdin).
    #[arg(long, value_name = "FILE.jsonl|-", global = true)]
    cases: Option<String>,
    /// Check the policies only.
    #[arg(long, global = true)]
    validate: bool,
    /// The agent-wide enforcement mode.
    #[arg(long, value_enum, default_value_t = Enforcement::Default, global = true)]
    enforcement: Enforcement,
    /// A named container port of the destination.
    #[arg(long = "named-port", value_name = "NAME=PORT", value_parser = parse_named_port, global = true)]
    named_ports: Vec<(String, u16)>,
    /// The node host policies (nodeSelector) see: a `v1 Node` object among the policies
    /// gives its labels (the only one is used by default).
    #[arg(long, value_name = "NAME", global = true)]
    node: Option<String>,
    #[command(subcommand)]
    request: Option<question::Request>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Enforcement {
    Default,
    Always,
    Never,
}

impl From<Enforcement> for EnforcementMode {
    fn from(e: Enforcement) -> EnforcementMode {
        match e {
            Enforcement::Default => EnforcementMode::Default,
            Enforcement::Always => EnforcementMode::Always,
            Enforcement::Never => EnforcementMode::Never,
        }
    }
}

fn parse_protocol(v: &str) -> Result<Protocol, String> {
    Protocol::parse(v).ok_or_else(|| format!("{v:?}: use TCP, UDP, SCTP, ICMP or ICMPv6"))
}

fn parse_named_port(v: &str) -> Result<(String, u16), String> {
    v.split_once('=')
        .and_then(|(n, p)| Some((n.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("{v:?}: expected NAME=PORT"))
}

/// Several paths may follow one `--policy`, up to the next option or REQUEST word: each gets a
/// `--policy` of its own, so that a REQUEST word is never taken for a path.
fn split_policy_paths(argv: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    // The previous word was --policy / a path of it.
    let (mut policy_value_next, mut after_policy) = (false, false);
    for word in argv {
        if policy_value_next {
            (policy_value_next, after_policy) = (false, true);
        } else if after_policy && !word.starts_with('-') && !is_request_word(&word) {
            out.push("--policy".to_string());
        } else {
            after_policy = false;
            policy_value_next = word == "--policy" || word == "-p";
        }
        out.push(word);
    }
    out
}

fn is_request_word(w: &str) -> bool {
    matches!(w, "http" | "grpc" | "kafka" | "dns")
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("ward-check: {msg}\nRun `ward-check --help` for usage.");
    ExitCode::from(2)
}

/// The labels of the node host policies apply to: `--node NAME`, or the only `v1 Node` of the
/// policies.
fn node_labels(
    node: Option<&str>,
    nodes: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Option<BTreeMap<String, String>>, String> {
    match (node, nodes.len()) {
        (Some(n), _) => match nodes.get(n) {
            Some(labels) => Ok(Some(labels.clone())),
            None => Err(format!(
                "--node {n:?}: no `v1 Node` of that name in the policies"
            )),
        },
        (None, 1) => Ok(nodes.values().next().cloned()),
        (None, 0) => Ok(None),
        (None, _) => {
            Err("the policies hold several `v1 Node` objects: name the node with --node".into())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse_from(split_policy_paths(std::env::args()));
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
    let node_labels = match node_labels(args.node.as_deref(), &set.catalog.nodes) {
        Ok(labels) => labels,
        Err(e) => return usage_error(&e),
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
    engine.mode = args.enforcement.into();
    if let Some(labels) = node_labels {
        engine.node_labels = l7_rules::labels::LabelSet::new(
            labels
                .iter()
                .map(|(k, v)| l7_rules::labels::Label::new("k8s", k, v))
                .collect(),
        );
    }

    if args.validate {
        let n = engine.set.policies.len();
        println!(
            "{n} polic{} valid in {} file(s), {} warning(s)",
            if n == 1 { "y" } else { "ies" },
            engine.set.files.len(),
            engine.set.warnings.len()
        );
        return ExitCode::SUCCESS;
    }

    if let Some(src) = &args.cases {
        return match cases::read(src) {
            Ok(text) => cases::run(&engine, &text),
            Err(e) => usage_error(&e),
        };
    }

    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        return usage_error("--from and --to are required (or --cases / --validate)");
    };
    let asked = question::Asked {
        from,
        to,
        port: args.port,
        protocol: args.protocol,
        icmp_type: args.icmp_type,
        direction: args.direction,
        named_ports: &args.named_ports,
        audit: args.audit,
        request: args.request,
    };
    let answered = question::question(asked)
        .and_then(|q| question::ask(&engine, &q, matches!(args.output, Output::Json)));
    match answered {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => usage_error(&e),
    }
}
