//! Redis-side operations declared by Lua plugins: checked, then served as rules.
//!
//! An operation is a Lua 5.1 script body plus the names of the keys it touches. The engine
//! builds those keys from the request's id with the one key builder, so an operation only
//! ever sees keys in its rule's namespace and hash slot. To keep it there, the script is
//! parsed (full_moon, Lua 5.1) and refused at load unless the check can *prove* that every
//! Redis call touches only its declared keys:
//! - Redis is reached only by `redis.call(...)` / `redis.pcall(...)` called directly on the
//!   global `redis`; any other use of `redis` (an alias, `redis['call']`, `(redis).call`,
//!   passing it along) is refused, except a few harmless fields (`redis.error_reply`, …).
//! - The command is a plain string literal found in [`COMMANDS`], the allow-list of commands
//!   that touch only the keys they are given, each with its key positions (Redis 7 key specs).
//! - Every key argument is exactly `KEYS[n]` with a literal `n` from 1 to the declared count;
//!   a call or `...` that could expand into a key position is refused.
//! - `KEYS` is only ever read as `KEYS[n]`; `redis` and `KEYS` are never shadowed or assigned;
//!   globals are read-only and limited to [`GLOBALS`] (no `loadstring`, `getfenv`, `_G`, …).
//!
//! What cannot be proven is refused; every problem of a script is reported at once, at its
//! line and column in the plugin file.

use std::path::Path;
use std::sync::Arc;

use full_moon::ast::{
    Block, Call, Expression, Field, FunctionArgs, FunctionBody, Index, LastStmt, Parameter, Prefix,
    Stmt, Suffix, TableConstructor, Var,
};
use full_moon::node::Node;
use full_moon::tokenizer::{Symbol, TokenReference, TokenType};

use super::recipe::{self, Recipe};
use super::{Script, luacheck};
use crate::policy::{Diagnostic, Location};

/// Which arguments of a command are keys (1-based, after the command name), after the key
/// specs of Redis 7 (`COMMAND INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// No key: TIME, PING, ECHO.
    None,
    /// Keys at these positions, nothing else.
    At(&'static [usize]),
    /// Every `step`-th argument from `first` to the end (DEL k…, MSET k v k v…).
    From { first: usize, step: usize },
    /// Keys at `fixed`, then argument `at` is a count n and the n arguments after it are keys
    /// (ZUNIONSTORE dst numkeys k…).
    Numkeys { fixed: &'static [usize], at: usize },
}

/// What a command does to its keys (only used to warn about keys written without a TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    /// May create a key (which then needs an expiry).
    Create,
    /// Changes or removes existing keys only.
    Change,
    /// Sets an expiry.
    Expire,
}

#[derive(Debug, Clone, Copy)]
pub struct Command {
    pub name: &'static str,
    pub keys: Keys,
    pub effect: Effect,
}

const fn cmd(name: &'static str, keys: Keys, effect: Effect) -> Command {
    Command { name, keys, effect }
}

const K1: Keys = Keys::At(&[1]);
const K12: Keys = Keys::At(&[1, 2]);
const ALL: Keys = Keys::From { first: 1, step: 1 };
const PAIRS: Keys = Keys::From { first: 1, step: 2 };
const NUMKEYS: Keys = Keys::Numkeys { fixed: &[], at: 1 };
const DST_NUMKEYS: Keys = Keys::Numkeys { fixed: &[1], at: 2 };
use Effect::{Change, Create, Expire, Read};

/// The commands an op may call. Everything else is refused: commands over the whole keyspace
/// or the server (KEYS, SCAN, RANDOMKEY, FLUSHALL, CONFIG, CLIENT, DEBUG, OBJECT, SCRIPT…),
/// other databases (SELECT, MOVE, SWAPDB, COPY … DB), scripts (EVAL, FCALL), key names
/// taken from options or patterns (SORT/SORT_RO BY/GET/STORE, GEORADIUS[BYMEMBER] STORE,
/// XREAD STREAMS, MIGRATE), channels (PUBLISH), PERSIST (every key keeps a TTL), and blocking
/// forms. Adding one: its key positions from `COMMAND INFO`, and a test.
pub const COMMANDS: &[Command] = &[
    // No key.
    cmd("TIME", Keys::None, Read),
    cmd("PING", Keys::None, Read),
    cmd("ECHO", Keys::None, Read),
    // Any type.
    cmd("DEL", ALL, Change),
    cmd("UNLINK", ALL, Change),
    cmd("EXISTS", ALL, Read),
    cmd("TYPE", K1, Read),
    cmd("TTL", K1, Read),
    cmd("PTTL", K1, Read),
    cmd("EXPIRETIME", K1, Read),
    cmd("PEXPIRETIME", K1, Read),
    cmd("EXPIRE", K1, Expire),
    cmd("PEXPIRE", K1, Expire),
    cmd("EXPIREAT", K1, Expire),
    cmd("PEXPIREAT", K1, Expire),
    // Strings and counters.
    cmd("GET", K1, Read),
    cmd("MGET", ALL, Read),
    cmd("STRLEN", K1, Read),
    cmd("GETRANGE", K1, Read),
    cmd("SET", K1, Create),
    cmd("SETNX", K1, Create),
    cmd("SETEX", K1, Expire),
    cmd("PSETEX", K1, Expire),
    cmd("MSET", PAIRS, Create),
    cmd("GETSET", K1, Create),
    cmd("GETDEL", K1, Change),
    cmd("APPEND", K1, Create),
    cmd("SETRANGE", K1, Create),
    cmd("INCR", K1, Create),
    cmd("INCRBY", K1, Create),
    cmd("INCRBYFLOAT", K1, Create),
    cmd("DECR", K1, Create),
    cmd("DECRBY", K1, Create),
    // Bitmaps.
    cmd("GETBIT", K1, Read),
    cmd("SETBIT", K1, Create),
    cmd("BITCOUNT", K1, Read),
    cmd("BITPOS", K1, Read),
    cmd("BITFIELD", K1, Create),
    cmd("BITFIELD_RO", K1, Read),
    // Hashes.
    cmd("HGET", K1, Read),
    cmd("HMGET", K1, Read),
    cmd("HGETALL", K1, Read),
    cmd("HEXISTS", K1, Read),
    cmd("HKEYS", K1, Read),
    cmd("HVALS", K1, Read),
    cmd("HLEN", K1, Read),
    cmd("HSTRLEN", K1, Read),
    cmd("HRANDFIELD", K1, Read),
    cmd("HSET", K1, Create),
    cmd("HSETNX", K1, Create),
    cmd("HMSET", K1, Create),
    cmd("HINCRBY", K1, Create),
    cmd("HINCRBYFLOAT", K1, Create),
    cmd("HDEL", K1, Change),
    // Lists.
    cmd("LRANGE", K1, Read),
    cmd("LLEN", K1, Read),
    cmd("LINDEX", K1, Read),
    cmd("LPOS", K1, Read),
    cmd("LPUSH", K1, Create),
    cmd("RPUSH", K1, Create),
    cmd("LPUSHX", K1, Change),
    cmd("RPUSHX", K1, Change),
    cmd("LSET", K1, Change),
    cmd("LINSERT", K1, Change),
    cmd("LPOP", K1, Change),
    cmd("RPOP", K1, Change),
    cmd("LREM", K1, Change),
    cmd("LTRIM", K1, Change),
    cmd("LMOVE", K12, Create),
    cmd("RPOPLPUSH", K12, Create),
    // Sets.
    cmd("SISMEMBER", K1, Read),
    cmd("SMISMEMBER", K1, Read),
    cmd("SMEMBERS", K1, Read),
    cmd("SCARD", K1, Read),
    cmd("SRANDMEMBER", K1, Read),
    cmd("SADD", K1, Create),
    cmd("SREM", K1, Change),
    cmd("SPOP", K1, Change),
    cmd("SMOVE", K12, Create),
    cmd("SUNION", ALL, Read),
    cmd("SINTER", ALL, Read),
    cmd("SDIFF", ALL, Read),
    cmd("SINTERCARD", NUMKEYS, Read),
    cmd("SUNIONSTORE", ALL, Create),
    cmd("SINTERSTORE", ALL, Create),
    cmd("SDIFFSTORE", ALL, Create),
    // Sorted sets.
    cmd("ZSCORE", K1, Read),
    cmd("ZMSCORE", K1, Read),
    cmd("ZRANK", K1, Read),
    cmd("ZREVRANK", K1, Read),
    cmd("ZCARD", K1, Read),
    cmd("ZCOUNT", K1, Read),
    cmd("ZLEXCOUNT", K1, Read),
    cmd("ZRANGE", K1, Read),
    cmd("ZREVRANGE", K1, Read),
    cmd("ZRANGEBYSCORE", K1, Read),
    cmd("ZREVRANGEBYSCORE", K1, Read),
    cmd("ZRANGEBYLEX", K1, Read),
    cmd("ZREVRANGEBYLEX", K1, Read),
    cmd("ZRANDMEMBER", K1, Read),
    cmd("ZADD", K1, Create),
    cmd("ZINCRBY", K1, Create),
    cmd("ZREM", K1, Change),
    cmd("ZPOPMIN", K1, Change),
    cmd("ZPOPMAX", K1, Change),
    cmd("ZREMRANGEBYSCORE", K1, Change),
    cmd("ZREMRANGEBYRANK", K1, Change),
    cmd("ZREMRANGEBYLEX", K1, Change),
    cmd("ZRANGESTORE", K12, Create),
    cmd("ZUNION", NUMKEYS, Read),
    cmd("ZINTER", NUMKEYS, Read),
    cmd("ZDIFF", NUMKEYS, Read),
    cmd("ZINTERCARD", NUMKEYS, Read),
    cmd("ZUNIONSTORE", DST_NUMKEYS, Create),
    cmd("ZINTERSTORE", DST_NUMKEYS, Create),
    cmd("ZDIFFSTORE", DST_NUMKEYS, Create),
    // HyperLogLog.
    cmd("PFADD", K1, Create),
    cmd("PFCOUNT", ALL, Read),
    cmd("PFMERGE", ALL, Create),
    // Streams (one key each; XREAD's keys follow a keyword and are refused).
    cmd("XADD", K1, Create),
    cmd("XLEN", K1, Read),
    cmd("XRANGE", K1, Read),
    cmd("XREVRANGE", K1, Read),
    cmd("XDEL", K1, Change),
    cmd("XTRIM", K1, Change),
    // Geo (GEOSEARCH has no STORE; GEORADIUS* may STORE to any key and are refused).
    cmd("GEOADD", K1, Create),
    cmd("GEOPOS", K1, Read),
    cmd("GEODIST", K1, Read),
    cmd("GEOHASH", K1, Read),
    cmd("GEOSEARCH", K1, Read),
];

/// Globals an op may read (never write). `redis` and `KEYS` have rules of their own.
pub const GLOBALS: &[&str] = &[
    "ARGV", "assert", "bit", "cjson", "cmsgpack", "error", "ipairs", "math", "next", "pairs",
    "pcall", "select", "string", "struct", "table", "tonumber", "tostring", "type", "unpack",
];

/// Fields of `redis` that cannot reach a key: usable as values or called.
const REDIS_FIELDS: &[&str] = &[
    "error_reply",
    "status_reply",
    "sha1hex",
    "log",
    "LOG_DEBUG",
    "LOG_VERBOSE",
    "LOG_NOTICE",
    "LOG_WARNING",
];

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

/// One op of a plugin, and where it comes from (diagnostics point into the plugin's file).
#[derive(Debug, Clone, Copy)]
pub struct OpSource<'a> {
    pub plugin: &'a str,
    pub file: &'a Path,
    /// The plugin file's text: the script's place in it turns script lines into file lines.
    pub text: &'a str,
    pub op: &'a str,
    pub keys: &'a [String],
    pub script: &'a str,
}

/// An op's script: the plugin's own, named for its rule.
const OP: Recipe = Recipe::new(
    "ops <app>/<rule> (<plugin>.<op>)",
    &[],
    recipe::Block::generated("a comment naming its keys, then the op's script from its plugin"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[OP];

/// Checks and compiles the op for rule `app/rule`; refusals are diagnostics in the plugin file.
pub fn compile(app: &str, rule: &str, src: &OpSource<'_>) -> Result<CompiledOps, Vec<Diagnostic>> {
    let op = src.op;
    let origin = script_origin(src.text, src.script);
    let at = |line: usize, column: usize| match origin {
        Some((l0, c0)) if line == 1 => Location::new(src.file, l0, c0 + column - 1),
        Some((l0, _)) => Location::new(src.file, l0 + line - 1, column),
        None => Location::file_start(src.file),
    };
    // Without the script's place in the file, the message carries its own position.
    let located = |line: usize, column: usize, message: String| {
        let message = if origin.is_some() {
            format!("op `{op}` (rule {app}/{rule}): {message}")
        } else {
            format!("op `{op}` (rule {app}/{rule}), script line {line}, column {column}: {message}")
        };
        Diagnostic::error(&at(line, column), message)
    };
    for k in src.keys {
        if k.is_empty()
            || k.len() > 64
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(vec![located(
                1,
                1,
                format!("key name `{k}` must be 1 to 64 letters, digits, `-`, `_` or `.`"),
            )]);
        }
    }
    let name = format!("ops {app}/{rule} ({}.{op})", src.plugin);
    // mlua first: it is the Lua 5.1 compiler Redis embeds, so its verdict on syntax is the
    // one that matters. Its parser also bounds nesting to 200 levels before full_moon sees
    // the script; flat operator chains, which it does not count, are capped by the size bound.
    luacheck::check(&name, src.script).map_err(|e| {
        vec![located(
            1,
            1,
            format!("the script does not compile as Lua 5.1: {e}"),
        )]
    })?;
    // Redis reads a `#!lua flags=…` line only at the start of a script, and the engine puts
    // its own comment there: the flags could not apply, so the line is refused.
    if src.script.starts_with("#!") {
        return Err(vec![located(
            1,
            1,
            "a `#!` flags line is not supported in an op script; remove it".into(),
        )]);
    }
    let checked = check(src.script, src.keys.len()).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| located(p.line, p.column, p.message))
            .collect::<Vec<_>>()
    })?;
    let mut warnings = Vec::new();
    let creates = checked.calls.iter().any(|c| c.command.effect == Create);
    let expires = checked
        .calls
        .iter()
        .any(|c| c.command.effect == Expire || c.sets_expiry);
    if creates && !expires {
        warnings.push(format!(
            "op `{op}` writes keys but never sets an expiry: every key should have a TTL"
        ));
    }
    let body = format!("-- KEYS: {}\n{}", src.keys.join(", "), src.script);
    Ok(CompiledOps {
        plugin: src.plugin.to_string(),
        op: op.to_string(),
        script: OP.assemble_as(&name, &body),
        keys: src.keys.to_vec(),
        warnings,
    })
}

/// Line and column (1-based) where `script` starts in `text`, when it appears there exactly
/// once as written (a `[[long string]]` or a quoted string without escapes).
fn script_origin(text: &str, script: &str) -> Option<(usize, usize)> {
    if script.trim().is_empty() {
        return None;
    }
    let mut found = text.match_indices(script);
    let (at, _) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

/// A reason to refuse a script, at a line and column of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One `redis.call`/`redis.pcall` of a script that passed the check.
#[derive(Debug, Clone, Copy)]
pub struct CheckedCall {
    pub command: &'static Command,
    /// A SET with an EX/PX/EXAT/PXAT option.
    pub sets_expiry: bool,
}

#[derive(Debug, Default)]
pub struct Checked {
    pub calls: Vec<CheckedCall>,
}

/// Largest op script: ops are a few calls. Bounding the text bounds the depth of the
/// syntax tree (a flat `1+1+…` chain is one level per operator), which full_moon builds and
/// drops recursively.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// Deepest expression nesting the check walks: Lua 5.1's own parser stops at 200 levels
/// (LUAI_MAXCCALLS), except for chains of left-associative operators, which it reads flat.
const MAX_DEPTH: usize = 200;

/// Parses `script` as Lua 5.1 and checks it against the rules of the module doc, with
/// `declared` keys. All problems are returned together, in source order.
pub fn check(script: &str, declared: usize) -> Result<Checked, Vec<Problem>> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(vec![Problem {
            line: 1,
            column: 1,
            message: format!(
                "the script is {} bytes; an op script is at most {MAX_SCRIPT_BYTES} bytes",
                script.len()
            ),
        }]);
    }
    let ast = full_moon::parse(script).map_err(|errors| {
        errors
            .iter()
            .map(|e| {
                let (start, _) = e.range();
                Problem {
                    line: start.line(),
                    column: start.character(),
                    message: format!("cannot be parsed: {}", e.error_message()),
                }
            })
            .collect::<Vec<_>>()
    })?;
    let mut c = Checker {
        declared,
        depth: 0,
        too_deep: false,
        scopes: vec![Vec::new()],
        problems: Vec::new(),
        calls: Vec::new(),
    };
    c.block(ast.nodes());
    if c.problems.is_empty() {
        Ok(Checked { calls: c.calls })
    } else {
        c.problems.sort_by_key(|p| (p.line, p.column));
        c.problems.dedup();
        Err(c.problems)
    }
}

struct Checker {
    declared: usize,
    /// Expressions being walked, outermost first (bounded by MAX_DEPTH).
    depth: usize,
    too_deep: bool,
    /// Local names in scope, innermost last.
    scopes: Vec<Vec<String>>,
    problems: Vec<Problem>,
    calls: Vec<CheckedCall>,
}

fn ident(tok: &TokenReference) -> &str {
    match tok.token_type() {
        TokenType::Identifier { identifier } => identifier.as_str(),
        _ => "",
    }
}

fn is_vararg(e: &Expression) -> bool {
    matches!(e, Expression::Symbol(t)
        if matches!(t.token_type(), TokenType::Symbol { symbol: Symbol::Ellipsis }))
}

/// A call or `...` as the last argument expands to any number of arguments.
fn is_multi(e: &Expression) -> bool {
    matches!(e, Expression::FunctionCall(_)) || is_vararg(e)
}

/// The text of a string literal when it is plain letters and `_` (a command name): escapes,
/// digits or spaces could hide another name from the check, so they are not plain.
fn plain_word(e: &Expression) -> Option<&str> {
    match e {
        Expression::String(t) => match t.token_type() {
            TokenType::StringLiteral { literal, .. }
                if !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic() || b == b'_') =>
            {
                Some(literal.as_str())
            }
            _ => None,
        },
        _ => None,
    }
}

/// A decimal integer literal.
fn int_literal(e: &Expression) -> Option<usize> {
    match e {
        Expression::Number(t) => match t.token_type() {
            TokenType::Number { text } if text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse().ok()
            }
            _ => None,
        },
        _ => None,
    }
}

fn pos(node: &impl Node) -> (usize, usize) {
    node.start_position()
        .map_or((1, 1), |p| (p.line(), p.character()))
}

impl Checker {
    fn refuse(&mut self, node: &impl Node, message: impl Into<String>) {
        let (line, column) = pos(node);
        self.problems.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes
            .iter()
            .rev()
            .any(|s| s.iter().any(|n| n == name))
    }

    fn declare(&mut self, tok: &TokenReference) {
        let name = ident(tok);
        if name == "redis" || name == "KEYS" {
            self.refuse(
                tok,
                format!(
                    "declares a local named `{name}`: a shadowed `{name}` hides which keys the op reaches; pick another name"
                ),
            );
        }
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(name.to_string());
        }
    }

    fn scoped(&mut self, names: &[&TokenReference], f: impl FnOnce(&mut Self)) {
        self.scopes.push(Vec::new());
        for n in names {
            self.declare(n);
        }
        f(self);
        self.scopes.pop();
    }

    fn block(&mut self, block: &Block) {
        for stmt in block.stmts() {
            self.stmt(stmt);
        }
        match block.last_stmt() {
            Some(LastStmt::Return(r)) => {
                for e in r.returns() {
                    self.expr(e);
                }
            }
            Some(LastStmt::Break(_)) | None => {}
            Some(other) => self.refuse(other, "syntax the op check does not support"),
        }
    }

    fn stmt(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Assignment(a) => {
                for v in a.variables() {
                    self.assigned(v);
                }
                for e in a.expressions() {
                    self.expr(e);
                }
            }
            Stmt::LocalAssignment(a) => {
                // `local x = x`: the right side sees the outer names.
                for e in a.expressions() {
                    self.expr(e);
                }
                for n in a.names() {
                    self.declare(n);
                }
            }
            Stmt::LocalFunction(f) => {
                self.declare(f.name());
                self.function(f.body(), None);
            }
            Stmt::FunctionDeclaration(f) => {
                let name = f.name();
                // `function f()` assigns f, `function t.f()` / `t:f()` a field of t.
                let field = name.names().len() > 1 || name.method_name().is_some();
                match name.names().iter().next() {
                    Some(root) if !self.is_local(ident(root)) => {
                        let n = ident(root);
                        let message = if field {
                            format!(
                                "changes the global `{n}`: ops may not modify globals; copy what you need into a local table"
                            )
                        } else {
                            format!(
                                "declares the global function `{n}`: ops may not create or change globals; write `local function {n}`"
                            )
                        };
                        self.refuse(root, message);
                    }
                    _ => {}
                }
                self.function(f.body(), name.method_name());
            }
            Stmt::FunctionCall(call) => self.chain(call.prefix(), call.suffixes(), call),
            Stmt::Do(d) => self.scoped(&[], |c| c.block(d.block())),
            Stmt::While(w) => {
                self.expr(w.condition());
                self.scoped(&[], |c| c.block(w.block()));
            }
            Stmt::Repeat(r) => self.scoped(&[], |c| {
                // The `until` condition sees the loop body's locals.
                c.block(r.block());
                c.expr(r.until());
            }),
            Stmt::If(i) => {
                self.expr(i.condition());
                self.scoped(&[], |c| c.block(i.block()));
                for e in i.else_if().into_iter().flatten() {
                    self.expr(e.condition());
                    self.scoped(&[], |c| c.block(e.block()));
                }
                if let Some(b) = i.else_block() {
                    self.scoped(&[], |c| c.block(b));
                }
            }
            Stmt::NumericFor(f) => {
                self.expr(f.start());
                self.expr(f.end());
                if let Some(s) = f.step() {
                    self.expr(s);
                }
                self.scoped(&[f.index_variable()], |c| c.block(f.block()));
            }
            Stmt::GenericFor(f) => {
                for e in f.expressions() {
                    self.expr(e);
                }
                let names: Vec<&TokenReference> = f.names().iter().collect();
                self.scoped(&names, |c| c.block(f.block()));
            }
            other => self.refuse(other, "syntax the op check does not support"),
        }
    }

    fn function(&mut self, body: &FunctionBody, method: Option<&TokenReference>) {
        self.scopes.push(Vec::new());
        if method.is_some()
            && let Some(scope) = self.scopes.last_mut()
        {
            scope.push("self".to_string());
        }
        for p in body.parameters() {
            if let Parameter::Name(n) = p {
                self.declare(n);
            }
        }
        self.block(body.block());
        self.scopes.pop();
    }

    /// The target of an assignment: a local, or a field of a local table. Globals (and the
    /// tables they hold: `KEYS[1] = …`, `redis.call = …`, `string.x = …`) are read-only.
    fn assigned(&mut self, var: &Var) {
        match var {
            Var::Name(tok) => {
                let n = ident(tok);
                if !self.is_local(n) {
                    self.refuse(
                        tok,
                        format!(
                            "assigns the global `{n}`: ops may not create or change globals; declare it `local {n}`"
                        ),
                    );
                }
            }
            Var::Expression(v) => match v.prefix() {
                Prefix::Name(tok) if !self.is_local(ident(tok)) => {
                    let n = ident(tok);
                    self.refuse(
                        tok,
                        format!(
                            "changes the global `{n}`: ops may not modify globals; copy what you need into a local table"
                        ),
                    );
                    self.suffixes(v.suffixes().collect());
                }
                prefix => self.chain(prefix, v.suffixes(), &**v),
            },
            other => self.refuse(other, "syntax the op check does not support"),
        }
    }

    fn expr(&mut self, e: &Expression) {
        if self.depth >= MAX_DEPTH {
            if !self.too_deep {
                self.too_deep = true;
                // The operator's own token: the start of a deep chain is as deep as the chain.
                match e {
                    Expression::BinaryOperator { binop, .. } => self.refuse(binop, TOO_DEEP),
                    _ => self.refuse(e, TOO_DEEP),
                }
            }
            return;
        }
        self.depth += 1;
        self.expr_inner(e);
        self.depth -= 1;
    }

    fn expr_inner(&mut self, e: &Expression) {
        match e {
            Expression::BinaryOperator { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expression::UnaryOperator { expression, .. }
            | Expression::Parentheses { expression, .. } => self.expr(expression),
            Expression::Function(f) => self.function(f.body(), None),
            Expression::FunctionCall(call) => self.chain(call.prefix(), call.suffixes(), call),
            Expression::TableConstructor(t) => self.table(t),
            Expression::Number(_) | Expression::String(_) | Expression::Symbol(_) => {}
            Expression::Var(Var::Name(tok)) => self.name_read(tok),
            Expression::Var(Var::Expression(v)) => self.chain(v.prefix(), v.suffixes(), &**v),
            other => self.refuse(other, "syntax the op check does not support"),
        }
    }

    fn table(&mut self, t: &TableConstructor) {
        for field in t.fields() {
            match field {
                Field::ExpressionKey { key, value, .. } => {
                    self.expr(key);
                    self.expr(value);
                }
                Field::NameKey { value, .. } => self.expr(value),
                Field::NoKey(value) => self.expr(value),
                other => self.refuse(other, "syntax the op check does not support"),
            }
        }
    }

    /// A name read on its own (not indexed or called).
    fn name_read(&mut self, tok: &TokenReference) {
        let n = ident(tok);
        if self.is_local(n) {
            return;
        }
        match n {
            "redis" => self.refuse(tok, REDIS_ONLY),
            "KEYS" => self.refuse(tok, self.keys_only()),
            _ => self.global(tok),
        }
    }

    fn global(&mut self, tok: &TokenReference) {
        let n = ident(tok);
        if !GLOBALS.contains(&n) {
            self.refuse(
                tok,
                format!(
                    "`{n}` is not available to ops (no global but {}, `redis.call`/`redis.pcall` and `KEYS[n]`); a helper of your own is a `local`",
                    GLOBALS.join(", ")
                ),
            );
        }
    }

    fn keys_only(&self) -> String {
        format!(
            "`KEYS` may only be read as `KEYS[n]` with a literal n from 1 to {} (the keys the op declares)",
            self.declared
        )
    }

    /// `prefix` followed by `suffixes` (indexing and calls), e.g. `redis.call('GET', KEYS[1])`.
    fn chain<'a>(
        &mut self,
        prefix: &Prefix,
        suffixes: impl Iterator<Item = &'a Suffix>,
        whole: &impl Node,
    ) {
        let suffixes: Vec<&Suffix> = suffixes.collect();
        let tok = match prefix {
            Prefix::Name(tok) if !self.is_local(ident(tok)) => tok,
            Prefix::Name(_) => return self.suffixes(suffixes),
            Prefix::Expression(e) => {
                self.expr(e);
                return self.suffixes(suffixes);
            }
            other => return self.refuse(other, "syntax the op check does not support"),
        };
        match ident(tok) {
            "redis" => self.redis(tok, &suffixes, whole),
            "KEYS" => {
                match suffixes.first() {
                    Some(Suffix::Index(Index::Brackets { expression, .. })) => {
                        match int_literal(expression) {
                            Some(n) if (1..=self.declared).contains(&n) => {}
                            _ => self.refuse(&**expression, self.keys_only()),
                        }
                    }
                    _ => self.refuse(tok, self.keys_only()),
                }
                self.suffixes(suffixes.into_iter().skip(1).collect());
            }
            _ => {
                self.global(tok);
                self.suffixes(suffixes);
            }
        }
    }

    fn suffixes(&mut self, suffixes: Vec<&Suffix>) {
        for s in suffixes {
            match s {
                Suffix::Index(Index::Brackets { expression, .. }) => self.expr(expression),
                Suffix::Index(Index::Dot { .. }) => {}
                Suffix::Call(Call::AnonymousCall(args)) => self.args(args),
                Suffix::Call(Call::MethodCall(m)) => self.args(m.args()),
                other => self.refuse(other, "syntax the op check does not support"),
            }
        }
    }

    fn args(&mut self, args: &FunctionArgs) {
        match args {
            FunctionArgs::Parentheses { arguments, .. } => {
                for a in arguments {
                    self.expr(a);
                }
            }
            FunctionArgs::String(_) => {}
            FunctionArgs::TableConstructor(t) => self.table(t),
            other => self.refuse(other, "syntax the op check does not support"),
        }
    }

    /// The global `redis` followed by `suffixes`.
    fn redis(&mut self, tok: &TokenReference, suffixes: &[&Suffix], whole: &impl Node) {
        let field = match suffixes.first() {
            Some(Suffix::Index(Index::Dot { name, .. })) => ident(name),
            _ => return self.refuse(tok, REDIS_ONLY),
        };
        match field {
            "call" | "pcall" => match suffixes.get(1) {
                Some(Suffix::Call(Call::AnonymousCall(args))) => {
                    self.redis_call(args, whole);
                    self.args(args);
                    self.suffixes(suffixes[2..].to_vec());
                }
                _ => self.refuse(
                    tok,
                    format!(
                        "`redis.{field}` must be called directly, as `redis.{field}('CMD', KEYS[1], …)`: an alias or a call through another function cannot be checked"
                    ),
                ),
            },
            f if REDIS_FIELDS.contains(&f) => self.suffixes(suffixes[1..].to_vec()),
            f => self.refuse(
                tok,
                format!("`redis.{f}` is not available to ops; {REDIS_ONLY}"),
            ),
        }
    }

    /// The arguments of one `redis.call`: a known command, every key exactly `KEYS[n]`.
    fn redis_call(&mut self, args: &FunctionArgs, whole: &impl Node) {
        // `redis.call 'TIME'`: a string argument on its own.
        let lone;
        let args: Vec<&Expression> = match args {
            FunctionArgs::Parentheses { arguments, .. } => arguments.iter().collect(),
            FunctionArgs::String(tok) => {
                lone = Expression::String(tok.clone());
                vec![&lone]
            }
            _ => {
                return self.refuse(
                    whole,
                    "call Redis with parentheses: `redis.call('CMD', KEYS[1], …)`",
                );
            }
        };
        let Some(first) = args.first() else {
            return self.refuse(
                whole,
                "`redis.call` needs a command: `redis.call('GET', KEYS[1])`",
            );
        };
        let Some(word) = plain_word(first) else {
            return self.refuse(
                *first,
                "the command must be a plain string literal such as 'GET': a computed, concatenated or escaped name cannot be checked",
            );
        };
        let upper = word.to_ascii_uppercase();
        let Some(command) = COMMANDS.iter().find(|c| c.name == upper) else {
            return self.refuse(
                *first,
                format!(
                    "`{upper}` is not a command ops may call: ops call only commands that touch the keys they are given (strings, counters, bitmaps, hashes, lists, sets, sorted sets, HyperLogLog, streams, geo, DEL/EXISTS/TYPE/TTL, the EXPIRE family, TIME; see README, Plugins)"
                ),
            );
        };
        let rest = &args[1..];
        let errors_before = self.problems.len();
        self.key_args(command, rest, pos(whole));
        if self.problems.len() == errors_before {
            let sets_expiry = command.name == "SET"
                && rest.iter().any(|a| {
                    plain_word(a).is_some_and(|w| {
                        ["EX", "PX", "EXAT", "PXAT"]
                            .iter()
                            .any(|o| w.eq_ignore_ascii_case(o))
                    })
                });
            self.calls.push(CheckedCall {
                command,
                sets_expiry,
            });
        }
    }

    /// Checks the key positions of `command` over its arguments `args` (after the name);
    /// `call_at` is where the call starts (for a missing argument).
    fn key_args(&mut self, command: &Command, args: &[&Expression], call_at: (usize, usize)) {
        let name = command.name;
        let m = args.len();
        let multi = args.last().is_some_and(|a| is_multi(a));
        // The positions that must be keys, and whether more follow past the last argument.
        let (positions, open): (Vec<usize>, bool) = match command.keys {
            Keys::None => (Vec::new(), false),
            Keys::At(ps) => (ps.to_vec(), false),
            Keys::From { first, step } => {
                let ps: Vec<usize> = (first..=m.max(first)).step_by(step).collect();
                (ps, true)
            }
            Keys::Numkeys { fixed, at } => {
                let count = match args.get(at - 1) {
                    Some(a) if !(at == m && multi) => int_literal(a).filter(|n| *n >= 1),
                    _ => None,
                };
                match count {
                    Some(n) => (
                        fixed.iter().copied().chain(at + 1..=at + n).collect(),
                        false,
                    ),
                    None => {
                        let (line, column) = args.get(at - 1).map_or(call_at, |a| pos(*a));
                        self.problems.push(Problem {
                            line,
                            column,
                            message: format!(
                                "argument {at} of {name} (numkeys) must be an integer literal of at least 1, so that the keys after it can be checked"
                            ),
                        });
                        (fixed.to_vec(), false)
                    }
                }
            }
        };
        let expands = |c: &mut Self| {
            c.refuse(
                args[m - 1],
                format!(
                    "the last argument of {name} is a call or `...`, which can expand into the key positions of {name}: pass every key as `KEYS[n]` and expand only values after the keys"
                ),
            );
        };
        for p in positions {
            if p < m || (p == m && !multi) {
                self.key(name, p, args[p - 1]);
            } else if multi {
                return expands(self);
            } else {
                self.problems.push(Problem {
                    line: call_at.0,
                    column: call_at.1,
                    message: format!("{name} needs a key at argument {p}: `KEYS[n]`"),
                });
                return;
            }
        }
        if open && multi {
            expands(self);
        }
    }

    /// Argument `p` of `name` is a key: it must be exactly `KEYS[n]` with n declared.
    fn key(&mut self, name: &str, p: usize, arg: &Expression) {
        if let Expression::Var(Var::Expression(v)) = arg
            && let Prefix::Name(tok) = v.prefix()
            && ident(tok) == "KEYS"
            && !self.is_local("KEYS")
        {
            let suffixes: Vec<&Suffix> = v.suffixes().collect();
            if let [Suffix::Index(Index::Brackets { expression, .. })] = suffixes.as_slice() {
                // An index out of range is reported where KEYS is read (`chain`).
                if int_literal(expression).is_some() {
                    return;
                }
            }
        }
        self.refuse(
            arg,
            format!(
                "argument {p} of {name} is a key and must be exactly `KEYS[n]` with a literal n from 1 to {}: keys are built by the engine from the id; a key from a variable, ARGV, a concatenation or a call cannot be checked",
                self.declared
            ),
        );
    }
}

const TOO_DEEP: &str = "nested more than 200 expressions deep: split it with locals";

const REDIS_ONLY: &str = "`redis` may only be used as `redis.call('CMD', …)`, `redis.pcall('CMD', …)` or one of redis.error_reply, redis.status_reply, redis.sha1hex, redis.log and redis.LOG_*: any other use (an alias, `redis[...]`, passing it along) hides which keys the op reaches";

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands of the accepted calls of `body` with `keys` declared keys.
    fn ok(body: &str, keys: usize) -> Vec<&'static str> {
        match check(body, keys) {
            Ok(c) => c.calls.iter().map(|c| c.command.name).collect(),
            Err(p) => panic!("refused {body:?}: {p:#?}"),
        }
    }

    fn refused(body: &str, keys: usize) -> Vec<Problem> {
        match check(body, keys) {
            Ok(c) => panic!(
                "accepted {:?} (calls {:?})",
                body.chars().take(200).collect::<String>(),
                c.calls.iter().map(|c| c.command.name).collect::<Vec<_>>()
            ),
            Err(p) => p,
        }
    }

    /// `body` is refused with a problem at `line:column` whose message says `why`.
    #[track_caller]
    fn refused_at(body: &str, keys: usize, line: usize, column: usize, why: &str) {
        let problems = refused(body, keys);
        assert!(
            problems
                .iter()
                .any(|p| p.line == line && p.column == column && p.message.contains(why)),
            "{:?}: no problem at {line}:{column} saying {why:?}: {problems:#?}",
            body.chars().take(200).collect::<String>()
        );
    }

    #[test]
    fn accepts_declared_keys() {
        let body = "local n = redis.call('INCR', KEYS[1])\nredis.call(\"EXPIREAT\", KEYS[1], 5)\nlocal t = redis.call('TIME')\nreturn n";
        assert_eq!(ok(body, 1), vec!["INCR", "EXPIREAT", "TIME"]);
    }

    #[test]
    fn accepts_the_example_plugin_ops() {
        // Every op of every example Lua plugin (plugins/examples/*/*.lua), read by the plugin
        // host itself, passes the check without a problem or a warning.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            for file in std::fs::read_dir(entry.unwrap().path())
                .into_iter()
                .flatten()
            {
                let path = file.unwrap().path();
                if path.extension().and_then(|e| e.to_str()) != Some("lua") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let plugin =
                    crate::plugin::lua::LuaPlugin::load(&name, text.clone(), Default::default())
                        .unwrap();
                for op in &plugin.ops {
                    let compiled = compile(
                        "a",
                        "r",
                        &OpSource {
                            plugin: &name,
                            file: &path,
                            text: &text,
                            op: &op.name,
                            keys: &op.keys,
                            script: &op.script,
                        },
                    );
                    match compiled {
                        Ok(c) => assert!(c.warnings.is_empty(), "{}: {:?}", op.name, c.warnings),
                        Err(d) => panic!("{}: {d:#?}", op.name),
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 1, "no example op found in {}", dir.display());
    }

    #[test]
    fn accepts_ordinary_lua() {
        let body = r#"
local function clamp(x, lo, hi) if x < lo then return lo elseif x > hi then return hi end return x end
local args = { tonumber(ARGV[1]) or 0, ARGV[2] }
local t = {}
for i, v in ipairs(args) do t[#t + 1] = tostring(v) end
for i = 1, 3, 1 do t.n = i end
local ok, decoded = pcall(cjson.decode, ARGV[3] or '{}')
local m = { get = function(self) return self.v end, v = 1 }
function m.put(x) return x end
function m:get2() return self.v end
local n = 0
repeat local k = n n = k + 1 until k >= 2
while n > 5 do n = n - 1 end
do local s = string.format('%d', n) end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.log(redis.LOG_NOTICE, 'exists')
end
local key = KEYS[2]
local v = redis.call('GET', KEYS[1]) or ''
redis.call('HSET', KEYS[2], 'f', v, unpack(ARGV))
redis.call('SET', KEYS[1], select('#', 1, 2), 'PX', 500)
local time = redis.call('TIME')[1]
if v == '' then return redis.error_reply('BADARG empty') end
return { clamp(n, 0, 9), math.floor(1.5), table.concat(t, ','), key, time, redis.sha1hex('x'), m:get() }
"#;
        assert_eq!(ok(body, 2), vec!["EXISTS", "GET", "HSET", "SET", "TIME"]);
    }

    #[test]
    fn strings_and_comments_that_look_like_code_are_not_code() {
        for body in [
            "-- redis.call('KEYS', '*')\nreturn 1",
            "--[[ redis.call('FLUSHALL') ]]\nreturn 1",
            "--[==[ redis.call('FLUSHALL') ]] ]==]\nreturn 1",
            "local s = [[redis.call('FLUSHALL')]] return s",
            "local s = 'redis.call(\"FLUSHALL\") -- ' return s",
            "local s = \"loadstring _G getfenv KEYS[9]\" return s",
        ] {
            assert_eq!(ok(body, 0), Vec::<&str>::new(), "{body}");
        }
    }

    /// The bypasses of the old, text-matching check, each refused at its node.
    #[test]
    fn refuses_the_text_check_bypasses() {
        // A `--` inside a string made the rest of the line a "comment".
        refused_at(
            "local s='--' redis.call('FLUSHALL')",
            1,
            1,
            25,
            "`FLUSHALL` is not a command ops may call",
        );
        // An alias of `redis`.
        refused_at(
            "local r = redis; r.call('FLUSHALL')",
            1,
            1,
            11,
            "`redis` may only be used as",
        );
        // Only the first key of a command was checked.
        refused_at(
            "redis.call('DEL', KEYS[1], 'other')",
            1,
            1,
            28,
            "argument 2 of DEL is a key",
        );
        refused_at(
            "redis.call('MSET', KEYS[1], 'v', 'other', 'v')",
            1,
            1,
            34,
            "argument 3 of MSET is a key",
        );
        refused_at(
            "return redis.call('MGET', KEYS[1], ARGV[1])",
            1,
            1,
            36,
            "argument 2 of MGET is a key",
        );
        refused_at(
            "return redis.call('SUNION', KEYS[1], 'any:set')",
            1,
            1,
            38,
            "argument 2 of SUNION is a key",
        );
        // Keys named in options.
        refused_at(
            "return redis.call('GEORADIUSBYMEMBER', KEYS[1], 'm', 1, 'km', 'STORE', 'other')",
            1,
            1,
            19,
            "`GEORADIUSBYMEMBER` is not a command",
        );
        refused_at(
            "return redis.call('SORT_RO', KEYS[1], 'GET', 'other:*')",
            1,
            1,
            19,
            "`SORT_RO` is not a command",
        );
    }

    #[test]
    fn refuses_other_ways_to_reach_redis() {
        for (body, column, why) in [
            (
                "return redis['call']('GET', KEYS[1])",
                8,
                "`redis` may only",
            ),
            (
                "local c = redis.call return c('GET', KEYS[1])",
                11,
                "called directly",
            ),
            ("return (redis).call('GET', KEYS[1])", 9, "`redis` may only"),
            ("return (redis.call)('GET', KEYS[1])", 9, "called directly"),
            ("return redis:call('GET', KEYS[1])", 8, "`redis` may only"),
            (
                "return pcall(redis.call, 'GET', 'x')",
                14,
                "called directly",
            ),
            (
                "return _G.redis.call('GET', 'x')",
                8,
                "`_G` is not available",
            ),
            (
                "return _G['re'..'dis'].call('FLUSHALL')",
                8,
                "`_G` is not available",
            ),
            ("return debug.getregistry()", 8, "`debug` is not available"),
            ("return require('x')", 8, "`require` is not available"),
            (
                "return getmetatable('').__index",
                8,
                "`getmetatable` is not available",
            ),
            (
                "return getfenv().redis.call('GET', 'x')",
                8,
                "`getfenv` is not available",
            ),
            ("return rawget(_G, 'redis')", 8, "`rawget` is not available"),
            (
                "return loadstring('return 1')()",
                8,
                "`loadstring` is not available",
            ),
            ("return load('x')", 8, "`load` is not available"),
            ("return dofile('x')", 8, "`dofile` is not available"),
            ("setfenv(1, {})", 1, "`setfenv` is not available"),
            (
                "return setmetatable({}, {})",
                8,
                "`setmetatable` is not available",
            ),
            (
                "return redis.setresp(3)",
                8,
                "`redis.setresp` is not available",
            ),
            ("return redis.call", 8, "called directly"),
            ("return redis", 8, "`redis` may only"),
            ("return { r = redis }", 14, "`redis` may only"),
            ("return redis.call { 'GET', KEYS[1] }", 8, "parentheses"),
        ] {
            refused_at(body, 1, 1, column, why);
        }
    }

    #[test]
    fn refuses_shadowing_and_writing_globals() {
        for (body, column, why) in [
            (
                "local redis = { call = function() end } return redis.call('FLUSHALL')",
                7,
                "local named `redis`",
            ),
            (
                "local KEYS = { 'other' } return redis.call('GET', KEYS[1])",
                7,
                "local named `KEYS`",
            ),
            (
                "local function f(KEYS) return redis.call('GET', KEYS[1]) end return f({'x'})",
                18,
                "local named `KEYS`",
            ),
            ("for redis = 1, 2 do end", 5, "local named `redis`"),
            ("for _, KEYS in pairs({}) do end", 8, "local named `KEYS`"),
            ("local function redis() end", 16, "local named `redis`"),
            (
                "KEYS[1] = 'other' return redis.call('GET', KEYS[1])",
                1,
                "changes the global `KEYS`",
            ),
            ("KEYS = { 'other' }", 1, "assigns the global `KEYS`"),
            ("redis = nil", 1, "assigns the global `redis`"),
            ("redis.call = nil", 1, "changes the global `redis`"),
            ("string.format = nil", 1, "changes the global `string`"),
            ("x = 1", 1, "assigns the global `x`"),
            ("function helper() end", 10, "global function `helper`"),
            (
                "function string.lower() end",
                10,
                "changes the global `string`",
            ),
            ("function KEYS:x() end", 10, "changes the global `KEYS`"),
        ] {
            refused_at(body, 1, 1, column, why);
        }
        // Locals of any other name are fine, including names of globals.
        assert_eq!(
            ok(
                "local type = redis.call('TYPE', KEYS[1]) local x x = 1 return type",
                1
            ),
            vec!["TYPE"]
        );
    }

    #[test]
    fn refuses_keys_that_cannot_be_proven() {
        for (body, column, why) in [
            (
                "return redis.call('GET', 'other:key')",
                26,
                "argument 1 of GET is a key",
            ),
            (
                "local k = KEYS[1] return redis.call('GET', k)",
                44,
                "argument 1 of GET is a key",
            ),
            (
                "return redis.call('GET', KEYS[1]..'x')",
                26,
                "argument 1 of GET is a key",
            ),
            (
                "return redis.call('GET', ARGV[1])",
                26,
                "argument 1 of GET is a key",
            ),
            (
                "return redis.call('GET', (KEYS[1]))",
                26,
                "argument 1 of GET is a key",
            ),
            (
                "return redis.call('GET', KEYS[2])",
                31,
                "`KEYS` may only be read as `KEYS[n]` with a literal n from 1 to 1",
            ),
            ("return redis.call('GET', KEYS[0])", 31, "from 1 to 1"),
            ("return redis.call('GET', KEYS[1.0])", 31, "from 1 to 1"),
            ("return redis.call('GET', KEYS[0x1])", 31, "from 1 to 1"),
            ("local i = 1 return KEYS[i]", 25, "`KEYS` may only be read"),
            ("return #KEYS", 9, "`KEYS` may only be read"),
            (
                "return table.concat(KEYS, ',')",
                21,
                "`KEYS` may only be read",
            ),
            (
                "return redis.call(unpack(KEYS))",
                19,
                "plain string literal",
            ),
            (
                "return redis.call('GET', unpack(KEYS))",
                26,
                "can expand into the key positions",
            ),
            (
                "return redis.call('GET', ...)",
                26,
                "can expand into the key positions",
            ),
            (
                "return redis.call('DEL', KEYS[1], unpack(ARGV))",
                35,
                "can expand into the key positions",
            ),
            (
                "return redis.call('MSET', KEYS[1], unpack(ARGV))",
                36,
                "can expand into the key positions",
            ),
            (
                "return redis.call('MGET', KEYS[1], KEYS[1], ...)",
                45,
                "can expand into the key positions",
            ),
            (
                "return redis.call('GET')",
                8,
                "GET needs a key at argument 1",
            ),
            (
                "return redis.call('DEL')",
                8,
                "DEL needs a key at argument 1",
            ),
            (
                "return redis.call('SMOVE', KEYS[1], 'other', 'm')",
                37,
                "argument 2 of SMOVE is a key",
            ),
        ] {
            refused_at(body, 1, 1, column, why);
        }
    }

    #[test]
    fn refuses_command_names_that_are_not_plain() {
        for (body, column) in [
            ("return redis.call('FL\\65SHALL')", 19),
            ("return redis.call(\"FL\\x41USHALL\")", 19),
            ("return redis.call(('FLUSH'..'ALL'))", 19),
            ("local c = 'GET' return redis.call(c, KEYS[1])", 35),
            ("return redis.call(ARGV[1], KEYS[1])", 19),
            ("return redis.call('GET ', KEYS[1])", 19),
            ("return redis.call('', KEYS[1])", 19),
        ] {
            refused_at(body, 1, 1, column, "plain string literal");
        }
        // Letters in any case, in any kind of literal, name the same command.
        assert_eq!(ok("return redis.call([[get]], KEYS[1])", 1), vec!["GET"]);
        assert_eq!(ok("return redis.pcall 'time'", 0), vec!["TIME"]);
    }

    #[test]
    fn refuses_commands_outside_the_allow_list() {
        for cmd in [
            "KEYS",
            "SCAN",
            "FLUSHALL",
            "FLUSHDB",
            "EVAL",
            "EVALSHA",
            "FCALL",
            "SCRIPT",
            "CONFIG",
            "DEBUG",
            "OBJECT",
            "CLIENT",
            "SHUTDOWN",
            "MIGRATE",
            "SELECT",
            "MOVE",
            "COPY",
            "SORT",
            "SORT_RO",
            "GEORADIUS",
            "GEORADIUSBYMEMBER",
            "XREAD",
            "PUBLISH",
            "PERSIST",
            "RENAME",
            "RANDOMKEY",
            "SWAPDB",
            "DUMP",
            "RESTORE",
            "BLPOP",
            "WAIT",
        ] {
            let body = format!("return redis.call('{cmd}', KEYS[1])");
            refused_at(
                &body,
                1,
                1,
                19,
                &format!("`{cmd}` is not a command ops may call"),
            );
        }
    }

    #[test]
    fn multi_key_commands_need_every_key_declared() {
        assert_eq!(
            ok(
                "redis.call('DEL', KEYS[1], KEYS[2])
redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], ARGV[2])
redis.call('SUNIONSTORE', KEYS[3], KEYS[1], KEYS[2])
redis.call('ZUNIONSTORE', KEYS[3], 2, KEYS[1], KEYS[2], 'WEIGHTS', unpack(ARGV))
redis.call('SINTERCARD', 2, KEYS[1], KEYS[2], 'LIMIT', 5)
redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
return redis.call('HMGET', KEYS[1], unpack(ARGV))",
                3
            ),
            vec![
                "DEL",
                "MSET",
                "SUNIONSTORE",
                "ZUNIONSTORE",
                "SINTERCARD",
                "LMOVE",
                "HMGET"
            ]
        );
        // numkeys must be a literal, and cover only declared keys.
        refused_at(
            "return redis.call('ZUNIONSTORE', KEYS[1], ARGV[1], KEYS[2])",
            2,
            1,
            43,
            "(numkeys) must be an integer literal",
        );
        refused_at(
            "return redis.call('ZUNIONSTORE', KEYS[1], 2, KEYS[2], 'other')",
            2,
            1,
            55,
            "argument 4 of ZUNIONSTORE is a key",
        );
        refused_at(
            "return redis.call('ZUNION', 3, KEYS[1], KEYS[2])",
            2,
            1,
            8,
            "ZUNION needs a key at argument 4",
        );
        refused_at(
            "return redis.call('ZUNIONSTORE', 'other', 1, KEYS[1])",
            1,
            1,
            34,
            "argument 1 of ZUNIONSTORE is a key",
        );
    }

    #[test]
    fn reports_every_problem_of_a_script_at_its_place() {
        let body = "local r = redis\nredis.call('GET', KEYS[1])\nredis.call('FLUSHALL')\nx = loadstring('1')\nredis.call('DEL', KEYS[1], ARGV[1])";
        let problems = refused(body, 1);
        let at: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(
            at,
            vec![(1, 11), (3, 12), (4, 1), (4, 5), (5, 28)],
            "{problems:#?}"
        );
    }

    #[test]
    fn large_or_deep_scripts_are_refused_without_crashing() {
        // At the size bound, a flat chain of 32k operators (as deep a tree as a script can
        // give the parser), on a test thread's 2 MiB stack.
        let chain = format!("return 1{}", "+1".repeat((MAX_SCRIPT_BYTES - 8) / 2));
        assert!(chain.len() <= MAX_SCRIPT_BYTES);
        let problems = refused(&chain, 0);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("nested more than 200"));
        let long = format!("return 1 {}", " ".repeat(MAX_SCRIPT_BYTES));
        refused_at(&long, 0, 1, 1, "at most 65536 bytes");
        // The deepest nesting Lua 5.1 compiles is walked in full.
        let mut depth = 190;
        let nested = loop {
            let s = format!("return {}KEYS[1]{}", "(".repeat(depth), ")".repeat(depth));
            if luacheck::check("nested", &s).is_ok() {
                break s;
            }
            depth -= 10;
        };
        assert!(depth >= 100, "{depth}");
        assert!(check(&nested, 1).is_ok());
        refused_at(
            &nested.replace("KEYS[1]", "KEYS[2]"),
            1,
            1,
            13 + depth,
            "from 1 to 1",
        );
    }

    #[test]
    fn the_command_table_is_well_formed() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        for n in &names {
            assert!(
                n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{n}"
            );
        }
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a command is listed twice");
        for c in COMMANDS {
            if let Keys::At(ps) | Keys::Numkeys { fixed: ps, .. } = c.keys {
                assert!(ps.iter().all(|p| *p >= 1), "{}", c.name);
            }
            if let Keys::From { first, step } = c.keys {
                assert!(first >= 1 && step >= 1, "{}", c.name);
            }
        }
    }

    fn source(text: &str, script: &str, keys: &[&str]) -> Result<CompiledOps, Vec<Diagnostic>> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        compile(
            "a",
            "r",
            &OpSource {
                plugin: "p",
                file: Path::new("plugins/p.lua"),
                text,
                op: "o",
                keys: &keys,
                script,
            },
        )
    }

    #[test]
    fn diagnostics_point_into_the_plugin_file() {
        let script = "\nlocal n = 1\nreturn redis.call('KEYS', '*')\n";
        let text = format!(
            "-- a plugin\nreturn {{ ops = {{ o = {{ keys = {{ 'k' }}, script = [[{script}]] }} }} }}\n"
        );
        let diags = source(&text, script, &["k"]).unwrap_err();
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert!(
            shown[0].starts_with(
                "plugins/p.lua:4:19: error: op `o` (rule a/r): `KEYS` is not a command"
            ),
            "{shown:#?}"
        );
        // A script written with escapes is not found verbatim: the file's start, and the
        // position in the script.
        let diags = source("return {}", "return redis.call('KEYS', '*')", &["k"]).unwrap_err();
        assert!(
            diags[0].to_string().starts_with(
                "plugins/p.lua:1:1: error: op `o` (rule a/r), script line 1, column 19:"
            ),
            "{diags:#?}"
        );
        // Syntax errors come from the Lua 5.1 compiler Redis embeds.
        let diags = source("", "return 7 // 2", &[]).unwrap_err();
        assert!(
            diags[0].message.contains("does not compile as Lua 5.1"),
            "{diags:#?}"
        );
        let diags = source("", "#!lua flags=allow-cross-slot-keys\nreturn 1", &[]).unwrap_err();
        assert!(diags[0].message.contains("`#!` flags line"), "{diags:#?}");
        let diags = source("", "return 1", &["bad key"]).unwrap_err();
        assert!(
            diags[0].message.contains("key name `bad key`"),
            "{diags:#?}"
        );
    }

    #[test]
    fn warns_on_writes_without_expiry() {
        let warnings = |body: &str| source("", body, &["k"]).unwrap().warnings;
        assert_eq!(warnings("return redis.call('INCR', KEYS[1])").len(), 1);
        assert!(
            warnings(
                "local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], 60) return n"
            )
            .is_empty()
        );
        let w = warnings("return redis.call('SET', KEYS[1], ARGV[1], 'ex', 60)");
        assert!(w.is_empty(), "{w:?}");
        // An EX elsewhere in the script (not an option of the SET) is no expiry.
        let w = warnings("redis.call('SET', KEYS[1], ARGV[1]) return 'EX'");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(warnings("return redis.call('DEL', KEYS[1])").is_empty());
    }
}
