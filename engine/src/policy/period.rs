//! Periods of per-period keys (leaderboards, counters): `none`, `day`, `week`, `month` (UTC
//! calendar periods, ISO weeks) or a fixed duration counted from the Unix epoch.
//!
//! STUB written against the lead's interface (notes/period-interface.md); main's module
//! replaces this file on merge.

use std::path::Path;

use marked_yaml::Spanned;
use schemars::JsonSchema;

use super::duration;
use super::validate::{Validator, loc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    None,
    Day,
    Week,
    Month,
    Every(u64),
}

/// Schema-only: `none`, `day`, `week`, `month` or a duration.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct PeriodText(String);

const DAY_MS: i64 = 86_400_000;

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Period {
    pub fn index_at(self, unix_ms: i64) -> i64 {
        let days = unix_ms.div_euclid(DAY_MS);
        match self {
            Period::None => 0,
            Period::Day => days,
            Period::Week => (days + 3).div_euclid(7),
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + m - 1
            }
            Period::Every(ms) => unix_ms.div_euclid(i64::try_from(ms.max(1)).unwrap_or(1)),
        }
    }

    pub fn start_ms(self, index: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => index * DAY_MS,
            Period::Week => (index * 7 - 3) * DAY_MS,
            Period::Month => days_from_civil(index.div_euclid(12), index.rem_euclid(12) + 1, 1) * DAY_MS,
            Period::Every(ms) => index * i64::try_from(ms).unwrap_or(i64::MAX),
        }
    }

    pub fn end_ms(self, index: i64) -> i64 {
        match self {
            Period::None => i64::MAX,
            _ => self.start_ms(index + 1),
        }
    }

    pub fn label(self, index: i64) -> String {
        match self {
            Period::None => "all".into(),
            Period::Day => {
                let (y, m, d) = civil_from_days(index);
                format!("{y:04}-{m:02}-{d:02}")
            }
            Period::Week => {
                let thursday = index * 7;
                let (y, _, _) = civil_from_days(thursday);
                let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
                format!("{y:04}-W{week:02}")
            }
            Period::Month => format!("{:04}-{:02}", index.div_euclid(12), index.rem_euclid(12) + 1),
            Period::Every(_) => {
                let ms = self.start_ms(index);
                let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
                let t = ms.rem_euclid(DAY_MS);
                let (h, mi, s, frac) = (t / 3_600_000, t / 60_000 % 60, t / 1000 % 60, t % 1000);
                if frac == 0 {
                    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
                } else {
                    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
                }
            }
        }
    }

    pub fn parse_label(self, text: &str) -> Option<i64> {
        let num = |s: &str| -> Option<i64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let idx = match self {
            Period::None => (text == "all").then_some(0)?,
            Period::Day => {
                let mut p = text.splitn(3, '-');
                let (y, m, d) = (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
                if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                    return None;
                }
                days_from_civil(y, m, d)
            }
            Period::Week => {
                let (y, w) = text.split_once("-W")?;
                let (y, w) = (num(y)?, num(w)?);
                let jan4 = days_from_civil(y, 1, 4);
                let week1 = (jan4 + 3).div_euclid(7);
                week1 + w - 1
            }
            Period::Month => {
                let (y, m) = text.split_once('-')?;
                let (y, m) = (num(y)?, num(m)?);
                if !(1..=12).contains(&m) {
                    return None;
                }
                y * 12 + m - 1
            }
            Period::Every(_) => {
                let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
                let mut p = date.splitn(3, '-');
                let day = days_from_civil(num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
                let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
                let mut p = hms.splitn(3, ':');
                let (h, mi, s) = (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
                let ms = day * DAY_MS + h * 3_600_000 + mi * 60_000 + s * 1000 + num(frac)?;
                self.index_at(ms)
            }
        };
        (self.label(idx) == text).then_some(idx)
    }

    pub fn lua_args(self) -> (u8, u64) {
        match self {
            Period::None => (0, 0),
            Period::Day => (1, 0),
            Period::Week => (2, 0),
            Period::Month => (3, 0),
            Period::Every(ms) => (4, ms),
        }
    }
}

impl Validator {
    pub(super) fn period(
        &mut self,
        path: &Path,
        field: &str,
        raw: &Spanned<String>,
    ) -> Option<Period> {
        match raw.as_str() {
            "none" => Some(Period::None),
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            other => match duration::parse(other) {
                Ok(d) if d.as_millis() >= 1000 && d.as_millis() % 1000 == 0 => {
                    Some(Period::Every(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
                }
                _ => {
                    self.err(
                        &loc(path, raw.span()),
                        format!("`{field}`: `{other}` is not `none`, `day`, `week`, `month` or a duration of whole seconds (at least 1s)"),
                    );
                    None
                }
            },
        }
    }
}
