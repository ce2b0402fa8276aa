//! The DNS end-to-end bench: dnsperf against dnsmasq, direct (L3/L4 only, a port without DNS
//! rules) vs through Ward's DNS proxy (a `rules.dns` port), in alternating rounds of one run;
//! added latency at a fixed 2,000 queries/s from an open-loop UDP client; the time Ward holds
//! answers while their `toFQDNs` addresses go into the maps (its histogram); CPU µs per query
//! of Ward and of dnsmasq.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use ward_tests::{in_netns, Scene, DNS_LISTENER};

use crate::bench::{cpu_seconds, median, pct};

/// Names the bench asks: each answers one address of its own, which a `toFQDNs` selector
/// selects, so the first answer for each name changes the maps.
const NAMES: u32 = 2000;

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: dns-client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns-server}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchPattern: "*.bench.test"}]
    - ports: [{port: "5353", protocol: UDP}, {port: "5353", protocol: TCP}]
  - toFQDNs: [{matchPattern: "*.bench.test"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;

/// The dnsperf rounds' names.
fn name(i: u32) -> String {
    format!("n{i}.bench.test")
}

/// The open loop's names: no dnsperf round asked them, so the first 2,000 queries of the run
/// through Ward each learn a new address at the loop's fixed rate.
fn fresh(i: u32) -> String {
    format!("m{i}.bench.test")
}

/// One query for `name` (A), id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// dnsperf's queries/s for `secs` against `server:port`. Over TCP with fewer queries in
/// flight: dnsmasq serves each TCP connection from a forked child. A run that prints no rate
/// (dnsperf over TCP sometimes stops when a server closes its connections) is tried again.
fn dnsperf(s: &Scene, dir: &str, server: &str, port: u16, tcp: bool, secs: u32) -> Result<f64> {
    let port = port.to_string();
    let secs = secs.to_string();
    let file = format!("{dir}/queries.txt");
    let mut args = vec![
        "dnsperf", "-s", server, "-p", &port, "-d", &file, "-l", &secs, "-c", "4",
    ];
    if tcp {
        args.extend_from_slice(&["-q", "20", "-m", "tcp"]);
    } else {
        args.extend_from_slice(&["-q", "200"]);
    }
    let mut last = String::new();
    for _ in 0..3 {
        let out = s.exec("client", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(qps) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Queries per second:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            return Ok(qps);
        }
        last = text
            .lines()
            .filter(|l| !l.contains("[Timeout]"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    bail!("dnsperf printed no rate three times:\n{last}")
}

/// Open loop: `rate` queries/s for `secs` from 8 sockets, each waiting for its answer; the
/// latency of each from when it was due, ms, sorted.
fn open_loop(
    netns: &str,
    server: SocketAddr,
    rate: u32,
    secs: u32,
    first: u32,
) -> Result<(Vec<f64>, u64)> {
    const SOCKS: u32 = 8;
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let lat = in_netns(netns, move || -> Result<(Vec<f64>, u64)> {
        let start = Instant::now() + Duration::from_millis(200);
        let handles: Vec<_> = (0..SOCKS)
            .map(|w| {
                std::thread::spawn(move || -> Result<(Vec<f64>, u64)> {
                    let sock = UdpSocket::bind("0.0.0.0:0")?;
                    sock.connect(server)?;
                    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 1500];
                    let mut out = Vec::new();
                    let mut lost = 0u64;
                    let mut i = w;
                    while i < total {
                        let due = start + interval * i;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let q = query(i as u16, &fresh((first + i) % NAMES));
                        sock.send(&q)?;
                        let answered = loop {
                            match sock.recv(&mut buf) {
                                Ok(n) if n >= 2 && buf[..2] == q[..2] => break true,
                                Ok(_) => {}
                                // UDP: no answer within the read timeout is a lost query,
                                // counted (a stub resolver would retry it).
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    break false
                                }
                                Err(e) => return Err(e.into()),
                            }
                        };
                        if answered {
                            out.push(due.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            lost += 1;
                        }
                        i += SOCKS;
                    }
                    Ok((out, lost))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut lost = 0;
        for h in handles {
            let (l, n) = h
                .join()
                .map_err(|_| anyhow::anyhow!("driver thread panicked"))??;
            all.extend(l);
            lost += n;
        }
        Ok((all, lost))
    })?;
    let (mut lat, lost) = lat;
    lat.sort_by(f64::total_cmp);
    // A few lost datagrams are UDP; more than 1 % is a fault worth failing the bench for.
    if lost * 100 > u64::from(total) {
        bail!("{lost} of {total} queries to {server} got no answer within 2 s");
    }
    Ok((lat, lost))
}

/// A metric's value from Ward's exposition text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A histogram's cumulative buckets (bound, count), sorted.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The bucket bound under which fraction `q` of a histogram's observations between two
/// scrapes fall, ms.
fn histogram_quantile_ms(before: &str, after: &str, name: &str, q: f64) -> f64 {
    let b = buckets(before, name);
    let buckets: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .map(|(le, c)| {
            let was = b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, c - was)
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(0.0, |(le, _)| le * 1000.0)
}

/// The `took_ms` of Ward's log lines that say `what`, sorted.
fn took_ms(log: &str, what: &str) -> Vec<f64> {
    let mut v: Vec<f64> = log
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let t = l.split("took_ms=").nth(1)?;
            t.split_whitespace().next()?.parse::<f64>().ok()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The DNS figures (`"dns"` in the report).
pub fn figures(smoke: bool) -> Result<serde_json::Value> {
    let (rounds, secs, rate_secs) = if smoke { (1, 1, 1) } else { (3, 6, 10) };
    let mut s = Scene::new("bdns");
    s.add_pod("client", "default", &[("role", "dns-client")]);
    let server = s.add_pod("dns", "default", &[("app", "dns-server")]);
    s.dns_listener = Some(DNS_LISTENER);
    let dir = s.dir.to_string_lossy().into_owned();
    let mut conf = format!(
        "port=53\nlisten-address={}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\nuser=root\n\
         cache-size=0\nlocal-ttl=300\npid-file={dir}/dnsmasq.pid\nlocal=/test/\n",
        server.ip
    );
    let mut queries = String::new();
    for i in 0..NAMES {
        conf.push_str(&format!(
            "host-record={},10.97.{}.{}\nhost-record={},10.96.{}.{}\n",
            name(i),
            i / 250,
            i % 250 + 1,
            fresh(i),
            i / 250,
            i % 250 + 1
        ));
        queries.push_str(&format!("{} A\n", name(i)));
    }
    std::fs::write(s.dir.join("dnsmasq.conf"), &conf)?;
    // The same server on 5353 too: the direct path (L3/L4 only).
    std::fs::write(
        s.dir.join("dnsmasq-direct.conf"),
        conf.replace("port=53\n", "port=5353\n")
            .replace("dnsmasq.pid", "dnsmasq-direct.pid"),
    )?;
    std::fs::write(s.dir.join("queries.txt"), &queries)?;
    for c in ["dnsmasq.conf", "dnsmasq-direct.conf"] {
        s.spawn_in(
            "dns",
            &[
                "dnsmasq",
                "--keep-in-foreground",
                &format!("--conf-file={dir}/{c}"),
            ],
            &format!("{c}.log"),
        );
    }
    s.write_policy("bench-dns.yaml", POLICY);
    s.start_ward();
    std::thread::sleep(Duration::from_millis(1500));
    let srv = server.ip.to_string();
    let probe = s.exec(
        "client",
        &["dig", &format!("@{srv}"), "+short", "+time=2", &name(1)],
    );
    if String::from_utf8_lossy(&probe.stdout).trim() != "10.97.0.2" {
        bail!(
            "the DNS scene does not answer: {}\n{}",
            String::from_utf8_lossy(&probe.stdout),
            s.ward_log()
        );
    }
    let ward_pid = s.ward_pid().context("ward pid")?;
    let dnsmasq_pid: u32 = std::fs::read_to_string(s.dir.join("dnsmasq.pid"))?
        .trim()
        .parse()?;
    let (mut direct, mut ward, mut direct_tcp, mut ward_tcp, mut ward_cpu, mut dnsmasq_cpu) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        direct.push(dnsperf(&s, &dir, &srv, 5353, false, secs)?);
        let (w0, d0) = (cpu_seconds(ward_pid), cpu_seconds(dnsmasq_pid));
        let qps = dnsperf(&s, &dir, &srv, 53, false, secs)?;
        let queries = qps * f64::from(secs);
        ward_cpu.push((cpu_seconds(ward_pid) - w0) * 1e6 / queries.max(1.0));
        dnsmasq_cpu.push((cpu_seconds(dnsmasq_pid) - d0) * 1e6 / queries.max(1.0));
        ward.push(qps);
        direct_tcp.push(dnsperf(&s, &dir, &srv, 5353, true, secs)?);
        ward_tcp.push(dnsperf(&s, &dir, &srv, 53, true, secs)?);
    }
    // Added latency at a fixed 2,000 queries/s, on names no round asked: through Ward, the
    // first second learns a new address per query (the answer→maps figure is taken over this
    // run alone; `burst_learn_p99_ms` is the dnsperf rounds' 150k-queries/s burst of new names).
    let netns = s.pod("client").netns.clone();
    let (d, d_lost) = open_loop(
        &netns,
        SocketAddr::from((server.ip, 5353)),
        2000,
        rate_secs,
        0,
    )?;
    let scrape = |s: &Scene| {
        String::from_utf8_lossy(
            &s.node(&[
                "curl",
                "-s",
                "--max-time",
                "3",
                "http://127.0.0.1:9962/metrics",
            ])
            .stdout,
        )
        .into_owned()
    };
    let before = scrape(&s);
    let (w, w_lost) = open_loop(
        &netns,
        SocketAddr::from((server.ip, 53)),
        2000,
        rate_secs,
        0,
    )?;
    // Again on the same names, all in the maps now: the proxy's own added latency.
    let after = scrape(&s);
    let (w2, w2_lost) = open_loop(
        &netns,
        SocketAddr::from((server.ip, 53)),
        2000,
        rate_secs,
        0,
    )?;
    let metrics = String::from_utf8_lossy(
        &s.node(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:9962/metrics",
        ])
        .stdout,
    )
    .into_owned();
    // How long the controller's full commits took (its log's `took_ms`): learned addresses
    // with known identities skip them, so these are the start and new learned identities.
    let log = s.ward_log();
    let commits = took_ms(&log, "policy applied");
    // And each batch of answers that changed the cache, from receipt to acks.
    let batches = took_ms(&log, "DNS answers learned");
    let json = serde_json::json!({
        "commits": commits.len(),
        "commit_p50_ms": pct(&commits, 0.50),
        "commit_p99_ms": pct(&commits, 0.99),
        "learn_batches": batches.len(),
        "learn_batch_p50_ms": pct(&batches, 0.50),
        "learn_batch_p99_ms": pct(&batches, 0.99),
        "direct_qps": median(direct.clone()),
        "ward_qps": median(ward.clone()),
        "ward_over_direct": median(ward) / median(direct).max(1.0),
        "direct_tcp_qps": median(direct_tcp.clone()),
        "ward_tcp_qps": median(ward_tcp.clone()),
        "ward_tcp_over_direct": median(ward_tcp) / median(direct_tcp).max(1.0),
        "lost_direct": d_lost,
        "lost_ward": w_lost + w2_lost,
        "direct_p50_us": pct(&d, 0.50) * 1000.0,
        "direct_p99_us": pct(&d, 0.99) * 1000.0,
        "ward_p50_added_us": (pct(&w2, 0.50) - pct(&d, 0.50)) * 1000.0,
        "ward_p99_added_us": (pct(&w2, 0.99) - pct(&d, 0.99)) * 1000.0,
        "learning_p50_added_us": (pct(&w, 0.50) - pct(&d, 0.50)) * 1000.0,
        "learning_p99_added_us": (pct(&w, 0.99) - pct(&d, 0.99)) * 1000.0,
        "learn_p99_ms": histogram_quantile_ms(&before, &after, "ward_dns_release_delay_seconds", 0.99),
        "learned_answers": metric(&after, "ward_dns_release_delay_seconds_count")
            - metric(&before, "ward_dns_release_delay_seconds_count"),
        "burst_learn_p99_ms": histogram_quantile_ms("", &before, "ward_dns_release_delay_seconds", 0.99),
        "max_delay_hits": metric(&metrics, "ward_dns_max_delay_hits_total"),
        "upstream_socket_errors": metrics
            .lines()
            .filter(|l| l.starts_with("ward_dns_upstream_socket_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b),
        "upstream_socket_errors_by_errno": metrics
            .lines()
            .filter(|l| l.starts_with("ward_dns_upstream_socket_errors_total"))
            .collect::<Vec<_>>()
            .join("; "),
        "ward_cpu_us_per_query": median(ward_cpu),
        "dnsmasq_cpu_us_per_query": median(dnsmasq_cpu),
    });
    drop(s);
    Ok(json)
}
