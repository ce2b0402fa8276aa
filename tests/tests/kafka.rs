//! The transparent Kafka proxy with real peers on the real datapath under `ward run`: the tansu
//! broker (in memory) in a pod, and two clients on independent codebases, kafka-python (pure
//! Python) and confluent-kafka (librdkafka, C), which negotiate different versions. Crafted
//! frames (a stolen fetch session, SaslHandshake v0, a TLS ClientHello, 10,000 random frames)
//! come from raw sockets in the same pods.

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
        # HQ may look `audit` up, so its producing there is denied at Produce itself.
        - apiKey: metadata
          topic: audit
  - fromEndpoints: [{matchLabels: {app: empire-outpost}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - role: consume
          topic: orders
"#;

/// Runs a Python script in `pod` with `BS` (the bootstrap address) defined; stdout + stderr.
fn py(s: &Scene, pod: &str, bootstrap: &str, script: &str) -> String {
    let python = peers_python();
    let script = format!("BS = {bootstrap:?}\n{script}");
    let out = s.exec(pod, &[python.to_str().unwrap(), "-c", &script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const KAFKA_PYTHON_PRODUCE: &str = r#"
import kafka, kafka.errors
# Idempotent (kafka-python's default): InitProducerId is in `role: produce` (Ward's extension).
p = kafka.KafkaProducer(bootstrap_servers=BS, acks="all", request_timeout_ms=5000,
                        max_block_ms=5000)
p.send("orders", b"kp-1").get(timeout=10)
print("orders delivered")
p.close()
# kafka-python's idempotent producer keeps a topic authorization error as a sticky error for
# every later send, so the denied send goes through a plain producer.
p = kafka.KafkaProducer(bootstrap_servers=BS, acks=1, request_timeout_ms=5000,
                        max_block_ms=5000, enable_idempotence=False)
try:
    p.send("audit", b"secret").get(timeout=10)
    print("audit delivered")
except kafka.errors.KafkaError as e:
    print("audit refused", type(e).__name__)
p.send("orders", b"kp-2").get(timeout=10)
print("orders delivered again")
p.close()
"#;

const CONFLUENT_PRODUCE: &str = r#"
from confluent_kafka import Producer
def send(p, topic, value):
    out = []
    p.produce(topic, value, on_delivery=lambda err, msg: out.append(err))
    p.flush(15)
    return out[0] if out else "no report"
# Idempotent: InitProducerId is in `role: produce` (Ward's extension).
p = Producer({"bootstrap.servers": BS, "acks": "all", "message.timeout.ms": 10000,
              "enable.idempotence": True})
err = send(p, "orders", b"ck-1")
print("orders", "delivered" if err is None else err)
# After a permanent error librdkafka's idempotent producer bumps its epoch (KIP-360), which
# tansu 0.6 answers PRODUCER_FENCED; the denied send goes through a plain producer.
p = Producer({"bootstrap.servers": BS, "acks": "1", "message.timeout.ms": 10000})
send = lambda topic, value, send=send: send(p, topic, value)
err = send("audit", b"secret")
print("audit", "delivered" if err is None else "refused " + err.name())
err = send("orders", b"ck-2")
print("orders again", "delivered" if err is None else err)
"#;

const KAFKA_PYTHON_CONSUME: &str = r#"
import kafka
c = kafka.KafkaConsumer(bootstrap_servers=BS, auto_offset_reset="earliest",
                        enable_auto_commit=False, consumer_timeout_ms=8000,
                        request_timeout_ms=6000)
c.assign([kafka.TopicPartition("orders", 0)])
got = sorted(m.value.decode() for m in c)
print("consumed", ",".join(got))
c.close()
"#;

const CONFLUENT_CONSUME: &str = r#"
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
c = Consumer({"bootstrap.servers": BS, "group.id": "outpost", "enable.auto.commit": False})
c.assign([TopicPartition("orders", 0, OFFSET_BEGINNING)])
got = []
for _ in range(40):
    m = c.poll(0.5)
    if m is None:
        if len(got) >= 4:
            break
        continue
    if m.error():
        print("error", m.error().name())
        continue
    got.append(m.value().decode())
print("consumed", ",".join(sorted(got)))
c.close()
"#;

/// Python defining the bulk records: N records `PREFIX` + `NNNNNN:` padded to 1 KiB with bytes
/// that depend on the number and `step`, and NAME, the prefix without its dash.
fn bulk(prefix: &str, step: u32, n: u32) -> String {
    format!(
        r#"PREFIX, N, NAME = b"{prefix}", {n}, "{name}"
def record(i):
    head = PREFIX + b"%06d:" % i
    return head + bytes((i * {step} + j) % 251 for j in range(1024 - len(head)))
def number(v):
    return int(v[len(PREFIX):len(PREFIX) + 6])
"#,
        name = prefix.trim_end_matches('-')
    )
}

const BULK_PRODUCE: &str = r#"
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": BS, "acks": "1", "linger.ms": 20})
ok = [0]
for i in range(N):
    p.produce("orders", record(i), on_delivery=lambda err, msg: ok.__setitem__(0, ok[0] + (err is None)))
    p.poll(0)
p.flush(30)
print(NAME, "delivered", ok[0])
"#;

/// kafka-python's producer, in batches of up to 1 MiB.
const BULK_PRODUCE_KAFKA_PYTHON: &str = r#"
import kafka
p = kafka.KafkaProducer(bootstrap_servers=BS, acks="all", batch_size=1 << 20, linger_ms=200,
                        request_timeout_ms=10000)
fs = [p.send("orders", record(i)) for i in range(N)]
p.flush(30)
print(NAME, "delivered", sum(1 for f in fs if f.succeeded()))
p.close()
"#;

const BULK_CONSUME: &str = r#"
import kafka
c = kafka.KafkaConsumer(bootstrap_servers=BS, auto_offset_reset="earliest",
                        enable_auto_commit=False, consumer_timeout_ms=8000,
                        request_timeout_ms=6000)
c.assign([kafka.TopicPartition("orders", 0)])
seen, intact = set(), 0
for m in c:
    if m.value.startswith(PREFIX):
        i = number(m.value)
        if i not in seen and m.value == record(i):
            intact += 1
        seen.add(i)
    if len(seen) == N:
        break
print(NAME, "intact", intact, "of", len(seen))
c.close()
"#;

const BULK_CONSUME_CONFLUENT: &str = r#"
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
c = Consumer({"bootstrap.servers": BS, "group.id": NAME, "enable.auto.commit": False})
c.assign([TopicPartition("orders", 0, OFFSET_BEGINNING)])
seen, intact, idle = set(), 0, 0
while len(seen) < N and idle < 16:
    msgs = c.consume(1000, 0.5)
    idle = 0 if msgs else idle + 1
    for m in msgs:
        v = m.value() if m.error() is None else b""
        if v.startswith(PREFIX):
            i = number(v)
            if i not in seen and v == record(i):
                intact += 1
            seen.add(i)
print(NAME, "intact", intact, "of", len(seen))
c.close()
"#;

/// A producer (librdkafka, acks=1) sending a record to `orders` every 10 ms until STOP
/// exists; prints how many it sent, how many were delivered and how many failed.
const STEADY_PRODUCER: &str = r#"
import os, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": BS, "acks": "1", "linger.ms": 0, "message.timeout.ms": 20000})
done = [0, 0]
def cb(err, msg):
    done[0 if err is None else 1] += 1
sent = 0
print("sending", flush=True)
while not os.path.exists(STOP):
    p.produce("orders", b"steady-%d" % sent, on_delivery=cb)
    sent += 1
    p.poll(0.01)
p.flush(20)
print("steady sent", sent, "delivered", done[0], "failed", done[1], flush=True)
"#;

/// Raw frames: `frame(key, version, body)` with a v1 request header (client id "raw").
const RAW: &str = r#"
import socket, struct
def frame(key, version, body, corr=7):
    h = struct.pack(">hhih", key, version, corr, 3) + b"raw"
    return struct.pack(">i", len(h) + len(body)) + h + body
def exchange(payload, timeout=5, half_close=False):
    s = socket.create_connection((BS.split(":")[0], 9092), timeout=timeout)
    s.sendall(payload)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                data += b"<closed>"
                break
            data += chunk
            if len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
                break
    except socket.timeout:
        data += b"<timeout>"
    s.close()
    return data
"#;

/// Large Produce v9 frames of one topic and partition, which Ward judges on their head and
/// splices the records of: denied (`audit`, its 200 KB dropped, answered 29, the connection
/// still answered after), allowed (`orders`, 200 records the broker accepts, so the frame
/// reached it whole and intact), and allowed but ending in a tagged field Ward did not judge
/// (the connection is closed before the frame is whole, so no answer).
const SPLIT_PRODUCE: &str = r#"
def uv(n):
    out = b""
    while True:
        b, n = n & 0x7f, n >> 7
        out += bytes([b | 0x80 if n else b])
        if not n:
            return out
def produce_v9(topic, records, corr, trailer=b"\0\0\0"):
    h = struct.pack(">hhih", 0, 9, corr, 3) + b"raw" + b"\0"
    t = topic.encode()
    body = b"\0" + struct.pack(">hi", 1, 5000) + uv(2) + uv(len(t) + 1) + t + uv(2) \
        + struct.pack(">i", 0) + uv(len(records) + 1) + records + trailer
    return struct.pack(">i", len(h) + len(body)) + h + body
class Conn:
    def __init__(self):
        self.s = socket.create_connection((BS.split(":")[0], 9092), timeout=5)
        self.buf = b""
    def frame(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">i", self.buf[:4])[0]:
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        n = 4 + struct.unpack(">i", self.buf[:4])[0]
        f, self.buf = self.buf[:n], self.buf[n:]
        return f
def produce_answer(f):
    # Response header v1 (tags), one topic (compact name), one partition: index, error.
    corr, n = struct.unpack(">i", f[4:8])[0], f[10] - 1
    return corr, struct.unpack(">h", f[16 + n:18 + n])[0]
from kafka.record.memory_records import MemoryRecordsBuilder
batch = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
for i in range(200):
    batch.append(timestamp=None, key=None, value=b"split-%04d" % i + bytes(1000), headers=[])
batch.close()
records = bytes(batch.buffer())
c = Conn()
c.s.sendall(produce_v9("audit", records, 21) + frame(3, 1, struct.pack(">ih", 1, 6) + b"orders", corr=22))
print("denied", produce_answer(c.frame()))
m = c.frame()
print("then metadata", struct.unpack(">i", m[4:8])[0] if m else "closed")
c = Conn()
c.s.sendall(produce_v9("orders", records, 23))
f = c.frame()
print("allowed answered", produce_answer(f) if f else "closed")
c = Conn()
try:
    c.s.sendall(produce_v9("orders", records, 24, trailer=b"\x01\0\0"))
    f = c.frame()
    print("odd trailer", "answered" if f else "closed")
except OSError as e:
    print("odd trailer closed", e)
"#;

const STOLEN_FETCH_SESSION: &str = r#"
# Fetch v7 (not flexible): an incremental fetch (epoch 1) on a session id this connection never
# created, with no topics: the broker would answer for every partition of session 12345.
body = struct.pack(">iiiibii", -1, 100, 1, 1 << 20, 0, 12345, 1) + struct.pack(">i", 0) * 2
r = exchange(frame(1, 7, body))
corr, throttle, err, session = struct.unpack(">iihi", r[4:18])
print("fetch", corr, err, session)
"#;

/// Three requests in one write: a Fetch (forwarded; its response passes through as it
/// arrives), a Produce the consumer may not send (answered by Ward) and a Metadata
/// (forwarded). The responses must come back in request order.
const PIPELINED: &str = r#"
s = socket.create_connection((BS.split(":")[0], 9092), timeout=5)
name = struct.pack(">h", 6) + b"orders"
fetch = struct.pack(">iiiib", -1, 100, 1, 1 << 20, 0) + struct.pack(">i", 1) + name \
    + struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 1 << 20)
produce = struct.pack(">hhi", -1, 1, 1000) + struct.pack(">i", 1) + name \
    + struct.pack(">i", 1) + struct.pack(">ii", 0, -1)
metadata = struct.pack(">i", 1) + name
s.sendall(frame(1, 4, fetch, corr=1) + frame(0, 3, produce, corr=2) + frame(3, 1, metadata, corr=3))
def read_exact(n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("closed")
        b += chunk
    return b
order = []
for _ in range(3):
    size = struct.unpack(">i", read_exact(4))[0]
    order.append(struct.unpack(">i", read_exact(size)[:4])[0])
print("pipelined", order)
"#;

/// A Fetch the broker may hold (max_wait 1.5 s for more bytes than there are), sent just
/// before Ward's SIGTERM: its answer still arrives, then the connection closes.
const HELD_FETCH: &str = r#"
s = socket.create_connection((BS.split(":")[0], 9092), timeout=10)
name = struct.pack(">h", 6) + b"orders"
body = struct.pack(">iiiib", -1, 1500, 100 << 20, 100 << 20, 0) + struct.pack(">i", 1) + name \
    + struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 1 << 20)
s.sendall(frame(1, 4, body, corr=11))
r = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    r += chunk
print("held fetch answered", struct.unpack(">i", r[4:8])[0] if len(r) >= 8 else None, "then closed")
"#;

/// The topic IDs of `orders` and `audit`, asked of the broker directly (in its own pod).
const TOPIC_IDS: &str = r#"
from confluent_kafka.admin import AdminClient
from confluent_kafka import TopicCollection
a = AdminClient({"bootstrap.servers": BS})
for topic, f in a.describe_topics(TopicCollection(["orders", "audit"])).items():
    u = f.result(timeout=10).topic_id
    b = (u.get_most_significant_bits() & (2**64 - 1)).to_bytes(8, "big") \
        + (u.get_least_significant_bits() & (2**64 - 1)).to_bytes(8, "big")
    print("id", topic, b.hex())
"#;

/// Fetch v13 (flexible; topics by ID only) of partition 0 of each ID in `IDS`, on one
/// connection each; prints each answer's partition error code.
const FETCH_BY_ID: &str = r#"
def uv(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def fetch13(topic_id, corr):
    h = struct.pack(">hhih", 1, 13, corr, 3) + b"raw" + uv(0)
    part = struct.pack(">iiqiqi", 0, -1, 0, -1, -1, 1 << 20) + uv(0)
    body = struct.pack(">iiiibii", -1, 100, 1, 1 << 20, 0, 0, -1) + uv(2) + topic_id \
        + uv(2) + part + uv(0) + uv(1) + uv(1) + uv(0)
    return struct.pack(">i", len(h) + len(body)) + h + body
for label, hexid in IDS:
    r = exchange(fetch13(bytes.fromhex(hexid), 9))
    # correlation, header tags, throttle, error, session, topics (1), topic id, partitions
    # (1), partition index, partition error.
    corr, tags, throttle, err, session, ntopics = struct.unpack(">ibihib", r[4:20])
    perr = struct.unpack(">ih", r[20 + 16 + 1:20 + 16 + 1 + 6])[1]
    print("fetch-by-id", label, corr, err, perr)
"#;

const SASL_V0: &str = r#"
s = socket.create_connection((BS.split(":")[0], 9092), timeout=5)
s.sendall(frame(17, 0, struct.pack(">h", 5) + b"PLAIN"))
r = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    r += chunk
corr, err = struct.unpack(">ih", r[4:10])
print("sasl", corr, err, "closed")
# SaslHandshake v1 is judged (both roles cover it) and reaches the broker, which answers.
r = exchange(frame(17, 1, struct.pack(">h", 5) + b"PLAIN", corr=8))
print("sasl v1 answered by", struct.unpack(">i", r[4:8])[0], "closed" if r.endswith(b"<closed>") else "open")
"#;

const TLS_HELLO: &str = r#"
import ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with socket.create_connection((BS.split(":")[0], 9092), timeout=5) as s:
        ctx.wrap_socket(s).do_handshake()
    print("tls handshake completed")
except (ssl.SSLError, OSError) as e:
    print("tls refused", type(e).__name__)
"#;

/// 10,000 random or malformed frames, one connection each, from 16 threads, while a producer
/// on its own connection keeps delivering to `orders`.
const FLOOD: &str = r#"
import random, threading, time, kafka
random.seed(14)
keys = list(range(0, 76))
def payload(i):
    kind = i % 6
    n = random.randrange(0, 200)
    junk = random.randbytes(n)
    if kind == 0:
        return junk                                         # no framing at all
    if kind == 1:
        return struct.pack(">i", n) + junk                  # framed garbage
    if kind == 2:                                           # a real header, random body
        return frame(random.choice(keys), random.randrange(0, 18), junk, corr=i)
    if kind == 3:                                           # absurd or negative sizes
        return struct.pack(">i", random.choice([-1, -(1 << 31), (1 << 31) - 1, 200 << 20]))
    if kind == 4:                                           # a truncated frame
        f = frame(0, 9, junk)
        return f[: random.randrange(1, len(f))]
    # A known key at a random version with a hostile count.
    return frame(random.choice([0, 1, 2, 3, 8, 9, 24]), random.randrange(0, 13),
                 struct.pack(">i", (1 << 31) - 1) + junk)
counts = {"sent": 0}
lock = threading.Lock()
def worker(start):
    for i in range(start, 10000, 16):
        try:
            # Ward reads the frames, then the end of the stream, and closes.
            exchange(payload(i), timeout=2, half_close=True)
        except OSError:
            pass
        with lock:
            counts["sent"] += 1
ok = failed = 0
stop = False
def legit():
    global ok, failed
    p = kafka.KafkaProducer(bootstrap_servers=BS, acks=1, request_timeout_ms=5000,
                            max_block_ms=5000, enable_idempotence=False)
    while not stop:
        try:
            p.send("orders", b"during-flood").get(timeout=10)
            ok += 1
        except Exception as e:
            failed += 1
            print("legit failure", type(e).__name__, e)
        time.sleep(0.1)
    p.close()
t = threading.Thread(target=legit)
t.start()
time.sleep(1)
began = time.time()
workers = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
for w in workers: w.start()
for w in workers: w.join()
stop = True
t.join()
print("flood sent", counts["sent"], "legit ok", ok, "failed", failed,
      "in %.1f s" % (time.time() - began))
"#;

const ACKS0_AUDIT: &str = r#"
import kafka, time
p = kafka.KafkaProducer(bootstrap_servers=BS, acks=0, max_block_ms=5000,
                        enable_idempotence=False)
p.send("audit", b"fire-and-forget")
p.flush(timeout=5)
time.sleep(1)
p.close(timeout=2)
print("acks0 sent")
"#;

/// Read in the broker's own pod: not through Ward.
const DIRECT_AUDIT: &str = r#"
import kafka
c = kafka.KafkaConsumer(bootstrap_servers=BS, auto_offset_reset="earliest",
                        enable_auto_commit=False, consumer_timeout_ms=4000)
c.assign([kafka.TopicPartition("audit", 0)])
print("audit holds", len([m for m in c]))
c.close()
"#;

#[test]
fn two_kafka_clients_are_judged_by_topic_and_crafted_frames_never_pass() {
    if !privileged("two_kafka_clients_are_judged_by_topic_and_crafted_frames_never_pass") {
        return;
    }
    let mut s = Scene::new("kf");
    s.add_pod("hq", "default", &[("app", "empire-hq")]);
    s.add_pod("outpost", "default", &[("app", "empire-outpost")]);
    s.add_pod("xwing", "default", &[("app", "xwing")]);
    let broker = s.add_pod("kafka", "default", &[("app", "kafka")]);
    s.kafka_listener = Some(KAFKA_LISTENER);
    s.start_tansu("kafka", 9092, &["orders", "audit"]);
    s.write_policy("kafka.yaml", POLICY);
    s.start_ward();
    let bs = format!("{}:9092", broker.ip);
    // `ward status` does not list Kafka as unproxied.
    let status = String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout).into_owned();
    assert!(!status.to_lowercase().contains("unproxied"), "{status}");

    // A producer allowed on `orders` delivers; `audit` gets the authorization error, and the
    // same producer then still delivers: with each client.
    let out = py(&s, "hq", &bs, KAFKA_PYTHON_PRODUCE);
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
    let out = py(&s, "hq", &bs, CONFLUENT_PRODUCE);
    assert!(
        out.contains("orders delivered\n"),
        "{out}\n{}",
        s.ward_log()
    );
    assert!(
        out.contains("audit refused TOPIC_AUTHORIZATION_FAILED"),
        "{out}"
    );
    assert!(out.contains("orders again delivered"), "{out}");

    // A consumer allowed to consume `orders` reads the messages, with each client.
    for script in [KAFKA_PYTHON_CONSUME, CONFLUENT_CONSUME] {
        let out = py(&s, "outpost", &bs, script);
        assert!(
            out.contains("consumed ck-1,ck-2,kp-1,kp-2"),
            "{out}\n{}",
            s.ward_log()
        );
    }
    // A consumer producing is denied.
    let out = py(
        &s,
        "outpost",
        &bs,
        r#"
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": BS, "message.timeout.ms": 8000})
out = []
p.produce("orders", b"from-outpost", on_delivery=lambda err, msg: out.append(err))
p.flush(10)
print("outpost produce", "delivered" if out and out[0] is None else out)
"#,
    );
    assert!(
        !out.contains("outpost produce delivered") && out.contains("AUTHORIZATION_FAILED"),
        "{out}"
    );

    // Large fetch answers pass broker → client by splice(2): 3,000 distinct 1 KiB records,
    // produced by librdkafka and read back byte for byte by kafka-python through Ward.
    let librdkafka_bulk = bulk("bulk-", 7, 3000);
    let out = py(&s, "hq", &bs, &format!("{librdkafka_bulk}{BULK_PRODUCE}"));
    assert!(out.contains("bulk delivered 3000"), "{out}");
    for script in [BULK_CONSUME, BULK_CONSUME_CONFLUENT] {
        let out = py(&s, "outpost", &bs, &format!("{librdkafka_bulk}{script}"));
        assert!(
            out.contains("bulk intact 3000 of 3000"),
            "{out}\n{}",
            s.ward_log()
        );
    }
    // And large Produce batches pass client → broker by splice(2) too, from both clients:
    // kafka-python's 1,000 records are read back intact by librdkafka.
    let kafka_python_bulk = bulk("kpbulk-", 13, 1000);
    let out = py(
        &s,
        "hq",
        &bs,
        &format!("{kafka_python_bulk}{BULK_PRODUCE_KAFKA_PYTHON}"),
    );
    assert!(out.contains("kpbulk delivered 1000"), "{out}");
    let out = py(
        &s,
        "outpost",
        &bs,
        &format!("{kafka_python_bulk}{BULK_CONSUME_CONFLUENT}"),
    );
    assert!(out.contains("kpbulk intact 1000 of 1000"), "{out}");
    let metrics = s.metrics();
    for direction in ["to_client", "to_broker"] {
        let spliced = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "ward_kafka_spliced_bytes_total{{direction=\"{direction}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(spliced >= 1e6, "spliced {spliced} bytes {direction}");
    }

    // An admin call the producer's rules do not allow gets the authorization error, and the
    // same admin connection goes on to be answered.
    let out = py(
        &s,
        "hq",
        &bs,
        r#"
import kafka.errors
from kafka.admin import KafkaAdminClient, NewTopic
a = KafkaAdminClient(bootstrap_servers=BS, request_timeout_ms=5000)
for attempt in range(2):
    try:
        a.create_topics([NewTopic("rebels", 1, 1)])
        print("created")
    except kafka.errors.KafkaError as e:
        print("create refused", type(e).__name__)
a.close()
"#,
    );
    assert_eq!(
        out.matches("create refused TopicAuthorizationFailedError")
            .count(),
        2,
        "{out}
{}",
        s.ward_log()
    );
    // A denied acks=0 Produce has no response: Ward drops it and closes the connection; a
    // consumer reading `audit` straight from the broker's pod finds nothing, not even the
    // acks=1 attempts above.
    let out = py(&s, "hq", &bs, ACKS0_AUDIT);
    assert!(out.contains("acks0 sent"), "{out}");
    s.wait_flow(Duration::from_secs(3), |f| {
        f["l7"]["kafka"]["topics"][0] == "audit"
            && f["l7"]["kafka"]["api_key"] == "produce"
            && f["verdict"] == "DROPPED"
            && f["l7"]["kafka"]["error_code"] == 0
    })
    .expect("a flow for the dropped acks=0 produce");
    assert!(
        s.ward_log()
            .contains("a denied acks=0 Produce gets no response"),
        "{}",
        s.ward_log()
    );
    // Large single-partition Produce frames, judged on their head, records spliced.
    let out = py(&s, "hq", &bs, &format!("{RAW}{SPLIT_PRODUCE}"));
    assert!(out.contains("denied (21, 29)"), "{out}\n{}", s.ward_log());
    assert!(out.contains("then metadata 22"), "{out}");
    assert!(out.contains("allowed answered (23, 0)"), "{out}");
    assert!(out.contains("odd trailer closed"), "{out}");
    s.wait_flow(Duration::from_secs(3), |f| {
        f["verdict"] == "DROPPED"
            && f["reason"]
                .as_str()
                .is_some_and(|r| r.contains("tagged fields Ward did not judge"))
    })
    .expect("a flow for the Produce whose trailer was not the one judged");
    let out = py(&s, "kafka", &bs, DIRECT_AUDIT);
    assert!(out.contains("audit holds 0"), "{out}");

    // An incremental fetch on a session this connection did not create.
    let out = py(&s, "outpost", &bs, &format!("{RAW}{STOLEN_FETCH_SESSION}"));
    assert!(out.contains("fetch 7 70 0"), "{out}\n{}", s.ward_log());
    // Responses come back in request order around a local answer.
    let out = py(&s, "outpost", &bs, &format!("{RAW}{PIPELINED}"));
    assert!(
        out.contains("pipelined [1, 2, 3]"),
        "{out}\n{}",
        s.ward_log()
    );
    // SaslHandshake v0: UNSUPPORTED_VERSION, then the connection is closed.
    let out = py(&s, "hq", &bs, &format!("{RAW}{SASL_V0}"));
    assert!(out.contains("sasl 7 35 closed"), "{out}");
    assert!(
        out.contains("sasl v1 answered by 8 open"),
        "{out}\n{}",
        s.ward_log()
    );
    s.wait_flow(Duration::from_secs(3), |f| {
        f["l7"]["kafka"]["api_key"] == "saslhandshake"
            && f["l7"]["kafka"]["api_version"] == 1
            && f["verdict"] == "FORWARDED"
    })
    .expect("a forwarded SaslHandshake v1");
    // Topics named by ID: librdkafka fetched `orders` with Fetch v13+ (topic IDs), learned
    // from the Metadata answers Ward passed on.
    s.wait_flow(Duration::from_secs(3), |f| {
        f["l7"]["kafka"]["api_key"] == "fetch"
            && f["l7"]["kafka"]["api_version"].as_i64() >= Some(13)
            && f["l7"]["kafka"]["topics"][0] == "orders"
            && f["verdict"] == "FORWARDED"
    })
    .expect("a Fetch v13+ by topic ID, named and forwarded");
    // After a restart Ward has learned no ID: it asks the broker. `orders` passes, `audit`
    // and an ID the broker does not know are denied.
    let out = py(&s, "kafka", &bs, TOPIC_IDS);
    let id = |topic: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("id {topic} ")))
            .unwrap_or_else(|| panic!("no topic ID for {topic}: {out}"))
            .to_owned()
    };
    let ids = format!(
        "IDS = [('orders', {:?}), ('audit', {:?}), ('unknown', {:?})]\n",
        id("orders"),
        id("audit"),
        "42".repeat(16)
    );
    // The restart is a handover (a new `ward run` takes the Kafka listener over) while a
    // producer sends a record every 10 ms: every record is delivered. The new Ward also
    // redacts client IDs and takes frames of at most 4 MiB.
    let python = peers_python().to_string_lossy().into_owned();
    let stop = s.dir.join("stop-producer");
    let producer = s.dir.join("steady_producer.py");
    std::fs::write(
        &producer,
        format!(
            "BS = {bs:?}\nSTOP = {:?}\n{STEADY_PRODUCER}",
            stop.to_string_lossy()
        ),
    )
    .unwrap();
    let producer = producer.to_string_lossy().into_owned();
    s.spawn_in("hq", &[&python, &producer], "steady-producer.log");
    let steady = || std::fs::read_to_string(s.dir.join("steady-producer.log")).unwrap_or_default();
    ward_tests::eventually("the steady producer", Duration::from_secs(10), || {
        steady().contains("sending")
    });
    std::thread::sleep(Duration::from_millis(500));
    s.node_config = format!(
        "node: {{name: {}}}\nkafka: {{redact_client_id: true, max_frame_bytes: 4194304}}",
        s.id
    );
    s.write_config();
    s.upgrade_ward();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "").unwrap();
    let steady_log = s.dir.join("steady-producer.log");
    let steady = || std::fs::read_to_string(&steady_log).unwrap_or_default();
    ward_tests::eventually(
        "the steady producer's report",
        Duration::from_secs(30),
        || steady().contains("steady sent"),
    );
    let report = steady();
    let line = report
        .lines()
        .find(|l| l.starts_with("steady sent"))
        .unwrap_or_default();
    let n: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert!(
        n.len() == 3 && n[0] >= 50 && n[1] == n[0] && n[2] == 0,
        "{report}\n{}",
        s.ward_log()
    );
    assert!(s.ward_log().contains("taking the listening sockets over"));
    eprintln!("Kafka across a handover: {line}");
    let out = py(&s, "outpost", &bs, &format!("{RAW}{ids}{FETCH_BY_ID}"));
    assert!(
        out.contains("fetch-by-id orders 9 0 0"),
        "{out}\n{}",
        s.ward_log()
    );
    assert!(out.contains("fetch-by-id audit 9 0 29"), "{out}");
    assert!(out.contains("fetch-by-id unknown 9 0 29"), "{out}");
    let redacted = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["kafka"]["api_key"] == "fetch" && f["l7"]["kafka"]["api_version"] == 13
        })
        .expect("a flow of the Fetch by ID");
    assert!(
        redacted["l7"]["kafka"].get("client_id").is_none(),
        "{redacted}"
    );
    s.wait_flow(Duration::from_secs(3), |f| {
        f["l7"]["kafka"]["client_id"] == "raw" && f["l7"]["kafka"]["api_key"] == "fetch"
    })
    .expect("client IDs were in flows before");
    let out = py(
        &s,
        "hq",
        &bs,
        &format!("{RAW}print(exchange(struct.pack('>i', 8 << 20) + b'x' * 64))"),
    );
    assert!(out.contains("<closed>"), "{out}");
    s.wait_flow(Duration::from_secs(3), |f| {
        f.to_string().contains("exceeds the maximum of 4194304")
    })
    .expect("a flow for the oversized frame");
    // A TLS ClientHello: refused, with a flow saying why.
    let out = py(&s, "hq", &bs, &format!("{RAW}{TLS_HELLO}"));
    assert!(out.contains("tls refused"), "{out}");
    s.wait_flow(Duration::from_secs(3), |f| {
        f["verdict"] == "DROPPED"
            && f["l7"]["kafka"].is_object()
            && f.to_string().contains("TLS ClientHello")
    })
    .expect("a flow for the TLS ClientHello");

    // 10,000 random or malformed frames leave the proxy serving other connections.
    let out = py(&s, "hq", &bs, &format!("{RAW}{FLOOD}"));
    assert!(out.contains("flood sent 10000 "), "{out}");
    assert!(out.contains(" failed 0"), "{out}");
    let ok: u32 = out
        .split("legit ok ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ok > 0, "{out}");
    let out = py(&s, "hq", &bs, CONFLUENT_PRODUCE);
    assert!(
        out.contains("orders delivered\n"),
        "{out}\n{}",
        s.ward_log()
    );

    // An unlisted pod is dropped at L3/L4: no connection at all.
    let out = s.exec(
        "xwing",
        &["curl", "-s", "--max-time", "2", &format!("telnet://{bs}")],
    );
    assert_eq!(out.status.code(), Some(28), "{out:?}");

    // The versions each client negotiated are logged: librdkafka and kafka-python produce
    // with different versions.
    let log = s.ward_log();
    let produce_versions: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("Kafka API version in use") && l.contains("api=produce"))
        .filter_map(|l| l.split("version=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .collect();
    assert!(produce_versions.len() >= 2, "{produce_versions:?}\n{log}");

    // Flows name the API key, the topics and the error code; metrics count by key.
    let f = s
        .wait_flow(Duration::from_secs(3), |f| {
            f["l7"]["kafka"]["topics"][0] == "audit"
                && f["verdict"] == "DROPPED"
                && f["l7"]["kafka"]["error_code"] == 29
        })
        .expect("a flow for the denied audit request");
    assert_eq!(f["l7"]["kafka"]["api_key"], "produce");
    // `ward observe --protocol kafka` prints Hubble-like lines, and only Kafka's.
    let out = s.ward_cli(&["observe", "--protocol", "kafka"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("default/hq:")
            && l.contains("-> default/kafka:9092 ")
            && l.contains(" kafka-request DROPPED (produce v")
            && l.ends_with("topics audit, answered error 29)")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.contains("kafka-request")), "{text}");
    let m = s.metrics();
    assert!(
        m.contains(r#"ward_kafka_requests_total{api_key="produce",verdict="DROPPED"}"#)
            && m.contains(r#"ward_kafka_requests_total{api_key="fetch",verdict="FORWARDED"}"#),
        "{m}"
    );
    // SIGTERM drains: a Fetch in flight is answered, then its connection closes.
    let mut held = s.cmd_in("outpost", peers_python().to_str().unwrap());
    held.args(["-c", &format!("BS = {bs:?}\n{RAW}{HELD_FETCH}")]);
    let held = std::thread::spawn(move || held.output());
    std::thread::sleep(Duration::from_millis(500));
    let st = s.terminate_ward();
    assert!(
        st.is_some_and(|st| st.success()),
        "{st:?}\n{}",
        s.ward_log()
    );
    let out = held.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("held fetch answered 11 then closed"),
        "{out:?}\n{}",
        s.ward_log()
    );
    assert!(s.ward_log().contains("Kafka: drained"), "{}", s.ward_log());
}
