//! Concurrency leases: acquire, release, double release, malformed leases, expiry.

use std::time::Duration;

use anyhow::Result;
use patternd_e2e::{Backend, World, eventually, on_every_backend};
use serde_json::json;

const POLICY: &str = "app: cc
rules:
  jobs:
    rate_limit: { algorithm: concurrency, limit: 3, lease: 1h }
  short:
    rate_limit: { algorithm: concurrency, limit: 1, lease: 1s }
  window:
    rate_limit: { algorithm: fixed_window, limit: 3, window: 1h }
";

async fn acquire_release_and_double_release(b: Backend) -> Result<()> {
    let w = World::on(b, &[("cc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let mut leases = Vec::new();
    for remaining in [2, 1, 0] {
        let r = p.check("cc", "jobs", "worker", 1).await?;
        assert_eq!((r.status, r.remaining()), (200, remaining), "{r:?}");
        leases.push(r.lease().unwrap_or_default().to_string());
    }
    assert!(leases.iter().all(|l| !l.is_empty()), "{leases:?}");
    let distinct: std::collections::HashSet<_> = leases.iter().collect();
    assert_eq!(distinct.len(), 3, "leases must be distinct: {leases:?}");

    let r = p.check("cc", "jobs", "worker", 1).await?;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.lease().is_none(), "a denied request holds nothing: {r:?}");
    assert!(r.u64_field("retry_after_ms") > 0, "{r:?}");

    let r = p.release("cc", "jobs", &leases[0]).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": true})),
        "{r:?}"
    );
    let r = p.check("cc", "jobs", "worker", 1).await?;
    assert_eq!(
        (r.status, r.remaining()),
        (200, 0),
        "the released slot is free: {r:?}"
    );
    leases[0] = r.lease().unwrap_or_default().to_string();

    // Releasing twice is not an error, and frees nothing the second time.
    let r = p.release("cc", "jobs", &leases[1]).await?;
    assert_eq!(r.json, json!({"released": true}), "{r:?}");
    let r = p.release("cc", "jobs", &leases[1]).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": false})),
        "{r:?}"
    );
    let r = p.check("cc", "jobs", "worker", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    assert_eq!(p.check("cc", "jobs", "worker", 1).await?.status, 429);

    // Another id's slots are separate.
    let r = p.check("cc", "jobs", "other", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 2), "{r:?}");
    Ok(())
}

on_every_backend!(acquire_release_and_double_release);

async fn leases_with_cost_and_bad_leases(b: Backend) -> Result<()> {
    let w = World::on(b, &[("cc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;

    // A lease of cost 2 holds two slots and frees both.
    let r = p.check("cc", "jobs", "bulk", 2).await?;
    assert_eq!((r.status, r.remaining()), (200, 1), "{r:?}");
    let lease = r.lease().unwrap_or_default().to_string();
    assert_eq!(p.check("cc", "jobs", "bulk", 2).await?.status, 429);
    assert_eq!(
        p.release("cc", "jobs", &lease).await?.json,
        json!({"released": true})
    );
    let r = p.check("cc", "jobs", "bulk", 3).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");

    // A lease names its id; rewriting the id part cannot release another id's slots.
    let (_, rest) = lease.split_once('.').unwrap_or_default();
    let forged = format!("{}.{rest}", "b3RoZXI"); // base64url("other")
    let r = p.release("cc", "jobs", &forged).await?;
    assert_eq!(
        (r.status, &r.json),
        (200, &json!({"released": false})),
        "{r:?}"
    );

    for bad in [
        "garbage",
        "a.b.c",
        "a.b.c.d",
        "YnVsaw.short.1",
        "%%%.AAAAAAAAAAAAAAAAAAAAAA.1",
        "YnVsaw.AAAAAAAAAAAAAAAAAAAAAA.0",
        "YnVsaw.AAAAAAAAAAAAAAAAAAAAAA.4",
        "YnVsaw.AAAAAAAAAAAAAAAAAAAAAA.-1",
        "YnVsaw.AAAAAAAAAAAAAAAAAAAA!!.1",
    ] {
        let path = format!("/v1/ratelimit/cc/jobs/leases/{}", urlencode(bad));
        p.delete(&path).await?.assert_problem(400);
    }
    // Leases belong to concurrency rules only; unknown apps and rules are 404s.
    p.release("cc", "window", &lease).await?.assert_problem(400);
    p.release("cc", "nope", &lease).await?.assert_problem(404);
    p.release("nope", "jobs", &lease).await?.assert_problem(404);
    Ok(())
}

on_every_backend!(leases_with_cost_and_bad_leases);

async fn a_cost_zero_query_holds_nothing(b: Backend) -> Result<()> {
    let w = World::on(b, &[("cc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("cc", "jobs", "q", 0).await?;
    assert_eq!((r.status, r.remaining()), (200, 3), "{r:?}");
    // Nothing is held, so there is nothing to release: any lease handed out here would be
    // one the release endpoint refuses.
    assert!(r.lease().is_none(), "a cost-0 query got a lease: {r:?}");
    let r = p.check("cc", "jobs", "q", 3).await?;
    assert_eq!((r.status, r.remaining()), (200, 0), "{r:?}");
    Ok(())
}

on_every_backend!(a_cost_zero_query_holds_nothing);

async fn an_unreleased_lease_expires(b: Backend) -> Result<()> {
    let w = World::on(b, &[("cc.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("cc", "short", "crashy", 1).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let lease = r.lease().unwrap_or_default().to_string();
    let r = p.check("cc", "short", "crashy", 1).await?;
    assert_eq!(r.status, 429, "{r:?}");
    // The slot frees when the lease runs out (1s), whoever holds it.
    let retry = r.u64_field("retry_after_ms");
    assert!((1..=1000).contains(&retry), "{r:?}");

    // Waiting on a TTL: poll well past the lease instead of sleeping an exact amount.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = eventually(Duration::from_secs(5), "the lease to expire", || async {
        let r = p.check("cc", "short", "crashy", 1).await?;
        Ok((r.status == 200).then_some(r))
    })
    .await?;
    assert_eq!(r.remaining(), 0);
    // The crashed client's late release finds nothing (its lease expired).
    let r = p.release("cc", "short", &lease).await?;
    assert_eq!(r.json, json!({"released": false}), "{r:?}");
    Ok(())
}

on_every_backend!(an_unreleased_lease_expires);

/// Percent-encodes a path segment (only what the bad leases above need).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
