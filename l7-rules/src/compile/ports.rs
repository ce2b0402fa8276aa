//! Ports, port ranges and named ports; ICMP types.

use crate::diag::DocContext;
use crate::model::*;
use crate::raw;

/// Most ports one `toPorts` element may list (Cilium's limit).
pub const MAX_PORTS_PER_RULE: usize = 40;

pub(super) fn port_list(
    list: &[raw::PortProtocol],
    path: &str,
    cx: &mut DocContext<'_>,
) -> Vec<PortMatch> {
    if list.len() > MAX_PORTS_PER_RULE {
        cx.error(
            &format!("{path}.ports"),
            format!(
                "{} ports in one toPorts element; at most {MAX_PORTS_PER_RULE} are allowed",
                list.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (k, pp) in list.iter().enumerate() {
        let field = format!("{path}.ports[{k}]");
        let protos: Vec<Protocol> = match pp.protocol.as_deref() {
            None | Some("") | Some("ANY") | Some("any") => {
                vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            }
            Some(p) => match Protocol::parse(p) {
                Some(Protocol::Tcp) => vec![Protocol::Tcp],
                Some(Protocol::Udp) => vec![Protocol::Udp],
                Some(Protocol::Sctp) => vec![Protocol::Sctp],
                _ => {
                    cx.error(
                        &format!("{field}.protocol"),
                        format!("unknown protocol {p:?}; use TCP, UDP, SCTP or ANY (ICMP goes in `icmps`)"),
                    );
                    continue;
                }
            },
        };
        let Some(port) = parse_port(pp.port.clone(), pp.end_port, &field, cx) else {
            continue;
        };
        for protocol in protos {
            out.push(PortMatch {
                protocol,
                port: port.clone(),
            });
        }
    }
    out
}

pub(super) fn parse_port(
    port: Option<raw::StringLike>,
    end_port: Option<i64>,
    field: &str,
    cx: &mut DocContext<'_>,
) -> Option<Port> {
    let text = port.map(raw::StringLike::into_string).unwrap_or_default();
    let start: u16 = if text.is_empty() {
        0
    } else if let Ok(n) = text.parse::<i64>() {
        match u16::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                cx.error(
                    &format!("{field}.port"),
                    format!("port {n} is outside 0-65535"),
                );
                return None;
            }
        }
    } else {
        let valid = text.len() <= 15
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && text.chars().any(|c| c.is_ascii_lowercase())
            && !text.starts_with('-')
            && !text.ends_with('-');
        if !valid {
            cx.error(
                &format!("{field}.port"),
                format!("{text:?} is neither a port number nor a valid port name (lower-case IANA service name)"),
            );
            return None;
        }
        if end_port.is_some() {
            cx.error(
                &format!("{field}.endPort"),
                "`endPort` cannot be used with a named port",
            );
            return None;
        }
        return Some(Port::Named(text));
    };
    match end_port {
        None | Some(0) => Some(if start == 0 {
            Port::Range(0, u16::MAX)
        } else {
            Port::Range(start, start)
        }),
        Some(e) => {
            let Ok(e) = u16::try_from(e) else {
                cx.error(
                    &format!("{field}.endPort"),
                    format!("endPort {e} is outside 0-65535"),
                );
                return None;
            };
            if start == 0 {
                cx.error(
                    &format!("{field}.endPort"),
                    "`endPort` needs a non-zero `port`",
                );
                return None;
            }
            if e < start {
                cx.error(
                    &format!("{field}.endPort"),
                    format!("endPort {e} is below port {start}"),
                );
                return None;
            }
            Some(Port::Range(start, e))
        }
    }
}

pub(super) fn icmp_types(
    icmp: raw::IcmpRule,
    path: &str,
    cx: &mut DocContext<'_>,
) -> Vec<(Protocol, u8)> {
    let mut out = Vec::new();
    for (i, f) in icmp.fields.into_iter().flatten().enumerate() {
        let field = format!("{path}.fields[{i}]");
        let proto = match f.family.as_deref().unwrap_or("IPv4") {
            "IPv4" => Protocol::Icmp,
            "IPv6" => Protocol::Icmpv6,
            other => {
                cx.error(
                    &format!("{field}.family"),
                    format!("unknown family {other:?}; use IPv4 or IPv6"),
                );
                continue;
            }
        };
        let text = f.icmp_type.into_string();
        let ty = match text.parse::<u8>() {
            Ok(t) => Some(t),
            Err(_) => icmp_type_by_name(&text, proto == Protocol::Icmpv6),
        };
        match ty {
            Some(t) => out.push((proto, t)),
            None => cx.error(
                &format!("{field}.type"),
                format!("{text:?} is not an ICMP type number (0-255) or a known type name"),
            ),
        }
    }
    out
}

/// Cilium's ICMP type names.
pub(super) fn icmp_type_by_name(name: &str, v6: bool) -> Option<u8> {
    let v4 = [
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    let v6t = [
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
    ];
    let table: &[(&str, u8)] = if v6 { &v6t } else { &v4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
