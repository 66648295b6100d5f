//! STUB (branch `counter`): the interface of the lead's period module, so the counter
//! pattern builds before it lands; replaced by main's file on merge.

use std::path::Path;

use marked_yaml::Spanned;
use schemars::JsonSchema;

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

/// Days since 1970-01-01 → (year, month 1-12, day).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Period {
    pub fn index_at(self, unix_ms: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => unix_ms.div_euclid(DAY_MS),
            Period::Week => (unix_ms.div_euclid(DAY_MS) + 3).div_euclid(7),
            Period::Month => {
                let (y, m, _) = civil(unix_ms.div_euclid(DAY_MS));
                y * 12 + m - 1
            }
            Period::Every(ms) => unix_ms.div_euclid(ms as i64),
        }
    }

    pub fn start_ms(self, index: i64) -> i64 {
        match self {
            Period::None => 0,
            Period::Day => index * DAY_MS,
            Period::Week => (index * 7 - 3) * DAY_MS,
            Period::Month => days_from_civil(index.div_euclid(12), index.rem_euclid(12) + 1, 1) * DAY_MS,
            Period::Every(ms) => index * ms as i64,
        }
    }

    pub fn end_ms(self, index: i64) -> i64 {
        match self {
            Period::None => i64::MAX,
            p => p.start_ms(index + 1),
        }
    }

    pub fn label(self, index: i64) -> String {
        match self {
            Period::None => "all".into(),
            Period::Day => {
                let (y, m, d) = civil(index);
                format!("{y:04}-{m:02}-{d:02}")
            }
            Period::Week => {
                // The ISO year is the year of the week's Thursday.
                let thursday = index * 7;
                let (y, _, _) = civil(thursday);
                let first = (days_from_civil(y, 1, 4) + 3).div_euclid(7);
                format!("{y:04}-W{:02}", index - first + 1)
            }
            Period::Month => format!("{:04}-{:02}", index.div_euclid(12), index.rem_euclid(12) + 1),
            Period::Every(_) => {
                let ms = self.start_ms(index);
                let (y, mo, d) = civil(ms.div_euclid(DAY_MS));
                let r = ms.rem_euclid(DAY_MS);
                let (h, mi, s, f) = (r / 3_600_000, r / 60_000 % 60, r / 1000 % 60, r % 1000);
                if f == 0 {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
                } else {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:03}Z")
                }
            }
        }
    }

    pub fn parse_label(self, text: &str) -> Option<i64> {
        let num = |s: &str| -> Option<i64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let idx = match self {
            Period::None => (text == "all").then_some(0)?,
            Period::Day => {
                let (y, rest) = text.split_once('-')?;
                let (m, d) = rest.split_once('-')?;
                days_from_civil(num(y)?, num(m)?, num(d)?)
            }
            Period::Week => {
                let (y, w) = text.split_once("-W")?;
                let first = (days_from_civil(num(y)?, 1, 4) + 3).div_euclid(7);
                first + num(w)? - 1
            }
            Period::Month => {
                let (y, m) = text.split_once('-')?;
                num(y)? * 12 + num(m)? - 1
            }
            Period::Every(ms) => {
                let t = humantime::parse_rfc3339(text).ok()?;
                let unix = i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
                if unix % ms as i64 != 0 {
                    return None;
                }
                unix / ms as i64
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
    pub(super) fn period(&mut self, path: &Path, field: &str, raw: &Spanned<String>) -> Option<Period> {
        match raw.as_str() {
            "none" => Some(Period::None),
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => {
                let d = self.duration(path, field, raw)?;
                if d < std::time::Duration::from_secs(1) {
                    self.err(&loc(path, raw.span()), format!("`{field}` must be at least 1s"));
                    return None;
                }
                Some(Period::Every(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }
        }
    }
}
