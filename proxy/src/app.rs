//! The composition root of `ward run`: binds the transparent listener first (so a restart has
//! the socket back as early as possible), opens the pinned datapath, starts the controller on
//! the initial policy files and the config's endpoints, attaches the hooks, installs the
//! redirect routing, and then runs the sources, the proxy workers, the admin socket and the
//! metrics endpoint. Nothing imports this module.
//!
//! On SIGTERM/SIGINT the listeners stop and the process exits 0, leaving the datapath attached:
//! the kernel keeps enforcing L3/L4 (and fails redirected flows closed) until the next
//! `ward run` re-attaches to the same pins.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bpf_redirect::{Datapath, ProxyRouting};
use l7_rules::source::{PolicySet, PolicyStore};
use tracing::{error, info, warn};

use crate::admin::server::AdminContext;
use crate::config::Config;
use crate::controller::Controller;
use crate::flows::{FlowLogConfig, FlowWriter};
use crate::metrics::Metrics;
use crate::sources::admin::AdminSource;
use crate::sources::files::Stamp;

/// The policy files `ward run` starts from: their stamps, texts, and checked set.
pub struct InitialPolicy {
    pub stamps: BTreeMap<PathBuf, Stamp>,
    pub texts: BTreeMap<PathBuf, String>,
    pub store: PolicyStore,
    pub set: PolicySet,
}

/// `ward run`.
pub fn run(cfg: Config, policy: InitialPolicy) -> anyhow::Result<()> {
    info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective config");
    raise_open_files_limit();
    let cfg = Arc::new(cfg);
    // Accept, admin and metrics; client connections live on the proxy workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .build()?;
    // 0. A running `ward run` hands its listening sockets over (hitless restart, upgrade).
    let handover_path = crate::handover::socket_path(&cfg.admin_socket);
    let mut inherited = crate::handover::take(&handover_path)
        .context("taking the listening sockets over from the running ward")?;
    if let Some(h) = &inherited {
        info!(
            pid = h.pid,
            version = %h.version,
            sockets = ?h.offered(),
            "taking the listening sockets over from the running ward"
        );
    }
    let tcp = |inherited: &mut Option<crate::handover::Inherited>,
               name: &str,
               port: u16|
     -> anyhow::Result<std::net::TcpListener> {
        if let Some(l) = inherited.as_mut().and_then(|h| h.tcp(name, port)) {
            return Ok(l);
        }
        crate::proxy::transport::bind_transparent(port).with_context(|| {
            format!(
                "binding the transparent {name} listener on TCP port {port} (needs CAP_NET_ADMIN)"
            )
        })
    };
    // 1. The listener first: redirected flows fail closed until it exists.
    let std_listener = tcp(&mut inherited, "http", cfg.listeners.http)?;
    // The DNS listener, UDP and TCP on one port, when configured.
    let dns_listeners = match cfg.listeners.dns {
        None => None,
        Some(port) => {
            let tcp = tcp(&mut inherited, "dns_tcp", port)?;
            let udp = match inherited.as_mut().and_then(|h| h.udp("dns_udp", port)) {
                Some(u) => u,
                None => crate::proxy::transport::bind_transparent_udp(port).with_context(|| {
                    format!("binding the transparent DNS listener on UDP port {port}")
                })?,
            };
            Some((port, udp, tcp))
        }
    };
    // The Kafka listener, when configured.
    let kafka_listener = match cfg.listeners.kafka {
        None => None,
        Some(port) => Some((port, tcp(&mut inherited, "kafka", port)?)),
    };
    // The metrics endpoint's listener.
    let metrics_listener = match cfg.metrics {
        None => None,
        Some(addr) => Some(
            match inherited
                .as_mut()
                .and_then(|h| h.tcp("metrics", addr.port()))
            {
                Some(l) => l,
                None => {
                    let l = std::net::TcpListener::bind(addr)
                        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
                    l.set_nonblocking(true)?;
                    l
                }
            },
        ),
    };
    // What the next `ward run` will be offered: the same sockets.
    let mut offered = vec![(
        crate::handover::Named {
            name: "http".into(),
            port: cfg.listeners.http,
        },
        std::os::fd::OwnedFd::from(std_listener.try_clone()?),
    )];
    if let Some((port, udp, tcp)) = &dns_listeners {
        offered.push((
            crate::handover::Named {
                name: "dns_udp".into(),
                port: *port,
            },
            udp.try_clone()?.into(),
        ));
        offered.push((
            crate::handover::Named {
                name: "dns_tcp".into(),
                port: *port,
            },
            tcp.try_clone()?.into(),
        ));
    }
    if let Some((port, tcp)) = &kafka_listener {
        offered.push((
            crate::handover::Named {
                name: "kafka".into(),
                port: *port,
            },
            tcp.try_clone()?.into(),
        ));
    }
    if let Some(l) = &metrics_listener {
        offered.push((
            crate::handover::Named {
                name: "metrics".into(),
                port: l.local_addr()?.port(),
            },
            l.try_clone()?.into(),
        ));
    }
    // 2. Datapath: maps, desired state, hooks, routing.
    let metrics = Arc::new(Metrics::new());
    let mut dp = Datapath::open(&cfg.pin_root)
        .with_context(|| format!("opening the datapath at {}", cfg.pin_root.display()))?;
    // A SYN reusing the tuple of a proxy-side TIME_WAIT socket reaches the listener through
    // the namespace's listener lookup, not `bpf_sk_assign` (see `ward_tw_redirect`).
    dp.attach_sk_lookup()
        .context("attaching the listener lookup to the node's network namespace")?;
    bpf_redirect::register_listener(&cfg.pin_root, cfg.listeners.http, &std_listener)
        .context("registering the transparent listener with the datapath")?;
    if let Some((port, _, tcp)) = &dns_listeners {
        bpf_redirect::register_listener(&cfg.pin_root, *port, tcp)
            .context("registering the DNS TCP listener with the datapath")?;
    }
    if let Some((port, tcp)) = &kafka_listener {
        bpf_redirect::register_listener(&cfg.pin_root, *port, tcp)
            .context("registering the Kafka listener with the datapath")?;
    }
    match bpf_redirect::CounterReader::open(&cfg.pin_root) {
        Ok(counters) => metrics.read_kernel_drops(counters),
        Err(e) => warn!(error = %e, "cannot read the datapath counters; drops are not exported"),
    }
    // What Kubernetes mode's watchers compare their first lists with (a checkpoint's).
    let restored_documents = policy.texts.clone();
    let mut controller = Controller::start(
        cfg.clone(),
        policy.texts,
        policy.store,
        policy.set,
        dp,
        metrics.clone(),
        crate::sys::local_ipv4_addresses,
    )?;
    controller.attach_all()?;
    // File mode is ready now; Kubernetes mode once its watchers have listed.
    if cfg.policy_source == crate::config::PolicySource::Files {
        metrics.ready.set(1);
    }
    let routing = ProxyRouting::default();
    routing
        .install()
        .context("installing the proxy routing rule")?;
    info!(
        table = routing.table,
        pref = routing.priority,
        "proxy routing installed"
    );
    let published = controller.published();
    let (events, inbox) = mpsc::channel();
    let controller = std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || controller.run(inbox))?;
    let flows = FlowWriter::start(
        FlowLogConfig {
            path: cfg.flow_log.clone(),
            max_bytes: cfg.flow_log_max_mb.saturating_mul(1024 * 1024),
            max_backups: cfg.flow_log_max_backups,
        },
        metrics.flows_lost(),
    )
    .with_context(|| format!("opening the flow log {}", cfg.flow_log.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let kernel_events = crate::datapath::spawn_events(
        cfg.pin_root.clone(),
        published.state.clone(),
        flows.clone(),
        stop.clone(),
    )?;
    let files = match cfg.policy_source {
        crate::config::PolicySource::Files => crate::sources::files::spawn(
            cfg.policy_dirs.clone(),
            policy.stamps,
            cfg.policy_watch,
            events.clone(),
            stop.clone(),
        )?,
        #[cfg(feature = "kubernetes")]
        crate::config::PolicySource::Kubernetes => crate::sources::kube::spawn(
            cfg.kubernetes.clone(),
            cfg.node.name.clone(),
            restored_documents,
            cfg.endpoints
                .iter()
                .filter(|e| cfg.kubernetes.restored_pods.contains(&e.qualified()))
                .cloned()
                .collect(),
            published.status.clone(),
            events.clone(),
            stop.clone(),
        )?,
        #[cfg(not(feature = "kubernetes"))]
        crate::config::PolicySource::Kubernetes => {
            anyhow::bail!("this ward was built without the `kubernetes` feature")
        }
    };
    let learn = events.clone();
    let restore = events.clone();
    let save_fqdn = events.clone();
    let admin = Arc::new(AdminContext {
        published: published.clone(),
        endpoints: AdminSource::new(events),
        cfg: cfg.clone(),
        started: SystemTime::now(),
        routing,
    });

    let last_flows = flows.clone();
    let code = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        info!(port = cfg.listeners.http, "transparent HTTP listener ready");
        let sockets = bpf_redirect::ProxySockets::open(&cfg.pin_root).with_context(|| {
            format!(
                "opening the proxy-socket map under {}",
                cfg.pin_root.display()
            )
        })?;
        let proxy = Arc::new(
            crate::proxy::Proxy::new(published.state.clone(), flows.clone(), metrics.clone())
                .with_http(&cfg.http)
                .with_proxy_sockets(sockets),
        );
        let threads = cfg.proxy_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        let dns_thread = match dns_listeners {
            None => None,
            Some((port, udp, tcp)) => {
                let dns = Arc::new(crate::proxy::dns::DnsProxy::new(
                    proxy.clone(),
                    crate::proxy::dns::DnsSettings::from_config(&cfg),
                    Some(learn.clone()),
                ));
                let t = crate::proxy::dns::start(
                    dns,
                    udp,
                    tcp,
                    rx.clone(),
                    Duration::from_millis(cfg.drain_timeout_ms),
                )
                    .context("starting the DNS proxy thread")?;
                info!(port, "transparent DNS listener ready (UDP and TCP)");
                Some(t)
            }
        };
        let kafka_thread = match kafka_listener {
            None => None,
            Some((port, tcp)) => {
                let kafka = Arc::new(crate::proxy::kafka::KafkaProxy::new(
                    proxy.clone(),
                    &cfg.kafka,
                ));
                let t = crate::proxy::kafka::start(
                    kafka,
                    tcp,
                    rx.clone(),
                    Duration::from_millis(cfg.drain_timeout_ms),
                )
                    .context("starting the Kafka proxy thread")?;
                info!(port, "transparent Kafka listener ready");
                Some(t)
            }
        };
        let workers = crate::proxy::Workers::start(
            threads,
            proxy,
            Duration::from_millis(cfg.drain_timeout_ms),
        )
            .context("starting the proxy worker threads")?;
        info!(threads, "proxy workers started");
        let proxy_task = tokio::spawn(crate::proxy::serve(workers, listener, rx.clone()));
        let admin_task = {
            // Taking over: the running ward's admin socket is replaced, not a stale one.
            let l = crate::admin::server::bind(&cfg.admin_socket, inherited.is_some())?;
            info!(socket = %cfg.admin_socket.display(), "admin socket ready");
            tokio::spawn(crate::admin::server::serve(l, admin, rx.clone()))
        };
        if let Some(l) = metrics_listener {
            let m = metrics.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(l, m, rx).await {
                    error!(error = %e, "metrics endpoint failed");
                }
            });
        }
        // Offer the sockets to the next `ward run`, then let the previous one go.
        let (handed_tx, mut handed_rx) = tokio::sync::watch::channel(None::<Option<u32>>);
        let successor = Arc::new(std::sync::Mutex::new(None::<crate::handover::Successor>));
        let successor_in = successor.clone();
        let handover_listener = crate::handover::bind(&handover_path)
            .with_context(|| format!("binding the handover socket {}", handover_path.display()))?;
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || {
                crate::handover::offer(handover_listener, offered, |pid, next| {
                    *successor_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(next);
                    let _ = handed_tx.send(Some(pid));
                });
            })?;
        if let Some(h) = inherited.take() {
            let pid = h.pid;
            let drained = h.ready().context("telling the previous ward to drain")?;
            info!(pid, "serving; the previous ward drains and stops");
            // What it learned from DNS until it drained is in its final FQDN checkpoint.
            let wait = Duration::from_millis(cfg.drain_timeout_ms) + Duration::from_secs(5);
            std::thread::Builder::new()
                .name("handover-fqdn".into())
                .spawn(move || {
                    if !drained.wait(wait) {
                        warn!(pid, "the previous ward did not say it drained; restoring its FQDN checkpoint as it is");
                    }
                    let _ = restore.send(crate::sources::SourceEvent::RestoreFqdn);
                })?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut handed_over = false;
        tokio::select! {
            _ = term.recv() => info!(drain_timeout_ms = cfg.drain_timeout_ms, "SIGTERM: draining, then stopping (the datapath stays attached)"),
            _ = int.recv() => info!(drain_timeout_ms = cfg.drain_timeout_ms, "SIGINT: draining, then stopping (the datapath stays attached)"),
            pid = async { handed_rx.wait_for(Option::is_some).await.ok().and_then(|p| *p) } => {
                handed_over = true;
                info!(pid = ?pid.flatten(), drain_timeout_ms = cfg.drain_timeout_ms, "handed the listening sockets over: draining, then stopping");
            }
        }
        let _ = tx.send(true);
        // The HTTP workers drain their connections (at most `drain_timeout_ms`).
        let workers = proxy_task.await.unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        let _ = admin_task.await;
        if let Some(t) = dns_thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(t) = kafka_thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if handed_over {
            // The next process reads the FQDN checkpoint once this one says it drained.
            let (reply, saved) = mpsc::sync_channel(1);
            if save_fqdn.send(crate::sources::SourceEvent::SaveFqdn { reply }).is_ok() {
                let _ = tokio::task::spawn_blocking(move || saved.recv_timeout(Duration::from_secs(2))).await;
            }
            if let Some(next) = successor.lock().unwrap_or_else(|p| p.into_inner()).take() {
                next.drained();
            }
        }
        drop(save_fqdn);
        if handed_over && cfg.after_handover == crate::config::AfterHandover::Wait {
            info!("drained after the handover; waiting for SIGTERM (after_handover: wait)");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // After a handover these paths are the new process's.
        if !handed_over {
            let _ = std::fs::remove_file(&cfg.admin_socket);
            let _ = std::fs::remove_file(&handover_path);
        }
        anyhow::Ok(0)
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = kernel_events.join();
    let _ = files.join();
    // Admin connections still open hold the inbox's last senders: the runtime goes first,
    // then the controller sees its inbox closed and ends.
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = controller.join();
    if !last_flows.flush(Duration::from_secs(2)) {
        warn!("the flow log did not flush within 2 s; its last flows may be lost");
    }
    info!("stopped");
    std::process::exit(code);
}

/// Every client connection is a descriptor (two while forwarded): the soft limit (often 1024)
/// goes up to the hard one, as nginx's `worker_rlimit_nofile` and Go programs do.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => info!(from = soft, to = hard, "open files limit raised"),
                Err(e) => warn!(error = %e, soft, hard, "cannot raise the open files limit"),
            }
        }
    }
}

/// `ward uninstall`: detach everything, remove pins and the routing rule.
pub fn uninstall(cfg: &Config) -> anyhow::Result<()> {
    ProxyRouting::default()
        .remove()
        .context("removing the proxy routing rule")?;
    Datapath::uninstall(&cfg.pin_root)
        .with_context(|| format!("removing {}", cfg.pin_root.display()))?;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    Ok(())
}

/// The admin socket path from `--admin-socket` or the config.
pub fn admin_path(admin: Option<PathBuf>, config: Option<&Config>) -> PathBuf {
    admin
        .or_else(|| config.map(|c| c.admin_socket.clone()))
        .unwrap_or_else(|| crate::config::DEFAULT_ADMIN_SOCKET.into())
}
