//! Sessions at request time: ids, keys, script calls.
//!
//! Cluster safety without RENAME: every user has a shard tag (4 hex digits of a stable hash of
//! the user id), and a session id is `<shard>.<random>`. The shard is the hash tag of the
//! session key and of the shard's index (`ue`, `uc`), so a session, its rotated successor and
//! its user's index entries always share one hash slot. Every key a script touches is declared
//! (Redis Cluster checks only declared keys while a slot migrates): get, patch, rotate and
//! destroy know all theirs from the id (one call), and so does create. List and logout need
//! the user's session keys, which only the index names: a first call answers the user's
//! members, the next declares their keys and re-checks them (`drive`). Sessions a create
//! evicts leave the index in its call and are deleted by a second (`reap`). The user id goes into index
//! members base64url-encoded, so it can neither reach another user's range nor hold the `|`
//! separator.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use metrics::Counter;

use super::random;
use super::{InputError, MAX_ID_BYTES, check_id};
use crate::compile::session::{SHARD_LEN, SessionScripts};
use crate::compile::{CompiledSession, KeySpace, Script};
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
    /// The user's sessions changed (a rotation) between every pair of calls of a list or a
    /// logout (the second call re-checks what the first read).
    #[error("the user's sessions changed during the request {0} times; retry")]
    Busy(u32),
    /// The shard's index holds a member patternd does not write, or a script answered what
    /// it never does: another client wrote the keys.
    #[error("malformed session index")]
    MalformedIndex,
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
        session_key(&self.keys, sid)
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
        let [ue, uc] = index_keys(&self.keys, &shard);
        let fixed = [self.session_key(&sid), ue, uc];
        let u = B64.encode(user);
        let mut rest: Vec<&[u8]> = vec![
            id.as_bytes(),
            user.as_bytes(),
            self.idle_ms.as_bytes(),
            self.absolute_ms.as_bytes(),
            self.max_per_user.as_bytes(),
            u.as_bytes(),
        ];
        for (k, v) in data {
            rest.push(k.as_bytes());
            rest.push(v.as_bytes());
        }
        let reply: Vec<String> =
            self.counted(store.eval(&self.scripts.create, &fixed, &rest).await)?;
        let mut reply = reply.into_iter();
        let expires_in_ms = num(&reply.next().unwrap_or_default());
        let evicted: Vec<String> = reply.collect();
        // The evicted sessions left the index, so they are dead already (a touch destroys a
        // session its index lost); deleting them now frees their memory. A failure here
        // leaves them to that, or to their TTL, and does not fail the login.
        let n = evicted.len() as u64;
        if !evicted.is_empty()
            && let Err(e) = self.reap(store, &shard, &evicted).await
        {
            tracing::debug!(error = %e, "evicted sessions left to their TTL");
        }
        self.counters.created.increment(1);
        self.counters.evicted.increment(n);
        Ok(Created {
            id,
            expires_in_ms,
            evicted: n,
        })
    }

    /// Deletes sessions a create evicted from the index, at most the user's max per call
    /// (more only after the max was lowered).
    async fn reap(
        &self,
        store: &Store,
        shard: &str,
        members: &[String],
    ) -> Result<(), SessionError> {
        let chunk = self.max_per_user.parse::<usize>().unwrap_or(1).max(1);
        for part in members.chunks(chunk) {
            let mut keys = index_keys(&self.keys, shard).to_vec();
            let mut args: Vec<&[u8]> = Vec::with_capacity(part.len());
            for m in part {
                // A member patternd did not write is left alone.
                if let Some(k) = member_key(&self.keys, shard, m) {
                    keys.push(k);
                    args.push(m.as_bytes());
                }
            }
            let _: u64 = store.eval(&self.scripts.reap, &keys, &args).await?;
        }
        Ok(())
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
        let keys = sid_keys(&self.keys, parsed);
        let flag: &[u8] = if slide { b"1" } else { b"0" };
        let args: [&[u8]; 3] = [sid.as_bytes(), self.idle_ms.as_bytes(), flag];
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
        let keys = sid_keys(&self.keys, &parsed);
        let mut args: Vec<&[u8]> = vec![
            sid.as_bytes(),
            self.idle_ms.as_bytes(),
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
        let keys = rotate_keys(&self.keys, &parsed, &new);
        let args: [&[u8]; 3] = [sid.as_bytes(), id.as_bytes(), self.idle_ms.as_bytes()];
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
        let keys = sid_keys(&self.keys, &parsed);
        let n: u64 = self.counted(
            store
                .eval(&self.scripts.destroy, &keys, &[sid.as_bytes()])
                .await,
        )?;
        self.counters.destroyed.increment(1);
        Ok(n > 0)
    }

    /// The user's live sessions, oldest first: one page of at most the user's max per call
    /// (a user holds more only after the max was lowered), each read in two calls (the
    /// members, then their sessions declared), one when the user has none.
    pub async fn list(&self, store: &Store, user: &str) -> Result<Vec<SessionEntry>, SessionError> {
        check_user(user)?;
        let shard = shard_of(user);
        let fixed = index_keys(&self.keys, &shard);
        let u = B64.encode(user);
        let mut start = format!("[{u}|");
        let mut out = Vec::new();
        loop {
            let rest: [&[u8]; 3] = [u.as_bytes(), self.max_per_user.as_bytes(), start.as_bytes()];
            let page = self
                .sliced(store, &self.scripts.list, &fixed, &shard, &rest)
                .await?;
            out.extend(page.items.chunks_exact(4).map(|c| SessionEntry {
                id: c[0].clone(),
                created_ms: num(&c[1]),
                last_seen_ms: num(&c[2]),
                expires_in_ms: num(&c[3]),
            }));
            // The next page's start, when more members follow the page's last.
            if page.extra.is_empty() {
                return Ok(out);
            }
            start = page.extra;
        }
    }

    /// Logs the user out everywhere: every session the user had when the request began (its
    /// first call). Returns how many live sessions died. Atomic: one script call destroys them
    /// all, unless the max was lowered below what the user holds (then in chunks of the max).
    pub async fn logout(&self, store: &Store, user: &str) -> Result<u64, SessionError> {
        check_user(user)?;
        let shard = shard_of(user);
        let fixed = index_keys(&self.keys, &shard);
        let u = B64.encode(user);
        let rest: [&[u8]; 2] = [u.as_bytes(), self.max_per_user.as_bytes()];
        let done = self
            .sliced(store, &self.scripts.logout, &fixed, &shard, &rest)
            .await?;
        self.counters.logged_out.increment(1);
        Ok(done.count)
    }

    /// Runs a script that acts on a user's sessions (list, logout) until it answers `ok`,
    /// declaring each time the session keys of the members its previous call named.
    async fn sliced(
        &self,
        store: &Store,
        script: &Script,
        fixed: &[String],
        shard: &str,
        rest: &[&[u8]],
    ) -> Result<Sliced, SessionError> {
        drive(|members: Vec<String>, cutoff: String| async move {
            let mut keys = fixed.to_vec();
            for m in &members {
                keys.push(member_key(&self.keys, shard, m).ok_or_else(|| {
                    self.counters.failed.increment(1);
                    SessionError::MalformedIndex
                })?);
            }
            let n = members.len().to_string();
            let mut args: Vec<&[u8]> = Vec::with_capacity(2 + members.len() + rest.len());
            args.push(n.as_bytes());
            args.extend(members.iter().map(String::as_bytes));
            args.push(cutoff.as_bytes());
            args.extend_from_slice(rest);
            let (status, count, items, extra): (String, u64, Vec<String>, String) =
                self.counted(store.eval(script, &keys, &args).await)?;
            match status.as_str() {
                "ok" => Ok(Step::Ok(count, items, extra)),
                "more" => Ok(Step::More(count, items, extra)),
                "stale" => Ok(Step::Stale(items, extra)),
                _ => {
                    self.counters.failed.increment(1);
                    Err(SessionError::MalformedIndex)
                }
            }
        })
        .await
        .inspect_err(|e| {
            if matches!(e, SessionError::Busy(_)) {
                self.counters.failed.increment(1);
            }
        })
    }
}

/// Stale answers to calls that declared the user's members, before the engine gives up with
/// [`SessionError::Busy`]. Only a session rotated between two calls makes an answer stale
/// (sessions created meanwhile are newer than the cutoff and left alone), so this takes a
/// client rotating a session of the user in a loop.
const MAX_STALE: u32 = 3;

/// What a call of a sliced script (list, logout) answered.
#[derive(Debug)]
enum Step {
    /// Done: the count (destroyed), the script's items and its extra (list: the next
    /// page's start, or empty).
    Ok(u64, Vec<String>, String),
    /// The declared members were acted on (count of them) and these come next; the cutoff.
    More(u64, Vec<String>, String),
    /// Nothing was done: these members up to the cutoff must be declared.
    Stale(Vec<String>, String),
}

/// A sliced script's final answer.
#[derive(Debug)]
struct Sliced {
    /// The sum of the counts of every call.
    count: u64,
    items: Vec<String>,
    extra: String,
}

/// The loop of a sliced script: `call(members, cutoff)` calls it with those members' session
/// keys declared. The first call declares none and no cutoff: a user with no sessions is done
/// in one call, any other is answered `stale` with the members and the cutoff (Redis's clock
/// then). A `stale` answer to a later call counts as a retry, `MAX_STALE` at most; `more`
/// always acted on at least one member, so the loop ends.
async fn drive<F, Fut>(mut call: F) -> Result<Sliced, SessionError>
where
    F: FnMut(Vec<String>, String) -> Fut,
    Fut: Future<Output = Result<Step, SessionError>>,
{
    let (mut members, mut cutoff) = (Vec::new(), String::new());
    let mut count = 0;
    let mut stale = 0;
    loop {
        let first = cutoff.is_empty();
        match call(members, cutoff).await? {
            Step::Ok(n, items, extra) => {
                return Ok(Sliced {
                    count: count + n,
                    items,
                    extra,
                });
            }
            Step::More(n, next, c) => {
                count += n;
                (members, cutoff) = (next, c);
            }
            Step::Stale(actual, c) => {
                if !first {
                    stale += 1;
                    if stale > MAX_STALE {
                        return Err(SessionError::Busy(stale));
                    }
                }
                (members, cutoff) = (actual, c);
            }
        }
    }
}

/// The key of a session.
fn session_key(keys: &KeySpace, sid: &Sid<'_>) -> String {
    keys.key(sid.shard, &format!("s:{}", sid.random))
}

/// A shard's index: `ue` (members by expiry), `uc` (the same members, score 0, by user and
/// creation in lex order).
fn index_keys(keys: &KeySpace, shard: &str) -> [String; 2] {
    [keys.key(shard, "ue"), keys.key(shard, "uc")]
}

/// The keys of get, patch and destroy: the session and its shard's index.
fn sid_keys(keys: &KeySpace, sid: &Sid<'_>) -> [String; 3] {
    let [ue, uc] = index_keys(keys, sid.shard);
    [session_key(keys, sid), ue, uc]
}

/// The keys of rotate: the old session, the new one (same shard), the index.
fn rotate_keys(keys: &KeySpace, old: &Sid<'_>, new: &Sid<'_>) -> [String; 4] {
    let [ue, uc] = index_keys(keys, old.shard);
    [session_key(keys, old), session_key(keys, new), ue, uc]
}

/// The session key of an index member `<base64url user>|<order>|<sid>` of `shard`'s index,
/// or None when the member is not one patternd writes (another client wrote the index) or
/// names a session of another shard (it would take the call out of the slot).
fn member_key(keys: &KeySpace, shard: &str, member: &str) -> Option<String> {
    let (_, sid) = member.rsplit_once('|')?;
    let sid = parse_sid(sid)?;
    (sid.shard == shard).then(|| session_key(keys, &sid))
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

    /// Every session operation's declared keys share one cluster slot, for many users and
    /// ids: the store's slot check (`store/slots.rs`) would refuse the call otherwise, and a
    /// cluster would answer CROSSSLOT.
    #[test]
    fn every_operation_declares_keys_of_one_slot() {
        use crate::compile::keys::key_slot;
        let ks = KeySpace::new("shop", "session", "web");
        let one_slot = |what: &str, keys: &[String]| {
            let slot = key_slot(&keys[0]);
            for k in keys {
                assert_eq!(key_slot(k), slot, "{what}: {keys:?}");
            }
        };
        for n in 0..2000 {
            let user = match n % 4 {
                0 => format!("user-{n}"),
                1 => format!("{{u|{n}}}"),
                2 => format!("a|b}}{n}{{"),
                _ => format!("ü%7B{n}"),
            };
            let shard = shard_of(&user);
            let randoms: Vec<String> = (0..4).map(|_| random_part().expect("random")).collect();
            let sids: Vec<Sid<'_>> = randoms
                .iter()
                .map(|r| Sid {
                    shard: &shard,
                    random: r,
                })
                .collect();
            let u = B64.encode(&user);
            // The members the index would name for these sessions.
            let members: Vec<String> = randoms
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    format!(
                        "{u}|{:016}|{shard}.{r}",
                        1_700_000_000_000_000u64 + j as u64
                    )
                })
                .collect();
            let declared: Vec<String> = members
                .iter()
                .map(|m| member_key(&ks, &shard, m).expect("a member patternd writes"))
                .collect();
            one_slot("get/patch/destroy", &sid_keys(&ks, &sids[0]));
            one_slot("rotate", &rotate_keys(&ks, &sids[0], &sids[1]));
            let [ue, uc] = index_keys(&ks, &shard);
            one_slot(
                "create",
                &[session_key(&ks, &sids[2]), ue.clone(), uc.clone()],
            );
            let mut list = vec![ue, uc];
            list.extend(declared);
            one_slot("list/logout/reap", &list);
        }
    }

    /// A member of another shard, or text patternd never writes, is refused rather than
    /// declared (it would take the call out of its slot, or name no session).
    #[test]
    fn members_name_sessions_of_their_shard_only() {
        let ks = KeySpace::new("shop", "session", "web");
        let r = random_part().expect("random");
        let good = format!("dXNlcg|0001700000000000|abcd.{r}");
        assert_eq!(
            member_key(&ks, "abcd", &good),
            Some(ks.key("abcd", &format!("s:{r}")))
        );
        assert_eq!(member_key(&ks, "abce", &good), None);
        for bad in [
            "",
            "abcd",
            "x|y",
            &format!("u|o|abcd.{r}x"),
            &format!("abcd.{r}"),
        ] {
            assert_eq!(member_key(&ks, "abcd", bad), None, "{bad:?}");
        }
    }

    /// The index orders members bytewise (ZRANGEBYLEX, memcmp): a user's range `[<u>|` to
    /// `(<u>}` holds exactly that user's members, whatever the ids hold (`|`, `}`, `{`, a
    /// prefix of another id, bytes above `|`), because base64url has no byte ≥ `|`.
    #[test]
    fn one_users_range_never_holds_anothers_members() {
        let users = [
            "a",
            "a|",
            "a|b",
            "ab",
            "a}",
            "a{",
            "|",
            "}",
            "~",
            "a~",
            "abc",
            "abcd",
            "abc|d",
            "YQ",
            "YQ|",
            "ÿ",
            "a\u{7f}",
            "",
            "a b",
            "aa",
            "a|0001700000000000|x",
        ];
        let member = |u: &str, order: u64| format!("{}|{order:016}|abcd.xyz", B64.encode(u));
        for u in users {
            let lo = format!("{}|", B64.encode(u));
            let hi = format!("{}}}", B64.encode(u));
            let within = |m: &str| m.as_bytes() >= lo.as_bytes() && m.as_bytes() < hi.as_bytes();
            for v in users {
                for order in [0, 1_700_000_000_000_000, 9_999_999_999_999_999] {
                    assert_eq!(
                        within(&member(v, order)),
                        u == v,
                        "range of {u:?}, member of {v:?}"
                    );
                }
            }
        }
    }

    type Calls = std::sync::Mutex<Vec<(Vec<String>, String)>>;

    /// Runs `drive` against scripted answers, recording what each call declared.
    async fn drive_with(
        answers: Vec<Step>,
    ) -> (Result<Sliced, SessionError>, Vec<(Vec<String>, String)>) {
        let answers = std::sync::Mutex::new(answers.into_iter());
        let calls = Calls::default();
        let r = drive(|members: Vec<String>, cutoff: String| {
            calls.lock().expect("lock").push((members, cutoff));
            let next = answers.lock().expect("lock").next();
            async move { next.ok_or(SessionError::MalformedIndex) }
        })
        .await;
        (r, calls.into_inner().expect("lock"))
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn c(members: &[&str], cutoff: &str) -> (Vec<String>, String) {
        (v(members), cutoff.to_string())
    }

    /// The two phases: the first call declares nothing and is told the members and the
    /// cutoff; the second declares them. A slice that changed in between (a session rotated)
    /// is retried with the new members and the same cutoff, at most `MAX_STALE` times, then
    /// the request fails with `Busy`; `more` steps add up.
    #[tokio::test]
    async fn the_slice_is_declared_rechecked_and_retried_a_bounded_number_of_times() {
        // No sessions: one call.
        let (r, calls) = drive_with(vec![Step::Ok(0, v(&[]), String::new())]).await;
        assert_eq!(r.expect("done").count, 0);
        assert_eq!(calls, vec![c(&[], "")]);
        // Two phases, then a slice that changed between them (b rotated to b2).
        let (r, calls) = drive_with(vec![
            Step::Stale(v(&["a", "b"]), "T".into()),
            Step::Stale(v(&["a", "b2"]), "T".into()),
            Step::Ok(2, v(&["x"]), "next".into()),
        ])
        .await;
        let done = r.expect("done");
        assert_eq!(
            (done.count, done.items, done.extra),
            (2, v(&["x"]), "next".to_string())
        );
        assert_eq!(
            calls,
            vec![c(&[], ""), c(&["a", "b"], "T"), c(&["a", "b2"], "T")]
        );
        // `more`: the counts add up, the next members are declared.
        let (r, calls) = drive_with(vec![
            Step::Stale(v(&["a"]), "T".into()),
            Step::More(1, v(&["b"]), "T".into()),
            Step::Ok(1, v(&[]), String::new()),
        ])
        .await;
        assert_eq!(r.expect("done").count, 2);
        assert_eq!(calls, vec![c(&[], ""), c(&["a"], "T"), c(&["b"], "T")]);
        // A slice that changes under every call: MAX_STALE retries, then Busy.
        let answers = (0..10)
            .map(|n| Step::Stale(v(&[&format!("m{n}")]), "T".into()))
            .collect();
        let (r, calls) = drive_with(answers).await;
        assert!(
            matches!(r, Err(SessionError::Busy(n)) if n == MAX_STALE + 1),
            "{r:?}"
        );
        assert_eq!(calls.len(), 2 + MAX_STALE as usize);
    }

    #[test]
    fn ids_carry_at_least_128_random_bits() {
        assert_eq!(random_part().expect("random").len(), RANDOM_CHARS);
    }
}
