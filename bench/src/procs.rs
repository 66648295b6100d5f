//! The processes under test: a private redis-server and the release patternd, each on a free
//! loopback port, stopped by Drop guards on every exit path. Also the /proc CPU readings.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;

/// The benchmark policy. Limits are large so nearly every request is allowed: the benchmark
/// measures the cost of a decision, and a denial is no cheaper for the script (it reads the
/// same key and skips one write), so mostly-allowed traffic is the honest worst case.
pub const POLICY: &str = "\
# Written by patternd-bench into a temporary directory.
app: bench
rules:
  sw:
    rate_limit: { algorithm: sliding_window, limit: 1000000, window: 1m }
  gcra:
    rate_limit: { algorithm: gcra, limit: 1000000, window: 1m, burst: 1000 }
";

/// A scratch directory removed on drop (we avoid a tempfile dependency for one directory).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("patternd-bench-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped when dropped, so no error path leaves a server behind.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = fs::File::create(&log)
            .with_context(|| format!("could not create {}", log.display()))?;
        let err = out
            .try_clone()
            .context("could not duplicate the log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("could not start {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name, child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the tail of the child's log if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                self.log_tail()
            ),
            Err(e) => bail!("could not poll {}: {e}", self.name),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL is fine for both: Redis persists nothing here and patternd holds no state.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port: bind port 0, read what the kernel chose, release it. Another process
/// could take it in between, but the window is microseconds and a clash fails loudly.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("could not bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

pub struct Redis {
    pub guard: ChildGuard,
    pub port: u16,
}

impl Redis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

pub async fn start_redis(dir: &Path) -> anyhow::Result<Redis> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .args(["--logfile", ""]);
    let mut guard = ChildGuard::spawn("redis-server", &mut cmd, dir.join("redis.log"))
        .context("is redis-server installed (apt-get install redis-server)?")?;
    wait_ping(&mut guard, port).await?;
    Ok(Redis { guard, port })
}

/// Waits until the redis-server of `guard` answers PING on `port` (10 s at most).
pub async fn wait_ping(guard: &mut ChildGuard, port: u16) -> anyhow::Result<()> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        guard.check_alive()?;
        if let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server did not answer PING on port {port} within 10 s:\n{}",
                guard.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Patternd {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

/// Starts a patternd binary on `dir/policies`, which holds `policy` (the whole file; usually
/// [`POLICY`] and more rules), with more `serve` flags. With `plugins` (a directory of
/// plugins), it also serves them and the plugin scenario's policy (`plugins::POLICY`).
pub async fn start_patternd_with(
    bin: &Path,
    dir: &Path,
    redis_url: &str,
    plugins: Option<&Path>,
    policy: &str,
    flags: &[String],
) -> anyhow::Result<Patternd> {
    let policies = dir.join("policies");
    fs::create_dir_all(&policies)?;
    fs::write(policies.join("bench.yaml"), policy)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--redis")
        .arg(redis_url)
        .arg("--policies")
        .arg(&policies)
        .args(flags);
    if let Some(plugins) = plugins {
        fs::write(policies.join("plugins.yaml"), crate::plugins::POLICY)?;
        cmd.arg("--plugins").arg(plugins);
    }
    cmd
        // Keep the server's own defaults (pool size, timeouts): we measure what users get.
        // Only quiet the log, so the measured phase is not writing to a file.
        .env("PATTERND_LOG", "warn")
        .env_remove("PATTERND_ADMIN_TOKEN")
        .env_remove("PATTERND_REDIS_POOL")
        // Batching is set by flags only (--before-args, --after-args), never by the caller's
        // environment, so both sides of a comparison differ only in what the report prints.
        .env_remove("PATTERND_REDIS_BATCH");
    if plugins.is_none() {
        // Plugins only when the plugin scenario asks for them, not from the caller's environment.
        cmd.env_remove("PATTERND_PLUGINS");
    }
    let mut guard = ChildGuard::spawn("patternd", &mut cmd, dir.join("patternd.log"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        guard.check_alive()?;
        match http_get(addr, "/readyz").await {
            Ok((StatusCode::OK, _)) => return Ok(Patternd { guard, addr }),
            Ok(_) | Err(_) if Instant::now() < deadline => {}
            Ok((status, body)) => bail!(
                "patternd /readyz still answers {status} after 30 s: {}",
                String::from_utf8_lossy(&body)
            ),
            Err(e) => bail!(
                "patternd did not answer /readyz within 30 s: {e:#}\n{}",
                guard.log_tail()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One GET on a fresh connection (setup and admin calls only, never the measured path).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    Ok((status, body))
}

/// A keep-alive HTTP/1.1 client for setup calls (filling a cache, creating sessions): many
/// calls, so one connection rather than one per call.
pub struct HttpClient {
    addr: SocketAddr,
    sender:
        tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>>,
    conn: tokio::task::JoinHandle<()>,
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            addr,
            sender: tokio::sync::Mutex::new(sender),
            conn,
        })
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string());
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(http_body_util::Full::new(Bytes::from(
            body.unwrap_or_default(),
        )))?;
        let mut sender = self.sender.lock().await;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl Drop for HttpClient {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// The patternd binary to benchmark, and a warning when it may not match the sources.
pub struct Binary {
    pub path: PathBuf,
    pub stale: Option<String>,
}

/// Finds the release `patternd` next to this executable (both live in target/release), and
/// builds it with cargo when it is missing or older than the engine's sources, so the figures
/// do not silently come from an old binary. When a rebuild of an existing binary fails (the
/// engine is mid-edit), the old binary is used and the report says so.
pub fn locate_patternd() -> anyhow::Result<Binary> {
    let exe = std::env::current_exe().context("could not find this executable's path")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    let path = dir.join(format!("patternd{}", std::env::consts::EXE_SUFFIX));
    // The workspace this program was built from; absent if the binary was moved elsewhere.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = fs::metadata(&path).and_then(|m| m.modified()).ok();
    let newest_source =
        newest_mtime(&workspace.join("engine")).max(newest_mtime(&workspace.join("Cargo.lock")));
    let reason = match (built, newest_source) {
        (None, _) => "is missing",
        (Some(b), Some(s)) if s > b => "is older than the engine's sources",
        _ => return Ok(Binary { path, stale: None }),
    };
    let advice = "run `cargo build --release -p patternd`";
    if !workspace.join("Cargo.toml").exists() {
        bail!("{} {reason}; {advice} first", path.display());
    }
    eprintln!(
        "{} {reason}: running `cargo build --release -p patternd`",
        path.display()
    );
    // Under `cargo run` CARGO names the cargo that runs us; cargo releases its build lock
    // before starting the program, so this nested build does not deadlock.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "patternd"])
        .current_dir(&workspace)
        .status()
        .with_context(|| format!("could not run cargo; {advice} yourself"))?;
    if status.success() && path.exists() {
        return Ok(Binary { path, stale: None });
    }
    if built.is_none() || !path.exists() {
        bail!("`cargo build --release -p patternd` failed ({status}); fix the build and run again");
    }
    let warning = format!(
        "`cargo build --release -p patternd` failed, so this run measures the previous build of {}, \
         which is older than the engine's sources",
        path.display()
    );
    eprintln!("warning: {warning}");
    Ok(Binary {
        path,
        stale: Some(warning),
    })
}

/// The newest modification time of a file or of any file under a directory.
pub fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Clock ticks per second for /proc/<pid>/stat. `getconf CLK_TCK` asks sysconf without
/// needing libc (this crate forbids unsafe); Linux has used 100 for decades, so that is the
/// fallback.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// utime + stime of a whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    stat_fields(pid, 14, 15)
}

/// cutime + cstime of this process: the CPU of its children once they have been waited for
/// (how we learn what redis-benchmark itself used).
pub fn children_cpu_ticks() -> anyhow::Result<u64> {
    stat_fields("self", 16, 17)
}

/// The sum of two numeric fields (1-based, as in proc(5)) of /proc/<pid>/stat.
fn stat_fields(pid: &str, a: usize, b: usize) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("could not read /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last
    // ')'. What follows starts at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {n}"))
    };
    Ok(field(a)? + field(b)?)
}

/// Busy time of the whole machine (all cores), in clock ticks: what every process used,
/// ours and others', so the report can say whether something else competed for the cores.
pub fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    // cpu user nice system idle iowait irq softirq steal …: everything but idle and iowait.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("unexpected /proc/stat: {line}");
    }
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}
