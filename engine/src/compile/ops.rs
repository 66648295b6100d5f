//! Redis-side operations declared by Lua plugins: checked, then served as rules.
//!
//! An operation is a Lua 5.1 script body plus the names of the keys it touches. The engine
//! builds those keys from the request's id with the one key builder, so an operation only
//! ever sees keys in its rule's namespace and hash slot. To keep it there, the script is
//! refused at load when it
//! - does not compile as Lua 5.1,
//! - calls a command other than by a literal name (`redis.call(cmd, …)` cannot be checked),
//! - calls KEYS, SCAN or another command that reaches outside its keys or the server's state,
//! - passes as a command's key anything but `KEYS[n]` with a literal `n` it declared.
//!
//! The check reads the source, not a full Lua parse: it is deliberately strict (any call it
//! cannot understand is refused) rather than clever.

use std::sync::Arc;

use super::{Script, luacheck};

/// Commands an operation may not call: they touch keys it did not declare, the whole
/// keyspace, or the server itself.
const FORBIDDEN: &[&str] = &[
    "KEYS",
    "SCAN",
    "RANDOMKEY",
    "FLUSHALL",
    "FLUSHDB",
    "SELECT",
    "SWAPDB",
    "MOVE",
    "MIGRATE",
    "EVAL",
    "EVALSHA",
    "EVAL_RO",
    "EVALSHA_RO",
    "FCALL",
    "FCALL_RO",
    "FUNCTION",
    "SCRIPT",
    "CONFIG",
    "DEBUG",
    "SHUTDOWN",
    "CLIENT",
    "CLUSTER",
    "MONITOR",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "REPLICAOF",
    "SLAVEOF",
    "ACL",
    "MODULE",
    "OBJECT",
    "DUMP",
    "RESTORE",
    "SORT",
    "WAIT",
    "PUBLISH",
    "SUBSCRIBE",
    "RENAME",
    "RENAMENX",
    "COPY",
    "SMOVE",
    "LMOVE",
    "BLMOVE",
    "RPOPLPUSH",
    "BRPOPLPUSH",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
    "ZRANGESTORE",
    "GEORADIUS",
    "GEOSEARCHSTORE",
    "BITOP",
    "PFMERGE",
    "LMPOP",
    "ZMPOP",
    "BLMPOP",
    "BZMPOP",
];

/// Commands that take no key.
const KEYLESS: &[&str] = &["TIME", "PING", "ECHO"];

/// What compiling an operation produces.
#[derive(Debug, Clone)]
pub struct CompiledOps {
    pub plugin: String,
    pub op: String,
    pub script: Arc<Script>,
    /// Declared key names; KEYS[i] is the key of `keys[i-1]` for the request's id.
    pub keys: Vec<String>,
    /// Warnings for `patternd check` (e.g. writes without an expiry).
    pub warnings: Vec<String>,
}

pub fn compile(
    app: &str,
    rule: &str,
    plugin: &str,
    op: &str,
    keys: &[String],
    body: &str,
) -> Result<CompiledOps, String> {
    for k in keys {
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "op `{op}`: key name `{k}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
            ));
        }
    }
    let name = format!("ops {app}/{rule} ({plugin}.{op})");
    luacheck::check(&name, body)
        .map_err(|e| format!("op `{op}` does not compile as Lua 5.1: {e}"))?;
    let commands = check_calls(body, keys.len()).map_err(|e| format!("op `{op}`: {e}"))?;
    let mut warnings = Vec::new();
    let writes = commands.iter().any(|c| is_write(c));
    // An expiry is set by an EXPIRE-family command, SETEX/PSETEX, or SET with EX/PX (read
    // loosely from the text: this only decides whether to warn).
    let upper = body.to_ascii_uppercase();
    let expires = commands
        .iter()
        .any(|c| c.contains("EXPIRE") || c == "SETEX" || c == "PSETEX")
        || (commands.iter().any(|c| c == "SET")
            && ["'EX'", "\"EX\"", "'PX'", "\"PX\""]
                .iter()
                .any(|o| upper.contains(o)));
    if writes && !expires {
        warnings.push(format!(
            "op `{op}` writes keys but never sets an expiry: every key should have a TTL"
        ));
    }
    let source = format!(
        "-- patternd op {app}/{rule}: `{op}` from plugin `{plugin}`\n-- KEYS: {}\n{body}",
        keys.join(", ")
    );
    Ok(CompiledOps {
        plugin: plugin.to_string(),
        op: op.to_string(),
        script: Arc::new(Script::new(name, source)),
        keys: keys.to_vec(),
        warnings,
    })
}

fn is_write(cmd: &str) -> bool {
    const READS: &[&str] = &[
        "GET",
        "MGET",
        "HGET",
        "HMGET",
        "HGETALL",
        "EXISTS",
        "TTL",
        "PTTL",
        "TIME",
        "ZSCORE",
        "ZRANGE",
        "ZCARD",
        "SCARD",
        "SISMEMBER",
        "SMEMBERS",
        "LRANGE",
        "LLEN",
        "STRLEN",
        "TYPE",
        "HLEN",
        "HEXISTS",
        "ZRANK",
        "ZCOUNT",
        "GETRANGE",
        "PING",
        "ECHO",
        "XLEN",
        "XRANGE",
        "PFCOUNT",
        "BITCOUNT",
        "GETBIT",
    ];
    !READS.contains(&cmd) && !cmd.contains("EXPIRE") && cmd != "DEL" && cmd != "UNLINK"
}

/// Every `redis.call(`/`redis.pcall(` of the source, checked; returns the command names.
fn check_calls(src: &str, declared: usize) -> Result<Vec<String>, String> {
    let code = strip_comments(src);
    let mut commands = Vec::new();
    let mut rest = code.as_str();
    while let Some(pos) = rest.find("redis.") {
        let after = &rest[pos + "redis.".len()..];
        let call_len = if after.starts_with("call") {
            4
        } else if after.starts_with("pcall") {
            5
        } else {
            rest = after;
            continue;
        };
        let mut args = after[call_len..].trim_start();
        if !args.starts_with('(') {
            return Err("`redis.call` used other than as a direct call".into());
        }
        args = args[1..].trim_start();
        let (cmd, after_cmd) = string_literal(args).ok_or(
            "every redis.call needs a literal command name, e.g. redis.call('GET', KEYS[1])",
        )?;
        let cmd = cmd.to_ascii_uppercase();
        if FORBIDDEN.contains(&cmd.as_str()) {
            return Err(format!("calls {cmd}, which operations may not use"));
        }
        if !KEYLESS.contains(&cmd.as_str()) {
            let a = after_cmd.trim_start();
            let a = a
                .strip_prefix(',')
                .ok_or_else(|| format!("{cmd} needs a key: KEYS[n]"))?
                .trim_start();
            let n = keys_index(a).ok_or_else(|| {
                format!("{cmd}'s key must be KEYS[n] with a literal n (keys come from the engine)")
            })?;
            if n == 0 || n > declared {
                return Err(format!("uses KEYS[{n}] but declares {declared} key(s)"));
            }
        }
        commands.push(cmd);
        rest = after_cmd;
    }
    // KEYS indexed anywhere else (a variable index, or past the declared keys).
    let mut r = code.as_str();
    while let Some(pos) = r.find("KEYS") {
        let after = &r[pos + 4..];
        let preceded_ok = pos == 0
            || !r[..pos]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
        if preceded_ok && after.trim_start().starts_with('[') {
            match keys_index(&r[pos..]) {
                Some(n) if n >= 1 && n <= declared => {}
                _ => {
                    return Err(
                        "KEYS must be indexed with a literal declared index, e.g. KEYS[1]".into(),
                    );
                }
            }
        }
        r = after;
    }
    Ok(commands)
}

/// `KEYS[<digits>]` at the start of `s` → the index.
fn keys_index(s: &str) -> Option<usize> {
    let s = s
        .strip_prefix("KEYS")?
        .trim_start()
        .strip_prefix('[')?
        .trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit())?;
    let n = s[..end].parse().ok()?;
    s[end..].trim_start().starts_with(']').then_some(n)
}

/// A Lua string literal at the start of `s` → (its text, the rest).
fn string_literal(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next()?;
    if quote != '\'' && quote != '"' {
        return None;
    }
    let body = &s[1..];
    let end = body.find(quote)?;
    let text = &body[..end];
    if text.contains('\\') {
        return None;
    }
    Some((text.to_string(), &body[end + 1..]))
}

/// Drops `--` comments (line and block) so commented-out calls are not checked. Strings that
/// contain `--` are rare in scripts; if one does, the check sees less, never more, code after
/// it on that line, so it can only refuse more.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("--") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        if let Some(block) = after.strip_prefix("[[") {
            rest = block.find("]]").map(|e| &block[e + 2..]).unwrap_or("");
        } else {
            rest = after.find('\n').map(|e| &after[e..]).unwrap_or("");
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str, keys: usize) -> Result<Vec<String>, String> {
        check_calls(body, keys)
    }

    #[test]
    fn accepts_declared_keys() {
        let body = "local n = redis.call('INCR', KEYS[1])\nredis.call(\"EXPIREAT\", KEYS[1], 5)\nlocal t = redis.call('TIME')\nreturn n";
        assert_eq!(ok(body, 1).unwrap(), vec!["INCR", "EXPIREAT", "TIME"]);
    }

    #[test]
    fn refuses_escapes() {
        for (body, why) in [
            ("return redis.call('KEYS', '*')", "KEYS"),
            ("return redis.call('keys', '*')", "KEYS"),
            ("return redis.call('GET', 'other:key')", "key must be"),
            (
                "local k = KEYS[1] return redis.call('GET', k)",
                "key must be",
            ),
            ("return redis.call('GET', KEYS[2])", "declares 1"),
            (
                "local c = 'GET' return redis.call(c, KEYS[1])",
                "literal command",
            ),
            ("local i = 1 return KEYS[i]", "literal declared index"),
            ("return redis.pcall('FLUSHALL')", "FLUSHALL"),
            (
                "local f = redis.call return f('GET', KEYS[1])",
                "direct call",
            ),
        ] {
            let err = ok(body, 1).unwrap_err();
            assert!(err.contains(why), "{body}: {err}");
        }
    }

    #[test]
    fn comments_are_ignored() {
        assert!(
            ok(
                "-- redis.call('KEYS', '*')\n--[[ redis.call('FLUSHALL') ]]\nreturn 1",
                0
            )
            .is_ok()
        );
    }

    #[test]
    fn warns_on_writes_without_expiry() {
        let warnings = |body: &str| {
            compile("a", "r", "p", "o", &["k".into()], body)
                .unwrap()
                .warnings
        };
        assert_eq!(warnings("return redis.call('INCR', KEYS[1])").len(), 1);
        assert!(
            warnings(
                "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], 60) return n"
            )
            .is_empty()
        );
        let w = warnings("return redis.call('SET', KEYS[1], ARGV[1], 'ex', 60)");
        assert!(w.is_empty(), "{w:?}");
    }
}
