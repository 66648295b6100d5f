//! The Redis version against the features the rules use (each feature with the version that
//! brought it: `usage.rs`), and the modules loaded against the modules rules need.

use std::collections::BTreeMap;

use super::info::{Server, Version};
use super::report::Check;
use super::usage::Usage;

/// Each feature in use, with its version and the rules that use it, newest version first.
fn features(usages: &[Usage]) -> Vec<(Version, &'static str, Vec<&str>)> {
    let mut by: BTreeMap<(Version, &'static str), Vec<&str>> = BTreeMap::new();
    for u in usages {
        for f in &u.features {
            by.entry((f.since, f.name)).or_default().push(&u.rule);
        }
    }
    let mut out: Vec<_> = by.into_iter().map(|((v, n), r)| (v, n, r)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    out
}

fn rules(r: &[&str]) -> String {
    if r.len() > 4 {
        format!("{} and {} more", r[..4].join(", "), r.len() - 4)
    } else {
        r.join(", ")
    }
}

pub fn check(s: &Server, usages: &[Usage]) -> Check {
    const TITLE: &str = "Redis version for the features in use";
    let text = s.info.get("redis_version").unwrap_or("unknown");
    let feats = features(usages);
    let listed: Vec<String> = feats
        .iter()
        .map(|(v, n, r)| format!("{n} ≥ {}.{} ({})", v.0, v.1, rules(r)))
        .collect();
    let Some(have) = s.info.version() else {
        return Check::warn(
            "version",
            TITLE,
            format!(
                "redis_version {text:?} cannot be read; features in use: {}",
                listed.join("; ")
            ),
            "check the server is Redis (or a compatible server reporting redis_version)",
        );
    };
    let missing: Vec<String> = feats
        .iter()
        .filter(|(v, _, _)| *v > have)
        .map(|(v, n, r)| format!("{n} needs {}.{} ({})", v.0, v.1, rules(r)))
        .collect();
    if !missing.is_empty() {
        let need = feats.first().map(|f| f.0).unwrap_or(have);
        return Check::fail(
            "version",
            TITLE,
            format!("Redis {have}: {}", missing.join("; ")),
            format!(
                "upgrade Redis to {}.{} or later, or remove the rules named",
                need.0, need.1
            ),
        );
    }
    let evidence = if listed.is_empty() {
        format!("Redis {have}; no rule loaded")
    } else {
        format!("Redis {have}; features in use: {}", listed.join("; "))
    };
    Check::ok("version", TITLE, evidence)
}

pub fn modules(s: &Server, usages: &[Usage]) -> Check {
    const TITLE: &str = "Redis modules the rules need";
    let loaded: Vec<String> = s
        .modules
        .iter()
        .flatten()
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    let have = |m: &str| {
        s.modules
            .iter()
            .flatten()
            .any(|(n, _)| n.eq_ignore_ascii_case(m))
    };
    let mut need: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for u in usages {
        for m in &u.modules {
            need.entry(m).or_default().push(&u.rule);
        }
    }
    let loaded_text = match &s.modules {
        None => "MODULE LIST refused".to_owned(),
        Some(_) if loaded.is_empty() => "no modules loaded".to_owned(),
        Some(_) => format!("loaded: {}", loaded.join(", ")),
    };
    let missing: Vec<String> = need
        .iter()
        .filter(|(m, _)| !have(m))
        .map(|(m, r)| format!("{m} (needed by {})", rules(r)))
        .collect();
    if missing.is_empty() {
        let needed = if need.is_empty() {
            "; no rule needs one".to_owned()
        } else {
            format!(
                "; needed: {}",
                need.keys().copied().collect::<Vec<_>>().join(", ")
            )
        };
        return Check::ok("modules", TITLE, format!("{loaded_text}{needed}"));
    }
    Check::fail(
        "modules",
        TITLE,
        format!("{loaded_text}; missing: {}", missing.join(", ")),
        "load the module (loadmodule in redis.conf, or use Redis Stack / Redis 8, which bundle them)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::info::Info;
    use crate::doctor::report::Status;
    use crate::doctor::usage::{Feature, SCRIPT_EFFECTS};

    fn server(version: &str) -> Server {
        Server {
            info: Info::parse(&format!("redis_version:{version}\n")),
            modules: Some(Vec::new()),
            ..Server::default()
        }
    }

    fn usage(rule: &str, features: Vec<Feature>, modules: Vec<&'static str>) -> Usage {
        Usage {
            rule: rule.into(),
            pattern: "x",
            eviction: Vec::new(),
            durable: None,
            replicas: 0,
            features,
            modules,
        }
    }

    /// Only Redis 7.0.15 can be installed here, so the version logic is tested on INFO text
    /// of older servers.
    #[test]
    fn old_servers_fail_for_newer_features() {
        let stream = usage(
            "a/orders",
            vec![
                SCRIPT_EFFECTS,
                Feature {
                    name: "XAUTOCLAIM (stream consumer groups)",
                    since: Version(6, 2, 0),
                },
            ],
            Vec::new(),
        );
        let sharded = usage(
            "a/chat",
            vec![Feature {
                name: "SPUBLISH / SSUBSCRIBE (sharded pub/sub)",
                since: Version(7, 0, 0),
            }],
            Vec::new(),
        );
        let both = [stream.clone(), sharded];
        let c = check(&server("6.0.20"), &both);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence
                .contains("XAUTOCLAIM (stream consumer groups) needs 6.2 (a/orders)"),
            "{}",
            c.evidence
        );
        assert!(c.evidence.contains("SPUBLISH"));
        assert!(
            c.fix
                .as_deref()
                .unwrap_or_default()
                .contains("7.0 or later")
        );
        let c = check(&server("6.2.14"), &both);
        assert_eq!(c.status, Status::Fail);
        assert!(!c.evidence.contains("XAUTOCLAIM"), "{}", c.evidence);
        assert_eq!(check(&server("7.0.15"), &both).status, Status::Ok);
        assert_eq!(
            check(&server("4.0.14"), std::slice::from_ref(&stream)).status,
            Status::Fail
        );
        let ok = check(&server("7.0.15"), &[stream]);
        assert!(
            ok.evidence
                .contains("XAUTOCLAIM (stream consumer groups) ≥ 6.2 (a/orders)"),
            "{}",
            ok.evidence
        );
        assert_eq!(check(&server("not-a-version"), &[]).status, Status::Warn);
    }

    #[test]
    fn modules_needed_and_loaded() {
        let mut s = server("7.0.15");
        let counter = usage("a/uniq", Vec::new(), vec!["bf"]);
        assert_eq!(modules(&s, &[]).status, Status::Ok);
        let c = modules(&s, std::slice::from_ref(&counter));
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("bf (needed by a/uniq)"));
        s.modules = Some(vec![("bf".into(), 20_612)]);
        assert_eq!(modules(&s, &[counter]).status, Status::Ok);
    }
}
