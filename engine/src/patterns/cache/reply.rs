//! The cache scripts' replies, decoded into the cache's types (with `patterns::reply`'s
//! helpers). Each decoder states its reply's shape; the script's header states the same from
//! the Lua side. A reply of another shape is a `ReplyError`: the caller decides what that
//! means (a 500 for a GET or a write, a value not stored for a fill, an entry skipped for the
//! flusher). Scripts whose reply the `redis` crate converts by itself (the delete script's
//! `Vec<i64>`, the flusher's begin verdict, the replay's pairs) are read where they are called.

use axum::body::Bytes;
use redis::Value;

use super::dead::DeadLetter;
use super::read::Body;
use crate::patterns::reply::{
    Items, ReplyError, array, at, bytes, int, into_array, into_bytes, into_text, text, uint,
};
use crate::policy::cache::CacheFormat;

/// What the read script said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Absent,
    Hit,
    Refresh,
    Stale,
    StaleRefresh,
    /// Past stale_while_revalidate, inside stale_if_error, and the origin failed moments ago.
    StaleError,
    /// No usable value, and the origin failed moments ago on another caller's fill.
    Failed,
    Fetch,
    Wait,
    /// No value, and the origin's last answer may not be stored: ask it without waiting.
    Pass,
}

/// A value the read script returned.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) st: String,
    pub(super) ct: String,
    /// Ms of freshness left at the read (negative: stale).
    pub(super) left: i64,
    /// Ms the value's fill took (XFetch's recompute time; 0 for written values).
    pub(super) delta: i64,
    pub(super) body: Body,
    /// `ver` ('' for a value stored before versions existed).
    pub(super) version: String,
}

impl Stored {
    pub(super) fn version(&self) -> Option<String> {
        (!self.version.is_empty()).then(|| self.version.clone())
    }
}

/// The read script's reply.
#[derive(Debug)]
pub(super) struct ReadReply {
    pub(super) action: Action,
    /// Redis TIME (µs) of the read: a fill that follows passes it to the fill script. Empty
    /// for `Hit` (the script does not format it when nothing follows the read).
    pub(super) start: String,
    pub(super) value: Option<Stored>,
}

/// One read's three elements of the hit batch (`lua/cache/hit_batch.lua`): a fresh hit as its
/// packed meta `m`, body and ms left, or `0` and padding when the read script must answer the
/// read. Takes the reply's buffers over (the body is not copied).
pub(super) fn hit(reply: Value) -> Result<Option<Stored>, ReplyError> {
    let items = into_array(reply)?;
    if matches!(items.first(), Some(Value::Int(0))) {
        return Ok(None);
    }
    let mut it = Items::new(items);
    let m = it.next_bytes()?;
    let body = it.next_bytes()?;
    let left = it.next_int()?;
    let meta = HitMeta::read(&m).ok_or_else(|| ReplyError::Unexpected {
        what: "packed meta",
        value: String::from_utf8_lossy(&m).into_owned(),
    })?;
    Ok(Some(Stored {
        st: meta.st,
        ct: meta.ct,
        left,
        // As the read script's `math.floor(delta)`.
        delta: meta.delta.floor() as i64,
        body: Body::Bytes(body),
        version: meta.ver,
    }))
}

/// What a hit needs of a value's packed meta (`lua/cache/meta.lua`, layout 1,
/// `<BddI4c0I4c0I4c0I4c0I4c0dd`): the prefix up to `ver`, as `unpack_hit` reads it there.
struct HitMeta {
    delta: f64,
    st: String,
    ct: String,
    ver: String,
}

impl HitMeta {
    /// None when `m` is not layout 1 or ends early.
    fn read(m: &[u8]) -> Option<Self> {
        let (&layout, mut rest) = m.split_first()?;
        if layout != 1 {
            return None;
        }
        let mut number = || -> Option<f64> {
            let (n, tail) = rest.split_first_chunk::<8>()?;
            rest = tail;
            Some(f64::from_le_bytes(*n))
        };
        let _fresh = number()?;
        let delta = number()?;
        let mut text = || -> Option<String> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            let (t, tail) = (tail.get(..len)?, tail.get(len..)?);
            rest = tail;
            Some(String::from_utf8_lossy(t).into_owned())
        };
        let st = text()?;
        let ct = text()?;
        let _tags = text()?;
        let ver = text()?;
        Some(HitMeta { delta, st, ct, ver })
    }
}

/// A value as the read script gives it: `st, ct, ms left, body, delta ms, ver`, then for
/// `format: hash` the members (in place of the body, which is then empty).
fn stored(mut it: Items, format: CacheFormat) -> Result<Stored, ReplyError> {
    let st = it.next_text()?;
    let ct = it.next_text()?;
    let left = it.next_int()?;
    let body = it.next_value()?;
    let delta = it.next_int()?;
    let version = it.next_text()?;
    let body = match format {
        CacheFormat::String => Body::Bytes(into_bytes(body)?),
        CacheFormat::Hash => Body::Fields(it.text_pairs()?),
    };
    Ok(Stored {
        st,
        ct,
        left,
        delta,
        body,
        version,
    })
}

/// The read script (`lua/cache/read.lua`): `{ action, start }`, or with a value `{ action, start,
/// st, ct, ms left, body, delta ms, ver, name1, json1, ... }`: the body for `format: string`,
/// the members for `format: hash`; `start` is '' for `hit`. Takes the reply's buffers over
/// (the body is not copied).
pub(super) fn read(raw: Vec<Value>, format: CacheFormat) -> Result<ReadReply, ReplyError> {
    let mut it = Items::new(raw);
    let first = it.next_value()?;
    let action = match bytes(&first)? {
        b"absent" => Action::Absent,
        b"hit" => Action::Hit,
        b"refresh" => Action::Refresh,
        b"stale" => Action::Stale,
        b"stale_refresh" => Action::StaleRefresh,
        b"stale_error" => Action::StaleError,
        b"failed" => Action::Failed,
        b"fetch" => Action::Fetch,
        b"wait" => Action::Wait,
        b"pass" => Action::Pass,
        other => {
            return Err(ReplyError::Unexpected {
                what: "read action",
                value: String::from_utf8_lossy(other).into_owned(),
            });
        }
    };
    let start = it.next_text()?;
    // Every action but `hit` may be followed by a fill (a `wait` past fill_wait fetches
    // itself), whose script needs the read's time.
    if start.is_empty() && action != Action::Hit {
        return Err(ReplyError::Unexpected {
            what: "read start",
            value: String::new(),
        });
    }
    if it.is_empty() {
        if matches!(
            action,
            Action::Hit
                | Action::Refresh
                | Action::Stale
                | Action::StaleRefresh
                | Action::StaleError
        ) {
            // These serve the value: it must be there.
            return Err(ReplyError::Missing(2));
        }
        return Ok(ReadReply {
            action,
            start,
            value: None,
        });
    }
    Ok(ReadReply {
        action,
        start,
        value: Some(stored(it, format)?),
    })
}

/// The fill script (`lua/cache/fill.lua`): `{ 1, ver }` when it stored the value (its version),
/// `{ 0 }` when it did not.
pub(super) fn fill(raw: &[Value]) -> Result<Option<String>, ReplyError> {
    match int(at(raw, 0)?)? {
        1 => text(at(raw, 1)?).map(Some),
        0 => Ok(None),
        n => Err(unexpected("fill status", n)),
    }
}

/// What a PUT or PATCH script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum WriteReply {
    /// Stored. `journal_id`: `behind`'s journal entry; `object`: PATCH's whole object after
    /// the patch; `version`: the new version.
    Stored {
        journal_id: Option<String>,
        object: Option<String>,
        version: Option<String>,
    },
    /// `{ 0 }`: nothing to write to (write-through: the lease no longer holds this write's
    /// token; PATCH: no live value).
    NotApplied,
    /// `{ -1, backlog }`: the journal is full; nothing was written.
    JournalFull { backlog: u64 },
    /// `{ -2 }`: `If-Match` / `If-None-Match` did not hold; nothing was written.
    PreconditionFailed,
}

/// The PUT script (`lua/cache/put.lua`): `{ 1, journal entry id or '', ver }` or a refusal.
pub(super) fn put(raw: &[Value]) -> Result<WriteReply, ReplyError> {
    write(raw, |raw| {
        Ok(WriteReply::Stored {
            journal_id: non_empty(text(at(raw, 1)?)?),
            object: None,
            version: non_empty(text(at(raw, 2)?)?),
        })
    })
}

/// The PATCH script (`lua/cache/patch.lua`): `{ 1, journal entry id or '', object, ver }` or a
/// refusal.
pub(super) fn patch(raw: &[Value]) -> Result<WriteReply, ReplyError> {
    write(raw, |raw| {
        Ok(WriteReply::Stored {
            journal_id: non_empty(text(at(raw, 1)?)?),
            object: Some(text(at(raw, 2)?)?),
            version: non_empty(text(at(raw, 3)?)?),
        })
    })
}

/// The refusals PUT and PATCH share; `stored` reads a `{ 1, ... }` reply.
fn write(
    raw: &[Value],
    stored: impl FnOnce(&[Value]) -> Result<WriteReply, ReplyError>,
) -> Result<WriteReply, ReplyError> {
    match int(at(raw, 0)?)? {
        1 => stored(raw),
        0 => Ok(WriteReply::NotApplied),
        -1 => Ok(WriteReply::JournalFull {
            backlog: int(at(raw, 1)?)?.max(0) as u64,
        }),
        -2 => Ok(WriteReply::PreconditionFailed),
        n => Err(unexpected("write status", n)),
    }
}

/// One journal entry as the flusher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The stream entry id.
    pub(super) eid: String,
    /// The write's original entry id (its place in the id's write order; differs from `eid`
    /// after a dead-letter replay).
    pub(super) oid: String,
    pub(super) attempt: u64,
    /// The client's id: the write goes to its origin URL.
    pub(super) id: String,
    /// The id of the value the write stored (`k`: a plugin chose another key; else `id`).
    pub(super) key: String,
    pub(super) content_type: String,
    pub(super) body: Bytes,
}

/// The journal fetch script (`lua/cache/journal_fetch.lua`): `{ journal length, dead-letter
/// length, entry... }`; each entry is read by `entry`, so one malformed entry need not stop
/// the others.
pub(super) fn fetch(raw: Vec<Value>) -> Result<(i64, i64, Vec<Value>), ReplyError> {
    let mut it = Items::new(raw);
    let backlog = it.next_int()?;
    let dead = it.next_int()?;
    Ok((backlog, dead, it.rest()))
}

/// One entry of the fetch reply: `{ entry id, attempt, { field, value, ... } }` with the
/// fields `id`, `ct`, `b` and, when set, `oid` and `k`. Takes the body's buffer over.
pub(super) fn entry(v: Value) -> Result<Entry, ReplyError> {
    let mut parts = Items::new(into_array(v)?);
    let eid = parts.next_text()?;
    let attempt = parts.next_int()?.max(1) as u64;
    let mut fields = Items::new(into_array(parts.next_value()?)?);
    let mut e = Entry {
        oid: eid.clone(),
        eid,
        attempt,
        id: String::new(),
        key: String::new(),
        content_type: String::new(),
        body: Bytes::new(),
    };
    while !fields.is_empty() {
        let name = fields.next_value()?;
        let value = fields.next_value()?;
        match bytes(&name)? {
            b"id" => e.id = into_text(value)?,
            b"ct" => e.content_type = into_text(value)?,
            b"b" => e.body = into_bytes(value)?,
            b"oid" => e.oid = into_text(value)?,
            b"k" => e.key = into_text(value)?,
            _ => {}
        }
    }
    if e.key.is_empty() {
        e.key = e.id.clone();
    }
    Ok(e)
}

/// The dead-letter list script (`lua/cache/journal_dead_list.lua`): `{ total, { entry id, id,
/// attempts, error, failed_at, payload bytes, content type, original journal id }... }`.
pub(super) fn dead_list(raw: &[Value]) -> Result<(u64, Vec<DeadLetter>), ReplyError> {
    let total = uint(at(raw, 0)?)?;
    let letters = raw
        .iter()
        .skip(1)
        .map(|v| {
            let f = array(v)?;
            let s = |i: usize| text(at(f, i)?);
            let n = |i: usize| uint(at(f, i)?);
            Ok(DeadLetter {
                entry: s(0)?,
                id: s(1)?,
                attempts: n(2)?,
                error: s(3)?,
                failed_at_ms: n(4)?,
                payload_bytes: n(5)?,
                content_type: s(6)?,
                journal_id: s(7)?,
            })
        })
        .collect::<Result<_, ReplyError>>()?;
    Ok((total, letters))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn unexpected(what: &'static str, n: i64) -> ReplyError {
    ReplyError::Unexpected {
        what,
        value: n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::reply::tests::s;

    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }

    /// A packed meta as `pack_meta` (meta.lua) writes it: `<BddI4c0I4c0I4c0I4c0I4c0dd`.
    fn packed(fresh: f64, delta: f64, texts: [&str; 5], sw: f64, se: f64) -> Vec<u8> {
        let mut m = vec![1u8];
        m.extend(fresh.to_le_bytes());
        m.extend(delta.to_le_bytes());
        for t in texts {
            m.extend(u32::try_from(t.len()).unwrap().to_le_bytes());
            m.extend(t.as_bytes());
        }
        m.extend(sw.to_le_bytes());
        m.extend(se.to_le_bytes());
        m
    }

    #[test]
    fn a_hit_batch_hit_reads_its_packed_meta() {
        let m = packed(
            1.7e12,
            12.9,
            [
                "200",
                "text/plain; charset=utf-8",
                "",
                "v7",
                "1700000000000000",
            ],
            -1.0,
            30000.0,
        );
        let reply = arr(vec![
            Value::BulkString(m.clone()),
            s("body"),
            Value::Int(4200),
        ]);
        let v = hit(reply).unwrap().expect("a hit");
        assert_eq!(
            (
                v.st.as_str(),
                v.ct.as_str(),
                v.left,
                v.delta,
                v.version.as_str()
            ),
            ("200", "text/plain; charset=utf-8", 4200, 12, "v7")
        );
        assert!(matches!(v.body, Body::Bytes(ref b) if b.as_ref() == b"body"));
        // Not a hit: the read script answers.
        let none = arr(vec![Value::Int(0), Value::Int(0), Value::Int(0)]);
        assert!(hit(none).unwrap().is_none());
        // Another layout, or a meta cut short, is an unexpected reply.
        let mut other = m.clone();
        other[0] = 2;
        for bad in [other, m[..m.len() / 2].to_vec(), Vec::new()] {
            let reply = arr(vec![Value::BulkString(bad), s("body"), Value::Int(1)]);
            assert!(hit(reply).is_err());
        }
    }

    /// `{ action, start, st, ct, left, body, delta, ver, members... }`
    fn with_value(action: &str, body: Value, members: &[&str]) -> Vec<Value> {
        let mut r = vec![
            s(action),
            s("1700000000000000"),
            s("200"),
            s("text/plain"),
            Value::Int(-1500),
            body,
            Value::Int(12),
            s("v7"),
        ];
        r.extend(members.iter().map(|m| s(m)));
        r
    }

    #[test]
    fn read_replies() {
        let r = read(vec![s("absent"), s("17")], CacheFormat::String).unwrap();
        assert_eq!((r.action, r.start.as_str()), (Action::Absent, "17"));
        assert!(r.value.is_none());
        for (name, action) in [
            ("fetch", Action::Fetch),
            ("wait", Action::Wait),
            ("failed", Action::Failed),
            ("pass", Action::Pass),
        ] {
            assert_eq!(
                read(vec![s(name), s("1")], CacheFormat::Hash)
                    .unwrap()
                    .action,
                action
            );
        }

        let r = read(with_value("stale", s("hello"), &[]), CacheFormat::String).unwrap();
        assert_eq!(r.action, Action::Stale);
        let v = r.value.unwrap();
        assert_eq!((v.st.as_str(), v.ct.as_str()), ("200", "text/plain"));
        assert_eq!((v.left, v.delta), (-1500, 12));
        assert_eq!(v.version(), Some("v7".to_string()));
        assert!(matches!(v.body, Body::Bytes(b) if b == "hello"));

        let r = read(
            with_value("hit", s(""), &["a", "1", "b", "\"x\""]),
            CacheFormat::Hash,
        )
        .unwrap();
        let Some(Stored {
            body: Body::Fields(f),
            ..
        }) = r.value
        else {
            panic!("no members")
        };
        assert_eq!(f, [("a".into(), "1".into()), ("b".into(), "\"x\"".into())]);

        // Freshness left may come as text; a value stored before versions has none.
        let mut raw = with_value("hit", s("x"), &[]);
        raw[4] = s("250");
        raw[7] = s("");
        let v = read(raw, CacheFormat::String).unwrap().value.unwrap();
        assert_eq!((v.left, v.version()), (250, None));

        // A hit carries no start: nothing follows it.
        let mut raw = with_value("hit", s("x"), &[]);
        raw[1] = s("");
        let r = read(raw, CacheFormat::String).unwrap();
        assert_eq!((r.action, r.start.as_str()), (Action::Hit, ""));
    }

    #[test]
    fn malformed_read_replies_are_errors() {
        let bad = |raw: Vec<Value>, format| read(raw, format).unwrap_err();
        assert_eq!(bad(vec![], CacheFormat::String), ReplyError::Missing(0));
        assert_eq!(
            bad(vec![s("hit")], CacheFormat::String),
            ReplyError::Missing(1)
        );
        assert!(matches!(
            bad(vec![s("bogus"), s("1")], CacheFormat::String),
            ReplyError::Unexpected { .. }
        ));
        assert!(matches!(
            bad(vec![Value::Int(1), s("1")], CacheFormat::String),
            ReplyError::WrongType { .. }
        ));
        assert!(matches!(
            bad(vec![s("fetch"), Value::Nil], CacheFormat::String),
            ReplyError::WrongType { .. }
        ));
        // An action that serves a value without one.
        for action in ["hit", "refresh", "stale", "stale_refresh", "stale_error"] {
            assert_eq!(
                bad(vec![s(action), s("1")], CacheFormat::String),
                ReplyError::Missing(2)
            );
        }
        // Every other action may be followed by a fill, which needs the read's start.
        for action in [
            "refresh",
            "stale",
            "stale_refresh",
            "stale_error",
            "fetch",
            "wait",
        ] {
            let mut raw = with_value(action, s("x"), &[]);
            raw[1] = s("");
            assert!(matches!(
                bad(raw, CacheFormat::String),
                ReplyError::Unexpected {
                    what: "read start",
                    ..
                }
            ));
        }
        for action in ["absent", "fetch", "wait", "failed", "pass"] {
            assert!(matches!(
                bad(vec![s(action), s("")], CacheFormat::String),
                ReplyError::Unexpected { .. }
            ));
        }
        // Cut short.
        let mut short = with_value("hit", s("x"), &[]);
        short.truncate(5);
        assert_eq!(bad(short, CacheFormat::String), ReplyError::Missing(5));
        // Wrong types in the value.
        let mut raw = with_value("hit", s("x"), &[]);
        raw[4] = s("soon");
        assert!(matches!(
            bad(raw, CacheFormat::String),
            ReplyError::WrongType { .. }
        ));
        assert!(matches!(
            bad(with_value("hit", Value::Int(3), &[]), CacheFormat::String),
            ReplyError::WrongType { .. }
        ));
        assert!(matches!(
            bad(
                with_value("hit", s(""), &["a", "1", "b"]),
                CacheFormat::Hash
            ),
            ReplyError::Missing(11)
        ));
        assert!(matches!(
            bad(
                with_value("hit", s(""), &[])
                    .into_iter()
                    .chain([Value::Nil, s("1")])
                    .collect(),
                CacheFormat::Hash
            ),
            ReplyError::WrongType { .. }
        ));
    }

    #[test]
    fn fill_replies() {
        assert_eq!(fill(&[Value::Int(1), s("v2")]), Ok(Some("v2".into())));
        assert_eq!(fill(&[Value::Int(0)]), Ok(None));
        assert_eq!(fill(&[]), Err(ReplyError::Missing(0)));
        assert_eq!(fill(&[Value::Int(1)]), Err(ReplyError::Missing(1)));
        assert!(matches!(
            fill(&[Value::Int(5)]),
            Err(ReplyError::Unexpected { .. })
        ));
        assert!(matches!(
            fill(&[s("ok")]),
            Err(ReplyError::WrongType { .. })
        ));
        assert!(matches!(
            fill(&[Value::Int(1), Value::Nil]),
            Err(ReplyError::WrongType { .. })
        ));
    }

    #[test]
    fn write_replies() {
        assert_eq!(
            put(&[Value::Int(1), s(""), s("v1")]),
            Ok(WriteReply::Stored {
                journal_id: None,
                object: None,
                version: Some("v1".into())
            })
        );
        assert_eq!(
            put(&[Value::Int(1), s("5-0"), s("")]),
            Ok(WriteReply::Stored {
                journal_id: Some("5-0".into()),
                object: None,
                version: None
            })
        );
        assert_eq!(
            patch(&[Value::Int(1), s("6-0"), s(r#"{"a":1}"#), s("v2")]),
            Ok(WriteReply::Stored {
                journal_id: Some("6-0".into()),
                object: Some(r#"{"a":1}"#.into()),
                version: Some("v2".into())
            })
        );
        for decode in [put, patch] {
            assert_eq!(decode(&[Value::Int(0)]), Ok(WriteReply::NotApplied));
            assert_eq!(
                decode(&[Value::Int(-1), Value::Int(40)]),
                Ok(WriteReply::JournalFull { backlog: 40 })
            );
            assert_eq!(
                decode(&[Value::Int(-1), Value::Int(-3)]),
                Ok(WriteReply::JournalFull { backlog: 0 })
            );
            assert_eq!(
                decode(&[Value::Int(-2)]),
                Ok(WriteReply::PreconditionFailed)
            );
            assert_eq!(decode(&[]), Err(ReplyError::Missing(0)));
            assert_eq!(decode(&[Value::Int(-1)]), Err(ReplyError::Missing(1)));
            assert_eq!(decode(&[Value::Int(1), s("")]), Err(ReplyError::Missing(2)));
            assert!(matches!(
                decode(&[Value::Int(9)]),
                Err(ReplyError::Unexpected { .. })
            ));
            assert!(matches!(
                decode(&[Value::Nil]),
                Err(ReplyError::WrongType { .. })
            ));
        }
        assert_eq!(
            patch(&[Value::Int(1), s(""), s("{}")]),
            Err(ReplyError::Missing(3))
        );
    }

    fn entry_value(fields: &[&str]) -> Value {
        arr(vec![
            s("9-1"),
            Value::Int(2),
            arr(fields.iter().map(|f| s(f)).collect()),
        ])
    }

    #[test]
    fn journal_replies() {
        let (backlog, dead, entries) =
            fetch(vec![Value::Int(3), Value::Int(1), entry_value(&[])]).unwrap();
        assert_eq!((backlog, dead, entries.len()), (3, 1, 1));
        assert_eq!(fetch(vec![Value::Int(0), Value::Int(0)]).unwrap().2, vec![]);
        assert_eq!(fetch(vec![Value::Int(0)]), Err(ReplyError::Missing(1)));
        assert!(fetch(vec![s("x"), Value::Int(0)]).is_err());

        let e = entry(entry_value(&["id", "a", "ct", "text/plain", "b", "body"])).unwrap();
        assert_eq!(
            e,
            Entry {
                eid: "9-1".into(),
                oid: "9-1".into(),
                attempt: 2,
                id: "a".into(),
                key: "a".into(),
                content_type: "text/plain".into(),
                body: Bytes::from_static(b"body"),
            }
        );
        let e = entry(entry_value(&["id", "a", "oid", "1-0", "k", "b2", "x", "y"])).unwrap();
        assert_eq!((e.oid.as_str(), e.key.as_str()), ("1-0", "b2"));
        let mut first = entry_value(&[]);
        if let Value::Array(p) = &mut first {
            p[1] = Value::Int(0);
        }
        assert_eq!(
            entry(first).unwrap().attempt,
            1,
            "the first delivery counts as one"
        );

        assert!(entry(s("9-1")).is_err());
        assert_eq!(entry(arr(vec![s("9-1")])), Err(ReplyError::Missing(1)));
        assert!(entry(arr(vec![s("9-1"), Value::Int(1), s("id")])).is_err());
        assert_eq!(
            entry(entry_value(&["id", "a", "ct"])),
            Err(ReplyError::Missing(3))
        );
        assert!(
            entry(arr(vec![
                s("9-1"),
                Value::Int(1),
                arr(vec![s("b"), Value::Nil])
            ]))
            .is_err()
        );
    }

    fn letter(attempts: &str) -> Value {
        arr([
            "3-0",
            "a",
            attempts,
            "boom",
            "1700",
            "12",
            "text/plain",
            "1-0",
        ]
        .iter()
        .map(|f| s(f))
        .collect())
    }

    #[test]
    fn dead_letter_replies() {
        let (total, letters) = dead_list(&[Value::Int(7), letter("5"), letter("1")]).unwrap();
        assert_eq!(total, 7);
        assert_eq!(
            letters[0],
            DeadLetter {
                entry: "3-0".into(),
                id: "a".into(),
                attempts: 5,
                error: "boom".into(),
                failed_at_ms: 1700,
                payload_bytes: 12,
                content_type: "text/plain".into(),
                journal_id: "1-0".into(),
            }
        );
        assert_eq!(letters.len(), 2);
        assert_eq!(dead_list(&[Value::Int(0)]), Ok((0, vec![])));

        assert_eq!(dead_list(&[]), Err(ReplyError::Missing(0)));
        assert!(dead_list(&[Value::Int(-1)]).is_err());
        assert!(dead_list(&[Value::Int(1), s("3-0")]).is_err());
        assert!(dead_list(&[Value::Int(1), letter("many")]).is_err());
        assert_eq!(
            dead_list(&[Value::Int(1), arr(vec![s("3-0"), s("a")])]),
            Err(ReplyError::Missing(2))
        );
    }
}
