//! The raw policy model: exactly what a YAML file may say, before validation.
//!
//! Values that validation must point at are `Spanned`, so a diagnostic names the line and
//! column of the offending value. Enumerations and durations stay strings here and are checked
//! in `validate`, so that several bad values in one rule are all reported, not just the first
//! one serde trips over. The same structs derive `JsonSchema`: `patternd schema` is generated
//! from them, so editors validate exactly what the loader accepts.

use std::collections::BTreeMap;

use marked_yaml::Spanned;
use schemars::JsonSchema;
use serde::Deserialize;

/// A policy file: one app (namespace) and its rules.
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields, title = "patternd policy file")]
#[allow(dead_code)] // only its schema is used: files are walked node by node in `load`
pub struct RawPolicyFile {
    /// Namespace: every Redis key of this app starts with `<app>:`. Lowercase letters,
    /// digits, `-` and `_`; unique across all loaded files.
    #[schemars(pattern(r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub app: String,
    /// Rules by name. The name is used in URLs and keys (same character set as `app`).
    pub rules: BTreeMap<String, RawRule>,
}

/// A rule: exactly one pattern block.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Free text shown by `GET /admin/policies`.
    #[serde(default)]
    pub description: Option<String>,
    /// A rate-limiting rule.
    #[serde(default)]
    #[schemars(with = "Option<RawRateLimit>")]
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// A caching rule, served at `/v1/cache/{app}/{rule}/{id}`.
    #[serde(default)]
    #[schemars(with = "Option<super::cache::RawCache>")]
    pub cache: Option<Spanned<super::cache::RawCache>>,
    /// A session store, served at `/v1/sessions/{app}/{rule}`.
    #[serde(default)]
    #[schemars(with = "Option<super::session::RawSession>")]
    pub session: Option<Spanned<super::session::RawSession>>,
    /// A distributed lock or semaphore, served at `/v1/locks/{app}/{rule}/{resource}`.
    #[serde(default)]
    #[schemars(with = "Option<super::lock::RawLock>")]
    pub lock: Option<Spanned<super::lock::RawLock>>,
    /// A Redis-side operation declared by a Lua plugin, served at `POST /v1/ops/{app}/{rule}`.
    #[serde(default)]
    #[schemars(with = "Option<RawOps>")]
    pub ops: Option<Spanned<RawOps>>,
}

/// `ops: { plugin: NAME, op: OP }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    /// The Lua plugin (file name without `.lua`) that declares the operation.
    #[schemars(with = "String")]
    pub plugin: Spanned<String>,
    /// The operation's name in the plugin's `ops` table.
    #[schemars(with = "String")]
    pub op: Spanned<String>,
}

/// `plugin: { name: NAME, config: {...}, fields: [...], headers: [...] }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPluginRef {
    /// The plugin: `NAME.wasm` or `NAME.lua` in the plugins directory.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Passed to the plugin's `init` as JSON, once per rule.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    #[allow(dead_code)] // only checked for presence here; `validate` reads it from the nodes
    pub config: Option<serde::de::IgnoredAny>,
    /// JSON body fields (besides `id` and `cost`) the request may carry and the plugin sees.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub fields: Option<Vec<Spanned<String>>>,
    /// Rate-limit rules: the request headers the plugin reads (case-insensitive). Only these
    /// are handed to the plugin, which makes each call cheaper; without it, every header is.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub headers: Option<Vec<Spanned<String>>>,
}

/// A rate-limiting rule: either one limit written inline (`algorithm`, `limit`, `window`, …)
/// or several under `limits`, checked together in one atomic script.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default)]
    #[schemars(with = "Option<AlgorithmName>")]
    pub algorithm: Option<Spanned<String>>,
    /// Requests (or cost units) per `window`; for `concurrency`, requests in flight.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub limit: Option<Spanned<i64>>,
    /// Window length, e.g. `1s`, `1m`, `1h`, `1d`.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    /// token_bucket and gcra: how many requests a fresh id may make at once (default `limit`).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
    /// concurrency: how long a lease lives if never released (a crashed client frees its slot).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<Spanned<String>>,
    /// Several limits checked in one script; a denial charges none of them.
    #[serde(default)]
    #[schemars(with = "Option<Vec<RawLimit>>")]
    pub limits: Option<Spanned<Vec<Spanned<RawLimit>>>>,
    /// What to answer when Redis cannot be reached in time: `allow` (default) or `deny`.
    #[serde(default)]
    #[schemars(with = "Option<OnRedisError>")]
    pub on_redis_error: Option<Spanned<String>>,
    /// Evaluate and count, but always allow (to try a limit on live traffic).
    #[serde(default)]
    pub shadow: Option<bool>,
    /// Where `GET` (forward-auth) requests take the entity id from.
    #[serde(default)]
    #[schemars(with = "Option<RawIdFrom>")]
    pub id_from: Option<Spanned<RawIdFrom>>,
    /// A plugin whose `rate-limit` hook decides the limits per request.
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// The limit used when the plugin fails (without one, a failing plugin answers 502).
    #[serde(default)]
    #[schemars(with = "Option<RawLimit>")]
    pub fallback: Option<Spanned<RawLimit>>,
}

/// One limit inside `limits`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    #[serde(default)]
    #[schemars(with = "Option<AlgorithmName>")]
    pub algorithm: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub limit: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub window: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<Spanned<String>>,
}

/// The id source for forward-auth requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdFrom {
    /// Request header holding the id. `X-Forwarded-For` is read as a list of addresses, right
    /// to left (see `trusted_hops` and `trusted_proxies`); any other header is the id as is.
    #[schemars(with = "String")]
    pub header: Spanned<String>,
    /// `X-Forwarded-For` only: how many proxies in front of patternd append to the header,
    /// counting the gateway that calls patternd. The id is the address that many entries from
    /// the right (default 1: the address the nearest proxy saw).
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 32))]
    pub trusted_hops: Option<Spanned<i64>>,
    /// `X-Forwarded-For` only: addresses or CIDR ranges of trusted proxies. The id is the
    /// rightmost address not in them (the leftmost when all are).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Schema-only: the algorithm names.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AlgorithmName {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
    Gcra,
    Concurrency,
}

/// Schema-only: the `on_redis_error` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OnRedisError {
    Allow,
    Deny,
}

/// Schema-only: a duration such as `250ms`, `30s`, `1m`, `1h`, `1d`.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct DurationText(#[schemars(pattern(r"^\s*([0-9]+\s*(ms|s|m|h|d)\s*)+$"))] String);
