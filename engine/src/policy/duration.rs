//! Policy durations: one or more `<digits><unit>` terms, units `ms`, `s`, `m`, `h`, `d`,
//! added up: `250ms`, `30s`, `1m`, `1h30m`, `1d12h`.
//!
//! The grammar is [`GRAMMAR`], and the JSON Schema carries the same regular expression, so an
//! editor and `patternd check` agree on every text (`tests/tests/standards.rs` holds them to
//! it). It is deliberately small: no spaces, no fractions, no signs, no other unit words
//! (`1M` would be a month to some readers and a minute to others), terms in any order.

use std::time::Duration;

/// The grammar of a duration as a regular expression (also the JSON Schema's `pattern`, with
/// the loader's "at least 1ms" folded in there; see `policy::schema`).
pub const GRAMMAR: &str = r"^([0-9]+(ms|s|m|h|d))+$";

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

const HINT: &str = "write e.g. `250ms`, `30s`, `1m`, `1h30m` or `1d` (units: ms, s, m, h, d)";

/// Parses a policy duration. Bare numbers are refused on purpose: `window: 60` is ambiguous
/// (seconds? milliseconds?) and a wrong guess silently changes a limit by a factor of 1000.
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "duration `{text}` has no unit; write e.g. `{text}s` or `{text}ms`"
        ));
    }
    let invalid = || format!("invalid duration `{text}`; {HINT}");
    let mut total: u64 = 0;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.iter().take_while(|b| b.is_ascii_lowercase()).count();
        let (unit, after) = after.split_at(unit_len);
        let Some((_, ms)) = UNITS.iter().find(|(u, _)| u.as_bytes() == unit) else {
            return Err(invalid());
        };
        // Digits only, so the text is ASCII; a number that does not fit is "too large".
        let n: u64 = std::str::from_utf8(number)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
        total = n
            .checked_mul(*ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{text}` is too large"))?;
        rest = after;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration in the policy grammar, largest units first (`90s` → `1m30s`); what
/// `format` prints, `parse` reads back. Below a millisecond is rounded down (policy durations
/// are whole milliseconds); zero is `0ms`.
pub fn format(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0ms".into();
    }
    let mut out = String::new();
    for (unit, len) in UNITS.iter().rev() {
        if ms >= *len {
            out.push_str(&format!("{}{unit}", ms / len));
            ms %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("30m1h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!(parse("60").unwrap_err().contains("no unit"));
        for bad in [
            "", "fast", "-1s", "+1s", "1.5s", "1 m", " 1m", "1m ", "1M", "1y", "1w", "1us", "1ns",
            "1min", "1sec", "1 minute", "m", "1h 30m", "1S", "１s",
        ] {
            assert!(parse(bad).is_err(), "`{bad}` was accepted");
        }
        assert!(
            parse("99999999999999999999d")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse("213503982335d").unwrap_err().contains("too large"));
    }

    #[test]
    fn format_reads_back() {
        for ms in [
            0u64, 1, 999, 1000, 1500, 60_000, 5_400_000, 86_400_000, 90_061_001,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(86_400 + 3600)), "1d1h");
    }
}
