//! The raw policy model: exactly what a YAML file may say, before validation.
//!
//! Values that validation must point at are `Spanned`, so a diagnostic names the line and
//! column of the offending value. Enumerations and durations stay strings here and are checked
//! in `validate`, so that several bad values in one rule are all reported, not just the first
//! one serde trips over. The same structs derive `JsonSchema`: `patternd schema` is generated
//! from them, so editors validate exactly what the loader accepts.
//!
//! This file holds what every pattern shares: the file, the rule (exactly one pattern block),
//! the plugin reference and the duration text. Each pattern's block sits with its validated
//! model and its checks in `policy/<pattern>.rs`.

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
    #[schemars(with = "Option<super::ratelimit::RawRateLimit>")]
    pub rate_limit: Option<Spanned<super::ratelimit::RawRateLimit>>,
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
    #[schemars(with = "Option<super::ops::RawOps>")]
    pub ops: Option<Spanned<super::ops::RawOps>>,
    /// A reliable job queue, served at `/v1/queues/{app}/{rule}`.
    #[serde(default)]
    #[schemars(with = "Option<super::queue::RawQueue>")]
    pub queue: Option<Spanned<super::queue::RawQueue>>,
    /// A bounded stream with consumer groups, served at `/v1/streams/{app}/{rule}`.
    #[serde(default)]
    #[schemars(with = "Option<super::stream::RawStream>")]
    pub stream: Option<Spanned<super::stream::RawStream>>,
    /// Pub/sub channels over Server-Sent Events, served at `/v1/pubsub/{app}/{rule}/{channel}`.
    #[serde(default)]
    #[schemars(with = "Option<super::pubsub::RawPubSub>")]
    pub pubsub: Option<Spanned<super::pubsub::RawPubSub>>,
    /// Unique counts, Bloom filters or plain counters per period, served at
    /// `/v1/counters/{app}/{rule}/{id}`.
    #[serde(default)]
    #[schemars(with = "Option<super::counter::RawCounter>")]
    pub counter: Option<Spanned<super::counter::RawCounter>>,
    /// Leaderboards (one sorted set per board and period), served at
    /// `/v1/leaderboards/{app}/{rule}/{board}`.
    #[serde(default)]
    #[schemars(with = "Option<super::leaderboard::RawLeaderboard>")]
    pub leaderboard: Option<Spanned<super::leaderboard::RawLeaderboard>>,
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

/// Schema-only: a duration such as `250ms`, `30s`, `1m`, `1h30m`, `1d` (its pattern and
/// description are set in `schema.rs`, from `duration::GRAMMAR`).
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct DurationText(String);
