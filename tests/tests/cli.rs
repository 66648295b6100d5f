//! The command line as a Unix tool: output into a closed pipe (`| head`), and `--listen`
//! taking a host name as well as an address.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use patternd_e2e::{Patternd, RedisServer, StartOptions, patternd_bin, policy_dir};

/// Enough rules that `patternd compile` prints far more than a pipe buffers (64 KiB on
/// Linux), so it must still be writing when the reader goes away.
fn many_rules() -> String {
    let mut p = String::from("app: many\nrules:\n");
    for i in 0..200 {
        writeln!(
            p,
            "  r{i}: {{ rate_limit: {{ limits: [{{ algorithm: sliding_log, limit: 5, window: 1m }}, {{ algorithm: gcra, limit: 9, window: 1h }}] }} }}"
        )
        .unwrap_or_default();
    }
    p
}

#[test]
fn compile_into_a_closed_pipe_ends_quietly() -> Result<()> {
    let policies = policy_dir(&[("many.yaml", &many_rules())])?;
    let mut child = Command::new(patternd_bin()?)
        .arg("compile")
        .arg(policies.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // `patternd compile … | head -1`: one line read, then the pipe's read end closes.
    let mut first = String::new();
    {
        let stdout = child.stdout.take().context("no stdout")?;
        BufReader::new(stdout).read_line(&mut first)?;
    }
    assert!(first.starts_with("==> many/r0"), "{first:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .context("no stderr")?
        .read_to_string(&mut stderr)?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The whole output, for the record: it is larger than a pipe holds.
    let out = Command::new(patternd_bin()?)
        .arg("compile")
        .arg(policies.path())
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.len() > 1 << 20, "{} bytes", out.stdout.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_takes_a_host_name() -> Result<()> {
    let redis = RedisServer::start()?;
    let policies = policy_dir(&[(
        "a.yaml",
        "app: a\nrules:\n  r: { rate_limit: { algorithm: gcra, limit: 5, window: 1m } }\n",
    )])?;
    // `localhost` resolves to 127.0.0.1 on the test machines (/etc/hosts); the harness
    // waits for the server there.
    let opts = StartOptions {
        listen_host: Some("localhost"),
        ..StartOptions::default()
    };
    let p = Patternd::start_with(&redis.url(), policies.path(), &[], &opts).await?;
    let r = p.check("a", "r", "u1", 1).await?;
    assert_eq!(r.status, 200, "{r:?}");

    // Without a port, the refusal says what is expected.
    let out = Command::new(patternd_bin()?)
        .args([
            "serve",
            "--listen",
            "8080",
            "--redis",
            "redis://127.0.0.1:1/",
        ])
        .arg("--policies")
        .arg(policies.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HOST:PORT"), "{stderr}");
    Ok(())
}
