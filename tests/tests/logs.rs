//! The log, end to end: the JSON format (every line an object a log shipper can parse), no
//! colour codes in a log written to a file, a bad `PATTERND_LOG` refused, the log settings in
//! `--help`, policy warnings as log events, and no claim about Redis that is not true.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use patternd_e2e::{
    Patternd, RedisServer, StartOptions, World, eventually, patternd_bin, policy_dir,
};
use serde_json::Value;

const POLICY: &str = "app: logs
rules:
  api: { rate_limit: { algorithm: fixed_window, limit: 5, window: 1m } }
  trial: { rate_limit: { algorithm: fixed_window, limit: 5, window: 1m, shadow: true } }
";

/// Every line of a JSON log, parsed; fails on the first line that is not a JSON object with
/// the fields a log shipper keys on.
fn json_lines(log: &str) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    for (n, line) in log.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("log line {} is not JSON: {line:?}", n + 1))?;
        anyhow::ensure!(
            v.get("level").and_then(Value::as_str).is_some()
                && v.get("target").and_then(Value::as_str).is_some()
                && v.get("timestamp").and_then(Value::as_str).is_some()
                && v.get("fields")
                    .and_then(|f| f.get("message"))
                    .and_then(Value::as_str)
                    .is_some(),
            "log line {} lacks timestamp, level, target or fields.message: {line}",
            n + 1
        );
        events.push(v);
    }
    Ok(events)
}

fn message(e: &Value) -> &str {
    e["fields"]["message"].as_str().unwrap_or("")
}

fn level(e: &Value) -> &str {
    e["level"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_are_objects_and_policy_warnings_are_events() -> Result<()> {
    let mut w = World::start(&[("logs.yaml", POLICY)], &["--log-format", "json"]).await?;
    let r = w.patternd.check("logs", "api", "u1", 1).await?;
    assert_eq!(r.status, 200, "{r:?}");
    // A reload logs the warnings of the policies it loads, like the start.
    let r = w.patternd.post_json("/admin/reload", &Value::Null).await?;
    assert_eq!(r.status, 200, "{r:?}");
    w.patternd.stop();
    let log = w.patternd.log();
    let events = json_lines(&log)?;

    let serving = events
        .iter()
        .find(|e| message(e) == "patternd serving")
        .context("no `patternd serving` event")?;
    assert_eq!(
        serving["fields"]["listen"].as_str(),
        Some(format!("127.0.0.1:{}", w.patternd.port()).as_str()),
        "{serving}"
    );
    // The shadow rule's warning: a WARN event with the place in the file as fields, once at
    // the start and once at the reload (not text printed around the log).
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| level(e) == "WARN" && message(e).contains("shadow mode"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    for warn in warnings {
        let f = &warn["fields"];
        assert!(
            f["file"].as_str().is_some_and(|p| p.ends_with("logs.yaml")),
            "{warn}"
        );
        assert_eq!(
            (f["line"].as_u64(), f["column"].as_u64()),
            (Some(4), Some(24)),
            "{warn}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_written_to_a_file_has_no_colour_codes() -> Result<()> {
    let redis = RedisServer::start()?;
    let policies = policy_dir(&[("logs.yaml", POLICY)])?;
    // NO_COLOR unset: only the destination (a file, not a terminal) should turn colours off.
    let opts = StartOptions {
        env: vec![("NO_COLOR", None)],
        ..StartOptions::default()
    };
    let mut p = Patternd::start_with(&redis.url(), policies.path(), &[], &opts).await?;
    let r = p.check("logs", "api", "u1", 1).await?;
    assert_eq!(r.status, 200, "{r:?}");
    p.stop();
    let log = p.log();
    assert!(log.contains("patternd serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log:?}"
    );
    Ok(())
}

/// Runs `patternd <args>` with `PATTERND_LOG` set to `filter`, to completion.
fn run_with_log_filter(filter: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(patternd_bin()?)
        .args(args)
        .env("PATTERND_LOG", filter)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .context("running patternd")
}

#[test]
fn an_invalid_log_filter_is_refused_with_a_clear_message() -> Result<()> {
    let policies = policy_dir(&[("logs.yaml", POLICY)])?;
    let dir = policies.path().to_str().context("path")?;
    // A valid filter changes nothing.
    let ok = run_with_log_filter("warn,patternd=debug", &["check", dir])?;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    for args in [
        vec!["check", dir],
        // `serve` refuses before starting anything (no Redis on port 1 is ever asked).
        vec![
            "serve",
            "--redis",
            "redis://127.0.0.1:1/",
            "--policies",
            dir,
        ],
    ] {
        let out = run_with_log_filter("patternd=loud", &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("PATTERND_LOG") && stderr.contains("patternd=loud"),
            "{args:?}: the message names the variable and the value: {stderr}"
        );
    }
    // The flag form too.
    let out = Command::new(patternd_bin()?)
        .args(["check", dir, "--log", "info,=x=y"])
        .env_remove("PATTERND_LOG")
        .output()?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    Ok(())
}

#[test]
fn help_documents_the_log_settings() -> Result<()> {
    for args in [vec!["--help"], vec!["serve", "--help"]] {
        let out = Command::new(patternd_bin()?)
            .args(&args)
            .env_remove("PATTERND_LOG")
            .env_remove("PATTERND_LOG_FORMAT")
            .output()?;
        assert!(out.status.success(), "{out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for want in [
            "PATTERND_LOG",
            "PATTERND_LOG_FORMAT",
            "--log-format",
            "json",
        ] {
            assert!(help.contains(want), "{args:?} lacks {want}:\n{help}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_is_not_called_ready_before_it_answers() -> Result<()> {
    let mut redis = RedisServer::start()?;
    redis.stop();
    let policies = policy_dir(&[("logs.yaml", POLICY)])?;
    let opts = StartOptions {
        env: vec![("PATTERND_LOG_FORMAT", Some("json"))],
        ..StartOptions::default()
    };
    let p = Patternd::start_with(&redis.url(), policies.path(), &[], &opts).await?;
    let events = json_lines(&p.log())?;
    // Nothing said so far may claim Redis is ready or answering: it never was.
    for e in &events {
        let m = message(e).to_lowercase();
        assert!(
            !(m.contains("redis") && (m.contains("ready") || m.contains("answers"))),
            "a claim about Redis while it is down: {e}"
        );
        assert!(!m.contains("scripts loaded"), "{e}");
    }
    let down = events
        .iter()
        .find(|e| level(e) == "WARN" && message(e).contains("Redis does not answer"))
        .with_context(|| format!("no warning that Redis does not answer:\n{}", p.log()))?;
    assert!(down["fields"]["error"].as_str().is_some(), "{down}");

    // When Redis comes up, the log says so once it has answered (the scripts are loaded).
    redis.restart_same_port()?;
    eventually(
        Duration::from_secs(30),
        "the log to say Redis answers",
        || {
            let log = p.log();
            async move {
                let events = json_lines(&log)?;
                Ok(events
                    .iter()
                    .any(|e| level(e) == "INFO" && message(e).contains("Redis answers"))
                    .then_some(()))
            }
        },
    )
    .await?;
    let r = p.check("logs", "api", "u1", 1).await?;
    assert_eq!((r.status, r.degraded()), (200, false), "{r:?}");
    Ok(())
}
