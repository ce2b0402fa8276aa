//! Request-path normalisation, the way Cilium's Envoy does it before HTTP rules run
//! (`normalize_path: true` + `merge_slashes: true`, MAIN:`pkg/envoy/xds_server.go`).
//!
//! Envoy canonicalises the path with a snapshot of Chromium's URL path canonicaliser, then merges
//! slashes. [`normalize`] reproduces that on the path part of an origin-form request target:
//!
//! 1. percent-encodings of *unreserved* characters (`ALPHA DIGIT - . _ ~`) are decoded; every other
//!    percent-encoding is kept, with its hex digits upper-cased (`%2f` → `%2F`, so an encoded slash
//!    stays an encoded slash — turning it into a real one is the proxy's business);
//! 2. a backslash is a path separator (Chromium's `IsURLSlash`), so `\` becomes `/`;
//! 3. the characters Chromium escapes in paths (`"`, `<`, `>`, `` ` ``, `{`, `}`) are
//!    percent-encoded;
//! 4. dot-segments (`.`, `..`, also when spelled `%2E`) are removed as in RFC 3986 §5.2.4; `..`
//!    above the root stays at the root;
//! 5. runs of `/` are merged into one.
//!
//! The query (from the first `?`) is re-attached verbatim. A fragment (`#`), a control character,
//! a space, a non-ASCII byte or a malformed percent-encoding is an error: such a target is not
//! valid on the wire, and a proxy that guessed would risk disagreeing with the upstream.

use std::borrow::Cow;

/// Longest request target accepted, in bytes. The HTTP/1 head limit bounds it in practice; this
/// bounds callers that feed paths from elsewhere (HTTP/2 `:path`, the rule tester).
pub const MAX_PATH_LEN: usize = 64 * 1024;

/// Why a request path was refused. All are the client's fault (answer `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is empty.
    #[error("empty request path")]
    Empty,
    /// The target is longer than [`MAX_PATH_LEN`].
    #[error("request path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The target neither starts with `/` nor is `*`.
    #[error("request path must start with '/' (or be '*')")]
    NotOriginForm,
    /// The target carries a fragment, which clients must not send.
    #[error("request path contains a fragment ('#') at byte {0}")]
    Fragment(usize),
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    BadPercentEncoding(usize),
    /// `%00`: Envoy's path canonicaliser refuses an encoded NUL (400), and a backend written
    /// in C could cut the path there.
    #[error("encoded NUL (%00) in request path at byte {0}")]
    EncodedNul(usize),
    /// A control character, space, DEL or non-ASCII byte.
    #[error("invalid character 0x{byte:02x} in request path at byte {at}")]
    InvalidChar {
        /// The offending byte.
        byte: u8,
        /// Its offset in the target.
        at: usize,
    },
}

/// Normalises the path part of `path_and_query` (see the module docs) and re-attaches the query
/// verbatim. Returns `Cow::Borrowed` when the input is already normal.
///
/// ```
/// use parsers::path::normalize;
/// assert_eq!(normalize("/a/./b/../c//d%7e?x=/../").unwrap(), "/a/c/d~?x=/../");
/// assert!(matches!(normalize("/already/normal?q").unwrap(), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn normalize(path_and_query: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path_and_query.as_bytes();
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if bytes == b"*" {
        return Ok(Cow::Borrowed(path_and_query));
    }
    if bytes[0] != b'/' {
        return Err(PathError::NotOriginForm);
    }
    let path_end = bytes.iter().position(|&b| b == b'?').unwrap_or(bytes.len());
    // The query is not normalised, but it must still be a valid piece of a request target.
    for (i, &b) in bytes.iter().enumerate().skip(path_end) {
        check_char(b, i)?;
    }
    let path = &bytes[..path_end];
    if !needs_work(path)? {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let decoded = decode(path)?;
    let mut out = remove_dot_segments_and_merge(&decoded);
    out.extend_from_slice(&bytes[path_end..]);
    // Every byte pushed is ASCII: checked input bytes, upper-case hex digits, '%' or '/'.
    let out = String::from_utf8(out).expect("normalised path is ASCII");
    if out == path_and_query {
        Ok(Cow::Borrowed(path_and_query))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Rejects bytes that can never appear in a request target (and `#`).
fn check_char(b: u8, at: usize) -> Result<(), PathError> {
    match b {
        b'#' => Err(PathError::Fragment(at)),
        0..=0x20 | 0x7f..=0xff => Err(PathError::InvalidChar { byte: b, at }),
        _ => Ok(()),
    }
}

/// Characters Chromium's path canonicaliser percent-encodes.
fn must_escape(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'`' | b'{' | b'}')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Validates the path and says whether any rewriting could be needed (the fast path of the
/// common, already-normal case does no allocation).
fn needs_work(path: &[u8]) -> Result<bool, PathError> {
    let mut work = false;
    // Length of the current segment, and whether it is made only of dots so far.
    let mut seg_len = 0usize;
    let mut seg_dots = true;
    for (i, &b) in path.iter().enumerate() {
        check_char(b, i)?;
        match b {
            b'/' => {
                // "//", "/./" and "/../" need rewriting; the first byte is always '/'.
                if i > 0 && (seg_len == 0 || (seg_dots && seg_len <= 2)) {
                    work = true;
                }
                seg_len = 0;
                seg_dots = true;
            }
            b'%' | b'\\' => work = true,
            // `..;x` / `.;x`: a dot segment with parameters, which some backends (Tomcat) read
            // as `..`; Envoy strips the parameters from such segments.
            b';' if seg_dots && (1..=2).contains(&seg_len) => work = true,
            b if must_escape(b) => work = true,
            b => {
                seg_len += 1;
                seg_dots &= b == b'.';
            }
        }
    }
    // A trailing "/." or "/.." segment.
    if seg_len > 0 && seg_dots && seg_len <= 2 {
        work = true;
    }
    Ok(work)
}

/// Step 1–3: percent-decoding of unreserved characters, hex upper-casing, `\` → `/`, escaping.
fn decode(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (hi, lo) = match (path.get(i + 1), path.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadPercentEncoding(i)),
                };
                let value = match (hex_val(hi), hex_val(lo)) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(PathError::BadPercentEncoding(i)),
                };
                if value == 0 {
                    return Err(PathError::EncodedNul(i));
                }
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        hi.to_ascii_uppercase(),
                        lo.to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
            b'\\' => out.push(b'/'),
            b if must_escape(b) => {
                out.extend_from_slice(&[
                    b'%',
                    HEX_UPPER[usize::from(b >> 4)],
                    HEX_UPPER[usize::from(b & 0xf)],
                ]);
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// Step 4–5: RFC 3986 §5.2.4 dot-segment removal on the decoded path (empty segments count as
/// segments, as in Envoy where slashes are merged only after canonicalisation), then slash merge.
fn remove_dot_segments_and_merge(path: &[u8]) -> Vec<u8> {
    debug_assert!(path.first() == Some(&b'/'));
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in path[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        // A dot segment with parameters counts as the dot segment (parameters dropped).
        let seg = match seg.iter().position(|&b| b == b';') {
            Some(i) if matches!(&seg[..i], b"." | b"..") => &seg[..i],
            _ => seg,
        };
        match seg {
            b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    if trailing_slash {
        segments.push(b"");
    }
    let mut out = Vec::with_capacity(path.len());
    out.push(b'/');
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(seg);
    }
    out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    out
}

/// Envoy's `UNESCAPE_AND_REDIRECT` for escaped slashes: when the path part contains `%2F` or
/// `%5C` (any case), the client is redirected to the path with them unescaped, and that path is
/// what policy finally sees. Returns the unescaped and re-normalised path, or `None` when there
/// is nothing to unescape.
pub fn unescape_slashes(path_and_query: &str) -> Option<Result<String, PathError>> {
    let (path, query) = match path_and_query.find('?') {
        Some(q) => path_and_query.split_at(q),
        None => (path_and_query, ""),
    };
    let bytes = path.as_bytes();
    let escaped_slash = |i: usize| {
        bytes[i] == b'%'
            && matches!(
                (
                    bytes.get(i + 1),
                    bytes.get(i + 2).map(u8::to_ascii_lowercase)
                ),
                (Some(b'2'), Some(b'f')) | (Some(b'5'), Some(b'c'))
            )
    };
    // The common case allocates nothing.
    if !(0..bytes.len()).any(escaped_slash) {
        return None;
    }
    let mut out = String::with_capacity(path_and_query.len());
    let mut i = 0;
    while i < bytes.len() {
        if escaped_slash(i) {
            out.push('/');
            i += 3;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out.push_str(query);
    Some(normalize(&out).map(std::borrow::Cow::into_owned))
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaped_slashes_are_unescaped_and_renormalised() {
        assert_eq!(
            super::unescape_slashes("/public/..%2Fadmin")
                .unwrap()
                .unwrap(),
            "/admin"
        );
        assert_eq!(
            super::unescape_slashes("/a%5cb?x=%2F").unwrap().unwrap(),
            "/a/b?x=%2F"
        );
        assert!(super::unescape_slashes("/plain/path?q=%2F").is_none());
    }

    use super::*;

    #[test]
    fn normalises_like_envoy() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("*", "*"),
            ("/public", "/public"),
            ("/public?x=1", "/public?x=1"),
            ("/a/b/", "/a/b/"),
            // dot-segments
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/...", "/a/..."),
            ("/a/..b/.c", "/a/..b/.c"),
            // merged slashes, merged after dot-segment removal
            ("//", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/a//../b", "/a/b"),
            ("/a/..//b", "/b"),
            ("//public/../admin", "/admin"),
            // percent-encoding
            ("/%7euser", "/~user"),
            ("/%41%42%2d%2E%5f%7E", "/AB-._~"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/a%3fb?c", "/a%3Fb?c"),
            // no double decoding
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/%2525", "/%2525"),
            // dot segments with parameters (Envoy's strip_dotdot_segments_with_parameters)
            ("/public/..;x/admin", "/admin"),
            ("/public/.;x/a", "/public/a"),
            ("/public/..;/admin", "/admin"),
            ("/a;b/c", "/a;b/c"),
            ("/a/...;x", "/a/...;x"),
            // overlong UTF-8 is not a dot
            ("/%c0%ae%c0%ae/a", "/%C0%AE%C0%AE/a"),
            // backslash is a separator
            ("/a\\b", "/a/b"),
            ("/public\\..\\admin", "/admin"),
            // escaped characters
            ("/a{b}", "/a%7Bb%7D"),
            ("/\"<>`", "/%22%3C%3E%60"),
            // query kept verbatim
            ("/a/../b?x=/../y//z&%7e", "/b?x=/../y//z&%7e"),
            ("/a?", "/a?"),
            ("/a??b", "/a??b"),
            ("/p:@!$&'()*+,;=", "/p:@!$&'()*+,;="),
        ];
        for &(input, want) in cases {
            let got = normalize(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(got, want, "normalize({input:?})");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                input == want,
                "borrowed iff unchanged for {input:?}"
            );
            // Idempotent.
            assert_eq!(normalize(&got).unwrap(), got, "idempotent for {input:?}");
        }
    }

    #[test]
    fn rejects_invalid_targets() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("a/b", PathError::NotOriginForm),
            ("http://x/", PathError::NotOriginForm),
            ("**", PathError::NotOriginForm),
            ("/a#frag", PathError::Fragment(2)),
            ("/a?b#frag", PathError::Fragment(4)),
            ("/%zz", PathError::BadPercentEncoding(1)),
            ("/%4", PathError::BadPercentEncoding(1)),
            ("/a%", PathError::BadPercentEncoding(2)),
            ("/%g0", PathError::BadPercentEncoding(1)),
            ("/a b", PathError::InvalidChar { byte: b' ', at: 2 }),
            ("/a\tb", PathError::InvalidChar { byte: b'\t', at: 2 }),
            ("/a\x7f", PathError::InvalidChar { byte: 0x7f, at: 2 }),
            ("/a?b c", PathError::InvalidChar { byte: b' ', at: 4 }),
            ("/é", PathError::InvalidChar { byte: 0xc3, at: 1 }),
            ("/a\0", PathError::InvalidChar { byte: 0, at: 2 }),
            ("/a%00", PathError::EncodedNul(2)),
            ("/public/x%00.html", PathError::EncodedNul(9)),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(*want), "normalize({input:?})");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(normalize(&long), Err(PathError::TooLong));
    }
}
