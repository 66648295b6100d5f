//! Admin connections for the doctor (`crate::doctor`): one short-lived connection to each
//! server (the one server, or every primary of a cluster), for the commands that inspect a
//! server rather than serve a request: INFO, CONFIG GET, SLOWLOG, LATENCY, MODULE LIST, and the
//! bounded SCAN + MEMORY USAGE sample of a rule's namespace.
//!
//! Not the pool: these commands are rare (an operator asks), some are slow (SCAN, LATENCY
//! DOCTOR), and each must reach one named node, which the pool's slot routing cannot do for a
//! keyless command. So they never queue behind, or ahead of, the request path. Each command is
//! bounded by the timeout given to [`nodes`]; the connections close when the `Node`s drop.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ProtocolVersion, Value};

use super::StoreError;
use super::connect::{Endpoint, RedisTarget};

/// One server, reached over a connection of its own.
pub struct Node {
    /// `host:port` as the cluster names it (the URL's for one server).
    pub addr: String,
    conn: MultiplexedConnection,
    timeout: Duration,
}

/// One `SLOWLOG GET` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowEntry {
    pub id: i64,
    /// Unix time (s) when it was logged.
    pub at: i64,
    pub micros: u64,
    /// The command and its first arguments as Redis logged them (it shortens long ones).
    pub args: Vec<String>,
}

/// One `LATENCY LATEST` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyEvent {
    pub event: String,
    pub latest_ms: u64,
    pub max_ms: u64,
}

/// One key of a sample: its type, remaining TTL and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySample {
    pub key: Vec<u8>,
    /// `PTTL`: -1 no expiry, -2 gone since the SCAN.
    pub pttl_ms: i64,
    /// `MEMORY USAGE` (None: gone since the SCAN).
    pub bytes: Option<u64>,
    pub kind: String,
}

/// Connects to every server of `target`: the one server, or each primary of the cluster's
/// slot map (`CLUSTER SLOTS`, asked of the first seed that answers). Every connection and
/// command is bounded by `timeout`.
pub async fn nodes(target: &RedisTarget, timeout: Duration) -> Result<Vec<Node>, StoreError> {
    match target.endpoint() {
        Endpoint::Single(_) => {
            let client = target.node_client(None, ProtocolVersion::RESP2)?;
            let addr = client.get_connection_info().addr().to_string();
            Ok(vec![Node::connect(addr, &client, timeout).await?])
        }
        Endpoint::Cluster(_) => {
            let mut last = None;
            for (host, port) in target.seeds() {
                let primaries = async {
                    let client = target.node_client(Some((host, *port)), ProtocolVersion::RESP2)?;
                    let mut seed =
                        Node::connect(format!("{host}:{port}"), &client, timeout).await?;
                    let reply: Value = seed.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
                    let mut primaries: Vec<(String, u16)> = super::route::slot_ranges(&reply, host)
                        .into_iter()
                        .map(|r| r.primary)
                        .collect();
                    primaries.sort();
                    primaries.dedup();
                    Ok::<_, StoreError>(primaries)
                };
                match primaries.await {
                    Ok(list) if !list.is_empty() => {
                        let mut out = Vec::with_capacity(list.len());
                        for (h, p) in list {
                            let client =
                                target.node_client(Some((&h, p)), ProtocolVersion::RESP2)?;
                            out.push(Node::connect(format!("{h}:{p}"), &client, timeout).await?);
                        }
                        return Ok(out);
                    }
                    Ok(_) => {}
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(StoreError::Timeout(timeout)))
        }
    }
}

impl Node {
    async fn connect(
        addr: String,
        client: &redis::Client,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| StoreError::Timeout(timeout))??;
        Ok(Self {
            addr,
            conn,
            timeout,
        })
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut self.conn))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    /// `INFO` (the default sections), as Redis writes it.
    pub async fn info(&mut self) -> Result<String, StoreError> {
        self.query(&redis::cmd("INFO")).await
    }

    /// `CONFIG GET name`: None when the server has no such parameter. An error when CONFIG is
    /// refused (renamed or denied by ACL, as on some managed services).
    pub async fn config(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        let pairs: Vec<String> = self
            .query(redis::cmd("CONFIG").arg("GET").arg(name))
            .await?;
        Ok(pairs
            .chunks(2)
            .find(|p| p.first().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|p| p.get(1).cloned()))
    }

    /// `SLOWLOG GET count`, newest first.
    pub async fn slowlog(&mut self, count: u32) -> Result<Vec<SlowEntry>, StoreError> {
        let reply: Value = self
            .query(redis::cmd("SLOWLOG").arg("GET").arg(count))
            .await?;
        Ok(parse_slowlog(&reply))
    }

    /// `LATENCY LATEST`: one row per event the latency monitor has seen.
    pub async fn latency_latest(&mut self) -> Result<Vec<LatencyEvent>, StoreError> {
        let reply: Value = self.query(redis::cmd("LATENCY").arg("LATEST")).await?;
        let Value::Array(rows) = reply else {
            return Ok(Vec::new());
        };
        Ok(rows
            .iter()
            .filter_map(|row| {
                let Value::Array(f) = row else { return None };
                Some(LatencyEvent {
                    event: text(f.first()?)?,
                    latest_ms: int(f.get(2)?)?.try_into().ok()?,
                    max_ms: int(f.get(3)?)?.try_into().ok()?,
                })
            })
            .collect())
    }

    /// `LATENCY DOCTOR`: Redis's own report, in its words.
    pub async fn latency_doctor(&mut self) -> Result<String, StoreError> {
        self.query(redis::cmd("LATENCY").arg("DOCTOR")).await
    }

    /// `MODULE LIST`: `(name, version)` of every loaded module.
    pub async fn modules(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let reply: Value = self.query(redis::cmd("MODULE").arg("LIST")).await?;
        let Value::Array(mods) = reply else {
            return Ok(Vec::new());
        };
        Ok(mods
            .iter()
            .filter_map(|m| {
                let fields: Vec<(String, &Value)> = match m {
                    Value::Array(f) => f
                        .chunks(2)
                        .filter_map(|p| Some((text(p.first()?)?, p.get(1)?)))
                        .collect(),
                    Value::Map(f) => f.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
                    _ => return None,
                };
                let name = fields.iter().find(|(k, _)| k == "name")?.1;
                let ver = fields
                    .iter()
                    .find(|(k, _)| k == "ver")
                    .and_then(|v| int(v.1));
                Some((text(name)?, ver.unwrap_or(0)))
            })
            .collect())
    }

    /// `DBSIZE`.
    pub async fn dbsize(&mut self) -> Result<u64, StoreError> {
        self.query(&redis::cmd("DBSIZE")).await
    }

    /// One `SCAN cursor MATCH pattern COUNT count` step: the next cursor (0: done) and the
    /// keys it found.
    pub async fn scan(
        &mut self,
        cursor: u64,
        pattern: &str,
        count: u32,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        self.query(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count),
        )
        .await
    }

    /// `TYPE`, `PTTL` and `MEMORY USAGE` of each key, in one pipeline.
    pub async fn sample(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeySample>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(k);
            pipe.cmd("PTTL").arg(k);
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let reply: Vec<Value> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut self.conn))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(keys
            .iter()
            .zip(reply.chunks(3))
            .map(|(k, r)| KeySample {
                key: k.clone(),
                kind: r.first().and_then(text).unwrap_or_default(),
                pttl_ms: r.get(1).and_then(int).unwrap_or(-2),
                bytes: r.get(2).and_then(int).and_then(|n| u64::try_from(n).ok()),
            })
            .collect())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// `SLOWLOG GET`'s rows: `[id, unix time, µs, [args…], client address, client name]` (the last
/// two since Redis 4).
fn parse_slowlog(reply: &Value) -> Vec<SlowEntry> {
    let Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| {
            let Value::Array(f) = row else { return None };
            let args = match f.get(3)? {
                Value::Array(a) => a.iter().filter_map(text).collect(),
                _ => Vec::new(),
            };
            Some(SlowEntry {
                id: int(f.first()?)?,
                at: int(f.get(1)?)?,
                micros: int(f.get(2)?)?.try_into().ok()?,
                args,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slowlog_rows_are_read_and_bad_ones_skipped() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(7),
                Value::Int(1_700_000_000),
                Value::Int(15_000),
                Value::Array(vec![bulk("EVALSHA"), bulk("abc"), bulk("1")]),
                bulk("127.0.0.1:5000"),
                bulk(""),
            ]),
            Value::Int(3),
        ]);
        assert_eq!(
            parse_slowlog(&reply),
            vec![SlowEntry {
                id: 7,
                at: 1_700_000_000,
                micros: 15_000,
                args: vec!["EVALSHA".into(), "abc".into(), "1".into()],
            }]
        );
    }
}
