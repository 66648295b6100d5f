//! Production Redis connections (issue 12, standalone): `rediss://` with a CA file and a client
//! certificate, ACL users and `requirepass` in every URL form, and the startup errors when the
//! TLS settings or the credentials are wrong. Every test runs a real `redis-server` with a TLS
//! port and certificates from a throwaway CA (see `patternd_e2e::tls`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use patternd_e2e::origin::Origin;
use patternd_e2e::tls::{self, CA, CLIENT_CERT, CLIENT_KEY, TlsRedis};
use patternd_e2e::{
    Patternd, RedisServer, StartOptions, TempDir, cache_status, eventually, patternd_bin,
    policy_dir,
};

const POLICY: &str = "app: tlsapp
rules:
  api:
    rate_limit: { algorithm: fixed_window, limit: 2, window: 1h }
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
      near_cache: { max_entries: 100, max_age: 1m }
";

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "s3cret-Pa55word";

fn policies(origin: &Origin) -> Result<TempDir> {
    policy_dir(&[("tlsapp.yaml", &POLICY.replace("ORIGIN", &origin.template()))])
}

/// A decision that counts (allowed twice, then denied), a cache fill, a hit, and a near hit
/// (which needs the tracking connection to be subscribed, over the same settings).
async fn serves(p: &Patternd, origin: &Origin) -> Result<()> {
    let id = format!("user-{}", p.port());
    for allowed in [true, true, false] {
        let r = p.check("tlsapp", "api", &id, 1).await?;
        ensure!(r.allowed() == allowed, "decision {allowed}: {r:?}");
    }
    origin.set("1", "text/plain", b"v1", &[]);
    let path = "/v1/cache/tlsapp/product/1";
    let first = p.get(path).await?;
    ensure!(first.status == 200 && first.text == "v1", "{first:?}");
    let hit = p.get(path).await?;
    ensure!(cache_status(&hit).contains("hit"), "not a hit: {hit:?}");
    eventually(WAIT, "a near cache hit", || async {
        let r = p.get(path).await?;
        ensure!(
            cache_status(&r).contains("detail=near"),
            "{}",
            cache_status(&r)
        );
        Ok(Some(()))
    })
    .await?;
    let ready = p.get("/readyz").await?;
    ensure!(ready.status == 200, "{ready:?}");
    Ok(())
}

/// `patternd serve` that must refuse to start: its exit status is a failure and its log
/// (stderr) is returned.
fn refused(url: &str, policies: &Path, extra: &[&str]) -> Result<String> {
    let port = patternd_e2e::free_port()?;
    let mut child = Command::new(patternd_bin()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            url,
        ])
        .arg("--policies")
        .arg(policies)
        .args(extra)
        .env("NO_COLOR", "1")
        .env("PATTERND_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "patternd started (or hung) instead of refusing; its log:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output()?;
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!status.success(), "patternd exited with success: {log}");
    ensure!(
        !log.contains("patternd serving"),
        "it served before exiting: {log}"
    );
    Ok(log)
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_decisions_and_cache_hits_over_tls() -> Result<()> {
    let redis = TlsRedis::start(false)?;
    let origin = Origin::start().await?;
    let dir = policies(&origin)?;
    // The CA file from the environment, as a deployment would set it.
    let ca = redis.file(CA);
    let opts = StartOptions {
        env: vec![("PATTERND_REDIS_CA_FILE", Some(ca.as_str()))],
        ..StartOptions::default()
    };
    let p = Patternd::start_with(&redis.tls_url(""), dir.path(), &[], &opts).await?;
    serves(&p, &origin).await?;
    // What patternd wrote went over TLS into this very server.
    let keys = patternd_e2e::scan_names(&mut redis.conn().await?).await?;
    ensure!(keys.iter().any(|k| k.starts_with("tlsapp:")), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_checks_client_certificates_gets_one() -> Result<()> {
    let redis = TlsRedis::start(true)?;
    let origin = Origin::start().await?;
    let dir = policies(&origin)?;
    let ca = redis.file(CA);
    let url = redis.tls_url("");

    let log = refused(&url, dir.path(), &["--redis-ca-file", &ca])?;
    ensure!(
        log.contains("TLS with Redis") && log.contains("--redis-client-cert"),
        "the reason is not named: {log}"
    );

    let (cert, key) = (redis.file(CLIENT_CERT), redis.file(CLIENT_KEY));
    let log = refused(
        &url,
        dir.path(),
        &["--redis-ca-file", &ca, "--redis-client-cert", &cert],
    )?;
    ensure!(log.contains("--redis-client-key is missing"), "{log}");

    let p = Patternd::start(
        &url,
        dir.path(),
        &[
            "--redis-ca-file",
            &ca,
            "--redis-client-cert",
            &cert,
            "--redis-client-key",
            &key,
        ],
    )
    .await?;
    serves(&p, &origin).await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_right_ca_it_refuses_to_start_and_says_why() -> Result<()> {
    let redis = TlsRedis::start(false)?;
    let origin = Origin::start().await?;
    let dir = policies(&origin)?;
    let url = redis.tls_url("");

    // No CA file: the system's roots do not know the test CA.
    let log = refused(&url, dir.path(), &[])?;
    ensure!(
        log.contains("not trusted") && log.contains("--redis-ca-file"),
        "the reason is not named: {log}"
    );

    let missing = tls::missing(&redis);
    let missing = missing.to_string_lossy();
    let log = refused(&url, dir.path(), &["--redis-ca-file", &missing])?;
    ensure!(
        log.contains("cannot read --redis-ca-file") && log.contains(missing.as_ref()),
        "{log}"
    );

    // A file that is no certificate (here: the CA's key).
    let not_a_cert = redis.dir().join("ca.key");
    let log = refused(
        &url,
        dir.path(),
        &["--redis-ca-file", &not_a_cert.to_string_lossy()],
    )?;
    ensure!(
        log.contains("--redis-ca-file") && log.contains("not a PEM certificate"),
        "{log}"
    );

    // TLS files with a plain URL are a mistake, not ignored.
    let log = refused(
        &redis.url(),
        dir.path(),
        &["--redis-ca-file", &redis.file(CA)],
    )?;
    ensure!(log.contains("rediss://"), "{log}");
    Ok(())
}

/// Neither the log nor `/readyz` shows the password, even at debug level.
async fn never_shows(p: &Patternd, password: &str) -> Result<()> {
    let ready = p.get("/readyz").await?;
    ensure!(!ready.text.contains(password), "{}", ready.text);
    let log = p.log();
    ensure!(
        !log.contains(password),
        "the password is in the log:\n{log}"
    );
    ensure!(
        log.contains(":***@"),
        "the URL is not logged redacted:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acl_user_in_every_url_form_and_a_wrong_password_stops_it() -> Result<()> {
    let redis = TlsRedis::start(false)?;
    // The user may touch its app's keys only.
    tls::add_user(&redis, "tlsapp", PASSWORD, "tlsapp:*").await?;
    let origin = Origin::start().await?;
    let dir = policies(&origin)?;
    let ca = redis.file(CA);
    let debug = StartOptions {
        env: vec![("PATTERND_LOG", Some("debug"))],
        ..StartOptions::default()
    };
    let plain = format!("redis://tlsapp:{PASSWORD}@127.0.0.1:{}/", redis.port());
    let over_tls = redis.tls_url(&format!("tlsapp:{PASSWORD}"));
    for (url, extra) in [(plain, vec![]), (over_tls, vec!["--redis-ca-file", &ca])] {
        let p = Patternd::start_with(&url, dir.path(), &extra, &debug)
            .await
            .with_context(|| url.replace(PASSWORD, "***"))?;
        serves(&p, &origin).await?;
        never_shows(&p, PASSWORD).await?;
    }

    let wrong = "n0t-the-Pa55word";
    for (url, extra) in [
        (
            format!("redis://tlsapp:{wrong}@127.0.0.1:{}/", redis.port()),
            vec![],
        ),
        (
            redis.tls_url(&format!("tlsapp:{wrong}")),
            vec!["--redis-ca-file", &ca],
        ),
    ] {
        let log = refused(&url, dir.path(), &extra)?;
        ensure!(
            log.contains("refused the credentials") && log.contains("tlsapp:***@"),
            "the reason is not named: {log}"
        );
        ensure!(!log.contains(wrong), "the password is in the log:\n{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_alone_for_requirepass() -> Result<()> {
    let redis = RedisServer::start()?;
    tls::require_pass(&redis, PASSWORD).await?;
    let origin = Origin::start().await?;
    let dir = policies(&origin)?;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/", redis.port());
    let p = Patternd::start(&url, dir.path(), &[]).await?;
    serves(&p, &origin).await?;
    never_shows(&p, PASSWORD).await?;

    // No password at all is refused at startup too (NOAUTH), and says what to give.
    let log = refused(&redis.url(), dir.path(), &[])?;
    ensure!(log.contains("refused the credentials"), "{log}");
    Ok(())
}
