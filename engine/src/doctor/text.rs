//! The report as text, for `patternd doctor`: one block per check (status, title, evidence,
//! fix), then one line per rule, then the counts. Plain text, no colour: it is pasted into
//! tickets and READMEs.

use std::fmt::Write as _;

use super::info::bytes;
use super::report::{Report, Status};

/// Wraps `text`, which starts after `indent` (a label as wide), at `width` columns, each
/// line after the first indented by `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = indent.len();
    for word in text.split_whitespace() {
        if line > indent.len() && line + 1 + word.chars().count() > width {
            out.push('\n');
            out.push_str(indent);
            line = indent.len();
        } else if line > indent.len() {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.chars().count();
    }
    out
}

pub fn render(r: &Report) -> String {
    const WIDTH: usize = 96;
    const INDENT: &str = "            ";
    let mut out = String::new();
    let _ = writeln!(
        out,
        "patternd doctor: {} (Redis {}, {}, {} server(s))\n",
        r.target,
        r.redis.version,
        r.redis.mode,
        r.redis.nodes.len()
    );
    for c in &r.checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        let mut head = format!("{tag}  {}", c.title);
        if let Some(rule) = &c.rule {
            let _ = write!(head, " [{rule}]");
        }
        if let Some(node) = &c.node {
            let _ = write!(head, " @{node}");
        }
        let _ = writeln!(out, "{head}  ({})", c.id);
        let _ = writeln!(out, "      seen: {}", wrap(&c.evidence, WIDTH, INDENT));
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "      fix:  {}", wrap(fix, WIDTH, INDENT));
        }
    }
    if !r.rules.is_empty() {
        let _ = writeln!(out, "\nrules (a bounded sample of each namespace):");
        for k in &r.rules {
            let approx = if k.keys_exact { "" } else { "~" };
            let _ = write!(
                out,
                "  {} ({}, {}): {approx}{} keys, {approx}{}",
                k.rule,
                k.pattern,
                k.eviction,
                k.keys,
                bytes(k.memory_bytes)
            );
            if let Some(big) = k.biggest.first() {
                let _ = write!(out, "; biggest {} {}", big.key, bytes(big.bytes));
            }
            if !k.no_ttl.is_empty() {
                let _ = write!(out, "; without TTL: {}", k.no_ttl.join(", "));
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\n{}: {} ok, {} warn, {} fail",
        r.status.label(),
        r.count(Status::Ok),
        r.count(Status::Warn),
        r.count(Status::Fail)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::{Check, KeySize, RedisSummary, RuleKeys};

    #[test]
    fn renders_checks_rules_and_counts() {
        let r = Report::new(
            "redis://127.0.0.1:6390/".into(),
            vec![
                Check::ok("maxmemory", "maxmemory is set", "maxmemory 64.0 MiB"),
                Check::fail(
                    "eviction",
                    "Eviction policy",
                    "allkeys-lru with locks",
                    "noeviction",
                )
                .on_node(Some("127.0.0.1:7000")),
                Check::warn("keys-without-ttl", "Keys without a TTL", "one", "expire it")
                    .for_rule("a/l"),
            ],
            vec![RuleKeys {
                rule: "a/l".into(),
                pattern: "lock".into(),
                prefix: "a:lock:l:".into(),
                eviction: "keep".into(),
                keys: 10,
                keys_exact: false,
                sampled: 5,
                memory_bytes: 2048,
                no_ttl: vec!["a:lock:l:{x}:p".into()],
                biggest: vec![KeySize {
                    key: "a:lock:l:{x}:h".into(),
                    bytes: 100,
                    kind: "zset".into(),
                    ttl_ms: Some(1),
                }],
            }],
            RedisSummary {
                version: "7.0.15".into(),
                mode: "standalone".into(),
                used_memory: 1,
                maxmemory: 2,
                maxmemory_policy: "noeviction".into(),
                nodes: Vec::new(),
            },
        );
        let t = render(&r);
        assert!(
            t.contains("ok    maxmemory is set  (maxmemory)\n      seen: maxmemory 64.0 MiB\n"),
            "{t}"
        );
        assert!(
            t.contains("FAIL  Eviction policy @127.0.0.1:7000  (eviction)"),
            "{t}"
        );
        assert!(t.contains("      fix:  noeviction\n"), "{t}");
        assert!(t.contains("WARN  Keys without a TTL [a/l]"), "{t}");
        assert!(t.contains("a/l (lock, keep): ~10 keys, ~2.0 KiB; biggest a:lock:l:{x}:h 100 B; without TTL: a:lock:l:{x}:p"), "{t}");
        assert!(t.ends_with("fail: 1 ok, 1 warn, 1 fail\n"), "{t}");
        assert_eq!(wrap("aa bb cc", 7, "  "), "aa bb\n  cc");
    }
}
