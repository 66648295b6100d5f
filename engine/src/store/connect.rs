//! How patternd reaches Redis: the `--redis` URL with its ACL credentials, and the TLS files of
//! a `rediss://` URL (`--redis-ca-file`, `--redis-client-cert`, `--redis-client-key`).
//!
//! One [`RedisTarget`] builds the client of every connection patternd opens (the request pool
//! and the near-cache tracking connection), so they all use the same TLS and ACL settings.
//! TLS is the redis crate's own (rustls with the `ring` provider). The files are read and
//! parsed once, at start, so a missing or malformed file stops patternd with the flag's name
//! rather than failing every connection later.
//!
//! The password never leaves this module in text: logs, errors and `/readyz` get
//! [`RedisTarget::redacted`], and the redis crate redacts it in its own `Debug` output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::{ClientTlsConfig, ErrorKind, ProtocolVersion, TlsCertificates};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS files of a `rediss://` connection; all optional (without a CA file, the system's
/// trusted roots verify the server).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    // The causes are in the messages and not `#[source]`s: `main` prints the chain, and
    // would print them twice.
    #[error("invalid Redis URL `{url}`: {error}")]
    Url {
        url: String,
        error: redis::RedisError,
    },
    #[error("cannot read {flag} `{}`: {error}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{flag} `{}` is not a PEM {what}: {detail}", path.display())]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("--redis-client-cert and --redis-client-key go together: {missing} is missing")]
    HalfIdentity { missing: &'static str },
    #[error(
        "--redis-ca-file, --redis-client-cert and --redis-client-key are for a TLS connection: \
         use a `rediss://` URL (got `{url}`)"
    )]
    TlsFilesWithoutTls { url: String },
    #[error(
        "invalid Redis Cluster URL `{url}`: {detail} (the form is \
         `redis+cluster://[USER:PASSWORD@]host1:port1,host2:port2/`, or `rediss+cluster://` for TLS)"
    )]
    ClusterUrl { url: String, detail: String },
    #[error("the TLS settings for Redis are unusable: {0}")]
    Tls(redis::RedisError),
    #[error(
        "Redis at `{url}` refused the credentials: {detail} (check the user and password in \
         --redis: `redis://USER:PASSWORD@host:port`, or `redis://:PASSWORD@host:port` for \
         `requirepass`)"
    )]
    Credentials { url: String, detail: String },
    #[error("TLS with Redis at `{url}` failed: {detail} ({hint})")]
    Handshake {
        url: String,
        detail: String,
        hint: &'static str,
    },
}

/// The `--redis` URL and its TLS files, checked and loaded.
#[derive(Clone)]
pub struct RedisTarget {
    endpoint: Endpoint,
    redacted: String,
}

/// What `--redis` names: one server, or a cluster reached through its seed nodes.
// One per process, cloned only at start: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Endpoint {
    Single(redis::Client),
    Cluster(Cluster),
}

/// A `redis+cluster://` target: the redis crate's cluster client (slot routing, MOVED and ASK,
/// topology refresh), and what it takes to reach any one node with the same credentials and
/// TLS settings (the near cache's tracking connections go to every primary themselves).
#[derive(Clone)]
pub struct Cluster {
    pub client: redis::cluster::ClusterClient,
    /// The URL's parts: what every node's URL is made from.
    url: ClusterUrl,
    certs: Option<TlsCertificates>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &self.redacted)
            .finish()
    }
}

impl RedisTarget {
    /// A URL without TLS files (tests, the managed redis-server, the benchmark).
    pub fn plain(url: &str) -> Result<Self, ConnectError> {
        Self::new(url, &TlsFiles::default())
    }

    pub fn new(url: &str, tls: &TlsFiles) -> Result<Self, ConnectError> {
        let redacted = redact(url);
        if let Some(parts) = ClusterUrl::parse(url) {
            let parts = parts.map_err(|detail| ConnectError::ClusterUrl {
                url: redacted.clone(),
                detail,
            })?;
            let endpoint = Endpoint::Cluster(parts.client(tls, &redacted)?);
            return Ok(Self { endpoint, redacted });
        }
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|error| {
            ConnectError::Url {
                url: redacted.clone(),
                error,
            }
        })?;
        let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let client = if is_tls {
            install_ring();
            let certs = load(tls)?;
            redis::Client::build_with_tls(info, certs).map_err(ConnectError::Tls)?
        } else if tls.any() {
            return Err(ConnectError::TlsFilesWithoutTls { url: redacted });
        } else {
            redis::Client::open(info).map_err(|error| ConnectError::Url {
                url: redacted.clone(),
                error,
            })?
        };
        Ok(Self {
            endpoint: Endpoint::Single(client),
            redacted,
        })
    }

    /// One server or a cluster.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.endpoint, Endpoint::Cluster(_))
    }

    /// A client of one server in `protocol`, with the target's TLS parameters and
    /// credentials: the server itself, or the cluster node at `node` (`host`, `port`). The
    /// tracking connection needs RESP3 for its invalidation pushes.
    pub fn node_client(
        &self,
        node: Option<(&str, u16)>,
        protocol: ProtocolVersion,
    ) -> Result<redis::Client, ConnectError> {
        let url_error = |error| ConnectError::Url {
            url: self.redacted.clone(),
            error,
        };
        let (info, certs) = match (&self.endpoint, node) {
            (Endpoint::Single(client), _) => (client.get_connection_info().clone(), None),
            (Endpoint::Cluster(c), Some((host, port))) => {
                let url = c.url.seed_url(host, port);
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(url_error)?;
                (info, c.certs.clone())
            }
            (Endpoint::Cluster(_), None) => {
                return Err(ConnectError::ClusterUrl {
                    url: self.redacted.clone(),
                    detail: "a cluster node needs its address".into(),
                });
            }
        };
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let info = info.set_redis_settings(settings);
        match certs {
            Some(certs) => redis::Client::build_with_tls(info, certs).map_err(ConnectError::Tls),
            None => redis::Client::open(info).map_err(url_error),
        }
    }

    /// A new cluster client in RESP3, for the pub/sub connection (`store::pubsub`): sharded
    /// messages arrive as pushes. Same seeds, credentials, TLS and retries as the pool's.
    pub fn cluster_client_resp3(&self) -> Result<redis::cluster::ClusterClient, ConnectError> {
        let url_error = |error| ConnectError::Url {
            url: self.redacted.clone(),
            error,
        };
        let Endpoint::Cluster(c) = &self.endpoint else {
            return Err(ConnectError::ClusterUrl {
                url: self.redacted.clone(),
                detail: "not a cluster URL".into(),
            });
        };
        let mut infos = Vec::with_capacity(c.url.seeds.len());
        for (host, port) in &c.url.seeds {
            let url = c.url.seed_url(host, *port);
            infos.push(
                redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(url_error)?,
            );
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            .use_protocol(ProtocolVersion::RESP3)
            .retries(4)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(certs) = &c.certs {
            builder = builder.certs(certs.clone());
        }
        builder.build().map_err(url_error)
    }

    /// The seed nodes of a cluster target (`host`, `port`), in the URL's order; empty for
    /// one server.
    pub fn seeds(&self) -> &[(String, u16)] {
        match &self.endpoint {
            Endpoint::Single(_) => &[],
            Endpoint::Cluster(c) => &c.url.seeds,
        }
    }

    /// The URL with its password replaced by `***`, for logs and answers.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// One connection and a PING, at start. A refusal no retry can fix (credentials refused,
    /// the TLS handshake refused, an unusable TLS configuration) is an error: patternd must
    /// not start and answer `on_redis_error` forever. A Redis that does not answer is not:
    /// patternd starts and waits for it, as it always has.
    pub async fn check(&self, within: Duration) -> Result<(), ConnectError> {
        let attempt = async {
            match &self.endpoint {
                Endpoint::Single(client) => {
                    let mut con = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<()>(&mut con).await
                }
                // PING goes to every primary: each must accept the credentials.
                Endpoint::Cluster(c) => {
                    let mut con = c.client.get_async_connection().await?;
                    redis::cmd("PING").query_async::<()>(&mut con).await
                }
            }
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(Err(e)) => match self.fatal(&e) {
                Some(err) => Err(err),
                None => Ok(()),
            },
            Ok(Ok(())) | Err(_) => Ok(()),
        }
    }

    /// The startup error for a refusal that retrying cannot fix, or None.
    fn fatal(&self, e: &redis::RedisError) -> Option<ConnectError> {
        let url = self.redacted.clone();
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        {
            // Redis's own text (`NOAUTH Authentication required.`) never echoes the
            // password; the crate reports a refused AUTH without Redis's text.
            let detail = match (e.code(), e.detail()) {
                (Some(code), Some(d)) => format!("{code} {d}"),
                _ => "wrong user name or password, or the user is disabled".to_owned(),
            };
            return Some(ConnectError::Credentials { url, detail });
        }
        if e.kind() == ErrorKind::InvalidClientConfig {
            return Some(ConnectError::Tls(e.clone()));
        }
        let tls = tls_error(e)?;
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => {
                "the server's certificate is not trusted: give the CA that signed it with \
                 --redis-ca-file, and connect with the host name the certificate names"
            }
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                "the server requires a client certificate: give --redis-client-cert and \
                 --redis-client-key"
            }
            rustls::Error::AlertReceived(_) => {
                "the server refused the handshake: if it checks client certificates, give one \
                 signed by a CA it trusts with --redis-client-cert and --redis-client-key"
            }
            _ => "is the port a TLS port, and do its TLS settings match?",
        };
        Some(ConnectError::Handshake {
            url,
            detail: tls.to_string(),
            hint,
        })
    }
}

/// The rustls error under a connection failure, if TLS is what failed. tokio-rustls reports
/// it as an `io::Error` whose inner error is the `rustls::Error`.
fn tls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    use std::error::Error as _;
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let source = e.source()?;
    // The crate keeps the I/O error behind an `Arc`; look through it when it is there.
    let io = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.downcast_ref::<std::io::Error>(),
        None => source.downcast_ref::<std::io::Error>(),
    }?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// Explicit, so that another crate in the build enabling aws-lc-rs cannot make rustls refuse
/// to pick a provider. Already installed (a second target): fine.
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `redis+cluster://` or `rediss+cluster://` URL, taken apart. The redis crate's cluster
/// client takes one URL per seed node; one string keeps `--redis` (and `PATTERND_REDIS`) a
/// single value for every deployment, where a separate `--redis-cluster` flag would double
/// every TLS and ACL option.
#[derive(Debug, Clone, PartialEq)]
struct ClusterUrl {
    tls: bool,
    userinfo: String,
    query: String,
    seeds: Vec<(String, u16)>,
}

impl ClusterUrl {
    /// None when `url` is not a cluster URL at all.
    fn parse(url: &str) -> Option<Result<Self, String>> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            (false, rest)
        } else {
            (true, url.strip_prefix("rediss+cluster://")?)
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &str) -> Result<Self, String> {
        let (rest, query) = match rest.find('?') {
            Some(q) => (&rest[..q], rest[q..].to_owned()),
            None => (rest, String::new()),
        };
        // The last `@` ends the userinfo (as `redact` reads it).
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (format!("{}@", &rest[..at]), &rest[at + 1..]),
            None => (String::new(), rest),
        };
        let (hosts, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        };
        if !(path.is_empty() || path == "0") {
            return Err(format!(
                "a cluster has only database 0, and the URL names `/{path}`"
            ));
        }
        let mut seeds = Vec::new();
        for node in hosts.split(',') {
            let node = node.trim();
            if node.is_empty() {
                return Err("a seed node is empty (two commas, or a trailing comma)".into());
            }
            let (host, port) = match node.rsplit_once(':') {
                // `[::1]` alone is a host without a port.
                Some((h, p)) if !p.ends_with(']') => {
                    let port = p
                        .parse::<u16>()
                        .map_err(|_| format!("`{node}`: `{p}` is not a port"))?;
                    (h, port)
                }
                _ => (node, 6379),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("`{node}` has no host"));
            }
            seeds.push((host.to_owned(), port));
        }
        Ok(Self {
            tls,
            userinfo,
            query,
            seeds,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "rediss" } else { "redis" }
    }

    fn seed_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!(
            "{}://{}{host}:{port}/{}",
            self.scheme(),
            self.userinfo,
            self.query
        )
    }

    fn client(self, tls: &TlsFiles, redacted: &str) -> Result<Cluster, ConnectError> {
        let url_error = |error| ConnectError::Url {
            url: redacted.to_owned(),
            error,
        };
        let mut infos = Vec::with_capacity(self.seeds.len());
        for (host, port) in &self.seeds {
            let url = self.seed_url(host, *port);
            infos.push(
                redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(url_error)?,
            );
        }
        let certs = if self.tls {
            install_ring();
            Some(load(tls)?)
        } else if tls.any() {
            return Err(ConnectError::TlsFilesWithoutTls {
                url: redacted.to_owned(),
            });
        } else {
            None
        };
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            // MOVED, ASK and a node that went away are retried by the client itself, after a
            // slot refresh; the waits are short (10 ms doubling, at most 200 ms) because one
            // outer timer per call (`--redis-timeout`) bounds the whole call anyway. The
            // crate's defaults (16 retries from 1.28 s) would outlast any request.
            .retries(4)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(certs) = &certs {
            builder = builder.certs(certs.clone());
        }
        let client = builder.build().map_err(url_error)?;
        Ok(Cluster {
            client,
            url: self,
            certs,
        })
    }
}

/// Reads and parses the TLS files, so that each problem names its flag.
fn load(tls: &TlsFiles) -> Result<TlsCertificates, ConnectError> {
    let root_cert = match &tls.ca_file {
        Some(path) => Some(certificates("--redis-ca-file", path)?),
        None => None,
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConnectError::HalfIdentity {
                missing: "--redis-client-key",
            });
        }
        (None, Some(_)) => {
            return Err(ConnectError::HalfIdentity {
                missing: "--redis-client-cert",
            });
        }
        (Some(cert), Some(key)) => {
            let client_cert = certificates("--redis-client-cert", cert)?;
            let client_key = read("--redis-client-key", key)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| ConnectError::NotPem {
                flag: "--redis-client-key",
                path: key.clone(),
                what: "private key",
                detail: e.to_string(),
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// A PEM file of one or more certificates, as read.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    let pem = read(flag, path)?;
    let not_pem = |detail: String| ConnectError::NotPem {
        flag,
        path: path.to_path_buf(),
        what: "certificate",
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(not_pem("no `BEGIN CERTIFICATE` block in it".into()));
    }
    Ok(pem)
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|error| ConnectError::Read {
        flag,
        path: path.to_path_buf(),
        error,
    })
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_every_form() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://u:secret@h:1"), "rediss://u:***@h:1");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        // An `@` in the password (unencoded) is still hidden: the last `@` ends the userinfo.
        assert_eq!(redact("redis://u:se@cret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn tls_files_need_a_tls_url_and_go_in_pairs() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = RedisTarget::new("redis://:secret@127.0.0.1:1", &tls).unwrap_err();
        assert!(matches!(e, ConnectError::TlsFilesWithoutTls { .. }), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");

        let e = RedisTarget::new("rediss://127.0.0.1:1", &tls).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--redis-ca-file") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );

        let half = TlsFiles {
            client_cert: Some("/nonexistent/c.pem".into()),
            ..TlsFiles::default()
        };
        let e = RedisTarget::new("rediss://127.0.0.1:1", &half).unwrap_err();
        assert!(
            e.to_string().contains("--redis-client-key is missing"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_pem_names_its_flag() {
        let dir = std::env::temp_dir().join(format!("patternd-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let tls = TlsFiles {
            ca_file: Some(ca),
            ..TlsFiles::default()
        };
        let e = RedisTarget::new("rediss://127.0.0.1:1", &tls).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(
                e,
                ConnectError::NotPem {
                    flag: "--redis-ca-file",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_redacted_target_debugs_without_the_password() {
        let t = RedisTarget::plain("redis://app:secret@127.0.0.1:1").unwrap();
        assert_eq!(t.redacted(), "redis://app:***@127.0.0.1:1");
        assert!(!format!("{t:?}").contains("secret"));
        let resp3 = t.node_client(None, ProtocolVersion::RESP3).unwrap();
        assert_eq!(
            resp3.get_connection_info().redis_settings().password(),
            Some("secret")
        );
    }

    #[test]
    fn cluster_urls_name_every_seed() {
        let u = ClusterUrl::parse("redis+cluster://app:pw@10.0.0.1:7000,h2:7001,[::1]:7002/")
            .unwrap()
            .unwrap();
        assert!(!u.tls);
        assert_eq!(u.userinfo, "app:pw@");
        assert_eq!(
            u.seeds,
            vec![
                ("10.0.0.1".to_owned(), 7000),
                ("h2".to_owned(), 7001),
                ("::1".to_owned(), 7002)
            ]
        );
        assert_eq!(u.seed_url("::1", 7002), "redis://app:pw@[::1]:7002/");
        let tls = ClusterUrl::parse("rediss+cluster://h1,h2:7001?protocol=resp3")
            .unwrap()
            .unwrap();
        assert!(tls.tls);
        assert_eq!(tls.seeds[0], ("h1".to_owned(), 6379));
        assert_eq!(tls.seed_url("h1", 6379), "rediss://h1:6379/?protocol=resp3");
        assert!(ClusterUrl::parse("redis://h:1").is_none());
        for bad in [
            "redis+cluster://h1:7000/3",
            "redis+cluster://h1:7000,,h2:7001",
            "redis+cluster://h1:x",
            "redis+cluster://:7000",
        ] {
            assert!(ClusterUrl::parse(bad).unwrap().is_err(), "{bad}");
        }
        let e = RedisTarget::plain("redis+cluster://u:secret@h1:7000/2").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("database 0") && !text.contains("secret"),
            "{text}"
        );
        let t =
            RedisTarget::plain("redis+cluster://u:secret@127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(t.is_cluster());
        assert_eq!(t.seeds().len(), 2);
        assert_eq!(
            t.redacted(),
            "redis+cluster://u:***@127.0.0.1:7000,127.0.0.1:7001"
        );
        let node = t
            .node_client(Some(("127.0.0.1", 7005)), ProtocolVersion::RESP3)
            .unwrap();
        let info = node.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("secret"));
        assert_eq!(info.redis_settings().username(), Some("u"));
    }
}
