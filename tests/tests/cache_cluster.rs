//! Cache rules on a real Redis Cluster (the shared 3-primary cluster of
//! `patternd_e2e::cluster`): reads, fills, tag invalidation, DELETE with related ids,
//! write-behind and its dead letters, with ids on every primary. Every cache script declares
//! all its keys in one slot (its id's slot group), so the cluster runs each where it belongs;
//! a script that touched another slot would fail with CROSSSLOT or a MOVED error here.

use std::time::Duration;

use anyhow::Result;
use patternd_e2e::cache_keys;
use patternd_e2e::cluster::shared;
use patternd_e2e::origin::Origin;
use patternd_e2e::{Patternd, cache_status, eventually, policy_dir};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn every_cache_operation_runs_on_a_cluster() -> Result<()> {
    let cluster = shared()?;
    let origin = Origin::start().await?;
    let policy = format!(
        "app: ccl\nrules:\n  r:\n    cache:\n      origin: {o}\n      ttl: 1h\n      related: [\"{{id}}:x\"]\n\
         \x20 b:\n    cache:\n      origin: {o}\n      ttl: 1h\n      write: behind\n      retry_backoff: 50ms\n      max_attempts: 2\n",
        o = origin.template()
    );
    let policies = policy_dir(&[("ccl.yaml", &policy)])?;
    let p = Patternd::start(&cluster.url(), policies.path(), &[]).await?;

    // Ids whose values live on each primary.
    let ids = cluster.ids_on_every_primary("r", |id| cache_keys::key("ccl", "r", id, "v"))?;
    assert_eq!(ids.len(), cluster.primaries()?.len());
    for id in &ids {
        origin.set(id, "text/plain", id.as_bytes(), &["all", id]);
        origin.set(&format!("{id}:x"), "text/plain", b"x", &[]);
        let r = p.get(&format!("/v1/cache/ccl/r/{id}")).await?;
        assert_eq!((r.status, r.text.as_str()), (200, id.as_str()), "{r:?}");
        let r = p.get(&format!("/v1/cache/ccl/r/{id}")).await?;
        assert!(cache_status(&r).starts_with("patternd; hit"), "{id}: {r:?}");
        assert_eq!(p.get(&format!("/v1/cache/ccl/r/{id}:x")).await?.status, 200);
        // The value is on the primary that owns its group's slot.
        let key = cache_keys::key("ccl", "r", id, "v");
        let mut conn = cluster.conn_for_key(&key).await?;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        assert_eq!(exists, 1, "{key}");
    }

    // Invalidation reaches every group, on every primary.
    let r = p
        .post_json("/v1/cache/ccl/r/_invalidate", &json!({"tags": ["all"]}))
        .await?;
    assert_eq!(
        (r.status, r.json["bumped"].clone()),
        (200, json!(1)),
        "{r:?}"
    );
    for id in &ids {
        let r = p.get(&format!("/v1/cache/ccl/r/{id}")).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{id}: {r:?}");
        assert_eq!(origin.gets(id), 2, "{id}");
    }

    // DELETE with a related id (in another group, often on another primary).
    for id in &ids {
        let d = p.delete(&format!("/v1/cache/ccl/r/{id}")).await?;
        assert_eq!(
            (d.status, d.json["deleted"].clone()),
            (200, json!(2)),
            "{d:?}"
        );
        let r = p.get(&format!("/v1/cache/ccl/r/{id}:x")).await?;
        assert!(cache_status(&r).contains("fwd=miss"), "{id}: {r:?}");
    }

    // Write-behind: writes to ids on every primary reach the origin; failures dead-letter
    // per group, and the merged list and replay work across groups.
    let bids = cluster.ids_on_every_primary("b", |id| cache_keys::key("ccl", "b", id, "v"))?;
    for id in &bids {
        let r = p
            .put_with(
                &format!("/v1/cache/ccl/b/{id}"),
                id,
                &[("content-type", "text/plain")],
            )
            .await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    eventually(WAIT, "every write at the origin", || async {
        Ok(bids
            .iter()
            .all(|id| origin.hits("PUT", id) == 1)
            .then_some(()))
    })
    .await?;
    origin.fail_writes_with(Some(503));
    for id in &bids {
        let r = p
            .put_with(&format!("/v1/cache/ccl/b/{id}"), "again", &[])
            .await?;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let page = eventually(WAIT, "every write in the dead letters", || async {
        let r = p.get("/admin/cache/ccl/b/dead-letters").await?;
        Ok((r.json["total"] == json!(bids.len())).then_some(r))
    })
    .await?;
    let letters = page.json["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(letters.len(), bids.len(), "{page:?}");
    origin.fail_writes_with(None);
    let r = p
        .post_json("/admin/cache/ccl/b/dead-letters/replay", &json!({}))
        .await?;
    assert_eq!(r.json["replayed"], json!(bids.len()), "{r:?}");
    eventually(WAIT, "the replayed writes at the origin", || async {
        Ok(bids
            .iter()
            .all(|id| origin.item(id).is_some_and(|i| i.body == b"again"))
            .then_some(()))
    })
    .await?;
    Ok(())
}
