//! A real headless browser for the dashboard test: Debian's `chromium`, driven through
//! `chromedriver` (Debian's `chromium-driver`) with the W3C WebDriver protocol.
//!
//! WebDriver is JSON over HTTP, and the test needs eight of its commands (new session,
//! navigate, find, type, click, run a script, screenshot, end), so this is a small client
//! over the harness's reqwest rather than a WebDriver crate: no new dependency, and every
//! request it makes is the standard's (W3C WebDriver, "Endpoints"). The browser is the real
//! thing either way.
//!
//! A missing browser is an error naming the packages, never a skipped test: CI installs
//! them (`.ci/run`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{TempDir, eventually, free_port, read_lossy};

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What to install when a browser part is missing.
pub const PACKAGES: &str = "Debian's `chromium` and `chromium-driver` packages \
    (apt-get install chromium chromium-driver; .ci/run installs them)";

/// `name` on PATH, or in /usr/bin and /usr/lib/chromium (where Debian puts them).
fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/lib/chromium"].map(PathBuf::from))
        .collect::<Vec<_>>();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// A `chromedriver` this test started, killed on drop.
#[derive(Debug)]
pub struct Driver {
    port: u16,
    child: Option<Child>,
    chromium: PathBuf,
    dir: TempDir,
    log: PathBuf,
    http: reqwest::Client,
    /// Sessions not ended yet: closed on drop, so a failing test leaves no browser behind.
    open: Mutex<Vec<String>>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready; fails,
    /// naming the packages, when chromium or chromedriver is not installed.
    pub async fn start() -> Result<Self> {
        let chromedriver = find_binary(&["chromedriver"]).ok_or_else(|| {
            anyhow!("chromedriver is not installed: the dashboard test needs {PACKAGES}")
        })?;
        let chromium = find_binary(&["chromium", "chromium-browser"]).ok_or_else(|| {
            anyhow!("chromium is not installed: the dashboard test needs {PACKAGES}")
        })?;
        let dir = TempDir::new("chromium")?;
        let log = dir.path().join("chromedriver.log");
        let port = free_port()?;
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("chromedriver.stderr"))?)
            .spawn()
            .with_context(|| format!("spawning {}", chromedriver.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            // Starting a browser and loading a page take seconds on a busy machine.
            .timeout(Duration::from_secs(60))
            .build()?;
        let driver = Self {
            port,
            child: Some(child),
            chromium,
            dir,
            log,
            http,
            open: Mutex::new(Vec::new()),
        };
        eventually(
            Duration::from_secs(30),
            "chromedriver to be ready",
            || async {
                let r = driver.http.get(driver.url("/status")).send().await?;
                let v: Value = r.json().await?;
                Ok(v["value"]["ready"].as_bool().unwrap_or(false).then_some(()))
            },
        )
        .await
        .with_context(|| format!("chromedriver log:\n{}", read_lossy(&driver.log)))?;
        Ok(driver)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A headless browser window of `width` × `height` CSS pixels.
    pub async fn session(&self, width: u32, height: u32) -> Result<Session<'_>> {
        let profile = self.dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new",
                    // Root in CI: Chromium's sandbox needs user namespaces it may not have.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                    // Nothing but the page under test: no updates, sync, or other traffic.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-extensions",
                    "--disable-sync",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--no-proxy-server",
                    "--hide-scrollbars",
                ],
            },
        }}});
        let v = self
            .send(reqwest::Method::POST, "/session", Some(caps))
            .await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?
            .to_string();
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.clone());
        Ok(Session { driver: self, id })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path} to chromedriver"))?;
        let status = resp.status();
        let v: Value = resp.json().await.context("chromedriver answered no JSON")?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status} {}: {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    /// chromedriver's own log, for a failing test to print.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- chromedriver log (tail) ---");
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for id in open {
            // Blocking, as a drop must be: chromedriver closes the browser it started.
            let _ = delete_blocking(self.port, &format!("/session/{id}"));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One browser window; ended (the browser closed) by [`Session::end`].
#[derive(Debug)]
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

/// An element of the page, by its WebDriver reference.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Session<'_> {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.driver
            .send(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        v[ELEMENT]
            .as_str()
            .map(|id| Element(id.to_string()))
            .ok_or_else(|| anyhow!("no element reference in {v}"))
    }

    pub async fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        let path = format!("/element/{}/value", e.0);
        self.cmd(reqwest::Method::POST, &path, Some(json!({ "text": text })))
            .await
            .map(drop)
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        let path = format!("/element/{}/click", e.0);
        self.cmd(reqwest::Method::POST, &path, Some(json!({})))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body: `return …;`) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| anyhow!("no screenshot data"))?)
            .context("screenshot is not base64")?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Closes the window (the browser ends with its last one).
    pub async fn end(self) -> Result<()> {
        self.cmd(reqwest::Method::DELETE, "", None).await?;
        self.driver
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| *id != self.id);
        Ok(())
    }
}

/// `DELETE path` to chromedriver on a plain socket, waiting for its answer (bounded).
fn delete_blocking(port: u16, path: &str) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map(drop)
}
