//! `ward run`: the daemon. Binds the transparent listener first (so a restart has the socket
//! back as early as possible), opens the pinned datapath, applies the node's desired state,
//! attaches the endpoint hooks, installs the redirect routing, and then serves the proxy, the
//! admin socket and metrics while a poller hot-reloads the policy files.
//!
//! On SIGTERM/SIGINT the listeners stop and the process exits 0, leaving the datapath attached:
//! the kernel keeps enforcing L3/L4 (and fails redirected flows closed) until the next
//! `ward run` re-attaches to the same pins.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use bpf_redirect::{ApplyStats, Datapath, Hook, ProxyRouting};
use l7_rules::engine::Engine;
use l7_rules::source::{self as load, LoadError, PolicySet};
use tracing::{error, info, warn};

use crate::config::{Config, EndpointConfig};
use crate::flows::{Flow, FlowLogConfig, FlowWriter};
use crate::metrics::Metrics;
use crate::node::{local_ipv4_addresses, NodeView, Settings};

/// How often the policy directories are polled.
pub const POLICY_POLL: Duration = Duration::from_millis(200);

/// Loads the policy files named by the config.
pub fn load_policies(cfg: &Config) -> Result<PolicySet, LoadError> {
    let set = load::load_paths(&cfg.policy_dirs)?;
    let unenforced = unenforced_fields(&set, cfg);
    if unenforced.is_empty() {
        return Ok(set);
    }
    Err(LoadError {
        diagnostics: unenforced.into_iter().chain(set.warnings).collect(),
    })
}

/// Policy fields this node would load and not enforce: never accepted silently. A host policy
/// that selects the node needs the uplink hooks: without them, traffic between the node and
/// the outside would pass unjudged while `ward-check` says it is judged.
fn unenforced_fields(set: &PolicySet, cfg: &Config) -> Vec<l7_rules::diag::Diagnostic> {
    use l7_rules::model::Subject;
    if cfg.uplink.is_some() {
        return Vec::new();
    }
    let node_labels = Settings::from_config(cfg).node_label_set();
    let mut out = Vec::new();
    for p in &set.policies {
        let Subject::Nodes(sel) = &p.subject else {
            continue;
        };
        if !sel.matches(&node_labels) || !(p.ingress.present || p.egress.present) {
            continue;
        }
        let field = format!("{}.nodeSelector", p.spec_path);
        let line = std::fs::read_to_string(&p.meta.file)
            .ok()
            .and_then(|text| load::LineIndex::build(&text).line_of(p.meta.document, &field));
        out.push(l7_rules::diag::Diagnostic {
            severity: l7_rules::diag::Severity::Error,
            origin: l7_rules::diag::Origin::File {
                path: p.meta.file.clone(),
                line,
                document: p.meta.document,
            },
            object: Some(format!("{} {}", p.meta.kind.as_str(), p.meta.id())),
            field,
            message: "this host policy selects the node, but the node config names no `uplink`: \
                traffic between the node and the outside would not be enforced (only traffic \
                with local pods would); set `uplink` to the node's external interface"
                .into(),
        });
    }
    out
}

/// Logs every diagnostic of a failed load at ERROR (errors) / WARN (warnings).
pub fn log_load_error(e: &LoadError) {
    for d in &e.diagnostics {
        match d.severity {
            l7_rules::diag::Severity::Error => error!("{d}"),
            l7_rules::diag::Severity::Warning => warn!("{d}"),
        }
    }
}

/// A fingerprint of the policy files' names and contents.
fn policy_fingerprint(cfg: &Config) -> u64 {
    let mut h = DefaultHasher::new();
    match load::policy_files(&cfg.policy_dirs) {
        Ok(files) => {
            for f in files {
                f.hash(&mut h);
                std::fs::read(&f).unwrap_or_default().hash(&mut h);
            }
        }
        Err(e) => e.to_string().hash(&mut h),
    }
    h.finish()
}

/// Owns the datapath and the node's mutable state; every change goes through it.
pub struct Controller {
    pub cfg: Config,
    settings: Settings,
    dp: Datapath,
    endpoints: Vec<(u16, EndpointConfig)>,
    engine: Arc<Engine>,
    fingerprint: u64,
    generation: u64,
    pub view: Arc<ArcSwap<NodeView>>,
    metrics: Arc<Metrics>,
    pub last_apply: Option<(SystemTime, ApplyStats, Duration)>,
    pub last_error: Option<String>,
}

pub(crate) fn make_engine(set: PolicySet, settings: &Settings) -> Arc<Engine> {
    let mut e = Engine::new(set);
    settings.apply_to(&mut e);
    Arc::new(e)
}

impl Controller {
    /// Computes the first view and applies it (does not attach).
    fn start(
        cfg: Config,
        set: PolicySet,
        dp: Datapath,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Controller> {
        let settings = Settings::from_config(&cfg);
        let endpoints: Vec<(u16, EndpointConfig)> = cfg
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| ((i + 1) as u16, e.clone()))
            .collect();
        let fingerprint = policy_fingerprint(&cfg);
        let engine = make_engine(set, &settings);
        let view = NodeView::build(
            1,
            engine.clone(),
            settings.clone(),
            &endpoints,
            &local_ipv4_addresses(),
        )?;
        let mut c = Controller {
            cfg,
            settings,
            dp,
            endpoints,
            engine,
            fingerprint,
            generation: 1,
            view: Arc::new(ArcSwap::from_pointee(view)),
            metrics,
            last_apply: None,
            last_error: None,
        };
        c.apply_view(c.view.load_full())?;
        Ok(c)
    }

    fn apply_view(&mut self, view: Arc<NodeView>) -> anyhow::Result<()> {
        let t = Instant::now();
        let stats = self.dp.apply(&view.desired).context("applying the maps")?;
        let took = t.elapsed();
        self.metrics.applied(took);
        if !view.unproxied.is_empty() {
            warn!(parsers = ?view.unproxied, "L7 rules of these protocols have no listener configured: their flows are DROPPED (fail closed) until a listener for them exists");
        }
        info!(
            generation = view.generation,
            policies = view.policy_count(),
            endpoints = view.endpoints.len(),
            written = stats.written(),
            deleted = stats.deleted(),
            took_ms = took.as_secs_f64() * 1000.0,
            "policy applied"
        );
        self.last_apply = Some((SystemTime::now(), stats, took));
        self.view.store(view);
        Ok(())
    }

    /// Recomputes the view from the current engine and endpoints and applies it.
    fn rebuild(
        &mut self,
        engine: Arc<Engine>,
        endpoints: Vec<(u16, EndpointConfig)>,
    ) -> anyhow::Result<()> {
        let generation = self.generation + 1;
        let view = NodeView::build(
            generation,
            engine.clone(),
            self.settings.clone(),
            &endpoints,
            &local_ipv4_addresses(),
        )?;
        self.apply_view(Arc::new(view))?;
        self.generation = generation;
        self.engine = engine;
        self.endpoints = endpoints;
        Ok(())
    }

    fn attach_endpoint(&mut self, iface: &str) -> anyhow::Result<()> {
        for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
            let outcome = self
                .dp
                .attach(iface, hook)
                .with_context(|| format!("attaching {hook:?} to {iface}"))?;
            info!(iface, ?hook, ?outcome, "attached");
        }
        Ok(())
    }

    fn attach_all(&mut self) -> anyhow::Result<()> {
        let ifaces: Vec<String> = self
            .endpoints
            .iter()
            .map(|(_, e)| e.interface.clone())
            .collect();
        for i in ifaces {
            self.attach_endpoint(&i)?;
        }
        if let Some(u) = self.cfg.uplink.clone() {
            for hook in [Hook::FromNetdev, Hook::ToNetdev] {
                let outcome = self
                    .dp
                    .attach(&u, hook)
                    .with_context(|| format!("attaching {hook:?} to the uplink {u}"))?;
                info!(iface = %u, ?hook, ?outcome, "attached uplink");
            }
        }
        // Links of endpoints that are gone from the config (a previous run's): detach.
        let wanted: Vec<String> = self
            .endpoints
            .iter()
            .map(|(_, e)| e.interface.clone())
            .collect();
        for (iface, hook) in self.dp.attached()? {
            let keep = match hook {
                Hook::FromNetdev | Hook::ToNetdev => {
                    self.cfg.uplink.as_deref() == Some(iface.as_str())
                }
                _ => wanted.contains(&iface),
            };
            if !keep {
                self.dp.detach(&iface, hook)?;
                info!(%iface, ?hook, "detached stale link");
            }
        }
        Ok(())
    }

    /// Reloads the policies if the files changed. Invalid sets are logged and ignored.
    pub fn poll_policies(&mut self) {
        let fp = policy_fingerprint(&self.cfg);
        if fp == self.fingerprint {
            return;
        }
        self.fingerprint = fp;
        match load_policies(&self.cfg) {
            Err(e) => {
                error!("policy change rejected; the previous policy stays in force");
                log_load_error(&e);
                self.metrics.reload("rejected");
                self.last_error = Some(
                    e.errors()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            Ok(set) => {
                for w in &set.warnings {
                    warn!("{w}");
                }
                let engine = make_engine(set, &self.settings);
                match self.rebuild(engine, self.endpoints.clone()) {
                    Ok(()) => {
                        self.metrics.reload("applied");
                        self.last_error = None;
                    }
                    Err(e) => {
                        error!(error = format!("{e:#}"), "policy change could not be applied; the previous policy stays in force");
                        self.metrics.reload("rejected");
                        self.last_error = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }

    pub fn add_endpoint(&mut self, e: EndpointConfig) -> anyhow::Result<u16> {
        let problems = crate::config::check_endpoint(&e);
        if !problems.is_empty() {
            anyhow::bail!(
                "{}",
                problems
                    .iter()
                    .map(|(f, m)| format!("{f}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for (_, o) in &self.endpoints {
            if o.name == e.name {
                anyhow::bail!("endpoint {:?} exists", e.name);
            }
            if o.interface == e.interface {
                anyhow::bail!("interface {} is endpoint {:?}'s", e.interface, o.name);
            }
            if let Some(ip) = e.ips.iter().find(|ip| o.ips.contains(ip)) {
                anyhow::bail!("{ip} belongs to endpoint {:?}", o.name);
            }
        }
        let id = (1..crate::node::HOST_ENDPOINT_ID)
            .find(|id| !self.endpoints.iter().any(|(i, _)| i == id))
            .context("no endpoint id left")?;
        let mut eps = self.endpoints.clone();
        eps.push((id, e.clone()));
        self.rebuild(self.engine.clone(), eps)?;
        if let Err(err) = self.attach_endpoint(&e.interface) {
            let eps: Vec<_> = self
                .endpoints
                .iter()
                .filter(|(i, _)| *i != id)
                .cloned()
                .collect();
            let _ = self.rebuild(self.engine.clone(), eps);
            return Err(err);
        }
        info!(name = %e.name, id, "endpoint added");
        Ok(id)
    }

    pub fn remove_endpoint(&mut self, name: &str) -> anyhow::Result<()> {
        let Some((_, e)) = self.endpoints.iter().find(|(_, e)| e.name == name).cloned() else {
            anyhow::bail!("no endpoint {name:?}");
        };
        for hook in [Hook::FromEndpoint, Hook::ToEndpoint] {
            self.dp.detach(&e.interface, hook)?;
        }
        let eps: Vec<_> = self
            .endpoints
            .iter()
            .filter(|(_, o)| o.name != name)
            .cloned()
            .collect();
        self.rebuild(self.engine.clone(), eps)?;
        info!(name, "endpoint removed");
        Ok(())
    }

    pub fn attached(&self) -> Vec<(String, Hook)> {
        self.dp.attached().unwrap_or_default()
    }

    pub fn drops(&self) -> Vec<(String, u64)> {
        let Ok(c) = self.dp.counters() else {
            return Vec::new();
        };
        (1u16..=bpf_redirect::common::drop_reason::CT_NO_ENTRY)
            .map(|r| {
                (
                    bpf_redirect::common::drop_reason::name(r).to_string(),
                    c.drops(r),
                )
            })
            .collect()
    }
}

/// Shared by the admin server.
pub struct Daemon {
    pub controller: Mutex<Controller>,
    pub view: Arc<ArcSwap<NodeView>>,
    pub started: SystemTime,
    pub routing: ProxyRouting,
}

fn lock(d: &Daemon) -> std::sync::MutexGuard<'_, Controller> {
    d.controller.lock().unwrap_or_else(|p| p.into_inner())
}

impl Daemon {
    pub fn with<T>(&self, f: impl FnOnce(&mut Controller) -> T) -> T {
        f(&mut lock(self))
    }
}

/// `ward run`.
pub fn run(cfg: Config, set: PolicySet) -> anyhow::Result<()> {
    info!(config = %serde_json::to_string(&cfg).unwrap_or_default(), "effective config");
    // Accept, admin and metrics; client connections live on the proxy workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(1)
        .build()?;
    // 1. The listener first: redirected flows fail closed until it exists.
    let std_listener =
        crate::proxy::transport::bind_transparent(cfg.listeners.http).with_context(|| {
            format!(
                "binding the transparent listener on port {} (needs CAP_NET_ADMIN)",
                cfg.listeners.http
            )
        })?;
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
    let mut controller = Controller::start(cfg.clone(), set, dp, metrics.clone())?;
    controller.attach_all()?;
    let routing = ProxyRouting::default();
    routing
        .install()
        .context("installing the proxy routing rule")?;
    info!(
        table = routing.table,
        pref = routing.priority,
        "proxy routing installed"
    );
    let view = controller.view.clone();
    let daemon = Arc::new(Daemon {
        controller: Mutex::new(controller),
        view: view.clone(),
        started: SystemTime::now(),
        routing,
    });
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

    // Kernel events → flows.
    let events = {
        let (stop, view, flows, pin_root) = (
            stop.clone(),
            view.clone(),
            flows.clone(),
            cfg.pin_root.clone(),
        );
        std::thread::Builder::new().name("events".into()).spawn(move || {
            let mut reader = match bpf_redirect::EventReader::open(&pin_root) {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "cannot read datapath events; kernel flows are not logged");
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                match reader.next_timeout(Duration::from_millis(250)) {
                    // IPv6 (router solicitations, ND) dropped at endpoint hooks carries no
                    // IPv4 tuple to show; it is counted in ward_datapath_drops_total only.
                    Ok(Some(e))
                        if e.kind
                            == bpf_redirect::EventKind::Drop(bpf_redirect::DropReason(
                                bpf_redirect::common::drop_reason::UNSUPPORTED_L3,
                            )) => {}
                    Ok(Some(e)) => flows.send(Flow::from_event(&e, &view.load())),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "reading datapath events");
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        })?
    };
    // Policy poller.
    let poller = {
        let (stop, daemon) = (stop.clone(), daemon.clone());
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLICY_POLL);
                    daemon.with(|c| c.poll_policies());
                }
            })?
    };

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
            crate::proxy::Proxy::new(view.clone(), flows.clone(), metrics.clone())
                .with_proxy_sockets(sockets),
        );
        let threads = cfg.proxy_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        let workers = crate::proxy::Workers::start(threads, proxy)
            .context("starting the proxy worker threads")?;
        info!(threads, "proxy workers started");
        let proxy_task = tokio::spawn(crate::proxy::serve(workers, listener, rx.clone()));
        let admin_task = {
            let l = crate::admin::bind(&cfg.admin_socket)?;
            info!(socket = %cfg.admin_socket.display(), "admin socket ready");
            tokio::spawn(crate::admin::serve(l, daemon.clone(), rx.clone()))
        };
        if let Some(addr) = cfg.metrics {
            let d = daemon.clone();
            let drops: Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync> =
                Arc::new(move || d.with(|c| c.drops()));
            let m = metrics.clone();
            let rx = rx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(addr, m, drops, rx).await {
                    error!(error = %e, %addr, "metrics endpoint failed");
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping (the datapath stays attached)"),
            _ = int.recv() => info!("SIGINT: stopping (the datapath stays attached)"),
        }
        let _ = tx.send(true);
        let _ = proxy_task.await;
        let _ = admin_task.await;
        let _ = std::fs::remove_file(&cfg.admin_socket);
        anyhow::Ok(0)
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = events.join();
    let _ = poller.join();
    if !last_flows.flush(Duration::from_secs(2)) {
        warn!("the flow log did not flush within 2 s; its last flows may be lost");
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    info!("stopped");
    std::process::exit(code);
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
