//! The `patternd` binary: serve | check | compile | schema | doctor.

use std::io::{self, IsTerminal as _, Write};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use metrics_exporter_prometheus::PrometheusHandle;
use patternd::http::{AdminToken, AppState, Shared, router, server};
use patternd::plugin::Limits;
use patternd::policy::{self, Diagnostic};
use patternd::runtime::Runtime;
use patternd::snapshot::{Snapshot, Sources};
use patternd::store::connect::{RedisTarget, TlsFiles};
use patternd::store::managed::ManagedRedis;
use patternd::store::{Store, StoreConfig};

/// How long the startup check of the Redis connection may take (see `RedisTarget::check`).
const STARTUP_CHECK: Duration = Duration::from_secs(3);

/// mimalloc rather than the system allocator: see the note in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "patternd",
    version,
    about = "Redis patterns done right, served over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Which log events to write: a tracing filter such as `info`, `warn,patternd=debug`.
    /// An invalid filter is refused (exit code 2).
    #[arg(
        long = "log",
        global = true,
        env = "PATTERND_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    log: String,
    /// Log format on stderr: `text` for people, `json` for log shippers (one object a line:
    /// `timestamp`, `level`, `target`, `fields`).
    #[arg(
        long,
        global = true,
        env = "PATTERND_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the policies over HTTP. Boxed: far larger than the other commands' arguments.
    Serve(Box<ServeArgs>),
    /// Validate policy files; exits non-zero with the diagnostics when there are errors.
    Check {
        /// Policy files or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Plugins directory: its plugins are loaded and checked too.
        #[arg(long, env = "PATTERND_PLUGINS")]
        plugins: Option<PathBuf>,
    },
    /// Print every rule's Lua script and key layout.
    Compile {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, env = "PATTERND_PLUGINS")]
        plugins: Option<PathBuf>,
    },
    /// Print the JSON Schema of the policy language (for editors).
    Schema,
    /// Check a live Redis against the policies: eviction policy, maxmemory, persistence,
    /// replicas, slow scripts, latency, version and modules, and a bounded sample of each
    /// rule's keys. Read-only. Exit code: 0 when no check fails (warnings allowed), 1 when
    /// any check fails, 2 when it could not run (invalid policies, Redis unreachable).
    Doctor(Box<DoctorArgs>),
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// Policy files or directories of them (the rules to check Redis against).
    #[arg(default_value = "policies")]
    policies: Vec<PathBuf>,
    /// The Redis to check, as for `serve --redis` (a `redis+cluster://` URL checks every
    /// primary).
    #[arg(
        long,
        env = "PATTERND_REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// CA certificates (PEM) for a `rediss://` URL, as for `serve`.
    #[arg(long, env = "PATTERND_REDIS_CA_FILE", value_name = "PATH")]
    redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with --redis-client-key.
    #[arg(long, env = "PATTERND_REDIS_CLIENT_CERT", value_name = "PATH")]
    redis_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-client-cert.
    #[arg(long, env = "PATTERND_REDIS_CLIENT_KEY", value_name = "PATH")]
    redis_client_key: Option<PathBuf>,
    /// Plugins directory, when the policies name plugins.
    #[arg(long, env = "PATTERND_PLUGINS")]
    plugins: Option<PathBuf>,
    /// `text` for people, `json` for the same report `GET /admin/doctor` answers.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`. A host name is resolved
    /// once at start and patternd listens on one of its addresses: the first IPv4 one, else
    /// the first.
    #[arg(long, env = "PATTERND_LISTEN", default_value = "127.0.0.1:8080", value_name = "HOST:PORT", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Redis URL: `redis://host:port/db`, `rediss://…` for TLS, with ACL credentials as
    /// `redis://USER:PASSWORD@host:port` or `redis://:PASSWORD@host:port` (`requirepass`).
    /// A Redis Cluster: `redis+cluster://[USER:PASSWORD@]host1:port1,host2:port2/` (any
    /// nodes of it as seeds; `rediss+cluster://` for TLS). Without it, patternd starts a managed redis-server on a free loopback port (for trying
    /// it out; nothing is persisted).
    #[arg(
        long,
        env = "PATTERND_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis: Option<String>,
    /// CA certificates (PEM) that verify the Redis server's certificate, for a `rediss://`
    /// URL. Without it, the system's trusted roots do.
    #[arg(long, env = "PATTERND_REDIS_CA_FILE", value_name = "PATH")]
    redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a Redis that checks them (`tls-auth-clients yes`); goes
    /// with --redis-client-key.
    #[arg(long, env = "PATTERND_REDIS_CLIENT_CERT", value_name = "PATH")]
    redis_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-client-cert.
    #[arg(long, env = "PATTERND_REDIS_CLIENT_KEY", value_name = "PATH")]
    redis_client_key: Option<PathBuf>,
    /// Policy file or directory.
    #[arg(long, env = "PATTERND_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Plugins directory (`NAME.wasm`, `NAME.lua`), reloaded with the policies.
    #[arg(long, env = "PATTERND_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Bearer token for /admin. Without it, /admin answers loopback clients only.
    #[arg(long, env = "PATTERND_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Worker threads of the async runtime (default: one per core). Under a container's CPU
    /// quota, set it to the quota: more threads than the CPUs they may use only add wake-ups.
    #[arg(long, env = "PATTERND_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Multiplexed Redis connections on the request path (default: one per worker thread).
    #[arg(long, env = "PATTERND_REDIS_POOL")]
    redis_pool: Option<usize>,
    /// Rate-limit decisions (and cache reads) of one rule waiting for Redis at once are sent
    /// as one script call deciding them in order, up to this many per call (the same answers
    /// as separate calls: a script is atomic). Saves Redis a call's fixed cost per decision
    /// under load; an idle engine sends calls of one, without waiting. 0 or 1: off. A Redis
    /// Cluster never batches (a batch's keys span slots).
    #[arg(long, env = "PATTERND_REDIS_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=patternd::compile::batch::MAX_CALLS as u64))]
    redis_batch: u64,
    /// Bound on every Redis command; past it, the rule's on_redis_error decides.
    #[arg(long, env = "PATTERND_REDIS_TIMEOUT", default_value = "300ms", value_parser = patternd::policy::duration::parse)]
    redis_timeout: Duration,
    /// Client connections served at once (admin routes included: they share the listener);
    /// more wait in the listen backlog. Default: three quarters of the open-files limit
    /// (a quarter, at least 128, stays for Redis, origins and files), at most 10000.
    #[arg(long, env = "PATTERND_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// A request head (or the next one on an idle keep-alive connection) must arrive whole
    /// within this, or the connection is closed.
    #[arg(long, env = "PATTERND_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_read_timeout: Duration,
    /// A request body must arrive whole within this after its head, or the answer is 408.
    #[arg(long, env = "PATTERND_BODY_READ_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    body_read_timeout: Duration,
}

/// A duration in the policy grammar (`10s`, `1m30s`), more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match patternd::policy::duration::parse(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        other => other,
    }
}

/// `--max-connections`, or the default for this process's open-files limit; logged either way.
fn connection_cap(requested: Option<u64>) -> usize {
    let nofile = server::open_files_limit();
    let budget = nofile.map(server::default_max_connections);
    match (requested, budget) {
        (Some(n), budget) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if let (Some(b), Some(nofile)) = (budget, nofile)
                && n > b
            {
                tracing::warn!(
                    max_connections = n,
                    open_files_limit = nofile,
                    "--max-connections leaves fewer than {} file descriptors for Redis, origins and files; raise the open-files limit (ulimit -n) or lower it",
                    nofile.saturating_sub(n as u64)
                );
            }
            n
        }
        (None, Some(b)) => {
            tracing::info!(
                max_connections = b,
                open_files_limit = nofile,
                "connection cap from the open-files limit (the rest stays for Redis, origins and files)"
            );
            b
        }
        (None, None) => {
            let b = usize::try_from(server::DEFAULT_MAX_CONNECTIONS).unwrap_or(usize::MAX);
            tracing::info!(
                max_connections = b,
                "open-files limit unknown or unlimited: connection cap at the default"
            );
            b
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log, cli.log_format) {
        // Falling back to a default would hide every event the operator asked for.
        eprintln!(
            "error: invalid log filter `{}` (from --log or PATTERND_LOG): {e}\n\
             expected tracing's filter syntax, such as `info` or `warn,patternd=debug`",
            cli.log
        );
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Check { paths, plugins } => return check(&sources(paths, plugins)),
        Command::Compile { paths, plugins } => return compile_cmd(&sources(paths, plugins)),
        Command::Doctor(args) => return doctor(&args),
        Command::Schema => {
            return emit(|out| {
                let schema =
                    serde_json::to_string_pretty(&policy::json_schema()).unwrap_or_default();
                writeln!(out, "{schema}")
            });
        }
        Command::Serve(args) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.threads {
                runtime.worker_threads(usize::from(n));
            }
            runtime
                .enable_all()
                .build()
                .context("could not start the async runtime")
                .and_then(|rt| rt.block_on(serve(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(
    filter: &str,
    format: LogFormat,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    use tracing_subscriber::EnvFilter;
    // An empty PATTERND_LOG (`PATTERND_LOG=`) means the default, as if unset.
    let filter = if filter.trim().is_empty() {
        "info"
    } else {
        filter
    };
    let filter = EnvFilter::builder().parse(filter)?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => {
            // Colours only for a person at a terminal: escape codes in a file or a log
            // pipeline are noise. NO_COLOR (no-color.org) still turns them off there.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            fmt.with_ansi(io::stderr().is_terminal() && !no_color)
                .init();
        }
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Diagnostics for a person at a terminal (`check`, `compile`): `file:line:column: …`.
fn print_diags(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Writes a command's output to stdout. A reader that went away (`patternd compile | head`)
/// ends it quietly with success, as it does any Unix filter; `println!` would panic.
fn emit(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> ExitCode {
    let mut out = io::BufWriter::new(io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: could not write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--listen`: an address, or a host name resolved now (see the flag's help for which of its
/// addresses is used). Resolving at parse time keeps `serve` taking one `SocketAddr`.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, such as 127.0.0.1:8080, [::1]:8080 or localhost:8080";
    let (host, port) = text.rsplit_once(':').ok_or(expected)?;
    if host.is_empty() || host.contains(':') {
        return Err(format!("{expected} (an IPv6 address goes in brackets)"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{expected}; `{port}` is not a port"))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    // IPv4 first, as Go's net.Listen does: `localhost` often resolves to ::1 first, and a
    // listener on ::1 alone would refuse clients that connect to 127.0.0.1.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

/// Diagnostics of the policies `serve` loads, as log events (with the place as fields), so a
/// JSON log stays JSON and the filter applies.
fn log_diags(diags: &[Diagnostic]) {
    for d in diags {
        d.log();
    }
}

fn sources(policies: Vec<PathBuf>, plugins: Option<PathBuf>) -> Sources {
    Sources {
        policies,
        plugins,
        plugin_limits: Limits::default(),
    }
}

fn check(src: &Sources) -> ExitCode {
    match Snapshot::build(src) {
        Ok(snap) => {
            print_diags(&snap.warnings);
            emit(|out| {
                writeln!(
                    out,
                    "ok: {} app(s), {} rule(s), {} plugin(s), {} warning(s)",
                    snap.compiled.apps.len(),
                    snap.rule_count(),
                    snap.plugins.len(),
                    snap.warnings.len()
                )
            })
        }
        Err(d) => {
            print_diags(&d.0);
            eprintln!("{} error(s)", d.error_count());
            ExitCode::FAILURE
        }
    }
}

/// `patternd doctor`: exit 0 (no check failed), 1 (a check failed), 2 (could not run).
fn doctor(args: &DoctorArgs) -> ExitCode {
    let src = sources(args.policies.clone(), args.plugins.clone());
    let snap = match Snapshot::build(&src) {
        Ok(s) => s,
        Err(d) => {
            print_diags(&d.0);
            eprintln!(
                "{} error(s) in the policies; nothing checked",
                d.error_count()
            );
            return ExitCode::from(2);
        }
    };
    let target = match RedisTarget::new(
        &args.redis,
        &TlsFiles {
            ca_file: args.redis_ca_file.clone(),
            client_cert: args.redis_client_cert.clone(),
            client_key: args.redis_client_key.clone(),
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(patternd::doctor::examine(
                &snap,
                &target,
                patternd::doctor::COMMAND_TIMEOUT,
            ))
            .map_err(|e| e.to_string())
        });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.format {
        ReportFormat::Text => patternd::doctor::text::render(&report),
        ReportFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    };
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("error: could not write the report: {e}");
        return ExitCode::from(2);
    }
    if report.status == patternd::doctor::report::Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn compile_cmd(src: &Sources) -> ExitCode {
    let snap = match Snapshot::build(src) {
        Ok(s) => s,
        Err(d) => {
            print_diags(&d.0);
            return ExitCode::FAILURE;
        }
    };
    emit(|out| {
        for rule in snap.compiled.rules() {
            writeln!(
                out,
                "==> {}/{} ({})",
                rule.rule.app,
                rule.rule.name,
                rule.rule.kind.pattern()
            )?;
            writeln!(out, "keys:")?;
            for (k, what) in rule.key_layout() {
                writeln!(out, "  {k}  -- {what}")?;
            }
            for script in rule.scripts() {
                writeln!(out, "script {} (sha1 {}):", script.name, script.sha)?;
                writeln!(out, "{}", script.source)?;
            }
        }
        Ok(())
    })
}

/// The recorder, set up from `patternd::metrics::ALL` (buckets, HELP, series known at start).
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = patternd::metrics::prometheus_builder()
        .context("metrics buckets")?
        .install_recorder()
        .context("could not install the metrics recorder")?;
    patternd::metrics::describe_and_register_globals();
    Ok(handle)
}

async fn serve(args: Box<ServeArgs>) -> anyhow::Result<()> {
    // The recorder must exist before any rule registers its metric handles.
    let metrics = install_metrics()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let src = sources(vec![args.policies.clone()], args.plugins.clone());
    let snapshot = match Snapshot::build(&src) {
        Ok(s) => s,
        Err(d) => {
            log_diags(&d.0);
            anyhow::bail!(
                "{} error(s) in the policies at {}; nothing started",
                d.error_count(),
                args.policies.display()
            );
        }
    };
    log_diags(&snapshot.warnings);

    let (managed, url) = match &args.redis {
        Some(url) => (None, url.clone()),
        None => {
            let m = ManagedRedis::start().await?;
            tracing::info!(
                url = %m.url(),
                "no --redis given: started a managed redis-server (for trying patternd out; nothing is persisted; it stops with patternd)"
            );
            let url = m.url();
            (Some(m), url)
        }
    };
    // The worker threads the runtime runs (`--threads`, else one per core).
    let cores = args.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let target = RedisTarget::new(
        &url,
        &TlsFiles {
            ca_file: args.redis_ca_file.clone(),
            client_cert: args.redis_client_cert.clone(),
            client_key: args.redis_client_key.clone(),
        },
    )?;
    // Refused credentials or a refused TLS handshake stop patternd here, with the reason;
    // a Redis that does not answer yet does not (requests get on_redis_error until it does).
    target.check(STARTUP_CHECK).await?;
    let store = Store::new(&StoreConfig {
        target: target.clone(),
        pool_size: args.redis_pool.unwrap_or(cores),
        command_timeout: args.redis_timeout,
        batch_max: usize::try_from(args.redis_batch).unwrap_or(0),
    })?;
    // Nothing has been sent to Redis yet: say so, and say when it first answers (below).
    tracing::info!(
        redis = %store.redacted_url(),
        pool = args.redis_pool.unwrap_or(cores),
        batch = ?store.batch_max(),
        "Redis pool created (connections open on first use)"
    );

    let tracker = patternd::store::tracking::Tracker::new(&target)?;
    let tracker_task = tracker.spawn();
    let runtime = Arc::new(Runtime::new(snapshot, store, src));
    runtime.enable_near_caches(tracker);
    if !runtime.preload_scripts().await {
        // Until Redis answers, requests get on_redis_error or 503; this says when it does.
        tokio::spawn({
            let runtime = runtime.clone();
            async move { runtime.preload_scripts_until_redis_answers().await }
        });
    }
    let snap = runtime.snapshot();
    tracing::info!(
        apps = snap.compiled.apps.len(),
        rules = snap.rule_count(),
        policies = %args.policies.display(),
        "policies loaded"
    );
    if args.admin_token.is_none() {
        tracing::info!("no admin token: /admin answers loopback clients only");
    }

    // The write-behind flusher: one task that follows reloads (it reads the current snapshot
    // on every poll) and stops with the server. Its consumer name must be unique, so without
    // the OS random source the engine does not start (it could issue no token either).
    let (stop_flusher, flusher_stop) = tokio::sync::watch::channel(false);
    let consumer = patternd::patterns::cache::journal::consumer_name()
        .context("cannot name the write-behind flusher")?;
    // The queue reaper (due delayed jobs, lapsed leases, gauges), stopped with the flusher.
    let reaper = tokio::spawn(patternd::patterns::queue::reaper::run(
        runtime.clone(),
        flusher_stop.clone(),
    ));
    let pusher = tokio::spawn(patternd::patterns::queue::push::run(
        runtime.clone(),
        flusher_stop.clone(),
    ));
    let flusher = tokio::spawn(patternd::patterns::cache::journal::run(
        runtime.clone(),
        consumer,
        flusher_stop,
    ));

    // The dashboard's history: the registry read once a second into a bounded ring.
    let samples = Arc::new(patternd::sampler::Samples::default());
    tokio::spawn(patternd::sampler::run(metrics.clone(), samples.clone()));
    let state = AppState::new(Shared {
        runtime,
        admin_token: args.admin_token.as_deref().map(AdminToken::new),
        metrics: Some(metrics),
        samples,
    });
    let app = router(state);
    let limits = server::Limits {
        max_connections: connection_cap(args.max_connections),
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        max_connections = limits.max_connections,
        header_read_timeout = %humantime::format_duration(limits.header_read_timeout),
        body_read_timeout = %humantime::format_duration(limits.body_read_timeout),
        "patternd serving"
    );
    server::serve(listener, app, limits, shutdown_signal()).await;
    tracing::info!("shutting down");
    // Entries in flight stay pending in the journal and are taken over by the next engine.
    let _ = stop_flusher.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), flusher).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), reaper).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), pusher).await;
    tracker_task.abort();
    if let Some(m) = managed {
        m.shutdown().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
