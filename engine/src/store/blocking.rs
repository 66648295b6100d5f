//! Dedicated connections for blocking stream reads (`XREAD BLOCK`), never one of the pool's.
//!
//! A blocking command holds its connection until Redis answers: on the pool's multiplexed
//! connections it would stall every request pipelined behind it. A stream rule's tail reader
//! (one task per rule and engine, see `patterns::stream`) holds one of these for its life.
//! On a cluster it is a `ClusterConnection` of its own, which routes `XREAD` by its stream
//! key (the crate reads the key after `STREAMS`) and follows slot moves like the pool does.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Value};

use super::connect::Endpoint;
use super::{Store, StoreError};

/// A connection of its own for blocking reads.
pub struct Blocking {
    conn: BlockingConn,
    timeout: Duration,
}

enum BlockingConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Store {
    /// Opens a dedicated connection (bounded by the command timeout). Refused at once while
    /// the breaker is open.
    pub async fn blocking(&self) -> Result<Blocking, StoreError> {
        if self.breaker_open() {
            return Err(StoreError::CircuitOpen(self.inner.breaker.cause()));
        }
        let timeout = self.inner.timeout;
        let made = async {
            Ok::<_, StoreError>(match self.inner.target.endpoint() {
                Endpoint::Single(client) => {
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(None);
                    BlockingConn::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&cfg)
                            .await?,
                    )
                }
                Endpoint::Cluster(c) => {
                    let cfg = ClusterConfig::new().set_connection_timeout(timeout);
                    BlockingConn::Cluster(c.client.get_async_connection_with_config(cfg).await?)
                }
            })
        };
        let conn = tokio::time::timeout(timeout, made)
            .await
            .map_err(|_| StoreError::Timeout(timeout))??;
        Ok(Blocking { conn, timeout })
    }
}

impl Blocking {
    async fn query(&mut self, cmd: &redis::Cmd, bound: Duration) -> Result<Value, StoreError> {
        let reply = match &mut self.conn {
            BlockingConn::Single(c) => {
                tokio::time::timeout(bound, cmd.query_async::<Value>(c)).await
            }
            BlockingConn::Cluster(c) => {
                tokio::time::timeout(bound, cmd.query_async::<Value>(c)).await
            }
        };
        match reply {
            Err(_) => Err(StoreError::Timeout(bound)),
            Ok(r) => r.map_err(StoreError::from),
        }
    }

    /// `XREAD COUNT count BLOCK block STREAMS key after`: entries after `after`, waiting up to
    /// `block` for the first. Nil when none came.
    pub async fn read_after(
        &mut self,
        key: &str,
        after: &str,
        count: usize,
        block: Duration,
    ) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("XREAD");
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(key)
            .arg(after);
        let bound = block + self.timeout;
        self.query(&cmd, bound).await
    }

    /// The id of the stream's last entry (`XREVRANGE key + - COUNT 1`), if any.
    pub async fn last(&mut self, key: &str) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
        let bound = self.timeout;
        self.query(&cmd, bound).await
    }
}
