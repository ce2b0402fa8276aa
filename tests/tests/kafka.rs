//! The transparent Kafka proxy with real peers: the tansu broker (in memory) in a pod, and
//! kafka-python as the producer and consumer in others, on the real datapath under `ward run`.

use std::path::PathBuf;
use std::time::Duration;
use ward_tests::{peers_python, privileged, Scene, KAFKA_LISTENER};

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-topics, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: empire-hq}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: produce
          topic: orders
  - fromEndpoints: [{matchLabels: {app: empire-outpost}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: consume
          topic: orders
"#;

fn tansu() -> PathBuf {
    let p = std::env::var_os("WARD_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
        });
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` builds it",
        p.display()
    );
    p
}

fn py(s: &Scene, pod: &str, script: &str) -> String {
    let python = peers_python();
    let out = s.exec(pod, &[python.to_str().unwrap(), "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn kafka_python_produce_and_consume_are_judged_by_topic() {
    if !privileged("kafka_python_produce_and_consume_are_judged_by_topic") {
        return;
    }
    let mut s = Scene::new("kf");
    s.add_pod("hq", "default", &[("app", "empire-hq")]);
    s.add_pod("outpost", "default", &[("app", "empire-outpost")]);
    s.add_pod("xwing", "default", &[("app", "xwing")]);
    let broker = s.add_pod("kafka", "default", &[("app", "kafka")]);
    s.kafka_listener = Some(KAFKA_LISTENER);
    let url = format!("tcp://{}:9092", broker.ip);
    let tansu = tansu();
    s.spawn_in(
        "kafka",
        &[
            tansu.to_str().unwrap(),
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ],
        "tansu.log",
    );
    s.wait_port("kafka", 9092);
    for topic in ["orders", "audit"] {
        let out = s.exec(
            "kafka",
            &[
                tansu.to_str().unwrap(),
                "topic",
                "create",
                "--broker",
                &url,
                "--partitions",
                "1",
                topic,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    s.write_policy("kafka.yaml", POLICY);
    s.start_ward();
    let bootstrap = format!("{}:9092", broker.ip);
    let produce = format!(
        r#"
import kafka, kafka.errors
p = kafka.KafkaProducer(bootstrap_servers="{bootstrap}", enable_idempotence=False, acks=1,
                        request_timeout_ms=5000, max_block_ms=5000, retries=0)
p.send("orders", b"order-1").get(timeout=10)
print("orders delivered")
try:
    p.send("audit", b"secret").get(timeout=10)
    print("audit delivered")
except kafka.errors.KafkaError as e:
    print("audit refused", type(e).__name__)
p.send("orders", b"order-2").get(timeout=10)
print("orders delivered again")
p.close()
"#
    );
    let out = py(&s, "hq", &produce);
    assert!(
        out.contains("orders delivered\n"),
        "{out}\n{}",
        s.ward_log()
    );
    assert!(
        out.contains("audit refused TopicAuthorizationFailedError"),
        "{out}"
    );
    assert!(out.contains("orders delivered again"), "{out}");
    let consume = format!(
        r#"
import kafka
c = kafka.KafkaConsumer(bootstrap_servers="{bootstrap}", auto_offset_reset="earliest",
                        enable_auto_commit=False, consumer_timeout_ms=8000,
                        request_timeout_ms=6000)
c.assign([kafka.TopicPartition("orders", 0)])
got = [m.value for m in c]
print("consumed", b",".join(got).decode())
c.close()
"#
    );
    let out = py(&s, "outpost", &consume);
    assert!(
        out.contains("consumed order-1,order-2"),
        "{out}\n{}",
        s.ward_log()
    );
    // The consumer may not produce.
    let out = py(
        &s,
        "outpost",
        &format!(
            r#"
import kafka, kafka.errors
p = kafka.KafkaProducer(bootstrap_servers="{bootstrap}", enable_idempotence=False, acks=1,
                        request_timeout_ms=5000, max_block_ms=5000, retries=0)
try:
    p.send("orders", b"from-outpost").get(timeout=10)
    print("delivered")
except kafka.errors.KafkaError as e:
    print("refused", type(e).__name__)
"#
        ),
    );
    assert!(out.contains("refused"), "{out}");
    // An unlisted pod is dropped at L3/L4: no connection at all.
    let out = s.exec(
        "xwing",
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            &format!("telnet://{bootstrap}"),
        ],
    );
    assert_eq!(out.status.code(), Some(28), "{out:?}");
    // Flows name the API key, the topics and the error code.
    let f = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["kafka"]["topics"][0] == "audit" && f["verdict"] == "DROPPED"
        })
        .expect("a flow for the denied audit request");
    assert_eq!(f["l7"]["kafka"]["error_code"], 29);
}
