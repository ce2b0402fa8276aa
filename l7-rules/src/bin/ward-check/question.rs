//! One question from the command line: the optional REQUEST words, the peers and the port
//! become an [`l7_rules::check::Question`], and the answer is printed as text or JSON.

use clap::Subcommand;
use l7_rules::check::{self, Answer, L7Question, Question};
use l7_rules::engine::{Engine, Stage};
use l7_rules::model::{Direction, Protocol};

/// The L7 request of a question, as its words are written after the options.
#[derive(Clone, Debug, Subcommand)]
pub enum Request {
    /// `http METHOD PATH`, or `http CONNECT HOST:PORT` (judged by method and authority).
    Http {
        method: String,
        /// The path (or, for CONNECT, the authority).
        path: String,
        #[arg(long, default_value = "")]
        host: String,
        /// A request header, `'Name: value'`; may repeat.
        #[arg(short = 'H', long = "header", value_name = "'K: V'", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// `grpc SERVICE METHOD`.
    Grpc { service: String, method: String },
    /// `kafka --api-key KEY [--topic T]...`.
    Kafka {
        /// An API key, by name (`Produce`) or number.
        #[arg(long, value_parser = check::parse_api_key)]
        api_key: i16,
        /// A topic the request names; may repeat.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long, default_value_t = 0)]
        api_version: i16,
    },
    /// `dns NAME` (port 53 over UDP unless given).
    Dns { name: String },
}

impl From<Request> for L7Question {
    fn from(r: Request) -> L7Question {
        match r {
            Request::Http {
                method,
                path,
                host,
                headers,
            } => L7Question::Http {
                method,
                path,
                host,
                headers,
            },
            Request::Grpc { service, method } => L7Question::Grpc { service, method },
            Request::Kafka {
                api_key,
                topics,
                client_id,
                api_version,
            } => L7Question::Kafka {
                api_key,
                api_version,
                client_id,
                topics,
            },
            Request::Dns { name } => L7Question::Dns { name },
        }
    }
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("{h:?}: expected 'Name: value'"))?;
    Ok((k.trim().to_string(), v.trim_start().to_string()))
}

/// What the command line says about one connection, before it meets the policies.
pub struct Asked<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub icmp_type: Option<u8>,
    pub direction: Option<Direction>,
    pub named_ports: &'a [(String, u16)],
    pub audit: bool,
    pub request: Option<Request>,
}

/// The question asked, or a usage error. Defaults: with `--icmp-type` and no other protocol,
/// ICMP; DNS is port 53 over UDP; another request is port 80.
pub fn question(a: Asked<'_>) -> Result<Question, String> {
    let from = check::parse_peer(a.from).map_err(|e| format!("--from: {e}"))?;
    let mut to = check::parse_peer(a.to).map_err(|e| format!("--to: {e}"))?;
    to.named_ports.extend(a.named_ports.iter().cloned());
    let dns = matches!(a.request, Some(Request::Dns { .. }));
    let protocol = match (a.protocol, a.icmp_type) {
        (None | Some(Protocol::Tcp), Some(_)) => Protocol::Icmp,
        (Some(p), _) => p,
        (None, None) if dns => Protocol::Udp,
        (None, None) => Protocol::Tcp,
    };
    let port = if matches!(protocol, Protocol::Icmp | Protocol::Icmpv6) {
        u16::from(a.icmp_type.ok_or("ICMP needs --icmp-type")?)
    } else {
        match (a.port, &a.request) {
            (Some(p), _) => p,
            (None, Some(_)) if dns => 53,
            (None, Some(_)) => 80,
            (None, None) => return Err("--port is required for an L3/L4 question".into()),
        }
    };
    Ok(Question {
        from,
        to,
        direction: a.direction,
        protocol,
        port,
        l7: a.request.map(L7Question::from),
        audit: a.audit,
    })
}

/// Asks the engine. `Ok(allowed)` after printing the answer; `Err` for a question the engine
/// cannot answer as asked (a usage error).
pub fn ask(engine: &Engine, q: &Question, json: bool) -> Result<bool, String> {
    let a = check::answer(engine, q).map_err(|e| e.to_string())?;
    if json {
        println!("{}", a.json());
    } else {
        println!("{}", text(&a));
    }
    Ok(a.allowed)
}

/// `ALLOWED (L7): default/rule1 ingress[0]... allows POST /v1/request-landing`.
fn text(a: &Answer) -> String {
    let head = match (a.allowed, a.audit) {
        (true, true) => "AUDIT",
        (true, false) => "ALLOWED",
        (false, _) => "DENIED",
    };
    let stage = match a.stage {
        Stage::L3L4 => "L3/L4",
        Stage::L7 => "L7",
    };
    format!("{head} ({stage}): {}", a.reason)
}
