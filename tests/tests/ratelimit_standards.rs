//! Rate-limit answers to the letter of the standards (issue 10).
//!
//! - `RateLimit-Policy` and `RateLimit` are parsed with an RFC 9651 structured-field parser
//!   (`sfv`) and checked against draft-ietf-httpapi-ratelimit-headers: a policy item is the
//!   sustained quota (`q` = limit per `w` = window), a bucket's burst a vendor parameter, and
//!   every `RateLimit` item stays within its policy item (`r <= q`, `t <= w`).
//! - Shadow rules send neither field; sliding windows never report `t` beyond the window; a
//!   fixed-window counter that lost its TTL gets it back on every path; a Redis clock that went
//!   backwards lets no burst through; a plugin naming one key suffix twice fails the call.
//! - Window roll-over with short windows, for every algorithm, against a reference model fed
//!   with Redis' own clock: every decision is checked to be what the model decides at some
//!   moment between two Redis TIME reads around the request (so scheduling delay never makes a
//!   check fail), and a client that waits exactly the reported `retry_after_ms` or
//!   `reset_after_ms` is admitted.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use patternd_e2e::{
    Backend, Patternd, Reply, TempDir, World, burst, eventually, on_every_backend, policy_dir,
    redis_now_ms, sliding_fields, sliding_state,
};
use serde_json::json;
use sfv::{BareItem, List, ListEntry, Parser};

// ---------------------------------------------------------------------------------------------
// The RateLimit fields, parsed as structured fields
// ---------------------------------------------------------------------------------------------

/// One `RateLimit-Policy` item.
#[derive(Debug, Clone, PartialEq)]
struct PolicyItem {
    name: String,
    q: i64,
    w: Option<i64>,
    qu: Option<String>,
    burst: Option<i64>,
}

/// One `RateLimit` item.
#[derive(Debug, Clone, PartialEq)]
struct ServiceLimit {
    name: String,
    r: i64,
    t: Option<i64>,
}

/// The members of a List field whose items are Strings, with their parameters; anything the
/// draft does not allow (not a List, an inner list, a non-String item) is an error.
fn parse_list(field: &str, text: &str) -> Result<Vec<(String, sfv::Parameters)>> {
    let list: List = Parser::new(text)
        .parse()
        .map_err(|e| anyhow::anyhow!("{field}: `{text}` is not a structured-field List: {e}"))?;
    ensure!(!list.is_empty(), "{field}: empty list");
    list.into_iter()
        .map(|entry| match entry {
            ListEntry::Item(item) => match item.bare_item.as_string() {
                Some(s) => Ok((s.as_str().to_string(), item.params)),
                None => bail!("{field}: `{text}`: an item that is not a String"),
            },
            ListEntry::InnerList(_) => bail!("{field}: `{text}`: an inner list"),
        })
        .collect()
}

fn int_param(params: &sfv::Parameters, key: &str) -> Result<Option<i64>> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => match v.as_integer() {
            Some(i) => Ok(Some(i64::from(i))),
            None => bail!("parameter `{key}` is not an Integer: {v:?}"),
        },
    }
}

fn policy_items(r: &Reply) -> Result<Vec<PolicyItem>> {
    let text = r
        .header("ratelimit-policy")
        .with_context(|| format!("no RateLimit-Policy: {r:?}"))?;
    let mut items = Vec::new();
    for (name, params) in parse_list("RateLimit-Policy", text)? {
        let q = int_param(&params, "q")?.with_context(|| format!("`{text}`: no q"))?;
        ensure!(q >= 0, "`{text}`: q must be non-negative");
        let w = int_param(&params, "w")?;
        ensure!(w.is_none_or(|w| w > 0), "`{text}`: w must be positive");
        let qu = match params.get("qu") {
            None => None,
            Some(BareItem::String(s)) => Some(s.as_str().to_string()),
            Some(v) => bail!("`{text}`: qu must be a String, not {v:?}"),
        };
        if let Some(pk) = params.get("pk") {
            ensure!(
                pk.as_byte_sequence().is_some(),
                "`{text}`: pk must be bytes"
            );
        }
        let burst = int_param(&params, "patternd-burst")?;
        items.push(PolicyItem {
            name,
            q,
            w,
            qu,
            burst,
        });
    }
    Ok(items)
}

fn service_limits(r: &Reply) -> Result<Vec<ServiceLimit>> {
    let text = r
        .header("ratelimit")
        .with_context(|| format!("no RateLimit: {r:?}"))?;
    let mut items = Vec::new();
    for (name, params) in parse_list("RateLimit", text)? {
        let rem = int_param(&params, "r")?.with_context(|| format!("`{text}`: no r"))?;
        let t = int_param(&params, "t")?;
        ensure!(rem >= 0 && t.is_none_or(|t| t >= 0), "`{text}`: negative");
        items.push(ServiceLimit { name, r: rem, t });
    }
    Ok(items)
}

/// Both fields parse, and every `RateLimit` item stays within the policy item it names.
fn check_fields(r: &Reply) -> Result<(Vec<PolicyItem>, ServiceLimit)> {
    let policy = policy_items(r)?;
    let limits = service_limits(r)?;
    ensure!(limits.len() == 1, "one RateLimit item: {r:?}");
    let sl = limits[0].clone();
    let item = policy
        .iter()
        .find(|p| p.name == sl.name)
        .with_context(|| format!("RateLimit names no policy item: {r:?}"))?;
    ensure!(sl.r <= item.q, "r > q: {r:?}");
    if let (Some(t), Some(w)) = (sl.t, item.w) {
        ensure!(t <= w, "t > w: {r:?}");
    }
    if let Some(retry) = r.header("retry-after") {
        let secs: i64 = retry.parse().context("Retry-After in seconds")?;
        ensure!(secs >= 1, "{r:?}");
        // The draft: Retry-After SHOULD NOT reference a time before the end of `t`.
        ensure!(
            sl.t.is_none_or(|t| secs >= t),
            "Retry-After before the end of t: {r:?}"
        );
    }
    Ok((policy, sl))
}

// ---------------------------------------------------------------------------------------------
// Item 1: the policy advertises the sustained rate
// ---------------------------------------------------------------------------------------------

const BUCKETS: &str = "app: std
rules:
  tb: { rate_limit: { algorithm: token_bucket, limit: 10, window: 1s, burst: 50 } }
  gc: { rate_limit: { algorithm: gcra, limit: 10, window: 1s, burst: 50 } }
  jobs: { rate_limit: { algorithm: concurrency, limit: 4, lease: 30s } }
";

/// Sends requests of cost 1 for `span`, never faster than the rate the rule's
/// `RateLimit-Policy` advertises (`q` per `w`): (allowed, denied).
async fn paced_client(p: &Patternd, rule: &str, id: &str, span: Duration) -> Result<(u64, u64)> {
    let first = p.check("std", rule, id, 0).await?;
    let (policy, _) = check_fields(&first)?;
    let item = &policy[0];
    let w = item.w.context("a window")?;
    let interval = Duration::from_secs_f64(w as f64 / item.q as f64);
    let (mut allowed, mut denied) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < span {
        let r = p.check("std", rule, id, 1).await?;
        check_fields(&r)?;
        if r.allowed() {
            allowed += 1;
        } else {
            denied += 1;
        }
        // Sleeping after each request: the request's own time only makes the pace slower.
        tokio::time::sleep(interval).await;
    }
    Ok((allowed, denied))
}

/// Spends what `RateLimit` says is available (`r`), and when it says 0, waits `t` seconds.
async fn obedient_client(p: &Patternd, rule: &str, id: &str, span: Duration) -> Result<(u64, u64)> {
    let (mut allowed, mut denied) = (0, 0);
    let mut r = p.check("std", rule, id, 0).await?;
    let started = Instant::now();
    while started.elapsed() < span {
        let (_, sl) = check_fields(&r)?;
        if sl.r == 0 {
            tokio::time::sleep(Duration::from_secs(sl.t.context("t")?.max(1) as u64)).await;
            r = p.check("std", rule, id, 0).await?;
            continue;
        }
        r = p.check("std", rule, id, 1).await?;
        if r.allowed() {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    Ok((allowed, denied))
}

async fn bucket_policies_advertise_the_sustained_rate_and_paced_clients_are_never_denied(
    b: Backend,
) -> Result<()> {
    let w = World::on(b, &[("std.yaml", BUCKETS)], &["--redis-timeout", "10s"]).await?;
    let p = &w.patternd;
    for rule in ["tb", "gc"] {
        let r = p.check("std", rule, "look", 1).await?;
        let (policy, sl) = check_fields(&r)?;
        assert_eq!(
            policy,
            vec![PolicyItem {
                name: rule.to_string(),
                q: 10,
                w: Some(1),
                qu: None,
                burst: Some(50),
            }],
            "{r:?}"
        );
        // 49 tokens left: the policy's whole quota of 10 is available, nothing to wait for.
        assert_eq!((sl.r, sl.t), (10, Some(0)), "{r:?}");
        assert_eq!(
            (r.u64_field("limit"), r.u64_field("burst"), r.remaining()),
            (10, 50, 49),
            "{r:?}"
        );
    }
    // A client pacing itself to the advertised policy for 3 s, and one spending what
    // `RateLimit` says is available, on each bucket at once.
    let span = Duration::from_secs(3);
    let (tb, gc, tb_obedient, gc_obedient) = tokio::join!(
        paced_client(p, "tb", "pacer", span),
        paced_client(p, "gc", "pacer", span),
        obedient_client(p, "tb", "obedient", span),
        obedient_client(p, "gc", "obedient", span),
    );
    for (what, (allowed, denied)) in [
        ("token_bucket, paced", tb?),
        ("gcra, paced", gc?),
        ("token_bucket, obedient", tb_obedient?),
        ("gcra, obedient", gc_obedient?),
    ] {
        eprintln!("{what} client over {span:?}: {allowed} allowed, {denied} denied");
        assert!(allowed > 0, "{what}");
        assert_eq!(denied, 0, "{what}: {allowed} allowed");
    }

    // Concurrency is a number in flight, not a rate: no window, the draft's own unit.
    let r = p.check("std", "jobs", "j", 1).await?;
    let (policy, sl) = check_fields(&r)?;
    assert_eq!(
        policy,
        vec![PolicyItem {
            name: "jobs".into(),
            q: 4,
            w: None,
            qu: Some("concurrent-requests".into()),
            burst: None,
        }],
        "{r:?}"
    );
    assert_eq!(sl.r, 3, "{r:?}");
    Ok(())
}

on_every_backend!(bucket_policies_advertise_the_sustained_rate_and_paced_clients_are_never_denied);

// ---------------------------------------------------------------------------------------------
// Item 2: shadow rules
// ---------------------------------------------------------------------------------------------

async fn shadow_rules_send_no_ratelimit_fields(b: Backend) -> Result<()> {
    let yaml = "app: sh
rules:
  trial: { rate_limit: { algorithm: fixed_window, limit: 2, window: 1h, shadow: true } }
  trial-tb: { rate_limit: { algorithm: token_bucket, limit: 1, window: 1h, burst: 2, shadow: true } }
  real: { rate_limit: { algorithm: fixed_window, limit: 2, window: 1h } }
";
    let w = World::on(b, &[("sh.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    for rule in ["trial", "trial-tb"] {
        for i in 0..4 {
            let r = p.check("sh", rule, "u", 1).await?;
            assert_eq!((r.status, r.allowed()), (200, true), "{rule} #{i}: {r:?}");
            assert_eq!(
                r.json.get("shadow_denied").is_some(),
                i >= 2,
                "{rule} #{i}: {r:?}"
            );
            for field in ["ratelimit", "ratelimit-policy", "retry-after"] {
                assert!(r.header(field).is_none(), "{rule} #{i}: {field}: {r:?}");
            }
        }
    }
    // An enforced rule still has both.
    let r = p.check("sh", "real", "u", 1).await?;
    check_fields(&r)?;
    Ok(())
}

on_every_backend!(shadow_rules_send_no_ratelimit_fields);

// ---------------------------------------------------------------------------------------------
// Item 3: sliding_window's reset
// ---------------------------------------------------------------------------------------------

async fn sliding_window_reset_never_exceeds_the_window(b: Backend) -> Result<()> {
    let yaml = "app: sw
rules:
  api: { rate_limit: { algorithm: sliding_window, limit: 100, window: 60s } }
";
    let w = World::on(b, &[("sw.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    let r = p.check("sw", "api", "u", 0).await?;
    let (_, sl) = check_fields(&r)?;
    assert_eq!(
        (sl.r, sl.t, r.u64_field("reset_after_ms")),
        (100, Some(0), 0)
    );
    for cost in [1, 3, 1] {
        let r = p.check("sw", "api", "u", cost).await?;
        let (policy, sl) = check_fields(&r)?;
        assert_eq!(policy[0].w, Some(60), "{r:?}");
        // The request just admitted leaves the sliding window in 60 s; then all 100 are back.
        assert_eq!(sl.t, Some(60), "{r:?}");
        // Rounded up with a microsecond to spare: at most 1 ms over the window.
        let reset = r.u64_field("reset_after_ms");
        assert!((59_000..=60_001).contains(&reset), "{r:?}");
    }
    Ok(())
}

on_every_backend!(sliding_window_reset_never_exceeds_the_window);

// ---------------------------------------------------------------------------------------------
// Item 5: a fixed-window counter without TTL
// ---------------------------------------------------------------------------------------------

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Result<i64> {
    Ok(redis::cmd("PTTL").arg(key).query_async(conn).await?)
}

async fn a_fixed_window_counter_that_lost_its_ttl_gets_it_back_when_denying(
    b: Backend,
) -> Result<()> {
    let yaml = "app: fw
rules:
  w: { rate_limit: { algorithm: fixed_window, limit: 3, window: 2s } }
  pair: { rate_limit: { limits: [ { algorithm: fixed_window, limit: 3, window: 2s }, { algorithm: fixed_window, limit: 1, window: 1h } ] } }
";
    let w = World::on(b, &[("fw.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    let key = "fw:ratelimit:w:{u}:0fw";
    let mut conn = w.redis.conn_for_key(key).await?;
    // u, v and x are on three primaries of a cluster.
    for _ in 0..3 {
        assert_eq!(p.check("fw", "w", "u", 1).await?.status, 200);
    }
    // The counter, at the limit, loses its expiry (a PERSIST, a restore without TTLs).
    let persisted: i64 = redis::cmd("PERSIST")
        .arg(key)
        .query_async(&mut conn)
        .await?;
    assert_eq!(persisted, 1);
    let r = p.check("fw", "w", "u", 1).await?;
    assert_eq!(r.status, 429, "{r:?}");
    let left = pttl(&mut conn, key).await?;
    assert!(
        left > 0 && left <= 2000,
        "the denial restored the expiry: PTTL {left}"
    );
    assert!(r.u64_field("retry_after_ms") <= 2001, "{r:?}");
    // A counter that never had one (written by hand, or by an old script) is repaired too,
    // also on a cost-0 query and when another limit of the rule is the one denying.
    let fresh = "fw:ratelimit:w:{v}:0fw";
    let mut conn = w.redis.conn_for_key(fresh).await?;
    let _: () = redis::cmd("SET")
        .arg(fresh)
        .arg(3)
        .query_async(&mut conn)
        .await?;
    assert_eq!(p.check("fw", "w", "v", 0).await?.status, 200);
    assert!(pttl(&mut conn, fresh).await? > 0);
    assert_eq!(p.check("fw", "pair", "x", 1).await?.status, 200);
    let first = "fw:ratelimit:pair:{x}:0fw";
    let mut conn = w.redis.conn_for_key(first).await?;
    let persisted: i64 = redis::cmd("PERSIST")
        .arg(first)
        .query_async(&mut conn)
        .await?;
    assert_eq!(persisted, 1);
    assert_eq!(p.check("fw", "pair", "x", 1).await?.status, 429);
    assert!(pttl(&mut conn, first).await? > 0);
    // And the id is served again once that window ends.
    let r = eventually(Duration::from_secs(10), "the window to end", || async {
        let r = p.check("fw", "w", "u", 1).await?;
        Ok((r.status == 200).then_some(r))
    })
    .await?;
    assert_eq!(r.remaining(), 2, "{r:?}");
    Ok(())
}

on_every_backend!(a_fixed_window_counter_that_lost_its_ttl_gets_it_back_when_denying);

/// A sliding window keeps the expiry its window's first admission set (later admissions of
/// the same window write with KEEPTTL): one that lost it (PERSIST, a restore without TTLs)
/// gets it back with the id's first admission of a later window.
async fn a_sliding_window_that_lost_its_ttl_gets_it_back_in_the_next_window(
    b: Backend,
) -> Result<()> {
    let yaml = "app: swt
rules:
  s: { rate_limit: { algorithm: sliding_window, limit: 100000, window: 1s } }
";
    let w = World::on(b, &[("swt.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    let key = "swt:ratelimit:s:{u}:0sw";
    let mut conn = w.redis.conn_for_key("{u}").await?;
    assert_eq!(p.check("swt", "s", "u", 1).await?.status, 200);
    let ttl = pttl(&mut conn, key).await?;
    assert!((1..=2_000).contains(&ttl), "{ttl}");
    let persisted: i64 = redis::cmd("PERSIST")
        .arg(key)
        .query_async(&mut conn)
        .await?;
    assert_eq!(persisted, 1);
    let ttl = eventually(Duration::from_secs(10), "an expiry again", || {
        let mut conn = conn.clone();
        async move {
            let r = p.check("swt", "s", "u", 1).await?;
            ensure!(r.status == 200, "{r:?}");
            let ttl = pttl(&mut conn, key).await?;
            if ttl < 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(None);
            }
            Ok(Some(ttl))
        }
    })
    .await?;
    assert!((1..=2_000).contains(&ttl), "{ttl}");
    Ok(())
}

on_every_backend!(a_sliding_window_that_lost_its_ttl_gets_it_back_in_the_next_window);

// ---------------------------------------------------------------------------------------------
// Item 6: Redis TIME going backwards
// ---------------------------------------------------------------------------------------------

/// The state of a clock 5 minutes ahead, written as the scripts write it: to the scripts
/// (which read Redis TIME), Redis' clock has gone back 5 minutes since it was written.
async fn a_clock_that_went_backwards_lets_no_burst_through(b: Backend) -> Result<()> {
    let yaml = "app: clk
rules:
  sw: { rate_limit: { algorithm: sliding_window, limit: 10, window: 1m } }
  sl: { rate_limit: { algorithm: sliding_log, limit: 10, window: 1m } }
  tb: { rate_limit: { algorithm: token_bucket, limit: 10, window: 1m } }
  gc: { rate_limit: { algorithm: gcra, limit: 10, window: 1m } }
";
    let w = World::on(b, &[("clk.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    // Every key below is `a`'s, in one slot.
    let mut conn = w.redis.conn_for_key("{a}").await?;
    let window = 60_000.0;
    let ahead = redis_now_ms(&mut conn).await? + 300_000.0;
    let future_window = (ahead / window).floor();
    let fmt = |ms: f64| format!("{ms:.3}");
    // 7 of 10 used in the future: 3 (and no more) are left now, for every algorithm.
    // sliding_window's packed window, count, previous count and newest admission.
    let _: () = redis::cmd("SET")
        .arg("clk:ratelimit:sw:{a}:0sw")
        .arg(sliding_state(future_window, 3.0, 4.0, ahead))
        .query_async(&mut conn)
        .await?;
    let _: () = redis::cmd("ZADD")
        .arg("clk:ratelimit:sl:{a}:0wl")
        .arg(fmt(ahead))
        .arg("7:7")
        .query_async(&mut conn)
        .await?;
    let _: () = redis::cmd("HSET")
        .arg("clk:ratelimit:tb:{a}:0tb")
        .arg("t")
        .arg("3")
        .arg("ts")
        .arg(fmt(ahead))
        .query_async(&mut conn)
        .await?;
    // GCRA: 7 units' worth of emission intervals past the future moment's "now".
    let _: () = redis::cmd("SET")
        .arg("clk:ratelimit:gc:{a}:0gc")
        .arg(fmt(ahead + 7.0 * window / 10.0))
        .query_async(&mut conn)
        .await?;
    for rule in ["sw", "sl", "tb", "gc"] {
        let mut admitted = 0;
        for _ in 0..10 {
            let r = p.check("clk", rule, "a", 1).await?;
            assert!(!r.degraded(), "{r:?}");
            if r.allowed() {
                admitted += 1;
            }
        }
        assert!(
            admitted <= 3,
            "{rule}: {admitted} of 10 admitted after the clock went back"
        );
    }
    Ok(())
}

on_every_backend!(a_clock_that_went_backwards_lets_no_burst_through);

/// A sliding window stored as the HASH that earlier builds wrote is read as before (an upgrade
/// gives no id a fresh quota) and replaced by the string of this build on its next admission,
/// with its TTL; a key of another type still fails the call (WRONGTYPE), as before.
async fn a_sliding_window_of_the_earlier_hash_layout_is_read_and_replaced(
    b: Backend,
) -> Result<()> {
    let yaml = "app: up
rules:
  sw: { rate_limit: { algorithm: sliding_window, limit: 10, window: 1h } }
";
    let w = World::on(b, &[("up.yaml", yaml)], &[]).await?;
    let p = &w.patternd;
    let key = "up:ratelimit:sw:{a}:0sw";
    let mut conn = w.redis.conn_for_key("{a}").await?;
    let window = 3_600_000.0;
    let now = redis_now_ms(&mut conn).await?;
    // 6 admitted in this window, the newest a second ago, as the hash layout held it.
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("w")
        .arg(format!("{}", (now / window).floor()))
        .arg("c")
        .arg(6)
        .arg("p")
        .arg(0)
        .arg("l")
        .arg(format!("{:.3}", now - 1000.0))
        .query_async(&mut conn)
        .await?;
    let _: () = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(7_200_000)
        .query_async(&mut conn)
        .await?;
    // A query (cost 0) reads the hash and writes nothing.
    let r = p.check("up", "sw", "a", 0).await?;
    assert_eq!((r.status, r.remaining()), (200, 4), "{r:?}");
    let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await?;
    assert_eq!(kind, "hash");
    // An admission counts on from the hash's 6 and writes the string, with a TTL.
    let r = p.check("up", "sw", "a", 1).await?;
    assert_eq!((r.status, r.remaining()), (200, 3), "{r:?}");
    let value: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
    let [number, count, previous, newest] = sliding_fields(&value)?;
    assert_eq!(
        (number, count, previous),
        ((now / window).floor(), 7.0, 0.0),
        "{value:?}"
    );
    assert!(
        newest > now - 1000.0,
        "the newest admission is this one: {newest} (before it: {now})"
    );
    let ttl = pttl(&mut conn, key).await?;
    assert!(ttl > 3_600_000 && ttl <= 7_200_000, "{ttl}");
    // And it goes on from the string: 3 more, then denied.
    for left in [2, 1, 0] {
        let r = p.check("up", "sw", "a", 1).await?;
        assert_eq!((r.status, r.remaining()), (200, left), "{r:?}");
    }
    assert_eq!(p.check("up", "sw", "a", 1).await?.status, 429);
    // A key of a type neither layout uses fails its call with the usual problem.
    let mut conn = w.redis.conn_for_key("{b}").await?;
    let _: () = redis::cmd("RPUSH")
        .arg("up:ratelimit:sw:{b}:0sw")
        .arg("x")
        .query_async(&mut conn)
        .await?;
    let r = p.check("up", "sw", "b", 1).await?;
    r.assert_problem(500);
    assert_eq!(
        r.json["type"], "urn:patternd:problem:redis-wrong-type",
        "{r:?}"
    );
    Ok(())
}

on_every_backend!(a_sliding_window_of_the_earlier_hash_layout_is_read_and_replaced);

// ---------------------------------------------------------------------------------------------
// Item 7: a plugin naming one key suffix twice
// ---------------------------------------------------------------------------------------------

const DUP_PLUGIN: &str = "
local first, second
local function init(config) first, second = config.first, config.second end
local function rate_limit(req)
  return { check = {
    { key_suffix = 'x', limit = 5, window_ms = 3600000, algorithm = first },
    { key_suffix = 'x', limit = 5, window_ms = 3600000, algorithm = second },
  } }
end
return { init = init, rate_limit = rate_limit }
";

async fn a_plugin_naming_a_key_suffix_twice_fails_the_call_for_every_algorithm(
    b: Backend,
) -> Result<()> {
    let plugins = TempDir::new("dup")?;
    plugins.write("dup.lua", DUP_PLUGIN)?;
    let pairs = [
        ("fixed_window", "fixed_window"),
        ("sliding_window", "sliding_window"),
        ("sliding_log", "sliding_log"),
        ("token_bucket", "token_bucket"),
        ("gcra", "gcra"),
        ("fixed_window", "gcra"),
    ];
    let mut yaml = String::from("app: dup\nrules:\n");
    for (i, (a, b)) in pairs.iter().enumerate() {
        yaml.push_str(&format!(
            "  fb{i}:\n    rate_limit:\n      plugin: {{ name: dup, config: {{ first: {a}, second: {b} }} }}\n      fallback: {{ algorithm: fixed_window, limit: 3, window: 1h }}\n  bare{i}:\n    rate_limit: {{ plugin: {{ name: dup, config: {{ first: {a}, second: {b} }} }} }}\n"
        ));
    }
    let policies = policy_dir(&[("dup.yaml", &yaml)])?;
    let dir = plugins.path().to_string_lossy().to_string();
    let p = Patternd::start(&b.url(), policies.path(), &["--plugins", &dir]).await?;
    for (i, pair) in pairs.iter().enumerate() {
        // With a fallback: the fallback decides, and says so.
        for left in [2, 1, 0] {
            let r = p.check("dup", &format!("fb{i}"), "u", 1).await?;
            assert_eq!((r.status, r.remaining()), (200, left), "{pair:?}: {r:?}");
            assert_eq!(r.json["fallback"], json!(true), "{pair:?}: {r:?}");
        }
        // Without: the call fails like any bad decision.
        let r = p.check("dup", &format!("bare{i}"), "u", 1).await?;
        r.assert_problem(500);
        assert!(r.detail().contains("plugin failed"), "{r:?}");
    }
    // The plugin's keys were never touched.
    let keys: Vec<String> = b.scan_names().await?;
    assert!(keys.iter().all(|k| !k.contains(":p.x.")), "{keys:?}");
    drop(p);
    Ok(())
}

on_every_backend!(a_plugin_naming_a_key_suffix_twice_fails_the_call_for_every_algorithm);

// ---------------------------------------------------------------------------------------------
// Item 8: window roll-over against a reference model on Redis' clock
// ---------------------------------------------------------------------------------------------

/// The algorithms as documented, in ms of Redis TIME. `available(t)` is what a request could
/// take at `t` (admitted iff it is at least the cost); `charge(t, cost)` records an admission.
/// For a fixed history, `available` never decreases as `t` grows, and never decreases when an
/// admission moves earlier: so with every admission at the start of its request's TIME bracket
/// and the decision at its end, the model is the most permissive the engine could be, and with
/// admissions at the end and decisions at the start, the strictest. Two exceptions, where a
/// later admission leaves more available, are settled per admission in `Run::verify`: a fixed
/// window that ends inside the bracket (joined or opened), and a sliding window whose counts
/// the admission forgets (`forget_idle`).
#[derive(Debug, Clone)]
enum Model {
    Fixed {
        limit: f64,
        window: f64,
        used: f64,
        last_ms: Option<f64>,
    },
    Sliding {
        limit: f64,
        window: f64,
        w: Option<f64>,
        c: f64,
        p: f64,
        l: f64,
    },
    Log {
        limit: f64,
        window: f64,
        entries: Vec<(f64, f64)>,
    },
    Bucket {
        window: f64,
        limit: f64,
        burst: f64,
        tokens: f64,
        ts: Option<f64>,
    },
    Gcra {
        window: f64,
        limit: f64,
        burst: f64,
        tat: Option<f64>,
    },
    Leases {
        limit: f64,
        lease: f64,
        held: Vec<(f64, f64)>,
    },
}

impl Model {
    fn new(algorithm: &str, limit: f64, window: f64, burst: f64) -> Self {
        match algorithm {
            "fixed_window" => Model::Fixed {
                limit,
                window,
                used: 0.0,
                last_ms: None,
            },
            "sliding_window" => Model::Sliding {
                limit,
                window,
                w: None,
                c: 0.0,
                p: 0.0,
                l: 0.0,
            },
            "sliding_log" => Model::Log {
                limit,
                window,
                entries: Vec::new(),
            },
            "token_bucket" => Model::Bucket {
                window,
                limit,
                burst,
                tokens: burst,
                ts: None,
            },
            "gcra" => Model::Gcra {
                window,
                limit,
                burst,
                tat: None,
            },
            _ => Model::Leases {
                limit,
                lease: window,
                held: Vec::new(),
            },
        }
    }

    /// The sliding window's (current, previous) counts rolled on to `t`'s window. The newest
    /// admission's rule is not applied: `available` applies it, `forget_idle` persists it.
    fn sliding_counts(w: Option<f64>, c: f64, p: f64, window: f64, t: f64) -> (f64, f64) {
        let cur = (t / window).floor();
        match w {
            None => (0.0, 0.0),
            Some(w) if w == cur => (c, p),
            Some(w) if w == cur - 1.0 => (0.0, c),
            Some(_) => (0.0, 0.0),
        }
    }

    /// What the sliding window's script does at an admission at `t` whose newest admitted
    /// request is a window old: it drops both counts, for good (the previous count would
    /// otherwise weigh again after this admission). No other algorithm forgets anything.
    fn forget_idle(&mut self, t: f64) {
        if let Model::Sliding {
            window, c, p, l, ..
        } = self
            && *l <= t - *window
        {
            (*c, *p) = (0.0, 0.0);
        }
    }

    fn available(&self, t: f64) -> f64 {
        match self {
            Model::Fixed {
                limit,
                used,
                last_ms,
                ..
            } => {
                // Redis keeps a key through its expiry millisecond.
                let live = last_ms.is_some_and(|e| t.floor() <= e);
                limit - if live { *used } else { 0.0 }
            }
            Model::Sliding {
                limit,
                window,
                w,
                c,
                p,
                l,
            } => {
                // Nothing admitted within the last window: nothing inside it.
                if *l <= t - *window {
                    return *limit;
                }
                let (c, p) = Self::sliding_counts(*w, *c, *p, *window, t);
                let elapsed = t - (t / window).floor() * window;
                limit - (p * (window - elapsed) / window + c)
            }
            Model::Log {
                limit,
                window,
                entries,
            } => {
                limit
                    - entries
                        .iter()
                        .filter(|(s, _)| *s > t - window)
                        .map(|(_, c)| c)
                        .sum::<f64>()
            }
            Model::Bucket {
                window,
                limit,
                burst,
                tokens,
                ts,
            } => match ts {
                None => *burst,
                Some(ts) => burst.min(tokens + (t - ts).max(0.0) * limit / window),
            },
            Model::Gcra {
                window,
                limit,
                burst,
                tat,
            } => {
                let period = window / limit;
                let tat = tat.unwrap_or(t).max(t);
                // Units that fit: cost c fits iff t >= tat + c*T - burst*T.
                (t + burst * period - tat) / period
            }
            Model::Leases { limit, held, .. } => {
                limit
                    - held
                        .iter()
                        .filter(|(e, _)| *e > t)
                        .map(|(_, c)| c)
                        .sum::<f64>()
            }
        }
    }

    fn charge(&mut self, t: f64, cost: f64) {
        match self {
            Model::Fixed {
                window,
                used,
                last_ms,
                ..
            } => {
                if !last_ms.is_some_and(|e| t.floor() <= e) {
                    *used = 0.0;
                    *last_ms = Some(t.floor() + *window);
                }
                *used += cost;
            }
            Model::Sliding {
                window, w, c, p, l, ..
            } => {
                let (cc, pp) = Self::sliding_counts(*w, *c, *p, *window, t);
                *w = Some((t / *window).floor());
                *c = cc + cost;
                *p = pp;
                *l = t;
            }
            Model::Log { entries, .. } => entries.push((t, cost)),
            Model::Bucket { .. } => {
                let now = self.available(t);
                if let Model::Bucket { tokens, ts, .. } = self {
                    *tokens = now - cost;
                    *ts = Some(t);
                }
            }
            Model::Gcra {
                window, limit, tat, ..
            } => {
                let period = *window / *limit;
                *tat = Some(tat.unwrap_or(t).max(t) + cost * period);
            }
            Model::Leases { lease, held, .. } => held.push((t + *lease, cost)),
        }
    }

    /// A fixed window's last millisecond, once it has one.
    fn fixed_end(&self) -> Option<f64> {
        match self {
            Model::Fixed { last_ms, .. } => *last_ms,
            _ => None,
        }
    }

    /// A fixed window's state, as an answer reported it.
    fn set_fixed(&mut self, count: f64, last: f64) {
        if let Model::Fixed { used, last_ms, .. } = self {
            *used = count;
            *last_ms = Some(last);
        }
    }

    fn admits(&self, t: f64, cost: f64) -> bool {
        // A microsecond of tolerance: the engine's times are doubles too.
        let slack = match self {
            Model::Gcra { window, limit, .. } => 0.001 / (window / limit),
            _ => 1e-6,
        };
        self.available(t) + slack >= cost
    }

    /// When a request of `cost` would be admitted, if nothing else is admitted before.
    fn admitted_at(&self, from: f64, cost: f64, horizon: f64) -> f64 {
        if self.admits(from, cost) {
            return from;
        }
        let (mut lo, mut hi) = (from, from + horizon);
        // A fixed number of halvings: an epoch in ms has no finer resolution than about
        // 2^-12 ms, so a tolerance below it would never be reached.
        for _ in 0..64 {
            let mid = (lo + hi) / 2.0;
            if self.admits(mid, cost) {
                hi = mid
            } else {
                lo = mid
            }
        }
        hi
    }
}

/// A rule of the roll-over test.
struct Case {
    rule: &'static str,
    algorithm: &'static str,
    limit: u64,
    window_ms: u64,
    burst: u64,
}

impl Case {
    fn capacity(&self) -> u64 {
        if matches!(self.algorithm, "token_bucket" | "gcra") {
            self.burst
        } else {
            self.limit
        }
    }

    fn yaml(&self) -> String {
        let span = if self.algorithm == "concurrency" {
            "lease"
        } else {
            "window"
        };
        let burst = if matches!(self.algorithm, "token_bucket" | "gcra") {
            format!(", burst: {}", self.burst)
        } else {
            String::new()
        };
        format!(
            "  {}: {{ rate_limit: {{ algorithm: {}, limit: {}, {span}: {}ms{burst} }} }}\n",
            self.rule, self.algorithm, self.limit, self.window_ms
        )
    }
}

const CASES: &[Case] = &[
    Case {
        rule: "fw-1s",
        algorithm: "fixed_window",
        limit: 6,
        window_ms: 1000,
        burst: 6,
    },
    Case {
        rule: "sw-1s",
        algorithm: "sliding_window",
        limit: 6,
        window_ms: 1000,
        burst: 6,
    },
    Case {
        rule: "sl-1s",
        algorithm: "sliding_log",
        limit: 6,
        window_ms: 1000,
        burst: 6,
    },
    Case {
        rule: "tb-1s",
        algorithm: "token_bucket",
        limit: 6,
        window_ms: 1000,
        burst: 9,
    },
    Case {
        rule: "gc-1s",
        algorithm: "gcra",
        limit: 6,
        window_ms: 1000,
        burst: 9,
    },
    Case {
        rule: "cc-1s",
        algorithm: "concurrency",
        limit: 6,
        window_ms: 1000,
        burst: 6,
    },
    Case {
        rule: "fw-2s",
        algorithm: "fixed_window",
        limit: 5,
        window_ms: 2000,
        burst: 5,
    },
    Case {
        rule: "sw-2s",
        algorithm: "sliding_window",
        limit: 5,
        window_ms: 2000,
        burst: 5,
    },
    Case {
        rule: "fw-400",
        algorithm: "fixed_window",
        limit: 4,
        window_ms: 400,
        burst: 4,
    },
    Case {
        rule: "sw-400",
        algorithm: "sliding_window",
        limit: 4,
        window_ms: 400,
        burst: 4,
    },
    Case {
        rule: "sl-400",
        algorithm: "sliding_log",
        limit: 4,
        window_ms: 400,
        burst: 4,
    },
    Case {
        rule: "tb-400",
        algorithm: "token_bucket",
        limit: 4,
        window_ms: 400,
        burst: 3,
    },
    Case {
        rule: "gc-400",
        algorithm: "gcra",
        limit: 4,
        window_ms: 400,
        burst: 6,
    },
    Case {
        rule: "cc-400",
        algorithm: "concurrency",
        limit: 4,
        window_ms: 400,
        burst: 4,
    },
];

/// One request, bracketed by two reads of Redis TIME: the script ran between them.
struct Bracketed {
    before: f64,
    after: f64,
    reply: Reply,
}

struct Run<'a> {
    p: &'a Patternd,
    conn: redis::aio::MultiplexedConnection,
    case: &'a Case,
    /// Admissions at the start of their brackets, decisions at the end; and the reverse.
    permissive: Model,
    strict: Model,
    decisions: u64,
    /// Decisions the two models agree on: checked exactly, not only bounded.
    exact: u64,
}

impl Run<'_> {
    async fn request(&mut self, cost: u64) -> Result<Bracketed> {
        let before = redis_now_ms(&mut self.conn).await?;
        let reply = self.p.check("roll", self.case.rule, "id", cost).await?;
        let after = redis_now_ms(&mut self.conn).await?;
        let b = Bracketed {
            before,
            after,
            reply,
        };
        self.verify(&b, cost)?;
        Ok(b)
    }

    /// The decision, `remaining` and `retry_after_ms` are the reference algorithm's at some
    /// moment of the bracket.
    fn verify(&mut self, b: &Bracketed, cost: u64) -> Result<()> {
        let (case, r, c) = (self.case, &b.reply, cost as f64);
        let ctx = || {
            format!(
                "{} cost {cost} in [{:.3}, {:.3}]: {r:?}",
                case.rule, b.before, b.after
            )
        };
        ensure!(!r.degraded(), "{}", ctx());
        check_fields(r).with_context(ctx)?;
        self.decisions += 1;
        let (perm, strict) = (&self.permissive, &self.strict);
        let (may_admit, must_admit) = (perm.admits(b.after, c), strict.admits(b.before, c));
        if may_admit == must_admit {
            self.exact += 1;
        }
        let remaining = r.remaining() as f64;
        if r.allowed() {
            ensure!(may_admit, "admitted where the model denies: {}", ctx());
            let hi = (perm.available(b.after) - c + 1e-6).floor();
            let lo = (strict.available(b.before) - c - 1e-6).floor();
            ensure!(
                lo <= remaining && remaining <= hi,
                "remaining not in [{lo}, {hi}]: {}",
                ctx()
            );
            // Redis' window ends somewhere between the two models' ends: unless the bracket
            // is before both (the admission joined it) or after both (it opened a new one),
            // either may have happened.
            let straddled = match (self.permissive.fixed_end(), self.strict.fixed_end()) {
                (Some(earliest), Some(latest)) => {
                    b.after.floor() > earliest && b.before.floor() <= latest
                }
                _ => false,
            };
            // A sliding window's admission forgets the counts if the newest admission before
            // it is a window old; the later it comes, the more it forgets, so no single moment
            // of the bracket is the most (or least) permissive. The permissive model forgets
            // if the script may have (its newest admission at its earliest, this one at its
            // latest), the strict one only if the script must have; a microsecond to spare
            // either way, as the script's times are doubles and its `l` went through text.
            self.permissive.forget_idle(b.after + 0.001);
            self.strict.forget_idle(b.before - 0.001);
            self.permissive.charge(b.before, c);
            self.strict.charge(b.after, c);
            if straddled {
                // Joined or opened: no single moment of the bracket gives the most (or least)
                // permissive state after it. The answer says which: its count is exact,
                // its window's end known to the bracket's width.
                let reset = r.u64_field("reset_after_ms") as f64;
                let used = case.limit as f64 - remaining;
                ensure!(
                    used >= c,
                    "an admission of {c} leaves {remaining} of {}: {}",
                    case.limit,
                    ctx()
                );
                // The script reports PTTL + 1 (see `up` in the prelude), and its PTTL was
                // read at some millisecond of the bracket.
                self.permissive
                    .set_fixed(used, b.before.floor() + reset - 1.0);
                self.strict.set_fixed(used, b.after.floor() + reset);
            }
        } else {
            ensure!(!must_admit, "denied where the model admits: {}", ctx());
            let hi = perm.available(b.after).max(0.0) + 1e-6;
            let lo = strict.available(b.before).max(0.0) - 1e-6;
            ensure!(
                lo.floor() <= remaining && remaining <= hi.floor(),
                "remaining not in [{lo}, {hi}]: {}",
                ctx()
            );
            let horizon = 4.0
                * case.window_ms as f64
                * (case.burst.max(case.limit) as f64 / case.limit as f64);
            let earliest = perm.admitted_at(b.after, c, horizon) - b.after;
            let latest = strict.admitted_at(b.before, c, horizon) - b.before;
            let retry = r.u64_field("retry_after_ms") as f64;
            ensure!(
                retry >= earliest - 0.01 && retry <= latest.max(1.0) + 1.01,
                "retry_after_ms not in [{earliest:.3}, {:.3}]: {}",
                latest + 1.0,
                ctx()
            );
        }
        Ok(())
    }

    /// Requests of the costs in turn until one is denied (at most 200).
    async fn until_denied(&mut self, costs: &[u64]) -> Result<(u64, Bracketed)> {
        for i in 0..200 {
            let cost = costs[i % costs.len()].min(self.case.capacity());
            let b = self.request(cost).await?;
            if !b.reply.allowed() {
                return Ok((cost, b));
            }
        }
        bail!("{}: 200 requests and no denial", self.case.rule)
    }
}

async fn roll_over(p: &Patternd, redis: &Backend, case: &Case) -> Result<(u64, u64)> {
    let (limit, window, burst) = (case.limit as f64, case.window_ms as f64, case.burst as f64);
    let model = Model::new(case.algorithm, limit, window, burst);
    let mut run = Run {
        p,
        // Only for TIME: any node's clock is the machine's.
        conn: redis.conn_for_key(case.rule).await?,
        case,
        permissive: model.clone(),
        strict: model,
        decisions: 0,
        exact: 0,
    };
    let costs = [1, 2, 1, 1, 3];
    for cycle in 0..6 {
        let (cost, denied) = run.until_denied(&costs[cycle % 2..]).await?;
        // Waiting exactly the reported retry_after_ms is enough.
        let retry = denied.reply.u64_field("retry_after_ms");
        tokio::time::sleep(Duration::from_millis(retry)).await;
        let b = run.request(cost).await?;
        ensure!(
            b.reply.allowed(),
            "{}: denied after waiting retry_after_ms = {retry}: {:?}",
            case.rule,
            b.reply
        );
        match cycle % 3 {
            // Part of a window passes: a partial refill, or a roll-over for short windows.
            0 => tokio::time::sleep(Duration::from_millis(case.window_ms / 3)).await,
            // Waiting exactly the reported reset_after_ms gives the whole capacity back.
            1 => {
                let reset = b.reply.u64_field("reset_after_ms");
                tokio::time::sleep(Duration::from_millis(reset)).await;
                let full = run.request(case.capacity()).await?;
                ensure!(
                    full.reply.allowed(),
                    "{}: the full capacity was not back after reset_after_ms = {reset}: {:?}",
                    case.rule,
                    full.reply
                );
            }
            _ => {}
        }
    }
    Ok((run.decisions, run.exact))
}

async fn window_roll_over_matches_the_model_on_redis_time(b: Backend) -> Result<()> {
    let mut yaml = String::from("app: roll\nrules:\n");
    for case in CASES {
        yaml.push_str(&case.yaml());
    }
    // A loaded machine must not turn a decision into a degraded one.
    let w = World::on(b, &[("roll.yaml", &yaml)], &["--redis-timeout", "10s"]).await?;
    // All at once: every case runs for several of its windows; the checks are sound however
    // loaded the machine is (only the brackets get wider), and the test takes as long as the
    // slowest case.
    let w = std::sync::Arc::new(w);
    let runs = burst(CASES.len(), |i| {
        let (w, case) = (w.clone(), &CASES[i]);
        async move { Ok((case.rule, roll_over(&w.patternd, &w.redis, case).await)) }
    })
    .await?;
    for (rule, res) in runs {
        let (decisions, exact) = res?;
        eprintln!("{rule}: {decisions} decisions, {exact} exactly determined by the model");
    }
    Ok(())
}

on_every_backend!(window_roll_over_matches_the_model_on_redis_time);
