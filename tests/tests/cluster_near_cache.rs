//! The near cache on a real Redis Cluster. A node reports only the keys it owns, so patternd
//! keeps one tracking connection per primary: a near copy of an id on any primary must not
//! outlive a write made through another engine. After a primary is killed and its replica
//! promoted, the near cache follows the new primaries (it is switched off, then on again,
//! empty) and a write on the promoted primary still reaches the near copies.

use std::time::Duration;

use anyhow::{Result, ensure};
use patternd_e2e::cache_keys;
use patternd_e2e::cluster::{ClusterOptions, RedisCluster};
use patternd_e2e::origin::Origin;
use patternd_e2e::{Patternd, Reply, cache_status, eventually, policy_dir};

const POLICY: &str = "app: nc
rules:
  product:
    cache:
      origin: ORIGIN
      ttl: 1h
      origin_timeout: 10s
      near_cache: { max_entries: 1000, max_age: 1m }
";

const WAIT: Duration = Duration::from_secs(20);

fn is_near(r: &Reply) -> bool {
    cache_status(r).contains("detail=near")
}

/// GETs until `p` answers `want` from its near cache.
async fn until_near(p: &Patternd, path: &str, want: &str) -> Result<()> {
    eventually(WAIT, "a near cache hit", || async {
        let r = p.get(path).await?;
        ensure!(r.status == 200, "{r:?}");
        ensure!(r.text == want, "{path}: {} (want {want})", r.text);
        ensure!(is_near(&r), "not a near hit: {}", cache_status(&r));
        Ok(Some(()))
    })
    .await
}

/// GETs until `p` answers `want` (from wherever): the old near copy is gone.
async fn until_text(p: &Patternd, path: &str, want: &str) -> Result<()> {
    eventually(WAIT, "the new value", || async {
        let r = p.get(path).await?;
        ensure!(
            r.status == 200 && r.text == want,
            "{path}: {} {}",
            r.status,
            r.text
        );
        Ok(Some(()))
    })
    .await
}

async fn put(p: &Patternd, id: &str, body: &str) -> Result<()> {
    let r = p
        .put_with(
            &format!("/v1/cache/nc/product/{id}"),
            body,
            &[("content-type", "text/plain")],
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "PUT {id}: {r:?}\n{}",
        p.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn near_copies_on_every_primary_follow_writes_and_a_failover() -> Result<()> {
    let t0 = std::time::Instant::now();
    let cluster = RedisCluster::start(ClusterOptions { replicas: true })?;
    eprintln!("cluster started in {:?}", t0.elapsed());
    let origin = Origin::start().await?;
    let dir = policy_dir(&[("nc.yaml", &POLICY.replace("ORIGIN", &origin.template()))])?;
    let a = Patternd::start(&cluster.url(), dir.path(), &[]).await?;
    let b = Patternd::start(&cluster.url(), dir.path(), &[]).await?;
    let ids = cluster.ids_on_every_primary("p", |id| cache_keys::key("nc", "product", id, "v"))?;

    for id in &ids {
        origin.set(id, "text/plain", b"v1", &[]);
        until_near(&a, &format!("/v1/cache/nc/product/{id}"), "v1").await?;
    }
    eprintln!("near copies on every primary at {:?}", t0.elapsed());
    // A write through engine B, on each primary, reaches A's near copy.
    for id in &ids {
        put(&b, id, "v2").await?;
    }
    for id in &ids {
        until_text(&a, &format!("/v1/cache/nc/product/{id}"), "v2").await?;
    }

    // Kill the primary of the first id; its replica takes over.
    let victim = cluster.owner_of_key(cache_keys::key("nc", "product", &ids[0], "v"))?;
    let (cluster, promoted) = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let promoted = cluster.kill_primary(victim.port);
        (cluster, promoted)
    })
    .await?;
    let promoted = promoted?;
    eprintln!("failover done at {:?}", t0.elapsed());
    let path = format!("/v1/cache/nc/product/{}", ids[0]);
    // The near cache comes back on the new primaries (what the replica had is what counts:
    // a write the dead primary had not replicated may be gone, so write afresh first)…
    put(&b, &ids[0], "v3").await?;
    until_near(&a, &path, "v3").await?;
    // …and a write on the promoted primary (through B) still invalidates A's copy.
    put(&b, &ids[0], "v4").await?;
    until_text(&a, &path, "v4").await?;
    ensure!(
        cluster
            .owner_of_key(cache_keys::key("nc", "product", &ids[0], "v"))?
            .port
            == promoted.port,
        "the id's slot moved to the promoted replica"
    );
    ensure!(
        a.log().contains("the cluster's primaries changed")
            || a.log().contains("near cache invalidation connection lost"),
        "the tracking connections noticed the failover:\n{}",
        a.log()
    );
    Ok(())
}
