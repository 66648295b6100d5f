//! Production-like Redis for the end-to-end tests: TLS and ACL users.
//!
//! [`TlsRedis`] is a [`RedisServer`] with a TLS port beside its plain one: the harness checks
//! and inspects through the plain port, patternd is given the TLS one. Its certificates come
//! from a throwaway CA made with the `openssl` CLI in the server's temp dir (EC P-256 keys:
//! fast to make), with a client certificate for servers that check them
//! (`--tls-auth-clients yes`).
//!
//! [`add_user`] and [`require_pass`] set credentials on a running server through the plain,
//! not yet protected, default user.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};

use crate::{RedisServer, TempDir, free_port};

/// Files in the server's dir: the CA, the server's certificate and key, a client's.
pub const CA: &str = "ca.crt";
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// A `redis-server` that also listens for TLS on [`TlsRedis::tls_port`].
#[derive(Debug)]
pub struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
}

impl TlsRedis {
    /// `client_auth`: whether the server requires a client certificate signed by the CA.
    pub fn start(client_auth: bool) -> Result<Self> {
        let dir = TempDir::new("redis-tls")?;
        make_certificates(dir.path())?;
        let files = dir.path().to_path_buf();
        let server = RedisServer::start_in(dir, |_| {
            let file = |name: &str| files.join(name).to_string_lossy().into_owned();
            Ok(vec![
                "--tls-port".into(),
                free_port()?.to_string(),
                "--tls-cert-file".into(),
                file("server.crt"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file(CA),
                "--tls-auth-clients".into(),
                if client_auth { "yes" } else { "no" }.into(),
            ])
        })?;
        let tls_port = server
            .extra_arg("--tls-port")
            .and_then(|p| p.parse().ok())
            .context("the TLS port")?;
        Ok(Self { server, tls_port })
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://` to the TLS port, with `userinfo` (`user:pass`, `:pass`) when not empty.
    pub fn tls_url(&self, userinfo: &str) -> String {
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("rediss://{userinfo}{at}127.0.0.1:{}/", self.tls_port)
    }

    /// A file of the PKI ([`CA`], [`CLIENT_CERT`], [`CLIENT_KEY`]), as an argument.
    pub fn file(&self, name: &str) -> String {
        self.server.dir().join(name).to_string_lossy().into_owned()
    }
}

impl Deref for TlsRedis {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        &self.server
    }
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, in `dir`.
fn make_certificates(dir: &Path) -> Result<()> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-new",
                "-days",
                "2",
                "-subj",
                "/CN=patternd test CA",
            ],
            &key[..],
            &["-keyout", "ca.key", "-out", CA],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    )?;
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let (crt, csr, k) = (
            format!("{name}.crt"),
            format!("{name}.csr"),
            format!("{name}.key"),
        );
        let subj = format!("/CN=patternd test {name}");
        openssl(
            dir,
            &[
                &["req", "-new", "-subj", subj.as_str()][..],
                &key[..],
                &["-keyout", k.as_str(), "-out", csr.as_str()],
            ]
            .concat(),
        )?;
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
        )?;
        let ext = ext.to_string_lossy().into_owned();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                CA,
                "-CAkey",
                "ca.key",
                "-set_serial",
                "1",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed?)")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Adds the ACL user `user` with `password`, allowed every command on keys matching
/// `keys` (a glob such as `shop:*`) only.
pub async fn add_user(redis: &RedisServer, user: &str, password: &str, keys: &str) -> Result<()> {
    let mut c = redis.conn().await?;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("resetkeys")
        .arg(format!("~{keys}"))
        .arg("resetchannels")
        .arg("+@all")
        .query_async(&mut c)
        .await
        .context("ACL SETUSER")?;
    Ok(())
}

/// Gives the default user a password (`requirepass`): from now on [`RedisServer::conn`]
/// is refused.
pub async fn require_pass(redis: &RedisServer, password: &str) -> Result<()> {
    let mut c = redis.conn().await?;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query_async(&mut c)
        .await
        .context("CONFIG SET requirepass")?;
    Ok(())
}

/// A path inside the server's dir that does not exist (a missing CA file).
pub fn missing(redis: &RedisServer) -> PathBuf {
    redis.dir().join("no-such-ca.crt")
}
