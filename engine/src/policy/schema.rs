//! The JSON Schema of a policy file (`patternd schema`), as strict as the loader wherever
//! JSON Schema can say it.
//!
//! Field by field it is generated from the raw types (`raw.rs` and each pattern's file:
//! `ratelimit.rs`, `cache.rs`, `session.rs`, `lock.rs`, `ops.rs`, `queue.rs`: types, enums, ranges,
//! patterns). What spans fields is added here, next to each other: exactly one pattern block
//! per rule, which limit fields go with which algorithm, what needs an `origin`, what only
//! `write: behind` takes. What JSON Schema cannot say stays
//! the loader's alone: durations over 366 days (a sum), `max_ttl` ≥ `ttl`, `max_per_user` ≤
//! an explicit `user_cap`, a queue's `max_visibility` ≥ `visibility`, `push.timeout` < `visibility` and `max_wait` ≤ 60s,
//! the addresses in `trusted_proxies`, and plugin names (resolved
//! against the plugins directory). `tests/tests/standards.rs` runs a table of documents
//! through both and fails on any other disagreement.

use serde_json::{Map, Value, json};

/// App and rule names: they end up in keys and URLs.
pub const NAME_PATTERN: &str = r"^[a-z0-9][a-z0-9_-]{0,62}$";

/// `duration::GRAMMAR` with the loader's "at least 1ms": some term has a non-zero number.
pub const NONZERO_DURATION_PATTERN: &str =
    r"^([0-9]+(ms|s|m|h|d))*0*[1-9][0-9]*(ms|s|m|h|d)([0-9]+(ms|s|m|h|d))*$";

/// An HTTP header name (RFC 9110 token).
pub const HEADER_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

const PATTERN_BLOCKS: [&str; 10] = [
    "rate_limit",
    "cache",
    "session",
    "lock",
    "ops",
    "queue",
    "stream",
    "pubsub",
    "counter",
    "leaderboard",
];
const INLINE_LIMIT: [&str; 5] = ["algorithm", "limit", "window", "burst", "lease"];

pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(super::raw::RawPolicyFile);
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    strip_nulls(&mut v);
    tighten(&mut v);
    v
}

/// The loader refuses `null` wherever it stands (leave a field out instead), but schemars
/// makes every `Option` field nullable: drop the null alternatives and `default: null`.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get("anyOf") {
                let rest: Vec<Value> = any
                    .iter()
                    .filter(|s| s.get("type") != Some(&json!("null")))
                    .cloned()
                    .collect();
                if rest.len() == 1 {
                    map.remove("anyOf");
                    if let Value::Object(only) = &rest[0] {
                        for (k, val) in only {
                            map.entry(k.clone()).or_insert_with(|| val.clone());
                        }
                    }
                } else if rest.len() != any.len() {
                    map.insert("anyOf".into(), Value::Array(rest));
                }
            }
            for val in map.values_mut() {
                strip_nulls(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn required(fields: &[&str]) -> Value {
    json!({ "required": fields })
}

fn any_required(fields: &[&str]) -> Value {
    json!({ "anyOf": fields.iter().map(|f| required(&[f])).collect::<Vec<_>>() })
}

/// `extra`'s keys added to the object at `pointer` (an `allOf` is appended to).
fn add(v: &mut Value, pointer: &str, extra: Value) {
    let (Some(Value::Object(target)), Value::Object(extra)) = (v.pointer_mut(pointer), extra)
    else {
        debug_assert!(false, "no schema at {pointer}");
        return;
    };
    merge(target, extra);
}

fn merge(target: &mut Map<String, Value>, extra: Map<String, Value>) {
    for (k, val) in extra {
        match (target.get_mut(&k), val) {
            (Some(Value::Array(all)), Value::Array(more)) if k == "allOf" => all.extend(more),
            (_, val) => {
                target.insert(k, val);
            }
        }
    }
}

fn tighten(v: &mut Value) {
    add(
        v,
        "/properties/rules",
        json!({ "propertyNames": { "pattern": NAME_PATTERN } }),
    );
    add(
        v,
        "/$defs/RawRule",
        json!({ "oneOf": PATTERN_BLOCKS.iter().map(|b| required(&[b])).collect::<Vec<_>>() }),
    );
    add(
        v,
        "/$defs/DurationText",
        json!({
            "pattern": NONZERO_DURATION_PATTERN,
            "description": "A duration: one or more `<number><unit>` terms, added up, units `ms`, \
                `s`, `m`, `h`, `d` (e.g. `250ms`, `30s`, `1h30m`); at least 1ms, at most 366d \
                (the upper bound is checked by `patternd check` only).",
        }),
    );

    // Only once a pattern has a `period` field (otherwise the definition is not generated).
    if v.pointer("/$defs/PeriodText").is_some() {
        add(
            v,
            "/$defs/PeriodText",
            json!({
                "anyOf": [
                    { "enum": ["none", "day", "week", "month"] },
                    { "pattern": NONZERO_DURATION_PATTERN }
                ],
                "description": "`none`, `day`, `week` (ISO 8601, Monday), `month` (all UTC), or a \
                    duration (fixed-length periods from the Unix epoch: a whole number of \
                    seconds, at least 1s, at most 366d; checked by `patternd check`).",
            }),
        );
    }

    // One limit: which fields go with which algorithm.
    let limit_rules = json!({
        "required": ["algorithm", "limit"],
        "allOf": [
            {
                "if": { "properties": { "algorithm": { "const": "concurrency" } }, "required": ["algorithm"] },
                "then": { "required": ["lease"], "not": required(&["window"]) },
                "else": { "required": ["window"], "not": required(&["lease"]) }
            },
            {
                "if": required(&["burst"]),
                "then": { "properties": { "algorithm": { "enum": ["token_bucket", "gcra"] } } }
            }
        ]
    });
    if let Some(Value::Object(defs)) = v.pointer_mut("/$defs") {
        defs.insert("LimitRules".into(), limit_rules);
    }
    add(
        v,
        "/$defs/RawLimit",
        json!({ "allOf": [{ "$ref": "#/$defs/LimitRules" }] }),
    );
    let concurrency = json!({
        "properties": { "algorithm": { "const": "concurrency" } },
        "required": ["algorithm"]
    });
    add(
        v,
        "/$defs/RawRateLimit",
        json!({
            "dependentSchemas": {
                "plugin": { "not": any_required(&[INLINE_LIMIT.as_slice(), &["limits"]].concat()) },
                "limits": { "not": any_required(&INLINE_LIMIT) }
            },
            "dependentRequired": { "fallback": ["plugin"] },
            "allOf": [{
                "if": { "not": any_required(&["plugin", "limits"]) },
                "then": { "$ref": "#/$defs/LimitRules" }
            }]
        }),
    );
    add(
        v,
        "/$defs/RawRateLimit/properties/limits",
        json!({
            "minItems": 1,
            "maxItems": 16,
            "if": { "contains": concurrency },
            "then": { "maxItems": 1 }
        }),
    );
    add(
        v,
        "/$defs/RawRateLimit/properties/fallback",
        json!({ "not": concurrency }),
    );

    // Cache: what needs an origin, what only `write: behind` takes.
    add(
        v,
        "/$defs/RawCache",
        json!({
            "allOf": [
                {
                    "if": { "properties": { "write": { "enum": ["through", "behind"] } }, "required": ["write"] },
                    "then": required(&["origin"])
                },
                {
                    "if": { "properties": { "on_redis_error": { "const": "origin" } }, "required": ["on_redis_error"] },
                    "then": required(&["origin"])
                },
                {
                    "if": any_required(&["max_attempts", "retry_backoff", "journal_max_len"]),
                    "then": { "properties": { "write": { "const": "behind" } }, "required": ["write"] }
                }
            ]
        }),
    );
    add(
        v,
        "/$defs/RawCache/properties/beta",
        json!({ "exclusiveMinimum": 0, "maximum": 100 }),
    );
    // `plugin.headers` is for rate-limit rules only.
    for block in ["RawCache", "RawSession"] {
        add(
            v,
            &format!("/$defs/{block}/properties/plugin"),
            json!({ "not": required(&["headers"]) }),
        );
    }
    // A queue rule's plugin: no `headers` or `fields` (the hook gets the payload); `fallback`
    // only with a plugin.
    add(
        v,
        "/$defs/RawQueue/properties/plugin",
        json!({ "not": any_required(&["headers", "fields"]) }),
    );
    add(
        v,
        "/$defs/RawQueue",
        json!({ "dependentRequired": { "fallback": ["plugin"] } }),
    );
    // A stream rule's plugin: likewise (the hook gets each entry).
    add(
        v,
        "/$defs/RawStream/properties/plugin",
        json!({ "not": any_required(&["headers", "fields"]) }),
    );
    add(
        v,
        "/$defs/RawStream",
        json!({ "dependentRequired": { "fallback": ["plugin"] } }),
    );
    // A leaderboard rule's plugin: likewise (the hook gets the submit).
    add(
        v,
        "/$defs/RawLeaderboard/properties/plugin",
        json!({ "not": any_required(&["headers", "fields"]) }),
    );
    add(
        v,
        "/$defs/RawLeaderboard",
        json!({ "dependentRequired": { "fallback": ["plugin"] } }),
    );
    // A pubsub rule's plugin: likewise (the hook gets the message).
    add(
        v,
        "/$defs/RawPubSub/properties/plugin",
        json!({ "not": any_required(&["headers", "fields"]) }),
    );
    add(
        v,
        "/$defs/RawPubSub",
        json!({ "dependentRequired": { "fallback": ["plugin"] } }),
    );
    // A counter rule: the Bloom fields only with `kind: bloom` (and `capacity` required
    // there), `range_cache` only with `unique`, `keep` only with a period, `ttl` only
    // without one.
    let no_period = json!({ "anyOf": [
        { "not": required(&["period"]) },
        { "properties": { "period": { "const": "none" } } }
    ] });
    add(
        v,
        "/$defs/RawCounter",
        json!({
            "allOf": [
                {
                    "if": { "properties": { "kind": { "const": "bloom" } } },
                    "then": required(&["capacity"]),
                    "else": { "not": any_required(&["capacity", "error_rate", "backend"]) }
                },
                {
                    "if": { "not": { "properties": { "kind": { "const": "unique" } } } },
                    "then": { "not": required(&["range_cache"]) }
                },
                { "if": no_period, "then": { "not": required(&["keep"]) }, "else": { "not": required(&["ttl"]) } }
            ]
        }),
    );
    add(
        v,
        "/$defs/RawCounter/properties/error_rate",
        json!({ "minimum": super::counter::MIN_ERROR_RATE, "maximum": super::counter::MAX_ERROR_RATE }),
    );
    // Field by field: bounds and shapes the loader checks.
    const MAX_LIMIT: u64 = super::validate::MAX_LIMIT.unsigned_abs();
    for (pointer, max) in [
        ("RawRateLimit/properties/limit", MAX_LIMIT),
        ("RawRateLimit/properties/burst", MAX_LIMIT),
        ("RawLimit/properties/limit", MAX_LIMIT),
        ("RawLimit/properties/burst", MAX_LIMIT),
        (
            "RawCache/properties/max_value_bytes",
            super::cache::MAX_MAX_VALUE_BYTES.unsigned_abs(),
        ),
        ("RawCache/properties/max_attempts", MAX_LIMIT),
        ("RawCache/properties/journal_max_len", MAX_LIMIT),
        (
            "RawNearCache/properties/max_entries",
            super::cache::MAX_NEAR_ENTRIES,
        ),
        (
            "RawSession/properties/max_per_user",
            super::session::MAX_USER_CAP,
        ),
        ("RawLock/properties/permits", super::lock::MAX_PERMITS),
        ("RawCounter/properties/capacity", MAX_LIMIT),
        (
            "RawLeaderboard/properties/max_size",
            super::leaderboard::MAX_MAX_SIZE,
        ),
        (
            "RawLeaderboard/properties/max_page",
            super::leaderboard::MAX_MAX_PAGE,
        ),
        (
            "RawLeaderboard/properties/keep",
            super::leaderboard::MAX_KEEP,
        ),
        (
            "RawLeaderboard/properties/max_score",
            super::leaderboard::SHARED_MAX_SCORE,
        ),
        (
            "RawQueue/properties/max_attempts",
            super::queue::MAX_MAX_ATTEMPTS,
        ),
        ("RawQueue/properties/max_len", super::queue::MAX_QUEUE_LEN),
        (
            "RawQueue/properties/dead_max_len",
            super::queue::MAX_QUEUE_LEN,
        ),
        ("RawQueue/properties/max_pop", super::queue::MAX_MAX_POP),
        (
            "RawPush/properties/concurrency",
            super::queue::MAX_PUSH_CONCURRENCY,
        ),
    ] {
        add(v, &format!("/$defs/{pointer}"), json!({ "maximum": max }));
    }
    add(
        v,
        "/$defs/RawIdFrom/properties/header",
        json!({ "pattern": HEADER_PATTERN }),
    );
    // `trusted_hops` or `trusted_proxies`, and only for X-Forwarded-For (any case).
    add(
        v,
        "/$defs/RawIdFrom",
        json!({
            "not": required(&["trusted_hops", "trusted_proxies"]),
            "if": any_required(&["trusted_hops", "trusted_proxies"]),
            "then": { "properties": { "header": {
                "pattern": "^[Xx]-[Ff][Oo][Rr][Ww][Aa][Rr][Dd][Ee][Dd]-[Ff][Oo][Rr]$"
            } } }
        }),
    );
    add(
        v,
        "/$defs/RawPluginRef/properties/headers",
        json!({ "items": { "pattern": HEADER_PATTERN } }),
    );
    add(
        v,
        "/$defs/RawPluginRef/properties/fields",
        json!({ "items": { "minLength": 1, "not": { "enum": ["id", "cost"] } } }),
    );
    for pointer in [
        "RawPluginRef/properties/name",
        "RawOps/properties/plugin",
        "RawOps/properties/op",
    ] {
        add(v, &format!("/$defs/{pointer}"), json!({ "minLength": 1 }));
    }
    // `http://host…{id}…`: a host, `{id}` at least once, no other placeholder.
    add(
        v,
        "/$defs/RawCache/properties/origin",
        json!({ "pattern": r"^http://[^/{}]([^{}]|\{id\})*\{id\}([^{}]|\{id\})*$" }),
    );
    // Other ids of the rule: `{id}` and something more.
    add(
        v,
        "/$defs/RawCache/properties/related",
        json!({ "items": { "pattern": r"^([\s\S]+\{id\}[\s\S]*|[\s\S]*\{id\}[\s\S]+)$" } }),
    );
    // Without an explicit `user_cap`, `max_per_user` is bounded by the default cap.
    add(
        v,
        "/$defs/RawSession",
        json!({
            "if": { "not": required(&["user_cap"]) },
            "then": { "properties": { "max_per_user": { "maximum": super::session::DEFAULT_USER_CAP } } }
        }),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_field_is_nullable() {
        let text = super::json_schema().to_string();
        assert!(!text.contains("\"null\""), "{text}");
    }
}
