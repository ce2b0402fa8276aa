//! A small Kubernetes API server for tests: no kube-apiserver can be installed on these
//! machines, so the scenes run this one, over real HTTP/1.1, for the real kube-rs client of
//! `ward run --kubernetes` (and for `kubectl get --raw`).
//!
//! What it serves, for the resources in [`RESOURCES`]:
//! - LIST (`GET` a collection): `{kind}List` with `metadata.resourceVersion`, `limit` and
//!   `continue` paging, `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
//!   `k notin (a,b)`) and `fieldSelector` (`metadata.name`, `metadata.namespace`,
//!   `spec.nodeName`; `=`, `==`, `!=`), cluster-wide or in one namespace;
//! - GET of one object (404 `Status` when absent);
//! - WATCH (`watch=true`): chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//!   "object": …}` from `resourceVersion` on (an ERROR `Status` with code 410 `Expired` when that
//!   version is older than the last [`KubeApi::compact`]), BOOKMARK events when
//!   `allowWatchBookmarks` is set, ended after `timeoutSeconds`. An object that stops matching a
//!   watch's selectors is sent as DELETED, one that starts matching as ADDED, as the real server
//!   does.
//!
//! Faults, for tests: [`KubeApi::fail_next`] (429/500 with `Retry-After`), [`KubeApi::set_down`]
//! (every connection refused at once and open watches cut), [`KubeApi::drop_watches`] (streams cut
//! without their last chunk), [`KubeApi::compact`] (older versions answer 410), and
//! [`KubeApi::set_delay`] (every response late).
//!
//! Writes over HTTP: only Events (POST, and PATCH as a JSON merge patch), which Ward posts for
//! refused objects; tests read them with [`KubeApi::objects`].
//!
//! What it does not do: authentication, RBAC, admission, validation, defaulting, other writes
//! over HTTP (tests change objects through [`KubeApi::apply`] and [`KubeApi::delete`]), protobuf,
//! HTTP/2, server-side apply, `resourceVersionMatch`, consistent snapshots across `continue`
//! pages (a page is cut from the objects of the moment, by name), and watch caches per
//! resource (one version counter for everything, as etcd has).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One kind the server knows: its path segments, `apiVersion`, `kind` and scope.
#[derive(Clone, Copy, Debug)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kinds Ward watches, and Events.
pub const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Resource {
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        kind: "NetworkPolicy",
        namespaced: true,
    },
    Resource {
        group: "cilium.io",
        version: "v2",
        plural: "ciliumnetworkpolicies",
        kind: "CiliumNetworkPolicy",
        namespaced: true,
    },
    Resource {
        group: "cilium.io",
        version: "v2",
        plural: "ciliumclusterwidenetworkpolicies",
        kind: "CiliumClusterwideNetworkPolicy",
        namespaced: false,
    },
    // Written by Ward (refused objects), the one kind this server takes writes of.
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
    },
];

fn resource_of_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// One change, as watches see it.
#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    plural: &'static str,
    kind: &'static str,
    /// The object before the change (none for a creation).
    before: Option<Value>,
    /// The object after it (none for a deletion: then `before` is sent, at this version).
    after: Option<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    events: Vec<Event>,
    /// Watches from a version below this get 410.
    compacted: u64,
    uid: u64,
    /// Requests still to fail: (status, Retry-After seconds).
    failures: Vec<(u16, u32)>,
    down: bool,
    /// Bumped to cut every open watch.
    cut: u64,
    delay: Duration,
    /// Requests served, by method and path (with query), for tests.
    log: Vec<String>,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server. Dropping it stops accepting (open connections end with their streams).
pub struct KubeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl KubeApi {
    /// Serves on `listener` (bind it where the client can reach it, e.g. in a scene's node
    /// namespace) from threads of this process.
    pub fn serve(listener: TcpListener) -> KubeApi {
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changed: Condvar::new(),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let api = KubeApi { addr, shared, stop };
        api.serve_also(listener);
        api
    }

    /// Serves the same objects on another listener too (a second node's namespace).
    pub fn serve_also(&self, listener: TcpListener) {
        let (s, st) = (self.shared.clone(), self.stop.clone());
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        if s.lock().down {
                            // Refused as a server that is gone: closed at once.
                            drop(conn);
                            continue;
                        }
                        let s = s.clone();
                        std::thread::spawn(move || serve_conn(&s, conn));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }

    /// A kubeconfig for this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        Self::kubeconfig_at(self.addr)
    }

    /// A kubeconfig for this server reached at `addr` (see [`KubeApi::serve_also`]).
    pub fn kubeconfig_at(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            addr
        )
    }

    /// Creates or replaces an object (by `apiVersion`, `kind`, namespace and name). Sets its
    /// `resourceVersion`, `uid`, `creationTimestamp` and `generation`; returns the version.
    pub fn apply(&self, obj: Value) -> u64 {
        store_object(&self.shared, obj).0
    }

    /// The objects of `kind` (e.g. the Events Ward posted).
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let s = self.shared.lock();
        s.objects
            .iter()
            .filter(|(_, o)| o["kind"] == kind)
            .map(|(_, o)| o.clone())
            .collect()
    }
    /// Deletes an object; whether it was there.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let r = RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("kubeapi: unknown kind {kind}"));
        let ns = if r.namespaced { namespace } else { "" };
        let mut s = self.shared.lock();
        let Some(mut gone) = s
            .objects
            .remove(&(r.plural, ns.to_string(), name.to_string()))
        else {
            return false;
        };
        s.rv += 1;
        let rv = s.rv;
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.events.push(Event {
            rv,
            plural: r.plural,
            kind: r.kind,
            before: Some(gone),
            after: None,
        });
        drop(s);
        self.shared.changed.notify_all();
        true
    }

    /// The current version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Watches from any version up to now get 410 Gone (etcd compaction). The version moves on
    /// by one, so a client that lists again can watch from what the list says.
    pub fn compact(&self) {
        let mut s = self.shared.lock();
        s.rv += 1;
        s.compacted = s.rv;
        s.events.clear();
    }

    /// The next `n` requests get `status` (429, 500, …) with `Retry-After: retry_after_s`.
    pub fn fail_next(&self, n: usize, status: u16, retry_after_s: u32) {
        let mut s = self.shared.lock();
        s.failures
            .extend(std::iter::repeat_n((status, retry_after_s), n));
    }

    /// Down: every new connection is closed at once and open watches are cut. Up again: served.
    pub fn set_down(&self, down: bool) {
        let mut s = self.shared.lock();
        s.down = down;
        if down {
            s.cut += 1;
        }
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Cuts every open watch stream (without its last chunk), as a dropped connection.
    pub fn drop_watches(&self) {
        self.shared.lock().cut += 1;
        self.shared.changed.notify_all();
    }

    /// Every response waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.shared.lock().delay = d;
    }

    /// The requests served so far (`GET /path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().log.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.set_down(true);
    }
}

/// A parsed request path.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    query: BTreeMap<String, String>,
}

fn parse_target(path_query: &str) -> Option<Target> {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, Some(name.to_string())),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(name.to_string())),
        _ => return None,
    };
    // `namespaces/NAME` is the Namespace object itself.
    let (namespace, plural, name) = match (namespace, plural, name) {
        (Some(ns), p, None) if p != "namespaces" => (Some(ns), p, None),
        (Some(ns), "namespaces", None) => (None, "namespaces", Some(ns)),
        other => other,
    };
    let resource = RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)?;
    Some(Target {
        resource,
        namespace,
        name,
        query,
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One label selector requirement.
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_labels(sel: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    for term in split_top(sel) {
        let t = term.trim();
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("bad set in {t:?}"))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        if let Some(k) = t.strip_prefix('!') {
            out.push(Req::NotExists(k.trim().into()));
        } else if let Some((k, v)) = t.split_once("!=") {
            out.push(Req::Ne(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            out.push(Req::Eq(k.trim().into(), v.trim().into()));
        } else if let Some((k, rest)) = t.split_once(" notin ") {
            out.push(Req::NotIn(k.trim().into(), set(rest)?));
        } else if let Some((k, rest)) = t.split_once(" in ") {
            out.push(Req::In(k.trim().into(), set(rest)?));
        } else if !t.is_empty() {
            out.push(Req::Exists(t.into()));
        }
    }
    Ok(out)
}

fn labels_match(obj: &Value, reqs: &[Req]) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::Ne(k, v) => get(k) != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

fn parse_fields(sel: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    for t in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            (k, true, v)
        } else {
            return Err(format!("bad field selector term {t:?}"));
        };
        if !["metadata.name", "metadata.namespace", "spec.nodeName"].contains(&k.trim()) {
            return Err(format!("field label not supported: {}", k.trim()));
        }
        out.push((k.trim().to_string(), eq, v.trim().to_string()));
    }
    Ok(out)
}

fn fields_match(obj: &Value, reqs: &[(String, bool, String)]) -> bool {
    reqs.iter().all(|(k, eq, v)| {
        let mut cur = obj;
        for part in k.split('.') {
            cur = &cur[part];
        }
        let actual = cur.as_str().unwrap_or("");
        (actual == v) == *eq
    })
}

/// What a request selects.
struct Selection {
    namespace: Option<String>,
    labels: Vec<Req>,
    fields: Vec<(String, bool, String)>,
}

impl Selection {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && labels_match(obj, &self.labels)
            && fields_match(obj, &self.fields)
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn respond(
    conn: &mut TcpStream,
    code: u16,
    body: &Value,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("json");
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason_phrase(code),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body)?;
    conn.flush()
}

/// Serves one connection's requests (HTTP/1.1 keep-alive) until it closes or a watch ends.
fn serve_conn(shared: &Shared, conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (method, target) = match (parts.next(), parts.next()) {
            (Some(m), Some(t)) => (m.to_string(), t.to_string()),
            _ => return,
        };
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if content_length > 0 && reader.read_exact(&mut body).is_err() {
            return;
        }
        let (delay, failure) = {
            let mut s = shared.lock();
            s.log.push(format!("{method} {target}"));
            if s.down {
                return;
            }
            let f = (!s.failures.is_empty()).then(|| s.failures.remove(0));
            (s.delay, f)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some((code, retry)) = failure {
            let body = status(code, "TooManyRequests", "injected by the test");
            let sent = respond(
                &mut conn,
                code,
                &body,
                &[("Retry-After", retry.to_string())],
            );
            if sent.is_err() || close {
                return;
            }
            continue;
        }
        if method != "GET" {
            if write(shared, &mut conn, &method, &target, &body).is_err() || close {
                return;
            }
            continue;
        }
        let Some(t) = parse_target(&target) else {
            let sent = respond(
                &mut conn,
                404,
                &status(404, "NotFound", "no such path"),
                &[],
            );
            if sent.is_err() || close {
                return;
            }
            continue;
        };
        let watch = matches!(t.query.get("watch").map(String::as_str), Some("true" | "1"));
        let result = if watch {
            // A watch ends the connection (its stream has no length).
            let _ = watch_stream(shared, &mut conn, &t);
            return;
        } else if let Some(name) = &t.name {
            get_one(shared, &mut conn, &t, name)
        } else {
            list(shared, &mut conn, &t)
        };
        if result.is_err() || close {
            return;
        }
    }
}

/// POST (create) or PATCH (JSON merge patch) of an Event; anything else is refused.
fn write(
    shared: &Shared,
    conn: &mut TcpStream,
    method: &str,
    target: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let Some(t) = parse_target(target) else {
        return respond(conn, 404, &status(404, "NotFound", "no such path"), &[]);
    };
    if t.resource.plural != "events" {
        let body = status(
            405,
            "MethodNotAllowed",
            "this test server takes writes of Events only",
        );
        return respond(conn, 405, &body, &[]);
    }
    let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
        return respond(
            conn,
            400,
            &status(400, "BadRequest", "the body is not JSON"),
            &[],
        );
    };
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    let key = |name: &str| (t.resource.plural, ns.clone(), name.to_string());
    match (method, &t.name) {
        ("POST", None) => {
            obj["apiVersion"] = json!(t.resource.api_version());
            obj["kind"] = json!(t.resource.kind);
            obj["metadata"]["namespace"] = json!(ns);
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                let body = status(422, "Invalid", "metadata.name is required");
                return respond(conn, 422, &body, &[]);
            };
            if shared.lock().objects.contains_key(&key(&name)) {
                let body = status(409, "AlreadyExists", "the object exists");
                return respond(conn, 409, &body, &[]);
            }
            let (_, stored) = store_object(shared, obj);
            respond(conn, 201, &stored, &[])
        }
        ("PATCH", Some(name)) => {
            let Some(mut current) = shared.lock().objects.get(&key(name)).cloned() else {
                return respond(conn, 404, &status(404, "NotFound", "no such object"), &[]);
            };
            merge_patch(&mut current, &obj);
            let (_, stored) = store_object(shared, current);
            respond(conn, 200, &stored, &[])
        }
        _ => {
            let body = status(
                405,
                "MethodNotAllowed",
                "POST a collection or PATCH an object",
            );
            respond(conn, 405, &body, &[])
        }
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn selection(t: &Target) -> Result<Selection, String> {
    Ok(Selection {
        namespace: t.namespace.clone(),
        labels: parse_labels(t.query.get("labelSelector").map_or("", String::as_str))?,
        fields: parse_fields(t.query.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn get_one(shared: &Shared, conn: &mut TcpStream, t: &Target, name: &str) -> std::io::Result<()> {
    let ns = if t.resource.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let obj = shared
        .lock()
        .objects
        .get(&(t.resource.plural, ns, name.to_string()))
        .cloned();
    match obj {
        Some(o) => respond(conn, 200, &o, &[]),
        None => respond(
            conn,
            404,
            &status(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", t.resource.plural),
            ),
            &[],
        ),
    }
}

fn list(shared: &Shared, conn: &mut TcpStream, t: &Target) -> std::io::Result<()> {
    let sel = match selection(t) {
        Ok(s) => s,
        Err(e) => return respond(conn, 400, &status(400, "BadRequest", &e), &[]),
    };
    let limit: usize = t
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // The continue token is the (namespace, name) key of the last object sent.
    let after: Option<(String, String)> = t
        .query
        .get("continue")
        .filter(|c| !c.is_empty())
        .and_then(|c| c.split_once('/'))
        .map(|(a, b)| (a.to_string(), b.to_string()));
    let s = shared.lock();
    let mut items = Vec::new();
    let mut next = None;
    for ((plural, ns, name), obj) in &s.objects {
        if *plural != t.resource.plural || !sel.matches(obj) {
            continue;
        }
        if after
            .as_ref()
            .is_some_and(|(ans, aname)| (ns, name) <= (ans, aname))
        {
            continue;
        }
        if items.len() == limit {
            let last: &Value = items.last().expect("limit > 0");
            next = Some(format!(
                "{}/{}",
                last["metadata"]["namespace"].as_str().unwrap_or(""),
                last["metadata"]["name"].as_str().unwrap_or("")
            ));
            break;
        }
        items.push(obj.clone());
    }
    let rv = s.rv;
    drop(s);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        meta["continue"] = json!(c);
    }
    let body = json!({
        "kind": format!("{}List", t.resource.kind),
        "apiVersion": t.resource.api_version(),
        "metadata": meta,
        "items": items,
    });
    respond(conn, 200, &body, &[])
}

fn chunk(conn: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("json");
    line.push(b'\n');
    conn.write_all(format!("{:x}\r\n", line.len()).as_bytes())?;
    conn.write_all(&line)?;
    conn.write_all(b"\r\n")?;
    conn.flush()
}

/// How often a watch with bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

fn watch_stream(shared: &Shared, conn: &mut TcpStream, t: &Target) -> std::io::Result<()> {
    let sel = match selection(t) {
        Ok(s) => s,
        Err(e) => return respond(conn, 400, &status(400, "BadRequest", &e), &[]),
    };
    let from: u64 = t
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = t
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let until = t
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut s = shared.lock();
    let cut = s.cut;
    // Version 0 (or none): the current state as ADDED events first, as the real server does
    // for "any version".
    let mut sent = from;
    if from == 0 {
        let initial: Vec<Value> = s
            .objects
            .iter()
            .filter(|((p, _, _), o)| *p == t.resource.plural && sel.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        sent = s.rv;
        drop(s);
        for o in initial {
            chunk(conn, &json!({"type": "ADDED", "object": o}))?;
        }
        s = shared.lock();
    } else if from < s.compacted {
        drop(s);
        chunk(
            conn,
            &json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {from} ({})", shared.lock().compacted))}),
        )?;
        return conn.write_all(b"0\r\n\r\n");
    }
    let mut last_bookmark = Instant::now();
    loop {
        if s.cut != cut || s.down {
            // Cut: no terminating chunk, as a dropped connection.
            return Ok(());
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            drop(s);
            return conn.write_all(b"0\r\n\r\n");
        }
        let mut out = Vec::new();
        let base = sent;
        for e in s.events.iter().filter(|e| e.rv > base) {
            sent = e.rv;
            if e.plural != t.resource.plural {
                continue;
            }
            let was = e.before.as_ref().is_some_and(|o| sel.matches(o));
            let is = e.after.as_ref().is_some_and(|o| sel.matches(o));
            let ev = match (&e.after, was, is) {
                (Some(o), false, true) => json!({"type": "ADDED", "object": o}),
                (Some(o), true, true) => json!({"type": "MODIFIED", "object": o}),
                (Some(o), true, false) => json!({"type": "DELETED", "object": o}),
                (None, true, _) => {
                    json!({"type": "DELETED", "object": e.before.clone().expect("deleted")})
                }
                _ => continue,
            };
            let _ = e.kind;
            out.push(ev);
        }
        sent = sent.max(s.rv);
        let rv = s.rv;
        drop(s);
        for ev in out {
            chunk(conn, &ev)?;
        }
        if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
            chunk(
                conn,
                &json!({"type": "BOOKMARK", "object": {
                    "kind": t.resource.kind, "apiVersion": t.resource.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}}}),
            )?;
            last_bookmark = Instant::now();
        }
        s = shared.lock();
        if s.rv == rv && s.cut == cut && !s.down {
            let (g, _) = shared
                .changed
                .wait_timeout(s, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner());
            s = g;
        }
    }
}

/// Creates or replaces an object (see [`KubeApi::apply`]); returns its version and itself.
fn store_object(shared: &Shared, mut obj: Value) -> (u64, Value) {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let r = resource_of_kind(&api_version, &kind)
        .unwrap_or_else(|| panic!("kubeapi: unknown kind {api_version} {kind}"));
    let name = obj["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_string();
    let ns = if r.namespaced {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    let mut s = shared.lock();
    s.rv += 1;
    let rv = s.rv;
    let key = (r.plural, ns.clone(), name);
    let before = s.objects.get(&key).cloned();
    let meta = obj["metadata"].as_object_mut().expect("metadata object");
    if r.namespaced {
        meta.insert("namespace".into(), json!(ns));
    }
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    match &before {
        Some(b) => {
            for k in ["uid", "creationTimestamp"] {
                meta.insert(k.into(), b["metadata"][k].clone());
            }
            let g = b["metadata"]["generation"].as_u64().unwrap_or(1);
            meta.insert("generation".into(), json!(g + 1));
        }
        None => {
            s.uid += 1;
            meta.insert(
                "uid".into(),
                json!(format!("00000000-0000-4000-8000-{:012}", s.uid)),
            );
            meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
            meta.insert("generation".into(), json!(1));
        }
    }
    s.objects.insert(key, obj.clone());
    let stored = obj.clone();
    s.events.push(Event {
        rv,
        plural: r.plural,
        kind: r.kind,
        before,
        after: Some(obj),
    });
    drop(s);
    shared.changed.notify_all();
    (rv, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        let code = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
        (code, body)
    }

    fn pod(ns: &str, name: &str, node: &str, app: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node}})
    }

    #[test]
    fn lists_pages_selects_and_watches_from_a_version() {
        let api = KubeApi::serve(TcpListener::bind("127.0.0.1:0").unwrap());
        api.apply(pod("default", "a", "n1", "web"));
        api.apply(pod("default", "b", "n2", "web"));
        api.apply(pod("prod", "c", "n1", "db"));
        let (code, body) = get(api.addr, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["items"].as_array().unwrap().len(), 2);
        let (_, body) = get(
            api.addr,
            "/api/v1/namespaces/default/pods?labelSelector=app%20in%20(web,x)&limit=1",
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "a");
        assert_eq!(v["metadata"]["continue"], "default/a");
        let (_, body) = get(
            api.addr,
            "/api/v1/namespaces/default/pods?limit=1&continue=default/a",
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "b");
        assert!(v["metadata"].get("continue").is_none());
        // A watch from the list's version sees what changed after it, and ends on time.
        let rv = api.resource_version();
        api.apply(pod("default", "a", "n1", "db"));
        api.delete("Pod", "default", "b");
        let (_, body) = get(
            api.addr,
            &format!("/api/v1/pods?watch=true&labelSelector=app%3Dweb&resourceVersion={rv}&timeoutSeconds=1"),
        );
        // The relabelled pod left the selection: DELETED; then b: DELETED.
        assert_eq!(body.matches("\"DELETED\"").count(), 2, "{body}");
        api.compact();
        let (_, body) = get(
            api.addr,
            &format!("/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        );
        assert!(body.contains("\"code\":410"), "{body}");
        api.fail_next(1, 429, 2);
        let (code, _) = get(api.addr, "/api/v1/pods");
        assert_eq!(code, 429);
        let (code, body) = get(api.addr, "/apis/cilium.io/v2/ciliumnetworkpolicies");
        assert_eq!(code, 200);
        assert!(body.contains("CiliumNetworkPolicyList"));
    }
}
