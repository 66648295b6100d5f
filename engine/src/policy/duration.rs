//! Policy durations: `250ms`, `30s`, `1m`, `1h`, `1d`, or combinations such as `1h30m`.

use std::time::Duration;

/// Parses a policy duration. Bare numbers are refused on purpose: `window: 60` is ambiguous
/// (seconds? milliseconds?) and a wrong guess silently changes a limit by a factor of 1000.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. `250ms`, `30s`, `1m`, `1h` or `1d`".into());
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "duration `{t}` has no unit; write e.g. `{t}s` or `{t}ms`"
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{t}` ({e}); write e.g. `250ms`, `30s`, `1m`, `1h` or `1d`")
    })
}

/// Formats a duration the way a policy would write it (`90s` → `1m 30s`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
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
    }

    #[test]
    fn refuses_bare_numbers_and_garbage() {
        assert!(parse("60").unwrap_err().contains("no unit"));
        assert!(parse("").is_err());
        assert!(parse("fast").is_err());
        assert!(parse("-1s").is_err());
    }
}
