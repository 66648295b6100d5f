//! Sessions at request time: ids, keys, one EVALSHA per operation.
//!
//! Cluster safety without RENAME: every user has a shard tag (4 hex digits of a stable hash of
//! the user id), and a session id is `<shard>.<random>`. The shard is the hash tag of the
//! session key and of the user's index, so a session, its rotated successor and its user's
//! index always share one hash slot, and every script touches one slot only. The user id goes
//! into the key's sub part base64url-encoded, so it can neither escape the namespace nor
//! collide with another user.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use metrics::Counter;

use super::random;
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::session::{SHARD_LEN, SessionScripts};
use crate::compile::{CompiledSession, KeySpace};
use crate::plugin::{PluginBinding, PluginError, RequestFacts, SessionDecision, SessionFacts};
use crate::policy::Rule;
use crate::policy::session::Session;
use crate::store::{Store, StoreError};

/// Random bytes per session id: 192 bits from the OS CSPRNG (at least 128 are required).
const RANDOM_BYTES: usize = 24;
const _: () = assert!(RANDOM_BYTES * 8 >= 128, "session ids need 128+ random bits");
/// Base64url length of `RANDOM_BYTES`.
const RANDOM_CHARS: usize = RANDOM_BYTES * 4 / 3;
/// Data fields per request, and bytes per field name.
pub const MAX_FIELDS: usize = 256;
pub const MAX_FIELD_NAME_BYTES: usize = 256;
/// Data fields a session may hold: PATCH can add fields over time, so the bound is checked in
/// the script, against what the session holds.
pub const MAX_SESSION_FIELDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    BadData(String),
    /// Unknown, expired, destroyed or malformed id: all look the same to a client.
    #[error("no such session (unknown, expired or destroyed)")]
    NotFound,
    /// The rule's plugin rejected the session on read.
    #[error("session rejected: {0}")]
    Rejected(String),
    #[error(transparent)]
    Plugin(PluginError),
    #[error("no secure random source: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session as read.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub user: String,
    pub created_ms: u64,
    /// The session's previous touch (create, sliding read, patch, rotate): the read that
    /// returns this view is not counted, so a plugin can judge how long it was idle.
    pub last_seen_ms: u64,
    pub expires_in_ms: u64,
    /// Field name → JSON text.
    pub data: Vec<(String, String)>,
}

/// A user's live session, as listed.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub id: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub expires_in_ms: u64,
}

pub struct Created {
    pub id: String,
    pub expires_in_ms: u64,
    pub evicted: u64,
}

struct Counters {
    created: Counter,
    read: Counter,
    missing: Counter,
    rejected: Counter,
    patched: Counter,
    rotated: Counter,
    destroyed: Counter,
    logged_out: Counter,
    evicted: Counter,
    failed: Counter,
}

impl Counters {
    fn new(app: &str, rule: &str) -> Self {
        let c = |op: &'static str| metrics::counter!("patternd_session_requests_total", "app" => app.to_string(), "rule" => rule.to_string(), "op" => op);
        Self {
            created: c("create"),
            read: c("read"),
            missing: c("not_found"),
            rejected: c("rejected"),
            patched: c("patch"),
            rotated: c("rotate"),
            destroyed: c("destroy"),
            logged_out: c("logout"),
            evicted: metrics::counter!("patternd_session_evictions_total", "app" => app.to_string(), "rule" => rule.to_string()),
            failed: c("failed"),
        }
    }
}

/// A session rule ready to serve.
pub struct Sessions {
    pub app: String,
    pub rule: String,
    keys: KeySpace,
    scripts: SessionScripts,
    idle_ms: String,
    absolute_ms: String,
    max_per_user: String,
    max_fields: String,
    plugin: Option<PluginBinding>,
    counters: Counters,
}

/// A parsed session id.
struct Sid<'a> {
    shard: &'a str,
    random: &'a str,
}

/// `<4 lowercase hex>.<32 base64url>`, or nothing: a malformed id never reaches Redis.
fn parse_sid(sid: &str) -> Option<Sid<'_>> {
    let (shard, random) = sid.split_once('.')?;
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    (shard.len() == SHARD_LEN
        && shard.bytes().all(hex)
        && random.len() == RANDOM_CHARS
        && random.bytes().all(b64))
    .then_some(Sid { shard, random })
}

/// The shard tag of a user: FNV-1a, fixed forever (ids and keys depend on it), folded to 16
/// bits. Not a secret and needs none: it only spreads users over cluster slots.
fn shard_of(user: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:04x}", (h ^ (h >> 16)) & 0xffff)
}

fn random_part() -> Result<String, SessionError> {
    random::token::<RANDOM_BYTES>().map_err(|e| SessionError::Random(e.to_string()))
}

/// The user id: the same bounds as any entity id, worded for this API.
fn check_user(user: &str) -> Result<(), SessionError> {
    check_id(user).map_err(|e| match e {
        InputError::EmptyId => SessionError::BadData("`user` must not be empty".into()),
        InputError::IdTooLong(n) => SessionError::BadData(format!(
            "`user` is {n} bytes; at most {MAX_ID_BYTES} are allowed"
        )),
        other => SessionError::Input(other),
    })
}

fn num(s: &str) -> u64 {
    s.parse::<i64>()
        .map(|n| n.max(0).unsigned_abs())
        .unwrap_or(0)
}

impl Sessions {
    pub fn new(
        rule: &Rule,
        spec: &Session,
        compiled: &CompiledSession,
        keys: &KeySpace,
        plugin: Option<PluginBinding>,
    ) -> Self {
        Self {
            app: rule.app.clone(),
            rule: rule.name.clone(),
            keys: keys.clone(),
            scripts: compiled.scripts.clone(),
            idle_ms: spec.idle_ttl.as_millis().max(1).to_string(),
            absolute_ms: spec.absolute_ttl.as_millis().max(1).to_string(),
            // Always bounded: `user_cap` applies when `max_per_user` is not set, so the user
            // index (and one logout-everywhere) never holds more than that many sessions.
            max_per_user: spec
                .max_per_user
                .unwrap_or(spec.user_cap)
                .min(spec.user_cap)
                .to_string(),
            max_fields: MAX_SESSION_FIELDS.to_string(),
            plugin,
            counters: Counters::new(&rule.app, &rule.name),
        }
    }

    pub fn has_plugin(&self) -> bool {
        self.plugin.is_some()
    }

    fn session_key(&self, sid: &Sid<'_>) -> String {
        self.keys.key(sid.shard, &format!("s:{}", sid.random))
    }

    /// The shard's key with an empty sub: scripts build the keys they learn from data (a
    /// session's index, an index's sessions) from it, always in the shard's slot.
    fn base(&self, shard: &str) -> String {
        self.keys.key(shard, "")
    }

    /// The user's two index keys (by expiry, by creation) and the user's encoding in them.
    fn index_keys(&self, shard: &str, user: &str) -> (String, String, String) {
        let u = B64.encode(user);
        (
            self.keys.key(shard, &format!("ue:{u}")),
            self.keys.key(shard, &format!("uc:{u}")),
            u,
        )
    }

    fn counted<T>(&self, r: Result<T, StoreError>) -> Result<T, SessionError> {
        r.map_err(|e| {
            self.counters.failed.increment(1);
            SessionError::Store(e)
        })
    }

    fn parse<'a>(&self, sid: &'a str) -> Result<Sid<'a>, SessionError> {
        parse_sid(sid).ok_or_else(|| {
            self.counters.missing.increment(1);
            SessionError::NotFound
        })
    }

    fn missing<T>(&self, v: Option<T>) -> Result<T, SessionError> {
        v.ok_or_else(|| {
            self.counters.missing.increment(1);
            SessionError::NotFound
        })
    }

    pub async fn create(
        &self,
        store: &Store,
        user: &str,
        data: &[(String, String)],
    ) -> Result<Created, SessionError> {
        check_user(user)?;
        check_fields(data.iter().map(|(k, _)| k.as_str()))?;
        let shard = shard_of(user);
        let random = random_part()?;
        let id = format!("{shard}.{random}");
        let sid = Sid {
            shard: &shard,
            random: &random,
        };
        let (ue, uc, u) = self.index_keys(&shard, user);
        let keys = [self.session_key(&sid), ue, uc];
        let base = self.base(&shard);
        let mut args: Vec<&[u8]> = vec![
            id.as_bytes(),
            user.as_bytes(),
            self.idle_ms.as_bytes(),
            self.absolute_ms.as_bytes(),
            self.max_per_user.as_bytes(),
            base.as_bytes(),
            u.as_bytes(),
        ];
        for (k, v) in data {
            args.push(k.as_bytes());
            args.push(v.as_bytes());
        }
        let (expires_in_ms, evicted): (u64, u64) =
            self.counted(store.eval(&self.scripts.create, &keys, &args).await)?;
        self.counters.created.increment(1);
        self.counters.evicted.increment(evicted);
        Ok(Created {
            id,
            expires_in_ms,
            evicted,
        })
    }

    /// Reads a session and slides its idle expiry. With a plugin, the session is first read
    /// without sliding, the plugin decides, and only an accepted session is slid: a rejected
    /// one is not kept alive by the attempt.
    pub async fn get(
        &self,
        store: &Store,
        sid: &str,
        facts: RequestFacts,
    ) -> Result<SessionView, SessionError> {
        let parsed = self.parse(sid)?;
        if let Some(binding) = &self.plugin {
            let peek = self.read(store, sid, &parsed, false).await?;
            let s = SessionFacts {
                user: &peek.user,
                data: &peek.data,
                created_ms: peek.created_ms,
                last_seen_ms: peek.last_seen_ms,
            };
            match binding.session(&facts, &s) {
                Ok(SessionDecision::Allow) => {}
                Ok(SessionDecision::Reject(reason)) => {
                    self.counters.rejected.increment(1);
                    return Err(SessionError::Rejected(reason));
                }
                Err(e) => {
                    self.counters.failed.increment(1);
                    return Err(SessionError::Plugin(e));
                }
            }
        }
        let view = self.read(store, sid, &parsed, true).await?;
        self.counters.read.increment(1);
        Ok(view)
    }

    async fn read(
        &self,
        store: &Store,
        sid: &str,
        parsed: &Sid<'_>,
        slide: bool,
    ) -> Result<SessionView, SessionError> {
        let keys = [self.session_key(parsed)];
        let base = self.base(parsed.shard);
        let flag: &[u8] = if slide { b"1" } else { b"0" };
        let args: [&[u8]; 4] = [
            sid.as_bytes(),
            self.idle_ms.as_bytes(),
            flag,
            base.as_bytes(),
        ];
        let reply: Option<Vec<String>> =
            self.counted(store.eval(&self.scripts.get, &keys, &args).await)?;
        let mut reply = self.missing(reply)?.into_iter();
        let user = reply.next().unwrap_or_default();
        let created_ms = num(&reply.next().unwrap_or_default());
        let expires_in_ms = num(&reply.next().unwrap_or_default());
        let last_seen_ms = num(&reply.next().unwrap_or_default());
        let mut data = Vec::new();
        while let (Some(k), Some(v)) = (reply.next(), reply.next()) {
            data.push((k, v));
        }
        Ok(SessionView {
            user,
            created_ms,
            last_seen_ms,
            expires_in_ms,
            data,
        })
    }

    /// Merges fields (value `None` deletes the field) into a live session; 404 when it is
    /// gone, and then nothing is written.
    pub async fn patch(
        &self,
        store: &Store,
        sid: &str,
        data: &[(String, Option<String>)],
    ) -> Result<u64, SessionError> {
        let parsed = self.parse(sid)?;
        check_fields(data.iter().map(|(k, _)| k.as_str()))?;
        let keys = [self.session_key(&parsed)];
        let base = self.base(parsed.shard);
        let mut args: Vec<&[u8]> = vec![
            sid.as_bytes(),
            self.idle_ms.as_bytes(),
            base.as_bytes(),
            self.max_fields.as_bytes(),
        ];
        for (k, v) in data {
            args.push(k.as_bytes());
            args.push(v.as_deref().unwrap_or("").as_bytes());
        }
        let reply: Option<i64> =
            self.counted(store.eval(&self.scripts.patch, &keys, &args).await)?;
        let ttl = self.missing(reply)?;
        if ttl < 0 {
            return Err(SessionError::BadData(format!(
                "the session would hold more than {MAX_SESSION_FIELDS} data fields; nothing was written"
            )));
        }
        self.counters.patched.increment(1);
        Ok(ttl.unsigned_abs())
    }

    /// A new id for a live session; the old one is dead at once.
    pub async fn rotate(&self, store: &Store, sid: &str) -> Result<Created, SessionError> {
        let parsed = self.parse(sid)?;
        let random = random_part()?;
        let id = format!("{}.{random}", parsed.shard);
        let new = Sid {
            shard: parsed.shard,
            random: &random,
        };
        let keys = [self.session_key(&parsed), self.session_key(&new)];
        let base = self.base(parsed.shard);
        let args: [&[u8]; 4] = [
            sid.as_bytes(),
            id.as_bytes(),
            self.idle_ms.as_bytes(),
            base.as_bytes(),
        ];
        let reply: Option<u64> =
            self.counted(store.eval(&self.scripts.rotate, &keys, &args).await)?;
        let expires_in_ms = self.missing(reply)?;
        self.counters.rotated.increment(1);
        Ok(Created {
            id,
            expires_in_ms,
            evicted: 0,
        })
    }

    /// Destroys one session. False when there was none (already destroyed, expired, or a
    /// malformed id): destroying is idempotent.
    pub async fn destroy(&self, store: &Store, sid: &str) -> Result<bool, SessionError> {
        let Some(parsed) = parse_sid(sid) else {
            return Ok(false);
        };
        let keys = [self.session_key(&parsed)];
        let base = self.base(parsed.shard);
        let args: [&[u8]; 2] = [sid.as_bytes(), base.as_bytes()];
        let n: u64 = self.counted(store.eval(&self.scripts.destroy, &keys, &args).await)?;
        self.counters.destroyed.increment(1);
        Ok(n > 0)
    }

    /// The user's live sessions, oldest first.
    pub async fn list(&self, store: &Store, user: &str) -> Result<Vec<SessionEntry>, SessionError> {
        check_user(user)?;
        let shard = shard_of(user);
        let (ue, uc, _) = self.index_keys(&shard, user);
        let base = self.base(&shard);
        let reply: Vec<String> = self.counted(
            store
                .eval(&self.scripts.list, &[ue, uc], &[base.as_bytes()])
                .await,
        )?;
        Ok(reply
            .chunks_exact(4)
            .map(|c| SessionEntry {
                id: c[0].clone(),
                created_ms: num(&c[1]),
                last_seen_ms: num(&c[2]),
                expires_in_ms: num(&c[3]),
            })
            .collect())
    }

    /// Logs the user out everywhere, atomically. Returns how many live sessions died.
    pub async fn logout(&self, store: &Store, user: &str) -> Result<u64, SessionError> {
        check_user(user)?;
        let shard = shard_of(user);
        let (ue, uc, _) = self.index_keys(&shard, user);
        let base = self.base(&shard);
        let n: u64 = self.counted(
            store
                .eval(&self.scripts.logout, &[ue, uc], &[base.as_bytes()])
                .await,
        )?;
        self.counters.logged_out.increment(1);
        Ok(n)
    }
}

fn check_fields<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), SessionError> {
    let mut n = 0;
    for name in names {
        n += 1;
        if name.is_empty() {
            return Err(SessionError::BadData("a data field name is empty".into()));
        }
        if name.len() > MAX_FIELD_NAME_BYTES {
            return Err(SessionError::BadData(format!(
                "data field name `{}…` is longer than {MAX_FIELD_NAME_BYTES} bytes",
                name.chars().take(32).collect::<String>()
            )));
        }
    }
    if n > MAX_FIELDS {
        return Err(SessionError::BadData(format!(
            "{n} data fields; at most {MAX_FIELDS} per request"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_malformed_ids_are_refused() {
        let shard = shard_of("alice");
        let id = format!("{shard}.{}", random_part().expect("random"));
        let sid = parse_sid(&id).expect("a fresh id parses");
        assert_eq!(sid.shard, shard);
        for bad in [
            "",
            ".",
            "users",
            "abcd",
            "ABCD.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abcd.aaaa",
            "abcd.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa{",
            "abcde.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "ab}d.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(parse_sid(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed forever: stored ids depend on it.
        assert_eq!(shard_of("alice"), shard_of("alice"));
        assert_eq!(shard_of("").len(), SHARD_LEN);
        let distinct: std::collections::HashSet<String> =
            (0..1000).map(|i| shard_of(&format!("user-{i}"))).collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
    }

    #[test]
    fn ids_carry_at_least_128_random_bits() {
        assert_eq!(random_part().expect("random").len(), RANDOM_CHARS);
    }
}
