//! Cache rules at request time. `CacheRule` is built once per snapshot and holds everything a
//! request needs: the key space, the validated spec, the compiled scripts, the origin client,
//! the plugin binding and the metric handles.
//!
//! One concept per file:
//! - `read`: GET (the read script's loop: serve, fill or wait; a GET's Redis budget), with
//!   `fill` (the origin call, the fill script, giving the refresh lease back) and `near`
//!   (this engine's near cache of values).
//! - `invalidate`: DELETE and invalidation by tag.
//! - `write`: PUT and PATCH; `conditional`: `If-Match` / `If-None-Match`; `journal`: the
//!   write-behind flusher; `dead`: its dead letters.
//! - `origin`: the origin client; `freshness`: the origin's Cache-Control (`ttl_from_origin`).
//! - `keys`: which keys each script takes; `reply`: decoding the scripts' replies.
//!
//! What each key holds: the data contract in `compile::cache`.

pub mod conditional;
pub mod dead;
mod fill;
pub mod freshness;
pub mod invalidate;
pub mod journal;
pub mod keys;
pub mod near;
pub mod origin;
pub mod read;
mod reply;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;

use crate::compile::{CompiledCache, KeySpace};
use crate::patterns::InputError;
use crate::plugin::{CacheDecision, PluginBinding, PluginError, RequestFacts};
use crate::policy::Rule;
use crate::policy::cache::{Cache, OriginTemplate};
use crate::store::near::NearCache;

pub use keys::CacheKeys;
pub use near::NearValue;
pub use origin::{OriginClient, OriginError, OriginResponse, parse_tags, valid_tag};
pub use read::{Body, ReadError, ReadOutcome};

/// A cache rule ready to serve.
pub struct CacheRule {
    pub app: String,
    pub rule: String,
    /// Every key the rule's scripts take (`keys`).
    keys: CacheKeys,
    pub spec: Cache,
    pub scripts: CompiledCache,
    /// `None` when the rule has no `origin`.
    pub origin: Option<OriginClient>,
    /// Dot segments (`.`, `..`) the origin template's path has by itself: an id must never
    /// add one (see `origin_url`).
    origin_dots: usize,
    pub plugin: Option<(String, PluginBinding)>,
    /// The read script's constant ARGV, formatted once per snapshot rather than per GET.
    read_argv: read::ReadArgv,
    /// This engine's copy of hot values (`near_cache:`), keyed by value key.
    pub near: Option<Arc<NearCache<NearValue>>>,
    /// `on_redis_error: origin`: GETs served by the origin while Redis is unavailable, at most
    /// the origin client's concurrency at once; a GET that finds none free is a 503 at once
    /// (an outage must not queue every request behind the origin).
    without_redis: tokio::sync::Semaphore,
    counters: Counters,
    /// Reads gathered into batch calls (`store::batch`), started on first use; None when
    /// batching is off or on a cluster.
    read_batcher: std::sync::OnceLock<Option<crate::store::batch::Batcher>>,
    /// Reads asked for a fresh hit first (`read::probe`), likewise.
    hit_batcher: std::sync::OnceLock<Option<crate::store::batch::Batcher>>,
}

/// `patternd_cache_requests_total{app,rule,result}`.
struct Counters {
    hit: Counter,
    miss: Counter,
    stale: Counter,
    refresh: Counter,
    collapsed: Counter,
    negative: Counter,
    bypass: Counter,
    error: Counter,
    plugin_failed: Counter,
    /// Hits served from the near cache (also counted as `hit`).
    near_hit: Counter,
    /// Redis unavailable: answered 503 (`on_redis_error: fail`, or no origin permit free).
    redis_error: Counter,
    /// Redis unavailable: served by the origin (`on_redis_error: origin`).
    redis_origin: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |result: &'static str| metrics::counter!("patternd_cache_requests_total", "app" => app.to_string(), "rule" => rule.to_string(), "result" => result);
        Self {
            hit: c("hit"),
            miss: c("miss"),
            stale: c("stale"),
            refresh: c("refresh"),
            collapsed: c("collapsed"),
            negative: c("negative"),
            bypass: c("bypass"),
            error: c("error"),
            redis_error: c("redis_error"),
            redis_origin: c("redis_origin"),
            near_hit: metrics::counter!("patternd_near_cache_hits_total", "app" => app.to_string(), "rule" => rule.to_string()),
            plugin_failed: metrics::counter!("patternd_plugin_failures_total", "app" => app.to_string(), "rule" => rule.to_string()),
        }
    }
}

impl CacheRule {
    pub fn new(
        rule: &Rule,
        spec: &Cache,
        scripts: &CompiledCache,
        keys: &KeySpace,
        plugin: Option<(String, PluginBinding)>,
    ) -> Result<Self, OriginError> {
        let origin = match &spec.origin {
            Some(_) => Some(OriginClient::new(
                &rule.app,
                &rule.name,
                spec.origin_timeout,
            )?),
            None => None,
        };
        let keys = CacheKeys::new(keys, spec.write, spec.slot_groups);
        // A tag bump may touch any value: tag keys drop the whole near cache.
        let near = spec.near_cache.as_ref().map(|n| {
            Arc::new(NearCache::new(
                n.max_entries,
                Some(CacheKeys::tags_suffix()),
            ))
        });
        Ok(Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys,
            spec: spec.clone(),
            scripts: scripts.clone(),
            origin,
            origin_dots: spec
                .origin
                .as_ref()
                .map_or(0, |o| dot_segments(&o.url("_"))),
            plugin,
            read_argv: read::ReadArgv::new(spec),
            near,
            without_redis: tokio::sync::Semaphore::new(origin::MAX_IN_FLIGHT),
            counters: Counters::new(&rule.app, &rule.name),
            read_batcher: std::sync::OnceLock::new(),
            hit_batcher: std::sync::OnceLock::new(),
        })
    }

    /// How long a value is kept after its freshness ends: max(stale_while_revalidate,
    /// stale_if_error), in ms. Every value writer uses it for `cache_store`'s `stale`.
    pub fn stale_ms(&self) -> u64 {
        duration_ms(
            self.spec
                .stale_while_revalidate
                .max(self.spec.stale_if_error),
        )
    }

    /// The rule's `ttl` in ms.
    pub fn ttl_ms(&self) -> u64 {
        duration_ms(self.spec.ttl)
    }

    /// How long a write marker (`W`: DELETE, a write-through) lives in the lease, and how long
    /// a fill may take from its read to its store: longer than a fill that read the origin
    /// before the write or DELETE can take (its origin call ends within origin_timeout, or it
    /// loses its lease after refresh_lease), and longer than a write-through's own origin
    /// call. A fill older than this stores nothing (`lua/cache/fill.lua`), so the marker never
    /// lapses under a fill it must stop; a group's tag versions live at least as long after
    /// an invalidation.
    pub fn marker_ms(&self) -> u64 {
        duration_ms(self.spec.refresh_lease).max(duration_ms(self.spec.origin_timeout) + 1000)
    }

    /// How long a tag's invalidation is remembered in a slot group (`lua/cache/invalidate.lua`):
    /// longer than any value stamped before it can live (the longest ttl a store may use, plus
    /// the stale windows, plus the longest a fill may take between its read and its store), so
    /// no value it concerns comes back when it is forgotten.
    pub fn tag_memory_ms(&self) -> u64 {
        let ttl = if self.plugin.is_some() {
            crate::plugin::decision::MAX_TTL_MS.max(self.ttl_ms())
        } else {
            self.ttl_ms()
        };
        let negative = self.spec.negative_ttl.map_or(0, duration_ms);
        ttl.max(negative)
            .saturating_add(self.stale_ms())
            .saturating_add(self.marker_ms())
    }

    /// The journal bound of one slot group: ceil(journal_max_len / slot_groups), at least 1,
    /// so all groups together hold at most about journal_max_len undelivered writes.
    pub fn group_journal_max_len(&self) -> u64 {
        self.spec
            .journal_max_len
            .div_ceil(u64::from(self.keys.groups()))
            .max(1)
    }

    /// The origin URL of `id` (the id percent-encoded as one path segment). `None` when the
    /// rule has no origin, or when the id would put a dot segment into the URL's path (`..`,
    /// or `.` next to a dot of the template): URL parsers resolve those, percent-encoded
    /// too (`%2E%2E`, WHATWG URL, which reqwest's `url` follows), so the request would reach
    /// another path of the origin. Every origin call (reads, write-through, the write-behind
    /// flusher) builds its URL here.
    pub fn origin_url(&self, id: &str) -> Option<String> {
        origin_url_for(self.spec.origin.as_ref()?, self.origin_dots, id)
    }

    /// The rule's `related` ids of `id` (DELETE drops them too). A related id longer than
    /// `MAX_ID_BYTES` is left out: no value can exist under it (every read, write and plugin
    /// key is bounded), so there is nothing to drop; refusing the DELETE instead would make
    /// the ids near the bound, which PUT and GET accept, impossible to delete.
    pub fn related_ids<'a>(&'a self, id: &'a str) -> impl Iterator<Item = String> + 'a {
        self.spec
            .related
            .iter()
            .map(move |t| t.replace("{id}", id))
            .filter(|rid| rid.len() <= crate::patterns::MAX_ID_BYTES)
    }

    /// Runs the rule's `cache` plugin hook, if it has one. A failing plugin is an error: a
    /// cache has no safe fallback key.
    pub fn plugin_decision(
        &self,
        facts: impl FnOnce() -> RequestFacts,
    ) -> Result<Option<CacheDecision>, PluginError> {
        let Some((name, binding)) = &self.plugin else {
            return Ok(None);
        };
        let d = binding.cache(&facts()).inspect_err(|e| {
            self.counters.plugin_failed.increment(1);
            tracing::warn!(app = %self.app, rule = %self.rule, plugin = %name, error = %e, "cache plugin failed");
        })?;
        if let Some(t) = d.tags.iter().find(|t| !valid_tag(t)) {
            self.counters.plugin_failed.increment(1);
            return Err(PluginError::BadOutput {
                plugin: name.clone(),
                message: format!("tag `{t}` is not 1 to 128 bytes without commas and whitespace"),
            });
        }
        Ok(Some(d))
    }

    /// A key the plugin chose, checked like a client's id; a bad one is the plugin's failure,
    /// not the client's.
    pub fn plugin_key(&self, key: String) -> Result<String, PluginError> {
        crate::patterns::check_id(&key).map_err(|e| PluginError::BadOutput {
            plugin: self
                .plugin
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_default(),
            message: format!("cache key: {e}"),
        })?;
        Ok(key)
    }

    pub fn wants_facts(&self) -> bool {
        self.plugin.is_some()
    }
}

pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A cache id as a request names it: bounded like every id, and one path segment of the
/// origin URL, so never `.` or `..` (whatever the rule's origin: one rule for every cache
/// route). Checked at the HTTP edge of every cache route and again by the writes.
pub fn check_cache_id(id: &str) -> Result<(), InputError> {
    crate::patterns::check_id(id)?;
    if id == "." || id == ".." {
        return Err(InputError::DotSegment(id.to_string()));
    }
    Ok(())
}

/// `template`'s URL for `id`, unless the id adds a dot segment to the template's own
/// `template_dots`.
fn origin_url_for(template: &OriginTemplate, template_dots: usize, id: &str) -> Option<String> {
    let url = template.url(&encode_path_segment(id));
    (dot_segments(&url) == template_dots).then_some(url)
}

/// How many segments of `url`'s path are dot segments, as the WHATWG URL parser (reqwest's
/// `url` crate) sees them: `.` or `..`, each dot also as `%2e`/`%2E`, with `\` separating
/// segments like `/` in http URLs. The path ends at `?` or `#`.
fn dot_segments(url: &str) -> usize {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let Some(start) = rest.find(['/', '\\']) else {
        return 0;
    };
    let path = &rest[start..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    path.split(['/', '\\'])
        .filter(|seg| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".."
        })
        .count()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so an id is exactly one path
/// segment of the origin URL (`/`, `?`, `#` and `%` in ids cannot change the URL's shape).
pub fn encode_path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(encode_path_segment("a-1_b.c~"), "a-1_b.c~");
        assert_eq!(encode_path_segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
        assert_eq!(encode_path_segment("ü"), "%C3%BC");
    }

    #[test]
    fn dot_segments_are_counted_like_a_url_parser() {
        assert_eq!(dot_segments("http://h/items/x"), 0);
        assert_eq!(dot_segments("http://h/items/.."), 1);
        assert_eq!(dot_segments("http://h/items/./x"), 1);
        assert_eq!(dot_segments("http://h/items/%2E%2e/x"), 1);
        assert_eq!(dot_segments("http://h/items/.%2E"), 1);
        assert_eq!(dot_segments("http://h/a\\..\\b"), 1);
        assert_eq!(dot_segments("http://h/items/...;x"), 0);
        assert_eq!(dot_segments("http://h/items/..."), 0);
        assert_eq!(dot_segments("http://h/items?id=.."), 0);
        assert_eq!(dot_segments("http://h/items/x#/.."), 0);
        assert_eq!(dot_segments("http://h"), 0);
        // Each of these is what reqwest's URL parser really resolves.
        for (url, resolved) in [
            ("http://h/items/..", "http://h/"),
            ("http://h/items/%2E%2E", "http://h/"),
            ("http://h/items/%2e", "http://h/items/"),
        ] {
            assert_eq!(reqwest::Url::parse(url).unwrap().as_str(), resolved);
            assert_eq!(dot_segments(url), 1, "{url}");
        }
    }

    #[test]
    fn no_id_adds_a_dot_segment_to_an_origin_url() {
        let url = |template: &str, id: &str| {
            let t = OriginTemplate {
                text: template.to_string(),
            };
            origin_url_for(&t, dot_segments(&t.url("_")), id)
        };
        assert_eq!(
            url("http://h/items/{id}", "a.b").as_deref(),
            Some("http://h/items/a.b")
        );
        assert_eq!(url("http://h/items/{id}", ".."), None);
        assert_eq!(url("http://h/items/{id}", "."), None);
        assert_eq!(url("http://h/items/.{id}", "."), None);
        assert_eq!(url("http://h/items/{id}{id}", "."), None);
        assert!(
            url("http://h/items/{id}{id}", "..").is_some(),
            "`....` is a name"
        );
        assert!(
            url("http://h/items/{id}.json", ".").is_some(),
            "`..json` is a name"
        );
        assert!(
            url("http://h/items?id={id}", "..").is_some(),
            "a query, not a path"
        );
        // A template with a dot segment of its own is left as the operator wrote it.
        assert!(url("http://h/a/../{id}", "x").is_some());
        assert!(url("http://h/a/../{id}", "..").is_none());
    }

    #[test]
    fn dot_ids_are_refused() {
        assert_eq!(
            check_cache_id(".."),
            Err(InputError::DotSegment("..".into()))
        );
        assert!(check_cache_id(".").is_err());
        assert!(check_cache_id("").is_err());
        assert!(check_cache_id("...").is_ok());
        assert!(check_cache_id(".a").is_ok());
        assert!(
            check_cache_id("%2e%2e").is_ok(),
            "sent as %252e%252e: one segment"
        );
    }
}
