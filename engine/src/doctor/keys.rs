//! Per rule: its keys counted and weighed by a bounded sample of its namespace, keys without a
//! TTL that the key layout does not declare TTL-less, and the biggest keys.
//!
//! The one SCAN in patternd (ARCHITECTURE invariant 6): `SCAN cursor MATCH <prefix>* COUNT
//! 1000`, at most [`SCAN_CALLS`] calls per rule and server, and `TYPE` + `PTTL` + `MEMORY
//! USAGE` of at most [`SAMPLE`] of the keys found. So a rule costs at most 16 SCAN calls
//! (about 16 000 keys visited) and 3 × 64 cheap commands per server, whatever the size of the
//! instance: on a big one the counts are estimates (`keys_exact: false`), never a full walk,
//! and never KEYS.

use std::collections::HashSet;

use crate::compile::CompiledRule;
use crate::store::StoreError;
use crate::store::admin::{KeySample, Node};

use super::info::bytes;
use super::report::{Check, KeySize, RuleKeys};
use super::usage::{Eviction, Usage};

pub const SCAN_CALLS: u32 = 16;
pub const SCAN_COUNT: u32 = 1000;
pub const SAMPLE: usize = 64;
/// Keys above this are "big" (the seed guide: values over 1 MB belong elsewhere).
const BIG_KEY: u64 = 1 << 20;
const EXAMPLES: usize = 5;

/// The subs (the part after the hash tag, `}:<sub>`) of the keys the rule's key layout
/// declares without a TTL (write-behind journals and their dead letters, a queue's keys, a
/// stream and its dead letters: ARCHITECTURE invariant 2). The layout says so in its text
/// ("no TTL"), which `patternd compile` prints and the golden files pin.
pub fn ttl_less_subs(rule: &CompiledRule) -> HashSet<String> {
    rule.key_layout()
        .into_iter()
        .filter(|(_, what)| what.to_ascii_lowercase().contains("no ttl"))
        .filter_map(|(template, _)| Some(template.rsplit_once("}:")?.1.to_owned()))
        .collect()
}

/// The sub of a key (`app:p:r:{tag}:sub` → `sub`). Ids are escaped (`}` → `%7D`), so the
/// only `}:` in a key is the one after its tag.
fn sub_of(key: &str) -> Option<&str> {
    key.rsplit_once("}:").map(|(_, s)| s)
}

/// What one server's share of a rule's sample found.
#[derive(Debug, Default)]
pub struct Found {
    /// Keys that matched within the budget.
    pub matched: u64,
    /// The SCAN finished within the budget (so `matched` is exact).
    pub complete: bool,
    pub calls: u32,
    pub dbsize: u64,
    pub samples: Vec<KeySample>,
}

/// Walks at most `SCAN_CALLS` steps of `prefix*` on `node` and samples at most `SAMPLE` keys.
pub async fn scan(node: &mut Node, prefix: &str) -> Result<Found, StoreError> {
    let pattern = format!("{prefix}*");
    let mut found = Found {
        dbsize: node.dbsize().await?,
        ..Found::default()
    };
    let mut cursor = 0;
    let mut picked: Vec<Vec<u8>> = Vec::new();
    loop {
        let (next, keys) = node.scan(cursor, &pattern, SCAN_COUNT).await?;
        found.calls += 1;
        found.matched += keys.len() as u64;
        for k in keys {
            if picked.len() < SAMPLE {
                picked.push(k);
            }
        }
        cursor = next;
        if cursor == 0 {
            found.complete = true;
            break;
        }
        if found.calls >= SCAN_CALLS {
            break;
        }
    }
    found.samples = node.sample(&picked).await?;
    Ok(found)
}

/// The key count: exact when the SCAN finished; else the matches scaled by the share of the
/// keyspace the calls visited (each visits about `SCAN_COUNT` keys).
fn estimate(f: &Found) -> u64 {
    if f.complete {
        return f.matched;
    }
    let visited = (u64::from(f.calls) * u64::from(SCAN_COUNT)).clamp(1, f.dbsize.max(1));
    ((f.matched as u128 * u128::from(f.dbsize.max(1))) / u128::from(visited)) as u64
}

/// The rule's figures and checks from every server's share.
pub fn summarize(rule: &CompiledRule, usage: &Usage, found: &[Found]) -> (RuleKeys, Vec<Check>) {
    let declared = ttl_less_subs(rule);
    let name = usage.rule.clone();
    let keys: u64 = found.iter().map(estimate).sum();
    let exact = found.iter().all(|f| f.complete);
    let samples: Vec<&KeySample> = found.iter().flat_map(|f| &f.samples).collect();
    let weighed: Vec<u64> = samples.iter().filter_map(|s| s.bytes).collect();
    let mean = if weighed.is_empty() {
        0
    } else {
        weighed.iter().sum::<u64>() / weighed.len() as u64
    };
    let no_ttl: Vec<String> = samples
        .iter()
        .filter(|s| s.pttl_ms == -1)
        .map(|s| String::from_utf8_lossy(&s.key).into_owned())
        .filter(|k| sub_of(k).is_none_or(|sub| !declared.contains(sub)))
        .collect();
    let mut biggest: Vec<KeySize> = samples
        .iter()
        .filter_map(|s| {
            Some(KeySize {
                key: String::from_utf8_lossy(&s.key).into_owned(),
                bytes: s.bytes?,
                kind: s.kind.clone(),
                ttl_ms: u64::try_from(s.pttl_ms).ok(),
            })
        })
        .collect();
    biggest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.key.cmp(&b.key)));
    biggest.truncate(EXAMPLES);

    let mut checks = Vec::new();
    let sampled = samples.len() as u64;
    if !no_ttl.is_empty() {
        let examples: Vec<&str> = no_ttl.iter().take(EXAMPLES).map(String::as_str).collect();
        checks.push(
            Check::fail(
                "keys-without-ttl",
                "Keys without a TTL in the rule's namespace",
                format!(
                    "{} of {sampled} sampled keys under {} have no TTL, and the key layout \
                     declares none of them TTL-less: {}",
                    no_ttl.len(),
                    rule.keys.prefix(),
                    examples.join(", ")
                ),
                "patternd sets a TTL on every key it writes: these were written by another \
                 client (or an older patternd). Find the writer; then EXPIRE or DEL them \
                 (`patternd compile` lists the rule's key layout)",
            )
            .for_rule(&name),
        );
    }
    if let Some(big) = biggest.first().filter(|b| b.bytes >= BIG_KEY) {
        checks.push(
            Check::warn(
                "big-keys",
                "Big keys in the rule's namespace",
                format!("{} is {} ({})", big.key, bytes(big.bytes), big.kind),
                "values over 1 MB block Redis while they are copied and slow every read: split \
                 them, lower the rule's bounds (max_value_bytes, max_len), or keep them elsewhere",
            )
            .for_rule(&name),
        );
    }
    let figures = RuleKeys {
        rule: name,
        pattern: usage.pattern.to_owned(),
        prefix: rule.keys.prefix().to_owned(),
        eviction: usage.strictest().label().to_owned(),
        keys,
        keys_exact: exact,
        sampled,
        memory_bytes: mean.saturating_mul(keys),
        no_ttl: no_ttl.into_iter().take(EXAMPLES).collect(),
        biggest,
    };
    (figures, checks)
}

/// True when the rule stores nothing to sample (pub/sub).
pub fn has_keys(usage: &Usage) -> bool {
    usage.strictest() != Eviction::NoKeys
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::compile::compile;
    use crate::plugin::PluginSet;
    use crate::policy::load_sources;

    fn compiled(yaml: &str) -> Vec<std::sync::Arc<CompiledRule>> {
        let l = load_sources(&[(PathBuf::from("t.yaml"), yaml.to_owned())]).expect("valid");
        let (c, _) = compile(&l.policy, &PluginSet::empty()).expect("compiles");
        c.rules().cloned().collect()
    }

    fn sample(key: &str, pttl_ms: i64, bytes: u64) -> KeySample {
        KeySample {
            key: key.as_bytes().to_vec(),
            pttl_ms,
            bytes: Some(bytes),
            kind: "hash".into(),
        }
    }

    #[test]
    fn declared_ttl_less_keys_come_from_the_layout() {
        let rules = compiled(
            "app: a\nrules:\n  q: { queue: {} }\n  st: { stream: { max_len: 10 } }\n  \
             wb: { cache: { ttl: 1m, origin: 'http://127.0.0.1:1/{id}', write: behind } }\n  \
             l: { lock: { ttl: 10s } }\n",
        );
        let subs = |i: usize| {
            let mut v: Vec<String> = ttl_less_subs(&rules[i]).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(
            subs(0),
            [
                "dead", "delayed", "inflight", "jobs", "meta", "ready", "seq"
            ]
        );
        assert_eq!(subs(1), ["dead", "s"]);
        assert_eq!(subs(2), ["dead", "journal"]);
        assert!(subs(3).is_empty());
    }

    #[test]
    fn undeclared_ttl_less_keys_fail_and_counts_scale() {
        let rules = compiled("app: a\nrules:\n  q: { queue: {} }\n  l: { lock: { ttl: 10s } }\n");
        let lock = &rules[1];
        let usage = Usage::of(&lock.rule, false);
        let f = Found {
            matched: 3,
            complete: true,
            calls: 1,
            dbsize: 3,
            samples: vec![
                sample("a:lock:l:{x}:h", 5000, 100),
                sample("a:lock:l:{x}:planted", -1, 2 << 20),
                sample("a:lock:l:{y}:h", 9000, 300),
            ],
        };
        let (figures, checks) = summarize(lock, &usage, &[f]);
        assert_eq!(figures.keys, 3);
        assert!(figures.keys_exact);
        assert_eq!(figures.no_ttl, ["a:lock:l:{x}:planted"]);
        assert_eq!(figures.biggest[0].key, "a:lock:l:{x}:planted");
        assert_eq!(figures.biggest[0].ttl_ms, None);
        assert_eq!(figures.biggest[1].ttl_ms, Some(9000));
        let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["keys-without-ttl", "big-keys"]);
        assert!(checks.iter().all(|c| c.rule.as_deref() == Some("a/l")));

        // A queue's keys have no TTL by design.
        let queue = &rules[0];
        let f = Found {
            matched: 2,
            complete: true,
            calls: 1,
            dbsize: 2,
            samples: vec![
                sample("a:queue:q:{%a.q}:ready", -1, 10),
                sample("a:queue:q:{%a.q}:seq", -1, 10),
            ],
        };
        let (figures, checks) = summarize(queue, &Usage::of(&queue.rule, false), &[f]);
        assert!(figures.no_ttl.is_empty() && checks.is_empty());

        // An unfinished SCAN scales the matches by the share of the keyspace it visited.
        let partial = Found {
            matched: 100,
            complete: false,
            calls: SCAN_CALLS,
            dbsize: 160_000,
            samples: Vec::new(),
        };
        assert_eq!(estimate(&partial), 1000);
    }
}
