//! Policy files through the real binary: `patternd check` on broken files, and every example
//! policy in the repository both checked and served.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use patternd_e2e::{Patternd, RedisServer, policy_dir, position, position_nth, run_cli};
use serde_json::Value;

const A: &str = "app: broken
rules:
  one:
    rate_limit: { algorithm: fixed_window, limit: 5, window: 1m, colour: red }
  two:
    rate_limit: { algorithm: fixed_window, limit: 5, window: 5 parsecs }
  three:
    rate_limit: { algorithm: sliding_log, limit: 0, window: 1m }
  four:
    rate_limit: { algorithm: gcra, limit: 1, window: 1s }
  four:
    rate_limit: { algorithm: gcra, limit: 2, window: 1s }
";

const B: &str = "# the same namespace again, in another file
app: broken
rules:
  five:
    rate_limit: { algorithm: token_bucket, limit: 3, window: 1h }
";

#[test]
fn check_reports_every_error_with_file_line_column() -> Result<()> {
    let dir = policy_dir(&[("a.yaml", A), ("b.yaml", B)])?;
    let out = run_cli(&["check", &dir.path().to_string_lossy()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check passed broken policies:\n{stderr}"
    );

    let a = dir.path().join("a.yaml").to_string_lossy().to_string();
    let b = dir.path().join("b.yaml").to_string_lossy().to_string();
    // (file, place, words the message must contain)
    let expected: Vec<(&str, (usize, usize), &str)> = vec![
        (&a, position(A, "5 parsecs"), "parsecs"),
        (&a, position(A, "0, window"), "at least 1"),
        (&a, position_nth(A, "four:", 1), "duplicate key `four`"),
        (&b, position(B, "broken"), "duplicate app `broken`"),
    ];
    for (file, (line, col), words) in &expected {
        let prefix = format!("{file}:{line}:{col}: error:");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(words)),
            "missing `{prefix} …{words}…` in:\n{stderr}"
        );
    }
    // The unknown field: the place is the rule's block (serde reports the mapping, not the
    // key), so only the line is pinned, which a one-line block makes exact.
    let (line, _) = position(A, "colour");
    let prefix = format!("{a}:{line}:");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("unknown field `colour`")),
        "missing the unknown field at {prefix} in:\n{stderr}"
    );
    let error_lines = stderr.lines().filter(|l| l.contains(": error: ")).count();
    assert_eq!(error_lines, 5, "exactly the five errors:\n{stderr}");
    assert!(stderr.contains("5 error(s)"), "{stderr}");
    Ok(())
}

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("policies")
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

#[test]
fn every_repo_policy_passes_check() -> Result<()> {
    let files = yaml_files(&repo_policies())?;
    assert!(!files.is_empty(), "no policies found");
    for f in &files {
        let out = run_cli(&["check", &f.to_string_lossy()])?;
        assert!(
            out.status.success(),
            "{} fails check:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And all of them together (app names must be unique across files).
    let out = run_cli(&["check", &repo_policies().to_string_lossy()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli(&["compile", &repo_policies().to_string_lossy()])?;
    assert!(out.status.success(), "compile failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_repo_policy_serves() -> Result<()> {
    let dir = repo_policies();
    let redis = RedisServer::start()?;
    let p = Patternd::start(&redis.url(), &dir, &[]).await?;
    let r = p.get("/readyz").await?;
    assert_eq!(r.status, 200, "{r:?}");

    // Every app of every file is loaded…
    let listing = p.get("/admin/policies").await?.json;
    let apps: Vec<&Value> = listing["apps"].as_array().into_iter().flatten().collect();
    for f in yaml_files(&dir)? {
        let text = std::fs::read_to_string(&f)?;
        let app = text
            .lines()
            .find_map(|l| l.strip_prefix("app:"))
            .map(|a| a.split('#').next().unwrap_or("").trim().to_string())
            .with_context(|| format!("no app in {}", f.display()))?;
        assert!(
            apps.iter().any(|a| a["app"] == app.as_str()),
            "{} (app {app}) is not served: {listing:#}",
            f.display()
        );
    }
    // …and every rate-limit rule answers a real decision.
    let mut decided = 0;
    for a in &apps {
        let app = a["app"].as_str().unwrap_or_default();
        for rule in a["rules"].as_array().into_iter().flatten() {
            if rule["kind"] != "ratelimit" {
                continue;
            }
            let name = rule["rule"].as_str().unwrap_or_default();
            let r = p.check(app, name, "smoke-test", 1).await?;
            assert_eq!(r.status, 200, "{app}/{name}: {r:?}");
            assert!(!r.degraded(), "{app}/{name}: {r:?}");
            decided += 1;
        }
    }
    assert!(decided > 0, "no rate-limit rule found: {listing:#}");
    Ok(())
}
