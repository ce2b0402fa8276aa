//! Kubernetes mode's bench, against the test API server (`ward_tests::kubeapi`): the time from
//! a policy object's change on the API server to the maps written, over many changes with many
//! policies in force; and Ward's memory per 10,000 watched pods of other nodes.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use ward_tests::kubeapi::KubeApi;
use ward_tests::{in_netns, Scene};

use crate::bench::pct;

/// A CNP selecting the `app: a` pod, allowing `app: b` on port `port`.
fn cnp(i: usize, port: u16) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "a"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "b"}}],
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]
            }]
        }
    })
}

/// Another node's pod (one of 100 label sets, as deployments share labels).
fn remote_pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("r{i}"), "namespace": "default",
            "labels": {"app": format!("d{}", i % 100)}},
        "spec": {"nodeName": "node-2"},
        "status": {"phase": "Running",
            "podIP": format!("10.128.{}.{}", i / 250, i % 250 + 1)}
    })
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn wait_ready(s: &Scene, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let out = s.node(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "http://127.0.0.1:9962/readyz",
        ]);
        if out.stdout == b"200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("ward did not become ready:\n{}", s.ward_log())
}

/// Follows Ward's log: counts the `policy applied` lines written since the last call.
struct LogTail {
    file: std::fs::File,
    pos: u64,
}

impl LogTail {
    fn open(s: &Scene) -> Result<LogTail> {
        let mut file = std::fs::File::open(s.dir.join("ward.log"))?;
        let pos = file.seek(SeekFrom::End(0))?;
        Ok(LogTail { file, pos })
    }

    fn applied(&mut self) -> Result<usize> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut new = String::new();
        self.file.read_to_string(&mut new)?;
        self.pos += new.len() as u64;
        Ok(new.matches("policy applied").count())
    }
}

/// The figures (`"kubernetes"` in the report).
pub fn figures(smoke: bool) -> Result<Value> {
    let (policies, changes, pods) = if smoke {
        (50, 10, 1_000)
    } else {
        (1_000, 100, 10_000)
    };
    let mut s = Scene::new("bkube");
    s.add_pod("a", "default", &[("app", "a")]);
    s.add_pod("b", "default", &[("app", "b")]);
    let listener = in_netns(&s.node_ns, || TcpListener::bind("127.0.0.1:0")).context("bind")?;
    let api = KubeApi::serve(listener);
    let kubeconfig = s.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    s.node_config = format!(
        "node: {{name: {}}}\npolicy_source: kubernetes\n\
         kubernetes: {{kubeconfig: {}, checkpoint: {}}}",
        s.id,
        kubeconfig.display(),
        s.dir.join("checkpoint.json").display()
    );
    for i in 0..policies {
        api.apply(cnp(i, 10_000 + i as u16));
    }
    let started = Instant::now();
    s.start_ward();
    wait_ready(&s, Duration::from_secs(60))?;
    let first_sync_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = s.ward_pid().context("ward pid")?;
    let rss_policies = rss_mb(pid);

    // Changes, one at a time: from the API server's write to Ward's log saying the maps are
    // written (the log is followed, not polled whole).
    let mut tail = LogTail::open(&s)?;
    let mut times = Vec::new();
    for n in 0..changes {
        let i = (n * 7) % policies;
        let t0 = Instant::now();
        api.apply(cnp(i, 20_000 + n as u16));
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if tail.applied()? > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                bail!("change {n} was not applied within 10 s:\n{}", s.ward_log());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    times.sort_by(f64::total_cmp);

    // Memory per watched pods: the same node restarted with `pods` more Pod objects of another
    // node on the API server (listed in pages of 500).
    s.stop_ward();
    for i in 0..pods {
        api.apply(remote_pod(i));
    }
    let started = Instant::now();
    s.start_ward();
    wait_ready(&s, Duration::from_secs(120))?;
    let pods_sync_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pid = s.ward_pid().context("ward pid")?;
    // Settled: what the lists allocated and freed is given back or reused.
    std::thread::sleep(Duration::from_millis(500));
    let rss_pods = rss_mb(pid);
    let per_10k = (rss_pods - rss_policies) * 10_000.0 / pods as f64;
    drop(s);
    Ok(json!({
        "policies": policies,
        "changes": changes,
        "change_to_maps_p50_ms": pct(&times, 0.50),
        "change_to_maps_p99_ms": pct(&times, 0.99),
        "first_sync_ms": first_sync_ms,
        "ward_rss_mb_with_policies": rss_policies,
        "pods": pods,
        "sync_with_pods_ms": pods_sync_ms,
        "ward_rss_mb_with_pods": rss_pods,
        "rss_mb_per_10k_pods": per_10k,
    }))
}

/// The Kubernetes rows of the table.
pub fn table(table: &mut String, k: &Value) {
    use std::fmt::Write as _;
    for (key, label) in [
        ("change_to_maps_p50_ms", "k8s: CNP change → maps p50, ms"),
        ("change_to_maps_p99_ms", "k8s: CNP change → maps p99, ms"),
        ("first_sync_ms", "k8s: start → ready (policies listed), ms"),
        ("sync_with_pods_ms", "k8s: start → ready with the pods, ms"),
        (
            "rss_mb_per_10k_pods",
            "k8s: Ward RSS per 10,000 watched pods, MB",
        ),
    ] {
        let _ = writeln!(
            table,
            "{label:<44} {:>12.3}",
            k[key].as_f64().unwrap_or(0.0)
        );
    }
}
