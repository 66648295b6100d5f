//! Leaderboards end to end over HTTP against a real Redis, on a standalone server and on a
//! three-primary cluster: every update mode × tie mode × order against a reference model
//! written here (random submissions, then every read compared exactly), trimming with
//! `max_size`, around-me at the top and bottom edges, period rollover with 2 s periods
//! (waiting on the clock, never on a timing threshold), aggregates, scores at the precision
//! limit, the TTL of every key, bad input.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use patternd_e2e::{Backend, Patternd, Reply, World, eventually, on_every_backend};
use serde_json::{Value, json};

const MODES: [&str; 3] = ["best", "latest", "sum"];
const TIES: [&str; 2] = ["first", "shared"];
const ORDERS: [&str; 2] = ["desc", "asc"];
/// The model test's board size: below its member count, so trimming happens.
const MODEL_MAX_SIZE: usize = 20;
const MODEL_MEMBERS: usize = 28;

/// One rule per update × ties × order, with 30-minute periods: their tiebreak unit is 1 ms,
/// so submits 2 ms apart reach their scores in distinct units and `first` is exact.
fn model_policy() -> String {
    let mut p = String::from("app: lb\nrules:\n");
    for m in MODES {
        for t in TIES {
            for o in ORDERS {
                p.push_str(&format!(
                    "  {m}-{t}-{o}: {{ leaderboard: {{ period: 30m, update: {m}, ties: {t}, order: {o}, max_size: {MODEL_MAX_SIZE}, max_page: 50 }} }}\n"
                ));
            }
        }
    }
    p
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The reference: what a board must answer, computed from the submissions alone.
struct Model {
    update: &'static str,
    first: bool,
    desc: bool,
    max_size: usize,
    /// member → (score, the submit number that set the score).
    members: HashMap<String, (i64, u64)>,
    seq: u64,
}

impl Model {
    fn better(&self, a: i64, b: i64) -> bool {
        if self.desc { a > b } else { a < b }
    }

    /// Best first: by score; equal scores by who reached them first (`first`), or as Redis
    /// orders equal scores (`shared`: by member, reversed for `desc`).
    fn order(&self) -> Vec<(String, i64, u64)> {
        let mut v: Vec<(String, i64, u64)> = self
            .members
            .iter()
            .map(|(m, (s, r))| (m.clone(), *s, *r))
            .collect();
        v.sort_by(|a, b| {
            let by_score = if self.desc {
                b.1.cmp(&a.1)
            } else {
                a.1.cmp(&b.1)
            };
            by_score.then_with(|| {
                if self.first {
                    a.2.cmp(&b.2)
                } else if self.desc {
                    b.0.as_bytes().cmp(a.0.as_bytes())
                } else {
                    a.0.as_bytes().cmp(b.0.as_bytes())
                }
            })
        });
        v
    }

    /// (member, score, rank) best first: `first` ranks by place, `shared` is competition
    /// ranking (1 + members with a strictly better score).
    fn ranked(&self) -> Vec<(String, i64, u64)> {
        let order = self.order();
        order
            .iter()
            .enumerate()
            .map(|(i, (m, s, _))| {
                let rank = if self.first {
                    i as u64 + 1
                } else {
                    order.iter().filter(|(_, o, _)| self.better(*o, *s)).count() as u64 + 1
                };
                (m.clone(), *s, rank)
            })
            .collect()
    }

    fn submit(&mut self, member: &str, score: i64) -> (i64, Option<u64>, bool) {
        self.seq += 1;
        let old = self.members.get(member).copied();
        let new = match (self.update, old) {
            ("sum", Some((o, _))) => o + score,
            ("best", Some((o, _))) if !self.better(score, o) => o,
            _ => score,
        };
        let improved = old.is_none_or(|(o, _)| self.better(new, o));
        let reached = match old {
            Some((o, r)) if o == new => r,
            _ => self.seq,
        };
        self.members.insert(member.to_string(), (new, reached));
        let order = self.order();
        for (m, _, _) in order.iter().skip(self.max_size) {
            self.members.remove(m);
        }
        let rank = self
            .ranked()
            .into_iter()
            .find(|(m, _, _)| m == member)
            .map(|(_, _, r)| r);
        (new, rank, improved)
    }
}

fn entries(r: &Reply) -> Vec<(String, i64, u64)> {
    r.json["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["member"].as_str().unwrap_or_default().to_string(),
                        e["score"].as_i64().unwrap_or(i64::MIN),
                        e["rank"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes a path segment (ids hold `{`, `}`, `%`, spaces, non-ASCII).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Submits random scores to one board of `rule` and compares every answer with the model,
/// then every read. Ok(false) when a period boundary fell within the run (the caller runs
/// it again on a fresh board): the model is of one period.
async fn run_model(p: &Patternd, rule: &str, board: &str, seed: u64) -> Result<bool> {
    let mut parts = rule.split('-');
    let (update, ties, order) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let update: &'static str = MODES
        .iter()
        .find(|m| **m == update)
        .copied()
        .unwrap_or("best");
    let mut model = Model {
        update,
        first: ties == "first",
        desc: order == "desc",
        max_size: MODEL_MAX_SIZE,
        members: HashMap::new(),
        seq: 0,
    };
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..MODEL_MEMBERS)
        .map(|i| {
            if i == 0 {
                "zoë {x}%".to_string()
            } else {
                format!("m{i:02}")
            }
        })
        .collect();
    let base = format!("/v1/leaderboards/lb/{rule}/{}", seg(board));
    let mut period: Option<String> = None;
    for _ in 0..160 {
        let member = &names[rng.below(names.len() as u64) as usize];
        let score = match (update, model.first) {
            ("sum", true) => rng.below(6) as i64,
            ("sum", false) => rng.below(9) as i64 - 2,
            _ => rng.below(12) as i64,
        };
        let r = p
            .post_json(&base, &json!({ "member": member, "score": score }))
            .await?;
        ensure!(r.status == 200, "{rule}: {r:?}");
        let label = r.json["period"].as_str().unwrap_or_default().to_string();
        match &period {
            None => period = Some(label),
            Some(p0) if *p0 != label => return Ok(false),
            Some(_) => {}
        }
        let (want_score, want_rank, want_improved) = model.submit(member, score);
        ensure!(
            r.json["score"].as_i64() == Some(want_score)
                && r.json["rank"].as_u64() == want_rank
                && r.json["improved"].as_bool() == Some(want_improved),
            "{rule}: submit {member} {score}: got {}, want score {want_score} rank {want_rank:?} improved {want_improved}",
            r.json
        );
        // Distinct 1 ms tiebreak units for consecutive submits (see `model_policy`).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let period = period.unwrap_or_default();
    let q = format!("period={}", seg(&period));
    let ranked = model.ranked();
    // Count.
    let r = p.get(&format!("{base}/count?{q}")).await?;
    ensure!(
        r.json["count"].as_u64() == Some(ranked.len() as u64),
        "{rule}: {r:?}"
    );
    // Every member: score and rank, or 404.
    for name in &names {
        let r = p.get(&format!("{base}/members/{}?{q}", seg(name))).await?;
        match ranked.iter().find(|(m, _, _)| m == name) {
            Some((_, s, rank)) => ensure!(
                r.status == 200
                    && r.json["score"].as_i64() == Some(*s)
                    && r.json["rank"].as_u64() == Some(*rank),
                "{rule}: {name}: got {r:?}, want {s} #{rank}"
            ),
            None => ensure!(r.status == 404, "{rule}: {name} was trimmed: {r:?}"),
        }
    }
    // Every page of 7, and the empty one just past the end (offsets stay below max_size).
    for offset in (0..ranked.len())
        .step_by(7)
        .chain([ranked.len()])
        .filter(|o| *o < MODEL_MAX_SIZE)
    {
        let r = p
            .get(&format!("{base}?{q}&offset={offset}&limit=7"))
            .await?;
        ensure!(r.status == 200, "{rule}: {r:?}");
        let want: Vec<_> = ranked.iter().skip(offset).take(7).cloned().collect();
        ensure!(
            entries(&r) == want,
            "{rule}: page at {offset}: got {:?}, want {want:?}",
            entries(&r)
        );
        ensure!(
            r.json["count"].as_u64() == Some(ranked.len() as u64),
            "{rule}: {r:?}"
        );
    }
    // Around every member, k = 2: fewer at the edges.
    for (i, (name, _, _)) in ranked.iter().enumerate() {
        let r = p
            .get(&format!("{base}/members/{}/around?{q}&k=2", seg(name)))
            .await?;
        let want: Vec<_> = ranked[i.saturating_sub(2)..(i + 3).min(ranked.len())].to_vec();
        ensure!(
            entries(&r) == want,
            "{rule}: around {name}: got {:?}, want {want:?}",
            entries(&r)
        );
    }
    Ok(true)
}

/// Every update × ties × order against the model.
async fn every_mode_matches_the_reference_model(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", &model_policy())], &[]).await?;
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    for m in MODES {
        for t in TIES {
            for o in ORDERS {
                let rule = format!("{m}-{t}-{o}");
                let mut done = false;
                for attempt in 0..3 {
                    seed = seed.wrapping_add(0x1234_5678_9ABC);
                    let board = format!("g{{{attempt}}}%");
                    if run_model(&w.patternd, &rule, &board, seed).await? {
                        done = true;
                        break;
                    }
                }
                ensure!(done, "{rule}: three runs crossed a period boundary");
            }
        }
    }
    Ok(())
}

const POLICY: &str = "app: lb
rules:
  chess: { leaderboard: { period: 2s, keep: 1, update: best, ties: first, max_page: 20 } }
  golf: { leaderboard: { period: 2s, keep: 2, update: sum, order: asc, ties: shared, aggregate_cache: 1ms } }
  alltime: { leaderboard: { ties: first, max_size: 5, max_score: 1000 } }
  wide: { leaderboard: { ties: first } }
  points: { leaderboard: { update: sum, ties: first } }
  open: { leaderboard: { update: latest } }
";

async fn submit(
    p: &Patternd,
    rule: &str,
    board: &str,
    member: &str,
    score: Value,
) -> Result<Reply> {
    p.post_json(
        &format!("/v1/leaderboards/lb/{rule}/{board}"),
        &json!({ "member": member, "score": score }),
    )
    .await
}

/// Waits on the clock until `rule`'s current period is not `label`; returns the new label.
async fn next_period(p: &Patternd, rule: &str, label: &str) -> Result<String> {
    eventually(Duration::from_secs(10), "the next period", || async {
        let r = p
            .get(&format!("/v1/leaderboards/lb/{rule}/x/count"))
            .await?;
        let now = r.json["period"].as_str().unwrap_or_default().to_string();
        Ok((now != label).then_some(now))
    })
    .await
}

/// 2 s periods: a new period starts empty, `previous` and the label read the closed one, an
/// aggregate adds both, and a board expires `keep` periods after its period ends.
async fn periods_roll_over(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    // Start right after a boundary, so the submits below share one period.
    let r = p.get("/v1/leaderboards/lb/golf/x/count").await?;
    let first = next_period(p, "golf", r.json["period"].as_str().unwrap_or_default()).await?;
    for (m, s) in [("ann", 70), ("bob", 72), ("cid", 68)] {
        let r = submit(p, "golf", "open", m, json!(s)).await?;
        ensure!(
            r.status == 200 && r.json["period"] == first.as_str(),
            "{r:?}"
        );
    }
    let second = next_period(p, "golf", &first).await?;
    let r = p.get("/v1/leaderboards/lb/golf/open").await?;
    ensure!(
        r.json["count"] == 0 && r.json["period"] == second.as_str(),
        "a new period starts empty: {r:?}"
    );
    for (m, s) in [("ann", 71), ("bob", 65)] {
        let r = submit(p, "golf", "open", m, json!(s)).await?;
        ensure!(r.status == 200, "{r:?}");
        if r.json["period"] != second.as_str() {
            bail!("the 2 s period ended within two submits (a stalled machine); run again");
        }
    }
    let prev = p
        .get("/v1/leaderboards/lb/golf/open?period=previous")
        .await?;
    let want = vec![
        ("cid".to_string(), 68, 1),
        ("ann".to_string(), 70, 2),
        ("bob".to_string(), 72, 3),
    ];
    ensure!(
        prev.json["period"] == first.as_str() && entries(&prev) == want,
        "{prev:?}"
    );
    let by_label = p
        .get(&format!(
            "/v1/leaderboards/lb/golf/open?period={}",
            seg(&first)
        ))
        .await?;
    ensure!(entries(&by_label) == want, "{by_label:?}");
    // Sum over both periods (order asc: the lowest total first).
    let agg = p
        .get("/v1/leaderboards/lb/golf/open/aggregate?last=2&member=ann")
        .await?;
    ensure!(agg.status == 200, "{agg:?}");
    ensure!(
        entries(&agg)
            == vec![
                ("cid".to_string(), 68, 1),
                ("bob".to_string(), 137, 2),
                ("ann".to_string(), 141, 3)
            ],
        "{agg:?}"
    );
    ensure!(
        agg.json["member"]["rank"] == 3 && agg.json["periods"] == json!([second, first]),
        "{agg:?}"
    );
    // Every key has a TTL: a period's board lives until `keep` periods after its end.
    for key in w.redis.scan_names().await? {
        let mut c = w.redis.conn_for_key(&key).await?;
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut c).await?;
        // -2 (gone) or 0: a 1 ms aggregate expiring since the SCAN; -1 would be no TTL.
        ensure!(ttl == -2 || (0..=6_000).contains(&ttl), "{key}: PTTL {ttl}");
    }
    // keep 2: the first period is readable two periods after it ends, then it is gone.
    let third = next_period(p, "golf", &second).await?;
    let fourth = next_period(p, "golf", &third).await?;
    let _ = next_period(p, "golf", &fourth).await?;
    eventually(
        Duration::from_secs(10),
        "the first period's board to expire",
        || async {
            let r = p
                .get(&format!(
                    "/v1/leaderboards/lb/golf/open/count?period={}",
                    seg(&first)
                ))
                .await?;
            Ok((r.json["count"] == 0).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// Around-me at the top and bottom edges, trimming by `max_size`, ties `first` on a board
/// without period, remove.
async fn edges_trimming_and_remove(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for (i, m) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let r = submit(p, "alltime", "g", m, json!(10 * (i + 1))).await?;
        ensure!(
            r.status == 200 && r.json["rank"] == 1 && r.json["improved"] == true,
            "{r:?}"
        );
    }
    let around = |m: &str, k: u64| {
        let path = format!("/v1/leaderboards/lb/alltime/g/members/{m}/around?k={k}");
        async move { p.get(&path).await }
    };
    let names = |r: &Reply| entries(r).into_iter().map(|e| e.0).collect::<Vec<_>>();
    ensure!(names(&around("e", 2).await?) == ["e", "d", "c"], "top edge");
    ensure!(
        names(&around("a", 2).await?) == ["c", "b", "a"],
        "bottom edge"
    );
    ensure!(names(&around("c", 1).await?) == ["d", "c", "b"], "middle");
    ensure!(
        names(&around("c", 9).await?) == ["e", "d", "c", "b", "a"],
        "both edges"
    );
    // Full (max_size 5): a worse score is trimmed at once, a better one drops the worst.
    let r = submit(p, "alltime", "g", "f", json!(5)).await?;
    ensure!(
        r.status == 200 && r.json["rank"].is_null(),
        "trimmed at once: {r:?}"
    );
    let r = submit(p, "alltime", "g", "f", json!(35)).await?;
    ensure!(r.json["rank"] == 3, "{r:?}");
    ensure!(
        p.get("/v1/leaderboards/lb/alltime/g/members/a")
            .await?
            .status
            == 404,
        "the worst was dropped"
    );
    // A tie with `first`: who reached 50 first stays ahead.
    let r = submit(p, "alltime", "g", "b", json!(50)).await?;
    ensure!(
        r.json["rank"] == 2,
        "a later equal score ranks below: {r:?}"
    );
    let r = p.get("/v1/leaderboards/lb/alltime/g/count").await?;
    ensure!(r.json["count"] == 5 && r.json["period"] == "all", "{r:?}");
    let r = p.delete("/v1/leaderboards/lb/alltime/g/members/e").await?;
    ensure!(r.json["removed"] == true, "{r:?}");
    let r = p.delete("/v1/leaderboards/lb/alltime/g/members/e").await?;
    ensure!(r.json["removed"] == false, "{r:?}");
    let r = p.get("/v1/leaderboards/lb/alltime/g/members/b").await?;
    ensure!(r.json["rank"] == 1 && r.json["score"] == 50, "{r:?}");
    // Ranks across boards: one call per board.
    submit(p, "alltime", "h", "b", json!(7)).await?;
    let r = p
        .post_json(
            "/v1/leaderboards/lb/alltime/_ranks",
            &json!({ "member": "b", "boards": ["g", "h", "none"] }),
        )
        .await?;
    ensure!(
        r.json["boards"]
            == json!([
                { "board": "g", "score": 50, "rank": 1 },
                { "board": "h", "score": 7, "rank": 1 },
                { "board": "none", "score": null, "rank": null },
            ]),
        "{r:?}"
    );
    // No expiry on a `period: none` board: its bound is max_size.
    for key in w.redis.scan_names().await? {
        ensure!(key.starts_with("lb:leaderboard:alltime:{"), "{key}");
    }
    Ok(())
}

/// With `ties: first` a score has 32 bits by default: 4294967295 is kept exactly, 4294967296
/// is a 400, and so is a sum that would pass it; a smaller `max_score` gives the time its
/// bits. Without the encoding, 2^53 is the limit.
async fn scores_at_the_precision_limit(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let r = submit(p, "wide", "g", "max", json!(4_294_967_295_u64)).await?;
    ensure!(
        r.status == 200 && r.json["score"] == 4_294_967_295_u64,
        "{r:?}"
    );
    let r = submit(p, "wide", "g", "next", json!(4_294_967_294_u64)).await?;
    ensure!(
        r.json["rank"] == 2,
        "one below the max ranks below it: {r:?}"
    );
    let r = p.get("/v1/leaderboards/lb/wide/g/members/max").await?;
    ensure!(
        r.json["score"] == 4_294_967_295_u64 && r.json["rank"] == 1,
        "{r:?}"
    );
    let r = submit(p, "wide", "g", "over", json!(4_294_967_296_u64)).await?;
    ensure!(
        r.status == 400 && r.json["type"] == "urn:patternd:problem:bad-request",
        "{r:?}"
    );
    ensure!(
        r.json["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("32 bits"),
        "{r:?}"
    );
    // A smaller max_score leaves more bits to the time: 10 score bits, 43 time bits.
    let r = submit(p, "alltime", "g", "max", json!(1000)).await?;
    ensure!(r.status == 200 && r.json["score"] == 1000, "{r:?}");
    let r = submit(p, "alltime", "g", "over", json!(1001)).await?;
    ensure!(
        r.status == 400
            && r.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("10 bits"),
        "{r:?}"
    );
    let admin = p.get("/admin/policies").await?;
    let rules = admin.json["apps"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let settings = |name: &str| {
        rules
            .iter()
            .find(|r| r["rule"] == name)
            .cloned()
            .unwrap_or_default()
    };
    ensure!(
        settings("wide")["score_bits"] == 32 && settings("wide")["time_bits"] == 21,
        "{admin:?}"
    );
    ensure!(
        settings("alltime")["time_bits"] == 43 && settings("alltime")["tie_time_unit_ms"] == 1,
        "{admin:?}"
    );
    let r = submit(p, "points", "g", "s", json!(4_294_967_000_u64)).await?;
    ensure!(r.status == 200, "{r:?}");
    let r = submit(p, "points", "g", "s", json!(295)).await?;
    ensure!(
        r.status == 200 && r.json["score"] == 4_294_967_295_u64,
        "{r:?}"
    );
    let r = submit(p, "points", "g", "s", json!(1)).await?;
    ensure!(
        r.status == 400
            && r.json["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("max_score"),
        "{r:?}"
    );
    let r = p.get("/v1/leaderboards/lb/points/g/members/s").await?;
    ensure!(
        r.json["score"] == 4_294_967_295_u64,
        "a refused sum changes nothing: {r:?}"
    );
    // Shared ties: doubles, exact to 2^53.
    let r = submit(p, "open", "g", "big", json!(9_007_199_254_740_992_u64)).await?;
    ensure!(
        r.status == 200 && r.json["score"] == 9_007_199_254_740_992_u64,
        "{r:?}"
    );
    let r = submit(p, "open", "g", "big", json!(9_007_199_254_740_994_u64)).await?;
    ensure!(r.status == 400, "{r:?}");
    let r = submit(p, "open", "g", "frac", json!(-2.5)).await?;
    ensure!(r.status == 200 && r.json["score"] == -2.5, "{r:?}");
    Ok(())
}

/// Bad input is a clear 4xx, problem+json.
async fn bad_input_is_a_clear_4xx(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let long = "x".repeat(513);
    for (r, status, says) in [
        (
            submit(p, "alltime", "g", "m", json!(1.5)).await?,
            400,
            "whole number",
        ),
        (
            submit(p, "alltime", "g", "m", json!(1e300)).await?,
            400,
            "max_score",
        ),
        (
            submit(p, "alltime", "g", "m", json!(-1)).await?,
            400,
            "whole number",
        ),
        (
            submit(p, "alltime", "g", "m", json!("12")).await?,
            400,
            "invalid JSON body",
        ),
        (
            submit(p, "alltime", "g", &long, json!(1)).await?,
            400,
            "513 bytes",
        ),
        (
            p.post_raw("/v1/leaderboards/lb/alltime/g", "[1]").await?,
            400,
            "JSON object",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g?limit=101").await?,
            400,
            "max_page",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g?offset=5").await?,
            400,
            "max_size",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g?rows=1").await?,
            400,
            "rows",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g/members/m/around?k=50")
                .await?,
            400,
            "max_page",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g/members/m/around")
                .await?,
            404,
            "not on this board",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g?period=previous")
                .await?,
            400,
            "no periods",
        ),
        (
            p.get("/v1/leaderboards/lb/chess/g?period=yesterday")
                .await?,
            400,
            "period's label",
        ),
        (
            p.get("/v1/leaderboards/lb/chess/g/aggregate?last=3")
                .await?,
            400,
            "`last` must be 1 … 2",
        ),
        (
            p.get("/v1/leaderboards/lb/alltime/g/aggregate?last=1")
                .await?,
            400,
            "no periods",
        ),
        (
            p.post_json(
                "/v1/leaderboards/lb/alltime/_ranks",
                &json!({ "member": "m", "boards": [] }),
            )
            .await?,
            400,
            "1 … 32",
        ),
        (p.get("/v1/leaderboards/lb/nope/g").await?, 404, "nope"),
    ] {
        ensure!(r.status == status, "want {status}: {r:?}");
        ensure!(
            r.headers
                .get("content-type")
                .is_some_and(|c| c == "application/problem+json"),
            "{r:?}"
        );
        ensure!(r.text.contains(says), "want `{says}` in {r:?}");
    }
    Ok(())
}

/// Reads of equal scores with `shared`: competition ranking 1-2-2-4 in every read.
async fn shared_ties_rank_1_2_2_4(b: Backend) -> Result<()> {
    let w = World::on(b, &[("lb.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for (m, s) in [("a", 9), ("b", 7), ("c", 7), ("d", 3), ("e", 7)] {
        submit(p, "open", "t", m, json!(s)).await?;
    }
    let r = p.get("/v1/leaderboards/lb/open/t?limit=5").await?;
    let ranks: Vec<u64> = entries(&r).into_iter().map(|e| e.2).collect();
    ensure!(ranks == [1, 2, 2, 2, 5], "{r:?}");
    let r = p.get("/v1/leaderboards/lb/open/t?offset=2&limit=3").await?;
    let ranks: Vec<u64> = entries(&r).into_iter().map(|e| e.2).collect();
    ensure!(ranks == [2, 2, 5], "a page starting inside a tie: {r:?}");
    let r = p.get("/v1/leaderboards/lb/open/t/members/c").await?;
    ensure!(r.json["rank"] == 2, "{r:?}");
    let r = p
        .get("/v1/leaderboards/lb/open/t/members/d/around?k=1")
        .await?;
    ensure!(
        entries(&r).into_iter().map(|e| e.2).collect::<Vec<_>>() == [2, 5],
        "{r:?}"
    );
    Ok(())
}

on_every_backend!(
    every_mode_matches_the_reference_model,
    periods_roll_over,
    edges_trimming_and_remove,
    scores_at_the_precision_limit,
    bad_input_is_a_clear_4xx,
    shared_ties_rank_1_2_2_4,
);

#[test]
fn model_ranks_compete_and_trim() {
    let mut m = Model {
        update: "best",
        first: false,
        desc: true,
        max_size: 3,
        members: HashMap::new(),
        seq: 0,
    };
    m.submit("a", 5);
    m.submit("b", 5);
    m.submit("c", 1);
    assert_eq!(m.submit("d", 3), (3, Some(3), true));
    assert_eq!(
        m.ranked().iter().map(|e| e.2).collect::<Vec<_>>(),
        [1, 1, 3]
    );
    assert_eq!(m.submit("a", 2), (5, Some(1), false));
}
