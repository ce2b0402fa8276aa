//! The HTTP/1 gate: a layer between a client connection and hyper that reads every request
//! head first with the strict sans-IO parser ([`parsers::http1`]).
//!
//! It refuses what a lenient reader might take two ways, before hyper parses anything: bare LF
//! line endings, obs-fold, whitespace before a colon, control bytes in a value, conflicting or
//! malformed `Content-Length`, `Transfer-Encoding` with `Content-Length` or ending in anything but
//! `chunked`, several `Host` headers, an absolute-form target naming another authority than
//! `Host`. hyper alone would pick one reading of some of these (it drops `Content-Length` next to
//! `Transfer-Encoding`); Envoy refuses them. A refused head gets `400` (`431` for size limits)
//! after the responses hyper still owes, and the connection closes with a log line.
//!
//! Envoy's HTTP/1 codec accepts every visible ASCII byte in a request target, and clients send
//! JSON or raw `"`, `<`, `>` in query strings. The `http` crate behind hyper refuses `"`, `<` and
//! `>` in a query and `<`, `>` and `` ` `` in a path, so such a request would get 400 although
//! Cilium passes it. The gate finds each request head (with the strict sans-IO parser,
//! [`parsers::http1`]) and percent-encodes those four bytes in its target before hyper parses
//! it. In the path that is what normalisation does anyway (Envoy's canonicaliser escapes them);
//! in the query a backend decodes `%22` as `"`. The rewritten target is what the rules judge
//! and what goes upstream.
//!
//! To find the next head it follows each request's body framing (`Content-Length` or chunked),
//! as hyper does. Whatever it does not follow — an HTTP/2 preface, an upgrade or CONNECT, a
//! malformed chunk, a connection cut mid-head — switches it to passing bytes through untouched
//! for the rest of the connection, leaving every decision to hyper and the proxy: the gate only
//! ever rewrites those four bytes inside a target it parsed, or refuses a whole head.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use parsers::http1::{error_status, parse_request_head, websocket_only, Http1Error, MAX_HEAD_LEN};
use parsers::Status;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::info;

/// The HTTP/2 connection preface (prior knowledge), which the gate does not follow.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest chunk-size or trailer line followed; longer switches the gate to pass-through.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes read from the client at a time while looking for a head.
const READ_CHUNK: usize = 16 * 1024;

/// Where the gate is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head is next.
    Head,
    /// This many bytes of a `Content-Length` body remain.
    Body(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of chunk data (and its CRLF) remain.
    ChunkData(u64),
    /// Trailer lines until an empty one.
    Trailers,
    /// Not followed: bytes pass untouched from here on.
    Pass,
    /// A head was refused: hyper reads the end of the stream; the answer waits for shutdown.
    Refused,
}

/// A client connection whose request targets are made acceptable to hyper (see the module).
pub struct Gated<S> {
    inner: S,
    state: State,
    /// Bytes read from the client, not yet classified.
    pending: Vec<u8>,
    /// Bytes ready for hyper, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    /// No head has been seen yet (an HTTP/2 preface can only come first).
    at_start: bool,
    /// The answer to a refused head, and how much of it is written.
    refusal: Option<(Vec<u8>, usize)>,
    /// How much of a pending head has been searched for its end.
    head_scanned: usize,
    /// The pending head's request line was whole and parsed.
    line_checked: bool,
    /// A request head begun must be whole within this (slowloris): hyper's own header
    /// timeout never starts while the gate holds a partial head back from it.
    head_timeout: Option<std::time::Duration>,
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Gated<S> {
    /// A partial request head held longer than `timeout` ends the connection.
    pub fn with_head_timeout(mut self, timeout: std::time::Duration) -> Gated<S> {
        self.head_timeout = Some(timeout);
        self
    }

    pub fn new(inner: S) -> Gated<S> {
        Gated {
            inner,
            state: State::Head,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            at_start: true,
            refusal: None,
            head_scanned: 0,
            head_timeout: None,
            head_deadline: None,
            line_checked: false,
        }
    }

    /// Stops feeding hyper (it sees the end of the stream after what it already has) and
    /// keeps the answer for when hyper shuts the connection down.
    fn refuse(&mut self, e: Http1Error) {
        let status = error_status(&e);
        let phrase = if status == 431 {
            "Request Header Fields Too Large"
        } else {
            "Bad Request"
        };
        info!(error = %e, status, "request head refused; closing the connection");
        let body = "Bad request\r\n";
        let answer = format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        self.refusal = Some((answer.into_bytes(), 0));
        self.pending.clear();
        self.eof = true;
        self.state = State::Refused;
    }

    /// Classifies the bytes at the front of `data` (the gate's state moves past them).
    fn step(&mut self, data: &[u8]) -> Step {
        match self.state {
            State::Pass => Step::Keep(data.len()),
            State::Refused => Step::Drop(data.len()),
            State::Head
                if self.at_start && {
                    let n = data.len().min(H2_PREFACE.len());
                    data[..n] == H2_PREFACE[..n]
                } =>
            {
                if data.len() < H2_PREFACE.len() && !self.eof {
                    return Step::NeedMore;
                }
                self.state = State::Pass;
                Step::Keep(data.len())
            }
            // Parse when the request line is whole (a malformed one, HTTP/0.9 among them, is
            // refused at once) and when the head's end has arrived, not at every byte: a
            // client trickling a head must not make each byte cost a parse of all before it.
            State::Head
                if !self.eof && data.len() < MAX_HEAD_LEN && {
                    // The end spans at most 3 bytes: look again from 2 before where the last
                    // look stopped.
                    let from = self.head_scanned.saturating_sub(2).min(data.len());
                    let tail = &data[from..];
                    let line_now = !self.line_checked && tail.contains(&b'\n');
                    let ended = has_head_end(tail);
                    self.head_scanned = data.len();
                    !(line_now || ended)
                } =>
            {
                Step::NeedMore
            }
            State::Head => {
                let parsed = parse_request_head(data);
                if matches!(parsed, Ok(Status::NeedMore)) && data.len() < MAX_HEAD_LEN && !self.eof
                {
                    self.line_checked = true;
                    return Step::NeedMore;
                }
                self.head_scanned = 0;
                self.line_checked = false;
                self.head_step(data, parsed)
            }

            State::Body(left) | State::ChunkData(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::Body(_), 0) => State::Head,
                    (State::Body(_), _) => State::Body(left),
                    (_, 0) => State::ChunkSize,
                    _ => State::ChunkData(left),
                };
                Step::Keep(n)
            }
            State::ChunkSize | State::Trailers => {
                let Some(lf) = data.iter().position(|&b| b == b'\n') else {
                    if data.len() > MAX_CHUNK_LINE || self.eof {
                        self.state = State::Pass;
                        return Step::Keep(data.len());
                    }
                    return Step::NeedMore;
                };
                // hyper ends chunk-size and trailer lines at CRLF only: a bare LF would put
                // the gate and hyper at different places, so the rest is not followed.
                let Some(line) = data[..lf].strip_suffix(b"\r") else {
                    return Step::Refuse(Http1Error::BareLineEnding(lf));
                };
                self.state = if self.state == State::Trailers {
                    if line.is_empty() {
                        State::Head
                    } else {
                        State::Trailers
                    }
                } else {
                    match chunk_size(line) {
                        Some(0) => State::Trailers,
                        // The data, then its CRLF.
                        Some(size) => State::ChunkData(size.saturating_add(2)),
                        None => State::Pass,
                    }
                };
                Step::Keep(lf + 1)
            }
        }
    }

    /// The step for a head the strict parser has read (`parsed`), or refused.
    fn head_step(
        &mut self,
        data: &[u8],
        parsed: Result<Status<parsers::http1::RequestHead<'_>>, Http1Error>,
    ) -> Step {
        match parsed {
            // A fragment is never sent by a client (RFC 9112 §3.2); Envoy refuses it
            // (`http_reject_path_with_fragment`) where the `http` crate would drop it.
            Ok(Status::Complete(head, _)) if head.target.contains('#') => {
                Step::Refuse(Http1Error::InvalidTarget)
            }
            Ok(Status::Complete(head, n)) => {
                self.at_start = false;
                // A tunnel the proxy may open (the proxy's own test, `websocket_only`); if
                // it does not open, the proxy closes the connection after its answer.
                let passes = (head.upgrade.is_some()
                    && websocket_only(head.header_values("upgrade")))
                    || head.method == "CONNECT";
                self.state = if passes {
                    State::Pass
                } else if head.chunked {
                    State::ChunkSize
                } else {
                    match head.content_length {
                        Some(0) | None => State::Head,
                        Some(len) => State::Body(len),
                    }
                };
                let target = head.target;
                if !target.bytes().any(needs_escape) {
                    return Step::Keep(n);
                }
                let start = target.as_ptr() as usize - data.as_ptr() as usize;
                let end = start + target.len();
                let mut head_bytes = Vec::with_capacity(n + 16);
                head_bytes.extend_from_slice(&data[..start]);
                for &b in &data[start..end] {
                    if needs_escape(b) {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        head_bytes.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(b >> 4)],
                            HEX[usize::from(b & 0xf)],
                        ]);
                    } else {
                        head_bytes.push(b);
                    }
                }
                head_bytes.extend_from_slice(&data[end..n]);
                Step::Rewrite(head_bytes, n)
            }
            // Cut short by the end of the stream: hyper reports it.
            Ok(Status::NeedMore) if self.eof => {
                self.state = State::Pass;
                Step::Keep(data.len())
            }
            Ok(Status::NeedMore) => Step::Refuse(Http1Error::HeadTooLarge),
            Err(e) => Step::Refuse(e),
        }
    }

    /// Moves what can be classified from `pending` to `out`.
    fn process(&mut self) {
        let mut at = 0;
        while at < self.pending.len() {
            let data = std::mem::take(&mut self.pending);
            let step = self.step(&data[at..]);
            self.pending = data;
            match step {
                Step::Keep(n) => {
                    self.out.extend_from_slice(&self.pending[at..at + n]);
                    at += n;
                }
                Step::Rewrite(head, n) => {
                    self.out.extend_from_slice(&head);
                    at += n;
                }
                Step::Drop(n) => at += n,
                Step::NeedMore => break,
                Step::Refuse(e) => {
                    self.refuse(e);
                    return;
                }
            }
        }
        self.pending.drain(..at);
    }
}

/// What the gate does with the bytes at the front of what it has.
enum Step {
    /// Hand these bytes to hyper as they are.
    Keep(usize),
    /// A head: hand over these bytes in its place.
    Rewrite(Vec<u8>, usize),
    /// Swallow them (after a refusal).
    Drop(usize),
    /// Not enough to tell yet.
    NeedMore,
    /// Refuse the head.
    Refuse(Http1Error),
}

/// The empty line that ends a head (CRLF CRLF, or a bare LF the strict parser refuses).
fn has_head_end(data: &[u8]) -> bool {
    data.windows(2).any(|w| w == b"\n\n") || data.windows(3).any(|w| w == b"\n\r\n")
}

/// Bytes of a request target the `http` crate refuses and Envoy accepts.
fn needs_escape(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>' | b'`')
}

/// The size of a chunk-size line (`1a;ext=x`), if it is one.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.pending.is_empty() {
                // The common case costs no copy: read straight into hyper's buffer and
                // classify there; only a head to rewrite or refuse, or one cut across reads,
                // moves to the gate's own buffer.
                let before = buf.filled().len();
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                }
                let filled = buf.filled().len();
                if filled == before {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let mut at = before;
                while at < filled {
                    let (state, at_start) = (this.state, this.at_start);
                    match this.step(&buf.filled()[at..filled]) {
                        Step::Keep(n) => at += n,
                        _ => {
                            // Classified again from the gate's buffer, from where the state
                            // was before this step.
                            (this.state, this.at_start) = (state, at_start);
                            this.pending.extend_from_slice(&buf.filled()[at..filled]);
                            buf.set_filled(at);
                            break;
                        }
                    }
                }
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.process();
                if at > before {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // A partial head is held back from hyper: it must be whole in time.
            if this.state == State::Head {
                if let (None, Some(t)) = (&this.head_deadline, this.head_timeout) {
                    this.head_deadline = Some(Box::pin(tokio::time::sleep(t)));
                }
            }
            // Read more behind what is pending, then classify.
            let len = this.pending.len();
            this.pending.resize(len + READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut this.pending[len..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.pending.truncate(len + n);
            match polled {
                Poll::Ready(Ok(())) => {
                    if n == 0 {
                        this.eof = true;
                    }
                    this.process();
                    if this.eof {
                        // Whatever is left goes to hyper as it is.
                        this.out.append(&mut this.pending);
                    }
                    if this.pending.is_empty() || this.state != State::Head {
                        this.head_deadline = None;
                    }
                }
                Poll::Pending => {
                    if let Some(deadline) = this.head_deadline.as_mut() {
                        if std::future::Future::poll(deadline.as_mut(), cx).is_ready() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request head not complete within http.header_timeout_ms",
                            )));
                        }
                    }
                    return Poll::Pending;
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A refused head's answer goes after everything hyper wrote.
        if let Some((answer, sent)) = &mut this.refusal {
            while *sent < answer.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &answer[*sent..]) {
                    Poll::Ready(Ok(0)) => break,
                    Poll::Ready(Ok(n)) => *sent += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn ambiguous_heads_are_refused_after_what_came_before() {
        for (input, status) in [
            (&b"GET / HTTP/1.1\nHost: s\n\n"[..], "400"),
            (b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
            (b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: xchunked\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: s\r\n folded\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            (b"GET /public/x#/../../admin HTTP/1.1\r\nHost: s\r\n\r\n", "400"),
            // HTTP/0.9: refused as soon as its line is whole, not left waiting for a head end.
            (b"GET /admin\r\n", "400"),
        ] {
            // An allowed request first: hyper gets it whole, and nothing of the refused one.
            let mut all = b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\n".to_vec();
            all.extend_from_slice(input);
            let out = through(&all, 4).await;
            assert_eq!(out, b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\n", "{}", String::from_utf8_lossy(input));
            // The answer is written when hyper shuts the connection down.
            let (client, server) = tokio::io::duplex(4096);
            let mut gated = Gated::new(server);
            let (mut client_read, mut client_write) = tokio::io::split(client);
            client_write.write_all(input).await.unwrap();
            let mut sink = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(n) = gated.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.extend_from_slice(&buf[..n]);
            }
            assert!(sink.is_empty());
            gated.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client_read.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert!(answer.contains("connection: close"));
        }
    }

    /// What hyper reads through the gate when the client writes `input` in pieces of `step`
    /// (hyper's reads: 7 bytes at a time, then 8 KiB, as hyper's own buffer does).
    async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let small = through_with(input, step, 7).await;
        let large = through_with(input, step, 8192).await;
        assert_eq!(small, large, "the read size changed what hyper sees");
        small
    }

    async fn through_with(input: &[u8], step: usize, read: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for piece in input.chunks(step) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut gated = Gated::new(server);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            match gated.read(&mut buf).await.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn targets_are_escaped_and_bodies_are_not() {
        let input: &[u8] = b"GET /a?q={\"x\":[1]}&b=<c> HTTP/1.1\r\nHost: s\r\n\r\n\
POST /p`x HTTP/1.1\r\nHost: s\r\nContent-Length: 12\r\n\r\nGET /\"<> ...\
POST /c HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\n<\"<>>\r\n0\r\nX-T: \"\r\n\r\n\
GET /after?\"z\" HTTP/1.1\r\nHost: s\r\n\r\n";
        let want: &[u8] = b"GET /a?q={%22x%22:[1]}&b=%3Cc%3E HTTP/1.1\r\nHost: s\r\n\r\n\
POST /p%60x HTTP/1.1\r\nHost: s\r\nContent-Length: 12\r\n\r\nGET /\"<> ...\
POST /c HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\n<\"<>>\r\n0\r\nX-T: \"\r\n\r\n\
GET /after?%22z%22 HTTP/1.1\r\nHost: s\r\n\r\n";
        // A clean head first, then one to rewrite that has a body: read in one go, the
        // second is classified again from the gate's buffer from the state before it.
        let input2: &[u8] =
            b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\nPOST /p`x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\n<\"x\">";
        let want2: &[u8] =
            b"GET /ok HTTP/1.1\r\nHost: s\r\n\r\nPOST /p%60x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\n<\"x\">";
        assert_eq!(
            String::from_utf8_lossy(&through(input2, input2.len()).await),
            String::from_utf8_lossy(want2)
        );
        for step in [1, 3, 17, input.len()] {
            assert_eq!(
                String::from_utf8_lossy(&through(input, step).await),
                String::from_utf8_lossy(want),
                "step {step}"
            );
        }
    }

    #[tokio::test]
    async fn what_the_gate_does_not_follow_passes_untouched() {
        for input in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\"<>"[..],
            b"GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nGET /\"<> HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /\"<> HTTP/1.1\r\n\r\n",
            b"GET /<",
        ] {
            assert_eq!(through(input, 5).await, input, "{}", String::from_utf8_lossy(input));
        }
    }
}
