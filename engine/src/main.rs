//! The `patternd` binary: serve | check | compile | schema.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusHandle;
use patternd::http::{AppState, router};
use patternd::plugin::Limits;
use patternd::policy::{self, Diagnostic};
use patternd::runtime::Runtime;
use patternd::snapshot::{Snapshot, Sources};
use patternd::store::managed::ManagedRedis;
use patternd::store::{Store, StoreConfig};

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
}

#[derive(Subcommand)]
enum Command {
    /// Serve the policies over HTTP.
    Serve(ServeArgs),
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PATTERND_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Redis URL. Without it, patternd starts a managed redis-server on a free loopback port
    /// (for trying it out; nothing is persisted).
    #[arg(long, env = "PATTERND_REDIS_URL")]
    redis: Option<String>,
    /// Policy file or directory.
    #[arg(long, env = "PATTERND_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Plugins directory (`NAME.wasm`, `NAME.lua`), reloaded with the policies.
    #[arg(long, env = "PATTERND_PLUGINS")]
    plugins: Option<PathBuf>,
    /// Bearer token for /admin. Without it, /admin answers loopback clients only.
    #[arg(long, env = "PATTERND_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Multiplexed Redis connections on the request path (default: one per core).
    #[arg(long, env = "PATTERND_REDIS_POOL")]
    redis_pool: Option<usize>,
    /// Bound on every Redis command; past it, the rule's on_redis_error decides.
    #[arg(long, env = "PATTERND_REDIS_TIMEOUT", default_value = "300ms", value_parser = patternd::policy::duration::parse)]
    redis_timeout: Duration,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths, plugins } => return check(&sources(paths, plugins)),
        Command::Compile { paths, plugins } => return compile_cmd(&sources(paths, plugins)),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&policy::json_schema()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("could not start the async runtime")
            .and_then(|rt| rt.block_on(serve(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PATTERND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_diags(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
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
            println!(
                "ok: {} app(s), {} rule(s), {} plugin(s), {} warning(s)",
                snap.compiled.apps.len(),
                snap.rule_count(),
                snap.plugins.len(),
                snap.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(d) => {
            print_diags(&d.0);
            eprintln!("{} error(s)", d.error_count());
            ExitCode::FAILURE
        }
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
    for rule in snap.compiled.rules() {
        println!(
            "==> {}/{} ({})",
            rule.rule.app,
            rule.rule.name,
            rule.rule.kind.pattern()
        );
        println!("keys:");
        for (k, what) in rule.key_layout() {
            println!("  {k}  -- {what}");
        }
        for script in rule.scripts() {
            println!("script {} (sha1 {}):", script.name, script.sha);
            println!("{}", script.source);
        }
    }
    ExitCode::SUCCESS
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

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
            print_diags(&d.0);
            anyhow::bail!(
                "{} error(s) in the policies at {}; nothing started",
                d.error_count(),
                args.policies.display()
            );
        }
    };
    print_diags(&snapshot.warnings);

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
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let url_for_tracking = url.clone();
    let store = Store::new(&StoreConfig {
        url,
        pool_size: args.redis_pool.unwrap_or(cores),
        command_timeout: args.redis_timeout,
    })?;
    tracing::info!(redis = %store.redacted_url(), pool = args.redis_pool.unwrap_or(cores), "Redis pool ready");

    let tracker = patternd::store::tracking::Tracker::new(&url_for_tracking)?;
    let tracker_task = tracker.spawn();
    let runtime =
        Arc::new(Runtime::new(snapshot, store, src).with_redis_timeout(args.redis_timeout));
    runtime.enable_near_caches(tracker);
    runtime.preload_scripts().await;
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
    // on every poll) and stops with the server.
    let (stop_flusher, flusher_stop) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(patternd::patterns::cache::journal::run(
        runtime.clone(),
        flusher_stop,
    ));

    let state = AppState {
        runtime,
        admin_token: args.admin_token.map(Arc::from),
        metrics: Some(metrics),
    };
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "patternd serving");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("server error")?;
    tracing::info!("shutting down");
    // Entries in flight stay pending in the journal and are taken over by the next engine.
    let _ = stop_flusher.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), flusher).await;
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
