//! Replicas: connected, online, and not lagging (`INFO replication`); and enough of them for
//! the rules whose writes wait for replicas (`durability.replicas`).

use super::info::Server;
use super::report::Check;
use super::usage::Usage;

const ID: &str = "replication";
const TITLE: &str = "Replicas connected and in sync";
/// A replica that has not acknowledged for longer than this (s) is lagging.
const LAG_WARN_S: u64 = 10;

pub fn check(s: &Server, usages: &[Usage]) -> Check {
    let role = s.info.get("role").unwrap_or("unknown");
    if role != "master" {
        return Check::warn(
            ID,
            TITLE,
            format!("this server's role is {role}: patternd writes to a primary"),
            "point --redis at the primary (or a cluster's seeds)",
        );
    }
    let replicas = s.info.replicas();
    let online: Vec<_> = replicas
        .iter()
        .filter(|r| r.get("state").map(String::as_str) == Some("online"))
        .collect();
    let wanted = usages.iter().map(|u| u.replicas).max().unwrap_or(0);
    let wanting: Vec<&str> = usages
        .iter()
        .filter(|u| u.replicas == wanted && wanted > 0)
        .map(|u| u.rule.as_str())
        .collect();
    let listed: Vec<String> = replicas
        .iter()
        .map(|r| {
            let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("?");
            format!(
                "{}:{} {} lag {}s",
                get("ip"),
                get("port"),
                get("state"),
                get("lag")
            )
        })
        .collect();
    let evidence = if replicas.is_empty() {
        "no replicas".to_owned()
    } else {
        format!("{} replica(s): {}", replicas.len(), listed.join(", "))
    };
    if (online.len() as u64) < u64::from(wanted) {
        return Check::fail(
            ID,
            TITLE,
            format!(
                "{evidence}; {} wait(s) for {wanted} replica(s) on every write, so those writes \
                 answer 503 not-replicated",
                wanting.join(", ")
            ),
            format!(
                "attach {wanted} replica(s) (replicaof <this host> <port>) and check they are online"
            ),
        );
    }
    let behind: Vec<&String> = replicas
        .iter()
        .zip(&listed)
        .filter(|(r, _)| {
            r.get("state").map(String::as_str) != Some("online")
                || r.get("lag")
                    .and_then(|l| l.parse::<u64>().ok())
                    .unwrap_or(0)
                    > LAG_WARN_S
        })
        .map(|(_, l)| l)
        .collect();
    if !behind.is_empty() {
        return Check::warn(
            ID,
            TITLE,
            format!(
                "{evidence}; not in sync: {} (a failover to it would lose the writes it lacks)",
                behind
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "check the replica's link and load (INFO replication on the replica; a full resync \
             after a broken link needs repl-backlog-size large enough)",
        );
    }
    if replicas.is_empty() {
        return Check::ok(
            ID,
            TITLE,
            "no replicas, and no rule waits for one (a failure of this server is an outage until it is back)",
        );
    }
    Check::ok(ID, TITLE, evidence)
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

    fn lock(replicas: u32) -> Usage {
        Usage {
            rule: "a/l".into(),
            pattern: "lock",
            eviction: Vec::new(),
            durable: None,
            replicas,
            features: Vec::new(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn replicas_against_needs() {
        let alone = server("role:master\nconnected_slaves:0\n");
        assert_eq!(check(&alone, &[lock(0)]).status, Status::Ok);
        assert_eq!(check(&alone, &[lock(1)]).status, Status::Fail);
        let one = server(
            "role:master\nconnected_slaves:1\nslave0:ip=127.0.0.1,port=7001,state=online,offset=5,lag=0\n",
        );
        assert_eq!(check(&one, &[lock(1)]).status, Status::Ok);
        let lagging =
            server("role:master\nslave0:ip=127.0.0.1,port=7001,state=online,offset=5,lag=30\n");
        assert_eq!(check(&lagging, &[]).status, Status::Warn);
        let syncing =
            server("role:master\nslave0:ip=127.0.0.1,port=7001,state=wait_bgsave,offset=0,lag=0\n");
        assert_eq!(check(&syncing, &[lock(1)]).status, Status::Fail);
        assert_eq!(check(&server("role:slave\n"), &[]).status, Status::Warn);
    }
}
