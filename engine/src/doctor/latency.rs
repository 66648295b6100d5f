//! Latency spikes Redis itself saw (`LATENCY LATEST`), explained by `LATENCY DOCTOR`. The
//! monitor records only events slower than `latency-monitor-threshold` (0: off, the default).

use super::info::Server;
use super::report::Check;

const ID: &str = "latency";
const TITLE: &str = "Latency spikes (LATENCY DOCTOR)";
/// How much of LATENCY DOCTOR's prose goes into the evidence.
const DOCTOR_CHARS: usize = 600;

pub fn check(s: &Server) -> Check {
    let threshold = s
        .config("latency-monitor-threshold")
        .and_then(|v| v.parse::<u64>().ok());
    if s.latency.is_empty() {
        return match threshold {
            Some(0) => Check::ok(
                ID,
                TITLE,
                "the latency monitor is off (latency-monitor-threshold 0), so Redis recorded no \
                 spikes; CONFIG SET latency-monitor-threshold 100 makes it record events over 100 ms",
            ),
            Some(t) => Check::ok(ID, TITLE, format!("no event over {t} ms recorded")),
            None => Check::ok(ID, TITLE, "no latency event recorded"),
        };
    }
    let events: Vec<String> = s
        .latency
        .iter()
        .map(|e| format!("{} latest {} ms, max {} ms", e.event, e.latest_ms, e.max_ms))
        .collect();
    let prose: String = s
        .latency_doctor
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let prose: String = prose.chars().take(DOCTOR_CHARS).collect();
    Check::warn(
        ID,
        TITLE,
        format!("{}. LATENCY DOCTOR: {prose}", events.join("; ")),
        "follow LATENCY DOCTOR's advice (fork time: smaller instances or no RDB on the \
         primary; command: the slow log; expire-cycle: fewer keys expiring at once), then \
         LATENCY RESET",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use crate::store::admin::LatencyEvent;

    #[test]
    fn events_warn_and_quiet_is_ok() {
        let mut s = Server::default();
        s.config
            .insert("latency-monitor-threshold".into(), "0".into());
        let c = check(&s);
        assert_eq!(c.status, Status::Ok);
        assert!(c.evidence.contains("off"));
        s.latency = vec![LatencyEvent {
            event: "command".into(),
            latest_ms: 250,
            max_ms: 900,
        }];
        s.latency_doctor = "Dave, I have observed latency spikes\n  in this Redis instance.".into();
        let c = check(&s);
        assert_eq!(c.status, Status::Warn);
        assert!(c.evidence.contains("command latest 250 ms, max 900 ms"));
        assert!(
            c.evidence
                .contains("I have observed latency spikes in this")
        );
    }
}
