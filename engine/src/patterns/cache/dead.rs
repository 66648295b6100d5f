//! Write-behind dead letters: listing them and replaying them into the journal, so the admin
//! handlers (`http/cache/dead.rs`) only parse, call and render (keys in `keys`, reply
//! decoding in `reply`).

use super::CacheRule;
use super::journal::stream_id;
use super::reply;
use super::write::WriteError;
use crate::store::Store;

/// One dead letter, without its payload (the `dead_list` script's fields, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub entry: String,
    pub id: String,
    pub attempts: u64,
    pub error: String,
    pub failed_at_ms: u64,
    pub payload_bytes: u64,
    pub content_type: String,
    pub journal_id: String,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: u64,
    pub not_found: u64,
    pub journal_full: bool,
}

/// A dead letter's name in the admin API: `<slot group>:<stream entry id>` (each group has
/// its own dead-letter stream, so an entry id alone is ambiguous).
pub fn entry_name(group: u32, entry: &str) -> String {
    format!("{group}:{entry}")
}

/// The group and stream entry id of a dead letter's name, if it is one (`3:1764256000000-0`).
pub fn parse_entry(name: &str) -> Option<(u32, &str)> {
    let (g, e) = name.split_once(':')?;
    let valid_id = e.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() <= 20
            && b.len() <= 20
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    let group = (g.len() <= 4 && g.bytes().all(|c| c.is_ascii_digit()))
        .then(|| g.parse::<u32>().ok())
        .flatten()?;
    valid_id.then_some((group, e))
}

impl CacheRule {
    /// Up to `count` dead letters after the one named `after` (none: from the oldest), with
    /// the total kept: every slot group's dead letters merged, oldest first (by entry id, then
    /// group). One call per group: an admin path.
    pub async fn dead_letters(
        &self,
        store: &Store,
        after: Option<(u32, &str)>,
        count: u64,
    ) -> Result<(u64, Vec<DeadLetter>), WriteError> {
        let count_s = count.to_string();
        let mut total = 0;
        let mut all: Vec<((u64, u64), u32, DeadLetter)> = Vec::new();
        for g in 0..self.keys.groups() {
            // Entries after (id, group) in (id, group) order.
            let start = match after {
                None => "-".to_string(),
                Some((ag, id)) if g > ag => id.to_string(),
                Some((_, id)) => format!("({id}"),
            };
            let raw: Vec<redis::Value> = store
                .eval(
                    &self.scripts.write.dead_list,
                    &self.keys.dead_list(g),
                    &[start.as_bytes(), count_s.as_bytes()],
                )
                .await
                .map_err(WriteError::Store)?;
            let (n, letters) =
                reply::dead_list(&raw).map_err(|e| WriteError::Reply(e.to_string()))?;
            total += n;
            all.extend(letters.into_iter().map(|mut l| {
                let at = stream_id(&l.entry);
                l.entry = entry_name(g, &l.entry);
                (at, g, l)
            }));
        }
        all.sort_by_key(|(at, g, _)| (*at, *g));
        let page = all
            .into_iter()
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .map(|(_, _, l)| l)
            .collect();
        Ok((total, page))
    }

    /// Moves the given dead letters (named as `dead_letters` names them; or, with no `ids`, the
    /// oldest `count` over all groups) back into their group's journal. `ids` must be
    /// distinct (a duplicate would be moved twice). One peek and one move per group involved.
    pub async fn replay(
        &self,
        store: &Store,
        ids: &[(u32, String)],
        count: u64,
    ) -> Result<Replayed, WriteError> {
        let max_len = self.group_journal_max_len().to_string();
        let count_s = count.to_string();
        // First which entries, and whose values they are (their keys come from `keys`, so the
        // move gets them as KEYS); the move re-reads every entry atomically.
        let mut peeked: Vec<(u32, String, String)> = Vec::new();
        let mut not_found = 0u64;
        for g in 0..self.keys.groups() {
            let wanted: Vec<&[u8]> = ids
                .iter()
                .filter(|(ig, _)| *ig == g)
                .map(|(_, e)| e.as_bytes())
                .collect();
            if !ids.is_empty() && wanted.is_empty() {
                continue;
            }
            let mut args: Vec<&[u8]> = vec![b"peek", max_len.as_bytes(), count_s.as_bytes()];
            args.extend(&wanted);
            let found: Vec<(String, String)> = store
                .eval(&self.scripts.write.replay, &self.keys.replay(g, []), &args)
                .await
                .map_err(WriteError::Store)?;
            not_found += (wanted.len() as u64).saturating_sub(found.len() as u64);
            peeked.extend(found.into_iter().map(|(eid, vid)| (g, eid, vid)));
        }
        // Given ids naming no group of the rule are not dead letters either.
        not_found += ids.iter().filter(|(g, _)| *g >= self.keys.groups()).count() as u64;
        if ids.is_empty() {
            // The oldest `count` over all groups.
            peeked.sort_by_key(|(g, eid, _)| (stream_id(eid), *g));
            peeked.truncate(usize::try_from(count).unwrap_or(usize::MAX));
        }
        let mut done = Replayed {
            replayed: 0,
            not_found,
            journal_full: false,
        };
        for g in 0..self.keys.groups() {
            // An entry whose value id is of another group was written under another
            // `slot_groups` (docs/cache.md: drain before changing it); it stays a dead letter.
            let mine: Vec<&(u32, String, String)> = peeked
                .iter()
                .filter(|(pg, _, vid)| *pg == g && self.keys.group_of(vid) == g)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let keys = self
                .keys
                .replay(g, mine.iter().map(|(_, _, vid)| vid.as_str()));
            let mut args: Vec<&[u8]> = vec![b"move", max_len.as_bytes(), count_s.as_bytes()];
            args.extend(mine.iter().map(|(_, eid, _)| eid.as_bytes()));
            let reply: Vec<i64> = store
                .eval(&self.scripts.write.replay, &keys, &args)
                .await
                .map_err(WriteError::Store)?;
            let at = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
            done.replayed += at(0);
            done.not_found += at(1);
            done.journal_full |= at(2) == 1;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip() {
        assert_eq!(entry_name(3, "17-0"), "3:17-0");
        assert_eq!(parse_entry("3:17-0"), Some((3, "17-0")));
        for bad in [
            "17-0",
            "x:17-0",
            "3:17",
            "3:-0",
            ":1-1",
            "99999:1-1",
            "3:1-1-1",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }
}
