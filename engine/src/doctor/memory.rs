//! Memory: a limit set, used memory against it, fragmentation (`INFO memory`).

use super::info::{Server, bytes};
use super::report::Check;

/// Used memory above this share of maxmemory is a warning: eviction or OOM errors are near.
const USED_WARN: f64 = 0.90;
/// Above this, writes are failing (noeviction) or keys are being evicted now.
const USED_FAIL: f64 = 0.98;
/// Fragmentation above this ratio wastes memory…
const FRAG_WARN: f64 = 1.5;
/// …when the waste is at least this much (a small instance's ratio means nothing: a few MB
/// of allocator overhead make it 3 or 10).
const FRAG_MIN_WASTE: u64 = 100 << 20;

pub fn checks(s: &Server) -> Vec<Check> {
    let used = s.info.u64("used_memory").unwrap_or(0);
    let max = s.maxmemory();
    let mut out = Vec::new();
    if max == 0 {
        out.push(Check::fail(
            "maxmemory",
            "maxmemory is set",
            format!(
                "maxmemory 0 (no limit), {} used: Redis grows until the machine runs out of \
                 memory and the kernel kills it, and the eviction policy never applies",
                bytes(used)
            ),
            "CONFIG SET maxmemory <bytes> (about 3/4 of the memory the machine can give Redis, \
             less with RDB or AOF rewrites, which fork), and the same in redis.conf",
        ));
    } else {
        out.push(Check::ok(
            "maxmemory",
            "maxmemory is set",
            format!("maxmemory {}", bytes(max)),
        ));
        let share = used as f64 / max as f64;
        let evidence = format!(
            "{} used of {} ({:.0}%), policy {}",
            bytes(used),
            bytes(max),
            share * 100.0,
            s.policy()
        );
        let fix = "raise maxmemory, shorten TTLs or move caches to a Redis of their own; the \
                   per-rule figures below show where the memory goes";
        out.push(if share >= USED_FAIL {
            Check::fail(
                "memory-used",
                "Used memory against maxmemory",
                evidence,
                fix,
            )
        } else if share >= USED_WARN {
            Check::warn(
                "memory-used",
                "Used memory against maxmemory",
                evidence,
                fix,
            )
        } else {
            Check::ok("memory-used", "Used memory against maxmemory", evidence)
        });
    }
    let ratio = s.info.f64("mem_fragmentation_ratio").unwrap_or(1.0);
    let rss = s.info.u64("used_memory_rss").unwrap_or(0);
    let waste = rss.saturating_sub(used);
    let evidence = format!(
        "mem_fragmentation_ratio {ratio:.2} (RSS {} for {} used)",
        bytes(rss),
        bytes(used)
    );
    out.push(if ratio > FRAG_WARN && waste >= FRAG_MIN_WASTE {
        Check::warn(
            "fragmentation",
            "Memory fragmentation",
            format!("{evidence}: {} held but unused", bytes(waste)),
            "CONFIG SET activedefrag yes (jemalloc builds), or restart the replica first and \
             fail over to it",
        )
    } else {
        Check::ok("fragmentation", "Memory fragmentation", evidence)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::info::Info;
    use crate::doctor::report::Status;

    fn server(info: &str) -> Server {
        Server {
            info: Info::parse(info),
            ..Server::default()
        }
    }

    fn status(checks: &[Check], id: &str) -> Status {
        checks.iter().find(|c| c.id == id).expect(id).status
    }

    #[test]
    fn limit_use_and_fragmentation() {
        let none = checks(&server(
            "used_memory:1000\nmaxmemory:0\nmem_fragmentation_ratio:4.0\nused_memory_rss:4000\n",
        ));
        assert_eq!(status(&none, "maxmemory"), Status::Fail);
        assert!(none.iter().all(|c| c.id != "memory-used"));
        // A high ratio on a small instance is allocator overhead, not waste.
        assert_eq!(status(&none, "fragmentation"), Status::Ok);

        let near = checks(&server(
            "used_memory:950\nmaxmemory:1000\nmaxmemory_policy:noeviction\n",
        ));
        assert_eq!(status(&near, "maxmemory"), Status::Ok);
        assert_eq!(status(&near, "memory-used"), Status::Warn);
        let full = checks(&server("used_memory:990\nmaxmemory:1000\n"));
        assert_eq!(status(&full, "memory-used"), Status::Fail);
        let fine = checks(&server("used_memory:100\nmaxmemory:1000\n"));
        assert_eq!(status(&fine, "memory-used"), Status::Ok);

        let gb = 1u64 << 30;
        let fragmented = checks(&server(&format!(
            "used_memory:{gb}\nused_memory_rss:{}\nmaxmemory:{}\nmem_fragmentation_ratio:2.0\n",
            2 * gb,
            4 * gb
        )));
        assert_eq!(status(&fragmented, "fragmentation"), Status::Warn);
    }
}
