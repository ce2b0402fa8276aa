//! `cargo xtask demo|test|bench`: prerequisites, build, run. Everything a fresh Debian machine
//! needs to run Ward's tests or demo is installed from here (when root), printing each command.

mod bench;
mod bench_dns;
mod bench_kafka;
mod bench_kube;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the tests and the demo need: clang and the libbpf/kernel headers build the
/// TC programs (bpf-redirect/README.md), gcc/libc6-dev build the layout check, iproute2 makes
/// namespaces and routes, curl is the real client of the namespace scenes, ping the ICMP one.
const APT_PACKAGES: &[&str] = &[
    "clang",
    "libbpf-dev",
    "linux-libc-dev",
    "gcc",
    "libc6-dev",
    "iproute2",
    "curl",
    "iputils-ping",
    "nginx",
    "python3-venv",
    "wrk",
    // The Kafka bench's latency peer (a plain TCP relay).
    "socat",
    "nghttp2-client",
    // DNS peers: dnsmasq and unbound as servers, dig as the client, dnsperf for the bench.
    "dnsmasq-base",
    "unbound",
    "bind9-dnsutils",
    "dnsperf",
    // The real CNI plugins (ptp, host-local) `ward-cni` is chained after in the Kubernetes scenes.
    "containernetworking-plugins",
];

/// Python peers (pinned), installed into `target/ward-peers/venv`: grpcio is the independent
/// gRPC implementation the gRPC scene drives.
const PIP_PACKAGES: &[&str] = &[
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "grpcio-health-checking==1.85.1",
    // The Kafka client the Kafka scene drives (pure Python, its own protocol code).
    "kafka-python==3.0.12",
    // The second Kafka client, on another codebase: librdkafka (bundled in the wheel).
    "confluent-kafka==2.16.1",
];

/// The Kafka broker the Kafka scene runs: tansu, an Apache-Kafka-compatible broker in Rust,
/// with in-memory storage (the `dynostore` feature).
const TANSU: &str = "tansu@0.6.0";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  test   install prerequisites (as root), build, run every test and policy case file\n  demo   the Star Wars story (see README)\n  soak   the mixed soak on one `ward run` for 10 minutes (`--secs N`), as root\n  bench  criterion benches and the end-to-end comparison (`--smoke` quick, `--e2e` only, `--baseline-bin PATH` another ward build in the same rounds, `--dns` only the DNS figures, `--kube` only the Kubernetes-mode figures, `--kafka` only the Kafka figures)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root_dir());
    c
}

/// Installs the missing Debian packages when running as root; otherwise says what is missing.
fn prerequisites() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: missing Debian packages: {} (run as root to install them, or: sudo apt-get install {})",
            missing.join(" "),
            missing.join(" ")
        );
        return Ok(());
    }
    // Package scripts must not start daemons (nginx on :80) on the machine: a temporary
    // policy-rc.d refuses them, unless the machine already has one.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let temporary = !policy.exists();
    if temporary {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing policy-rc.d")?;
        run(Command::new("chmod").args(["+x", "/usr/sbin/policy-rc.d"]))?;
    }
    let result = run(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
    });
    if temporary {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// Creates the peers' Python venv when its pinned packages are missing.
fn python_peers() -> Result<()> {
    let venv = target_dir().join("ward-peers/venv");
    let python = venv.join("bin/python");
    let have = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import grpc, grpc_tools, grpc_health, kafka, confluent_kafka",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PIP_PACKAGES))
}

/// Builds tansu once per machine into cargo's bin directory (9–16 min on 2 cores, then
/// cached), and tells the tests where it is (`WARD_TANSU`).
fn kafka_broker() -> Result<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let bin = home.join("bin/tansu");
    let version_ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tansu 0.6.0");
    let features_ok = std::fs::read_to_string(home.join(".crates2.json"))
        .is_ok_and(|t| t.contains("\"dynostore\""));
    if !(version_ok && features_ok) {
        eprintln!("xtask: building the tansu Kafka broker (once per machine; 9–16 min on 2 cores)");
        run(cargo().args(["install", "--locked", TANSU, "--features", "dynostore"]))?;
    }
    std::env::set_var("WARD_TANSU", &bin);
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let root = is_root();
    if ci && !root {
        bail!("CI must run as root: the datapath and namespace tests cannot be skipped there");
    }
    prerequisites()?;
    python_peers()?;
    kafka_broker()?;
    if !quick {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The workspace build enables bpf-redirect's `test-util` (ward-tests does); the
        // product builds it without, so lint that configuration too.
        run(cargo().args([
            "clippy",
            "-p",
            "bpf-redirect",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // The namespace scenes drive the real `ward` binary (and the DNS case-file scene
    // `ward-check`).
    run(cargo().args([
        "build",
        "-p",
        "ward",
        "--bin",
        "ward",
        "-p",
        "l7-rules",
        "--bin",
        "ward-check",
    ]))?;
    let mut test_cmd = cargo();
    test_cmd.args(["test", "--workspace"]);
    if root {
        // As root nothing may skip: privileged tests fail instead of skipping.
        test_cmd.env("WARD_REQUIRE_PRIVILEGED", "1");
    } else {
        eprintln!("xtask: not root: privileged tests will be SKIPPED (visible as `SKIPPED (needs root)` lines)");
    }
    run(&mut test_cmd)?;
    if root {
        // The end-to-end bench in smoke mode (a few seconds), so it cannot rot. Its figures
        // are not asserted: timing belongs to `cargo xtask bench`, not to tests.
        bench_e2e(true, None)?;
    }
    run(cargo().args(["build", "--quiet", "-p", "l7-rules", "--bin", "ward-check"]))?;
    // Last, so its summary is the run's closing line.
    policy_cases()
}

/// `cargo xtask soak [--secs N]`: the soak test of `tests/tests/restart.rs` (45 s in `test`)
/// for 10 minutes, its figures printed.
fn soak(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the soak runs in network namespaces on the real datapath: run it as root");
    }
    let secs = match args.iter().position(|a| a == "--secs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<u64>().ok())
            .context("--secs takes a number of seconds")?,
        None => 600,
    };
    prerequisites()?;
    python_peers()?;
    run(cargo().args(["build", "-p", "ward", "--bin", "ward"]))?;
    run(cargo()
        .args([
            "test",
            "-p",
            "ward-tests",
            "--test",
            "restart",
            "mixed_soak",
            "--",
            "--nocapture",
        ])
        .env("WARD_SOAK_SECS", secs.to_string())
        .env("WARD_REQUIRE_PRIVILEGED", "1"))
}

/// Runs `ward-check` on every `config/cases/NAME.jsonl` against `config/policies/NAME`.
fn policy_cases() -> Result<()> {
    let root = root_dir();
    let bin = target_dir().join("debug/ward-check");
    let cases_dir = root.join("config/cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .with_context(|| format!("cannot list {}", cases_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut broken = Vec::new();
    for f in &files {
        let name = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let policies = root.join("config/policies").join(&name);
        let out = Command::new(&bin)
            .arg("--policy")
            .arg(&policies)
            .arg("--cases")
            .arg(f)
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout.lines().last().unwrap_or("");
        let counts: Vec<usize> = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        match (out.status.code(), counts.as_slice()) {
            (Some(0 | 1), [p, fl]) => {
                passed += p;
                failed += fl;
                println!("policy cases {name}: {summary}");
                for line in stdout.lines().filter(|l| l.contains("\"pass\":false")) {
                    println!("  FAILED {line}");
                }
                if *fl > 0 {
                    broken.push(name);
                }
            }
            _ => {
                println!(
                    "policy cases {name}: ERROR\n{stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                broken.push(name);
                failed += 1;
            }
        }
    }
    println!("cases: {passed} passed, {failed} failed");
    if files.is_empty() {
        bail!("no case files in {}", cases_dir.display());
    }
    if !broken.is_empty() {
        bail!("policy case files failed: {}", broken.join(", "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"))
}

/// The Star Wars story on the real datapath: network namespaces for deathstar (two replicas),
/// tiefighter and xwing, `ward run` in a node namespace, real curl; then everything is removed.
/// Without root it tells the same story offline with `ward-check`.
fn demo(_args: &[String]) -> Result<()> {
    prerequisites()?;
    run(cargo().args(["build", "--quiet", "-p", "l7-rules", "--bin", "ward-check"]))?;
    if !is_root() {
        println!("cargo xtask demo: the live demo needs root (network namespaces, eBPF); telling the story offline with ward-check instead.\n");
        return demo_offline();
    }
    run(cargo().args(["build", "--quiet", "-p", "ward", "--bin", "ward"]))?;
    live_demo()
}

fn live_demo() -> Result<()> {
    use ward_tests::{scene_policy, Scene};
    println!("\n== Ward demo: the Star Wars story (seed 000) on the real datapath\n");
    println!(
        "Creating the scene: a node namespace running `ward run`, deathstar x2, tiefighter, xwing"
    );
    let s = ward_tests::starwars("demo");
    let show = |s: &Scene, ship: &str, method: &str, path: &str| {
        let (code, body) = s.curl(
            ship,
            &[&format!("-X{method}"), &format!("http://deathstar{path}")],
        );
        let shown = if code == 28 {
            "curl: (28) Connection timed out".to_string()
        } else if code != 0 {
            format!("curl exit {code}")
        } else {
            body.lines().next().unwrap_or("").to_string()
        };
        println!("{ship}$ curl -s -X{method} http://deathstar{path}\n  {shown}");
    };
    let observe = |s: &Scene, skip: usize| -> usize {
        let out = s.ward_cli(&["observe"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > skip {
            println!("\n$ ward observe");
            for l in &lines[skip..] {
                println!("  {l}");
            }
        }
        lines.len()
    };
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1200));

    println!("\n-- 1. No policy: every ship may land");
    show(&s, "xwing", "POST", "/v1/request-landing");
    show(&s, "tiefighter", "POST", "/v1/request-landing");
    let mut seen = observe(&s, 0);

    println!("\n-- 2. L3/L4 policy rule1: only org=empire may reach deathstar:80/TCP");
    s.write_policy("rule1.yaml", &scene_policy("starwars-l3l4"));
    settle();
    show(&s, "tiefighter", "POST", "/v1/request-landing");
    show(&s, "xwing", "POST", "/v1/request-landing");
    seen = observe(&s, seen);

    println!("\n-- Without L7 policy the exhaust port is exposed:");
    show(&s, "tiefighter", "PUT", "/v1/exhaust-port");

    println!("\n-- 3. L7 policy rule1: org=empire may only POST /v1/request-landing");
    s.write_policy("rule1.yaml", &scene_policy("starwars-l7"));
    settle();
    show(&s, "tiefighter", "POST", "/v1/request-landing");
    show(&s, "tiefighter", "PUT", "/v1/exhaust-port");
    show(&s, "xwing", "POST", "/v1/request-landing");
    observe(&s, seen);

    println!("\n$ ward endpoint list");
    print!(
        "{}",
        String::from_utf8_lossy(&s.ward_cli(&["endpoint", "list"]).stdout)
    );
    println!("\nRemoving the scene (namespaces, datapath, pins).");
    drop(s);
    println!("Done.");
    Ok(())
}

/// The story told by `ward-check` against the same policy files.
fn demo_offline() -> Result<()> {
    let bin = target_dir().join("debug/ward-check");
    let root = root_dir();
    let ships = [
        ("tiefighter", "org=empire,class=tiefighter"),
        ("xwing", "org=alliance,class=xwing"),
    ];
    let deathstar = "org=empire,class=deathstar";
    for (scene, title) in [
        ("starwars-none", "1. No policy: every ship may land"),
        (
            "starwars-l3l4",
            "2. L3/L4 policy rule1: only org=empire may reach deathstar:80",
        ),
        (
            "starwars-l7",
            "3. L7 policy rule1: only POST /v1/request-landing",
        ),
    ] {
        println!("== {title}");
        let policy = root.join("config/policies").join(scene);
        let requests: &[(&str, &str)] =
            &[("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port")];
        for (ship, labels) in ships {
            for (method, path) in requests {
                let out = Command::new(&bin)
                    .arg("--policy")
                    .arg(&policy)
                    .args([
                        "--from", labels, "--to", deathstar, "--port", "80", "http", method, path,
                    ])
                    .output()
                    .context("cannot run ward-check")?;
                let text = String::from_utf8_lossy(&out.stdout);
                let shown = match out.status.code() {
                    Some(0) if *path == "/v1/request-landing" => "Ship landed".to_string(),
                    Some(0) => "Panic: deathstar exploded".to_string(),
                    Some(1) if text.contains("(L7)") => "Access denied".to_string(),
                    Some(1) => "curl: (28) Connection timed out".to_string(),
                    _ => format!("error: {}", String::from_utf8_lossy(&out.stderr).trim()),
                };
                println!(
                    "$ {ship}: curl -s -X{method} deathstar{path}\n  {shown}\n  ward-check: {}",
                    text.trim()
                );
            }
        }
        println!();
    }
    Ok(())
}

/// Criterion benches, then the end-to-end comparison (through Ward vs direct vs nginx).
/// `--smoke`: a few seconds of each, so neither can rot; `--e2e` skips criterion.
fn bench(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let e2e_only = args.iter().any(|a| a == "--e2e");
    if args.iter().any(|a| a == "--dns") {
        return bench_dns_only(smoke);
    }
    if args.iter().any(|a| a == "--kube") {
        return bench_kube_only(smoke);
    }
    if args.iter().any(|a| a == "--kafka") {
        return bench_kafka_only(smoke);
    }
    let baseline_bin = match args.iter().position(|a| a == "--baseline-bin") {
        Some(i) => Some(PathBuf::from(
            args.get(i + 1)
                .context("--baseline-bin needs a path to a ward binary")?,
        )),
        None => None,
    };
    prerequisites()?;
    python_peers()?;
    kafka_broker()?;
    if !e2e_only {
        let mut c = cargo();
        c.args(["bench", "-p", "ward-benches"]);
        if smoke {
            c.args([
                "--",
                "--warm-up-time",
                "0.2",
                "--measurement-time",
                "0.5",
                "--sample-size",
                "10",
            ]);
        }
        run(&mut c)?;
    }
    if !is_root() {
        bail!("the end-to-end bench needs root (network namespaces, eBPF)");
    }
    bench_e2e(smoke, baseline_bin)
}

/// Builds the `ward` the benches run (release; debug for `--smoke`) and points `WARD_BIN` at it.
fn build_bench_ward(smoke: bool) -> Result<()> {
    let profile = if smoke { "debug" } else { "release" };
    let mut b = cargo();
    b.args(["build", "--quiet", "-p", "ward", "--bin", "ward"]);
    if !smoke {
        b.arg("--release");
    }
    run(&mut b)?;
    std::env::set_var("WARD_BIN", target_dir().join(profile).join("ward"));
    Ok(())
}

/// `--dns`: only the DNS figures (release build), printed and written to
/// `target/bench/report-dns.json`.
fn bench_dns_only(smoke: bool) -> Result<()> {
    build_bench_ward(smoke)?;
    let dns = bench_dns::figures(smoke)?;
    let mut table = String::new();
    bench::dns_table(&mut table, &dns);
    println!("\n{table}");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("report-dns.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "dns": dns }))?,
    )?;
    Ok(())
}

/// `--kafka`: only the Kafka figures, printed and written to `target/bench/report-kafka.json`.
fn bench_kafka_only(smoke: bool) -> Result<()> {
    if !is_root() {
        bail!("the Kafka bench needs root (network namespaces, eBPF)");
    }
    prerequisites()?;
    python_peers()?;
    kafka_broker()?;
    build_bench_ward(smoke)?;
    let k = bench_kafka::figures(smoke, &target_dir().join("ward-peers/venv/bin/python"))?;
    let mut table = String::new();
    bench_kafka::table(&mut table, &k);
    println!("\n{table}");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("report-kafka.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "kafka": k }))?,
    )?;
    Ok(())
}

fn bench_kube_only(smoke: bool) -> Result<()> {
    build_bench_ward(smoke)?;
    let k = bench_kube::figures(smoke)?;
    let mut table = String::new();
    bench_kube::table(&mut table, &k);
    println!("\n{table}");
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("report-kube.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "kubernetes": k }))?,
    )?;
    Ok(())
}

/// The end-to-end comparison; `smoke` uses the debug build and one short round.
fn bench_e2e(smoke: bool, baseline_bin: Option<PathBuf>) -> Result<()> {
    build_bench_ward(smoke)?;
    let report = bench::run(
        &bench::Options {
            smoke,
            baseline_bin,
        },
        &target_dir().join("ward-peers/venv/bin/python"),
        &target_dir().join("bench"),
    )?;
    println!("\n{}", report.table());
    // Every figure must have been measured (a zero means a path silently stopped working).
    for (section, key) in [
        ("http1", "direct_rps"),
        ("http1", "ward_rps"),
        ("http1", "nginx_rps"),
        ("http1", "ward_deny_rps"),
        ("h2", "ward_rps"),
        ("grpc", "ward_rps"),
        ("dns", "direct_qps"),
        ("dns", "ward_qps"),
        ("dns", "ward_tcp_qps"),
        ("kafka", "direct_produce_mbps"),
        ("kafka", "ward_produce_mbps"),
        ("kafka", "ward_consume_mbps"),
    ] {
        if report.get(section, key) <= 0.0 {
            bail!("bench figure {section}.{key} is zero");
        }
    }
    println!(
        "report: {}",
        target_dir()
            .join("bench")
            .join(if smoke {
                "report-smoke.json"
            } else {
                "report.json"
            })
            .display()
    );
    Ok(())
}
