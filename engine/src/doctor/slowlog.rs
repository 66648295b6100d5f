//! The slow log, read for patternd's own scripts: an `EVALSHA` entry whose SHA is one of the
//! snapshot's scripts is named (script and rules), so "something is slow" becomes "this rule's
//! script is slow". And `busy-reply-threshold` (`lua-time-limit` before 7.0) against the
//! longest of them: past it, Redis answers BUSY to every client until the script ends.

use std::collections::{BTreeMap, HashMap};

use super::info::Server;
use super::report::Check;

/// A script of the snapshot: its name and the rules that call it.
#[derive(Debug, Clone, Default)]
pub struct ScriptUse {
    pub name: String,
    pub rules: Vec<String>,
}

/// Slow log entries of patternd's scripts: script name → (count, longest µs, rules).
fn ours<'a>(
    s: &Server,
    scripts: &'a HashMap<String, ScriptUse>,
) -> BTreeMap<&'a str, (u64, u64, &'a [String])> {
    let mut by: BTreeMap<&str, (u64, u64, &[String])> = BTreeMap::new();
    for e in &s.slowlog {
        let cmd = e.args.first().map(|c| c.to_ascii_uppercase());
        if !matches!(cmd.as_deref(), Some("EVALSHA" | "EVALSHA_RO")) {
            continue;
        }
        let Some(u) = e
            .args
            .get(1)
            .and_then(|sha| scripts.get(&sha.to_ascii_lowercase()))
        else {
            continue;
        };
        let slot = by.entry(&u.name).or_insert((0, 0, &u.rules));
        slot.0 += 1;
        slot.1 = slot.1.max(e.micros);
    }
    by
}

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

pub fn checks(s: &Server, scripts: &HashMap<String, ScriptUse>) -> Vec<Check> {
    let ours = ours(s, scripts);
    let threshold = s
        .config("slowlog-log-slower-than")
        .map_or_else(|| "unknown".to_owned(), |t| format!("{t} µs"));
    let total = s.slowlog.len();
    let mine: u64 = ours.values().map(|v| v.0).sum();
    let mut out = Vec::new();
    let named: Vec<String> = ours
        .iter()
        .map(|(name, (n, max, rules))| {
            format!(
                "{name} ×{n}, longest {} (rules {})",
                ms(*max),
                rules.join(", ")
            )
        })
        .collect();
    let base = format!(
        "{total} entries in the slow log (slowlog-log-slower-than {threshold}), {mine} of them patternd's scripts"
    );
    out.push(if named.is_empty() {
        Check::ok("slowlog", "Slow log entries from patternd's scripts", base)
    } else {
        Check::warn(
            "slowlog",
            "Slow log entries from patternd's scripts",
            format!("{base}: {}", named.join("; ")),
            "a script's work is bounded by its rule's settings (a sliding_log's limit, a \
             queue's max_pop, a stream's max_count, a session's user_cap): lower them for the \
             rules named, or look for a host problem (latency below); SLOWLOG RESET after a fix",
        )
    });

    let (name, limit) = match (s.config("busy-reply-threshold"), s.config("lua-time-limit")) {
        (Some(v), _) => ("busy-reply-threshold", v.parse::<u64>().ok()),
        (None, Some(v)) => ("lua-time-limit", v.parse::<u64>().ok()),
        (None, None) => ("busy-reply-threshold", None),
    };
    let longest = ours
        .iter()
        .max_by_key(|(_, v)| v.1)
        .map(|(name, v)| (*name, v.1));
    let title = "Longest script against busy-reply-threshold";
    let seen = longest.map_or_else(
        || "no patternd script in the slow log".to_owned(),
        |(n, us)| format!("longest patternd script in the slow log: {n}, {}", ms(us)),
    );
    out.push(match limit {
        None => Check::ok("busy-script", title, format!("{seen}; {name} unknown (CONFIG GET refused)")),
        Some(0) => Check::warn(
            "busy-script",
            title,
            format!("{seen}; {name} 0: a runaway script is never answered BUSY, so it cannot be stopped with SCRIPT KILL"),
            format!("CONFIG SET {name} 5000"),
        ),
        Some(limit_ms) => {
            let evidence = format!("{seen}; {name} {limit_ms} ms");
            match longest {
                Some((_, us)) if us >= limit_ms * 1000 => Check::fail(
                    "busy-script",
                    title,
                    format!("{evidence}: while it ran, Redis answered BUSY to every other client"),
                    "lower the bounds of the rule's script (see the slow log check); do not raise the threshold",
                ),
                Some((_, us)) if us * 2 >= limit_ms * 1000 => Check::warn(
                    "busy-script",
                    title,
                    format!("{evidence}: within a factor of 2 of Redis answering BUSY to everyone"),
                    "lower the bounds of the rule's script (see the slow log check)",
                ),
                _ => Check::ok("busy-script", title, evidence),
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use crate::store::admin::SlowEntry;

    fn entry(args: &[&str], micros: u64) -> SlowEntry {
        SlowEntry {
            id: 0,
            at: 0,
            micros,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn scripts_are_named_and_measured_against_the_threshold() {
        let scripts = HashMap::from([(
            "abc".to_owned(),
            ScriptUse {
                name: "lock.acquire".into(),
                rules: vec!["a/l".into()],
            },
        )]);
        let mut s = Server::default();
        s.config.insert("busy-reply-threshold".into(), "100".into());
        s.slowlog = vec![
            entry(&["EVALSHA", "ABC", "1"], 20_000),
            entry(&["evalsha", "abc", "1"], 60_000),
            entry(&["EVALSHA", "other", "0"], 900_000),
            entry(&["KEYS", "*"], 900_000),
        ];
        let c = checks(&s, &scripts);
        assert_eq!(c[0].status, Status::Warn);
        assert!(
            c[0].evidence
                .contains("lock.acquire ×2, longest 60.0 ms (rules a/l)"),
            "{}",
            c[0].evidence
        );
        assert!(c[0].evidence.contains("4 entries"));
        // 60 ms against 100 ms: within a factor of 2.
        assert_eq!(c[1].status, Status::Warn);
        s.config.insert("busy-reply-threshold".into(), "50".into());
        assert_eq!(checks(&s, &scripts)[1].status, Status::Fail);
        s.config
            .insert("busy-reply-threshold".into(), "5000".into());
        assert_eq!(checks(&s, &scripts)[1].status, Status::Ok);
        // Before 7.0 the setting is lua-time-limit.
        s.config.clear();
        s.config.insert("lua-time-limit".into(), "0".into());
        let c = checks(&s, &scripts);
        assert_eq!(c[1].status, Status::Warn);
        assert!(c[1].evidence.contains("lua-time-limit 0"));
        s.slowlog.clear();
        assert_eq!(checks(&s, &scripts)[0].status, Status::Ok);
    }
}
