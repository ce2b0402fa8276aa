//! The network-namespace harness for Ward's scenes: a "node" namespace holding the host side of
//! every pod's veth, the datapath and `ward run`; one namespace per pod with a real server or
//! client in it. Used by the integration tests in `tests/tests/` and by `cargo xtask demo`.
//!
//! Everything a scene creates (namespaces, `/etc/netns/*` files, processes, the private bpffs
//! pin root, the routing rule inside the node namespace) is removed when the [`Scene`] drops,
//! also when a test panics. Nothing touches the machine's root namespace or `/sys/fs/bpf/ward`.
//!
//! Below the scenes: [`netns`] (a thread in a named or private namespace, veth wiring, the
//! client/node/server [`netns::Topology`]), [`packet`] (synthetic frames) and, with feature
//! `datapath` (default; it builds the eBPF programs, so it needs clang), [`datapath`] (the
//! loader's test hooks: BPF_PROG_TEST_RUN verdicts, private pin roots). `xtask` uses this crate
//! without default features: it must build before it has installed clang.

#[cfg(feature = "datapath")]
pub mod datapath;
pub mod kubeapi;
pub mod netns;
pub mod packet;

pub use netns::in_netns;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

/// Transparent HTTP listener port of the scenes' `ward run`.
pub const HTTP_LISTENER: u16 = 15001;

/// Returns false (after printing `SKIPPED (needs root): <test>` to fd 2, past libtest's capture)
/// when not root; panics instead when `WARD_REQUIRE_PRIVILEGED=1` (CI, and `cargo xtask test`
/// as root).
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("WARD_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root but WARD_REQUIRE_PRIVILEGED=1");
    }
    let line = format!("SKIPPED (needs root): {test}\n");
    let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    false
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
/// The Python of the peers' venv (grpcio, kafka-python; installed by `cargo xtask test`),
/// or `WARD_PEERS_PYTHON`.
pub fn peers_python() -> PathBuf {
    let p = std::env::var_os("WARD_PEERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("ward-peers/venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` installs the Python peers into it",
        p.display()
    );
    p
}

/// The tansu Kafka broker (`cargo xtask test` builds it and sets `WARD_TANSU`; else cargo's
/// bin directory).
pub fn tansu() -> PathBuf {
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

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The `ward` binary: `$WARD_BIN`, else `target/debug/ward` (built by `cargo xtask test`).
pub fn ward_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARD_BIN") {
        return PathBuf::from(p);
    }
    let p = target_dir().join("debug/ward");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p ward` first (cargo xtask test does)",
        p.display()
    );
    p
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub(crate) fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    must(Command::new("ip").args(args))
}

/// Mounts the bpffs on `/sys/fs/bpf` in this mount namespace when it is missing (fresh
/// machines). `ward run` is started under `ip netns exec`, which remounts `/sys`; ward then joins
/// its parent's mount namespace for the pins, so the parent must have the bpffs, or the pins
/// would live in a private bpffs that vanishes when ward exits.
pub fn ensure_bpffs() {
    let fs_type = run(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]));
    if String::from_utf8_lossy(&fs_type.stdout).trim() == "bpf_fs" {
        return;
    }
    let _ = std::fs::create_dir_all("/sys/fs/bpf");
    must(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
}

/// A process's open descriptors and resident memory (KiB), from `/proc`.
pub fn proc_usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// Waits up to `within` until `f` holds (policy changes and servers come up asynchronously);
/// panics naming `what` otherwise.
pub fn eventually(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {within:?}");
}

/// One pod: its namespace, address and labels.
#[derive(Clone, Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Host-side veth, in the node namespace.
    pub host_if: String,
}

/// A scene: node namespace, pods, servers, policies, and `ward run`.
pub struct Scene {
    pub id: String,
    pub node_ns: String,
    pub dir: PathBuf,
    pub pin_root: PathBuf,
    pub pods: Vec<Pod>,
    procs: Vec<(String, Child)>,
    ward: Option<Child>,
    config_written: bool,
    uplink: Option<String>,
    /// The "outside" network's namespace ([`Scene::add_outside`]).
    outside: Option<String>,
    /// Extra node config lines (`node: {labels: …}` and the like), verbatim.
    pub node_config: String,
    /// The DNS listener's port, when the scene has one.
    pub dns_listener: Option<u16>,
    /// The Kafka listener's port, when the scene has one.
    pub kafka_listener: Option<u16>,
    /// Whether the node config lists the pods as endpoints (Kubernetes mode's scenes take
    /// them from Pod objects instead).
    pub config_endpoints: bool,
    /// The pods' addresses are `10.<pod_net>.N.2` (200 unless set before the first pod; a
    /// second node of a two-node scene needs its own).
    pub pod_net: u8,
}

/// The DNS listener port scenes use.
pub const DNS_LISTENER: u16 = 15053;
/// The Kafka listener port scenes use.
pub const KAFKA_LISTENER: u16 = 15092;

/// The outside network's address, and the node's on its uplink.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
pub const NODE_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

/// The two nodes' addresses on a two-node scene's underlay ([`Scene::join_underlay`]).
pub const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(10, 250, 9, 1);
pub const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(10, 250, 9, 2);

impl Scene {
    /// Creates the node namespace and the scene's private directory.
    pub fn new(tag: &str) -> Scene {
        ensure_bpffs();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}{:x}{:x}",
            &tag[..tag.len().min(2)],
            std::process::id() % 0xffff,
            n
        );
        let node_ns = format!("{id}-node");
        let dir = std::env::temp_dir().join(format!("ward-scene-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies")).expect("scene dir");
        let scene = Scene {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/ward-scene-{id}")),
            id,
            node_ns,
            dir,
            pods: Vec::new(),
            procs: Vec::new(),
            ward: None,
            config_written: false,
            uplink: None,
            outside: None,
            node_config: String::new(),
            dns_listener: None,
            kafka_listener: None,
            config_endpoints: true,
            pod_net: 200,
        };
        ip(&["netns", "add", &scene.node_ns]);
        scene.node(&["ip", "link", "set", "lo", "up"]);
        scene
    }

    /// Runs a command in the node namespace and insists on success.
    pub fn node(&self, args: &[&str]) -> Output {
        must(
            Command::new("ip")
                .args(["netns", "exec", &self.node_ns])
                .args(args),
        )
    }

    /// Adds a pod with a veth to the node: pod `10.<pod_net>.N.2/24`, host side
    /// `10.<pod_net>.N.1/24`.
    pub fn add_pod(&mut self, name: &str, namespace: &str, labels: &[(&str, &str)]) -> Pod {
        let idx = self.pods.len() + 1;
        let netns = format!("{}-{idx}", self.id);
        let host_if = format!("{}h{idx}", self.id);
        let peer_if = format!("{}p{idx}", self.id);
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let pod_ip = Ipv4Addr::new(10, self.pod_net, idx as u8, 2);
        let host_ip = Ipv4Addr::new(10, self.pod_net, idx as u8, 1);
        netns::wire(
            &self.node_ns,
            &netns,
            &host_if,
            &peer_if,
            pod_ip,
            host_ip,
            "default",
        );
        let pod = Pod {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns,
            ip: pod_ip,
            host_if,
        };
        self.pods.push(pod.clone());
        self.write_hosts();
        pod
    }

    /// Adds the outside network: a namespace (not a pod, no endpoint) joined to the node by a
    /// veth that becomes the node's `uplink`: node side [`NODE_UPLINK_IP`], outside
    /// [`OUTSIDE_IP`], which reaches the pods through the node. `exec`/`spawn_in` take
    /// `"outside"` for it.
    pub fn add_outside(&mut self) {
        let netns = format!("{}-out", self.id);
        let up = format!("{}up", self.id);
        let peer = format!("{}ou", self.id);
        netns::wire(
            &self.node_ns,
            &netns,
            &up,
            &peer,
            OUTSIDE_IP,
            NODE_UPLINK_IP,
            "10.200.0.0/16",
        );
        self.uplink = Some(up);
        self.outside = Some(netns);
    }

    /// Joins this node and `other` by a veth "underlay" that becomes both nodes' `uplink`:
    /// this side [`UNDERLAY_A`], the other [`UNDERLAY_B`], each node routing the other's pod
    /// network (`10.<pod_net>.0.0/16`) through it. Call before either starts `ward run`.
    pub fn join_underlay(&mut self, other: &mut Scene) {
        assert_ne!(
            self.pod_net, other.pod_net,
            "two nodes need two pod networks"
        );
        let (a, b) = (format!("{}u", self.id), format!("{}u", other.id));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &self.node_ns]);
        ip(&["link", "set", &b, "netns", &other.node_ns]);
        for (ns, dev, addr, via, net) in [
            (&self.node_ns, &a, UNDERLAY_A, UNDERLAY_B, other.pod_net),
            (&other.node_ns, &b, UNDERLAY_B, UNDERLAY_A, self.pod_net),
        ] {
            let n = |args: &[&str]| ip(&[&["-n", ns.as_str()][..], args].concat());
            n(&["addr", "add", &format!("{addr}/24"), "dev", dev]);
            n(&["link", "set", dev, "up"]);
            n(&[
                "route",
                "add",
                &format!("10.{net}.0.0/16"),
                "via",
                &via.to_string(),
            ]);
            must(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]));
        }
        self.uplink = Some(a);
        other.uplink = Some(b);
    }

    /// The network namespace of `pod`, or of the outside network for `"outside"`.
    fn netns_of(&self, pod: &str) -> &str {
        match (&self.outside, pod) {
            (Some(ns), "outside") => ns,
            _ => &self.pod(pod).netns,
        }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `/etc/netns/<ns>/hosts` (bind-mounted by `ip netns exec`): every pod by name, and the
    /// first pod of each `app`/`class` label value (a stand-in for a Service name).
    fn write_hosts(&self) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.pods {
            let _ = writeln!(hosts, "{} {}", p.ip, p.name);
            for key in ["class", "app"] {
                if let Some(v) = p.labels.get(key) {
                    if v != &p.name && seen.insert(v.clone()) {
                        let _ = writeln!(hosts, "{} {v}", p.ip);
                    }
                }
            }
        }
        for p in &self.pods {
            let d = PathBuf::from("/etc/netns").join(&p.netns);
            std::fs::create_dir_all(&d).expect("/etc/netns dir");
            std::fs::write(d.join("hosts"), &hosts).expect("hosts file");
        }
    }

    /// A command to run inside a pod.
    pub fn cmd_in(&self, pod: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.netns_of(pod), program]);
        c
    }

    /// Starts a long-running process in the node namespace, killed when the scene drops.
    pub fn spawn_node(&mut self, args: &[&str], log: &str) {
        let logf = std::fs::File::create(self.dir.join(log)).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .args(args)
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        self.procs.push(("node".into(), child));
    }

    /// Runs a command in a pod and returns its output (success not required).
    pub fn exec(&self, pod: &str, args: &[&str]) -> Output {
        let mut c = self.cmd_in(pod, args[0]);
        c.args(&args[1..]);
        run(&mut c)
    }

    /// Starts a long-running process in a pod, killed when the scene drops.
    pub fn spawn_in(&mut self, pod: &str, args: &[&str], log: &str) -> &mut Child {
        let mut c = self.cmd_in(pod, args[0]);
        c.args(&args[1..]);
        let logf = std::fs::File::create(self.dir.join(log)).expect("log file");
        c.stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .stdin(Stdio::null());
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        self.procs.push((pod.to_string(), child));
        &mut self.procs.last_mut().expect("just pushed").1
    }

    /// Waits until `port` accepts TCP connections inside the pod.
    pub fn wait_port(&self, pod: &str, port: u16) {
        let ip = match (&self.outside, pod) {
            (Some(_), "outside") => OUTSIDE_IP,
            _ => self.pod(pod).ip,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let out = self.exec(
                pod,
                &[
                    "python3",
                    "-c",
                    &format!("import socket; socket.create_connection(('{ip}', {port}), 1)"),
                ],
            );
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{pod}:{port} did not come up; logs in {}",
            self.dir.display()
        );
    }

    /// Starts nginx in `pod`: one foreground process whose files live in the scene directory,
    /// serving `http_block` (the inside of nginx's `http {}`; the temp paths are set here,
    /// `DIR` stands for the scene directory).
    pub fn start_nginx(&mut self, pod: &str, http_block: &str) {
        let dir = self.dir.to_string_lossy().into_owned();
        let mut conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx-{pod}.pid;\n\
             error_log {dir}/nginx-{pod}-error.log info;\nevents {{ worker_connections 1024; }}\n\
             http {{\n"
        );
        for (kind, sub) in [
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        ] {
            let _ = writeln!(conf, "    {kind}_temp_path {dir}/nginx-{pod}-{sub};");
        }
        conf.push_str(&http_block.replace("DIR", &dir));
        conf.push_str("\n}\n");
        let path = self.dir.join(format!("nginx-{pod}.conf"));
        std::fs::write(&path, conf).expect("nginx.conf");
        let path = path.to_string_lossy().into_owned();
        self.spawn_in(pod, &["nginx", "-c", &path], &format!("nginx-{pod}.log"));
    }

    /// Starts the Star Wars deathstar HTTP server (Python, HTTP/1.1 keep-alive) in a pod.
    pub fn start_deathstar(&mut self, pod: &str, port: u16) {
        let script = self.dir.join("deathstar.py");
        std::fs::write(&script, DEATHSTAR_PY).expect("write deathstar.py");
        let script = script.to_string_lossy().into_owned();
        self.spawn_in(
            pod,
            &["python3", &script, &port.to_string()],
            &format!("{pod}.log"),
        );
        self.wait_port(pod, port);
    }

    /// The Star Wars pair most scenes start from: `deathstar` (org=empire, class=deathstar)
    /// and `tiefighter` (org=empire, class=tiefighter).
    pub fn empire_pair(tag: &str) -> Scene {
        let mut s = Scene::new(tag);
        s.add_pod(
            "deathstar",
            "default",
            &[("org", "empire"), ("class", "deathstar")],
        );
        s.add_pod(
            "tiefighter",
            "default",
            &[("org", "empire"), ("class", "tiefighter")],
        );
        s
    }

    /// Writes `text` to `name` in the scene's directory (a script, a config) and returns
    /// the path as a string, ready for a command line.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path.to_string_lossy().into_owned()
    }

    /// Writes (or replaces) a policy file in the scene's watched policy directory.
    pub fn write_policy(&self, file: &str, yaml: &str) {
        let path = self.dir.join("policies").join(file);
        // Write then rename, so the watcher never sees half a file.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write policy");
        std::fs::rename(&tmp, &path).expect("rename policy");
    }

    pub fn remove_policy(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.join("policies").join(file));
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    pub fn flow_log(&self) -> PathBuf {
        self.dir.join("flows.jsonl")
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Writes the node config for the current pods.
    pub fn write_config(&mut self) {
        let mut y = String::new();
        if self.node_config.is_empty() {
            let _ = writeln!(y, "node: {{name: {}}}", self.id);
        } else {
            let _ = writeln!(y, "{}", self.node_config.trim_end());
        }
        let _ = writeln!(y, "pin_root: {}", self.pin_root.display());
        if let Some(u) = &self.uplink {
            let _ = writeln!(y, "uplink: {u}");
        }
        let _ = writeln!(y, "policy_dirs: [policies]");
        let mut listeners = format!("http: {HTTP_LISTENER}");
        if let Some(dns) = self.dns_listener {
            let _ = write!(listeners, ", dns: {dns}");
        }
        if let Some(kafka) = self.kafka_listener {
            let _ = write!(listeners, ", kafka: {kafka}");
        }
        let _ = writeln!(y, "listeners: {{{listeners}}}");
        let _ = writeln!(y, "admin_socket: {}", self.admin_socket().display());
        let _ = writeln!(y, "metrics: 127.0.0.1:9962");
        // A stop waits at most this for open connections (a hung test client cannot hold it
        // for the default 10 s; `terminate_ward` gives up at 10 s).
        let _ = writeln!(y, "drain_timeout_ms: 3000");
        let _ = writeln!(y, "flow_log: {}", self.flow_log().display());
        // Without them, `endpoints: []` and no pod below.
        let listed: &[Pod] = if self.config_endpoints {
            let _ = writeln!(y, "endpoints:");
            &self.pods
        } else {
            let _ = writeln!(y, "endpoints: []");
            &[]
        };
        for p in listed {
            let _ = writeln!(y, "- name: {}", p.name);
            let _ = writeln!(y, "  namespace: {}", p.namespace);
            let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(y, "  labels: {{{}}}", labels.join(", "));
            let _ = writeln!(y, "  ips: [{}]", p.ip);
            let _ = writeln!(y, "  interface: {}", p.host_if);
        }
        std::fs::write(self.config_path(), y).expect("write node.yaml");
        self.config_written = true;
    }

    /// Starts `ward run` in the node namespace and waits for its admin socket.
    pub fn start_ward(&mut self) {
        let child = self.spawn_ward();
        self.ward = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.ward.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("ward run exited early ({status}):\n{}", self.ward_log());
                }
            }
            if self.ward_cli(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ward run did not become ready:\n{}", self.ward_log());
    }

    /// `ward run` on this scene's config, its output appended to `ward.log`.
    fn spawn_ward(&mut self) -> Child {
        if !self.config_written {
            self.write_config();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ward.log"))
            .expect("ward.log");
        Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(ward_bin())
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ward run")
    }

    /// A handover with `after_handover: wait` in the config: starts a second `ward run`,
    /// waits until the old one says it drained and waits for SIGTERM, and returns the old
    /// process (still running) for the caller to stop.
    pub fn upgrade_ward_keeping_old(&mut self) -> Child {
        let old = self.ward.take().expect("a running ward to upgrade");
        let before = self.ward_log().matches("waiting for SIGTERM").count();
        let new = self.spawn_ward();
        self.ward = Some(new);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ward_log().matches("waiting for SIGTERM").count() == before {
            assert!(
                Instant::now() < deadline,
                "no drained old ward:\n{}",
                self.ward_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        old
    }

    /// A hitless restart: starts a second `ward run` while the first serves; the new one takes
    /// the listening sockets over and the old one drains and exits 0. Returns the time from
    /// the new process's start to the old one's exit.
    pub fn upgrade_ward(&mut self) -> Duration {
        let mut old = self.ward.take().expect("a running ward to upgrade");
        let start = Instant::now();
        let mut new = self.spawn_ward();
        let deadline = start + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = new.try_wait() {
                panic!("the new ward run exited ({status}):\n{}", self.ward_log());
            }
            if let Ok(Some(status)) = old.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = old.kill();
                let _ = new.kill();
                panic!(
                    "the old ward did not hand over and exit:\n{}",
                    self.ward_log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = start.elapsed();
        assert!(
            status.success(),
            "the old ward exited {status}:\n{}",
            self.ward_log()
        );
        self.ward = Some(new);
        took
    }

    /// Starts a tansu broker (memory storage) in `pod` listening and advertised on `port`,
    /// with `topics` of one partition each; returns its `tcp://IP:PORT` URL.
    pub fn start_tansu(&mut self, pod: &str, port: u16, topics: &[&str]) -> String {
        self.start_tansu_advertised(pod, port, port, topics)
    }

    /// [`Scene::start_tansu`] advertising another port than it listens on (a relay's).
    pub fn start_tansu_advertised(
        &mut self,
        pod: &str,
        port: u16,
        advertised: u16,
        topics: &[&str],
    ) -> String {
        let tansu = tansu();
        let tansu = tansu.to_str().expect("a UTF-8 path");
        let url = format!("tcp://{}:{port}", self.pod(pod).ip);
        let advertised = format!("tcp://{}:{advertised}", self.pod(pod).ip);
        self.spawn_in(
            pod,
            &[
                tansu,
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            &format!("tansu-{port}.log"),
        );
        self.wait_port(pod, port);
        for topic in topics {
            let out = self.exec(
                pod,
                &[
                    tansu,
                    "topic",
                    "create",
                    "--broker",
                    &url,
                    "--partitions",
                    "1",
                    topic,
                ],
            );
            assert!(out.status.success(), "tansu topic create {topic}: {out:?}");
        }
        url
    }

    /// The node's `/metrics` text (empty when Ward does not answer).
    pub fn metrics(&self) -> String {
        let out = self.node(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:9962/metrics",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops `ward run` with SIGTERM (the datapath stays attached).
    pub fn stop_ward(&mut self) {
        let _ = self.terminate_ward();
    }

    /// Stops `ward run` with SIGTERM and returns its exit status; `None` when it was not
    /// running, or did not exit within 10 s and was killed.
    pub fn terminate_ward(&mut self) -> Option<ExitStatus> {
        let mut c = self.ward.take()?;
        // `ip netns exec` execs ward, so the child pid is ward's.
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Kills `ward run` hard (SIGKILL), as a crash would.
    pub fn kill_ward(&mut self) {
        if let Some(mut c) = self.ward.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ward_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ward.log")).unwrap_or_default()
    }

    /// Runs a `ward` CLI command (in the node namespace) against this scene's config.
    pub fn ward_cli(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.node_ns])
            .arg(ward_bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path()))
    }

    /// `curl` from a pod; returns (exit code, stdout).
    pub fn curl(&self, pod: &str, args: &[&str]) -> (i32, String) {
        let mut full = vec!["curl", "-s", "--max-time", "3"];
        full.extend_from_slice(args);
        let out = self.exec(pod, &full);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The flow log, parsed.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.flow_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for a flow matching `pred`.
    pub fn wait_flow(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.flows().into_iter().find(|f| pred(f)) {
                return Some(f);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether a TCP connection from the pod to `ip:port` succeeds within 2 s.
    pub fn tcp_reachable(&self, pod: &str, ip: Ipv4Addr, port: u16) -> bool {
        self.exec(
            pod,
            &[
                "python3",
                "-c",
                &format!("import socket; socket.create_connection(('{ip}', {port}), 2)"),
            ],
        )
        .status
        .success()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.stop_ward();
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever those left running in the namespaces (nginx's workers outlive a killed
        // master, for one).
        for ns in self
            .pods
            .iter()
            .map(|p| &p.netns)
            .chain([&self.node_ns])
            .chain(&self.outside)
        {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
        if self.config_written {
            let _ = self.ward_cli(&["uninstall"]);
        }
        // Whatever `ward uninstall` could not remove (or a scene that never ran ward).
        if self.pin_root.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", &p.netns]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&p.netns));
        }
        if let Some(ns) = &self.outside {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node_ns])
            .output();
        if std::env::var_os("WARD_KEEP_SCENE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The policy files of a `config/policies/NAME` scene, concatenated as one multi-document YAML.
pub fn scene_policy(name: &str) -> String {
    let dir = workspace_root().join("config/policies").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        out.push_str(
            &std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
        );
        out.push_str("\n---\n");
    }
    out
}

/// The seed's Star Wars scene: deathstar (2 replicas answering on port 80), tiefighter
/// (org=empire), xwing (org=alliance), and `ward run` with no policy yet.
pub fn starwars(tag: &str) -> Scene {
    let mut s = Scene::new(tag);
    s.add_pod(
        "deathstar-1",
        "default",
        &[("org", "empire"), ("class", "deathstar")],
    );
    s.add_pod(
        "deathstar-2",
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
    s.start_deathstar("deathstar-2", 80);
    s.start_ward();
    s
}

/// Checks that nothing with this scene's id is left on the machine (used by tests).
pub fn leftovers(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ns = run(Command::new("ip").args(["netns", "list"]));
    for line in String::from_utf8_lossy(&ns.stdout).lines() {
        if line.starts_with(id) {
            out.push(format!("netns {line}"));
        }
    }
    if Path::new(&format!("/sys/fs/bpf/ward-scene-{id}")).exists() {
        out.push(format!("pin root /sys/fs/bpf/ward-scene-{id}"));
    }
    out
}

/// The deathstar: `POST /v1/request-landing` → "Ship landed", `PUT /v1/exhaust-port` → the
/// panic text, plus a few paths for other scenes. HTTP/1.1 with keep-alive.
pub const DEATHSTAR_PY: &str = r#"import http.server, sys

PANIC = """Panic: deathstar exploded

goroutine 1 [running]:
main.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)
        /code/src/github.com/empire/deathstar/
        temp/main.go:9 +0x64
main.main()
        /code/src/github.com/empire/deathstar/
        temp/main.go:5 +0x85
"""

class Deathstar(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drain(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)

    def do_POST(self):
        self.drain()
        if self.path == "/v1/request-landing":
            self.reply(200, "Ship landed\n")
        else:
            self.reply(404, "Not found\n")

    def do_PUT(self):
        self.drain()
        if self.path == "/v1/exhaust-port":
            self.reply(503, PANIC)
        else:
            self.reply(200, "PUT %s\n" % self.path)

    def do_GET(self):
        self.reply(200, "GET %s from %s\n" % (self.path, self.headers.get("X-My-Header", "-")))

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))

http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Deathstar).serve_forever()
"#;

/// The process id of the running `ward run`, if any (for CPU and memory figures).
impl Scene {
    pub fn ward_pid(&self) -> Option<u32> {
        self.ward.as_ref().map(Child::id)
    }

    /// Pids of the processes started with [`Scene::spawn_in`] in `pod`.
    pub fn pids_in(&self, pod: &str) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(p, _)| p == pod)
            .map(|(_, c)| c.id())
            .collect()
    }
}
