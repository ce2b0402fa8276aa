//! A strict HTTP/1.1 request-head parser (RFC 9112) for a proxy that must see exactly what the
//! upstream will see (docs/design.md §6).
//!
//! [`parse_request_head`] reads the request line and header fields from the front of a buffer and
//! returns a [`RequestHead`] whose strings are slices of that buffer: no allocation per header.
//! Anything a lenient upstream might read differently from us is refused:
//!
//! - lines must end in CRLF; a bare LF or a bare CR is an error (some servers accept bare LF and
//!   some do not, which is exactly the disagreement request smuggling feeds on);
//! - obs-fold (a header line starting with SP/HTAB), whitespace between a field name and its
//!   colon, non-token bytes in the method or a field name, and control bytes (other than HTAB) in
//!   a field value are errors;
//! - `Content-Length` must be digits; duplicates (repeated fields or a comma list) must agree;
//! - `Transfer-Encoding` must end with a single `chunked` and is refused in HTTP/1.0 requests and
//!   together with `Content-Length`;
//! - HTTP/1.1 needs exactly one `Host`; an absolute-form target's authority must equal it
//!   (ASCII case-insensitively); authority-form is only for `CONNECT`, `*` only for `OPTIONS`.
//!
//! Empty lines (CRLF) before the request line are skipped, as RFC 9112 §2.2 recommends; they
//! count in the consumed length.

use crate::Status;

/// Largest request head (request line + header fields + the empty line), in bytes.
pub const MAX_HEAD_LEN: usize = 64 * 1024;
/// Most header fields in one request head.
pub const MAX_HEADERS: usize = 100;
/// Longest method token.
pub const MAX_METHOD_LEN: usize = 32;

/// Why a request head was refused. All are the client's fault; see [`error_status`] for the
/// status code to answer with before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    /// The head is longer than [`MAX_HEAD_LEN`] (431).
    #[error("request head exceeds {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields (431).
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// A line ends in LF without CR, or a CR is not followed by LF.
    #[error("line ending is not CRLF at byte {0}")]
    BareLineEnding(usize),
    /// The request line is not `method SP target SP version`.
    #[error("malformed request line")]
    BadRequestLine,
    /// The method is empty, too long or has non-token bytes.
    #[error("invalid method")]
    InvalidMethod,
    /// The request target has bytes other than visible ASCII, or is malformed for its form.
    #[error("invalid request target")]
    InvalidTarget,
    /// The target's form does not fit the method (authority-form without CONNECT, `*` without
    /// OPTIONS, origin-form with CONNECT).
    #[error("request target form does not fit the method")]
    TargetFormMismatch,
    /// The version is neither `HTTP/1.1` nor `HTTP/1.0`.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A header line starts with whitespace (obsolete line folding).
    #[error("obsolete line folding in header field")]
    ObsFold,
    /// A field name is empty or has non-token bytes, or the colon is missing.
    #[error("invalid header field name")]
    InvalidHeaderName,
    /// Whitespace between a field name and its colon.
    #[error("whitespace between header field name and colon")]
    WhitespaceBeforeColon,
    /// A control byte (CR, LF, NUL, …) in a field value.
    #[error("invalid byte in header field value")]
    InvalidHeaderValue,
    /// `Content-Length` is not a decimal number that fits `u64`.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Several `Content-Length` values that differ.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`.
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    /// `Transfer-Encoding` whose final coding is not a single `chunked`, or not a token list.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request.
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// No `Host` in an HTTP/1.1 request.
    #[error("missing Host header")]
    MissingHost,
    /// More than one `Host`.
    #[error("more than one Host header")]
    MultipleHost,
    /// A `Host` value that is not `host[:port]`.
    #[error("invalid Host header")]
    InvalidHost,
    /// An absolute-form target whose authority differs from `Host`.
    #[error("request target authority differs from Host")]
    HostMismatch,
}

/// The status code a proxy answers a refused head with: 431 for size limits, 400 otherwise.
pub fn error_status(err: &Http1Error) -> u16 {
    match err {
        Http1Error::TooManyHeaders | Http1Error::HeadTooLarge => 431,
        _ => 400,
    }
}

/// HTTP version of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

/// Form of the request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`
    Absolute,
    /// `host:port` (CONNECT)
    Authority,
    /// `*` (OPTIONS)
    Asterisk,
}

/// One header field, borrowed from the parsed buffer. The value has surrounding whitespace
/// removed; it may hold obs-text bytes (≥ 0x80), so it is bytes, not `str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Field name as received (a token, so ASCII).
    pub name: &'a str,
    /// Field value without leading/trailing SP/HTAB.
    pub value: &'a [u8],
}

const EMPTY_HEADER: Header<'static> = Header {
    name: "",
    value: b"",
};

/// A parsed request head. Everything borrows from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// Method token, e.g. `GET`.
    pub method: &'a str,
    /// Request target exactly as received.
    pub target: &'a str,
    /// Form of [`Self::target`].
    pub target_form: TargetForm,
    /// Protocol version.
    pub version: Version,
    headers: [Header<'a>; MAX_HEADERS],
    header_count: usize,
    /// Body length from `Content-Length`.
    pub content_length: Option<u64>,
    /// The body is chunked (`Transfer-Encoding` ends with `chunked`).
    pub chunked: bool,
    /// The `Host` value; for an HTTP/1.0 absolute-form request without `Host`, the target's
    /// authority.
    pub host: Option<&'a [u8]>,
    /// The connection must close after this exchange: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`.
    pub connection_close: bool,
    /// The `Upgrade` value when `Connection` lists `upgrade` (WebSocket, h2c, …).
    pub upgrade: Option<&'a [u8]>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl<'a> RequestHead<'a> {
    /// All header fields in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers[..self.header_count]
    }

    /// The first value of the header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of the header `name` (ASCII case-insensitive), in order.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The path and query the policy sees: the target itself in origin-form, the part after the
    /// authority in absolute-form (`/` when empty), and the target for `*` and authority-form.
    pub fn path_and_query(&self) -> &'a str {
        match self.target_form {
            TargetForm::Absolute => {
                let (_, rest) = split_absolute(self.target).unwrap_or(("", ""));
                if rest.is_empty() {
                    "/"
                } else {
                    rest
                }
            }
            _ => self.target,
        }
    }
}

/// Byte classes, looked up in one table: the hot loops test one bit per byte.
const TCHAR: u8 = 1;
const VALUE: u8 = 2;
const HOST: u8 = 4;

const fn byte_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut class = 0;
        // tchar (RFC 9110 §5.6.2)
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            class |= TCHAR;
        }
        // field-vchar / SP / HTAB / obs-text (RFC 9110 §5.5)
        if b == b'\t' || (b >= 0x20 && b != 0x7f) {
            class |= VALUE;
        }
        // host[:port]: reg-name, IP literal, pct-encoding, port (RFC 3986 §3.2.2)
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            )
        {
            class |= HOST;
        }
        table[i] = class;
        i += 1;
    }
    table
}

static BYTE_CLASSES: [u8; 256] = byte_classes();

fn is_tchar(b: u8) -> bool {
    BYTE_CLASSES[usize::from(b)] & TCHAR != 0
}

fn is_value_byte(b: u8) -> bool {
    BYTE_CLASSES[usize::from(b)] & VALUE != 0
}

fn is_host_byte(b: u8) -> bool {
    BYTE_CLASSES[usize::from(b)] & HOST != 0
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// Whether `values` (every `Upgrade` field of a request) offer nothing but WebSocket: the only
/// protocol switch a proxy tunnels, as Cilium's Envoy (`upgrade_configs: websocket`). Any other
/// offer (h2c above all, which would let a client speak HTTP/2 to the backend past the rules)
/// makes the request a plain HTTP/1.1 one.
pub fn websocket_only<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> bool {
    let mut any = false;
    for value in values {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            if !token.eq_ignore_ascii_case(b"websocket") {
                return false;
            }
            any = true;
        }
    }
    any
}

/// `a` and `b` name the same authority: ASCII case-insensitive, a missing port being `:80`
/// (an `http` URI's default, RFC 9110 §4.2.3).
pub fn same_authority(a: &[u8], b: &[u8]) -> bool {
    fn split(s: &[u8]) -> (&[u8], &[u8]) {
        match s.iter().rposition(|&c| c == b':') {
            Some(i) if !s[i..].contains(&b']') => (&s[..i], &s[i + 1..]),
            _ => (s, b"80"),
        }
    }
    let ((ha, pa), (hb, pb)) = (split(a), split(b));
    // Leading zeros of a port do not change it.
    let port = |p: &[u8]| {
        let first = p.iter().position(|&c| c != b'0').unwrap_or(p.len());
        p[first..].to_vec()
    };
    ha.eq_ignore_ascii_case(hb) && port(pa) == port(pb)
}

/// `http://authority/rest` → `(authority, "/rest")`; `None` if not absolute-form.
fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let bytes = target.as_bytes();
    let scheme_len = if bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if bytes.len() >= 8 && bytes[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Lines end in CRLF. Returns the index of the LF of the line starting at `start`, `None` when
/// the buffer ends first.
fn line_end(data: &[u8], start: usize) -> Result<Option<usize>, Http1Error> {
    let Some(off) = data[start..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let lf = start + off;
    if lf == start || data[lf - 1] != b'\r' {
        return Err(Http1Error::BareLineEnding(lf));
    }
    Ok(Some(lf))
}

fn need_more<T>(buf: &[u8]) -> Result<Status<T>, Http1Error> {
    if buf.len() >= MAX_HEAD_LEN {
        Err(Http1Error::HeadTooLarge)
    } else {
        Ok(Status::NeedMore)
    }
}

fn ascii_str(bytes: &[u8]) -> &str {
    // Callers only pass bytes they have checked to be ASCII.
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Parses the request head at the front of `buf`. `Complete(head, n)`: the head is the first `n`
/// bytes (including the empty line) and the body, if any, starts at `buf[n..]`.
pub fn parse_request_head(buf: &[u8]) -> Result<Status<RequestHead<'_>>, Http1Error> {
    let data = &buf[..buf.len().min(MAX_HEAD_LEN)];
    let mut pos = 0;
    // Leading empty lines.
    while data[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    let Some(lf) = line_end(data, pos)? else {
        // Fail early on garbage that can never be a request line.
        if let Some(&b) = data.get(pos) {
            if b != b'\r' && !is_tchar(b) {
                return Err(Http1Error::InvalidMethod);
            }
        }
        return need_more(buf);
    };
    let (method, target, target_form, version) = parse_request_line(&data[pos..lf - 1])?;
    pos = lf + 1;

    let mut head = RequestHead {
        method,
        target,
        target_form,
        version,
        headers: [EMPTY_HEADER; MAX_HEADERS],
        header_count: 0,
        content_length: None,
        chunked: false,
        host: None,
        connection_close: false,
        upgrade: None,
        expect_continue: false,
    };
    let mut host_count = 0usize;
    let mut transfer_encoding = false;
    let mut final_chunked = false;
    let mut connection_upgrade = false;
    let mut saw_close = false;
    let mut saw_keep_alive = false;
    let mut upgrade_value = None;

    loop {
        let Some(lf) = line_end(data, pos)? else {
            if data.get(pos).is_some_and(|&b| is_ows(b)) {
                return Err(Http1Error::ObsFold);
            }
            return need_more(buf);
        };
        let line = &data[pos..lf - 1];
        pos = lf + 1;
        if line.is_empty() {
            break;
        }
        if head.header_count == MAX_HEADERS {
            return Err(Http1Error::TooManyHeaders);
        }
        let header = parse_header_line(line)?;
        head.headers[head.header_count] = header;
        head.header_count += 1;

        let name = header.name.as_bytes();
        let value = header.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            parse_content_length(value, &mut head.content_length)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            parse_transfer_encoding(value, &mut final_chunked)?;
        } else if name.eq_ignore_ascii_case(b"host") {
            host_count += 1;
            if host_count > 1 {
                return Err(Http1Error::MultipleHost);
            }
            if !value.iter().all(|&b| is_host_byte(b)) {
                return Err(Http1Error::InvalidHost);
            }
            head.host = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    saw_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    saw_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_value.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    // `close` wins over `keep-alive` whatever their order; HTTP/1.0 closes by default.
    head.connection_close = saw_close || (version == Version::Http10 && !saw_keep_alive);

    if transfer_encoding {
        if version == Version::Http10 {
            return Err(Http1Error::TransferEncodingInHttp10);
        }
        if head.content_length.is_some() {
            return Err(Http1Error::ContentLengthAndTransferEncoding);
        }
        if !final_chunked {
            return Err(Http1Error::UnsupportedTransferEncoding);
        }
        head.chunked = true;
    }
    if connection_upgrade {
        head.upgrade = upgrade_value;
    }
    if target_form == TargetForm::Absolute {
        let (authority, _) = split_absolute(target).ok_or(Http1Error::InvalidTarget)?;
        match head.host {
            Some(host) if !same_authority(host, authority.as_bytes()) => {
                return Err(Http1Error::HostMismatch)
            }
            // The target names the authority: a proxy forwards it as `Host`.
            None => head.host = Some(authority.as_bytes()),
            _ => {}
        }
    } else if version == Version::Http11 && host_count == 0 {
        return Err(Http1Error::MissingHost);
    }
    Ok(Status::Complete(head, pos))
}

type RequestLine<'a> = (&'a str, &'a str, TargetForm, Version);

fn parse_request_line(line: &[u8]) -> Result<RequestLine<'_>, Http1Error> {
    let sp1 = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Http1Error::BadRequestLine)?;
    let method = &line[..sp1];
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Http1Error::InvalidMethod);
    }
    let rest = &line[sp1 + 1..];
    let sp2 = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Http1Error::BadRequestLine)?;
    let target = &rest[..sp2];
    let version = match &rest[sp2 + 1..] {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(Http1Error::UnsupportedVersion)
        }
        _ => return Err(Http1Error::BadRequestLine),
    };
    if target.is_empty() {
        return Err(Http1Error::BadRequestLine);
    }
    if !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Err(Http1Error::InvalidTarget);
    }
    let method = ascii_str(method);
    let target = ascii_str(target);
    let is_connect = method == "CONNECT";
    let form = if target.starts_with('/') {
        TargetForm::Origin
    } else if target == "*" {
        TargetForm::Asterisk
    } else if let Some((authority, rest)) = split_absolute(target) {
        if authority.is_empty()
            || authority.contains('@')
            || !authority.bytes().all(is_host_byte)
            || rest.starts_with('?')
        {
            return Err(Http1Error::InvalidTarget);
        }
        TargetForm::Absolute
    } else if is_connect && target.bytes().all(is_host_byte) && target.contains(':') {
        TargetForm::Authority
    } else {
        return Err(Http1Error::InvalidTarget);
    };
    let fits = match form {
        TargetForm::Authority => is_connect,
        TargetForm::Asterisk => method == "OPTIONS",
        TargetForm::Origin | TargetForm::Absolute => !is_connect,
    };
    if !fits {
        return Err(Http1Error::TargetFormMismatch);
    }
    Ok((method, target, form, version))
}

fn parse_header_line(line: &[u8]) -> Result<Header<'_>, Http1Error> {
    if is_ows(line[0]) {
        return Err(Http1Error::ObsFold);
    }
    let mut colon = None;
    for (i, &b) in line.iter().enumerate() {
        if b == b':' {
            colon = Some(i);
            break;
        }
        if !is_tchar(b) {
            return Err(if is_ows(b) {
                Http1Error::WhitespaceBeforeColon
            } else {
                Http1Error::InvalidHeaderName
            });
        }
    }
    let colon = colon.ok_or(Http1Error::InvalidHeaderName)?;
    if colon == 0 {
        return Err(Http1Error::InvalidHeaderName);
    }
    let value = &line[colon + 1..];
    if !value.iter().all(|&b| is_value_byte(b)) {
        return Err(Http1Error::InvalidHeaderValue);
    }
    Ok(Header {
        name: ascii_str(&line[..colon]),
        value: trim_ows(value),
    })
}

fn parse_content_length(value: &[u8], current: &mut Option<u64>) -> Result<(), Http1Error> {
    for element in value.split(|&b| b == b',').map(trim_ows) {
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err(Http1Error::InvalidContentLength);
        }
        let n = element.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let n = n.ok_or(Http1Error::InvalidContentLength)?;
        match current {
            Some(prev) if *prev != n => return Err(Http1Error::ConflictingContentLength),
            _ => *current = Some(n),
        }
    }
    Ok(())
}

/// Accumulates `Transfer-Encoding` codings over repeated fields: `final_chunked` is true when the
/// last coding seen is `chunked`. `chunked` followed by anything, or twice, is refused.
fn parse_transfer_encoding(value: &[u8], final_chunked: &mut bool) -> Result<(), Http1Error> {
    for coding in value.split(|&b| b == b',').map(trim_ows) {
        if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
            return Err(Http1Error::UnsupportedTransferEncoding);
        }
        if *final_chunked {
            // Something after `chunked`: the body framing would be ambiguous.
            return Err(Http1Error::UnsupportedTransferEncoding);
        }
        *final_chunked = coding.eq_ignore_ascii_case(b"chunked");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &[u8] = b"GET /v1/request-landing HTTP/1.1\r\nHost: deathstar.default.svc.cluster.local\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

    fn complete(buf: &[u8]) -> (RequestHead<'_>, usize) {
        match parse_request_head(buf) {
            Ok(Status::Complete(head, n)) => (head, n),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn parses_a_curl_request() {
        let (head, n) = complete(CURL);
        assert_eq!(n, CURL.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/v1/request-landing");
        assert_eq!(head.target_form, TargetForm::Origin);
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.host, Some(&b"deathstar.default.svc.cluster.local"[..]));
        assert_eq!(head.headers().len(), 3);
        assert_eq!(head.headers()[1].name, "User-Agent");
        assert_eq!(head.header("user-agent"), Some(&b"curl/8.5.0"[..]));
        assert_eq!(head.header("x-missing"), None);
        assert_eq!(head.content_length, None);
        assert!(!head.chunked && !head.connection_close && head.upgrade.is_none());
        assert_eq!(head.path_and_query(), "/v1/request-landing");
    }

    #[test]
    fn every_prefix_needs_more() {
        for len in 0..CURL.len() {
            assert_eq!(
                parse_request_head(&CURL[..len]).unwrap(),
                Status::NeedMore,
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn body_framing_and_connection() {
        struct Case {
            raw: &'static [u8],
            content_length: Option<u64>,
            chunked: bool,
            close: bool,
            upgrade: Option<&'static [u8]>,
            expect_continue: bool,
        }
        let cases = [
            Case {
                raw: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\nhello world!",
                content_length: Some(12),
                chunked: false,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\n",
                content_length: Some(5),
                chunked: false,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                content_length: None,
                chunked: true,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                content_length: None,
                chunked: true,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
                content_length: None,
                chunked: false,
                close: true,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"GET / HTTP/1.0\r\n\r\n",
                content_length: None,
                chunked: false,
                close: true,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                content_length: None,
                chunked: false,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
                content_length: None,
                chunked: false,
                close: true,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                content_length: None,
                chunked: false,
                close: false,
                upgrade: Some(b"websocket"),
                expect_continue: false,
            },
            Case {
                raw: b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
                content_length: None,
                chunked: false,
                close: false,
                upgrade: None,
                expect_continue: false,
            },
            Case {
                raw: b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-Continue\r\n\r\n",
                content_length: Some(0),
                chunked: false,
                close: false,
                upgrade: None,
                expect_continue: true,
            },
        ];
        for case in cases {
            let what = String::from_utf8_lossy(case.raw);
            let (head, _) = complete(case.raw);
            assert_eq!(head.content_length, case.content_length, "{what}");
            assert_eq!(head.chunked, case.chunked, "{what}");
            assert_eq!(head.connection_close, case.close, "{what}");
            assert_eq!(head.upgrade, case.upgrade, "{what}");
            assert_eq!(head.expect_continue, case.expect_continue, "{what}");
        }
    }

    #[test]
    fn accepted_forms() {
        let cases: &[(&[u8], &str, &str, TargetForm, usize)] /* trailing bytes after the head */ = &[
            (
                b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT",
                "GET",
                "/",
                TargetForm::Origin,
                4,
            ),
            (
                b"GET http://Deathstar:8080/v1?x=1 HTTP/1.1\r\nHost: deathstar:8080\r\n\r\n",
                "GET",
                "/v1?x=1",
                TargetForm::Absolute,
                0,
            ),
            (
                b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET",
                "/",
                TargetForm::Absolute,
                0,
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS",
                "*",
                TargetForm::Asterisk,
                0,
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                "CONNECT",
                "a:443",
                TargetForm::Authority,
                0,
            ),
            (
                b"get /x HTTP/1.1\r\nHost:\r\nX-Empty:\r\nX-Tabs:\t v\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
                "get",
                "/x",
                TargetForm::Origin,
                0,
            ),
        ];
        for &(raw, method, path, form, trailing) in cases {
            let what = String::from_utf8_lossy(raw);
            let (head, n) = complete(raw);
            assert_eq!(head.method, method, "{what}");
            assert_eq!(head.path_and_query(), path, "{what}");
            assert_eq!(head.target_form, form, "{what}");
            assert_eq!(n, raw.len() - trailing, "{what}");
        }
        let (head, _) = complete(cases[5].0);
        assert_eq!(head.header("x-tabs"), Some(&b"v"[..]));
        assert_eq!(head.header("x-empty"), Some(&b""[..]));
        assert_eq!(head.header("x-obs"), Some("café".as_bytes()));
        for req in [
            &b"GET http://a.b/ HTTP/1.1\r\n\r\n"[..],
            b"GET http://A.b:80/ HTTP/1.1\r\nHost: a.B\r\n\r\n",
            b"GET http://a.b/ HTTP/1.1\r\nHost: a.b:080\r\n\r\n",
        ] {
            let (head, _) = complete(req);
            assert!(head.host.is_some_and(
                |h| h.eq_ignore_ascii_case(b"a.b") || h.eq_ignore_ascii_case(b"a.b:080")
            ));
        }
        let (head, _) = complete(b"GET http://a.b/ HTTP/1.0\r\n\r\n");
        assert_eq!(head.host, Some(&b"a.b"[..]));
    }

    #[test]
    fn rejects_ambiguous_and_malformed_heads() {
        use Http1Error::*;
        let cases: &[(&[u8], Http1Error)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", BareLineEnding(14)),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", BareLineEnding(23)),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", InvalidHeaderValue),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", ObsFold),
            (b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", ObsFold),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", WhitespaceBeforeColon),
            (b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\n: a\r\n\r\n", InvalidHeaderName),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", InvalidHeaderName),
            (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidMethod),
            (b" / HTTP/1.1\r\nHost: a\r\n\r\n", InvalidMethod),
            (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", BadRequestLine),
            (b"GET /\r\n\r\n", BadRequestLine),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", UnsupportedVersion),
            (b"GET / http/1.1\r\nHost: a\r\n\r\n", BadRequestLine),
            (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", TargetFormMismatch),
            (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", TargetFormMismatch),
            (b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", InvalidTarget),
            (b"GET / HTTP/1.1\r\n\r\n", MissingHost),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", MultipleHost),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", InvalidHost),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", InvalidHost),
            (b"GET http://evil/ HTTP/1.1\r\nHost: good\r\n\r\n", HostMismatch),
            (b"GET http://good:81/ HTTP/1.1\r\nHost: good\r\n\r\n", HostMismatch),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", ConflictingContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", InvalidContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", UnsupportedTransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TransferEncodingInHttp10),
            // Early errors, before the head is complete.
            (b"\x16\x03\x01", InvalidMethod),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\tfold", ObsFold),
        ];
        for (raw, want) in cases {
            let got = parse_request_head(raw);
            assert_eq!(
                got.as_ref().err(),
                Some(want),
                "{:?} gave {got:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(error_status(want), 400);
        }
    }

    #[test]
    fn byte_classes_match_the_rfc_grammar() {
        const TCHARS: &[u8] =
            b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        const HOST: &[u8] =
            b"-._~%!$&'()*+,;=:[]0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for b in 0..=255u8 {
            assert_eq!(is_tchar(b), TCHARS.contains(&b), "tchar {b:#04x}");
            assert_eq!(is_host_byte(b), HOST.contains(&b), "host {b:#04x}");
            let value = b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80;
            assert_eq!(is_value_byte(b), value, "value {b:#04x}");
        }
    }

    #[test]
    fn enforces_limits() {
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let err = parse_request_head(&many).unwrap_err();
        assert_eq!(err, Http1Error::TooManyHeaders);
        assert_eq!(error_status(&err), 431);

        // Exactly MAX_HEADERS is fine.
        let mut max = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            max.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        max.extend_from_slice(b"\r\n");
        assert_eq!(complete(&max).0.headers().len(), MAX_HEADERS);

        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD_LEN, b'a');
        let err = parse_request_head(&big).unwrap_err();
        assert_eq!(err, Http1Error::HeadTooLarge);
        assert_eq!(error_status(&err), 431);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_request_head(&big).unwrap_err(),
            Http1Error::HeadTooLarge
        );

        // A head that ends exactly at the limit is accepted.
        let mut edge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        edge.resize(MAX_HEAD_LEN - 4, b'a');
        edge.extend_from_slice(b"\r\n\r\n");
        assert_eq!(complete(&edge).1, MAX_HEAD_LEN);

        let long_method = format!(
            "{} / HTTP/1.1\r\nHost: a\r\n\r\n",
            "A".repeat(MAX_METHOD_LEN + 1)
        );
        assert_eq!(
            parse_request_head(long_method.as_bytes()).unwrap_err(),
            Http1Error::InvalidMethod
        );
    }
}
