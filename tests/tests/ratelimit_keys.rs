//! Key hygiene, read back from Redis itself: every key patternd writes has a TTL, lives in its
//! app's namespace, and carries the (escaped) entity id as its cluster hash tag, whatever the
//! id contains.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use patternd_e2e::{Backend, World, on_every_backend};

const POLICY: &str = "app: hyg
rules:
  fw:
    rate_limit: { algorithm: fixed_window, limit: 5, window: 1m }
  sw:
    rate_limit: { algorithm: sliding_window, limit: 5, window: 1m }
  sl:
    rate_limit: { algorithm: sliding_log, limit: 5, window: 1m }
  tb:
    rate_limit: { algorithm: token_bucket, limit: 5, window: 1m }
  gc:
    rate_limit: { algorithm: gcra, limit: 5, window: 1m }
  cc:
    rate_limit: { algorithm: concurrency, limit: 5, lease: 1m }
  multi:
    rate_limit:
      limits:
        - { algorithm: fixed_window, limit: 5, window: 1m }
        - { algorithm: sliding_log, limit: 3, window: 1h }
        - { algorithm: gcra, limit: 9, window: 1h, burst: 4 }
";

/// Key suffixes per rule, as the key builder numbers them (index + algorithm code).
const RULES: [(&str, &[&str]); 7] = [
    ("fw", &["0fw"]),
    ("sw", &["0sw"]),
    ("sl", &["0wl"]),
    ("tb", &["0tb"]),
    ("gc", &["0gc"]),
    ("cc", &["0cl", "0cl.n"]),
    ("multi", &["0fw", "1wl", "2gc"]),
];

/// Ids built to break a naive key builder: braces that would move the hash tag, colons and
/// suffixes that would forge another key, `%` and escape look-alikes that would collide after
/// escaping, glob characters, control characters, and non-ASCII text.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "plain",
        "{",
        "}",
        "{}",
        "{x}",
        "a}:0fw",
        "}:0fw{",
        "x}:0fw{y",
        "%",
        "%7B",
        "%7D",
        "%25",
        "%%7D",
        "a:b:c",
        ":",
        "hyg:ratelimit:fw:{plain}:0fw",
        "other-app:ratelimit:fw:{plain}:0fw",
        "*",
        "?[a-z]",
        "line\nbreak",
        "\r\n",
        "tab\there",
        "nul\u{0}byte",
        " spaced ",
        "ünïcødé ✓ 🚀",
        "ｆｕｌｌｗｉｄｔｈ｛｝",
        "\u{202e}rtl",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // The longest id allowed, made of braces (which all grow threefold when escaped).
    ids.push("{}".repeat(256));
    ids
}

/// The escaping the key builder promises: `%`, `{`, `}` → `%25`, `%7B`, `%7D`.
fn escaped(id: &str) -> String {
    let mut s = String::new();
    for c in id.chars() {
        match c {
            '%' => s.push_str("%25"),
            '{' => s.push_str("%7B"),
            '}' => s.push_str("%7D"),
            c => s.push(c),
        }
    }
    s
}

/// The hash tag Redis Cluster uses: between the first `{` and the next `}`, if non-empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let close = open + 1 + key[open + 1..].iter().position(|&b| b == b'}')?;
    (close > open + 1).then(|| &key[open + 1..close])
}

async fn every_key_has_ttl_namespace_and_hash_tag_even_for_hostile_ids(b: Backend) -> Result<()> {
    let w = World::on(b, &[("hyg.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    let ids = hostile_ids();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());
    for id in &ids {
        assert!(id.len() <= 512);
        for (rule, _) in RULES {
            // Two requests: the second updates existing keys, which must keep their TTL.
            for _ in 0..2 {
                let r = p.check("hyg", rule, id, 1).await?;
                assert_eq!(r.status, 200, "{rule} {id:?}: {r:?}");
                assert!(!r.degraded(), "{r:?}");
            }
        }
        // The admitted count per id proves no two ids share a counter: each saw only its own
        // two requests (remaining 5 - 2 - 1 = 2 on the third).
        let r = p.check("hyg", "fw", id, 1).await?;
        assert_eq!(
            r.remaining(),
            2,
            "id {id:?} shares its counter with another id: {r:?}"
        );
    }

    let mut nodes = w.redis.nodes().await?;
    let keys = w.redis.scan_all().await?;
    let mut expected = BTreeMap::new();
    for id in &ids {
        for (rule, subs) in RULES {
            for sub in subs {
                let k = format!("hyg:ratelimit:{rule}:{{{}}}:{sub}", escaped(id));
                expected.insert(k.into_bytes(), id.clone());
            }
        }
    }
    // Exactly the expected keys: one set per (id, rule), none shared, none stray. Equal
    // counts with distinct expected names show the id → key map is injective.
    assert_eq!(expected.len(), ids.len() * 10);
    let found: BTreeSet<&Vec<u8>> = keys.iter().collect();
    let want: BTreeSet<&Vec<u8>> = expected.keys().collect();
    let missing: Vec<_> = want
        .difference(&found)
        .map(|k| String::from_utf8_lossy(k))
        .collect();
    let stray: Vec<_> = found
        .difference(&want)
        .map(|k| String::from_utf8_lossy(k))
        .collect();
    assert!(
        missing.is_empty() && stray.is_empty(),
        "missing {missing:?}, stray {stray:?}"
    );

    for key in &keys {
        let shown = String::from_utf8_lossy(key);
        let id = &expected[key];
        // Namespace: app, pattern, rule, then the tag.
        let Some(rule) = RULES
            .iter()
            .map(|(r, _)| *r)
            .find(|r| key.starts_with(format!("hyg:ratelimit:{r}:{{").as_bytes()))
        else {
            bail!("key outside the app namespace: {shown:?}");
        };
        // Hash tag: exactly the escaped id, so all of an id's keys share one cluster slot and
        // nothing of the id sits outside the tag where it could forge a suffix.
        let tag = hash_tag(key).unwrap_or_default();
        assert_eq!(tag, escaped(id).as_bytes(), "hash tag of {shown:?}");
        let prefix_len = format!("hyg:ratelimit:{rule}:{{").len();
        let after = &key[prefix_len + tag.len()..];
        assert!(
            after.starts_with(b"}:") && !after[2..].contains(&b'{') && !after[2..].contains(&b'}'),
            "{shown:?}"
        );
        // TTL on everything.
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(nodes.conn(key)?)
            .await?;
        assert!(pttl > 0, "key without expiry (PTTL {pttl}): {shown:?}");
    }
    // The hostile ids spread over every primary of a cluster.
    let used: BTreeSet<u16> = keys
        .iter()
        .map(|k| nodes.port_of(k))
        .collect::<Result<_>>()?;
    assert_eq!(used.len(), nodes.len(), "keys on {used:?}");
    Ok(())
}

on_every_backend!(every_key_has_ttl_namespace_and_hash_tag_even_for_hostile_ids);

async fn releasing_and_denying_keep_ttls(b: Backend) -> Result<()> {
    // Denials and lease releases also touch keys; none of those paths may leave a key
    // without an expiry (or create one).
    let w = World::on(b, &[("hyg.yaml", POLICY)], &[]).await?;
    let p = &w.patternd;
    for (rule, _) in RULES {
        for _ in 0..8 {
            p.check("hyg", rule, "deny-me", 1).await?;
        }
        assert_eq!(
            p.check("hyg", rule, "deny-me", 1).await?.status,
            429,
            "{rule}"
        );
    }
    let mut leases = Vec::new();
    for _ in 0..3 {
        let r = p.check("hyg", "cc", "lessee", 1).await?;
        leases.push(r.lease().unwrap_or_default().to_string());
    }
    let r = p.release("hyg", "cc", &leases[0]).await?;
    assert_eq!(r.json["released"], true, "{r:?}");
    // Querying with cost 0 on ids never seen must not create keys.
    for (rule, _) in RULES {
        p.check("hyg", rule, "ghost", 0).await?;
    }

    let mut nodes = w.redis.nodes().await?;
    let keys = w.redis.scan_all().await?;
    assert_eq!(
        keys.len(),
        // Each rule's keys for `deny-me` (10), and the concurrency rule's two for `lessee`.
        10 + 2,
        "{:?}",
        keys.iter()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
    for key in &keys {
        let shown = String::from_utf8_lossy(key);
        assert!(!shown.contains("ghost"), "a cost-0 query wrote {shown:?}");
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(nodes.conn(key)?)
            .await?;
        assert!(pttl > 0, "key without expiry (PTTL {pttl}): {shown:?}");
    }
    Ok(())
}

on_every_backend!(releasing_and_denying_keep_ttls);
