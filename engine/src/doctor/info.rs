//! What the doctor knows about one server: `INFO` text, read into fields, plus the few
//! `CONFIG GET` values INFO does not carry. Pure (the gathering is in `mod.rs`), so every check
//! is tested on INFO text.

use std::collections::HashMap;
use std::fmt;

use crate::store::admin::{LatencyEvent, SlowEntry};

/// A Redis version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// `7.0.15`, `6.2`, `7.2.4-rc1`: missing parts are 0, a suffix is ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = parts.next().flatten()?;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(Self(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// `INFO`'s `field:value` lines (section headers and blank lines skipped).
#[derive(Debug, Clone, Default)]
pub struct Info {
    fields: HashMap<String, String>,
}

impl Info {
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { fields }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    pub fn u64(&self, field: &str) -> Option<u64> {
        self.get(field)?.parse().ok()
    }

    pub fn f64(&self, field: &str) -> Option<f64> {
        self.get(field)?.parse().ok()
    }

    pub fn version(&self) -> Option<Version> {
        Version::parse(self.get("redis_version")?)
    }

    /// The `slaveN:ip=…,port=…,state=online,offset=…,lag=…` lines, as field maps.
    pub fn replicas(&self) -> Vec<HashMap<String, String>> {
        let mut rows: Vec<(u32, HashMap<String, String>)> = self
            .fields
            .iter()
            .filter_map(|(k, v)| {
                let n: u32 = k.strip_prefix("slave")?.parse().ok()?;
                let row = v
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect();
                Some((n, row))
            })
            .collect();
        rows.sort_by_key(|(n, _)| *n);
        rows.into_iter().map(|(_, r)| r).collect()
    }

    /// Keys in db0 (`# Keyspace` `db0:keys=…,expires=…`).
    pub fn keys(&self) -> u64 {
        self.get("db0")
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("keys=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// One server, as gathered for the checks.
#[derive(Debug, Clone, Default)]
pub struct Server {
    /// `host:port`; on a cluster the checks name it.
    pub addr: String,
    pub info: Info,
    /// `CONFIG GET` values by name; a missing name was refused or is unknown to this
    /// version (the checks say so when they need it).
    pub config: HashMap<String, String>,
    /// Why CONFIG GET failed, when it did (renamed or denied on managed services).
    pub config_error: Option<String>,
    pub slowlog: Vec<SlowEntry>,
    pub latency: Vec<LatencyEvent>,
    pub latency_doctor: String,
    /// `(name, version)` of the loaded modules; None when MODULE LIST was refused.
    pub modules: Option<Vec<(String, i64)>>,
}

impl Server {
    pub fn config(&self, name: &str) -> Option<&str> {
        self.config.get(name).map(String::as_str)
    }

    pub fn maxmemory(&self) -> u64 {
        self.info.u64("maxmemory").unwrap_or(0)
    }

    pub fn policy(&self) -> &str {
        self.info
            .get("maxmemory_policy")
            .or_else(|| self.config("maxmemory-policy"))
            .unwrap_or("unknown")
    }
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("7.0.15"), Some(Version(7, 0, 15)));
        assert_eq!(Version::parse("6.2"), Some(Version(6, 2, 0)));
        assert_eq!(Version::parse("7.2.4-rc1"), Some(Version(7, 2, 4)));
        assert_eq!(Version::parse("x"), None);
        assert!(Version(6, 0, 20) < Version(6, 2, 0));
        assert!(Version(7, 0, 0) > Version(6, 2, 14));
    }

    #[test]
    fn info_fields_replicas_and_keys() {
        let info = Info::parse(
            "# Server\r\nredis_version:6.2.14\r\n\r\n# Replication\r\nrole:master\r\n\
             connected_slaves:2\r\nslave1:ip=10.0.0.3,port=6380,state=wait_bgsave,offset=0,lag=0\r\n\
             slave0:ip=10.0.0.2,port=6380,state=online,offset=99,lag=1\r\n\
             # Keyspace\r\ndb0:keys=42,expires=40,avg_ttl=1000\r\n",
        );
        assert_eq!(info.version(), Some(Version(6, 2, 14)));
        assert_eq!(info.u64("connected_slaves"), Some(2));
        let r = info.replicas();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["ip"], "10.0.0.2");
        assert_eq!(r[1]["state"], "wait_bgsave");
        assert_eq!(info.keys(), 42);
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }
}
