//! Prometheus metrics (prometheus-client): proxy requests by protocol and verdict, L7 latency,
//! policy apply duration and results; kernel drops by reason are read from the datapath's
//! counters at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub protocol: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// The protocols and verdicts the proxy reports, whose counters are resolved once (a label
/// lookup per request would allocate and hash two strings).
const PROTOCOLS: [&str; 2] = ["http", "grpc"];
const VERDICTS: [&str; 3] = ["FORWARDED", "DROPPED", "AUDIT"];

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// `requests` for each (PROTOCOLS, VERDICTS) pair.
    request_counters: [[Counter; 3]; 2],
    flows_lost: Counter,
    latency: Histogram,
    apply: Histogram,
    reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ward");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "L7 requests handled by the proxy, by protocol and verdict",
            requests.clone(),
        );
        let latency = Histogram::new(
            [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]
            .into_iter(),
        );
        registry.register(
            "proxy_request_duration_seconds",
            "Time from request head to response head (or deny), seconds",
            latency.clone(),
        );
        let apply = Histogram::new(
            [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]
            .into_iter(),
        );
        registry.register(
            "policy_apply_duration_seconds",
            "Time to compute and apply a policy or endpoint change to the maps, seconds",
            apply.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result (applied, rejected)",
            reloads.clone(),
        );
        let flows_lost = Counter::default();
        registry.register(
            "flows_lost",
            "Flows not written to the flow log because its queue was full",
            flows_lost.clone(),
        );
        let request_counters = PROTOCOLS.map(|protocol| {
            VERDICTS.map(|verdict| {
                requests
                    .get_or_create(&RequestLabels {
                        protocol: protocol.into(),
                        verdict: verdict.into(),
                    })
                    .clone()
            })
        });
        Metrics {
            registry,
            requests,
            request_counters,
            flows_lost,
            latency,
            apply,
            reloads,
        }
    }

    pub fn request(&self, protocol: &str, verdict: &str, elapsed: Duration) {
        let p = PROTOCOLS.iter().position(|p| *p == protocol);
        let v = VERDICTS.iter().position(|v| *v == verdict);
        match (p, v) {
            (Some(p), Some(v)) => {
                self.request_counters[p][v].inc();
            }
            _ => {
                self.requests
                    .get_or_create(&RequestLabels {
                        protocol: protocol.into(),
                        verdict: verdict.into(),
                    })
                    .inc();
            }
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// The counter of flows the flow log had to drop.
    pub fn flows_lost(&self) -> Counter {
        self.flows_lost.clone()
    }

    pub fn applied(&self, elapsed: Duration) {
        self.apply.observe(elapsed.as_secs_f64());
    }

    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The exposition text; `drops` are `(reason, count)` from the kernel counters.
    pub fn render(&self, drops: &[(String, u64)]) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        let mut extra = String::from(
            "# HELP ward_datapath_drops Packets dropped by the datapath, by reason.\n# TYPE ward_datapath_drops counter\n",
        );
        for (reason, n) in drops {
            extra.push_str(&format!(
                "ward_datapath_drops_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        match out.rfind("# EOF") {
            Some(i) => out.insert_str(i, &extra),
            None => out.push_str(&extra),
        }
        out
    }
}

/// Serves `GET /metrics` on `addr`.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    drops: Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.changed() => return Ok(()),
        };
        let metrics = metrics.clone();
        let drops = drops.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let drops = drops.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            let d = tokio::task::spawn_blocking(move || drops())
                                .await
                                .unwrap_or_default();
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(
                                metrics.render(&d),
                            )));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        } else {
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                                b"not found\n",
                            )));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            r
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        m.request("http", "DROPPED", Duration::from_micros(300));
        m.request("grpc", "FORWARDED", Duration::from_micros(300));
        m.request("grpc", "FORWARDED", Duration::from_micros(300));
        m.request("kafka", "DROPPED", Duration::from_micros(300));
        m.flows_lost().inc();
        m.applied(Duration::from_millis(3));
        m.reload("applied");
        let text = m.render(&[("POLICY".into(), 4)]);
        for want in [
            "ward_proxy_requests_total{protocol=\"http\",verdict=\"DROPPED\"} 1",
            "ward_proxy_requests_total{protocol=\"grpc\",verdict=\"FORWARDED\"} 2",
            "ward_proxy_requests_total{protocol=\"http\",verdict=\"AUDIT\"} 0",
            "ward_proxy_requests_total{protocol=\"kafka\",verdict=\"DROPPED\"} 1",
            "ward_proxy_request_duration_seconds_count 4",
            "ward_flows_lost_total 1",
            "ward_proxy_request_duration_seconds_bucket",
            "ward_policy_apply_duration_seconds_count 1",
            "ward_policy_reloads_total{result=\"applied\"} 1",
            "ward_datapath_drops_total{reason=\"POLICY\"} 4",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
