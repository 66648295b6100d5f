//! `cache:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! A cache rule fronts an HTTP origin (cache-aside) or stands alone (values only arrive by
//! `PUT`). Everything a request path needs is decided here once: durations in milliseconds,
//! the write mode, the origin template split around `{id}`.

use std::path::Path;
use std::time::Duration;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::ir::PluginRef;
use super::raw::{DurationText, RawPluginRef};
use super::validate::{Validator, loc};

/// Values above this are refused with 413 unless the rule says otherwise.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 1024 * 1024;
/// Hard ceiling for `max_value_bytes`: Redis strings can hold 512 MiB, but a cache value that
/// big blocks Redis for milliseconds on every read.
pub(super) const MAX_MAX_VALUE_BYTES: i64 = 64 * 1024 * 1024;

/// Default `slot_groups`: a rule's keys land in 16 cluster slots, enough to spread it over the
/// 3 to 6 primaries of a typical cluster, while a tag invalidation costs 16 small script calls
/// (concurrent) and an idle write-behind flusher 16 cheap polls per second at most.
pub const DEFAULT_SLOT_GROUPS: u32 = 16;
/// Ceiling for `slot_groups`: an invalidation makes one call per group.
pub const MAX_SLOT_GROUPS: u32 = 1024;

/// A `cache` block, served at `/v1/cache/{app}/{rule}/{id}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Origin URL, `http://host:port/path/{id}`; `{id}` is replaced by the percent-encoded id.
    /// Without an origin, values only arrive by `PUT`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub origin: Option<Spanned<String>>,
    /// How long a value is fresh.
    #[schemars(with = "DurationText")]
    pub ttl: Spanned<String>,
    /// Cache an origin 404 for this long (default: 404s are not cached).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub negative_ttl: Option<Spanned<String>>,
    /// After `ttl`, serve the stale value this long while one caller refreshes it.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub stale_while_revalidate: Option<Spanned<String>>,
    /// After `ttl`, serve the stale value this long when the origin fails or times out.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub stale_if_error: Option<Spanned<String>>,
    /// `string` (default: the body as is) or `hash` (a JSON object stored field by field).
    #[serde(default)]
    #[schemars(with = "Option<CacheFormatName>")]
    pub format: Option<Spanned<String>>,
    /// Other ids of this rule dropped with a value on `DELETE`, e.g. `"{id}:profile"`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub related: Option<Vec<Spanned<String>>>,
    /// Larger values are refused with 413 and never stored (default 1 MiB).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_value_bytes: Option<Spanned<i64>>,
    /// What `PUT`/`PATCH` do: `cache` (default: the cache only), `through` (the origin first,
    /// then the cache) or `behind` (the cache and a journal; a worker writes the origin).
    #[serde(default)]
    #[schemars(with = "Option<WriteModeName>")]
    pub write: Option<Spanned<String>>,
    /// Write-behind: origin attempts per journal entry before it moves to the dead letters.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_attempts: Option<Spanned<i64>>,
    /// Write-behind: the first retry delay; each retry doubles it (default `200ms`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub retry_backoff: Option<Spanned<String>>,
    /// Write-behind: the journal and dead-letter streams keep at most this many entries
    /// (default 100000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub journal_max_len: Option<Spanned<i64>>,
    /// How many cluster hash slots the rule's keys are spread over (default 16, 1 to 1024).
    /// An id's keys, and the tag versions and write-behind journal they are checked with, live
    /// in the slot of the id's group, so every script touches one slot. More groups spread a
    /// rule over more Redis Cluster primaries; a tag invalidation costs one call per group and
    /// the write-behind flusher polls every group's journal. Changing it moves every id.
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1, max = 1024))]
    pub slot_groups: Option<Spanned<i64>>,
    /// Timeout of one origin request (default `2s`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub origin_timeout: Option<Spanned<String>>,
    /// How long a refresh lease lasts: one caller fetches, others wait or get the stale value
    /// (default: `origin_timeout` plus one second). After a failed fill with a stale value to
    /// serve, also how long the origin is left alone (one probe per period).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub refresh_lease: Option<Spanned<String>>,
    /// How long a caller waits for another caller's fill before fetching itself (default
    /// `origin_timeout`).
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub fill_wait: Option<Spanned<String>>,
    /// XFetch β: above 1 refreshes earlier, below 1 later (default 1).
    #[serde(default)]
    pub beta: Option<f64>,
    /// A plugin whose `cache` hook computes the key, TTL, tags or bypass per request.
    #[serde(default)]
    #[schemars(with = "Option<RawPluginRef>")]
    pub plugin: Option<Spanned<RawPluginRef>>,
    /// Keep hot values in each engine's memory too, kept correct by Redis' invalidation
    /// messages (CLIENT TRACKING): a hit then costs no Redis call. Off by default.
    #[serde(default)]
    #[schemars(with = "Option<RawNearCache>")]
    pub near_cache: Option<Spanned<RawNearCache>>,
    /// Take each value's freshness from the origin's answer (RFC 9111): `s-maxage`/`max-age`
    /// (or `Expires`), minus `Age`, and `stale-while-revalidate`/`stale-if-error`, each capped by
    /// this rule's setting (the rule's apply when the origin says nothing); `no-store`,
    /// `private` and `no-cache` answers are not stored. Off by default (the origin's
    /// `Cache-Control` is ignored).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub ttl_from_origin: Option<Spanned<bool>>,
    /// What a `GET` answers when Redis cannot be asked in time: `fail` (default: 503) or
    /// `origin` (the origin's answer, not stored, at most as many at once as the rule's origin
    /// concurrency; beyond that 503).
    #[serde(default)]
    #[schemars(with = "Option<CacheOnRedisErrorName>")]
    pub on_redis_error: Option<Spanned<String>>,
}

/// `near_cache: { max_entries: N, max_age: D }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNearCache {
    /// Values held per engine (default 10000).
    #[serde(default)]
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_entries: Option<Spanned<i64>>,
    /// The longest a copy is served without asking Redis again, even with no invalidation
    /// (default `10s`); never past the value's own freshness.
    #[serde(default)]
    #[schemars(with = "Option<DurationText>")]
    pub max_age: Option<Spanned<String>>,
}

/// The near cache of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearCacheSpec {
    pub max_entries: usize,
    pub max_age: Duration,
}

/// Most entries a near cache may hold: it lives in every engine's memory.
pub(super) const MAX_NEAR_ENTRIES: u64 = 10_000_000;

/// Schema-only: the `format` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum CacheFormatName {
    String,
    Hash,
}

/// Schema-only: the cache `on_redis_error` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum CacheOnRedisErrorName {
    Fail,
    Origin,
}

/// Schema-only: the `write` values.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum WriteModeName {
    Cache,
    Through,
    Behind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheFormat {
    /// The body, stored as one string with its content type.
    String,
    /// A JSON object, stored one HASH field per top-level member.
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// `PUT` writes the cache only.
    Cache,
    /// `PUT` writes the origin first; the cache only if the origin accepted it.
    Through,
    /// `PUT` writes the cache and the journal in one script; a worker writes the origin.
    Behind,
}

/// What a cache `GET` answers when Redis cannot be asked in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOnRedisError {
    /// 503 `redis-unavailable`: the origin is not asked.
    Fail,
    /// The origin's answer, not stored, bounded by the rule's origin concurrency.
    Origin,
}

/// An origin URL split around its `{id}` placeholder(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginTemplate {
    /// The template as written, e.g. `http://127.0.0.1:9000/products/{id}`.
    pub text: String,
}

impl OriginTemplate {
    /// The URL for one id; `encoded_id` must already be percent-encoded for a path segment.
    pub fn url(&self, encoded_id: &str) -> String {
        self.text.replace("{id}", encoded_id)
    }
}

/// A validated `cache` rule.
#[derive(Debug, Clone)]
pub struct Cache {
    pub origin: Option<OriginTemplate>,
    pub ttl: Duration,
    pub negative_ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub format: CacheFormat,
    /// Templates with `{id}`, expanded to other ids of this rule.
    pub related: Vec<String>,
    pub max_value_bytes: u64,
    pub write: WriteMode,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// Per slot group: at most ceil(journal_max_len / slot_groups) entries each.
    pub journal_max_len: u64,
    /// Slot groups (see `RawCache::slot_groups`), 1..=MAX_SLOT_GROUPS.
    pub slot_groups: u32,
    pub origin_timeout: Duration,
    pub refresh_lease: Duration,
    pub fill_wait: Duration,
    pub beta: f64,
    pub plugin: Option<PluginRef>,
    pub near_cache: Option<NearCacheSpec>,
    pub on_redis_error: CacheOnRedisError,
    /// Freshness from the origin's `Cache-Control` (bounded by this rule's settings).
    pub ttl_from_origin: bool,
    pub location: Location,
}

impl Validator {
    pub(super) fn cache(
        &mut self,
        path: &Path,
        rule: &str,
        raw: &Spanned<RawCache>,
        body: &Node,
    ) -> Option<Cache> {
        let before = self.error_count();
        let at = loc(path, raw.span());

        let origin = raw.origin.as_ref().and_then(|o| {
            let text = o.as_str();
            let l = loc(path, o.span());
            let Some(rest) = text.strip_prefix("http://") else {
                self.err(
                    &l,
                    format!(
                        "`origin` must be an http:// URL (got `{text}`); https origins are not supported yet"
                    ),
                );
                return None;
            };
            if rest.is_empty() || rest.starts_with('/') || rest.starts_with('{') {
                self.err(&l, format!("`origin` `{text}` has no host"));
                return None;
            }
            if !text.contains("{id}") {
                self.err(
                    &l,
                    format!("`origin` `{text}` must contain `{{id}}`, where the id goes"),
                );
                return None;
            }
            let stray = text.replace("{id}", "");
            if stray.contains('{') || stray.contains('}') {
                self.err(&l, format!("`origin` `{text}` has a placeholder other than `{{id}}`"));
                return None;
            }
            Some(OriginTemplate {
                text: text.to_string(),
            })
        });

        let ttl = self.duration(path, "ttl", &raw.ttl);
        let negative_ttl = raw
            .negative_ttl
            .as_ref()
            .and_then(|d| self.duration(path, "negative_ttl", d));
        let swr = raw
            .stale_while_revalidate
            .as_ref()
            .and_then(|d| self.duration(path, "stale_while_revalidate", d))
            .unwrap_or(Duration::ZERO);
        let sie = raw
            .stale_if_error
            .as_ref()
            .and_then(|d| self.duration(path, "stale_if_error", d))
            .unwrap_or(Duration::ZERO);

        let format = match raw.format.as_ref().map(|f| (f.as_str(), f)) {
            None | Some(("string", _)) => CacheFormat::String,
            Some(("hash", _)) => CacheFormat::Hash,
            Some((other, f)) => {
                self.err(
                    &loc(path, f.span()),
                    format!("unknown `format` `{other}`; expected `string` or `hash`"),
                );
                CacheFormat::String
            }
        };

        let mut related = Vec::new();
        for r in raw.related.iter().flatten() {
            let t = r.as_str();
            let l = loc(path, r.span());
            if !t.contains("{id}") {
                self.err(
                    &l,
                    format!("`related` entry `{t}` must contain `{{id}}` (it names other ids of this rule)"),
                );
            } else if t == "{id}" {
                self.err(&l, "`related` entry `{id}` is the value itself");
            } else {
                related.push(t.to_string());
            }
        }

        let max_value_bytes = match &raw.max_value_bytes {
            None => DEFAULT_MAX_VALUE_BYTES,
            Some(n) if **n > MAX_MAX_VALUE_BYTES => {
                self.err(
                    &loc(path, n.span()),
                    format!(
                        "`max_value_bytes` {} is above the ceiling of {MAX_MAX_VALUE_BYTES}",
                        **n
                    ),
                );
                DEFAULT_MAX_VALUE_BYTES
            }
            Some(n) => self
                .positive(path, "max_value_bytes", n)
                .unwrap_or(DEFAULT_MAX_VALUE_BYTES),
        };

        let write = match raw.write.as_ref().map(|w| (w.as_str(), w)) {
            None | Some(("cache", _)) => WriteMode::Cache,
            Some(("through", _)) => WriteMode::Through,
            Some(("behind", _)) => WriteMode::Behind,
            Some((other, w)) => {
                self.err(
                    &loc(path, w.span()),
                    format!("unknown `write` `{other}`; expected `cache`, `through` or `behind`"),
                );
                WriteMode::Cache
            }
        };
        if write != WriteMode::Cache && origin.is_none() && raw.origin.is_none() {
            let w = raw
                .write
                .as_ref()
                .map(|w| loc(path, w.span()))
                .unwrap_or(at.clone());
            self.err(
                &w,
                format!(
                    "`write: {}` needs an `origin` to write to",
                    raw.write.as_ref().map(|w| w.as_str()).unwrap_or("")
                ),
            );
        }
        let behind_only = [
            ("max_attempts", raw.max_attempts.as_ref().map(|v| v.span())),
            (
                "retry_backoff",
                raw.retry_backoff.as_ref().map(|v| v.span()),
            ),
            (
                "journal_max_len",
                raw.journal_max_len.as_ref().map(|v| v.span()),
            ),
        ];
        if write != WriteMode::Behind {
            for (field, span) in behind_only {
                if let Some(span) = span {
                    self.err(
                        &loc(path, span),
                        format!("`{field}` only applies to `write: behind`"),
                    );
                }
            }
        }
        let max_attempts = raw
            .max_attempts
            .as_ref()
            .and_then(|n| self.positive(path, "max_attempts", n))
            .map(|n| u32::try_from(n.min(1000)).unwrap_or(1000))
            .unwrap_or(5);
        let retry_backoff = raw
            .retry_backoff
            .as_ref()
            .and_then(|d| self.duration(path, "retry_backoff", d))
            .unwrap_or(Duration::from_millis(200));
        let journal_max_len = raw
            .journal_max_len
            .as_ref()
            .and_then(|n| self.positive(path, "journal_max_len", n))
            .unwrap_or(100_000);
        let slot_groups = match &raw.slot_groups {
            None => DEFAULT_SLOT_GROUPS,
            Some(n) if **n > i64::from(MAX_SLOT_GROUPS) => {
                self.err(
                    &loc(path, n.span()),
                    format!(
                        "`slot_groups` {} is above the ceiling of {MAX_SLOT_GROUPS}",
                        **n
                    ),
                );
                DEFAULT_SLOT_GROUPS
            }
            Some(n) => self
                .positive(path, "slot_groups", n)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(DEFAULT_SLOT_GROUPS),
        };
        let origin_timeout = raw
            .origin_timeout
            .as_ref()
            .and_then(|d| self.duration(path, "origin_timeout", d))
            .unwrap_or(Duration::from_secs(2));
        let refresh_lease = raw
            .refresh_lease
            .as_ref()
            .and_then(|d| self.duration(path, "refresh_lease", d))
            .unwrap_or(origin_timeout + Duration::from_secs(1));
        if refresh_lease < origin_timeout
            && let Some(l) = &raw.refresh_lease
        {
            self.warn(
                &loc(path, l.span()),
                format!(
                    "rule `{rule}`: `refresh_lease` is shorter than `origin_timeout` ({}): a slow \
                     fill loses its lease and a second caller fetches the same id",
                    super::duration::format(origin_timeout)
                ),
            );
        }
        let fill_wait = raw
            .fill_wait
            .as_ref()
            .and_then(|d| self.duration(path, "fill_wait", d))
            .unwrap_or(origin_timeout);
        let beta = match raw.beta {
            None => 1.0,
            Some(b) if b.is_finite() && b > 0.0 && b <= 100.0 => b,
            Some(b) => {
                self.err(
                    &at,
                    format!("`beta` must be above 0 and at most 100, not {b}"),
                );
                1.0
            }
        };
        if origin.is_none() && raw.origin.is_none() {
            for (field, set) in [
                ("negative_ttl", raw.negative_ttl.is_some()),
                ("stale_if_error", raw.stale_if_error.is_some()),
                (
                    "stale_while_revalidate",
                    raw.stale_while_revalidate.is_some(),
                ),
            ] {
                if set {
                    self.warn(
                        &at,
                        format!("rule `{rule}`: `{field}` has no effect without an `origin`"),
                    );
                }
            }
        }
        let near_cache = raw.near_cache.as_ref().map(|n| {
            let max_entries = match &n.max_entries {
                None => 10_000,
                Some(v) => match self.positive(path, "near_cache.max_entries", v) {
                    Some(m) if m > MAX_NEAR_ENTRIES => {
                        self.err(
                            &loc(path, v.span()),
                            format!("`near_cache.max_entries` is at most {MAX_NEAR_ENTRIES}"),
                        );
                        1
                    }
                    Some(m) => m,
                    None => 1,
                },
            };
            let max_age = n
                .max_age
                .as_ref()
                .and_then(|d| self.duration(path, "near_cache.max_age", d))
                .unwrap_or(Duration::from_secs(10));
            NearCacheSpec {
                max_entries: usize::try_from(max_entries).unwrap_or(usize::MAX),
                max_age,
            }
        });
        let on_redis_error = match raw.on_redis_error.as_ref().map(|v| (v.as_str(), v)) {
            None | Some(("fail", _)) => CacheOnRedisError::Fail,
            Some(("origin", v)) => {
                let l = loc(path, v.span());
                if raw.origin.is_none() {
                    self.err(&l, "`on_redis_error: origin` needs an `origin` to ask");
                } else if write == WriteMode::Behind {
                    self.warn(
                        &l,
                        format!(
                            "rule `{rule}`: `on_redis_error: origin` with `write: behind` serves \
                             the origin's copy while Redis is down, which lacks the writes still \
                             in the journal"
                        ),
                    );
                }
                CacheOnRedisError::Origin
            }
            Some((other, v)) => {
                self.err(
                    &loc(path, v.span()),
                    format!("unknown `on_redis_error` `{other}`; expected `fail` or `origin`"),
                );
                CacheOnRedisError::Fail
            }
        };
        let ttl_from_origin = match &raw.ttl_from_origin {
            Some(t) if **t && raw.origin.is_none() => {
                self.err(
                    &loc(path, t.span()),
                    "`ttl_from_origin` needs an `origin` whose answers it reads",
                );
                false
            }
            Some(t) => **t,
            None => false,
        };
        let plugin = raw
            .plugin
            .as_ref()
            .map(|p| self.plugin_ref(path, "cache", p, body));

        if self.error_count() > before {
            return None;
        }
        Some(Cache {
            origin,
            ttl: ttl?,
            negative_ttl,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            format,
            related,
            max_value_bytes,
            write,
            max_attempts,
            retry_backoff,
            journal_max_len,
            slot_groups,
            origin_timeout,
            refresh_lease,
            fill_wait,
            beta,
            plugin,
            near_cache,
            on_redis_error,
            ttl_from_origin,
            location: at,
        })
    }
}
