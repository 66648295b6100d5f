//! Cache writes at request time: `PUT` and `PATCH` for `write: cache | through | behind`.
//!
//! - `cache`: one script stores the value.
//! - `through`: three steps, because the origin and Redis cannot change atomically. First a
//!   script sets the cached value aside and puts this write's token in the lease
//!   (`lua/cache/through_begin.lua`), so from then on no read serves the value the write may
//!   replace; if Redis fails this step, nothing was written anywhere (503). Then the origin
//!   (`PUT`/`PATCH` to the origin URL, bounded by `origin_timeout`). A 2xx lets the PUT/PATCH
//!   script store the new value; if Redis fails that step, the origin has the write and the
//!   answer says so (2xx, `cache_unconfirmed`): reads go to the origin until the marker
//!   lapses. A refusal (an answer, or no connection) restores the set-aside value; a timeout
//!   or a connection lost mid-request (the origin may have applied the write) drops it.
//! - `behind`: one script stores the value AND appends the journal entry; the answer (202) is
//!   sent only after that script succeeded, so an acknowledged write is in Redis, and the
//!   flusher (`journal`) delivers it to the origin at least once.
//!
//! A value over `max_value_bytes` is refused (413) before anything is written.

use axum::body::Bytes;
use reqwest::Method;

use super::conditional::Preconditions;
use super::origin::{MAX_TAGS, OriginError};
use super::reply::{self, WriteReply};
use super::{CacheRule, check_cache_id, valid_tag};
use crate::patterns::reply::ReplyError;
use crate::patterns::{InputError, random};
use crate::plugin::{PluginError, RequestFacts};
use crate::policy::cache::{CacheFormat, WriteMode};
use crate::store::{Store, StoreError};

/// How much of an origin's answer to a write is read (it is discarded anyway).
const ORIGIN_ANSWER_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the value is {size} bytes; this rule stores at most {max} (max_value_bytes)")]
    TooLarge { size: u64, max: u64 },
    #[error("{0}")]
    BadValue(String),
    #[error(
        "rule `{0}` stores values as strings (format: string); PATCH needs `format: hash`; \
         send the whole value with PUT"
    )]
    NotHash(String),
    #[error("no cached value for id `{0}` to patch")]
    NotFound(String),
    /// 412: `If-Match` / `If-None-Match` did not hold; nothing was written.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The origin answered a write with a non-2xx status.
    #[error("the origin refused the write with status {status}; {cache}")]
    OriginRefused { status: u16, cache: CacheLeft },
    #[error("the origin write failed ({detail}); {cache}")]
    OriginUnreachable { detail: String, cache: CacheLeft },
    #[error("the origin did not answer the write in time ({detail}); {cache}")]
    OriginTimeout { detail: String, cache: CacheLeft },
    #[error(
        "the write-behind journal of this id's slot group holds {backlog} undelivered writes \
         (journal_max_len / slot_groups); nothing was written, retry later"
    )]
    JournalFull { backlog: u64 },
    /// The rule's plugin said bypass for a write that only the cache could take (`write:
    /// cache | behind`): there is no cache write to do and no origin write to make.
    #[error(
        "the cache plugin bypasses the cache for this request; rule `{0}` writes the origin \
         only with `write: through`, so nothing was written"
    )]
    Bypassed(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
    /// No lease token: the OS has no entropy source (see `random`).
    #[error("no secure random source: {0}")]
    Random(String),
}

impl WriteError {
    fn result_label(&self) -> &'static str {
        match self {
            WriteError::Input(_) | WriteError::BadValue(_) => "bad_request",
            WriteError::TooLarge { .. } => "too_large",
            WriteError::NotHash(_) => "not_hash",
            WriteError::NotFound(_) => "not_found",
            WriteError::PreconditionFailed(_) => "precondition_failed",
            WriteError::OriginRefused { .. } | WriteError::OriginUnreachable { .. } => {
                "origin_error"
            }
            WriteError::OriginTimeout { .. } => "origin_timeout",
            WriteError::JournalFull { .. } => "journal_full",
            WriteError::Bypassed(_) => "bypassed",
            WriteError::Plugin(_) => "plugin_failed",
            WriteError::Store(_) => "redis_error",
            // A reply the scripts never send, or no entropy: a bare 500 either way.
            WriteError::Reply(_) | WriteError::Random(_) => "internal",
        }
    }
}

/// What a failed write-through left in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLeft {
    /// What it held before the write.
    Unchanged,
    /// No value for the id: the origin may have applied the write, so the old value is
    /// never served again; reads go to the origin.
    Dropped,
    /// The origin did not apply the write, but Redis failed to put the set-aside value back:
    /// reads go to the origin.
    NotRestored,
}

impl std::fmt::Display for CacheLeft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheLeft::Unchanged => "the cache was not changed",
            CacheLeft::Dropped => {
                "the origin may have applied it, so the cached value was dropped and reads go \
                 to the origin"
            }
            CacheLeft::NotRestored => {
                "the cached value could not be put back (Redis failed), so reads go to the origin"
            }
        })
    }
}

/// How a write-through's origin request failed.
enum OriginFailure {
    /// The origin answered with this non-2xx status: it did not take the write.
    Refused(u16),
    /// Never sent (no connection, or no origin): nothing happened there.
    NotSent(String),
    /// Failed after it was sent: the origin may have applied it.
    Lost(String),
    Timeout(String),
}

impl OriginFailure {
    /// True when the origin certainly did not apply the write.
    fn not_applied(&self) -> bool {
        matches!(self, OriginFailure::Refused(_) | OriginFailure::NotSent(_))
    }

    fn into_error(self, cache: CacheLeft) -> WriteError {
        match self {
            OriginFailure::Refused(status) => WriteError::OriginRefused { status, cache },
            OriginFailure::NotSent(detail) | OriginFailure::Lost(detail) => {
                WriteError::OriginUnreachable { detail, cache }
            }
            OriginFailure::Timeout(detail) => WriteError::OriginTimeout { detail, cache },
        }
    }
}

/// A `PUT`: the value as sent.
#[derive(Debug)]
pub struct PutRequest<'a> {
    pub id: &'a str,
    /// The request's `Content-Type` (format: string keeps it; default
    /// `application/octet-stream`).
    pub content_type: Option<&'a str>,
    /// The request's `Cache-Tag` header values.
    pub tags: Vec<String>,
    pub body: Bytes,
    /// Built by the handler when the rule has a plugin (its `cache` hook runs for writes too).
    pub facts: Option<RequestFacts>,
    /// `If-Match` / `If-None-Match`, checked in the write's script.
    pub conditions: Preconditions,
}

/// A PATCH, as the handler extracted it: a JSON object whose top-level members are set
/// (`null` deletes one); a PATCH keeps the value's tags.
pub struct PatchRequest<'a> {
    pub id: &'a str,
    /// The request's `Content-Type` (forwarded to the origin; default
    /// `application/merge-patch+json`).
    pub content_type: Option<&'a str>,
    pub body: Bytes,
    /// Built by the handler when the rule has a plugin.
    pub facts: Option<RequestFacts>,
    /// `If-Match` / `If-None-Match`, checked in the write's script.
    pub conditions: Preconditions,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// `behind`: the journal entry that will carry the write to the origin.
    pub journal_id: Option<String>,
    /// `PATCH`: the whole object after the patch; `None` for `PUT`, and for a write-through
    /// `PATCH` of an id that was not cached (the origin took it; nothing to patch here).
    pub object: Option<String>,
    /// Write-through: the origin took the write, but Redis failed the script that stores it
    /// (it may still run late). The old value is not served either way: it was set aside
    /// before the origin call, so reads go to the origin until the write's marker lapses.
    pub cache_unconfirmed: bool,
    /// The stored value's new version (its ETag is `"<version>"`), when the write stored one.
    pub version: Option<String>,
}

impl CacheRule {
    /// Largest value this rule stores, in bytes.
    pub fn max_value_bytes(&self) -> u64 {
        self.spec.max_value_bytes
    }

    pub fn write_mode(&self) -> WriteMode {
        self.spec.write
    }

    fn mode_label(&self) -> &'static str {
        match self.spec.write {
            WriteMode::Cache => "cache",
            WriteMode::Through => "through",
            WriteMode::Behind => "behind",
        }
    }

    /// Counts a write in `patternd_cache_writes_total{app,rule,mode,result}` (the handler
    /// counts the writes it refuses before they reach `put`/`patch`, e.g. a body over
    /// `max_value_bytes`).
    pub fn count_write(&self, result: &'static str) {
        metrics::counter!("patternd_cache_writes_total", "app" => self.app.clone(), "rule" => self.rule.clone(), "mode" => self.mode_label(), "result" => result).increment(1);
    }

    /// The rule's plugin decision for a write (same facts as a GET: method, path, id,
    /// headers): `None` = bypass, else (the id of the value to write, ttl ms, the plugin's
    /// tags). Without a plugin: the client's id, the rule's ttl, no tags.
    fn write_choice(
        &self,
        method: &str,
        id: &str,
        facts: Option<RequestFacts>,
    ) -> Result<Option<(String, u64, Vec<String>)>, WriteError> {
        let decision = self.plugin_decision(|| {
            facts.unwrap_or_else(|| RequestFacts {
                method: method.into(),
                id: id.to_string(),
                ..RequestFacts::default()
            })
        })?;
        let Some(d) = decision else {
            return Ok(Some((id.to_string(), self.ttl_ms(), Vec::new())));
        };
        if d.bypass {
            return Ok(None);
        }
        let key = match d.key {
            Some(k) => self.plugin_key(k)?,
            None => id.to_string(),
        };
        Ok(Some((key, d.ttl_ms.unwrap_or(self.ttl_ms()), d.tags)))
    }

    /// `PUT /v1/cache/{app}/{rule}/{id}`.
    pub async fn put(
        &self,
        store: &Store,
        req: PutRequest<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        let id = req.id;
        let r = self.put_inner(store, req).await;
        self.finish_write(id, r)
    }

    /// After any write attempt: this engine's near copy may be outdated now, whatever
    /// happened; and the write is counted.
    fn finish_write(
        &self,
        id: &str,
        r: Result<WriteOutcome, WriteError>,
    ) -> Result<WriteOutcome, WriteError> {
        self.forget(id);
        self.count_write(match &r {
            Ok(o) if o.cache_unconfirmed => "cache_unconfirmed",
            Ok(o) if o.journal_id.is_some() => "accepted",
            Ok(_) => "stored",
            Err(e) => e.result_label(),
        });
        r
    }

    async fn put_inner(
        &self,
        store: &Store,
        req: PutRequest<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        check_cache_id(req.id)?;
        let size = req.body.len() as u64;
        if size > self.spec.max_value_bytes {
            return Err(WriteError::TooLarge {
                size,
                max: self.spec.max_value_bytes,
            });
        }
        let hash = self.spec.format == CacheFormat::Hash;
        let content_type = if hash {
            "application/json"
        } else {
            req.content_type.unwrap_or("application/octet-stream")
        };
        let Some((key_id, ttl_ms, plugin_tags)) = self.write_choice("PUT", req.id, req.facts)?
        else {
            bypass_unconditional(&req.conditions)?;
            // Bypass: write-through writes the origin only (the cache is not used for this
            // request); the other modes have nothing to write.
            if self.spec.write == WriteMode::Through {
                self.origin_write(Method::PUT, req.id, content_type, req.body.clone())
                    .await
                    .map_err(|f| f.into_error(CacheLeft::Unchanged))?;
                return Ok(WriteOutcome::default());
            }
            return Err(WriteError::Bypassed(self.rule.clone()));
        };
        // The plugin's tags first, then the client's; all must fit (none silently dropped).
        let mut all_tags = plugin_tags;
        all_tags.extend(req.tags.iter().cloned());
        let tags = check_tags(&all_tags)?;
        let members = if hash {
            Some(object_members(&req.body)?)
        } else {
            None
        };
        let keys = self.keys.write(&key_id);
        let through = self.spec.write == WriteMode::Through;
        let token = random::token::<{ random::TOKEN_BYTES }>()
            .map_err(|e| WriteError::Random(e.to_string()))?;
        let marker_ms = self.marker_ms().to_string();
        let (im, inm) = req.conditions.script_args();
        if through {
            self.through_origin(
                store,
                &keys,
                (&token, &marker_ms),
                (&im, &inm),
                Method::PUT,
                req.id,
                &key_id,
                content_type,
                req.body.clone(),
            )
            .await?;
        }
        let behind = self.spec.write == WriteMode::Behind;
        let ttl = ttl_ms.to_string();
        // The journal entry names the value's id only when it differs from the client's.
        let k = if key_id == req.id {
            ""
        } else {
            key_id.as_str()
        };
        let stale = self.stale_ms().to_string();
        let max_len = self.group_journal_max_len().to_string();
        let n = tags.len().to_string();
        let mut args: Vec<&[u8]> = vec![
            ttl.as_bytes(),
            stale.as_bytes(),
            match self.spec.write {
                WriteMode::Cache => b"c",
                WriteMode::Through => b"t",
                WriteMode::Behind => b"b",
            },
            if through {
                token.as_bytes()
            } else {
                max_len.as_bytes()
            },
            req.id.as_bytes(),
            content_type.as_bytes(),
            if hash { b"h" } else { b"s" },
            k.as_bytes(),
            // Write-through checked them before the origin (`lua/cache/through_begin.lua`).
            if through { b"" } else { im.as_bytes() },
            if through { b"" } else { inm.as_bytes() },
            n.as_bytes(),
        ];
        args.extend(tags.iter().map(|t| t.as_bytes()));
        // The body goes along when it is stored (string) or journaled (behind).
        args.push(if !hash || behind { &req.body } else { b"" });
        if let Some(m) = &members {
            for (name, json) in m {
                args.push(name.as_bytes());
                args.push(json.as_bytes());
            }
        }
        let raw: Vec<redis::Value> = match self
            .eval_write(store, &self.scripts.write.put, &keys, &args)
            .await
        {
            Ok(r) => r,
            Err(e) if through => return Ok(self.cache_unconfirmed(&key_id, &e)),
            Err(e) => return Err(e.into()),
        };
        self.forget(&key_id);
        // `{ 0 }` comes from write-through only: a later write or a DELETE took the lease
        // meanwhile; the script dropped the value, so reads go to the origin, which has this
        // write.
        write_outcome(reply::put(&raw), through, req.id, || {
            WriteError::Reply("the PUT script wrote nothing outside write-through".into())
        })
    }

    /// `PATCH /v1/cache/{app}/{rule}/{id}` with a JSON object: sets those top-level members
    /// (`null` deletes one) of a `format: hash` value.
    pub async fn patch(
        &self,
        store: &Store,
        req: PatchRequest<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        let id = req.id;
        let r = self.patch_inner(store, req).await;
        self.finish_write(id, r)
    }

    async fn patch_inner(
        &self,
        store: &Store,
        req: PatchRequest<'_>,
    ) -> Result<WriteOutcome, WriteError> {
        let PatchRequest {
            id,
            content_type,
            body,
            facts,
            conditions,
        } = req;
        let conditions = &conditions;
        check_cache_id(id)?;
        if self.spec.format != CacheFormat::Hash {
            return Err(WriteError::NotHash(self.rule.clone()));
        }
        let size = body.len() as u64;
        if size > self.spec.max_value_bytes {
            return Err(WriteError::TooLarge {
                size,
                max: self.spec.max_value_bytes,
            });
        }
        let members = patch_members(&body)?;
        let patch_ct = content_type.unwrap_or("application/merge-patch+json");
        // PATCH keeps the value's tags; the plugin's key and TTL apply as for PUT.
        let Some((key_id, ttl_ms, _)) = self.write_choice("PATCH", id, facts)? else {
            bypass_unconditional(conditions)?;
            if self.spec.write == WriteMode::Through {
                self.origin_write(Method::PATCH, id, patch_ct, body.clone())
                    .await
                    .map_err(|f| f.into_error(CacheLeft::Unchanged))?;
                return Ok(WriteOutcome::default());
            }
            return Err(WriteError::Bypassed(self.rule.clone()));
        };
        let k = if key_id == id { "" } else { key_id.as_str() };
        let keys = self.keys.write(&key_id);
        let through = self.spec.write == WriteMode::Through;
        let token = random::token::<{ random::TOKEN_BYTES }>()
            .map_err(|e| WriteError::Random(e.to_string()))?;
        // The write marker outlives any fill that read the origin before this PATCH.
        let marker_ms = self.marker_ms().to_string();
        let (im, inm) = conditions.script_args();
        let mode = match self.spec.write {
            WriteMode::Cache => "c",
            WriteMode::Through => {
                self.through_origin(
                    store,
                    &keys,
                    (&token, &marker_ms),
                    (&im, &inm),
                    Method::PATCH,
                    id,
                    &key_id,
                    patch_ct,
                    body.clone(),
                )
                .await?;
                "t"
            }
            WriteMode::Behind => "b",
        };
        let ttl = ttl_ms.to_string();
        let stale = self.stale_ms().to_string();
        let max_len = self.group_journal_max_len().to_string();
        let mut args: Vec<&[u8]> = vec![
            ttl.as_bytes(),
            stale.as_bytes(),
            mode.as_bytes(),
            if through {
                token.as_bytes()
            } else {
                max_len.as_bytes()
            },
            id.as_bytes(),
            marker_ms.as_bytes(),
            k.as_bytes(),
            // Write-through checked them before the origin (`lua/cache/through_begin.lua`).
            if through { b"" } else { im.as_bytes() },
            if through { b"" } else { inm.as_bytes() },
        ];
        for (name, json) in &members {
            args.push(name.as_bytes());
            // An empty text deletes the member (a JSON text is never empty).
            args.push(json.as_deref().unwrap_or("").as_bytes());
        }
        let raw: Vec<redis::Value> = match self
            .eval_write(store, &self.scripts.write.patch, &keys, &args)
            .await
        {
            Ok(r) => r,
            Err(e) if through => return Ok(self.cache_unconfirmed(&key_id, &e)),
            Err(e) => return Err(e.into()),
        };
        self.forget(&key_id);
        // `{ 0 }` in write-through: the origin has the patch; the cache had nothing live to
        // patch (and a negative or invalidated entry was dropped by the script), or a later
        // write or DELETE took the lease meanwhile (the script dropped the value).
        write_outcome(reply::patch(&raw), through, id, || {
            WriteError::NotFound(id.to_string())
        })
    }

    /// A PUT or PATCH script call; with the rule's `durability`, on a connection of the
    /// durable pool and followed by `WAIT` there, so the answer waits for the replicas (the
    /// write-behind journal entry is in the same script, so it is covered too). Too few in
    /// time is `StoreError::NotReplicated` (503): the write is applied on the primary.
    async fn eval_write(
        &self,
        store: &Store,
        script: &crate::compile::Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let Some(d) = self.spec.durability else {
            return store.eval(script, keys, args).await;
        };
        let pin = store.pin_durable()?;
        let raw = store
            .eval_pinned(&pin, store.command_timeout(), script, keys, args)
            .await?;
        let first = keys.first().map(String::as_str).unwrap_or_default();
        store
            .wait_replicas(&pin, first, d.replicas, d.timeout)
            .await?;
        Ok(raw)
    }

    /// Write-through around the origin call: the value is set aside and the lease holds
    /// `token` first (if Redis fails that, nothing was written anywhere: the error is the
    /// Store's 503), after the client's preconditions (`im`, `inm`: script arguments) held
    /// (else 412, nothing written anywhere); after a failed origin call the set-aside value is
    /// restored (the origin did not apply the write) or dropped (it may have), and the error
    /// says which.
    #[allow(clippy::too_many_arguments)]
    async fn through_origin(
        &self,
        store: &Store,
        keys: &[String],
        (token, marker_ms): (&str, &str),
        (im, inm): (&str, &str),
        method: Method,
        id: &str,
        key_id: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), WriteError> {
        let begun: i64 = store
            .eval(
                &self.scripts.write.through_begin,
                keys,
                &[
                    token.as_bytes(),
                    marker_ms.as_bytes(),
                    im.as_bytes(),
                    inm.as_bytes(),
                ],
            )
            .await?;
        if begun == 0 {
            return Err(precondition_failed(id));
        }
        let failure = match self.origin_write(method, id, content_type, body).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        self.forget(key_id);
        let restore = failure.not_applied();
        let how: &[u8] = if restore { b"restore" } else { b"drop" };
        let cache = match store
            .eval::<i64>(
                &self.scripts.write.through_abort,
                keys,
                &[token.as_bytes(), how, marker_ms.as_bytes()],
            )
            .await
        {
            Ok(_) if restore => CacheLeft::Unchanged,
            Ok(_) => CacheLeft::Dropped,
            Err(e) => {
                // The value stays set aside, never served; the marker lapses and reads fill
                // from the origin.
                tracing::warn!(app = %self.app, rule = %self.rule, error = %e, "could not end a failed write-through in Redis");
                if restore {
                    CacheLeft::NotRestored
                } else {
                    CacheLeft::Dropped
                }
            }
        };
        Err(failure.into_error(cache))
    }

    /// The origin took a write-through but Redis failed the script that stores it: the
    /// answer says the origin has the write. The value the write replaced was set aside
    /// before the origin call and is not served again.
    fn cache_unconfirmed(&self, id: &str, e: &StoreError) -> WriteOutcome {
        self.forget(id);
        tracing::warn!(app = %self.app, rule = %self.rule, id = %id, error = %e, "write-through: the origin took the write, storing it in Redis failed; reads go to the origin");
        WriteOutcome {
            cache_unconfirmed: true,
            ..WriteOutcome::default()
        }
    }

    /// Write-through: the origin must accept (2xx) before the cache changes.
    async fn origin_write(
        &self,
        method: Method,
        id: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), OriginFailure> {
        let (Some(client), Some(url)) = (&self.origin, self.origin_url(id)) else {
            // Validation refuses `write: through` without an origin; ids that would not stay
            // one path segment are refused before (`check_cache_id`).
            return Err(OriginFailure::NotSent(format!(
                "no origin URL for id `{id}`"
            )));
        };
        match client
            .send(
                method,
                &url,
                Some(content_type),
                Some(body),
                ORIGIN_ANSWER_BYTES,
            )
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => Ok(()),
            Ok(r) => Err(OriginFailure::Refused(r.status)),
            Err(e @ OriginError::Timeout(_)) => Err(OriginFailure::Timeout(e.to_string())),
            Err(e @ (OriginError::Connect(_) | OriginError::Client(_))) => {
                Err(OriginFailure::NotSent(e.to_string()))
            }
            Err(e @ (OriginError::Unreachable(_) | OriginError::TooLarge { .. })) => {
                Err(OriginFailure::Lost(e.to_string()))
            }
        }
    }
}

/// What a PUT or PATCH script's reply means for the client. `{ 0 }` (nothing written) is a
/// success for write-through, whose origin has the write; else `not_applied`.
fn write_outcome(
    reply: Result<WriteReply, ReplyError>,
    through: bool,
    id: &str,
    not_applied: impl FnOnce() -> WriteError,
) -> Result<WriteOutcome, WriteError> {
    match reply.map_err(|e| WriteError::Reply(e.to_string()))? {
        WriteReply::Stored {
            journal_id,
            object,
            version,
        } => Ok(WriteOutcome {
            journal_id,
            object,
            cache_unconfirmed: false,
            version,
        }),
        WriteReply::NotApplied if through => Ok(WriteOutcome::default()),
        WriteReply::NotApplied => Err(not_applied()),
        WriteReply::JournalFull { backlog } => Err(WriteError::JournalFull { backlog }),
        WriteReply::PreconditionFailed => Err(precondition_failed(id)),
    }
}

/// The 412 of a write whose `If-Match` / `If-None-Match` did not hold.
fn precondition_failed(id: &str) -> WriteError {
    WriteError::PreconditionFailed(format!(
        "the precondition (If-Match / If-None-Match) does not hold for the cached value of \
         `{id}`; nothing was written: read it again (its ETag) and retry"
    ))
}

/// A bypassed write has no cached value to check a precondition against: a conditional one
/// is refused rather than made unconditional.
fn bypass_unconditional(conditions: &Preconditions) -> Result<(), WriteError> {
    if conditions.is_empty() {
        return Ok(());
    }
    Err(WriteError::PreconditionFailed(
        "the cache plugin bypasses the cache for this request, so If-Match / If-None-Match \
         cannot be checked; nothing was written"
            .to_string(),
    ))
}

/// Tags sent by a client must all be valid: silently dropping one would make a later
/// invalidation of that tag miss this value.
fn check_tags(tags: &[String]) -> Result<Vec<&str>, WriteError> {
    let mut out: Vec<&str> = Vec::new();
    for t in tags {
        if !valid_tag(t) {
            return Err(WriteError::BadValue(format!(
                "tag `{t}` is not 1 to 128 bytes without commas and whitespace"
            )));
        }
        if !out.contains(&t.as_str()) {
            out.push(t);
        }
    }
    if out.len() > MAX_TAGS {
        return Err(WriteError::BadValue(format!(
            "{} tags; at most {MAX_TAGS} are allowed per value",
            out.len()
        )));
    }
    Ok(out)
}

/// A `format: hash` value: a JSON object, as (member name, member JSON text) pairs.
pub fn object_members(body: &[u8]) -> Result<Vec<(String, String)>, WriteError> {
    let map = parse_object(body)?;
    map.into_iter()
        .map(|(k, v)| {
            serde_json::to_string(&v)
                .map(|json| (k, json))
                .map_err(|e| WriteError::BadValue(format!("could not re-encode member: {e}")))
        })
        .collect()
}

/// A `PATCH` body: the members to set (`None`: `null`, delete the member).
pub fn patch_members(body: &[u8]) -> Result<Vec<(String, Option<String>)>, WriteError> {
    let map = parse_object(body)?;
    map.into_iter()
        .map(|(k, v)| {
            if v.is_null() {
                Ok((k, None))
            } else {
                serde_json::to_string(&v)
                    .map(|json| (k, Some(json)))
                    .map_err(|e| WriteError::BadValue(format!("could not re-encode member: {e}")))
            }
        })
        .collect()
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, WriteError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(WriteError::BadValue(
            "this rule stores JSON objects (format: hash); the body must be a JSON object"
                .to_string(),
        )),
        Err(e) => Err(WriteError::BadValue(format!("invalid JSON body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `result` value a write can count is one `metrics.rs` registers at start (and
    /// README lists), so no series appears only after its first failure.
    #[test]
    fn every_result_label_is_registered() {
        let left = CacheLeft::Unchanged;
        let errors = [
            WriteError::Input(InputError::EmptyId),
            WriteError::TooLarge { size: 2, max: 1 },
            WriteError::BadValue(String::new()),
            WriteError::NotHash(String::new()),
            WriteError::NotFound(String::new()),
            WriteError::PreconditionFailed(String::new()),
            WriteError::OriginRefused {
                status: 500,
                cache: left,
            },
            WriteError::OriginUnreachable {
                detail: String::new(),
                cache: left,
            },
            WriteError::OriginTimeout {
                detail: String::new(),
                cache: left,
            },
            WriteError::JournalFull { backlog: 1 },
            WriteError::Bypassed(String::new()),
            WriteError::Store(StoreError::Timeout(std::time::Duration::from_millis(1))),
            WriteError::Reply(String::new()),
            WriteError::Random(String::new()),
        ];
        for e in &errors {
            assert!(
                crate::metrics::CACHE_WRITE_RESULTS.contains(&e.result_label()),
                "{e:?} counts as `{}`, which metrics.rs does not register",
                e.result_label()
            );
        }
    }

    #[test]
    fn objects_only() {
        let m = object_members(br#"{"a": 1, "b": {"c": [1, 2]}, "d": null}"#).unwrap();
        assert_eq!(
            m,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), r#"{"c":[1,2]}"#.to_string()),
                ("d".to_string(), "null".to_string()),
            ]
        );
        assert!(matches!(
            object_members(b"[1]"),
            Err(WriteError::BadValue(_))
        ));
        assert!(matches!(object_members(b"{"), Err(WriteError::BadValue(_))));
        let p = patch_members(br#"{"a": null, "b": "x"}"#).unwrap();
        assert_eq!(
            p,
            vec![
                ("a".to_string(), None),
                ("b".to_string(), Some("\"x\"".to_string()))
            ]
        );
    }

    #[test]
    fn client_tags_are_checked() {
        let ok = vec!["a".to_string(), "b".to_string(), "a".to_string()];
        assert_eq!(check_tags(&ok).unwrap(), vec!["a", "b"]);
        assert!(check_tags(&["a b".to_string()]).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert!(check_tags(&many).is_err());
    }
}
