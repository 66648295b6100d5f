//! `period:`: the calendar of rules that keep one structure per period (leaderboards, counters).
//!
//! A period is `none` (one structure for ever), `day`, `week` (ISO 8601: Monday to Sunday),
//! `month` (all UTC), or a duration (`10s`, `1h`, the policy duration grammar): fixed-length
//! periods counted from the Unix epoch, for hourly boards and for tests that need a rollover
//! in seconds. Periods are numbered by an integer *index*; keys carry the index (stable,
//! sortable, no calendar text in Redis), and users see and name periods by their *label*.
//!
//! The one clock: the engine only *guesses* the current index from its own clock, to name the
//! keys; every script that writes or reads "the current period" recomputes the index from
//! Redis `TIME` with `compile/lua/shared/period.lua` (the same arithmetic as
//! [`Period::index_at`], checked against it in this file's tests) and refuses a guess that
//! differs, answering the right index, so the engine calls again with the right keys. Every
//! engine replica therefore agrees on where a period ends, whatever its clock says.

use std::path::Path;

use marked_yaml::Spanned;
use schemars::JsonSchema;

use super::duration;
use super::validate::{Validator, loc};

const DAY_MS: i64 = 86_400_000;

/// A validated `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One structure, never rolled over.
    None,
    /// UTC days.
    Day,
    /// ISO 8601 weeks (Monday 00:00 UTC to the next Monday).
    Week,
    /// UTC calendar months.
    Month,
    /// Fixed-length periods of this many milliseconds (at least 1 s, a whole number of
    /// seconds), counted from 1970-01-01T00:00:00Z.
    Every(u64),
}

/// Schema-only: `none`, `day`, `week`, `month` or a duration (its schema is set in
/// `schema.rs`).
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct PeriodText(String);

/// The shortest fixed period: shorter ones would roll over faster than a request's round trip.
pub const MIN_EVERY_MS: u64 = 1_000;

impl Period {
    /// Parses a policy's `period` text.
    pub fn parse(text: &str) -> Result<Period, String> {
        match text {
            "none" => Ok(Period::None),
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ if text.starts_with(|c: char| c.is_ascii_digit()) => {
                let d = duration::parse(text)?;
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                if ms < MIN_EVERY_MS || ms % 1_000 != 0 {
                    return Err(format!(
                        "a fixed period must be a whole number of seconds, at least 1s, not `{text}`"
                    ));
                }
                // 366 days, like every other policy duration: calendar periods are spelled
                // `day`/`week`/`month`.
                if ms > 366 * DAY_MS as u64 {
                    return Err(format!("a fixed period must be at most 366d, not `{text}`"));
                }
                Ok(Period::Every(ms))
            }
            _ => Err(format!(
                "unknown period `{text}`; write `none`, `day`, `week`, `month` or a duration such as `1h`"
            )),
        }
    }

    /// The index of the period that contains `unix_ms`.
    pub fn index_at(self, unix_ms: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => unix_ms.div_euclid(DAY_MS),
            // Day 0 (1970-01-01) was a Thursday; ISO weeks start on Monday, 3 days before.
            Period::Week => (unix_ms.div_euclid(DAY_MS) + 3).div_euclid(7),
            Period::Month => {
                let (y, m, _) = civil_from_days(unix_ms.div_euclid(DAY_MS));
                y * 12 + (m - 1)
            }
            Period::Every(len) => unix_ms.div_euclid(len as i64),
        }
    }

    /// The engine's guess of the current period, from its own clock: only to name the keys
    /// of a call, whose script checks it against Redis `TIME` (see the module doc).
    pub fn guess_now(self) -> i64 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        self.index_at(now_ms)
    }

    /// When period `index` starts (ms since the epoch, inclusive). `None`: 0.
    pub fn start_ms(self, index: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => index * DAY_MS,
            Period::Week => (index * 7 - 3) * DAY_MS,
            Period::Month => {
                days_from_civil(index.div_euclid(12), index.rem_euclid(12) + 1, 1) * DAY_MS
            }
            Period::Every(len) => index * len as i64,
        }
    }

    /// When period `index` ends (exclusive): the next one's start. `None`: never (`i64::MAX`).
    pub fn end_ms(self, index: i64) -> i64 {
        match self {
            Period::None => i64::MAX,
            _ => self.start_ms(index + 1),
        }
    }

    /// How users name period `index`: `all`, `2026-11-28`, `2026-W48`, `2026-11`, or for a
    /// fixed period its start (`2026-11-28T17:30:10Z`, with `.250` only when the ms are not 0).
    pub fn label(self, index: i64) -> String {
        match self {
            Period::None => "all".to_owned(),
            Period::Day => {
                let (y, m, d) = civil_from_days(index);
                format!("{y:04}-{m:02}-{d:02}")
            }
            Period::Week => {
                // The ISO year is the year of the week's Thursday.
                let thursday = index * 7;
                let (y, _, _) = civil_from_days(thursday);
                let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
                format!("{y:04}-W{week:02}")
            }
            Period::Month => format!(
                "{:04}-{:02}",
                index.div_euclid(12),
                index.rem_euclid(12) + 1
            ),
            Period::Every(len) => rfc3339(index * len as i64),
        }
    }

    /// The index a label names (the inverse of [`Period::label`]); `None` for anything
    /// [`Period::label`] would not write.
    pub fn parse_label(self, text: &str) -> Option<i64> {
        let index = match self {
            Period::None => 0,
            Period::Day => {
                let (y, m, d) = parse_date(text)?;
                days_from_civil(y, m, d)
            }
            Period::Week => {
                let (y, w) = text.split_once("-W")?;
                let y = parse_digits(y, 4)?;
                let w = parse_digits(w, 2)?;
                // Week 1 holds the year's first Thursday, which is in Jan 1..=7.
                let jan1 = days_from_civil(y, 1, 1);
                let first_thursday = jan1 + (3 - (jan1 + 3).rem_euclid(7)).rem_euclid(7);
                (first_thursday + (w - 1) * 7).div_euclid(7)
            }
            Period::Month => {
                let (y, m) = text.split_once('-')?;
                parse_digits(y, 4)? * 12 + parse_digits(m, 2)? - 1
            }
            Period::Every(len) => {
                let ms = parse_rfc3339(text)?;
                ms.div_euclid(len as i64)
            }
        };
        // Strict: exactly the text `label` writes (no `2026-02-30`, no `2026-W60`).
        (self.label(index) == text).then_some(index)
    }

    /// The kind code and the length in ms that `period.lua`'s `period_index` takes (ARGV).
    pub fn lua_args(self) -> (u8, u64) {
        match self {
            Period::None => (0, 0),
            Period::Day => (1, 0),
            Period::Week => (2, 0),
            Period::Month => (3, 0),
            Period::Every(len) => (4, len),
        }
    }

    /// An upper bound on a period's length, for TTLs (`keep` periods after one closes).
    pub fn max_len_ms(self) -> Option<u64> {
        match self {
            Period::None => None,
            Period::Day => Some(DAY_MS as u64),
            Period::Week => Some(7 * DAY_MS as u64),
            Period::Month => Some(31 * DAY_MS as u64),
            Period::Every(len) => Some(len),
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::None => f.write_str("none"),
            Period::Day => f.write_str("day"),
            Period::Week => f.write_str("week"),
            Period::Month => f.write_str("month"),
            Period::Every(ms) => write!(f, "{}s", ms / 1_000),
        }
    }
}

impl Validator {
    /// A rule's `period` field, with a diagnostic at the value when it is not one.
    #[allow(dead_code)]
    pub(super) fn period(
        &mut self,
        path: &Path,
        field: &str,
        raw: &Spanned<String>,
    ) -> Option<Period> {
        match Period::parse(raw.as_str()) {
            Ok(p) => Some(p),
            Err(m) => {
                self.err(&loc(path, raw.span()), format!("`{field}`: {m}"));
                None
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]); `period.lua` has the same
/// arithmetic.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn rfc3339(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    let (h, mi, s, frac) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000,
    );
    if frac == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
    }
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let (y, mo, d) = parse_date(date)?;
    let (hms, frac) = match time.split_once('.') {
        Some((hms, f)) => (hms, parse_digits(f, 3)?),
        None => (time, 0),
    };
    let mut parts = hms.split(':');
    let h = parse_digits(parts.next()?, 2)?;
    let mi = parse_digits(parts.next()?, 2)?;
    let s = parse_digits(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    Some(days_from_civil(y, mo, d) * DAY_MS + ((h * 60 + mi) * 60 + s) * 1_000 + frac)
}

fn parse_date(text: &str) -> Option<(i64, i64, i64)> {
    let mut parts = text.split('-');
    let y = parse_digits(parts.next()?, 4)?;
    let m = parse_digits(parts.next()?, 2)?;
    let d = parse_digits(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some((y, m, d))
}

/// Exactly `len` ASCII digits.
fn parse_digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28T17:30:10.250Z
    const NOW: i64 = 1_795_887_010_250;

    #[test]
    fn labels_of_known_instants() {
        assert_eq!(Period::Day.label(Period::Day.index_at(NOW)), "2026-11-28");
        assert_eq!(Period::Month.label(Period::Month.index_at(NOW)), "2026-11");
        assert_eq!(Period::Week.label(Period::Week.index_at(NOW)), "2026-W48");
        assert_eq!(Period::None.label(Period::None.index_at(NOW)), "all");
        let every = Period::Every(10_000);
        assert_eq!(every.label(every.index_at(NOW)), "2026-11-28T17:30:10Z");
        assert_eq!(Period::Every(1_000).label(0), "1970-01-01T00:00:00Z");
        // ISO weeks at year edges: 2021-01-03 (Sunday) is in 2020-W53; 2024-12-30 (Monday)
        // is in 2025-W01; 1970-01-01 (Thursday) is in 1970-W01.
        let day = |y, m, d| days_from_civil(y, m, d) * DAY_MS;
        assert_eq!(
            Period::Week.label(Period::Week.index_at(day(2021, 1, 3))),
            "2020-W53"
        );
        assert_eq!(
            Period::Week.label(Period::Week.index_at(day(2024, 12, 30))),
            "2025-W01"
        );
        assert_eq!(Period::Week.label(Period::Week.index_at(0)), "1970-W01");
        assert_eq!(
            Period::Week.label(Period::Week.index_at(day(1969, 12, 29))),
            "1970-W01"
        );
        assert_eq!(
            Period::Week.label(Period::Week.index_at(day(1969, 12, 28))),
            "1969-W52"
        );
    }

    #[test]
    fn starts_ends_and_labels_round_trip() {
        for p in [
            Period::Day,
            Period::Week,
            Period::Month,
            Period::Every(1_000),
            Period::Every(7_000),
            Period::Every(3_600_000),
        ] {
            let base = p.index_at(NOW);
            for index in (base - 3_000)..(base + 3_000) {
                let (start, end) = (p.start_ms(index), p.end_ms(index));
                assert!(start < end, "{p} {index}");
                assert_eq!(p.index_at(start), index, "{p} start of {index}");
                assert_eq!(p.index_at(end - 1), index, "{p} last ms of {index}");
                assert_eq!(p.index_at(end), index + 1, "{p} end of {index}");
                let label = p.label(index);
                assert_eq!(p.parse_label(&label), Some(index), "{p} {label}");
            }
        }
        assert_eq!(
            Period::Month.start_ms(Period::Month.index_at(NOW)),
            1_793_491_200_000
        );
    }

    #[test]
    fn strict_labels() {
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-1-01",
            "26-01-01",
            "2026-01-01x",
            "",
        ] {
            assert_eq!(Period::Day.parse_label(bad), None, "{bad}");
        }
        for bad in ["2026-W54", "2026-W00", "2026-W1", "2026W01", "2025-W53"] {
            assert_eq!(Period::Week.parse_label(bad), None, "{bad}");
        }
        assert!(Period::Week.parse_label("2020-W53").is_some());
        for bad in ["2026-13", "2026-00", "2026", "2026-1"] {
            assert_eq!(Period::Month.parse_label(bad), None, "{bad}");
        }
        // A fixed period names its start, not an instant inside it.
        let every = Period::Every(10_000);
        assert_eq!(every.parse_label("2026-11-28T17:30:15Z"), None);
        assert!(every.parse_label("2026-11-28T17:30:10Z").is_some());
        assert_eq!(Period::None.parse_label("all"), Some(0));
        assert_eq!(Period::None.parse_label("current"), None);
    }

    #[test]
    fn parses_policy_text() {
        assert_eq!(Period::parse("week"), Ok(Period::Week));
        assert_eq!(Period::parse("1h"), Ok(Period::Every(3_600_000)));
        assert_eq!(Period::parse("2s"), Ok(Period::Every(2_000)));
        for bad in ["weekly", "500ms", "1500ms", "400d", "", "Day"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    /// `period.lua` computes the same index as `index_at`, for the µs-precision ms a script
    /// reads from `TIME`, around every boundary the Rust side knows.
    #[test]
    fn lua_agrees_with_rust() {
        let lua = mlua::Lua::new();
        let src = format!(
            "{}\nreturn period_index",
            include_str!("../compile/lua/shared/period.lua")
        );
        let f: mlua::Function = lua.load(src).eval().expect("period.lua");
        let mut checked = 0;
        for p in [
            Period::None,
            Period::Day,
            Period::Week,
            Period::Month,
            Period::Every(1_000),
            Period::Every(7_000),
            Period::Every(86_400_000),
        ] {
            let (kind, len) = p.lua_args();
            let base = p.index_at(NOW);
            for index in (base - 400)..(base + 400) {
                let start = if p == Period::None {
                    NOW
                } else {
                    p.start_ms(index)
                };
                for t in [start - 1, start, start + 1] {
                    for us in [0.0, 0.001, 0.999] {
                        let t_ms = t as f64 + us;
                        let got: i64 = f.call((kind, len, t_ms)).expect("call");
                        assert_eq!(got, p.index_at(t), "{p} at {t_ms}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000);
    }
}
