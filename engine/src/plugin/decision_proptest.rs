//! Property tests of plugin decisions: whatever a plugin returns (limits, key suffixes, costs,
//! TTLs, numbers out of range, NaN and infinities, long or non-UTF-8 strings, wrong types),
//! the engine accepts only decisions within the bounds of `decision.rs`, never panics, and an
//! accepted key suffix keeps every key it produces in the rule's namespace and the id's slot.
//!
//! Two layers: the validators on arbitrary decision values, and the Lua host end to end (a
//! generated plugin returns a generated decision table; what comes out must pass the same
//! bounds). WASM decisions arrive as typed records and go through the same validators.
//!
//! Bounded (see `CASES`) so they run in `cargo test` in a few seconds.

use std::sync::Arc;

use proptest::prelude::*;

use super::decision::{validate_cache, validate_queue, validate_rate_limit, validate_session};
use super::lua::LuaPlugin;
use super::{
    CacheDecision, DynLimit, Limits, PluginError, QueueChoice, QueueDecision, RateLimitDecision,
    RequestFacts, SessionDecision, SessionFacts,
};
use crate::compile::keys::{KeySpace, hash_tag};
use crate::policy::Algorithm;

const CASES: u32 = 256;

/// The bounds of `decision.rs`, restated so the validators are checked against them rather
/// than against themselves.
const MAX_LIMIT: u64 = 1_000_000_000_000;
const MAX_WINDOW_MS: u64 = 366 * 86_400_000;
const MAX_SUFFIX: usize = 64;
const MAX_PRIORITY: u8 = 9;
const MAX_DEDUP_ID: usize = 256;
/// The rule's `max_delay` the queue properties run with.
const MAX_DELAY_MS: u64 = 3_600_000;

fn queue_ok(d: &QueueDecision, limits: &Limits) -> bool {
    match d {
        QueueDecision::Reject(r) => r.len() <= limits.max_string_bytes,
        QueueDecision::Accept(c) => {
            c.delay_ms.is_none_or(|ms| ms <= MAX_DELAY_MS)
                && c.priority.is_none_or(|p| p <= MAX_PRIORITY)
                && c.dedup_id.as_ref().is_none_or(|id| {
                    (1..=MAX_DEDUP_ID).contains(&id.len())
                        && id
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || "._:-".contains(ch))
                })
        }
    }
}

fn queue_decision() -> impl Strategy<Value = QueueDecision> {
    let dedup = prop_oneof![
        3 => "[A-Za-z0-9._:-]{1,256}",
        1 => "[A-Za-z0-9._:-]{257,260}",
        1 => "[a-z{}%/ \\\n]{1,10}",
        1 => text(300),
    ];
    prop_oneof![
        1 => text(1100).prop_map(QueueDecision::Reject),
        4 => (
            proptest::option::of(prop_oneof![
                0..=MAX_DELAY_MS,
                (MAX_DELAY_MS - 1)..=(MAX_DELAY_MS + 1),
                any::<u64>(),
            ]),
            proptest::option::of(any::<u8>()),
            proptest::option::of(dedup),
        )
            .prop_map(|(delay_ms, priority, dedup_id)| {
                QueueDecision::Accept(QueueChoice {
                    delay_ms,
                    priority,
                    dedup_id,
                })
            }),
    ]
}

fn suffix_ok(s: &str) -> bool {
    (1..=MAX_SUFFIX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn limit_ok(l: &DynLimit) -> bool {
    suffix_ok(&l.key_suffix)
        && (1..=MAX_LIMIT).contains(&l.limit)
        && (1..=MAX_LIMIT).contains(&l.burst)
        && (1..=MAX_WINDOW_MS).contains(&l.window_ms)
        && l.algorithm != Algorithm::Concurrency
}

fn rate_limit_ok(d: &RateLimitDecision, limits: &Limits) -> bool {
    match d {
        RateLimitDecision::Skip => true,
        RateLimitDecision::Deny(r) => r.len() <= limits.max_string_bytes,
        RateLimitDecision::Check(l) => {
            !l.is_empty() && l.len() <= limits.max_output_items && l.iter().all(limit_ok)
        }
    }
}

fn cache_ok(d: &CacheDecision, limits: &Limits) -> bool {
    let s_ok = |s: &String| !s.is_empty() && s.len() <= limits.max_string_bytes;
    d.key.as_ref().is_none_or(s_ok)
        && d.ttl_ms.is_none_or(|t| (1..=MAX_WINDOW_MS).contains(&t))
        && d.tags.len() <= limits.max_output_items
        && d.tags.iter().all(s_ok)
}

/// The keys a checked decision makes for `id`, as `patterns::ratelimit` builds them
/// (`p.<suffix>.<algorithm code>`), and the checks that they stay where they belong.
fn keys_stay_home(id: &str, list: &[DynLimit]) -> Result<(), TestCaseError> {
    let ks = KeySpace::new("shop", "ratelimit", "api");
    let subs: Vec<String> = list
        .iter()
        .map(|l| format!("p.{}.{}", l.key_suffix, l.algorithm.key_code()))
        .collect();
    let keys = ks.keys(id, subs.iter().map(String::as_str));
    let tag = hash_tag(&ks.key(id, "x")).map(str::to_string);
    for (k, sub) in keys.iter().zip(&subs) {
        prop_assert!(k.starts_with(ks.prefix()), "{}", k);
        prop_assert_eq!(hash_tag(k).map(str::to_string), tag.clone(), "{}", k);
        prop_assert!(k.ends_with(&format!("}}:{sub}")), "{}", k);
        prop_assert!(!sub.contains(['{', '}', ':']), "{}", sub);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decision values
// ---------------------------------------------------------------------------------------------

/// Numbers around every bound, and anything else.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        1u64..100_000,
        (MAX_LIMIT - 1)..=(MAX_LIMIT + 1),
        (MAX_WINDOW_MS - 1)..=(MAX_WINDOW_MS + 1),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        any::<u64>(),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,16}",
        proptest::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect()),
        (0..max * 2).prop_map(|n| "x".repeat(n)),
    ]
}

fn key_suffix() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{1,64}",
        1 => "[A-Za-z0-9._-]{65,70}",
        1 => Just(String::new()),
        1 => "[a-z{}:%/ \\\\.\n]{1,10}",
        1 => text(80),
    ]
}

fn dyn_limit() -> impl Strategy<Value = DynLimit> {
    (
        key_suffix(),
        number(),
        number(),
        number(),
        number(),
        proptest::sample::select(Algorithm::ALL.to_vec()),
    )
        .prop_map(
            |(key_suffix, cost, limit, window_ms, burst, algorithm)| DynLimit {
                key_suffix,
                cost,
                limit,
                window_ms,
                burst,
                algorithm,
            },
        )
}

fn rate_limit_decision() -> impl Strategy<Value = RateLimitDecision> {
    prop_oneof![
        Just(RateLimitDecision::Skip),
        text(1100).prop_map(RateLimitDecision::Deny),
        proptest::collection::vec(dyn_limit(), 0..20).prop_map(RateLimitDecision::Check),
        // Mostly valid lists, so the acceptance side is exercised too.
        proptest::collection::vec(
            (
                "[A-Za-z0-9._-]{1,64}",
                1..=MAX_LIMIT,
                1..=MAX_WINDOW_MS,
                1..=MAX_LIMIT,
                number(),
                proptest::sample::select(Algorithm::ALL[..5].to_vec()),
            )
                .prop_map(|(key_suffix, limit, window_ms, burst, cost, algorithm)| {
                    DynLimit {
                        key_suffix,
                        cost,
                        limit,
                        window_ms,
                        burst,
                        algorithm,
                    }
                }),
            1..17,
        )
        .prop_map(RateLimitDecision::Check),
    ]
}

fn cache_decision() -> impl Strategy<Value = CacheDecision> {
    (
        proptest::option::of(text(1100)),
        proptest::option::of(number()),
        any::<bool>(),
        proptest::collection::vec(text(1100), 0..20),
    )
        .prop_map(|(key, ttl_ms, bypass, tags)| CacheDecision {
            key,
            ttl_ms,
            bypass,
            tags,
        })
}

fn client_id() -> impl Strategy<Value = String> {
    prop_oneof!["[%{}:a-z]{1,12}", "\\PC{1,24}"]
}

proptest! {
    #![proptest_config(crate::proptest_config::config(CASES))]

    #[test]
    fn rate_limit_decisions_are_accepted_only_in_range(
        d in rate_limit_decision(), id in client_id(),
    ) {
        let limits = Limits::default();
        let expected = rate_limit_ok(&d, &limits);
        match validate_rate_limit("p", d.clone(), &limits) {
            Ok(out) => {
                prop_assert!(expected, "accepted out of range: {:?}", d);
                prop_assert_eq!(&out, &d);
                if let RateLimitDecision::Check(list) = &out {
                    keys_stay_home(&id, list)?;
                }
            }
            Err(e) => {
                prop_assert!(!expected, "refused in range: {:?}: {}", d, e);
                prop_assert!(matches!(e, PluginError::BadOutput { .. }), "{}", e);
            }
        }
    }

    #[test]
    fn cache_decisions_are_accepted_only_in_range(d in cache_decision()) {
        let limits = Limits::default();
        let expected = cache_ok(&d, &limits);
        match validate_cache("p", d.clone(), &limits) {
            Ok(out) => {
                prop_assert!(expected, "accepted out of range: {:?}", d);
                prop_assert_eq!(out, d);
            }
            Err(e) => prop_assert!(!expected, "refused in range: {:?}: {}", d, e),
        }
    }

    #[test]
    fn queue_decisions_are_accepted_only_in_range(d in queue_decision()) {
        let limits = Limits::default();
        let expected = queue_ok(&d, &limits);
        match validate_queue("p", d.clone(), &limits, MAX_DELAY_MS) {
            Ok(out) => {
                prop_assert!(expected, "accepted out of range: {:?}", d);
                prop_assert_eq!(out, d);
            }
            Err(e) => {
                prop_assert!(!expected, "refused in range: {:?}: {}", d, e);
                prop_assert!(matches!(e, PluginError::BadOutput { .. }), "{}", e);
            }
        }
    }

    #[test]
    fn session_rejections_are_bounded(reason in text(1100)) {
        let limits = Limits::default();
        let d = SessionDecision::Reject(reason.clone());
        let ok = validate_session("p", d, &limits).is_ok();
        prop_assert_eq!(ok, reason.len() <= limits.max_string_bytes);
        prop_assert!(validate_session("p", SessionDecision::Allow, &limits).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// The Lua host end to end
// ---------------------------------------------------------------------------------------------

/// A Lua expression for a number field: in range, at the bounds, out of range, NaN,
/// infinities, fractions, and values of the wrong type.
fn lua_number() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| format!("({n})")),
        1 => proptest::sample::select(vec![
            "0", "-1", "-0", "0.5", "1.5", "0/0", "1/0", "-1/0", "1e300", "-1e300", "2^53",
            "2^53+1", "2^63", "2^64", "9e15", "8999999999999999", "1000000000000",
            "1000000000001", "31622400000", "31622400001", "nil", "true", "'12'", "'x'", "{}",
        ])
        .prop_map(str::to_string),
    ]
}

/// A Lua expression for a string: any bytes (not only UTF-8) as decimal escapes, long
/// strings, and values of the wrong type.
fn lua_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{1,64}".prop_map(|s| format!("'{s}'")),
        2 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| {
            let escaped: String = b.iter().map(|b| format!("\\{b:03}")).collect();
            format!("\"{escaped}\"")
        }),
        1 => (0usize..2100).prop_map(|n| format!("string.rep('a', {n})")),
        1 => proptest::sample::select(vec!["''", "nil", "42", "true", "{}", "'../../x'", "'a}:b'"])
            .prop_map(str::to_string),
    ]
}

/// `key = value` pairs with each field present or absent.
fn lua_table(fields: Vec<(&'static str, Option<String>)>) -> String {
    let inner: Vec<String> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}")))
        .collect();
    format!("{{ {} }}", inner.join(", "))
}

fn lua_limit() -> impl Strategy<Value = String> {
    (
        proptest::option::weighted(0.9, lua_string()),
        proptest::option::weighted(0.9, lua_number()),
        proptest::option::weighted(0.9, lua_number()),
        proptest::option::of(lua_number()),
        proptest::option::of(lua_number()),
        proptest::option::of(
            proptest::sample::select(vec![
                "'fixed_window'",
                "'sliding-window'",
                "'sliding_log'",
                "'token_bucket'",
                "'gcra'",
                "'concurrency'",
                "'bogus'",
                "7",
            ])
            .prop_map(str::to_string),
        ),
    )
        .prop_map(|(suffix, limit, window, cost, burst, alg)| {
            lua_table(vec![
                ("key_suffix", suffix),
                ("limit", limit),
                ("window_ms", window),
                ("cost", cost),
                ("burst", burst),
                ("algorithm", alg),
            ])
        })
}

fn lua_rate_limit_result() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::sample::select(vec!["nil", "'skip'", "42", "{ skip = true }", "{ skip = 1 }"])
            .prop_map(str::to_string),
        1 => lua_string().prop_map(|s| format!("{{ deny = {s} }}")),
        1 => lua_number().prop_map(|n| format!("{{ check = {n} }}")),
        4 => proptest::collection::vec(lua_limit(), 0..20)
            .prop_map(|l| format!("{{ check = {{ {} }} }}", l.join(", "))),
    ]
}

fn lua_cache_result() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::sample::select(vec!["nil", "42", "'x'"]).prop_map(str::to_string),
        4 => (
            proptest::option::of(lua_string()),
            proptest::option::of(lua_number()),
            proptest::option::of(
                proptest::sample::select(vec!["true", "false", "'yes'", "1"]).prop_map(str::to_string),
            ),
            proptest::option::of(
                proptest::collection::vec(lua_string(), 0..20).prop_map(|t| format!("{{ {} }}", t.join(", "))),
            ),
        )
            .prop_map(|(key, ttl, bypass, tags)| {
                lua_table(vec![("key", key), ("ttl_ms", ttl), ("bypass", bypass), ("tags", tags)])
            }),
    ]
}

fn lua_session_result() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::sample::select(vec!["nil", "true", "false", "'allow'", "'deny'", "42", "{}"])
            .prop_map(str::to_string),
        3 => lua_string().prop_map(|s| format!("{{ reject = {s} }}")),
        1 => proptest::sample::select(vec!["true", "false", "{}", "0/0"])
            .prop_map(|v| format!("{{ reject = {v} }}")),
    ]
}

fn lua_queue_result() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => proptest::sample::select(vec!["nil", "true", "false", "'accept'", "'reject'", "42", "{}"])
            .prop_map(str::to_string),
        2 => lua_string().prop_map(|s| format!("{{ reject = {s} }}")),
        4 => (
            proptest::option::of(lua_number()),
            proptest::option::of(lua_number()),
            proptest::option::of(lua_string()),
        )
            .prop_map(|(delay, priority, dedup)| {
                lua_table(vec![("delay_ms", delay), ("priority", priority), ("dedup_id", dedup)])
            }),
    ]
}

fn bind(hook: &str, result: &str) -> Result<super::lua::LuaBinding, TestCaseError> {
    let src = format!("return {{ {hook} = function(req, s) return {result} end }}");
    let p = LuaPlugin::load("gen", src, Limits::default())
        .map_err(|e| TestCaseError::fail(format!("generated plugin did not load: {e}")))?;
    Arc::new(p)
        .bind(serde_json::Value::Null)
        .map_err(|e| TestCaseError::fail(format!("generated plugin did not bind: {e}")))
}

fn facts(id: &str) -> RequestFacts {
    RequestFacts {
        method: "POST".into(),
        path: "/v1/ratelimit/shop/api".into(),
        id: id.into(),
        cost: 1,
        ..RequestFacts::default()
    }
}

/// A decision the host refused must be refused as bad output (the generated plugins always
/// load and run, so any other failure means the generator is broken).
fn refused_as_bad_output(e: &PluginError, result: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(e, PluginError::BadOutput { .. }),
        "`{}` failed as {}: {}",
        result,
        e.kind(),
        e
    );
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config::config(CASES))]

    #[test]
    fn lua_rate_limit_decisions_stay_in_bounds(
        result in lua_rate_limit_result(), id in client_id(),
    ) {
        let b = bind("rate_limit", &result)?;
        match b.rate_limit(&facts(&id)) {
            Ok(d) => {
                prop_assert!(rate_limit_ok(&d, &Limits::default()), "`{}` gave {:?}", result, d);
                if let RateLimitDecision::Check(list) = &d {
                    keys_stay_home(&id, list)?;
                }
            }
            Err(e) => refused_as_bad_output(&e, &result)?,
        }
    }

    #[test]
    fn lua_cache_decisions_stay_in_bounds(result in lua_cache_result()) {
        let b = bind("cache", &result)?;
        match b.cache(&facts("u1")) {
            Ok(d) => prop_assert!(cache_ok(&d, &Limits::default()), "`{}` gave {:?}", result, d),
            Err(e) => refused_as_bad_output(&e, &result)?,
        }
    }

    #[test]
    fn lua_queue_decisions_stay_in_bounds(result in lua_queue_result()) {
        let b = bind("queue", &result)?;
        match b.queue(&facts("u1"), "{}", MAX_DELAY_MS) {
            Ok(d) => prop_assert!(queue_ok(&d, &Limits::default()), "`{}` gave {:?}", result, d),
            Err(e) => refused_as_bad_output(&e, &result)?,
        }
    }

    #[test]
    fn lua_session_decisions_stay_in_bounds(result in lua_session_result()) {
        let b = bind("session", &result)?;
        let s = SessionFacts { user: "alice", data: &[], created_ms: 1, last_seen_ms: 2 };
        match b.session(&facts("u1"), &s) {
            Ok(SessionDecision::Reject(r)) => {
                prop_assert!(r.len() <= Limits::default().max_string_bytes, "`{}`", result);
            }
            Ok(SessionDecision::Allow) => {
                // A table that sets `reject` to anything but nil or false asked to reject: a
                // malformed reason must not turn into an allow.
                let asked_to_reject = result.starts_with("{ reject = ")
                    && !matches!(result.as_str(), "{ reject = nil }" | "{ reject = false }");
                prop_assert!(!asked_to_reject, "`{}` allowed the session", result);
            }
            Err(e) => refused_as_bad_output(&e, &result)?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the properties above found (each failed before its fix)
// ---------------------------------------------------------------------------------------------

/// The Lua host returned cache decisions without `validate_cache`: a TTL beyond a year, a
/// fraction that became a TTL of 0 ms, an empty tag.
#[test]
fn lua_cache_decisions_meet_the_cache_bounds() {
    for result in [
        "{ ttl_ms = 31622400001 }",
        "{ ttl_ms = 2^53 }",
        "{ ttl_ms = 0.5 }",
        "{ tags = { '' } }",
    ] {
        let b = bind("cache", result).unwrap_or_else(|e| panic!("{e}"));
        match b.cache(&facts("u1")) {
            Err(PluginError::BadOutput { .. }) => {}
            other => panic!("`{result}` gave {other:?}"),
        }
    }
    let b = bind("cache", "{ key = 'k', ttl_ms = 60000, tags = { 'a' } }")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(b.cache(&facts("u1")), Ok(d) if d.ttl_ms == Some(60_000)));
}

/// The Lua host read a `reject` it could not convert to text (`true`, bytes that are not
/// UTF-8, a table) as "allow", and passed reasons of any length.
#[test]
fn lua_session_rejections_never_turn_into_allows() {
    let s = SessionFacts {
        user: "alice",
        data: &[],
        created_ms: 1,
        last_seen_ms: 2,
    };
    for result in [
        "{ reject = true }",
        "{ reject = \"\\128\" }",
        "{ reject = {} }",
        "{ reject = string.rep('a', 2000) }",
    ] {
        let b = bind("session", result).unwrap_or_else(|e| panic!("{e}"));
        match b.session(&facts("u1"), &s) {
            Err(PluginError::BadOutput { .. }) => {}
            other => panic!("`{result}` gave {other:?}"),
        }
    }
    for (result, want) in [
        (
            "{ reject = 'banned' }",
            SessionDecision::Reject("banned".into()),
        ),
        ("{ reject = false }", SessionDecision::Allow),
        ("{}", SessionDecision::Allow),
        ("nil", SessionDecision::Allow),
    ] {
        let b = bind("session", result).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.session(&facts("u1"), &s), Ok(want), "{result}");
    }
}
