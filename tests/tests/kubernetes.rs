//! Kubernetes mode (`policy_source: kubernetes`) against the test API server
//! (`ward_tests::kubeapi`), served over HTTP in the scene's node namespace to the real kube-rs
//! client of `ward run`: policies come from CiliumNetworkPolicy objects, survive the API server
//! going away and a 410 relist, and a bad object is refused by name while the rest enforces.
//! This node's pods come from Pod objects (found by route, or from `ward-cni` chained after the
//! real `ptp` plugin); other nodes' pods give their addresses identities.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_tests::kubeapi::KubeApi;
use ward_tests::{in_netns, privileged, Scene};

const LAND: &[&str] = &["-XPOST", "http://deathstar-1/v1/request-landing"];
const EXHAUST: &[&str] = &["-XPUT", "http://deathstar-1/v1/exhaust-port"];

fn eventually(what: &str, f: impl Fn() -> bool) {
    ward_tests::eventually(what, Duration::from_secs(5), f);
}

/// Star Wars' L7 rule as a CiliumNetworkPolicy object.
fn rule1() -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "rule1", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"org": "empire", "class": "deathstar"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                "toPorts": [{
                    "ports": [{"port": "80", "protocol": "TCP"}],
                    "rules": {"http": [{"method": "POST", "path": "/v1/request-landing"}]}
                }]
            }]
        }
    })
}

/// The Star Wars pods, the test API server in the node namespace, and `ward run` in Kubernetes
/// mode, its watchers started.
fn scene(tag: &str) -> (Scene, KubeApi) {
    scene_with(tag, true)
}

/// As [`scene`]; `config_endpoints: false` leaves the pods out of the node config (they come
/// from Pod objects).
fn scene_with(tag: &str, config_endpoints: bool) -> (Scene, KubeApi) {
    scene_full(tag, config_endpoints, false)
}

/// As [`scene_with`]; `outside` adds the outside network (another node's pod stands there).
fn scene_full(tag: &str, config_endpoints: bool, outside: bool) -> (Scene, KubeApi) {
    let mut s = Scene::new(tag);
    s.config_endpoints = config_endpoints;
    if outside {
        s.add_outside();
    }
    s.add_pod(
        "deathstar-1",
        "default",
        &[("org", "empire"), ("class", "deathstar")],
    );
    s.add_pod(
        "tiefighter",
        "default",
        &[("org", "empire"), ("class", "tiefighter")],
    );
    s.add_pod(
        "xwing",
        "default",
        &[("org", "alliance"), ("class", "xwing")],
    );
    s.start_deathstar("deathstar-1", 80);
    // The API server listens on the node namespace's loopback, where `ward run` is.
    let listener = in_netns(&s.node_ns, || TcpListener::bind("127.0.0.1:0")).expect("bind");
    let api = KubeApi::serve(listener);
    let kubeconfig = s.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
    s.node_config = format!(
        "node: {{name: {}}}\npolicy_source: kubernetes\n\
         kubernetes: {{kubeconfig: {}, checkpoint: {}}}",
        s.id,
        kubeconfig.display(),
        s.dir.join("checkpoint.json").display()
    );
    s.start_ward();
    eventually("the watchers listing and watching", || {
        let r = api.requests();
        [
            "ciliumnetworkpolicies?",
            "/networkpolicies?",
            "namespaces?",
            "services?",
        ]
        .iter()
        .all(|kind| {
            r.iter()
                .any(|l| l.contains(kind) && l.contains("watch=true"))
        })
    });
    (s, api)
}

#[test]
fn policies_come_from_the_kubernetes_api() {
    if !privileged("policies_come_from_the_kubernetes_api") {
        return;
    }
    let (s, api) = scene("k8");
    // No policy yet: everything lands, the exhaust port is open.
    assert_eq!(s.curl("xwing", LAND), (0, "Ship landed\n".into()));
    assert!(s.curl("tiefighter", EXHAUST).1.starts_with("Panic"));

    // The object is created through the API: enforced.
    let created = Instant::now();
    api.apply(rule1());
    eventually("the CNP from the API", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });
    eprintln!(
        "CNP created → enforced (seen by curl) in {} ms",
        created.elapsed().as_millis()
    );
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    assert_eq!(s.curl("xwing", LAND).0, 28, "xwing is dropped at L3/L4");

    // A bad object is refused with its name and field; the good one keeps enforcing.
    api.apply(json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"org": "alliance"}},
            "egress": [{"toPorts": [{"ports": [{"port": "99999", "protocol": "TCP"}]}]}]
        }
    }));
    eventually("the bad object in ward status", || {
        let out = s.ward_cli(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("CiliumNetworkPolicy default/broken") && text.contains("99999")
    });
    assert_eq!(s.curl("tiefighter", EXHAUST).1, "Access denied\r\n");
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    // It is surfaced on the object as a Kubernetes Event, and counted.
    eventually("a PolicyRejected Event about the bad object", || {
        api.objects("Event").iter().any(|e| {
            e["reason"] == "PolicyRejected"
                && e["type"] == "Warning"
                && e["regarding"]["kind"] == "CiliumNetworkPolicy"
                && e["regarding"]["name"] == "broken"
                && e["note"].as_str().is_some_and(|n| n.contains("99999"))
        })
    });
    assert!(s.metrics().contains("ward_policy_rejected_documents 1\n"));
    api.delete("CiliumNetworkPolicy", "default", "broken");
    eventually("the refusal cleared", || {
        s.metrics().contains("ward_policy_rejected_documents 0\n")
    });
    // Reported once: no Event storm while it stayed refused.
    let reported = api
        .objects("Event")
        .iter()
        .filter(|e| e["regarding"]["name"] == "broken")
        .count();
    assert_eq!(reported, 1);

    // Faults, while a loop of requests checks every verdict: the API server gone for 10 s,
    // 429s with Retry-After, and a 410 relist. Not one verdict may change.
    let wrong = std::sync::atomic::AtomicUsize::new(0);
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            use std::sync::atomic::Ordering::Relaxed;
            while !done.load(Relaxed) {
                let denied = s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n";
                let landed = s.curl("tiefighter", LAND) == (0, "Ship landed\n".into());
                let dropped = s
                    .exec(
                        "xwing",
                        &["curl", "-s", "--max-time", "1", LAND[0], LAND[1]],
                    )
                    .status
                    .code()
                    == Some(28);
                asked.fetch_add(3, Relaxed);
                wrong.fetch_add(
                    usize::from(!denied) + usize::from(!landed) + usize::from(!dropped),
                    Relaxed,
                );
            }
        });
        // The loop stops when this scope ends, also by a failed assertion.
        let _stop = StopOnDrop(&done);
        // A 410 first (while the watchers' backoff is short: after the outage below it is up
        // to 30 s): their versions are compacted away and their streams cut, so they list again. The relist changes nothing, so nothing is sent to the controller.
        let before = api.requests().len();
        api.compact();
        api.drop_watches();
        ward_tests::eventually(
            "the watchers relisting after 410",
            Duration::from_secs(20),
            || {
                api.requests()[before..]
                    .iter()
                    .any(|l| l.contains("ciliumnetworkpolicies?") && !l.contains("watch=true"))
            },
        );
        let relisted = || {
            s.ward_log()
                .lines()
                .filter(|l| l.contains("kind=\"CiliumNetworkPolicy\"") && l.contains("listed"))
                .count()
                >= 2
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !relisted() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            relisted(),
            "no relist logged; requests since the compaction: {:?}\nlog: {}",
            &api.requests()[before..],
            s.ward_log()
                .lines()
                .filter(|l| l.contains("kubernetes"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let last_list = s
            .ward_log()
            .lines()
            .rfind(|l| l.contains("kind=\"CiliumNetworkPolicy\"") && l.contains("listed"))
            .unwrap_or_default()
            .to_string();
        assert!(last_list.contains("changed=0"), "{last_list}");
        api.set_down(true);
        std::thread::sleep(Duration::from_secs(10));
        let before = api.requests().len();
        let status = || String::from_utf8_lossy(&s.ward_cli(&["status"]).stdout).into_owned();
        assert!(
            status().contains("kubernetes CiliumNetworkPolicy watch"),
            "ward status names the failing watch:\n{}",
            status()
        );
        // Back, but answering 429 with Retry-After to the first requests.
        api.fail_next(4, 429, 1);
        api.set_down(false);
        // The watchers come back (after their backoff, up to a few seconds).
        ward_tests::eventually(
            "the watchers watching again",
            Duration::from_secs(30),
            || {
                api.requests()[before..]
                    .iter()
                    .any(|l| l.contains("ciliumnetworkpolicies?") && l.contains("watch=true"))
            },
        );
        ward_tests::eventually("the watch error cleared", Duration::from_secs(10), || {
            !status().contains("kubernetes CiliumNetworkPolicy watch")
        });

        std::thread::sleep(Duration::from_secs(1));
    });
    let (asked, wrong) = (asked.into_inner(), wrong.into_inner());
    eprintln!("verdicts checked through the faults: {asked}, wrong: {wrong}");
    assert!(asked > 20, "the request loop ran ({asked})");
    assert_eq!(
        wrong, 0,
        "a verdict changed while the API server failed or relisted"
    );

    // Deleting the object restores the open deathstar.
    api.delete("CiliumNetworkPolicy", "default", "rule1");
    eventually("the CNP deleted", || {
        s.curl("tiefighter", EXHAUST).1.starts_with("Panic")
    });
    assert_eq!(s.curl("xwing", LAND), (0, "Ship landed\n".into()));
}

/// A NetworkPolicy's namespaceSelector reads the Namespace objects' labels as they change.
#[test]
fn namespace_labels_from_the_api_change_verdicts() {
    if !privileged("namespace_labels_from_the_api_change_verdicts") {
        return;
    }
    let (s, api) = scene("kn");
    let namespace = |team: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "labels": {"team": team}}})
    };
    api.apply(namespace("rebels"));
    api.apply(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "from-empire-namespaces", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"class": "deathstar"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "empire"}}}]}]
        }
    }));
    eventually("the namespace's pods denied", || {
        s.curl("tiefighter", LAND).0 == 28
    });
    api.apply(namespace("empire"));
    eventually("the relabelled namespace's pods allowed", || {
        s.curl("tiefighter", LAND) == (0, "Ship landed\n".into())
    });
    api.apply(namespace("rebels"));
    eventually("denied again", || s.curl("tiefighter", LAND).0 == 28);
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /readyz` on the node's metrics port: the HTTP status.
fn readyz(s: &Scene) -> String {
    let out = s.node(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
        "http://127.0.0.1:9962/readyz",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Pod object as the API server has it once scheduled on this node and running.
fn pod_object(s: &Scene, name: &str, labels: Value) -> Value {
    let pod = s.pods.iter().find(|p| p.name == name).expect("pod");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"nodeName": s.id, "containers": [{"name": "c",
            "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": pod.ip.to_string()}
    })
}

/// This node's Pods, watched on the API, are its endpoints: found on their host-side veth by
/// route, enforced as they appear, changed in place when relabelled.
#[test]
fn this_nodes_pods_from_the_api_are_its_endpoints() {
    if !privileged("this_nodes_pods_from_the_api_are_its_endpoints") {
        return;
    }
    let (s, api) = scene_with("kp", false);
    api.apply(rule1());
    // No endpoint yet: nothing is enforced.
    assert_eq!(s.curl("xwing", LAND), (0, "Ship landed\n".into()));
    api.apply(pod_object(
        &s,
        "deathstar-1",
        json!({"org": "empire", "class": "deathstar"}),
    ));
    api.apply(pod_object(
        &s,
        "tiefighter",
        json!({"org": "empire", "class": "tiefighter"}),
    ));
    api.apply(pod_object(
        &s,
        "xwing",
        json!({"org": "alliance", "class": "xwing"}),
    ));
    // A pod of another node is not this node's endpoint.
    let mut elsewhere = pod_object(&s, "xwing", json!({"org": "empire"}));
    elsewhere["metadata"]["name"] = json!("xwing-elsewhere");
    elsewhere["spec"]["nodeName"] = json!("another-node");
    elsewhere["status"]["podIP"] = json!("10.99.0.7");
    api.apply(elsewhere);
    eventually("the pods enforced", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    assert_eq!(s.curl("xwing", LAND).0, 28, "xwing is dropped at L3/L4");
    let list = String::from_utf8_lossy(&s.ward_cli(&["endpoint", "list"]).stdout).into_owned();
    assert!(
        list.contains("tiefighter") && !list.contains("xwing-elsewhere"),
        "{list}"
    );
    // The tiefighter defects: relabelled in place, it is dropped like the xwing.
    api.apply(pod_object(
        &s,
        "tiefighter",
        json!({"org": "alliance", "class": "tiefighter"}),
    ));
    eventually("the relabelled pod dropped", || {
        s.curl("tiefighter", LAND).0 == 28
    });
    api.apply(pod_object(
        &s,
        "xwing",
        json!({"org": "empire", "class": "xwing"}),
    ));
    eventually("the relabelled xwing landing", || {
        s.curl("xwing", LAND) == (0, "Ship landed\n".into())
    });
}

/// `ward run` restarted while the API server is down enforces its checkpoint at once (policies
/// and this node's pods), and corrects it from the first list once the server is back.
#[test]
fn a_restart_with_the_api_down_enforces_the_checkpoint() {
    if !privileged("a_restart_with_the_api_down_enforces_the_checkpoint") {
        return;
    }
    let (mut s, api) = scene_with("kc", false);
    api.apply(pod_object(
        &s,
        "deathstar-1",
        json!({"org": "empire", "class": "deathstar"}),
    ));
    api.apply(pod_object(
        &s,
        "tiefighter",
        json!({"org": "empire", "class": "tiefighter"}),
    ));
    api.apply(pod_object(
        &s,
        "xwing",
        json!({"org": "alliance", "class": "xwing"}),
    ));
    api.apply(rule1());
    eventually("enforced", || {
        s.curl("tiefighter", EXHAUST).1 == "Access denied\r\n"
    });
    let checkpoint = s.dir.join("checkpoint.json");
    eventually("the checkpoint written", || {
        let text = std::fs::read_to_string(&checkpoint).unwrap_or_default();
        text.contains("CiliumNetworkPolicy default/rule1") && text.contains("tiefighter")
    });
    s.stop_ward();
    api.set_down(true);
    // Deleted while Ward is down: the first list after the restart must take it away.
    api.delete("CiliumNetworkPolicy", "default", "rule1");
    s.start_ward();
    // At once, with no API server: the last state, and not ready (no first list yet).
    assert_eq!(s.curl("tiefighter", EXHAUST).1, "Access denied\r\n");
    assert_eq!(readyz(&s), "503");
    assert_eq!(s.curl("tiefighter", LAND), (0, "Ship landed\n".into()));
    assert_eq!(s.curl("xwing", LAND).0, 28, "xwing is dropped at L3/L4");
    api.set_down(false);
    ward_tests::eventually(
        "the deletion seen after the restart",
        Duration::from_secs(20),
        || s.curl("tiefighter", EXHAUST).1.starts_with("Panic"),
    );
    assert_eq!(s.curl("xwing", LAND), (0, "Ship landed\n".into()));
    eventually("ready after the first lists", || readyz(&s) == "200");
}

/// Another node's pod (here the outside network's address, reaching this node over its uplink)
/// is judged by its labels: its Pod object gives the address its identity in the ipcache.
#[test]
fn another_nodes_pods_are_judged_by_their_labels() {
    if !privileged("another_nodes_pods_are_judged_by_their_labels") {
        return;
    }
    let (mut s, api) = scene_full("kr", true, true);
    api.apply(rule1());
    let deathstar = s.pods.iter().find(|p| p.name == "deathstar-1").unwrap().ip;
    let land = [
        "-XPOST".to_string(),
        format!("http://{deathstar}/v1/request-landing"),
    ];
    let land: Vec<&str> = land.iter().map(String::as_str).collect();
    // Unknown: the world, which rule1 does not allow.
    eventually("the outside dropped", || s.curl("outside", &land).0 == 28);
    let remote = |labels: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "tiefighter-2", "namespace": "default", "labels": labels},
            "spec": {"nodeName": "node-2"},
            "status": {"phase": "Running", "podIP": ward_tests::OUTSIDE_IP.to_string()}
        })
    };
    api.apply(remote(json!({"org": "empire", "class": "tiefighter"})));
    eventually("the other node's empire pod landing", || {
        s.curl("outside", &land) == (0, "Ship landed\n".into())
    });
    // Judged at L7 too, as the empire pod it is.
    let exhaust = format!("http://{deathstar}/v1/exhaust-port");
    assert_eq!(
        s.curl("outside", &["-XPUT", &exhaust]).1,
        "Access denied\r\n"
    );
    // A restart while the API server is down keeps the other node's pods (the checkpoint):
    // judged as the empire pod at once, not as the world.
    let checkpoint = s.dir.join("checkpoint.json");
    eventually("the other node's pod in the checkpoint", || {
        std::fs::read_to_string(&checkpoint)
            .unwrap_or_default()
            .contains("tiefighter-2")
    });
    s.stop_ward();
    api.set_down(true);
    s.start_ward();
    assert_eq!(s.curl("outside", &land), (0, "Ship landed\n".into()));
    api.set_down(false);
    // Relabelled to the alliance, or gone: dropped again.
    api.apply(remote(json!({"org": "alliance"})));
    eventually("the relabelled pod dropped", || {
        s.curl("outside", &land).0 == 28
    });
    api.apply(remote(json!({"org": "empire"})));
    eventually("landing again", || {
        s.curl("outside", &land) == (0, "Ship landed\n".into())
    });
    api.delete("Pod", "default", "tiefighter-2");
    eventually("the deleted pod dropped", || {
        s.curl("outside", &land).0 == 28
    });
}

/// Runs a CNI plugin in the node namespace as a runtime does: `CNI_*` variables, the network
/// configuration on stdin. Returns (exit code, stdout).
fn cni(
    node_ns: &str,
    plugin: &Path,
    command: &str,
    netns: &str,
    pod: &str,
    conf: &Value,
) -> (i32, Value) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", node_ns])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("sandbox-{pod}"))
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=sandbox-{pod}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run the CNI plugin");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("CNI plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(text.trim()).unwrap_or(Value::Null),
    )
}

/// `ward-cni` chained after the real `ptp` plugin (containernetworking-plugins, with
/// `host-local` IPAM), driven with the standard CNI environment and stdin: ADD waits for the
/// pod's labels from the API, then the pod is an endpoint on the veth ptp created and its
/// traffic is judged; CHECK agrees; DEL removes the endpoint though the Pod object remains.
#[test]
fn ward_cni_chained_after_ptp_makes_the_pod_an_endpoint() {
    if !privileged("ward_cni_chained_after_ptp_makes_the_pod_an_endpoint") {
        return;
    }
    let ptp = Path::new("/usr/lib/cni/ptp");
    assert!(ptp.exists(), "containernetworking-plugins is not installed");
    let (s, api) = scene_with("kn", false);
    api.apply(pod_object(
        &s,
        "deathstar-1",
        json!({"org": "empire", "class": "deathstar"}),
    ));
    api.apply(rule1());
    // `ward` answers as `ward-cni` under that name, as the DaemonSet installs it.
    let bin = s.dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ward_cni = bin.join("ward-cni");
    std::os::unix::fs::symlink(ward_tests::ward_bin(), &ward_cni).unwrap();
    let (code, version) = cni(&s.node_ns, &ward_cni, "VERSION", "none", "none", &json!({}));
    assert_eq!(code, 0);
    assert!(
        version["supportedVersions"].to_string().contains("1.0.0"),
        "{version}"
    );

    // The sandbox and its interface, made by the real ptp plugin.
    let netns = format!("{}-cni", s.id);
    std::process::Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    let ptp_conf = json!({
        "cniVersion": "1.0.0", "name": "ward-test", "type": "ptp", "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.201.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": s.dir.join("ipam").display().to_string()}
    });
    let (code, result) = cni(&s.node_ns, ptp, "ADD", &netns, "tiefighter-2", &ptp_conf);
    assert_eq!(code, 0, "ptp ADD: {result}");
    let pod_ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let host_if = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_null())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ward-test", "type": "ward-cni",
        "socket": s.admin_socket().display().to_string(), "timeout_seconds": 20,
        "prevResult": result
    });

    // ADD before the Pod's labels are known: it waits for them.
    let add = {
        let (node_ns, conf, netns, ward_cni) = (
            s.node_ns.clone(),
            conf.clone(),
            netns.clone(),
            ward_cni.clone(),
        );
        std::thread::spawn(move || cni(&node_ns, &ward_cni, "ADD", &netns, "tiefighter-2", &conf))
    };
    std::thread::sleep(Duration::from_millis(700));
    assert!(!add.is_finished(), "ADD returned before the pod had labels");
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "tiefighter-2", "namespace": "default",
                     "labels": {"org": "empire", "class": "tiefighter"}},
        "spec": {"nodeName": s.id, "containers": [{"name": "c"}]},
        "status": {"phase": "Pending"}
    });
    api.apply(pod.clone());
    let (code, out) = add.join().unwrap();
    assert_eq!(code, 0, "ward-cni ADD: {out}");
    assert_eq!(
        out["ips"], conf["prevResult"]["ips"],
        "ADD passes the result on"
    );
    let list = || -> Vec<Value> {
        let out = s.ward_cli(&["endpoint", "list", "-o", "json"]);
        serde_json::from_slice(&out.stdout).expect("endpoint list JSON")
    };
    let ours = |l: &[Value]| l.iter().find(|e| e["name"] == "tiefighter-2").cloned();
    let row = ours(&list()).expect("tiefighter-2 is an endpoint");
    assert_eq!(row["interface"], json!(host_if), "{row}");
    assert_eq!(row["ipv4"], json!([pod_ip]), "{row}");
    // Its traffic is judged: an empire ship lands, the exhaust port is refused at L7.
    let deathstar = s.pod("deathstar-1").ip;
    let curl = |args: &[&str]| curl_in(&netns, args);
    let land = format!("http://{deathstar}/v1/request-landing");
    let exhaust = format!("http://{deathstar}/v1/exhaust-port");
    assert_eq!(curl(&["-XPOST", &land]), (0, "Ship landed\n".into()));
    assert_eq!(curl(&["-XPUT", &exhaust]).1, "Access denied\r\n");
    // The kubelet reports the address: nothing changes.
    pod["status"] = json!({"phase": "Running", "podIP": pod_ip});
    api.apply(pod);
    let (code, out) = cni(
        &s.node_ns,
        &ward_cni,
        "CHECK",
        &netns,
        "tiefighter-2",
        &conf,
    );
    assert_eq!(code, 0, "CHECK: {out}");
    assert_eq!(curl(&["-XPUT", &exhaust]).1, "Access denied\r\n");

    // DEL: the endpoint goes with the sandbox, though the Pod object is still there.
    let (code, _) = cni(&s.node_ns, &ward_cni, "DEL", &netns, "tiefighter-2", &conf);
    assert_eq!(code, 0);
    assert_eq!(ours(&list()), None, "DEL removes the endpoint");
    let (code, _) = cni(
        &s.node_ns,
        &ward_cni,
        "CHECK",
        &netns,
        "tiefighter-2",
        &conf,
    );
    assert_ne!(code, 0, "CHECK after DEL");
    // A repeated DEL is fine.
    assert_eq!(
        cni(&s.node_ns, &ward_cni, "DEL", &netns, "tiefighter-2", &conf).0,
        0
    );
    let (code, out) = cni(&s.node_ns, ptp, "DEL", &netns, "tiefighter-2", &ptp_conf);
    assert_eq!(code, 0, "ptp DEL: {out}");
    std::process::Command::new("ip")
        .args(["netns", "del", &netns])
        .status()
        .unwrap();
}

/// A Node object: its name, labels and InternalIP.
fn node_object(name: &str, ip: std::net::Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()},
                                 {"type": "Hostname", "address": name}]}
    })
}

/// `curl` from a network namespace that is no scene pod (a node's own, a CNI sandbox);
/// returns (exit code, stdout).
fn curl_in(netns: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-s", "--max-time", "3"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Two nodes, each a namespace with its own pods and its own `ward run` in Kubernetes mode,
/// joined by a veth underlay that is both nodes' uplink (`from-netdev`), fed by one API server.
/// A pod on node B is judged on node A by the identity of its labels (from its Pod object); an
/// ingress L7 rule is enforced on the destination's node, an egress L7 rule on the source's;
/// node B's address is `remote-node` on node A, node A's own is `host`.
#[test]
fn two_nodes_enforce_policy_across_the_underlay() {
    if !privileged("two_nodes_enforce_policy_across_the_underlay") {
        return;
    }
    let mut a = Scene::new("na");
    let mut b = Scene::new("nb");
    b.pod_net = 202;
    a.config_endpoints = false;
    b.config_endpoints = false;
    let empire_ds = [("org", "empire"), ("class", "deathstar")];
    let empire_tf = [("org", "empire"), ("class", "tiefighter")];
    let alliance = [("org", "alliance"), ("class", "xwing")];
    a.add_pod("deathstar-1", "default", &empire_ds);
    b.add_pod("tiefighter-b", "default", &empire_tf);
    b.add_pod("xwing-b", "default", &alliance);
    a.join_underlay(&mut b);
    a.start_deathstar("deathstar-1", 80);
    // One API server, reached on each node's loopback.
    let api =
        KubeApi::serve(in_netns(&a.node_ns, || TcpListener::bind("127.0.0.1:0")).expect("bind"));
    let on_b = in_netns(&b.node_ns, || TcpListener::bind("127.0.0.1:0")).expect("bind");
    let b_addr = on_b.local_addr().unwrap();
    api.serve_also(on_b);
    for (s, kubeconfig) in [
        (&mut a, api.kubeconfig()),
        (&mut b, KubeApi::kubeconfig_at(b_addr)),
    ] {
        let path = s.dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        s.node_config = format!(
            "node: {{name: {}}}\npolicy_source: kubernetes\n\
             kubernetes: {{kubeconfig: {}, checkpoint: {}}}",
            s.id,
            path.display(),
            s.dir.join("checkpoint.json").display()
        );
    }
    api.apply(node_object(&a.id, ward_tests::UNDERLAY_A));
    api.apply(node_object(&b.id, ward_tests::UNDERLAY_B));
    for s in [&a, &b] {
        for p in &s.pods {
            let labels: serde_json::Map<String, Value> = p
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            api.apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": "default", "labels": labels},
                "spec": {"nodeName": s.id, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": p.ip.to_string()}
            }));
        }
    }
    api.apply(rule1());
    a.start_ward();
    b.start_ward();
    let deathstar = a.pod("deathstar-1").ip;
    let land = format!("http://{deathstar}/v1/request-landing");
    let exhaust = format!("http://{deathstar}/v1/exhaust-port");

    // Cross-node L3/L4 and L7 on the destination's node: node A knows B's pods by their labels.
    eventually("B's tiefighter landing on A", || {
        b.curl("tiefighter-b", &["-XPOST", &land]) == (0, "Ship landed\n".into())
    });
    assert_eq!(
        b.curl("tiefighter-b", &["-XPUT", &exhaust]).1,
        "Access denied\r\n"
    );
    assert_eq!(
        b.curl("xwing-b", &["-XPOST", &land]).0,
        28,
        "B's xwing is dropped at L3/L4 on A"
    );
    let on_a = a
        .wait_flow(Duration::from_secs(3), |f| {
            f["verdict"] == "DROPPED"
                && f["l7"]["http"]["method"] == "PUT"
                && f["source"]["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("tiefighter-b"))
        })
        .expect("node A's flow of the L7 deny, naming B's pod");
    assert_eq!(on_a["policy"], "default/rule1");
    assert!(
        a.flows().iter().any(|f| f["verdict"] == "DROPPED"
            && f["type"] == "l3l4"
            && f["source"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("xwing-b"))),
        "node A's flow of the L3/L4 drop of B's xwing"
    );

    // An egress L7 rule is enforced on the source's node: B refuses what A would allow.
    api.apply(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "tiefighter-b-out", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"class": "tiefighter"}},
            "egress": [{
                "toEndpoints": [{"matchLabels": {"class": "deathstar"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                             "rules": {"http": [{"method": "GET"}]}}]
            }]
        }
    }));
    eventually("B's egress rule in force", || {
        b.curl("tiefighter-b", &["-XPOST", &land]).1 == "Access denied\r\n"
    });
    b.wait_flow(Duration::from_secs(3), |f| {
        f["verdict"] == "DROPPED"
            && f["l7"]["http"]["method"] == "POST"
            && f["policy"] == "default/tiefighter-b-out"
    })
    .expect("node B's flow of its egress deny");
    api.delete("CiliumNetworkPolicy", "default", "tiefighter-b-out");
    eventually("B's egress rule gone", || {
        b.curl("tiefighter-b", &["-XPOST", &land]) == (0, "Ship landed\n".into())
    });

    // Entities: node A's own address is `host` (its pods accept it by default); node B's is
    // `remote-node`, which rule1 does not allow until a policy names it.
    assert_eq!(
        curl_in(&a.node_ns, &["-XPOST", &land]),
        (0, "Ship landed\n".into())
    );
    assert_eq!(
        curl_in(&b.node_ns, &["-XPOST", &land]).0,
        28,
        "node B (remote-node) is not allowed by rule1"
    );
    api.apply(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "from-other-nodes", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"class": "deathstar"}},
            "ingress": [{"fromEntities": ["remote-node"],
                         "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
        }
    }));
    eventually("node B allowed as remote-node", || {
        curl_in(&b.node_ns, &["-XPOST", &land]) == (0, "Ship landed\n".into())
    });
    let f = a
        .wait_flow(Duration::from_secs(3), |f| {
            f["source"]["identity"] == 6 && f["verdict"] == "FORWARDED"
        })
        .expect("node A's flow from remote-node");
    assert_eq!(f["destination"]["port"], 80, "{f}");
    // B's pods are still judged as themselves, not as their node.
    assert_eq!(b.curl("xwing-b", &["-XPOST", &land]).0, 28);
}

/// `toServices` of a Service without selector is its EndpointSlices' addresses (here the
/// outside network's server): allowed while a slice lists it, not after. Slices the
/// EndpointSlice controller makes (for Services with selectors) do not count.
#[test]
fn to_services_follows_the_endpoint_slices_of_a_service_without_selector() {
    if !privileged("to_services_follows_the_endpoint_slices_of_a_service_without_selector") {
        return;
    }
    let (mut s, api) = scene_full("ke", true, true);
    s.start_deathstar("outside", 80);
    let outside = format!("http://{}/v1/request-landing", ward_tests::OUTSIDE_IP);
    let land = ["-XPOST", outside.as_str()];
    assert_eq!(s.curl("tiefighter", &land), (0, "Ship landed\n".into()));
    api.apply(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "to-external-db", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"class": "tiefighter"}},
            "egress": [{"toServices": [{"k8sService": {"serviceName": "external-db", "namespace": "default"}}]}]
        }
    }));
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "external-db", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}
    }));
    // No endpoints yet: nothing is behind the Service.
    eventually("the egress policy in force", || {
        s.curl("tiefighter", &land).0 == 28
    });
    let slice = |name: &str, ip: &str, managed_by: Option<&str>| {
        let mut labels = json!({"kubernetes.io/service-name": "external-db"});
        if let Some(m) = managed_by {
            labels["endpointslice.kubernetes.io/managed-by"] = json!(m);
        }
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"port": 80, "protocol": "TCP"}]
        })
    };
    // A controller-made slice (as for a Service with selector) does not count.
    api.apply(slice(
        "external-db-auto",
        &ward_tests::OUTSIDE_IP.to_string(),
        Some("endpointslice-controller.k8s.io"),
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.curl("tiefighter", &land).0, 28);
    api.apply(slice(
        "external-db-1",
        &ward_tests::OUTSIDE_IP.to_string(),
        None,
    ));
    eventually("the slice's address allowed", || {
        s.curl("tiefighter", &land) == (0, "Ship landed\n".into())
    });
    // The address moves: the old one is refused.
    api.apply(slice("external-db-1", "10.250.0.9", None));
    eventually("the old address refused", || {
        s.curl("tiefighter", &land).0 == 28
    });
}
