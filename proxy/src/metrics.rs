//! Prometheus metrics (prometheus-client): proxy requests by protocol and verdict, L7 latency,
//! policy apply duration, the time from a policy file change to the maps, and reload results;
//! kernel drops by reason are read from the datapath's counters at scrape time by a
//! [`Collector`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text::encode, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::{family::Family, gauge::Gauge, histogram::Histogram};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// `ward_datapath_drops_total{reason}`, read from the kernel's counters at each scrape.
#[derive(Debug, Default)]
struct KernelDrops {
    reader: Arc<OnceLock<bpf_redirect::CounterReader>>,
}

impl Collector for KernelDrops {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(reader) = self.reader.get() else {
            return Ok(());
        };
        match reader.read() {
            Ok(counters) => encode_drops(encoder, &counters),
            Err(e) => {
                tracing::warn!(error = %e, "reading the datapath counters; drops not exported");
                Ok(())
            }
        }
    }
}

/// `ward_datapath_drops_total{reason}` of `counters`.
fn encode_drops(
    mut encoder: DescriptorEncoder<'_>,
    counters: &bpf_redirect::Counters,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "datapath_drops",
        "Packets dropped by the datapath, by reason",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for r in 1u16..=bpf_redirect::common::drop_reason::PROXIED_ICMP_ERROR {
        let labels = ReasonLabels {
            reason: bpf_redirect::common::drop_reason::name(r),
        };
        ConstCounter::new(counters.drops(r)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The DNS proxy's counters (`ward_dns_*`).
pub struct DnsMetrics {
    queries: Family<DnsQueryLabels, Counter>,
    /// Time from forwarding a query to its answer, seconds.
    pub upstream_latency: Histogram,
    /// Time an allowed answer was held while its addresses went into the maps, seconds.
    pub release_delay: Histogram,
    /// Answers released because the maps took longer than `max_release_delay_ms`.
    pub max_delay_hits: Counter,
    /// Queries waiting for an upstream answer.
    pub in_flight: Gauge,
    /// Queries answered `SERVFAIL` because `max_in_flight` or `max_sessions` was reached.
    pub overflow: Counter,
    /// Forwarded queries the upstream did not answer in time.
    pub upstream_timeouts: Counter,
    /// Messages that were not a well-formed query (answered FORMERR/REFUSED, or dropped).
    pub malformed: Counter,
    upstream_errors: Family<ErrnoLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsQueryLabels {
    verdict: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KafkaRequestLabels {
    api_key: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpliceLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabels {
    errno: String,
}

impl DnsMetrics {
    fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics {
            queries: Family::default(),
            upstream_latency: Histogram::new(
                [
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]
                .into_iter(),
            ),
            release_delay: Histogram::new(
                [
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01,
                    0.025, 0.05, 0.1, 0.25,
                ]
                .into_iter(),
            ),
            max_delay_hits: Counter::default(),
            in_flight: Gauge::default(),
            overflow: Counter::default(),
            upstream_timeouts: Counter::default(),
            malformed: Counter::default(),
            upstream_errors: Family::default(),
        };
        registry.register(
            "dns_queries",
            "DNS queries handled by the proxy, by verdict and the rcode the client got",
            m.queries.clone(),
        );
        registry.register(
            "dns_upstream_duration_seconds",
            "Time from forwarding a DNS query to its upstream answer, seconds",
            m.upstream_latency.clone(),
        );
        registry.register(
            "dns_release_delay_seconds",
            "Time an allowed DNS answer was held while its toFQDNs addresses went into the maps, seconds",
            m.release_delay.clone(),
        );
        registry.register(
            "dns_max_delay_hits",
            "DNS answers released before their addresses were in the maps (max_release_delay_ms passed)",
            m.max_delay_hits.clone(),
        );
        registry.register(
            "dns_in_flight",
            "DNS queries waiting for an upstream answer",
            m.in_flight.clone(),
        );
        registry.register(
            "dns_overflow",
            "DNS queries answered SERVFAIL because max_in_flight or max_sessions was reached",
            m.overflow.clone(),
        );
        registry.register(
            "dns_upstream_timeouts",
            "Forwarded DNS queries the upstream did not answer within upstream_timeout_ms",
            m.upstream_timeouts.clone(),
        );
        registry.register(
            "dns_malformed",
            "DNS messages that were not a well-formed query",
            m.malformed.clone(),
        );
        registry.register(
            "dns_upstream_socket_errors",
            "Errors opening or using an upstream DNS socket, by errno (EADDRNOTAVAIL must stay 0)",
            m.upstream_errors.clone(),
        );
        m
    }

    /// One query's outcome: `verdict` is FORWARDED, DROPPED or AUDIT; `rcode` what the client
    /// got (`NoError`, `Refused`, …, or `none` when it got nothing).
    pub fn query(&self, verdict: &'static str, rcode: &'static str) {
        self.queries
            .get_or_create(&DnsQueryLabels { verdict, rcode })
            .inc();
    }

    /// An upstream socket error (`errno` 0 when there was none to name).
    pub fn upstream_error(&self, errno: i32) {
        let name = match errno {
            nix::libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".to_string(),
            nix::libc::EADDRINUSE => "EADDRINUSE".to_string(),
            nix::libc::ECONNREFUSED => "ECONNREFUSED".to_string(),
            nix::libc::ENETUNREACH => "ENETUNREACH".to_string(),
            0 => "other".to_string(),
            n => n.to_string(),
        };
        self.upstream_errors
            .get_or_create(&ErrnoLabels { errno: name })
            .inc();
    }
}

pub struct Metrics {
    /// The DNS proxy's counters.
    pub dns: DnsMetrics,
    kafka_requests: Family<KafkaRequestLabels, Counter>,
    /// `to_client` (broker responses), `to_broker` (Produce records).
    kafka_spliced: [Counter; 2],
    registry: Registry,
    kernel: Arc<OnceLock<bpf_redirect::CounterReader>>,
    change_to_maps: Histogram,
    requests: Family<RequestLabels, Counter>,
    /// `requests` for each (PROTOCOLS, VERDICTS) pair.
    request_counters: [[Counter; 3]; 2],
    flows_lost: Counter,
    latency: Histogram,
    apply: Histogram,
    reloads: Family<ResultLabels, Counter>,
    /// 1 once the node enforces its sources' first state (`GET /readyz` answers 200).
    pub ready: Gauge,
    /// Policy documents (files, or objects in Kubernetes mode) whose current version is
    /// refused.
    pub rejected_documents: Gauge,
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
        let change_to_maps =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0].into_iter());
        registry.register(
            "policy_change_to_maps_seconds",
            "Time from a policy file's modification to the maps written, seconds",
            change_to_maps.clone(),
        );
        let kernel = KernelDrops::default();
        let reader = kernel.reader.clone();
        registry.register_collector(Box::new(kernel));
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
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once the node enforces its policy sources' first state (Kubernetes mode: every watcher has listed once)",
            ready.clone(),
        );
        let rejected_documents = Gauge::default();
        registry.register(
            "policy_rejected_documents",
            "Policy documents (files, or Kubernetes objects) whose current version is refused; their previous version stays in force",
            rejected_documents.clone(),
        );
        let dns = DnsMetrics::register(&mut registry);
        let kafka_requests = Family::<KafkaRequestLabels, Counter>::default();
        registry.register(
            "kafka_requests",
            "Kafka requests handled by the proxy, by API key and verdict",
            kafka_requests.clone(),
        );
        let spliced = Family::<SpliceLabels, Counter>::default();
        registry.register(
            "kafka_spliced_bytes",
            "Bytes passed through the Kafka proxy by splice(2), never copied into Ward: broker responses (to_client) and Produce records (to_broker)",
            spliced.clone(),
        );
        let kafka_spliced = ["to_client", "to_broker"]
            .map(|direction| spliced.get_or_create(&SpliceLabels { direction }).clone());
        Metrics {
            kafka_requests,
            kafka_spliced,
            ready,
            rejected_documents,
            dns,
            registry,
            kernel: reader,
            change_to_maps,
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

    /// One Kafka request: `api_key` its name (`produce`, …, or `unknown`), `verdict`
    /// FORWARDED, DROPPED or AUDIT. (It is also counted by [`Self::request`].)
    pub fn kafka_request(&self, api_key: &'static str, verdict: &'static str) {
        self.kafka_requests
            .get_or_create(&KafkaRequestLabels { api_key, verdict })
            .inc();
    }

    /// `n` bytes passed through by splice(2): of a broker response (`to_broker` false) or of
    /// a Produce request's records.
    pub fn kafka_spliced(&self, to_broker: bool, n: usize) {
        self.kafka_spliced[usize::from(to_broker)].inc_by(n as u64);
    }

    /// The counter of flows the flow log had to drop.
    pub fn flows_lost(&self) -> Counter {
        self.flows_lost.clone()
    }

    /// A change written to the maps: how long it took, and how long after the policy file's
    /// modification (file changes only).
    pub fn applied(&self, elapsed: Duration, change_to_maps: Option<Duration>) {
        self.apply.observe(elapsed.as_secs_f64());
        if let Some(d) = change_to_maps {
            self.change_to_maps.observe(d.as_secs_f64());
        }
    }

    /// Exports the kernel's drop counters from now on.
    pub fn read_kernel_drops(&self, reader: bpf_redirect::CounterReader) {
        let _ = self.kernel.set(reader);
    }

    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr`, and `GET /readyz` (200 once ready, 503 before: a
/// DaemonSet's readiness probe).
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.changed() => return Ok(()),
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let resp = if req.uri().path() == "/readyz" {
                            let ready = metrics.ready.get() == 1;
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                                if ready { b"ready\n" } else { b"not ready\n" },
                            )));
                            if !ready {
                                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            r
                        } else if req.uri().path() == "/metrics" {
                            // The kernel counters are read by syscalls: off the runtime.
                            let text = tokio::task::spawn_blocking(move || metrics.render())
                                .await
                                .unwrap_or_default();
                            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(text)));
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
        m.applied(Duration::from_millis(3), Some(Duration::from_millis(120)));
        m.applied(Duration::from_millis(3), None);
        m.reload("applied");
        let text = m.render();
        for want in [
            "ward_proxy_requests_total{protocol=\"http\",verdict=\"DROPPED\"} 1",
            "ward_proxy_requests_total{protocol=\"grpc\",verdict=\"FORWARDED\"} 2",
            "ward_proxy_requests_total{protocol=\"http\",verdict=\"AUDIT\"} 0",
            "ward_proxy_requests_total{protocol=\"kafka\",verdict=\"DROPPED\"} 1",
            "ward_proxy_request_duration_seconds_count 4",
            "ward_flows_lost_total 1",
            "ward_kafka_spliced_bytes_total{direction=\"to_client\"} 0",
            "ward_kafka_spliced_bytes_total{direction=\"to_broker\"} 0",
            "ward_proxy_request_duration_seconds_bucket",
            "ward_policy_apply_duration_seconds_count 2",
            "ward_policy_change_to_maps_seconds_count 1",
            "ward_policy_reloads_total{result=\"applied\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        // Without the kernel's counters (no datapath here) the family is left out.
        assert!(!text.contains("ward_datapath_drops"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    /// The kernel's drop counters as the Collector writes them.
    #[test]
    fn kernel_drops_are_one_counter_family_by_reason() {
        #[derive(Debug)]
        struct Fixed;
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
                let mut values = vec![0u64; 128];
                values[(bpf_redirect::common::counter::DROP_BASE + 1) as usize] = 4;
                encode_drops(encoder, &bpf_redirect::Counters::from_values(values))
            }
        }
        let mut registry = Registry::with_prefix("ward");
        registry.register_collector(Box::new(Fixed));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE ward_datapath_drops counter"),
            "{text}"
        );
        assert!(
            text.contains("ward_datapath_drops_total{reason=\"Policy denied\"} 4"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
