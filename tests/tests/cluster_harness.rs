//! The Redis Cluster harness itself (tests/src/cluster.rs), before any pattern runs on it:
//! the cluster forms and serves every slot, `key_slot` agrees with the server's own
//! `CLUSTER KEYSLOT`, keys written through their owning primary land there (and other
//! primaries redirect), and a killed primary's replica takes over.

use std::collections::BTreeSet;

use anyhow::Result;
use patternd_e2e::Backend;
use patternd_e2e::cluster::{
    ClusterOptions, PRIMARIES, RedisCluster, SLOTS, key_slot, node_url, shared,
};

/// A blocking connection to one node.
fn conn(port: u16) -> Result<redis::Connection> {
    Ok(redis::Client::open(node_url(port))?.get_connection()?)
}

#[test]
fn the_shared_cluster_serves_every_slot_once() -> Result<()> {
    let cluster = shared()?;
    let primaries = cluster.primaries()?;
    assert_eq!(primaries.len(), PRIMARIES, "{primaries:?}");
    let mut served = vec![0u8; usize::from(SLOTS)];
    for p in &primaries {
        assert!(!p.failing, "{p:?}");
        for r in &p.slots {
            for s in r.clone() {
                served[usize::from(s)] += 1;
            }
        }
    }
    let wrong: Vec<usize> = (0..served.len()).filter(|&s| served[s] != 1).collect();
    assert!(wrong.is_empty(), "slots not served exactly once: {wrong:?}");
    for port in cluster.live_ports() {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn(port)?)?;
        assert!(info.contains("cluster_state:ok"), ":{port}: {info}");
        assert!(info.contains("cluster_slots_ok:16384"), ":{port}: {info}");
    }
    // Both forms a cluster client may be given name every node.
    assert_eq!(cluster.seed_urls().len(), PRIMARIES);
    let url = cluster.url();
    assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches(',').count(), PRIMARIES - 1, "{url}");
    for port in cluster.live_ports() {
        assert!(port < 55535, "no room for the bus port of :{port}");
    }
    Ok(())
}

/// A small deterministic generator (xorshift), so a failure names a reproducible key.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A key of up to 11 bytes drawn mostly from braces and a few letters, so hash tags,
    /// empty tags, unclosed and nested braces all turn up often; some arbitrary bytes too.
    fn key(&mut self) -> Vec<u8> {
        const ALPHABET: &[u8] = b"{}{}ab:x\xff\x00";
        let len = (self.next() % 12) as usize;
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
            .collect()
    }
}

#[test]
fn key_slot_agrees_with_cluster_keyslot() -> Result<()> {
    let cluster = shared()?;
    let mut keys: Vec<Vec<u8>> = [
        "",
        "foo",
        "bar",
        "123456789",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{}",
        "{",
        "}",
        "}{",
        "a{b",
        "a{b}",
        "{a}b",
        "{}a{b}",
        "x}y{z}",
        "pd:{shop:web}:sess:abc",
        "pd:shop:ratelimit:api:{user:42}",
        "naïve-ключ-🔑",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    keys.push(vec![b'k'; 10_000]);
    let mut gen_keys = Keys(0x9E37_79B9_7F4A_7C15);
    keys.extend((0..3000).map(|_| gen_keys.key()));

    let port = cluster.live_ports()[0];
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice());
    }
    let theirs: Vec<u16> = pipe.query(&mut conn(port)?)?;
    assert_eq!(theirs.len(), keys.len());
    for (k, slot) in keys.iter().zip(theirs) {
        assert_eq!(
            key_slot(k),
            slot,
            "key_slot({:?}) disagrees with CLUSTER KEYSLOT",
            String::from_utf8_lossy(k)
        );
    }
    Ok(())
}

#[tokio::test]
async fn keys_written_through_their_owner_land_there() -> Result<()> {
    let cluster = shared()?;
    let primaries = cluster.primaries()?;
    // Shared cluster: this test's own key prefix.
    let keys: Vec<String> = (0..300).map(|i| format!("harness:write:{i}")).collect();
    let mut owners = BTreeSet::new();
    for k in &keys {
        let mut c = cluster.conn_for_key(k).await?;
        redis::cmd("SET")
            .arg(k)
            .arg(k)
            .query_async::<()>(&mut c)
            .await?;
        let got: String = redis::cmd("GET").arg(k).query_async(&mut c).await?;
        assert_eq!(&got, k);
        owners.insert(cluster.owner_of_key(k)?.port);
    }
    assert_eq!(
        owners.len(),
        PRIMARIES,
        "300 keys should reach every primary"
    );

    // Every other primary refuses the key with a redirection to its owner.
    let k = &keys[0];
    let owner = cluster.owner_of_key(k)?;
    for p in primaries.iter().filter(|p| p.port != owner.port) {
        let err = redis::cmd("GET")
            .arg(k)
            .query::<Option<String>>(&mut conn(p.port)?)
            .expect_err("a non-owner answered");
        assert_eq!(
            err.redirect_node(),
            Some((format!("127.0.0.1:{}", owner.port).as_str(), key_slot(k))),
            "{err}"
        );
    }

    // The owner counts the key in its slot; a key with the same hash tag shares the slot.
    let n: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(key_slot(k))
        .query(&mut conn(owner.port)?)?;
    assert!(n >= 1);
    assert_eq!(key_slot("{harness:tag}:a"), key_slot("{harness:tag}:b"));

    // Ids spread over the shards for later pattern tests.
    let ids = cluster.ids_on_every_primary("user-", |id| format!("pd:{{{id}}}"))?;
    assert_eq!(ids.len(), PRIMARIES);
    let shards: BTreeSet<u16> = ids
        .iter()
        .map(|id| cluster.owner_of_key(format!("pd:{{{id}}}")).map(|n| n.port))
        .collect::<Result<_>>()?;
    assert_eq!(shards.len(), PRIMARIES, "{ids:?}");
    Ok(())
}

#[test]
fn a_killed_primary_is_replaced_by_its_replica() -> Result<()> {
    // Its own cluster: this test changes the topology.
    let mut cluster = RedisCluster::start(ClusterOptions { replicas: true })?;
    let topo = cluster.topology()?;
    assert_eq!(topo.len(), 2 * PRIMARIES);
    assert_eq!(topo.iter().filter(|n| !n.primary).count(), PRIMARIES);

    // A write acknowledged by the replica (WAIT) survives the primary's death.
    let key = "harness:failover";
    let old = cluster.owner_of_key(key)?;
    let mut c = conn(old.port)?;
    redis::cmd("SET").arg(key).arg("kept").query::<()>(&mut c)?;
    let acked: u64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut c)?;
    assert_eq!(acked, 1);
    drop(c);

    let promoted = cluster.kill_primary(old.port)?;
    assert_eq!(promoted.primary_id, None);
    assert!(promoted.serves(key_slot(key)), "{promoted:?}");
    assert_eq!(cluster.owner_of_key(key)?.port, promoted.port);
    let got: Option<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut conn(promoted.port)?)?;
    assert_eq!(got.as_deref(), Some("kept"));
    assert!(!cluster.live_ports().contains(&old.port));

    // The old primary comes back as the new one's replica, and a manual failover gives it
    // its slots back without losing the key.
    cluster.restart_node(old.port)?;
    let back = cluster
        .topology()?
        .into_iter()
        .find(|n| n.port == old.port)
        .expect("the restarted node is known");
    assert!(!back.primary, "{back:?}");
    assert_eq!(back.primary_id.as_deref(), Some(promoted.id.as_str()));
    cluster.promote(old.port)?;
    assert_eq!(cluster.owner_of_key(key)?.port, old.port);
    let got: Option<String> = redis::cmd("GET").arg(key).query(&mut conn(old.port)?)?;
    assert_eq!(got.as_deref(), Some("kept"));
    Ok(())
}

/// The pool behind `Backend::cluster` (tests/src/backend.rs): a lease is exclusive, and the
/// next lease finds the cluster empty (no keys, no scripts) and whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_returned_pool_cluster_is_empty_for_the_next_test() -> Result<()> {
    let b = Backend::cluster()?;
    let url = b.url();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    let ids = b.spread_ids("k", |id| format!("{{{id}}}"))?;
    let mut ports = BTreeSet::new();
    for id in &ids {
        let key = format!("{{{id}}}:x");
        ports.insert(b.node_of_key(&key)?);
        let mut c = b.conn_for_key(&key).await?;
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .query_async(&mut c)
            .await?;
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg("return 1")
            .query_async(&mut c)
            .await?;
    }
    assert_eq!(ports.len(), PRIMARIES, "spread ids reach every primary");
    assert_eq!(b.scan_all().await?.len(), PRIMARIES);
    // Dropped on a blocking thread: the release talks to the nodes synchronously.
    tokio::task::spawn_blocking(move || drop(b)).await?;

    let b = tokio::task::spawn_blocking(Backend::cluster).await??;
    assert!(
        b.scan_all().await?.is_empty(),
        "the last test's keys are gone"
    );
    for c in b.nodes().await?.all() {
        let loaded: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg("e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
            .query_async(c)
            .await?;
        assert_eq!(loaded, [false], "the last test's scripts are gone");
    }
    tokio::task::spawn_blocking(move || drop(b)).await?;
    Ok(())
}

/// Both variants of a pattern test send the same requests: on a standalone server,
/// `spread_ids` gives the ids the cluster gives.
#[test]
fn spread_ids_are_the_same_on_both_backends() -> Result<()> {
    let key = |id: &str| format!("app:ratelimit:r:{{{id}}}:0fw");
    let on_cluster = Backend::cluster()?.spread_ids("user-", key)?;
    let on_one = Backend::standalone()?.spread_ids("user-", key)?;
    assert_eq!(on_cluster, on_one);
    assert_eq!(on_cluster.len(), PRIMARIES);
    Ok(())
}
