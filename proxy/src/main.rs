//! `ward`: Ward's node proxy and its CLI.
//!
//! `ward run` joins the policy engine (`l7-rules`) and the kernel datapath (`bpf-redirect`):
//! it computes identities and map entries from the node config and the policy files, keeps the
//! pinned BPF maps in sync (hot reload), and serves the transparent HTTP/h2/gRPC proxy, a local
//! admin socket, Prometheus metrics and a JSON-lines flow log. The other subcommands are
//! clients of the admin socket or readers of the flow log.
//!
//! Owns: sockets, tokio, hyper, the node model, flows. Must not: re-implement policy
//! semantics (every decision comes from `l7_rules::engine`) or touch map layouts (only
//! `bpf_redirect::DesiredState`).

mod admin;
mod app;
mod cli;
#[cfg(feature = "kubernetes")]
mod cni;
mod config;
mod controller;
mod datapath;
mod flows;
mod fqdn;
mod handover;

mod metrics;
mod proxy;
mod sources;
mod state;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::api::Request;

/// mimalloc: per-thread free lists, so a flow freed on the flow-log thread or a buffer freed on
/// another worker does not contend on glibc's arena locks (measured in benches/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::config::{Config, EndpointConfig};

#[derive(Parser, Debug)]
#[command(
    name = "ward",
    version,
    about = "Ward: Cilium network policy on one node, without Envoy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// The node config (YAML).
    #[arg(long, short = 'c')]
    config: PathBuf,
}

#[derive(Args, Debug, Clone, Default)]
struct Target {
    /// The admin socket of `ward run`.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// The node config (to find the admin socket).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Output format: `json` prints the raw response.
    #[arg(long, short = 'o')]
    output: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node proxy.
    Run(ConfigArg),
    /// Validate the node config and the policy files; exit 0 when valid, 2 when not.
    CheckConfig(ConfigArg),
    /// Detach every program, remove the pins and the routing rule.
    Uninstall(ConfigArg),
    /// Print flows from the flow log, like `hubble observe`.
    Observe(ObserveArgs),
    /// Daemon status.
    Status(Target),
    /// Endpoints.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Identities.
    Identity {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Loaded policies.
    Policy {
        #[command(subcommand)]
        cmd: GetCmd,
    },
    /// Kernel map contents.
    Bpf {
        #[command(subcommand)]
        cmd: BpfCmd,
    },
    /// Addresses learned from DNS answers for `toFQDNs`.
    Fqdn {
        #[command(subcommand)]
        cmd: FqdnCmd,
    },
}

#[derive(Subcommand, Debug)]
enum FqdnCmd {
    /// The learned names and addresses (like `cilium fqdn cache list`).
    Cache {
        #[command(subcommand)]
        cmd: ListCmd,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// List endpoints (like `cilium endpoint list`).
    List(Target),
    /// Add an endpoint to the running node.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// `k=v,k=v`
        #[arg(long, default_value = "")]
        labels: String,
        /// IPv4 address (repeatable).
        #[arg(long = "ip", required = true)]
        ips: Vec<std::net::Ipv4Addr>,
        /// Host-side interface in the node's network namespace.
        #[arg(long)]
        interface: String,
        /// `name=port,name=port`
        #[arg(long, default_value = "")]
        named_ports: String,
        #[arg(long)]
        audit: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove an endpoint from the running node.
    Remove {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    List(Target),
}

#[derive(Subcommand, Debug)]
enum GetCmd {
    Get(Target),
}

#[derive(Subcommand, Debug)]
enum BpfCmd {
    Policy {
        #[command(subcommand)]
        cmd: BpfPolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
enum BpfPolicyCmd {
    /// The policy map entries of an endpoint (like `cilium bpf policy get`).
    Get {
        endpoint: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Args, Debug)]
struct ObserveArgs {
    /// The flow log to read.
    #[arg(long)]
    flow_log: Option<PathBuf>,
    /// The node config (for its flow_log and admin_socket).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Keep printing new flows.
    #[arg(long, short = 'f')]
    follow: bool,
    /// FORWARDED, DROPPED, AUDIT, REDIRECTED.
    #[arg(long)]
    verdict: Option<String>,
    /// Source labels `k=v[,k=v]`.
    #[arg(long)]
    from_label: Vec<String>,
    /// Destination labels `k=v[,k=v]`.
    #[arg(long)]
    to_label: Vec<String>,
    /// http, tcp, udp, icmp.
    #[arg(long)]
    protocol: Option<String>,
    /// Only flows since the running `ward run` started (asks its admin socket).
    #[arg(long)]
    since_start: bool,
    /// `json` prints the raw JSON lines.
    #[arg(long, short = 'o')]
    output: Option<String>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        for i in &e.issues {
            eprintln!("error: {i}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    // No transparent huge pages for this process: mimalloc gives freed memory back to the
    // kernel and touches it again later, and with THP each such touch zeroed 2 MiB in a page
    // fault (on the DNS thread and the controller, measured as their top kernel symbol while
    // learning). Inherited by every thread started after this.
    let _ = nix::sys::prctl::set_thp_disable(true);
    // Installed as `ward-cni` (a CNI plugin's name is its binary's), it is that plugin.
    #[cfg(feature = "kubernetes")]
    if std::env::args_os()
        .next()
        .and_then(|a| PathBuf::from(a).file_name().map(|n| n == "ward-cni"))
        == Some(true)
    {
        return cni::main();
    }
    let mut cli = Cli::parse();
    // Before any thread exists: see `mntns`.
    if let Cmd::Run(a) | Cmd::Uninstall(a) = &mut cli.cmd {
        if let Ok(abs) = std::path::absolute(&a.config) {
            a.config = abs;
        }
        match sys::mntns::join_host_bpffs() {
            Ok(true) => eprintln!("ward: joined the host mount namespace to pin under its /sys/fs/bpf"),
            Ok(false) => {}
            Err(e) => eprintln!("ward: warning: cannot join the host mount namespace ({e}); pins may not outlive this process"),
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn target_socket(t: &Target) -> anyhow::Result<PathBuf> {
    let cfg = match &t.config {
        Some(p) => Some(Config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    Ok(app::admin_path(t.admin_socket.clone(), cfg.as_ref()))
}

fn ask<T: serde::Serialize + serde::de::DeserializeOwned>(
    t: &Target,
    req: Request,
    render: fn(&T) -> String,
) -> anyhow::Result<ExitCode> {
    let v: T = cli::call(&target_socket(t)?, &req)?;
    if t.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_kv(text: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    cli::observe::parse_label_filter(text).map_err(|e| anyhow::anyhow!("--{what}: {e}"))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(a) => {
            init_tracing();
            let mut cfg = match load_config(&a.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            // Kubernetes mode starts from its checkpoint: the last state enforces until the
            // API server answers (and the watchers' relists correct it).
            let checkpoint = match cfg.policy_source {
                config::PolicySource::Kubernetes => {
                    state::checkpoint::Checkpoint::read(&cfg.kubernetes.checkpoint)
                }
                config::PolicySource::Files => None,
            };
            if let Some(c) = &checkpoint {
                tracing::info!(
                    documents = c.documents.len(),
                    endpoints = c.endpoints.len(),
                    path = %cfg.kubernetes.checkpoint.display(),
                    "starting from the Kubernetes checkpoint"
                );
                cfg.kubernetes.restored_cni = c.cni.clone();
                cfg.kubernetes.restored_remote = c.remote.clone();
                for e in &c.endpoints {
                    if !cfg.endpoints.iter().any(|o| o.qualified() == e.qualified()) {
                        cfg.kubernetes.restored_pods.push(e.qualified());
                        cfg.endpoints.push(e.clone());
                    }
                }
            }
            let restored = checkpoint.map(|c| c.documents).unwrap_or_default();
            let policy = match initial_policy(&cfg, &restored) {
                Ok(p) => p,
                Err(e) => {
                    controller::log_load_error(&e);
                    return Ok(ExitCode::from(2));
                }
            };
            for w in &policy.set.warnings {
                tracing::warn!("{w}");
            }
            app::run(cfg, policy)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig(a) => {
            let cfg = match load_config(&a.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match initial_policy(&cfg, &Default::default()).map(|p| p.set) {
                Ok(set) => {
                    for w in &set.warnings {
                        eprintln!("{w}");
                    }
                    println!(
                        "{}: valid ({} endpoint(s), {} policy object(s) from {} file(s))",
                        a.config.display(),
                        cfg.endpoints.len(),
                        set.policies.len(),
                        set.files.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    for d in &e.diagnostics {
                        eprintln!("{d}");
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
        Cmd::Uninstall(a) => {
            init_tracing();
            let cfg = match load_config(&a.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            app::uninstall(&cfg)?;
            println!("uninstalled {}", cfg.pin_root.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Observe(a) => {
            let cfg = match &a.config {
                Some(p) => match load_config(p) {
                    Ok(c) => Some(c),
                    Err(code) => return Ok(code),
                },
                None => None,
            };
            let path = a
                .flow_log
                .clone()
                .or_else(|| cfg.as_ref().map(|c| c.flow_log.clone()))
                .unwrap_or_else(|| config::DEFAULT_FLOW_LOG.into());
            let mut filter = cli::observe::Filter {
                verdict: a.verdict.clone(),
                protocol: a.protocol.clone(),
                ..Default::default()
            };
            for l in &a.from_label {
                filter.from_labels.extend(parse_kv(l, "from-label")?);
            }
            for l in &a.to_label {
                filter.to_labels.extend(parse_kv(l, "to-label")?);
            }
            if a.since_start {
                let sock = app::admin_path(a.admin_socket.clone(), cfg.as_ref());
                let status: admin::api::Status = cli::call(&sock, &Request::Status)?;
                filter.since = Some(humantime::parse_rfc3339_weak(&status.started)?);
            }
            let json = a.output.as_deref() == Some("json");
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            cli::observe::observe(&path, &filter, json, a.follow, &mut out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(t) => ask(&t, Request::Status, cli::render::status),
        Cmd::Endpoint { cmd } => match cmd {
            EndpointCmd::List(t) => ask(&t, Request::EndpointList, |v: &Vec<_>| {
                cli::render::endpoints(v)
            }),
            EndpointCmd::Add {
                name,
                namespace,
                labels,
                ips,
                interface,
                named_ports,
                audit,
                target,
            } => {
                let labels = parse_kv(&labels, "labels")?.into_iter().collect();
                let named_ports = parse_kv(&named_ports, "named-ports")?
                    .into_iter()
                    .map(|(k, v)| {
                        Ok((
                            k,
                            v.parse::<u16>()
                                .map_err(|e| anyhow::anyhow!("--named-ports {v}: {e}"))?,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?;
                let endpoint = EndpointConfig {
                    name,
                    namespace,
                    labels,
                    ips,
                    interface,
                    named_ports,
                    audit,
                };
                ask(
                    &target,
                    Request::EndpointAdd { endpoint },
                    |v: &admin::api::EndpointAdded| format!("endpoint {} added\n", v.id),
                )
            }
            EndpointCmd::Remove { name, target } => ask(
                &target,
                Request::EndpointRemove { name },
                |v: &admin::api::EndpointRemoved| format!("endpoint {} removed\n", v.removed),
            ),
        },
        Cmd::Identity {
            cmd: ListCmd::List(t),
        } => ask(&t, Request::IdentityList, |v: &Vec<_>| {
            cli::render::identities(v)
        }),
        Cmd::Fqdn {
            cmd: FqdnCmd::Cache {
                cmd: ListCmd::List(t),
            },
        } => ask(&t, Request::FqdnCacheList, |v: &Vec<_>| {
            cli::render::fqdn_cache(v)
        }),
        Cmd::Policy {
            cmd: GetCmd::Get(t),
        } => {
            let v: admin::api::PolicyDocuments =
                cli::call(&target_socket(&t)?, &Request::PolicyGet)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bpf {
            cmd:
                BpfCmd::Policy {
                    cmd: BpfPolicyCmd::Get { endpoint, target },
                },
        } => ask(
            &target,
            Request::BpfPolicyGet { endpoint },
            cli::render::bpf_policy,
        ),
    }
}

/// The policy files `ward run` starts from, read and checked for this node.
/// The policy `ward run` starts from: the policy files, or in Kubernetes mode the documents of
/// its checkpoint (`restored`; when they no longer load, none: logged).
fn initial_policy(
    cfg: &Config,
    restored: &std::collections::BTreeMap<String, String>,
) -> Result<app::InitialPolicy, l7_rules::source::LoadError> {
    if !restored.is_empty() {
        let texts: std::collections::BTreeMap<PathBuf, String> = restored
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.clone()))
            .collect();
        let loaded = controller::initial_store(&texts).and_then(|store| {
            let set = controller::policy_set(&store, &texts, cfg)?;
            Ok((store, set))
        });
        match loaded {
            Ok((store, set)) => {
                return Ok(app::InitialPolicy {
                    stamps: Default::default(),
                    texts,
                    store,
                    set,
                })
            }
            Err(e) => {
                tracing::warn!(
                    "the Kubernetes checkpoint's policies do not load; starting without them"
                );
                controller::log_load_error(&e);
            }
        }
    }
    // Kubernetes mode starts from no policy: its source lists the objects.
    let dirs = match cfg.policy_source {
        config::PolicySource::Files => cfg.policy_dirs.as_slice(),
        config::PolicySource::Kubernetes => &[],
    };
    let (stamps, texts) = sources::files::read_all(dirs)?;
    let store = controller::initial_store(&texts)?;
    let set = controller::policy_set(&store, &texts, cfg)?;
    Ok(app::InitialPolicy {
        stamps,
        texts,
        store,
        set,
    })
}
