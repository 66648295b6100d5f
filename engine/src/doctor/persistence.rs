//! Persistence where rules need their writes to survive a restart: write-behind journals (a
//! write acknowledged with 202), queues (a push acknowledged with 201), streams. Caches,
//! rate limits, locks and sessions can start empty after a restart; those cannot.

use super::info::Server;
use super::report::Check;
use super::usage::Usage;

const ID: &str = "persistence";
const TITLE: &str = "Persistence for rules that need durable writes";

pub fn check(s: &Server, usages: &[Usage]) -> Check {
    let aof = s.info.get("aof_enabled") == Some("1");
    let fsync = s.config("appendfsync");
    // `save ""` (no snapshots) reads back as an empty string; unknown when CONFIG is refused.
    let save = s.config("save").map(str::trim);
    let rdb = match save {
        Some("") => Some(false),
        Some(_) => Some(true),
        None => None,
    };
    let needs: Vec<String> = usages
        .iter()
        .filter_map(|u| u.durable.map(|why| format!("{} ({why})", u.rule)))
        .collect();
    let mut state = format!("appendonly {}", if aof { "yes" } else { "no" });
    if let Some(f) = fsync.filter(|_| aof) {
        state.push_str(&format!(", appendfsync {f}"));
    }
    match save {
        Some("") => state.push_str(", no RDB snapshots (save \"\")"),
        Some(sv) => state.push_str(&format!(", RDB snapshots (save \"{sv}\")")),
        None => state.push_str(", RDB schedule unknown (CONFIG GET refused)"),
    }
    for (field, what) in [
        ("aof_last_write_status", "the last AOF write"),
        ("rdb_last_bgsave_status", "the last RDB snapshot"),
    ] {
        if s.info.get(field).is_some_and(|v| v != "ok") {
            return Check::fail(
                ID,
                TITLE,
                format!(
                    "{state}; {what} failed ({field}: {})",
                    s.info.get(field).unwrap_or("")
                ),
                "read the Redis log: a full disk or a permission problem stops persistence, and \
                 Redis refuses writes after a failed save (stop-writes-on-bgsave-error)",
            );
        }
    }
    if needs.is_empty() {
        return Check::ok(
            ID,
            TITLE,
            format!("{state}; no rule needs its writes to survive a restart"),
        );
    }
    let needs = needs.join(", ");
    let enable = "CONFIG SET appendonly yes and appendfsync everysec (and the same in \
                  redis.conf): at most a second of writes is lost on a crash";
    if aof {
        return match fsync {
            Some("no") => Check::warn(
                ID,
                TITLE,
                format!(
                    "{state}; needed by {needs}. appendfsync no leaves flushing to the OS: a crash of the machine loses up to about 30 s of writes"
                ),
                "CONFIG SET appendfsync everysec",
            ),
            _ => Check::ok(ID, TITLE, format!("{state}; needed by {needs}")),
        };
    }
    match rdb {
        Some(false) => Check::fail(
            ID,
            TITLE,
            format!(
                "{state}; needed by {needs}: nothing is persisted, so a restart loses every acknowledged job, entry and journaled write"
            ),
            enable,
        ),
        Some(true) | None => Check::warn(
            ID,
            TITLE,
            format!(
                "{state}; needed by {needs}: RDB snapshots alone lose every write since the last snapshot on a crash"
            ),
            enable,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::info::Info;
    use crate::doctor::report::Status;

    fn server(info: &str, config: &[(&str, &str)]) -> Server {
        Server {
            info: Info::parse(info),
            config: config
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Server::default()
        }
    }

    fn queue() -> Usage {
        Usage {
            rule: "a/q".into(),
            pattern: "queue",
            eviction: Vec::new(),
            durable: Some("queue"),
            replicas: 0,
            features: Vec::new(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn persistence_against_needs() {
        let off = server("aof_enabled:0\n", &[("save", "")]);
        assert_eq!(check(&off, &[]).status, Status::Ok);
        assert_eq!(check(&off, &[queue()]).status, Status::Fail);
        let rdb = server("aof_enabled:0\n", &[("save", "3600 1 300 100")]);
        assert_eq!(check(&rdb, &[queue()]).status, Status::Warn);
        let aof = server(
            "aof_enabled:1\n",
            &[("appendfsync", "everysec"), ("save", "")],
        );
        assert_eq!(check(&aof, &[queue()]).status, Status::Ok);
        let lazy = server("aof_enabled:1\n", &[("appendfsync", "no")]);
        assert_eq!(check(&lazy, &[queue()]).status, Status::Warn);
        let broken = server("aof_enabled:1\naof_last_write_status:err\n", &[]);
        assert_eq!(check(&broken, &[]).status, Status::Fail);
    }
}
