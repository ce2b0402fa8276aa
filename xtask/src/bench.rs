//! The end-to-end bench: requests through Ward vs direct (L3/L4 datapath only) vs nginx as a
//! reverse proxy with equivalent rules, side by side in one run, in alternating rounds.
//! Absolute numbers on a shared 2-core machine drift; the ratios are the result.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use ward_tests::{in_netns, Scene};

/// The upstream's fixed response body.
pub const BODY_BYTES: usize = 512;

pub struct Options {
    pub smoke: bool,
    /// Another `ward` build (say, the previous commit's) measured in the same HTTP/1.1 rounds:
    /// `ward run` is restarted with it and back in every round, so its figures sit beside the
    /// current build's in one run.
    pub baseline_bin: Option<std::path::PathBuf>,
}

/// Median of a list (empty → 0).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
}

fn parse_duration_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    for (suffix, f) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(n) = t.strip_suffix(suffix) {
            return n.trim().parse::<f64>().ok().map(|x| x * f);
        }
    }
    None
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut w = Wrk::default();
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse()?;
        } else if let Some(v) = l.strip_prefix("50%") {
            w.p50_ms = parse_duration_ms(v).unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("99%") {
            w.p99_ms = parse_duration_ms(v).unwrap_or(0.0);
        } else if l.contains("requests in") {
            w.requests = l
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0.0);
        }
    }
    if w.rps == 0.0 {
        bail!("could not read wrk output:\n{out}");
    }
    Ok(w)
}

/// CPU seconds (user + system) of a process and its direct children.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = |p: u32| -> Option<(f64, u32)> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = f.get(1)?.parse().ok()?;
        let ut: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        Some(((ut + st) / ticks, ppid))
    };
    let mut total = stat(pid).map_or(0.0, |(c, _)| c);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((c, ppid)) = stat(p) {
                    if ppid == pid {
                        total += c;
                    }
                }
            }
        }
    }
    total
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

const SERVER_NGINX: &str = r#"daemon off;
worker_processes 1;
pid DIR/server-nginx.pid;
error_log DIR/server-nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path DIR/s-body; proxy_temp_path DIR/s-proxy; fastcgi_temp_path DIR/s-fcgi;
    uwsgi_temp_path DIR/s-uwsgi; scgi_temp_path DIR/s-scgi;
    server { listen 80; listen 8080; location / { return 200 "BODY"; } }
    server { listen 81 http2; listen 8081 http2; location / { return 200 "BODY"; } }
}
"#;

const PROXY_NGINX: &str = r#"daemon off;
worker_processes 2;
pid DIR/proxy-nginx.pid;
error_log DIR/proxy-nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path DIR/p-body; proxy_temp_path DIR/p-proxy; fastcgi_temp_path DIR/p-fcgi;
    uwsgi_temp_path DIR/p-uwsgi; scgi_temp_path DIR/p-scgi;
    upstream backend { server SERVER:8080; keepalive 128; }
    server {
        listen 80;
        location ~ ^/bench/[a-z0-9]+$ {
            limit_except GET { deny all; }
            if ($http_x_bench != "1") { return 403 "Access denied\r\n"; }
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location / { return 403 "Access denied\r\n"; }
    }
}
"#;

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-http}
spec:
  endpointSelector: {matchLabels: {app: bench-server}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: bench-client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/bench/[a-z0-9]+"
          headers: ["X-Bench: 1"]
  - fromEndpoints: [{matchLabels: {role: bench-client}}, {matchLabels: {role: bench-proxy}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-grpc}
spec:
  endpointSelector: {matchLabels: {app: bench-grpc}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: bench-client}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        grpc:
        - {service: peers.Echo, method: Unary}
  - fromEndpoints: [{matchLabels: {role: bench-client}}]
    toPorts:
    - ports: [{port: "50052", protocol: TCP}]
"#;

const GRPC_SERVER_PY: &str = r#"import sys, grpc
from concurrent import futures
from grpc_tools import protoc
sys.path.insert(0, sys.argv[2])
import echo_pb2 as pb, echo_pb2_grpc as pbg
class Echo(pbg.EchoServicer):
    def Unary(self, req, ctx):
        return pb.EchoReply(message=req.message)
s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
pbg.add_EchoServicer_to_server(Echo(), s)
for a in sys.argv[1].split(","):
    s.add_insecure_port(a)
s.start(); s.wait_for_termination()
"#;

const ECHO_PROTO: &str = "syntax = \"proto3\";\npackage peers;\nmessage EchoRequest { string message = 1; }\nmessage EchoReply { string message = 1; }\nservice Echo { rpc Unary(EchoRequest) returns (EchoReply); }\n";

/// The whole report, as written to `target/bench/report.json`.
#[derive(Default)]
pub struct Report {
    json: serde_json::Map<String, serde_json::Value>,
    table: String,
}

fn exec_out(s: &Scene, pod: &str, args: &[&str]) -> Result<String> {
    let out = s.exec(pod, args);
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wrk(s: &Scene, url: &str, secs: u32, header: bool) -> Result<Wrk> {
    let d = format!("{secs}s");
    let mut args = vec!["wrk", "-t2", "-c64", "-d", &d, "--latency"];
    if header {
        args.extend_from_slice(&["-H", "X-Bench: 1"]);
    }
    args.push(url);
    parse_wrk(&exec_out(s, "client", &args)?)
}

fn h2load_rps(s: &Scene, args: &[&str]) -> Result<f64> {
    let mut full = vec!["h2load"];
    full.extend_from_slice(args);
    let out = exec_out(s, "client", &full)?;
    let line = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .with_context(|| format!("no h2load summary:\n{out}"))?;
    let rps = line
        .split(',')
        .find(|p| p.contains("req/s"))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read req/s from {line}"))?;
    if let Some(req) = out
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
    {
        if !req.contains(" 0 failed") || !req.contains(" 0 errored") {
            bail!("h2load saw failures: {req}");
        }
    }
    Ok(rps)
}

/// Open-loop constant-rate driver: `rate` requests/s for `secs`, over `conns` keep-alive
/// connections, latency measured from each request's scheduled send time (no coordinated
/// omission). Returns sorted latencies in milliseconds.
fn open_loop(
    netns: &str,
    addr: SocketAddr,
    path: &'static str,
    rate: u32,
    secs: u32,
) -> Result<Vec<f64>> {
    const CONNS: u32 = 8;
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let netns = netns.to_string();
    let lat = in_netns(&netns, move || -> Result<Vec<f64>> {
        let start = Instant::now() + Duration::from_millis(200);
        let handles: Vec<_> = (0..CONNS)
            .map(|w| {
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nX-Bench: 1\r\n\r\n");
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; 8192];
                    let mut i = w;
                    while i < total {
                        let due = start + interval * i;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        stream.write_all(req.as_bytes())?;
                        read_response(&mut stream, &mut buf).with_context(|| {
                            format!("request {i} of the {rate}/s loop to {addr}{path}")
                        })?;
                        out.push(due.elapsed().as_secs_f64() * 1000.0);
                        i += CONNS;
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("driver thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    let mut lat = lat;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> Result<()> {
    let mut have = 0usize;
    loop {
        let n = stream.read(&mut buf[have..])?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let need = (end + 4 + len).min(buf.len());
            while have < need {
                let n = stream.read(&mut buf[have..need])?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                have += n;
            }
            return Ok(());
        }
        if have == buf.len() {
            bail!("response head too large");
        }
    }
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs the end-to-end bench and writes `target/bench/report.json`.
/// Extra policy files present while the watching is measured (a node with many policies).
const POLICY_FILES: usize = 100;

/// For each way of watching: restarts Ward with it, changes a policy file `changes` times and
/// reads, from `ward status`, the time from each file's modification to the maps written;
/// then Ward's CPU while nothing changes.
fn policy_watch_figures(
    s: &mut Scene,
    changes: usize,
    idle: Duration,
) -> Result<serde_json::Value> {
    for i in 0..POLICY_FILES {
        s.write_policy(
            &format!("filler-{i:03}.yaml"),
            &format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: filler-{i}, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: nothing-{i}}}}}\n  ingress: [{{fromEndpoints: [{{}}]}}]\n"
            ),
        );
    }
    let config = std::fs::read_to_string(s.config_path())?;
    let mut out = serde_json::Map::new();
    for mode in ["inotify", "poll"] {
        std::fs::write(s.config_path(), format!("{config}policy_watch: {mode}\n"))?;
        s.stop_ward();
        s.start_ward();
        std::thread::sleep(Duration::from_millis(500));
        let last_apply = |s: &Scene| -> Result<serde_json::Value> {
            let o = s.ward_cli(&["status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                .with_context(|| format!("ward status: {}", String::from_utf8_lossy(&o.stderr)))?;
            Ok(v["last_apply"].clone())
        };
        let mut took = Vec::new();
        for i in 0..changes {
            let before = last_apply(s)?["time"].clone();
            s.write_policy(
                "watch.yaml",
                &format!(
                    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: watch, namespace: default}}\nspec:\n  endpointSelector: {{matchLabels: {{app: bench-server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{role: bench-client}}}}]\n    toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
                    9000 + i
                ),
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let a = last_apply(s)?;
                if a["time"] != before {
                    if let Some(ms) = a["change_to_maps_ms"].as_f64() {
                        took.push(ms);
                        break;
                    }
                }
                if std::time::Instant::now() > deadline {
                    bail!("{mode}: policy change {i} not applied within 10 s");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // Changes a human makes are seconds apart; let this one settle.
            std::thread::sleep(Duration::from_millis(300));
        }
        let pid = s.ward_pid().context("ward pid")?;
        let c0 = cpu_seconds(pid);
        std::thread::sleep(idle);
        let cpu = (cpu_seconds(pid) - c0) * 1000.0 / idle.as_secs_f64();
        let max = took.iter().copied().fold(0.0, f64::max);
        out.insert(
            mode.into(),
            serde_json::json!({
                "change_to_maps_ms_median": median(took.clone()),
                "change_to_maps_ms_max": max,
                "idle_cpu_ms_per_s": cpu,
                "changes": took,
            }),
        );
    }
    std::fs::write(s.config_path(), config)?;
    s.stop_ward();
    s.start_ward();
    std::thread::sleep(Duration::from_millis(500));
    Ok(serde_json::Value::Object(out))
}

pub fn run(
    opts: &Options,
    peers_python: &std::path::Path,
    out_dir: &std::path::Path,
) -> Result<Report> {
    let (rounds, secs, rate_secs) = if opts.smoke { (1, 1, 1) } else { (5, 8, 20) };
    let mut s = Scene::new("bench");
    s.add_pod("server", "default", &[("app", "bench-server")]);
    s.add_pod("client", "default", &[("role", "bench-client")]);
    s.add_pod("proxy", "default", &[("role", "bench-proxy")]);
    s.add_pod("grpc", "default", &[("app", "bench-grpc")]);
    let dir = s.dir.to_string_lossy().into_owned();
    let body = "x".repeat(BODY_BYTES);
    let server_ip = s.pod("server").ip;
    let grpc_ip = s.pod("grpc").ip;
    let proxy_ip = s.pod("proxy").ip;
    std::fs::write(
        s.dir.join("server.conf"),
        SERVER_NGINX.replace("DIR", &dir).replace("BODY", &body),
    )?;
    std::fs::write(
        s.dir.join("proxy.conf"),
        PROXY_NGINX
            .replace("DIR", &dir)
            .replace("SERVER", &server_ip.to_string()),
    )?;
    let server_conf = format!("{dir}/server.conf");
    let proxy_conf = format!("{dir}/proxy.conf");
    s.spawn_in("server", &["nginx", "-c", &server_conf], "server-nginx.log");
    s.spawn_in("proxy", &["nginx", "-c", &proxy_conf], "proxy-nginx.log");
    // gRPC echo server (grpcio, C core) on 50051 (through Ward) and 50052 (direct).
    let gen = s.dir.join("gen");
    std::fs::create_dir_all(&gen)?;
    std::fs::write(gen.join("echo.proto"), ECHO_PROTO)?;
    let protoc = Command::new(peers_python)
        .args([
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "echo.proto",
        ])
        .current_dir(&gen)
        .output()?;
    if !protoc.status.success() {
        bail!("protoc: {}", String::from_utf8_lossy(&protoc.stderr));
    }
    std::fs::write(s.dir.join("grpc_server.py"), GRPC_SERVER_PY)?;
    let py = peers_python.to_string_lossy().into_owned();
    let gen_s = gen.to_string_lossy().into_owned();
    s.spawn_in(
        "grpc",
        &[
            &py,
            &format!("{dir}/grpc_server.py"),
            "0.0.0.0:50051,0.0.0.0:50052",
            &gen_s,
        ],
        "grpc.log",
    );
    for (pod, port) in [
        ("server", 80),
        ("server", 8080),
        ("proxy", 80),
        ("grpc", 50051),
        ("grpc", 50052),
    ] {
        s.wait_port(pod, port);
    }
    // gRPC request body: EchoRequest{message: "load"} in a length-prefixed message.
    let msg = [0x0a, 0x04, b'l', b'o', b'a', b'd'];
    let mut frame = vec![0u8, 0, 0, 0, msg.len() as u8];
    frame.extend_from_slice(&msg);
    std::fs::write(s.dir.join("unary.grpcbody"), &frame)?;

    s.start_ward();
    s.write_policy("bench.yaml", POLICY);
    std::thread::sleep(Duration::from_millis(1500));
    let mut ward_pid = s.ward_pid().context("ward pid")?;
    let proxy_pid = *s.pids_in("proxy").first().context("nginx proxy pid")?;

    // Sanity: each path answers as expected before measuring.
    let check = |s: &Scene, url: &str, want: &str| -> Result<()> {
        let got = exec_out(
            s,
            "client",
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "X-Bench: 1",
                "--max-time",
                "3",
                url,
            ],
        )?;
        if got != want {
            bail!(
                "{url}: HTTP {got}, expected {want}; ward log:\n{}",
                s.ward_log()
            );
        }
        Ok(())
    };
    let direct_url = format!("http://{server_ip}:8080/bench/x");
    let ward_url = format!("http://{server_ip}:80/bench/x");
    let nginx_url = format!("http://{proxy_ip}:80/bench/x");
    let deny_url = format!("http://{server_ip}:80/denied");
    check(&s, &direct_url, "200")?;
    check(&s, &ward_url, "200")?;
    check(&s, &nginx_url, "200")?;
    check(&s, &deny_url, "403")?;

    let mut direct = Vec::new();
    let mut ward = Vec::new();
    let mut nginx = Vec::new();
    let mut deny = Vec::new();
    let mut ward_cpu = Vec::new();
    let mut nginx_cpu = Vec::new();
    let mut baseline = Vec::new();
    let mut baseline_cpu = Vec::new();
    let current_bin = std::env::var_os("WARD_BIN").context("WARD_BIN")?;
    for round in 0..rounds {
        eprintln!("bench: round {}/{rounds}", round + 1);
        direct.push(wrk(&s, &direct_url, secs, true)?);
        let c0 = cpu_seconds(ward_pid);
        let w = wrk(&s, &ward_url, secs, true)?;
        ward_cpu.push((cpu_seconds(ward_pid) - c0) / w.requests.max(1.0) * 1e6);
        ward.push(w);
        if let Some(bin) = &opts.baseline_bin {
            for (which, b) in [(bin.as_os_str(), true), (current_bin.as_os_str(), false)] {
                std::env::set_var("WARD_BIN", which);
                s.stop_ward();
                s.start_ward();
                std::thread::sleep(Duration::from_millis(1000));
                check(&s, &ward_url, "200")?;
                ward_pid = s.ward_pid().context("ward pid")?;
                if b {
                    let c0 = cpu_seconds(ward_pid);
                    let w = wrk(&s, &ward_url, secs, true)?;
                    baseline_cpu.push((cpu_seconds(ward_pid) - c0) / w.requests.max(1.0) * 1e6);
                    baseline.push(w);
                }
            }
        }
        let c0 = cpu_seconds(proxy_pid);
        let n = wrk(&s, &nginx_url, secs, true)?;
        nginx_cpu.push((cpu_seconds(proxy_pid) - c0) / n.requests.max(1.0) * 1e6);
        nginx.push(n);
        deny.push(wrk(&s, &deny_url, secs, true)?);
    }
    let med = |v: &[Wrk], f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
    let direct_rps = med(&direct, |w| w.rps);
    let ward_rps = med(&ward, |w| w.rps);
    let nginx_rps = med(&nginx, |w| w.rps);
    let deny_rps = med(&deny, |w| w.rps);

    // HTTP/2 (h2load) and gRPC unary, direct vs through Ward.
    let n = if opts.smoke { "2000" } else { "100000" };
    let mut h2_direct = Vec::new();
    let mut h2_ward = Vec::new();
    let mut grpc_direct = Vec::new();
    let mut grpc_ward = Vec::new();
    let body_file = format!("{dir}/unary.grpcbody");
    for _ in 0..rounds {
        let h2 = |port: u16| {
            let url = format!("http://{server_ip}:{port}/bench/h2");
            h2load_rps(
                &s,
                &[
                    "-n",
                    n,
                    "-c",
                    "16",
                    "-m",
                    "10",
                    "-t",
                    "1",
                    "-H",
                    "x-bench: 1",
                    &url,
                ],
            )
        };
        h2_direct.push(h2(8081)?);
        h2_ward.push(h2(81)?);
        let g = |port: u16| {
            let url = format!("http://{grpc_ip}:{port}/peers.Echo/Unary");
            let gn = if opts.smoke { "500" } else { "20000" };
            h2load_rps(
                &s,
                &[
                    "-n",
                    gn,
                    "-c",
                    "4",
                    "-m",
                    "10",
                    "-t",
                    "1",
                    "-d",
                    &body_file,
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    &url,
                ],
            )
        };
        grpc_direct.push(g(50052)?);
        grpc_ward.push(g(50051)?);
    }

    // Fixed-rate latency: 1,000 req/s, direct vs through Ward.
    let client_ns = s.pod("client").netns.clone();
    let lat_direct = open_loop(
        &client_ns,
        SocketAddr::from((server_ip, 8080)),
        "/bench/x",
        1000,
        rate_secs,
    )?;
    let lat_ward = open_loop(
        &client_ns,
        SocketAddr::from((server_ip, 80)),
        "/bench/x",
        1000,
        rate_secs,
    )?;
    let added = |p: f64| (pct(&lat_ward, p) - pct(&lat_direct, p)).max(0.0);

    // From a policy file change to the maps written, and the idle CPU of noticing it, for
    // each way of watching (the node reports both in `ward status`).
    let watch = if opts.smoke {
        policy_watch_figures(&mut s, 2, Duration::from_secs(1))?
    } else {
        policy_watch_figures(&mut s, 10, Duration::from_secs(10))?
    };
    ward_pid = s.ward_pid().context("ward pid")?;
    let rss = rss_mb(ward_pid);
    // Flows the flow log dropped under this load (its queue full): the CPU figure is only
    // honest if Ward wrote a flow for every request.
    let metrics = s.node(&[
        "curl",
        "-s",
        "--max-time",
        "3",
        "http://127.0.0.1:9962/metrics",
    ]);
    let flows_lost = String::from_utf8_lossy(&metrics.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("ward_flows_lost_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("ward_flows_lost_total missing from Ward's metrics")?;
    // The DNS proxy, in a scene of its own.
    let dns = crate::bench_dns::figures(opts.smoke)?;
    // Kubernetes mode against the test API server, in a scene of its own.
    let kubernetes = crate::bench_kube::figures(opts.smoke)?;
    // The Kafka proxy, in a scene of its own.
    let kafka = crate::bench_kafka::figures(opts.smoke, peers_python)?;
    let json = serde_json::json!({
        "dns": dns,
        "kafka": kafka,
        "kubernetes": kubernetes,
        "http1": {
            "direct_rps": direct_rps,
            "ward_rps": ward_rps,
            "nginx_rps": nginx_rps,
            "ward_deny_rps": deny_rps,
            "ward_over_direct": ward_rps / direct_rps,
            "ward_over_nginx": ward_rps / nginx_rps,
            "deny_over_allow": deny_rps / ward_rps,
            "ward_cpu_us_per_req": median(ward_cpu.clone()),
            "nginx_cpu_us_per_req": median(nginx_cpu.clone()),
            "direct_p50_ms": med(&direct, |w| w.p50_ms),
            "direct_p99_ms": med(&direct, |w| w.p99_ms),
            "ward_p50_ms": med(&ward, |w| w.p50_ms),
            "ward_p99_ms": med(&ward, |w| w.p99_ms),
            "nginx_p50_ms": med(&nginx, |w| w.p50_ms),
            "nginx_p99_ms": med(&nginx, |w| w.p99_ms),
            "ward_p50_added_ms_at_1k": added(0.50),
            "ward_p99_added_ms_at_1k": added(0.99),
            "ward_p999_added_ms_at_1k": added(0.999),
            "ward_rss_mb": rss,
            "ward_flows_lost": flows_lost,
            "baseline_rps": med(&baseline, |w| w.rps),
            "baseline_over_nginx": med(&baseline, |w| w.rps) / nginx_rps,
            "baseline_cpu_us_per_req": median(baseline_cpu.clone()),
        },
        "h2": {
            "direct_rps": median(h2_direct.clone()),
            "ward_rps": median(h2_ward.clone()),
            "ward_over_direct": median(h2_ward) / median(h2_direct).max(1.0),
        },
        "policy_watch": watch,
        "grpc": {
            "direct_rps": median(grpc_direct.clone()),
            "ward_rps": median(grpc_ward.clone()),
            "ward_over_direct": median(grpc_ward) / median(grpc_direct).max(1.0),
        },
        "machine": machine(),
        "rounds": rounds,
        "seconds_per_run": secs,
        "smoke": opts.smoke,
    });
    let mut table = String::new();
    let h = &json["http1"];
    let _ = writeln!(table, "{:<44} {:>12}", "figure", "value");
    for (k, label) in [
        ("direct_rps", "HTTP/1.1 direct (L3/L4 only), req/s"),
        ("ward_rps", "HTTP/1.1 through Ward (L7 allow), req/s"),
        ("nginx_rps", "HTTP/1.1 through nginx (rules), req/s"),
        ("ward_deny_rps", "HTTP/1.1 Ward local 403, req/s"),
        ("ward_over_direct", "Ward / direct"),
        ("ward_over_nginx", "Ward / nginx"),
        ("deny_over_allow", "Ward deny / Ward allow"),
        ("ward_cpu_us_per_req", "Ward CPU µs per request"),
        ("nginx_cpu_us_per_req", "nginx CPU µs per request"),
        ("ward_p99_ms", "Ward p99 latency under load, ms"),
        ("ward_p50_added_ms_at_1k", "added p50 at 1k req/s, ms"),
        ("ward_p99_added_ms_at_1k", "added p99 at 1k req/s, ms"),
        ("ward_p999_added_ms_at_1k", "added p99.9 at 1k req/s, ms"),
        ("ward_rss_mb", "Ward RSS, MB"),
        ("ward_flows_lost", "flows Ward could not log (queue full)"),
        (
            "baseline_over_nginx",
            "baseline build (--baseline-bin) / nginx",
        ),
        (
            "baseline_cpu_us_per_req",
            "baseline build CPU µs per request",
        ),
    ] {
        let _ = writeln!(table, "{label:<44} {:>12.3}", h[k].as_f64().unwrap_or(0.0));
    }
    for proto in ["h2", "grpc"] {
        let p = &json[proto];
        let _ = writeln!(
            table,
            "{:<44} {:>12.3}",
            format!(
                "{proto}: Ward / direct ({:.0} / {:.0} req/s)",
                p["ward_rps"].as_f64().unwrap_or(0.0),
                p["direct_rps"].as_f64().unwrap_or(0.0)
            ),
            p["ward_over_direct"].as_f64().unwrap_or(0.0)
        );
    }
    dns_table(&mut table, &json["dns"]);
    crate::bench_kube::table(&mut table, &json["kubernetes"]);
    crate::bench_kafka::table(&mut table, &json["kafka"]);
    for mode in ["inotify", "poll"] {
        let m = &json["policy_watch"][mode];
        let _ = writeln!(
            table,
            "{:<44} {:>12.1}",
            format!("policy change → maps, {mode}: median ms"),
            m["change_to_maps_ms_median"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            table,
            "{:<44} {:>12.1}",
            format!("policy change → maps, {mode}: max ms"),
            m["change_to_maps_ms_max"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            table,
            "{:<44} {:>12.3}",
            format!("idle CPU watching {} files, {mode}: ms/s", POLICY_FILES),
            m["idle_cpu_ms_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    std::fs::create_dir_all(out_dir)?;
    let name = if opts.smoke {
        "report-smoke.json"
    } else {
        "report.json"
    };
    std::fs::write(out_dir.join(name), serde_json::to_string_pretty(&json)?)?;
    drop(s);
    let serde_json::Value::Object(json) = json else {
        unreachable!("built as an object")
    };
    Ok(Report { json, table })
}

/// The DNS rows of the table.
pub(crate) fn dns_table(table: &mut String, d: &serde_json::Value) {
    for (k, label) in [
        ("direct_qps", "DNS/UDP direct (dnsperf), queries/s"),
        ("ward_qps", "DNS/UDP through Ward, queries/s"),
        ("ward_over_direct", "DNS/UDP Ward / direct"),
        ("ward_tcp_over_direct", "DNS/TCP Ward / direct"),
        ("ward_p50_added_us", "DNS added p50 at 2k q/s, µs"),
        ("ward_p99_added_us", "DNS added p99 at 2k q/s, µs"),
        (
            "learning_p50_added_us",
            "  … while learning 2k new names/s, p50 µs",
        ),
        (
            "learning_p99_added_us",
            "  … while learning 2k new names/s, p99 µs",
        ),
        (
            "learn_p99_ms",
            "DNS answer → maps at 2k new names/s, p99 ≤ ms",
        ),
        (
            "burst_learn_p99_ms",
            "DNS answer → maps, dnsperf burst, p99 ≤ ms",
        ),
        ("commit_p99_ms", "DNS scene: full policy commits p99, ms"),
        (
            "learn_batch_p99_ms",
            "DNS learning: answers → acks per batch p99, ms",
        ),
        ("max_delay_hits", "DNS answers released before the maps"),
        ("upstream_socket_errors", "DNS upstream socket errors"),
        ("ward_cpu_us_per_query", "Ward CPU µs per DNS query"),
        ("dnsmasq_cpu_us_per_query", "dnsmasq CPU µs per DNS query"),
    ] {
        let _ = writeln!(table, "{label:<44} {:>12.3}", d[k].as_f64().unwrap_or(0.0));
    }
}

impl Report {
    pub fn table(&self) -> &str {
        &self.table
    }
    pub fn get(&self, section: &str, key: &str) -> f64 {
        self.json
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    }
}

fn machine() -> serde_json::Value {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    serde_json::json!({"cores": cores, "kernel": kernel, "date": date})
}
