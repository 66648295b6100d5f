//! A managed `redis-server` child for trying patternd out without a Redis deployment.
//!
//! `patternd serve` without `--redis` starts `redis-server` from PATH on a free loopback port,
//! with persistence off, supervises it (restarting it on the same port if it dies), and stops
//! it when patternd exits (the child is killed on drop, so even an error path cleans up).

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("could not find a free loopback port: {0}")]
    Port(#[source] std::io::Error),
    #[error(
        "could not start `redis-server` (is it installed and on PATH? or pass --redis URL): {0}"
    )]
    Spawn(#[source] std::io::Error),
    #[error("redis-server on port {port} did not accept connections within {waited:?}")]
    NotReady { port: u16, waited: Duration },
}

/// A running managed Redis. Dropping it stops the supervisor and the child.
pub struct ManagedRedis {
    port: u16,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ManagedRedis {
    pub async fn start() -> Result<Self, ManagedError> {
        let port = free_port().map_err(ManagedError::Port)?;
        let child = spawn(port).map_err(ManagedError::Spawn)?;
        wait_ready(port, Duration::from_secs(10)).await?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(port, child, stop_rx));
        Ok(Self {
            port,
            stop,
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the child and waits for it to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ManagedRedis {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds port 0 to let the OS pick a free port. Another process could take it before
/// redis-server binds it; `wait_ready` then fails loudly rather than talking to a stranger.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn wait_ready(port: u16, waited: Duration) -> Result<(), ManagedError> {
    let deadline = tokio::time::Instant::now() + waited;
    let url = format!("redis://127.0.0.1:{port}/");
    while tokio::time::Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(url.as_str())
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ManagedError::NotReady { port, waited })
}

async fn supervise(port: u16, mut child: Child, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = child.kill().await;
                tracing::info!(port, "managed redis-server stopped");
                return;
            }
            status = child.wait() => {
                tracing::error!(port, ?status, "managed redis-server exited; restarting it");
                tokio::time::sleep(Duration::from_millis(200)).await;
                match spawn(port) {
                    Ok(c) => child = c,
                    Err(e) => {
                        tracing::error!(port, error = %e, "could not restart managed redis-server");
                        return;
                    }
                }
            }
        }
    }
}
