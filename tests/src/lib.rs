//! End-to-end harness: real `redis-server` processes, the real `patternd` binary, real HTTP.
//!
//! Modelled on redis-rs's test harness: every test starts its own `redis-server` on a free
//! loopback port and its own `patternd` pointed at it, so tests run in parallel without
//! sharing state, and nothing ever touches the machine's default Redis on 6379. Processes are
//! killed on drop; when a test fails (the drop runs while panicking), the Redis log and the
//! patternd log are printed, so a red test explains itself.
//!
//! Run with `cargo test -p patternd-e2e`; it needs `redis-server` on PATH and builds the
//! `patternd` binary itself when it is missing or older than the engine's sources.

pub mod backend;
pub mod cache_keys;
pub mod cluster;
pub mod origin;
pub mod raw;
pub mod sse;
pub mod tls;
pub mod webdriver;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use reqwest::header::HeaderMap;
use serde_json::Value;

pub use crate::backend::Backend;
use crate::origin::Origin;

/// How long a freshly spawned process may take to answer before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a port is re-picked when another process grabbed it between pick and bind.
const PORT_ATTEMPTS: usize = 5;

// ---------------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop (kept when a test fails, so
/// its files can be looked at).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // pid + per-process sequence make the name unique across parallel test binaries;
        // the nanos only guard against a recycled pid finding a leftover directory.
        let name = format!(
            "patternd-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or overwrites) `name` inside the directory.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let p = self.path.join(name);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for inspection)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A directory of policy files, as `patternd serve --policies` and `patternd check` take it.
pub fn policy_dir(files: &[(&str, &str)]) -> Result<TempDir> {
    let dir = TempDir::new("policies")?;
    for (name, text) in files {
        dir.write(name, text)?;
    }
    Ok(dir)
}

/// Lets the OS pick a free loopback port. Another process may take it before our child binds
/// it; the start functions detect that and pick again.
pub fn free_port() -> Result<u16> {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        // Outside the usual ephemeral range, but never risk the machine's own Redis.
        if port != 6379 {
            return Ok(port);
        }
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<could not read {}: {e}>", path.display()))
}

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` this test started and owns: persistence off, loopback only.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Arguments after the harness's own (TLS, see [`tls`]), kept for a restart.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port and waits until it answers PING.
    pub fn start() -> Result<Self> {
        Self::start_in(TempDir::new("redis")?, |_| Ok(Vec::new()))
    }

    /// [`RedisServer::start`] in `dir` (files the server reads may be there already), with
    /// more arguments, made from the attempt's free port (which stays a plain-text port:
    /// the harness checks and inspects through it).
    pub fn start_in(dir: TempDir, extra: impl Fn(u16) -> Result<Vec<String>>) -> Result<Self> {
        let mut last_err = anyhow!("no attempt made");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let extra = extra(port)?;
            match spawn_redis(port, dir.path(), &extra) {
                Ok(child) => {
                    return Ok(Self {
                        port,
                        dir,
                        child: Some(child),
                        extra,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err.context(format!(
            "redis-server did not start; its log:\n{}",
            read_lossy(&dir.path().join("redis.log"))
        )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The value of one of the extra arguments it was started with (`--tls-port`, …).
    pub fn extra_arg(&self, flag: &str) -> Option<&str> {
        let at = self.extra.iter().position(|a| a == flag)?;
        self.extra.get(at + 1).map(String::as_str)
    }

    /// Its temp dir (certificates and other files it reads are kept there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL to give patternd (`--redis`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// An async connection for inspecting what patternd wrote.
    pub async fn conn(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (an outage ending). Data is gone: nothing
    /// was persisted, exactly like a restarted cache node, and so are the loaded scripts.
    pub fn restart_same_port(&mut self) -> Result<()> {
        self.stop();
        let child = spawn_redis(self.port, self.dir.path(), &self.extra)
            .with_context(|| format!("restarting redis-server on port {}", self.port))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("redis.log"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- redis-server :{} log -----\n{}\n----- end of redis log -----",
                self.port,
                self.log()
            );
        }
    }
}

fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Result<Child> {
    let log = dir.join("redis.log");
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("could not spawn redis-server (is it installed and on PATH?)")?;
    match wait_redis(port, dir, &mut child) {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Waits until *our* child answers on `port`: a PING alone could be answered by another
/// test's server that happened to grab the port, so the server's `dir` must be ours too.
fn wait_redis(port: u16, dir: &Path, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str())?;
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("redis-server on port {port} exited early ({status})");
        }
        if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query(&mut c);
            let cfg: redis::RedisResult<Vec<String>> =
                redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut c);
            if let (Ok(_), Ok(cfg)) = (pong, cfg) {
                let theirs = cfg.get(1).map(PathBuf::from).unwrap_or_default();
                ensure!(
                    theirs == want,
                    "port {port} is served by another redis-server (dir {})",
                    theirs.display()
                );
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer PING within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The patternd binary
// ---------------------------------------------------------------------------------------------

/// The `patternd` binary under test.
///
/// `cargo test -p patternd-e2e` does not build another package's binary, so it is looked up
/// next to the test executable (`target/<profile>/deps/<test>-<hash>` → `target/<profile>/
/// patternd`). When it is missing, or older than the engine's sources (someone edited the
/// engine and only ran this crate's tests), it is built once per test process; otherwise the
/// suite would quietly test yesterday's binary. `PATTERND_BIN` overrides the lookup.
pub fn patternd_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PATTERND_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join(format!("patternd{}", std::env::consts::EXE_SUFFIX));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    if is_fresh(&bin, workspace) {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "patternd", "--bin", "patternd"])
        .current_dir(workspace);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("building the patternd binary for the end-to-end tests: {cmd:?}");
    let out = cmd.output().context("running cargo build")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        // An engine that does not compile fails its own build loudly anyway; an existing
        // binary still lets these tests say something instead of nothing.
        ensure!(bin.exists(), "cargo build -p patternd failed:\n{why}");
        eprintln!(
            "WARNING: cargo build -p patternd failed; testing the existing, older {}:\n{why}",
            bin.display()
        );
    }
    ensure!(
        bin.exists(),
        "cargo build did not produce {}",
        bin.display()
    );
    Ok(bin)
}

/// True when `bin` exists and is newer than every engine source file (and embedded file).
fn is_fresh(bin: &Path, workspace: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let engine = workspace.join("engine");
    let mut newest = SystemTime::UNIX_EPOCH;
    // `ui/`: the dashboard's files, embedded with include_str!.
    let mut stack = vec![
        engine.join("src"),
        engine.join("ui"),
        engine.join("Cargo.toml"),
    ];
    while let Some(p) = stack.pop() {
        let Ok(meta) = p.metadata() else { continue };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(m);
        }
    }
    built >= newest
}

/// `plugins/dist/`, filled by `plugins/build.sh` (the example WASM guests and Lua plugins),
/// built once per test process. Needs the wasm32-wasip2 target; without it this fails with
/// the command that installs it rather than letting plugin tests pass vacuously.
pub fn example_plugins_dist() -> Result<PathBuf> {
    static DIST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIST.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace root")?
            .to_path_buf();
        let out = Command::new("bash")
            .arg(root.join("plugins/build.sh"))
            .current_dir(&root)
            .output()
            .map_err(|e| format!("cannot run plugins/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "plugins/build.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(root.join("plugins/dist"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The text of `plugins/examples/<rel>` in the repository (an example plugin or policy).
pub fn example_file(rel: &str) -> Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples")
        .join(rel);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

/// A fresh plugins dir holding example Lua plugins, each `(its name in the dir, its path
/// under plugins/examples/)`: Lua plugins need no build, unlike [`plugins_from_dist`].
pub fn lua_plugins(files: &[(&str, &str)]) -> Result<TempDir> {
    let dir = TempDir::new("lua-plugins")?;
    for (name, rel) in files {
        dir.write(name, &example_file(rel)?)?;
    }
    Ok(dir)
}

/// The example policy that uses every example plugin, under plugins/examples/.
pub const EXAMPLE_POLICY: &str = "policies/plugins.yaml";

/// A fresh plugins dir holding every example plugin ([`plugins_from_dist`]).
pub fn example_plugins() -> Result<TempDir> {
    plugins_from_dist(&[
        "tiered-limits-lua.lua",
        "quota.lua",
        "cache-key.lua",
        "tiered-limits.wasm",
        "job-gate.wasm",
        "job-gate-lua.lua",
        "channel-gate.wasm",
        "channel-gate-lua.lua",
        "entry-gate.wasm",
        "entry-gate-lua.lua",
        "score-gate.wasm",
        "score-gate-lua.lua",
    ])
}

/// A fresh plugins dir holding copies of the named files of `plugins/dist/`, so a test can
/// rewrite or add plugins without touching what other tests read.
pub fn plugins_from_dist(names: &[&str]) -> Result<TempDir> {
    let dist = example_plugins_dist()?;
    let dir = TempDir::new("plugins")?;
    for n in names {
        std::fs::copy(dist.join(n), dir.path().join(n))
            .with_context(|| format!("copying {n} from {}", dist.display()))?;
    }
    Ok(dir)
}

/// Runs `patternd <args>` to completion (for `check`, `compile`, `schema`).
pub fn run_cli(args: &[&str]) -> Result<Output> {
    let out = Command::new(patternd_bin()?)
        .args(args)
        .env("NO_COLOR", "1")
        .env("PATTERND_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("running patternd")?;
    Ok(out)
}

/// What [`Patternd::start_with`] changes from [`Patternd::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions<'a> {
    /// The host of `--listen` (default `127.0.0.1`); it must resolve to 127.0.0.1, where the
    /// harness looks for the server.
    pub listen_host: Option<&'a str>,
    /// Environment changes after the harness's own (`NO_COLOR=1`, `PATTERND_LOG=info`):
    /// `Some` sets a variable, `None` removes it.
    pub env: Vec<(&'a str, Option<&'a str>)>,
}

/// A running `patternd serve`, killed on drop.
#[derive(Debug)]
pub struct Patternd {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    _logdir: TempDir,
    client: reqwest::Client,
}

impl Patternd {
    /// Starts `patternd serve --redis <redis_url> --policies <dir> <extra_args…>` on a free
    /// port and waits until `/healthz` answers.
    pub async fn start(redis_url: &str, policies: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::start_with(redis_url, policies, extra_args, &StartOptions::default()).await
    }

    /// [`Patternd::start`] with another `--listen` host or environment (see [`StartOptions`]).
    pub async fn start_with(
        redis_url: &str,
        policies: &Path,
        extra_args: &[&str],
        opts: &StartOptions<'_>,
    ) -> Result<Self> {
        let bin = patternd_bin()?;
        let host = opts.listen_host.unwrap_or("127.0.0.1");
        let logdir = TempDir::new("patternd")?;
        let client = reqwest::Client::builder()
            // A proxy from the environment must never see loopback test traffic.
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()?;
        let mut last_err = anyhow!("no attempt made");
        for attempt in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log = logdir.path().join(format!("patternd-{attempt}.log"));
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .arg("--listen")
                .arg(format!("{host}:{port}"))
                .arg("--redis")
                .arg(redis_url)
                .arg("--policies")
                .arg(policies)
                .args(extra_args)
                .env("NO_COLOR", "1")
                .env("PATTERND_LOG", "info");
            for (k, v) in &opts.env {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log)?)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            match wait_patternd(port, &mut child, &log, &client).await {
                Ok(()) => {
                    return Ok(Self {
                        port,
                        child: Some(child),
                        log,
                        _logdir: logdir,
                        client,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = e.context(format!("patternd log:\n{}", read_lossy(&log)));
                }
            }
        }
        Err(last_err)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Any request; the answer whatever its status.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply> {
        send(req).await
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        self.send(with_headers(self.client.get(self.url(path)), headers))
            .await
    }

    /// A PUT of `body` (sent verbatim) with `headers`.
    pub async fn put_with(
        &self,
        path: &str,
        body: impl AsRef<[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let req = self.client.put(self.url(path)).body(body.as_ref().to_vec());
        self.send(with_headers(req, headers)).await
    }

    /// A PATCH of `body` (sent verbatim) with `headers`, the content type among them.
    pub async fn patch_with(
        &self,
        path: &str,
        body: impl AsRef<[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let req = self
            .client
            .patch(self.url(path))
            .body(body.as_ref().to_vec());
        self.send(with_headers(req, headers)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    /// A POST with a body sent verbatim (for malformed JSON).
    pub async fn post_raw(&self, path: &str, body: &str) -> Result<Reply> {
        let req = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.send(self.client.delete(self.url(path))).await
    }

    /// `POST /admin/reload` without a body: re-reads the policies (and plugins).
    pub async fn reload(&self) -> Result<Reply> {
        self.send(self.client.post(self.url("/admin/reload"))).await
    }

    /// `POST /v1/ratelimit/{app}/{rule}` with `{"id": id, "cost": cost}`.
    pub async fn check(&self, app: &str, rule: &str, id: &str, cost: u64) -> Result<Reply> {
        let body = serde_json::json!({ "id": id, "cost": cost });
        self.post_json(&format!("/v1/ratelimit/{app}/{rule}"), &body)
            .await
    }

    /// `DELETE /v1/ratelimit/{app}/{rule}/leases/{lease}`.
    pub async fn release(&self, app: &str, rule: &str, lease: &str) -> Result<Reply> {
        self.delete(&format!("/v1/ratelimit/{app}/{rule}/leases/{lease}"))
            .await
    }

    /// Kills the server with SIGKILL, as a crash or an OOM kill would: no graceful shutdown,
    /// nothing in flight completes. (The log stays readable.)
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server: SIGTERM (graceful), then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Patternd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- patternd :{} log -----\n{}\n----- end of patternd log -----",
                self.port,
                self.log()
            );
        }
    }
}

fn with_headers(
    mut req: reqwest::RequestBuilder,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Waits until our child serves `/healthz` on `port`. The log line proves the listener is
/// ours: a /healthz answer alone could come from another test's server on a reused port.
async fn wait_patternd(
    port: u16,
    child: &mut Child,
    log: &Path,
    client: &reqwest::Client,
) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    // The field as the text and the JSON log formats write it.
    let listening = [
        format!("listen=127.0.0.1:{port}"),
        format!("\"listen\":\"127.0.0.1:{port}\""),
    ];
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("patternd exited early ({status})");
        }
        let log_text = read_lossy(log);
        if log_text.contains("patternd serving")
            && listening.iter().any(|l| log_text.contains(l.as_str()))
        {
            let url = format!("http://127.0.0.1:{port}/healthz");
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("patternd on port {port} did not serve /healthz within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// An HTTP answer: status, headers, raw text, and the body as JSON (`Null` if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    async fn from(resp: reqwest::Response) -> Result<Self> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Self {
            status,
            headers,
            text,
            json,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The body's `allowed`; panics with the whole reply if the field is missing, since a
    /// decision without it is itself a failure worth seeing.
    pub fn allowed(&self) -> bool {
        match self.json.get("allowed").and_then(Value::as_bool) {
            Some(b) => b,
            None => panic!("reply has no `allowed`: {self:?}"),
        }
    }

    pub fn u64_field(&self, name: &str) -> u64 {
        match self.json.get(name).and_then(Value::as_u64) {
            Some(n) => n,
            None => panic!("reply has no numeric `{name}`: {self:?}"),
        }
    }

    pub fn remaining(&self) -> u64 {
        self.u64_field("remaining")
    }

    pub fn degraded(&self) -> bool {
        self.json
            .get("degraded")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| panic!("reply has no `degraded`: {self:?}"))
    }

    pub fn lease(&self) -> Option<&str> {
        self.json.get("lease").and_then(Value::as_str)
    }

    /// Asserts an RFC 9457 problem: the status, the media type, and a body that agrees.
    pub fn assert_problem(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "not a problem+json: {self:?}"
        );
        assert_eq!(
            self.json.get("status").and_then(Value::as_u64),
            Some(u64::from(status)),
            "problem body disagrees with the status: {self:?}"
        );
        assert!(
            self.json.get("detail").and_then(Value::as_str).is_some(),
            "problem without a detail: {self:?}"
        );
        self
    }

    pub fn detail(&self) -> &str {
        self.json
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Asserts that the problem's `diagnostics` hold an error at `file`:`line`:`column` whose
    /// message contains `says` (a refused reload names each problem where it is).
    pub fn assert_diagnostic(&self, file: &str, line: usize, column: usize, says: &str) {
        let diags = self
            .json
            .get("diagnostics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(
            diags.iter().any(|d| d["file"] == file
                && d["line"] == line
                && d["column"] == column
                && d["severity"] == "error"
                && d["message"].as_str().is_some_and(|m| m.contains(says))),
            "no diagnostic at {file}:{line}:{column} saying {says}: {diags:#?}"
        );
    }
}

/// The `Cache-Status` header of a cache answer, "" when there is none.
pub fn cache_status(r: &Reply) -> &str {
    r.header("cache-status").unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// Polls `f` until it returns `Some`, or fails after `timeout`. Used only to wait for an
/// outage to end or a TTL to lapse, never to assert how fast something happens.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            let why = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key in a Redis the test owns, by SCAN (never KEYS).
pub async fn scan_all(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<Vec<u8>>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// [`scan_all`], the names as text.
pub async fn scan_names(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<String>> {
    Ok(scan_all(conn)
        .await?
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect())
}

/// Redis' own clock (TIME), in milliseconds: the clock the scripts decide by.
pub async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> Result<f64> {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(s as f64 * 1000.0 + us as f64 / 1000.0)
}

/// 1-based (line, column) of the first occurrence of `needle` in `text` (where a
/// diagnostic about it must point).
/// A sliding window's state as its script writes it, `struct.pack('<dddd', w, c, p, l)`:
/// window number, count, previous count, newest admission (ms).
pub fn sliding_state(window: f64, count: f64, previous: f64, newest_ms: f64) -> Vec<u8> {
    [window, count, previous, newest_ms]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A sliding window's state read back (see `sliding_state`).
pub fn sliding_fields(value: &[u8]) -> Result<[f64; 4]> {
    anyhow::ensure!(value.len() == 32, "{} bytes: {value:?}", value.len());
    let mut out = [0.0; 4];
    for (i, chunk) in value.chunks_exact(8).enumerate() {
        out[i] = f64::from_le_bytes(chunk.try_into()?);
    }
    Ok(out)
}

pub fn position(text: &str, needle: &str) -> (usize, usize) {
    position_nth(text, needle, 0)
}

/// 1-based (line, column) of the `nth` (0-based) occurrence of `needle` in `text`.
pub fn position_nth(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (at, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the policy"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// The value of one Prometheus sample whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name).then_some((rest, value))
        })
        .find(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// One test's world: its own Redis (a standalone server, or a leased cluster: see
/// [`backend`]), a policy dir, and a patternd serving it.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: patternd stops before its Redis goes away.
    pub patternd: Patternd,
    pub policies: TempDir,
    pub redis: Backend,
}

impl World {
    /// A world on a fresh standalone redis-server.
    pub async fn start(files: &[(&str, &str)], extra_args: &[&str]) -> Result<Self> {
        Self::on(Backend::standalone()?, files, extra_args).await
    }

    /// A world on `redis` (what an [`on_every_backend!`] test is given).
    pub async fn on(redis: Backend, files: &[(&str, &str)], extra_args: &[&str]) -> Result<Self> {
        let policies = policy_dir(files)?;
        let patternd = Patternd::start(&redis.url(), policies.path(), extra_args).await?;
        Ok(Self {
            patternd,
            policies,
            redis,
        })
    }

    /// A world serving one cache policy whose `ORIGIN` placeholder is `origin`'s URL template.
    pub async fn with_origin(policy: &str, origin: &Origin, extra_args: &[&str]) -> Result<Self> {
        Self::with_origin_on(Backend::standalone()?, policy, origin, extra_args).await
    }

    /// [`World::with_origin`] on `redis`.
    pub async fn with_origin_on(
        redis: Backend,
        policy: &str,
        origin: &Origin,
        extra_args: &[&str],
    ) -> Result<Self> {
        let text = policy.replace("ORIGIN", &origin.template());
        Self::on(redis, &[("cache.yaml", &text)], extra_args).await
    }
}

/// A [`World`] whose patternd also loads plugins from its own dir (`--plugins`), which the
/// test may rewrite to exercise reloads. Everything else is the world's (`w.patternd`,
/// `w.redis`, and a `&PluginWorld` is a `&World`).
#[derive(Debug)]
pub struct PluginWorld {
    // Field order is drop order: the plugins dir goes once patternd has stopped.
    pub world: World,
    pub plugins: TempDir,
}

impl PluginWorld {
    pub async fn start(files: &[(&str, &str)], plugins: TempDir) -> Result<Self> {
        Self::on(Backend::standalone()?, files, plugins).await
    }

    /// [`PluginWorld::start`] on `redis`.
    pub async fn on(redis: Backend, files: &[(&str, &str)], plugins: TempDir) -> Result<Self> {
        let dir = plugins.path().to_string_lossy().to_string();
        let world = World::on(redis, files, &["--plugins", &dir]).await?;
        Ok(Self { world, plugins })
    }

    /// The repository's examples: [`EXAMPLE_POLICY`] served with [`example_plugins`].
    pub async fn examples() -> Result<Self> {
        Self::examples_on(Backend::standalone()?).await
    }

    /// [`PluginWorld::examples`] on `redis`.
    pub async fn examples_on(redis: Backend) -> Result<Self> {
        let policy = example_file(EXAMPLE_POLICY)?;
        Self::on(redis, &[("plugins.yaml", &policy)], example_plugins()?).await
    }
}

impl std::ops::Deref for PluginWorld {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

/// Runs `n` calls of `f` (given the call's index) at once, each on its own task, and returns
/// their results in index order: the concurrent burst the atomicity tests count.
pub async fn burst<T, F, Fut>(n: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Sends any request (built on [`Patternd::client`]) and reads the answer, whatever its
/// status: [`Patternd::send`] for a [`burst`]'s tasks, which cannot borrow the [`Patternd`].
pub async fn send(req: reqwest::RequestBuilder) -> Result<Reply> {
    Reply::from(req.send().await?).await
}

/// GETs `url` and returns (status, `Cache-Status` header or "", body): what a cache burst's
/// callers each record.
pub async fn get_cache_status(
    client: reqwest::Client,
    url: String,
) -> Result<(u16, String, String)> {
    let r = client.get(url).send().await?;
    let status = r.status().as_u16();
    let cs = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, cs, r.text().await?))
}

/// How many of `items` satisfy `pred` (the allowed, or the denied, of a [`burst`]).
pub fn count<T>(items: &[T], pred: impl Fn(&T) -> bool) -> usize {
    items.iter().filter(|x| pred(x)).count()
}

// ---------------------------------------------------------------------------------------------
// Stalls (a frozen Redis, for tests/cache_faults.rs)
// ---------------------------------------------------------------------------------------------

/// A `redis-server` frozen by [`RedisServer::pause`]; dropping it resumes the server.
#[derive(Debug)]
pub struct Paused {
    pid: u32,
}

impl Paused {
    /// Resumes the server now (SIGCONT); commands queued meanwhile are then answered.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.pid, "CONT");
    }
}

impl RedisServer {
    /// Freezes the server (SIGSTOP) until the guard is dropped: connections stay open and
    /// commands queue unanswered, as in a stuck host, a swap storm or a long fork, which a
    /// killed server (connections refused at once) does not show.
    pub fn pause(&self) -> Result<Paused> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("redis-server is not running")?;
        signal(pid, "STOP")?;
        Ok(Paused { pid })
    }
}

/// `kill -<sig> <pid>` on a process this test started (the crate forbids unsafe code).
fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -{sig} {pid} failed: {status}");
    Ok(())
}
