//! `cache` rules → their Lua scripts and key layout. Pure.
//!
//! The scripts do not depend on the rule: every rule-specific number (ttl, lease, staleness)
//! travels in ARGV, so all cache rules share one set of scripts, built and checked once.
//!
//! # The data contract (shared by the read and write paths)
//!
//! Per id X of a cache rule (`ks` = the rule's KeySpace). Every key is tagged by X's slot
//! group g = `KeySpace::group_of(X, slot_groups)`: X's keys are `ks.grouped_keys(G, X, …)`
//! (`{app}:cache:{rule}:{%<app>.<rule>.<g>}:<escaped X>:<sub>`), and the state X's values are
//! checked with (tag versions, the write-behind journal and dead letters) is per group,
//! `ks.group_key(g, …)`, in the same slot. So every script call touches one slot.
//!
//! - Value: HASH `ks.key(X, "v")`: `b` (body, `format: string`) or `f:<n>` (JSON text of
//!   top-level member `<n>`, `format: hash`), and `m`, the value's meta packed into one string
//!   (`lua/cache/meta.lua`: one member instead of seven, and no number as text, so a hit is
//!   one HMGET of two members). The meta: `st` ("200", or "404" for a negative entry), `ct`
//!   (content type; application/json for `format: hash`), `fresh` (epoch ms, Redis TIME, until
//!   which the value is fresh), `delta` (ms the origin fill took; 0 for PUT/PATCH), `tags`
//!   (joined by ","), `tv` (the stamp: Redis TIME in µs when the value's data was read from its
//!   source: a fill's `start`, else the store, past the newest invalidation of its tags), `ver`
//!   (the version, new on every store: max(previous + 1, Redis TIME in µs); its ETag is
//!   `"<ver>"`, and PUT/PATCH compare `If-Match`/`If-None-Match` with it in their script), and
//!   with `ttl_from_origin` the value's own stale_while_revalidate / stale_if_error (ms, from
//!   the origin's Cache-Control; reads use the smaller of each and the rule's). A value written
//!   by an earlier build has these as members of their own and no `m`; every script reads both
//!   layouts, and the id's next store writes `m`. Hard expiry: PEXPIRE
//!   ttl + max(stale_while_revalidate, stale_if_error) (the value's own when it has them); a
//!   negative entry: negative_ttl.
//! - Refresh lease: STRING `ks.key(X, "lease")` = a random token, PX refresh_lease. Granted by
//!   the read script; released/overwritten by the fill only if the token matches. The fill
//!   stores only if the lease is its own, or nobody holds it and no value exists. A write that
//!   stores a value (PUT/PATCH) DELs the lease in its script: a slow fill that started before
//!   the write then finds neither its lease nor an absent value, and does not overwrite the
//!   write. A write that changes the origin without storing a value (write-through PATCH of
//!   an id not cached) SETs the lease to the write marker `W` (PX max(refresh_lease,
//!   origin_timeout + 1s)): a fill in flight finds a lease not its own and stores nothing; the
//!   read script takes `W` over like a free lease. DELETE leaves `W` too (same PX).
//!   A fill also refuses when it is older than that PX (measured from `start`, Redis TIME at
//!   the read it follows, which the read script returns), so no marker lapses under it.
//!   After an origin answer that must not be stored (`ttl_from_origin`: no-store, private,
//!   no-cache, or no freshness left), the value is dropped and the lease holds `P` (PX
//!   refresh_lease): readers then ask the origin without waiting for one another, and a fill
//!   whose answer may be stored takes `P` over like a free lease.
//!   After a failed fill with a stale value to fall back on, the lease holds the marker `E`
//!   (PX refresh_lease) instead of a token: readers then get the stale value (stale_if_error)
//!   without asking the failing origin again. Like any lease, a write DELs it.
//! - Write-through in flight: from before the origin is written until the write ends, the
//!   lease holds the write's own token (PX max(refresh_lease, origin_timeout + 1s)) and the
//!   value is set aside as HASH `ks.key(X, "held")` (RENAMEd, keeping its expiry): no read
//!   serves the value the write may replace (readers wait as for a fill, then read the origin
//!   without storing), and no fill in flight stores. The write ends, only while the lease
//!   still holds its token, by storing the new value (PUT; PATCH patches the held copy), by
//!   restoring the held copy (the origin refused), or by dropping it with `W` in the lease
//!   (the origin may have applied the write: timeout); a later write or DELETE took the
//!   lease, so the end drops the value instead. If Redis fails the end, the marker lapses and
//!   reads fill from the origin.
//! - Tag versions of group g: ZSET `ks.group_key(g, "tags")`, member = tag, score = Redis
//!   TIME in µs of its last invalidation in this group, or a negative score -E: referenced by
//!   a value of the group until E (epoch ms), never invalidated since. A value is valid only
//!   while no tag of it has a version >= its `tv`. Invalidation (one call per group) sets the
//!   version to max(version + 1, Redis TIME in µs), PEXPIREs the ZSET to at least
//!   max(refresh_lease, origin_timeout + 1s) (never shortening), and drops versions older than
//!   the longest any value can live (`CacheRule::tag_memory_ms`). A fill stores nothing if a
//!   tag of its value has a version >= its `start`: that tag was invalidated after the origin
//!   was asked. Every store with tags records them (the negative score only grows), drops
//!   referenced-only members whose values are all gone, and PEXPIREs the ZSET to at least the
//!   value's hard lifetime, never shortening it, so it outlives every value of its group.
//! - Write-behind journal of group g: STREAM `ks.group_key(g, "journal")` {id, ct, b[, oid][, k]} (`k`: the
//!   value's id when the rule's plugin chose a key other than the client's `id`, whose origin
//!   URL gets the write), consumer group
//!   `patternd`; delivered entries are XACKed and XDELed, so it holds exactly the undelivered
//!   writes, and a PUT/PATCH is refused (503) when it holds ceil(journal_max_len / slot_groups)
//!   (never MAXLEN-trimmed: that could drop an acknowledged write). Dead letters: STREAM
//!   `ks.group_key(g, "dead")`, MAXLEN ceil(journal_max_len / slot_groups). Neither has a TTL
//!   (declared in the key layout). A write's entry is in the journal of its value's group.
//! - Write-behind only: value field `jp` = the journal entry id of the id's newest write, set
//!   by the PUT/PATCH script after `cache_store` (which drops it on any other store). The
//!   flusher skips an entry older than `jp`: a newer write supersedes it (coalescing).
//!   While the `jp` entry is still in the journal, the value is newer than the origin's copy:
//!   the read script (KEYS[3] = the journal for `behind` rules) serves it as a hit and grants
//!   no lease, the fill script never replaces it, and each delivery attempt (`begin`) extends
//!   its PEXPIRE past the next attempt (never shortening it). DELETE keeps such a value (and
//!   its `jp`), and the read script skips its tag-version check, so DELETE and tag
//!   invalidation take effect only once the write is delivered. A dead-letter replay sets
//!   `jp` to the new entry when `jp` still names the dead letter's entry (`jid` or `oid`);
//!   `begin` treats an entry `jp` names exactly as the newest.
//!   Flush lease: STRING `ks.key(X, "flush")`, PX origin_timeout + 1s: one delivery per id.
//!
//! # The store function
//!
//! `lua/cache/store.lua` defines `cache_store(v)` (its header documents the table `v`). Every
//! script that writes a value includes it, after the clock and `common.lua` (tag checks,
//! preconditions): its recipe's includes are `STORES`.
//!
//! # Adding scripts
//!
//! Declare its `Recipe` below (a body in `lua/cache/`, the includes it needs) and list it in
//! `RECIPES`; the `compile` module doc's table then asks for its row. `CompiledCache` has one
//! named field per script plus `scripts`, the list loaded into Redis: add a
//! `pub put: Arc<Script>` field (in `SharedScripts` or `WriteScripts`, `assemble`d once), set
//! it in `compile`, and push it into `scripts` there (checked with luacheck).

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::cache::{Cache, WriteMode};

const CLOCK: Block = lua_file!("shared/clock.lua");
const META: Block = lua_file!("cache/meta.lua");
const COMMON: Block = lua_file!("cache/common.lua");
const STORE: Block = lua_file!("cache/store.lua");
const JOURNAL: Block = lua_file!("cache/journal_common.lua");

/// The includes of a script that stores a value: every one checks tags (or a write's
/// precondition) first.
const STORES: &[Block] = &[CLOCK, META, COMMON, STORE];

const READ: Recipe = Recipe::new("cache read", &[META], lua_file!("cache/read.lua"));
/// The fresh hits of a batch of reads, asked before `cache read` (`store::batch`, Layout::Fixed).
const HIT_BATCH: Recipe = Recipe::new("cache hit batch", &[META], lua_file!("cache/hit_batch.lua"));
/// Elements per read of `cache hit batch`'s flat reply.
pub const HIT_REPLY_WIDTH: usize = 3;
const FILL: Recipe = Recipe::new("cache fill", STORES, lua_file!("cache/fill.lua"));
const RELEASE: Recipe = Recipe::new("cache release-lease", &[], lua_file!("cache/release.lua"));
const DELETE: Recipe = Recipe::new("cache delete", &[], lua_file!("cache/delete.lua"));
const INVALIDATE: Recipe = Recipe::new(
    "cache invalidate",
    &[CLOCK],
    lua_file!("cache/invalidate.lua"),
);
const PUT: Recipe = Recipe::new("cache put", STORES, lua_file!("cache/put.lua"));
const PATCH: Recipe = Recipe::new("cache patch", STORES, lua_file!("cache/patch.lua"));
const THROUGH_BEGIN: Recipe = Recipe::new(
    "cache through-begin",
    &[META, COMMON],
    lua_file!("cache/through_begin.lua"),
);
const THROUGH_ABORT: Recipe = Recipe::new(
    "cache through-abort",
    &[],
    lua_file!("cache/through_abort.lua"),
);
const JOURNAL_FETCH: Recipe = Recipe::new(
    "cache journal-fetch",
    &[JOURNAL],
    lua_file!("cache/journal_fetch.lua"),
);
const JOURNAL_BEGIN: Recipe = Recipe::new(
    "cache journal-begin",
    &[JOURNAL],
    lua_file!("cache/journal_begin.lua"),
);
const JOURNAL_ACK: Recipe = Recipe::new(
    "cache journal-ack",
    &[JOURNAL],
    lua_file!("cache/journal_ack.lua"),
);
const JOURNAL_DEAD: Recipe = Recipe::new(
    "cache journal-dead",
    &[JOURNAL],
    lua_file!("cache/journal_dead.lua"),
);
const JOURNAL_REPLAY: Recipe = Recipe::new(
    "cache journal-replay",
    &[],
    lua_file!("cache/journal_replay.lua"),
);
const JOURNAL_DEAD_LIST: Recipe = Recipe::new(
    "cache journal-dead-list",
    &[],
    lua_file!("cache/journal_dead_list.lua"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[
    READ,
    HIT_BATCH,
    FILL,
    RELEASE,
    DELETE,
    INVALIDATE,
    PUT,
    PATCH,
    THROUGH_BEGIN,
    THROUGH_ABORT,
    JOURNAL_FETCH,
    JOURNAL_BEGIN,
    JOURNAL_ACK,
    JOURNAL_DEAD,
    JOURNAL_REPLAY,
    JOURNAL_DEAD_LIST,
];

/// Sub-keys of an id, for `KeySpace::key`.
pub const VALUE_SUB: &str = "v";
pub const LEASE_SUB: &str = "lease";
/// `KeySpace::group_key(g, TAGS_SUB)`: the tag versions of slot group g.
pub const TAGS_SUB: &str = "tags";

/// The scripts every cache rule shares.
struct SharedScripts {
    read: Arc<Script>,
    read_batch: Arc<Script>,
    hit_batch: Arc<Script>,
    fill: Arc<Script>,
    release: Arc<Script>,
    delete: Arc<Script>,
    invalidate: Arc<Script>,
}

static SHARED: LazyLock<SharedScripts> = LazyLock::new(|| {
    let read = assemble(&READ);
    SharedScripts {
        read_batch: super::batch::wrap(&read),
        hit_batch: assemble(&HIT_BATCH),
        read,
        fill: assemble(&FILL),
        release: assemble(&RELEASE),
        delete: assemble(&DELETE),
        invalidate: assemble(&INVALIDATE),
    }
});

// ---- The write path (PUT/PATCH and the write-behind journal; cache-write helper) ----------

/// The value set aside while a write-through is at the origin (`lua/cache/through_begin.lua`).
pub const HELD_SUB: &str = "held";

/// `KeySpace::group_key` subs of the write-behind streams, and the per-id flush lease.
pub const JOURNAL_SUB: &str = "journal";
pub const DEAD_SUB: &str = "dead";
pub const FLUSH_LEASE_SUB: &str = "flush";

/// The write path's scripts, shared by every cache rule (numbers travel in ARGV).
#[derive(Debug)]
pub struct WriteScripts {
    /// `PUT`: value (+ journal entry for behind) in one script (`lua/cache/put.lua`).
    pub put: Arc<Script>,
    /// `PATCH` of a `format: hash` value (`lua/cache/patch.lua`).
    pub patch: Arc<Script>,
    /// Write-through, before the origin: value set aside, lease = the write's token
    /// (`lua/cache/through_begin.lua`).
    pub through_begin: Arc<Script>,
    /// Write-through the origin did not take: restore or drop (`lua/cache/through_abort.lua`).
    pub through_abort: Arc<Script>,
    /// Write-behind flusher: claim due and new entries (`lua/cache/journal_fetch.lua`).
    pub fetch: Arc<Script>,
    /// Before a delivery: coalesce, supersede check, per-id lease (`lua/cache/journal_begin.lua`).
    pub begin: Arc<Script>,
    /// After a delivery: XACK + XDEL, lease release (`lua/cache/journal_ack.lua`).
    pub ack: Arc<Script>,
    /// Journal → dead letters (`lua/cache/journal_dead.lua`).
    pub dead: Arc<Script>,
    /// Dead letters → journal (`lua/cache/journal_replay.lua`).
    pub replay: Arc<Script>,
    /// A page of dead letters (`lua/cache/journal_dead_list.lua`).
    pub dead_list: Arc<Script>,
}

impl WriteScripts {
    fn all(&self) -> [&Arc<Script>; 10] {
        [
            &self.put,
            &self.patch,
            &self.through_begin,
            &self.through_abort,
            &self.fetch,
            &self.begin,
            &self.ack,
            &self.dead,
            &self.replay,
            &self.dead_list,
        ]
    }
}

static WRITE: LazyLock<Arc<WriteScripts>> = LazyLock::new(|| {
    Arc::new(WriteScripts {
        put: assemble(&PUT),
        patch: assemble(&PATCH),
        through_begin: assemble(&THROUGH_BEGIN),
        through_abort: assemble(&THROUGH_ABORT),
        fetch: assemble(&JOURNAL_FETCH),
        begin: assemble(&JOURNAL_BEGIN),
        ack: assemble(&JOURNAL_ACK),
        dead: assemble(&JOURNAL_DEAD),
        replay: assemble(&JOURNAL_REPLAY),
        dead_list: assemble(&JOURNAL_DEAD_LIST),
    })
});

/// A compiled cache rule: its scripts (see the module doc for what each key holds).
#[derive(Debug, Clone)]
pub struct CompiledCache {
    /// Every script of the rule, for SCRIPT LOAD.
    pub scripts: Vec<Arc<Script>>,
    /// Hit / miss / early refresh + lease (`lua/cache/read.lua`).
    pub read: Arc<Script>,
    /// `read` deciding a batch of reads (`compile/batch.rs`, `store::batch`).
    pub read_batch: Arc<Script>,
    /// The fresh hits of a batch of reads, asked first (`lua/cache/hit_batch.lua`).
    pub hit_batch: Arc<Script>,
    /// Stores an origin answer if the lease still matches (`lua/cache/fill.lua`).
    pub fill: Arc<Script>,
    /// Gives a lease back (`lua/cache/release.lua`).
    pub release: Arc<Script>,
    /// DEL of values and leases (`lua/cache/delete.lua`).
    pub delete: Arc<Script>,
    /// Tag version bumps (`lua/cache/invalidate.lua`).
    pub invalidate: Arc<Script>,
    /// PUT/PATCH and the write-behind journal.
    pub write: Arc<WriteScripts>,
    /// `write: behind`: the rule has a journal and dead letters.
    pub write_behind: bool,
    /// `write: through`: writes set the value aside while at the origin.
    pub write_through: bool,
}

pub fn compile(_rule: &Rule, spec: &Cache) -> Result<CompiledCache, String> {
    let s = &*SHARED;
    let w = &*WRITE;
    let write_behind = spec.write == WriteMode::Behind;
    let mut all = vec![
        &s.read,
        &s.read_batch,
        &s.hit_batch,
        &s.fill,
        &s.release,
        &s.delete,
        &s.invalidate,
        &w.put,
        &w.patch,
    ];
    if spec.write == WriteMode::Through {
        all.extend([&w.through_begin, &w.through_abort]);
    }
    if write_behind {
        all.extend(w.all().into_iter().skip(4));
    }
    luacheck::check_builtin(all.iter().map(|s| s.as_ref()))?;
    Ok(CompiledCache {
        scripts: all.into_iter().cloned().collect(),
        read: s.read.clone(),
        read_batch: s.read_batch.clone(),
        hit_batch: s.hit_batch.clone(),
        fill: s.fill.clone(),
        release: s.release.clone(),
        delete: s.delete.clone(),
        invalidate: s.invalidate.clone(),
        write: w.clone(),
        write_behind,
        write_through: spec.write == WriteMode::Through,
    })
}

impl CompiledCache {
    /// Key templates with what each holds.
    pub fn key_layout(&self, keys: &KeySpace) -> Vec<(String, String)> {
        let mut layout = vec![
            (
                keys.grouped_template(VALUE_SUB),
                "HASH {m: the meta packed (st, ct, fresh, delta, tags, tv, ver, and the value's own stale windows; lua/cache/meta.lua), b | f:<member>...[, jp: newest journal entry (write: behind)]}: the value; expires \
                 ttl + max(stale_while_revalidate, stale_if_error) after it was written \
                 (a negative entry: negative_ttl)"
                    .to_string(),
            ),
            (
                keys.grouped_template(LEASE_SUB),
                "STRING refresh lease token (or `E`: the origin just failed; `W`: a DELETE, or a \
                 write-through PATCH changed the origin; `P`: the origin's answer may not be \
                 stored): one caller fills; expires after refresh_lease (`W`: \
                 max(refresh_lease, origin_timeout + 1s))"
                    .to_string(),
            ),
            (
                keys.group_template(TAGS_SUB),
                "ZSET tag versions of the slot group <g> (tag -> Redis TIME in µs of its last \
                 invalidation, or -(epoch ms until which a value references it)); expires no \
                 earlier than the last value of the group recording a tag (an invalidation: \
                 keeps it max(refresh_lease, origin_timeout + 1s) at least); versions older \
                 than the longest value lifetime are dropped"
                    .to_string(),
            ),
        ];
        if self.write_through {
            layout.push((
                keys.grouped_template(HELD_SUB),
                "HASH the value set aside while a write-through is at the origin (the lease \
                 holds that write's token meanwhile); keeps the value's expiry"
                    .to_string(),
            ));
        }
        if self.write_behind {
            layout.extend([
                (
                    keys.group_template(JOURNAL_SUB),
                    "STREAM write-behind journal of the slot group <g> {id, ct, b[, oid, k]}, \
                     group `patternd`: the writes not yet delivered (delivered ones are \
                     deleted); NO TTL: bounded by ceil(journal_max_len / slot_groups) (a full \
                     journal refuses writes with 503)"
                        .to_string(),
                ),
                (
                    keys.group_template(DEAD_SUB),
                    "STREAM dead letters of the slot group <g> {id, ct, b, oid, jid, k, attempts, \
                     error, failed_at}; NO TTL: trimmed to ceil(journal_max_len / slot_groups) \
                     entries"
                        .to_string(),
                ),
                (
                    keys.grouped_template(FLUSH_LEASE_SUB),
                    "STRING flush lease: one delivery per id at a time; expires after \
                     origin_timeout + 1s"
                        .to_string(),
                ),
            ]);
        }
        layout
    }
}
