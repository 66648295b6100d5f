//! The Lua plugin host (mlua, Lua 5.1 — the same build that checks Redis scripts).
//!
//! A Lua plugin is a text chunk returning a table of hooks named like the WIT exports
//! (`init`, `rate_limit`, `cache`, `session`, `queue`, `pubsub`, `stream`, `leaderboard`; records are Lua tables) and optionally `ops`,
//! Redis-side operations (see `registry`). Sandbox: only the `table`, `string` and `math`
//! libraries; no `io`, `os`, `require`, `debug`, `load*`, `dofile`, `string.dump`, or any way
//! to load bytecode; `print` goes to patternd's log. Each call gets an instruction budget
//! (a count hook) and each instance a memory limit. Instances are kept warm in a small pool;
//! one that failed a call is dropped, never reused.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, IntoLua, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::decision::{
    CacheDecision, DynLimit, LeaderboardDecision, PubSubDecision, QueueChoice, QueueDecision,
    RateLimitDecision, RequestFacts, SessionDecision, SessionFacts, StreamDecision, Submission,
};
use super::pool::WarmPool;
use super::{Limits, PluginError};
use crate::policy::Algorithm;

/// Instructions between two budget checks: small enough that a runaway loop stops within a
/// fraction of a millisecond past its budget, large enough to cost nothing measurable.
const HOOK_EVERY: u32 = 1000;
/// Warm instances kept per binding.
const POOL_MAX: usize = 8;

/// A loaded Lua plugin: its source, checked once.
#[derive(Debug)]
pub struct LuaPlugin {
    pub name: String,
    source: Arc<str>,
    pub hooks: Vec<&'static str>,
    /// `ops` declared by the plugin: (name, keys, script body).
    pub ops: Vec<LuaOpDecl>,
    limits: Limits,
}

#[derive(Debug, Clone)]
pub struct LuaOpDecl {
    pub name: String,
    pub keys: Vec<String>,
    pub script: String,
}

const HOOKS: [&str; 8] = [
    "init",
    "rate_limit",
    "cache",
    "session",
    "queue",
    "pubsub",
    "stream",
    "leaderboard",
];

impl LuaPlugin {
    /// Compiles the chunk and runs it once in a sandbox to read its table of hooks and ops.
    pub fn load(name: &str, source: String, limits: Limits) -> Result<Self, PluginError> {
        let source: Arc<str> = Arc::from(source);
        let mut plugin = LuaPlugin {
            name: name.to_string(),
            source,
            hooks: Vec::new(),
            ops: Vec::new(),
            limits,
        };
        let inst = plugin.instance()?;
        let table = inst.table()?;
        for hook in HOOKS {
            match table.get::<Value>(hook) {
                Ok(Value::Function(_)) => plugin.hooks.push(hook),
                Ok(Value::Nil) => {}
                Ok(other) => {
                    return Err(plugin.load_err(format!(
                        "`{hook}` must be a function, not a {}",
                        other.type_name()
                    )));
                }
                Err(e) => return Err(plugin.load_err(e.to_string())),
            }
        }
        plugin.ops = read_ops(&plugin, &table)?;
        Ok(plugin)
    }

    /// The plugin's text (the checks of its ops place their diagnostics in it).
    pub fn source(&self) -> &str {
        &self.source
    }

    fn load_err(&self, message: String) -> PluginError {
        PluginError::Load {
            plugin: self.name.clone(),
            message,
        }
    }

    /// A fresh sandboxed state with the plugin's table in the registry.
    fn instance(&self) -> Result<Instance, PluginError> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH;
        let lua =
            Lua::new_with(libs, LuaOptions::new()).map_err(|e| self.load_err(e.to_string()))?;
        let call: Function = lua
            .load(FACTS_CALL)
            .set_name("=patternd")
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(|e| self.load_err(e.to_string()))?;
        let names = DecisionNames::new(&lua).map_err(|e| self.load_err(e.to_string()))?;
        sandbox(&lua, &self.name).map_err(|e| self.load_err(e.to_string()))?;
        let used = Arc::new(AtomicU64::new(0));
        let budget = self.limits.instructions;
        let counter = used.clone();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                let n = counter.fetch_add(u64::from(HOOK_EVERY), Ordering::Relaxed);
                if n + u64::from(HOOK_EVERY) > budget {
                    Err(mlua::Error::runtime(BUDGET_MARK))
                } else {
                    Ok(VmState::Continue)
                }
            },
        )
        .map_err(|e| self.load_err(e.to_string()))?;
        lua.set_memory_limit(self.limits.memory_bytes)
            .map_err(|e| self.load_err(e.to_string()))?;
        used.store(0, Ordering::Relaxed);
        let table: Table = lua
            .load(&*self.source)
            .set_name(format!("={}", self.name))
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(|e| self.classify(&e, true))?;
        let key = lua
            .create_registry_value(table)
            .map_err(|e| self.load_err(e.to_string()))?;
        Ok(Instance {
            lua,
            table: key,
            used,
            call,
            hooks: Default::default(),
            names,
        })
    }

    fn classify(&self, e: &mlua::Error, loading: bool) -> PluginError {
        let text = e.to_string();
        let plugin = self.name.clone();
        if text.contains(BUDGET_MARK) {
            PluginError::Budget { plugin }
        } else if matches!(e, mlua::Error::MemoryError(_)) || text.contains("not enough memory") {
            PluginError::Memory { plugin }
        } else if loading {
            PluginError::Load {
                plugin,
                message: text,
            }
        } else {
            PluginError::Trap {
                plugin,
                message: first_line(&text),
            }
        }
    }

    /// Binds the plugin to a rule: one warm instance initialized with the rule's config now
    /// (so a config the plugin refuses fails the policy load), more on demand.
    pub fn bind(self: &Arc<Self>, config: serde_json::Value) -> Result<LuaBinding, PluginError> {
        let binding = LuaBinding {
            plugin: self.clone(),
            config,
            pool: WarmPool::new(POOL_MAX),
        };
        let inst = binding.new_instance()?;
        binding.release(inst);
        Ok(binding)
    }
}

const BUDGET_MARK: &str = "patternd: instruction budget exceeded";

/// Calls a hook with the request facts built in Lua from plain arguments:
/// `(hook, method, path, id, cost, client_addr, fields, name1, value1, …, [extra])`.
/// Building the table through the API costs a protected call (a `pcall` and a C closure) for
/// every key and value once a memory limit is set; passing them as arguments and building the
/// table here costs a few VM instructions. It uses no globals, so a plugin cannot change it.
/// `extra` (the session hook's session, the queue hook's payload, the pubsub hook's channel, op
/// and message: at most three) follows the header pairs; `nh` is their count.
const FACTS_CALL: &str = r#"
return function(hook, method, path, id, cost, addr, fields, nh, ...)
  local a = { ... }
  local h = {}
  for i = 1, nh * 2, 2 do h[a[i]] = a[i + 1] end
  return hook({ method = method, path = path, id = id, cost = cost, headers = h,
                client_addr = addr, fields = fields or {} },
              a[nh * 2 + 1], a[nh * 2 + 2], a[nh * 2 + 3])
end
"#;

struct Instance {
    lua: Lua,
    table: mlua::RegistryKey,
    used: Arc<AtomicU64>,
    /// `FACTS_CALL`, compiled once per instance.
    call: Function,
    /// The hooks (in `HOOKS` order), looked up on first use after `init`.
    hooks: [Option<Function>; 8],
    /// The rate-limit decision's field names as Lua strings, made once: pushing a Lua string
    /// is a reference copy, while pushing a Rust `&str` is a protected call that may allocate.
    names: DecisionNames,
}

struct DecisionNames {
    deny: mlua::LuaString,
    skip: mlua::LuaString,
    check: mlua::LuaString,
    algorithm: mlua::LuaString,
    limit: mlua::LuaString,
    window_ms: mlua::LuaString,
    key_suffix: mlua::LuaString,
    cost: mlua::LuaString,
    burst: mlua::LuaString,
    /// Recurring short strings of the facts (header names, the method), made once per
    /// instance for the same reason. Bounded: names are caller-chosen, so past
    /// `INTERNED_MAX` entries (or for long names) strings are made per call as before.
    interned: RefCell<Vec<(Box<str>, mlua::LuaString)>>,
}

/// Most strings one instance keeps in `DecisionNames::interned`, and the longest.
const INTERNED_MAX: usize = 32;
const INTERNED_MAX_LEN: usize = 128;

impl DecisionNames {
    fn new(lua: &Lua) -> mlua::Result<Self> {
        Ok(Self {
            deny: lua.create_string("deny")?,
            skip: lua.create_string("skip")?,
            check: lua.create_string("check")?,
            algorithm: lua.create_string("algorithm")?,
            limit: lua.create_string("limit")?,
            window_ms: lua.create_string("window_ms")?,
            key_suffix: lua.create_string("key_suffix")?,
            cost: lua.create_string("cost")?,
            burst: lua.create_string("burst")?,
            interned: RefCell::new(Vec::with_capacity(8)),
        })
    }

    /// `text` as a Lua string, from the instance's interned strings when it recurs.
    fn intern(&self, lua: &Lua, text: &str) -> mlua::Result<mlua::LuaString> {
        let mut interned = self.interned.borrow_mut();
        if let Some((_, s)) = interned.iter().find(|(t, _)| &**t == text) {
            return Ok(s.clone());
        }
        let s = lua.create_string(text)?;
        if interned.len() < INTERNED_MAX && text.len() <= INTERNED_MAX_LEN {
            interned.push((text.into(), s.clone()));
        }
        Ok(s)
    }
}

impl Instance {
    fn table(&self) -> Result<Table, PluginError> {
        self.lua
            .registry_value(&self.table)
            .map_err(|e| PluginError::Trap {
                plugin: String::new(),
                message: e.to_string(),
            })
    }
}

/// A Lua plugin bound to one rule's config.
pub struct LuaBinding {
    plugin: Arc<LuaPlugin>,
    config: serde_json::Value,
    pool: WarmPool<Instance>,
}

impl LuaBinding {
    fn new_instance(&self) -> Result<Instance, PluginError> {
        let inst = self.plugin.instance()?;
        if !self.plugin.hooks.contains(&"init") {
            return Ok(inst);
        }
        let init_err = |message: String| PluginError::Init {
            plugin: self.plugin.name.clone(),
            message,
        };
        let outcome = inst.table().and_then(|t| {
            let cfg = json_to_lua(&inst.lua, &self.config).map_err(|e| init_err(e.to_string()))?;
            let init: Function = t.get("init").map_err(|e| init_err(e.to_string()))?;
            init.call::<Value>(cfg)
                .map_err(|e| match self.plugin.classify(&e, false) {
                    PluginError::Trap { message, .. } => init_err(message),
                    other => other,
                })
        })?;
        match outcome {
            Value::Nil | Value::Boolean(true) => Ok(inst),
            Value::String(s) => Err(init_err(s.to_string_lossy().to_string())),
            other => Err(init_err(format!(
                "init returned a {}; return nothing, or an error message",
                other.type_name()
            ))),
        }
    }

    fn release(&self, inst: Instance) {
        self.pool.put(inst);
    }

    /// Runs `f` on a warm instance with a fresh budget. A failed instance is dropped.
    fn with_instance<T>(
        &self,
        hook: &'static str,
        f: impl FnOnce(&Lua, &Function, &Function, &DecisionNames) -> mlua::Result<T>,
    ) -> Result<T, PluginError> {
        let slot = HOOKS.iter().position(|h| *h == hook);
        let Some(slot) = slot.filter(|_| self.plugin.hooks.contains(&hook)) else {
            return Err(PluginError::MissingHook {
                plugin: self.plugin.name.clone(),
                hook,
            });
        };
        let popped = self.pool.take();
        let mut inst = match popped {
            Some(i) => i,
            None => self.new_instance()?,
        };
        inst.used.store(0, Ordering::Relaxed);
        // The hook function is looked up once per instance (after `init`, which may have set
        // it), not per call.
        if inst.hooks[slot].is_none() {
            let func = inst.table().and_then(|t| {
                t.get::<Function>(hook)
                    .map_err(|e| self.plugin.classify(&e, false))
            });
            match func {
                Ok(func) => inst.hooks[slot] = Some(func),
                Err(e) => return Err(e),
            }
        }
        let result = match &inst.hooks[slot] {
            Some(func) => f(&inst.lua, &inst.call, func, &inst.names)
                .map_err(|e| self.plugin.classify(&e, false)),
            None => Err(PluginError::MissingHook {
                plugin: self.plugin.name.clone(),
                hook,
            }),
        };
        if result.is_ok() {
            self.release(inst);
        }
        result
    }

    pub fn rate_limit(&self, req: &RequestFacts) -> Result<RateLimitDecision, PluginError> {
        let name = self.plugin.name.as_str();
        let d = self.with_instance("rate_limit", |lua, call, func, names| {
            let out = call_with_facts(lua, call, func, names, req, true, &[])?;
            // Read while the instance is held: the names are its strings.
            Ok(lua_to_rate_limit(name, out, req.cost, names))
        })??;
        super::decision::validate_rate_limit(name, d, &self.plugin.limits)
    }

    pub fn cache(&self, req: &RequestFacts) -> Result<CacheDecision, PluginError> {
        let name = self.plugin.name.clone();
        let limits = self.plugin.limits;
        let out = self.with_instance("cache", |lua, call, func, names| {
            call_with_facts(lua, call, func, names, req, false, &[])
        })?;
        // The same bounds as a WASM plugin's decision (a TTL Redis can express, no empty tag).
        super::decision::validate_cache(&name, lua_to_cache(&name, out, &limits)?, &limits)
    }

    pub fn session(
        &self,
        req: &RequestFacts,
        session: &SessionFacts<'_>,
    ) -> Result<SessionDecision, PluginError> {
        let name = self.plugin.name.clone();
        let out = self.with_instance("session", |lua, call, func, names| {
            let s = lua.create_table()?;
            s.set("user", session.user)?;
            s.set("created_ms", session.created_ms)?;
            s.set("last_seen_ms", session.last_seen_ms)?;
            let d = lua.create_table()?;
            for (k, v) in session.data {
                let parsed: serde_json::Value =
                    serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone()));
                d.set(k.as_str(), json_to_lua(lua, &parsed)?)?;
            }
            s.set("data", d)?;
            call_with_facts(lua, call, func, names, req, false, &[Value::Table(s)])
        })?;
        let d = match out {
            Value::Nil | Value::Boolean(true) => SessionDecision::Allow,
            Value::String(s) if s.to_string_lossy() == "allow" => SessionDecision::Allow,
            Value::Table(t) => match t.get::<Value>("reject") {
                Ok(Value::Nil | Value::Boolean(false)) => SessionDecision::Allow,
                // A `reject` that is no text (`true`, a table, bytes that are not UTF-8) still
                // asked to reject: it fails the call, never turns into an allow.
                _ => match t.get::<String>("reject") {
                    Ok(reason) => SessionDecision::Reject(reason),
                    Err(e) => {
                        return Err(PluginError::BadOutput {
                            plugin: name,
                            message: format!("`reject` must be a text reason: {e}"),
                        });
                    }
                },
            },
            other => {
                return Err(PluginError::BadOutput {
                    plugin: name,
                    message: format!("session hook returned a {}", other.type_name()),
                });
            }
        };
        super::decision::validate_session(&name, d, &self.plugin.limits)
    }

    /// The queue hook, with the job's payload (JSON text, handed to Lua decoded: tables,
    /// `null` → nil). `max_delay_ms`: the rule's bound on a chosen delay.
    pub fn queue(
        &self,
        req: &RequestFacts,
        payload: &str,
        max_delay_ms: u64,
    ) -> Result<QueueDecision, PluginError> {
        let name = self.plugin.name.clone();
        let out = self.with_instance("queue", |lua, call, func, names| {
            let parsed: serde_json::Value =
                serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
            let payload = json_to_lua(lua, &parsed)?;
            let out = call_with_facts(lua, call, func, names, req, false, &[payload])?;
            // Read while the instance is held: a table of its state.
            Ok(lua_to_queue(&name, out))
        })??;
        super::decision::validate_queue(&name, out, &self.plugin.limits, max_delay_ms)
    }

    /// The pubsub hook: `pubsub(req, channel, op, message)` with `op` `"publish"` (and the
    /// message as a string) or `"subscribe"` (and nil).
    pub fn pubsub(
        &self,
        req: &RequestFacts,
        channel: &str,
        message: Option<&str>,
    ) -> Result<PubSubDecision, PluginError> {
        let name = self.plugin.name.clone();
        let out = self.with_instance("pubsub", |lua, call, func, names| {
            let op = if message.is_some() {
                "publish"
            } else {
                "subscribe"
            };
            let extra = [
                Value::String(lua.create_string(channel)?),
                Value::String(names.intern(lua, op)?),
                match message {
                    Some(m) => Value::String(lua.create_string(m)?),
                    None => Value::Nil,
                },
            ];
            let out = call_with_facts(lua, call, func, names, req, false, &extra)?;
            Ok(lua_to_pubsub(&name, out))
        })??;
        super::decision::validate_pubsub(&name, out, &self.plugin.limits)
    }

    /// The stream hook: `stream(req, entry)` with the entry decoded (tables; JSON null is nil).
    pub fn stream(&self, req: &RequestFacts, entry: &str) -> Result<StreamDecision, PluginError> {
        let name = self.plugin.name.clone();
        let out = self.with_instance("stream", |lua, call, func, names| {
            let parsed: serde_json::Value =
                serde_json::from_str(entry).unwrap_or(serde_json::Value::Null);
            let entry = json_to_lua(lua, &parsed)?;
            let out = call_with_facts(lua, call, func, names, req, false, &[entry])?;
            Ok(lua_to_stream(&name, out))
        })??;
        super::decision::validate_stream(&name, out, &self.plugin.limits)
    }

    /// The leaderboard hook: `leaderboard(req, s)` with `s` a table `{ app, rule, board,
    /// member, score }`.
    pub fn leaderboard(
        &self,
        req: &RequestFacts,
        s: &Submission,
    ) -> Result<LeaderboardDecision, PluginError> {
        let name = self.plugin.name.clone();
        let out = self.with_instance("leaderboard", |lua, call, func, names| {
            let t = lua.create_table()?;
            t.set("app", s.app.as_str())?;
            t.set("rule", s.rule.as_str())?;
            t.set("board", s.board.as_str())?;
            t.set("member", s.member.as_str())?;
            t.set("score", s.score)?;
            let out = call_with_facts(lua, call, func, names, req, false, &[Value::Table(t)])?;
            Ok(lua_to_leaderboard(&name, out))
        })??;
        super::decision::validate_leaderboard(&name, out, &self.plugin.limits)
    }
}

/// `nil`, `true` or `'accept'`: accept; `{ reject = reason }`: reject; `{ score = n }`: record
/// `n` instead.
fn lua_to_leaderboard(plugin: &str, v: Value) -> Result<LeaderboardDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match v {
        Value::Nil | Value::Boolean(true) => Ok(LeaderboardDecision::Accept),
        Value::String(s) if s.to_string_lossy() == "accept" => Ok(LeaderboardDecision::Accept),
        Value::Table(t) => match (t.get::<Value>("reject"), t.get::<Value>("score")) {
            (Ok(Value::String(r)), Ok(Value::Nil)) => {
                Ok(LeaderboardDecision::Reject(r.to_string_lossy()))
            }
            (Ok(Value::Nil), Ok(Value::Integer(n))) => Ok(LeaderboardDecision::Score(n as f64)),
            (Ok(Value::Nil), Ok(Value::Number(n))) => Ok(LeaderboardDecision::Score(n)),
            _ => Err(bad(
                "a leaderboard decision is `{ reject = reason }` or `{ score = number }`".into(),
            )),
        },
        other => Err(bad(format!(
            "leaderboard hook returned a {}",
            other.type_name()
        ))),
    }
}

/// `nil`, `true` or `'accept'`: accept; `{ reject = reason }`: reject.
fn lua_to_stream(plugin: &str, v: Value) -> Result<StreamDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match v {
        Value::Nil | Value::Boolean(true) => Ok(StreamDecision::Accept),
        Value::String(s) if s.to_string_lossy() == "accept" => Ok(StreamDecision::Accept),
        Value::Table(t) => match t.get::<String>("reject") {
            Ok(reason) => Ok(StreamDecision::Reject(reason)),
            Err(e) => Err(bad(format!("`reject` must be a text reason: {e}"))),
        },
        other => Err(bad(format!("stream hook returned a {}", other.type_name()))),
    }
}

/// `nil`, `true` or `'allow'`: allow; `false` or `{ reject = reason }`: reject.
fn lua_to_pubsub(plugin: &str, v: Value) -> Result<PubSubDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    match v {
        Value::Nil | Value::Boolean(true) => Ok(PubSubDecision::Allow),
        Value::Boolean(false) => Ok(PubSubDecision::Reject("rejected by the plugin".into())),
        Value::String(s) if s.to_string_lossy() == "allow" => Ok(PubSubDecision::Allow),
        // As with sessions: a `reject` that is no text still asked to reject, and fails the
        // call rather than turning into an allow.
        Value::Table(t) => match t.get::<String>("reject") {
            Ok(reason) => Ok(PubSubDecision::Reject(reason)),
            Err(e) => Err(bad(format!("`reject` must be a text reason: {e}"))),
        },
        other => Err(bad(format!("pubsub hook returned a {}", other.type_name()))),
    }
}

/// `nil`, `true` or `'accept'`: accept as pushed; `{ reject = reason }`; or
/// `{ delay_ms =, priority =, dedup_id = }` (each optional): accept with those.
fn lua_to_queue(plugin: &str, v: Value) -> Result<QueueDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    let t = match v {
        Value::Nil | Value::Boolean(true) => {
            return Ok(QueueDecision::Accept(QueueChoice::default()));
        }
        Value::String(s) if s.to_string_lossy() == "accept" => {
            return Ok(QueueDecision::Accept(QueueChoice::default()));
        }
        Value::Table(t) => t,
        other => return Err(bad(format!("queue hook returned a {}", other.type_name()))),
    };
    match t.get::<Value>("reject") {
        Ok(Value::Nil | Value::Boolean(false)) => {}
        // As with sessions: a `reject` that is no text still asked to reject, and fails the
        // call rather than turning into an accept.
        _ => {
            return match t.get::<String>("reject") {
                Ok(reason) => Ok(QueueDecision::Reject(reason)),
                Err(e) => Err(bad(format!("`reject` must be a text reason: {e}"))),
            };
        }
    }
    let whole = |k: &str, max: f64| -> Result<Option<u64>, PluginError> {
        match t.get::<Value>(k) {
            Ok(Value::Nil) => Ok(None),
            Ok(Value::Integer(n)) if n >= 0 && (n as f64) <= max => Ok(Some(n as u64)),
            Ok(Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n <= max => Ok(Some(n as u64)),
            _ => Err(bad(format!("`{k}` must be a whole number from 0 to {max}"))),
        }
    };
    let delay_ms = whole("delay_ms", 9.0e15)?;
    let priority = whole("priority", f64::from(super::decision::MAX_QUEUE_PRIORITY))?
        .map(|p| u8::try_from(p).unwrap_or(u8::MAX));
    let dedup_id = match t.get::<Value>("dedup_id") {
        Ok(Value::Nil) => None,
        Ok(Value::String(s)) => match s.to_str() {
            Ok(s) => Some(s.to_string()),
            Err(_) => return Err(bad("`dedup_id` must be text".into())),
        },
        _ => return Err(bad("`dedup_id` must be text".into())),
    };
    Ok(QueueDecision::Accept(QueueChoice {
        delay_ms,
        priority,
        dedup_id,
    }))
}

/// Removes everything that reaches outside the sandbox or loads code other than this text.
fn sandbox(lua: &Lua, plugin: &str) -> mlua::Result<()> {
    let g = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "require",
        "module",
        "collectgarbage",
        "getfenv",
        "setfenv",
        "newproxy",
        "gcinfo",
        "print",
        "rawequal",
        "rawget",
        "rawset",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    if let Ok(string) = g.get::<Table>("string") {
        string.raw_set("dump", Value::Nil)?;
    }
    let tag = plugin.to_string();
    let log = lua.create_function(move |_, (level, msg): (String, mlua::LuaString)| {
        let msg = msg.to_string_lossy();
        match level.as_str() {
            "error" => tracing::error!(plugin = %tag, "{msg}"),
            "warn" => tracing::warn!(plugin = %tag, "{msg}"),
            "debug" => tracing::debug!(plugin = %tag, "{msg}"),
            _ => tracing::info!(plugin = %tag, "{msg}"),
        }
        Ok(())
    })?;
    let host = lua.create_table()?;
    host.set("log", log)?;
    let now = lua.create_function(|_, ()| {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0))
    })?;
    host.set("now_ms", now)?;
    g.set("patternd", host)?;
    Ok(())
}

fn read_ops(plugin: &LuaPlugin, table: &Table) -> Result<Vec<LuaOpDecl>, PluginError> {
    let ops: Value = table
        .get("ops")
        .map_err(|e| plugin.load_err(e.to_string()))?;
    let ops = match ops {
        Value::Nil => return Ok(Vec::new()),
        Value::Table(t) => t,
        other => {
            return Err(plugin.load_err(format!(
                "`ops` must be a table, not a {}",
                other.type_name()
            )));
        }
    };
    let mut out = Vec::new();
    for pair in ops.pairs::<String, Table>() {
        let (name, decl) = pair.map_err(|e| plugin.load_err(format!("`ops`: {e}")))?;
        let keys: Vec<String> = decl
            .get::<Option<Vec<String>>>("keys")
            .map_err(|e| {
                plugin.load_err(format!("op `{name}`: `keys` must be a list of names: {e}"))
            })?
            .unwrap_or_default();
        let script: String = decl
            .get::<Option<String>>("script")
            .map_err(|e| plugin.load_err(format!("op `{name}`: {e}")))?
            .ok_or_else(|| plugin.load_err(format!("op `{name}` has no `script`")))?;
        out.push(LuaOpDecl { name, keys, script });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// Calls `func(facts[, extra])` through `FACTS_CALL`. `path_recurs`: the path is one of a
/// few per binding, worth interning.
fn call_with_facts(
    lua: &Lua,
    call: &Function,
    func: &Function,
    names: &DecisionNames,
    req: &RequestFacts,
    path_recurs: bool,
    extra: &[Value],
) -> mlua::Result<Value> {
    let mut args = mlua::MultiValue::with_capacity(9 + req.headers.len() * 2);
    args.push_back(Value::Function(func.clone()));
    args.push_back(Value::String(names.intern(lua, &req.method)?));
    // A rate-limit rule's path is the same on every call (the id travels in the body or a
    // header); a cache rule's holds the id, so interning it would only fill the table.
    args.push_back(Value::String(if path_recurs {
        names.intern(lua, &req.path)?
    } else {
        lua.create_string(&req.path)?
    }));
    args.push_back(Value::String(lua.create_string(&req.id)?));
    args.push_back(req.cost.into_lua(lua)?);
    args.push_back(match &req.client_addr {
        Some(a) => Value::String(lua.create_string(a)?),
        None => Value::Nil,
    });
    args.push_back(if req.fields.is_empty() {
        Value::Nil
    } else {
        let f = lua.create_table()?;
        for (k, v) in &req.fields {
            let parsed: serde_json::Value =
                serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
            f.set(k.as_str(), json_to_lua(lua, &parsed)?)?;
        }
        Value::Table(f)
    });
    args.push_back(req.headers.len().into_lua(lua)?);
    for (k, v) in &req.headers {
        args.push_back(Value::String(names.intern(lua, k)?));
        args.push_back(Value::String(lua.create_string(v)?));
    }
    args.extend(extra.iter().cloned());
    call.call::<Value>(args)
}

/// JSON → Lua (tables for arrays and objects; `null` → nil).
pub fn json_to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Number(i as f64),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table()?;
            for (i, x) in a.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.raw_set(k.as_str(), json_to_lua(lua, x)?)?;
            }
            Value::Table(t)
        }
    })
}

fn lua_to_rate_limit(
    plugin: &str,
    v: Value,
    default_cost: u64,
    names: &DecisionNames,
) -> Result<RateLimitDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    let t = match v {
        Value::String(s) if s.to_string_lossy() == "skip" => return Ok(RateLimitDecision::Skip),
        Value::Nil => return Ok(RateLimitDecision::Skip),
        Value::Table(t) => t,
        other => {
            return Err(bad(format!(
                "expected a table, got a {}",
                other.type_name()
            )));
        }
    };
    if let Ok(Some(reason)) = t.get::<Option<String>>(&names.deny) {
        return Ok(RateLimitDecision::Deny(reason));
    }
    if let Ok(Some(true)) = t.get::<Option<bool>>(&names.skip) {
        return Ok(RateLimitDecision::Skip);
    }
    let list: Table = match t.get::<Value>(&names.check) {
        Ok(Value::Table(l)) => l,
        _ => {
            return Err(bad(
                "expected `{ skip = true }`, `{ deny = reason }` or `{ check = { limits… } }`"
                    .into(),
            ));
        }
    };
    let mut out = Vec::new();
    for (i, item) in list.sequence_values::<Table>().enumerate() {
        if i >= 64 {
            return Err(bad("too many limits".into()));
        }
        let l = item.map_err(|e| bad(format!("limit {}: {e}", i + 1)))?;
        let num = |name: &mlua::LuaString, k: &str| -> Result<Option<u64>, PluginError> {
            match l.get::<Value>(name) {
                Ok(Value::Nil) => Ok(None),
                Ok(Value::Integer(n)) if n >= 0 => Ok(Some(n as u64)),
                Ok(Value::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n < 9.0e15 => {
                    Ok(Some(n as u64))
                }
                _ => Err(bad(format!(
                    "limit {}: `{k}` must be a whole number ≥ 0",
                    i + 1
                ))),
            }
        };
        let alg_name: String = l
            .get::<Option<String>>(&names.algorithm)
            .ok()
            .flatten()
            .unwrap_or_else(|| "fixed_window".to_string());
        let algorithm = Algorithm::parse(&alg_name.replace('-', "_"))
            .ok_or_else(|| bad(format!("limit {}: unknown algorithm `{alg_name}`", i + 1)))?;
        let limit = num(&names.limit, "limit")?
            .ok_or_else(|| bad(format!("limit {}: missing `limit`", i + 1)))?;
        let window_ms = num(&names.window_ms, "window_ms")?
            .ok_or_else(|| bad(format!("limit {}: missing `window_ms`", i + 1)))?;
        let key_suffix: String = l
            .get::<Option<String>>(&names.key_suffix)
            .ok()
            .flatten()
            .ok_or_else(|| bad(format!("limit {}: missing `key_suffix`", i + 1)))?;
        out.push(DynLimit {
            key_suffix,
            cost: num(&names.cost, "cost")?.unwrap_or(default_cost),
            limit,
            window_ms,
            burst: num(&names.burst, "burst")?.unwrap_or(limit),
            algorithm,
        });
    }
    Ok(RateLimitDecision::Check(out))
}

fn lua_to_cache(plugin: &str, v: Value, limits: &Limits) -> Result<CacheDecision, PluginError> {
    let bad = |message: String| PluginError::BadOutput {
        plugin: plugin.to_string(),
        message,
    };
    let t = match v {
        Value::Nil => return Ok(CacheDecision::default()),
        Value::Table(t) => t,
        other => {
            return Err(bad(format!(
                "expected a table, got a {}",
                other.type_name()
            )));
        }
    };
    let key: Option<String> = t.get("key").map_err(|e| bad(format!("`key`: {e}")))?;
    if key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > limits.max_string_bytes)
    {
        return Err(bad("`key` must be 1 to 1024 bytes".into()));
    }
    let ttl_ms = match t.get::<Value>("ttl_ms") {
        Ok(Value::Nil) => None,
        Ok(Value::Integer(n)) if n > 0 => Some(n as u64),
        Ok(Value::Number(n)) if n > 0.0 && n < 9.0e15 => Some(n as u64),
        _ => return Err(bad("`ttl_ms` must be a positive number".into())),
    };
    let bypass: bool = t
        .get::<Option<bool>>("bypass")
        .ok()
        .flatten()
        .unwrap_or(false);
    let tags: Vec<String> = t
        .get::<Option<Vec<String>>>("tags")
        .map_err(|e| bad(format!("`tags`: {e}")))?
        .unwrap_or_default();
    if tags.len() > limits.max_output_items
        || tags.iter().any(|s| s.len() > limits.max_string_bytes)
    {
        return Err(bad("too many or too long tags".into()));
    }
    Ok(CacheDecision {
        key,
        ttl_ms,
        bypass,
        tags,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn plugin(src: &str) -> Result<Arc<LuaPlugin>, PluginError> {
        LuaPlugin::load("t", src.to_string(), Limits::default()).map(Arc::new)
    }

    fn facts(tier: &str) -> RequestFacts {
        RequestFacts {
            method: "POST".into(),
            path: "/v1/ratelimit/a/r".into(),
            id: "u1".into(),
            cost: 1,
            headers: vec![("x-tier".into(), tier.into())],
            ..RequestFacts::default()
        }
    }

    const TIERED: &str = r#"
        local cfg
        return {
          init = function(c) cfg = c; if not c.tiers then return "config needs `tiers`" end end,
          rate_limit = function(req)
            local tier = req.headers[cfg.header] or cfg.default
            local t = cfg.tiers[tier] or cfg.tiers[cfg.default]
            return { check = { { key_suffix = tier, limit = t.limit, window_ms = t.window_ms } } }
          end,
        }
    "#;

    #[test]
    fn decides_from_config_and_headers() {
        let p = plugin(TIERED).unwrap();
        let cfg = serde_json::json!({"header": "x-tier", "default": "free",
            "tiers": {"free": {"limit": 2, "window_ms": 60000}, "pro": {"limit": 5, "window_ms": 60000}}});
        let b = p.bind(cfg).unwrap();
        let RateLimitDecision::Check(l) = b.rate_limit(&facts("pro")).unwrap() else {
            panic!("expected check")
        };
        assert_eq!(
            (l[0].key_suffix.as_str(), l[0].limit, l[0].cost),
            ("pro", 5, 1)
        );
        // Many calls reuse warm instances.
        for _ in 0..100 {
            b.rate_limit(&facts("free")).unwrap();
        }
    }

    #[test]
    fn init_can_refuse_a_config() {
        let p = plugin(TIERED).unwrap();
        let err = p.bind(serde_json::json!({})).err().unwrap();
        assert!(
            matches!(err, PluginError::Init { ref message, .. } if message.contains("tiers")),
            "{err}"
        );
    }

    #[test]
    fn sandbox_has_no_escape_hatches() {
        let p = plugin(
            r#"return { rate_limit = function(req)
                local found = {}
                for _, n in ipairs({"io", "os", "require", "debug", "load", "loadstring", "dofile", "loadfile", "package"}) do
                  if _G[n] ~= nil then found[#found + 1] = n end
                end
                if string.dump ~= nil then found[#found + 1] = "string.dump" end
                if #found > 0 then return { deny = table.concat(found, ",") } end
                return { skip = true }
            end }"#,
        )
        .unwrap();
        let b = p.bind(serde_json::Value::Null).unwrap();
        assert_eq!(b.rate_limit(&facts("x")).unwrap(), RateLimitDecision::Skip);
    }

    #[test]
    fn bytecode_is_refused() {
        // "\27Lua" is the bytecode signature; text mode must refuse it.
        assert!(plugin("\u{1b}Lua\u{51}\u{0}").is_err());
    }

    #[test]
    fn hostile_plugins_are_contained() {
        let cases = [
            ("while true do end", "budget"),
            (
                "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end",
                "memory",
            ),
            ("error('boom')", "trap"),
            ("return 42", "bad_output"),
            ("return { check = {} }", "bad_output"),
            (
                "local l = {} for i = 1, 1000 do l[i] = { key_suffix = 'k', limit = 1, window_ms = 1 } end return { check = l }",
                "bad_output",
            ),
            (
                "return { check = { { key_suffix = '../../x', limit = 1, window_ms = 1000 } } }",
                "bad_output",
            ),
            (
                "return { check = { { key_suffix = 'k', limit = 0, window_ms = 1000 } } }",
                "bad_output",
            ),
        ];
        for (body, kind) in cases {
            let src = format!("return {{ rate_limit = function(req) {body} end }}");
            let b = plugin(&src).unwrap().bind(serde_json::Value::Null).unwrap();
            let started = Instant::now();
            let err = b.rate_limit(&facts("x")).unwrap_err();
            assert_eq!(err.kind(), kind, "{body}: {err}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{body} took {:?}",
                started.elapsed()
            );
            // The binding still works afterwards (a fresh instance replaces the failed one).
            let _ = b.rate_limit(&facts("x"));
        }
    }

    #[test]
    fn reads_ops() {
        let p = plugin(
            r#"return { ops = { ["daily-quota"] = { keys = { "count" }, script = "return 1" } } }"#,
        )
        .unwrap();
        assert_eq!(p.ops.len(), 1);
        assert_eq!(p.ops[0].name, "daily-quota");
        assert_eq!(p.ops[0].keys, vec!["count".to_string()]);
    }

    fn example(rel: &str) -> Arc<LuaPlugin> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/examples")
            .join(rel);
        let src = std::fs::read_to_string(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        Arc::new(LuaPlugin::load(&name, src, Limits::default()).unwrap())
    }

    #[test]
    fn example_cache_key_varies_and_bypasses() {
        let p = example("cache-key/cache-key.lua");
        let b = p
            .bind(serde_json::json!({"vary": ["Accept-Language"], "ttl_ms": {"default": 60000}, "bypass_header": "x-no-cache"}))
            .unwrap();
        let mut req = facts("x");
        req.headers = vec![("accept-language".into(), "de-CH, de;q=0.9".into())];
        let d = b.cache(&req).unwrap();
        assert_eq!(d.key.as_deref(), Some("u1:de-CHdeq0.9"));
        assert_eq!((d.ttl_ms, d.bypass), (Some(60_000), false));
        assert_eq!(d.tags, vec!["id:u1".to_string()]);
        req.headers.push(("x-no-cache".into(), "1".into()));
        assert!(b.cache(&req).unwrap().bypass);
        assert!(p.bind(serde_json::json!("nope")).is_err());
    }

    #[test]
    fn example_job_gate_decides_each_push() {
        let p = example("job-gate-lua/job-gate-lua.lua");
        assert!(p.hooks.contains(&"queue"));
        let b = p
            .bind(
                serde_json::json!({ "require": ["to"], "delays": { "digest": "1m" },
                                       "urgent_header": "X-Urgent", "dedup_field": "order" }),
            )
            .unwrap();
        let mut req = facts("x");
        let day = 86_400_000;
        assert_eq!(
            b.queue(&req, r#"{"to":"a","kind":"digest","order":42}"#, day),
            Ok(QueueDecision::Accept(QueueChoice {
                delay_ms: Some(60_000),
                priority: None,
                dedup_id: Some("order-42".into()),
            }))
        );
        req.headers.push(("x-urgent".into(), "1".into()));
        assert_eq!(
            b.queue(&req, r#"{"to":"a"}"#, day),
            Ok(QueueDecision::Accept(QueueChoice {
                priority: Some(9),
                ..QueueChoice::default()
            }))
        );
        assert_eq!(
            b.queue(&req, r#"{"kind":"digest"}"#, day),
            Ok(QueueDecision::Reject("a job needs `to`".into()))
        );
        assert_eq!(
            b.queue(&req, "42", day),
            Ok(QueueDecision::Reject("a job must be a JSON object".into()))
        );
        assert_eq!(
            b.queue(&req, r#"{"to":"a","kind":"digest"}"#, 1000)
                .unwrap_err()
                .kind(),
            "bad_output"
        );
        // A plugin without the hook says so.
        let t = example("tiered-limits-lua/tiered-limits-lua.lua");
        assert!(!t.hooks.contains(&"queue"));
    }

    #[test]
    fn queue_hooks_see_the_facts_and_the_payload() {
        let p = plugin(
            r#"return { queue = function(req, job)
                if job.n > 2 then return { reject = req.fields.dedup_id .. ':' .. job.n } end
                return { delay_ms = job.n * 1000, priority = job.n, dedup_id = req.headers['x-d'] }
            end }"#,
        )
        .unwrap();
        let b = p.bind(serde_json::Value::Null).unwrap();
        let mut req = facts("x");
        req.headers.push(("x-d".into(), "d1".into()));
        req.fields = vec![("dedup_id".into(), r#""asked""#.into())];
        assert_eq!(
            b.queue(&req, r#"{"n":2}"#, 60_000),
            Ok(QueueDecision::Accept(QueueChoice {
                delay_ms: Some(2000),
                priority: Some(2),
                dedup_id: Some("d1".into()),
            }))
        );
        assert_eq!(
            b.queue(&req, r#"{"n":3}"#, 60_000),
            Ok(QueueDecision::Reject("asked:3".into()))
        );
        for bad in [
            "{ priority = 10 }",
            "{ priority = -1 }",
            "{ delay_ms = 0.5 }",
            "{ dedup_id = 7 }",
            "{ reject = true }",
            "42",
        ] {
            let src = format!("return {{ queue = function() return {bad} end }}");
            let b = plugin(&src).unwrap().bind(serde_json::Value::Null).unwrap();
            let err = b.queue(&req, "{}", 60_000).unwrap_err();
            assert_eq!(err.kind(), "bad_output", "{bad}: {err}");
        }
    }

    #[test]
    fn pubsub_hooks_see_the_channel_the_op_and_the_message() {
        let p = plugin(
            r#"return { pubsub = function(req, channel, op, message)
                if req.headers['x-role'] == 'admin' then return nil end
                if op == 'subscribe' then
                    if channel == 'open' then return 'allow' end
                    return { reject = 'subscribe ' .. channel }
                end
                if message == 'ok' then return true end
                return { reject = op .. ' ' .. channel .. ' ' .. message }
            end }"#,
        )
        .unwrap();
        assert!(p.hooks.contains(&"pubsub"));
        let b = p.bind(serde_json::Value::Null).unwrap();
        let mut req = facts("x");
        let reject = |s: &str| Ok(PubSubDecision::Reject(s.into()));
        assert_eq!(b.pubsub(&req, "open", None), Ok(PubSubDecision::Allow));
        assert_eq!(b.pubsub(&req, "news", None), reject("subscribe news"));
        assert_eq!(
            b.pubsub(&req, "news", Some("ok")),
            Ok(PubSubDecision::Allow)
        );
        assert_eq!(
            b.pubsub(&req, "news", Some("hi")),
            reject("publish news hi")
        );
        req.headers.push(("x-role".into(), "admin".into()));
        assert_eq!(b.pubsub(&req, "news", None), Ok(PubSubDecision::Allow));
        for bad in ["{ reject = true }", "{}", "42", "'maybe'"] {
            let src = format!("return {{ pubsub = function() return {bad} end }}");
            let b = plugin(&src).unwrap().bind(serde_json::Value::Null).unwrap();
            let err = b.pubsub(&req, "c", None).unwrap_err();
            assert_eq!(err.kind(), "bad_output", "{bad}: {err}");
        }
        // A plugin without the hook says so.
        let q = plugin("return { queue = function() end }").unwrap();
        let err = q
            .bind(serde_json::Value::Null)
            .unwrap()
            .pubsub(&req, "c", None)
            .unwrap_err();
        assert_eq!(err.kind(), "missing_hook", "{err}");
    }

    #[test]
    fn leaderboard_hooks_see_each_submit() {
        let p = plugin(
            r#"return { leaderboard = function(req, s)
                if s.member == 'cheater' then return { reject = s.board .. ': banned' } end
                if s.score > 100 then return { score = 100 } end
                if req.id ~= s.member then return { reject = 'id' } end
                return 'accept'
            end }"#,
        )
        .unwrap();
        assert!(p.hooks.contains(&"leaderboard"));
        let b = p.bind(serde_json::Value::Null).unwrap();
        let mut req = facts("x");
        req.id = "alice".into();
        let sub = |member: &str, score: f64| Submission {
            app: "a".into(),
            rule: "r".into(),
            board: "chess".into(),
            member: member.into(),
            score,
        };
        assert_eq!(
            b.leaderboard(&req, &sub("alice", 7.0)),
            Ok(LeaderboardDecision::Accept)
        );
        assert_eq!(
            b.leaderboard(&req, &sub("alice", 700.0)),
            Ok(LeaderboardDecision::Score(100.0))
        );
        assert_eq!(
            b.leaderboard(&req, &sub("cheater", 7.0)),
            Ok(LeaderboardDecision::Reject("chess: banned".into()))
        );
        for bad in ["{ reject = true }", "{}", "42", "false", "{ score = 'x' }"] {
            let src = format!("return {{ leaderboard = function() return {bad} end }}");
            let b = plugin(&src).unwrap().bind(serde_json::Value::Null).unwrap();
            let err = b.leaderboard(&req, &sub("alice", 1.0)).unwrap_err();
            assert_eq!(err.kind(), "bad_output", "{bad}: {err}");
        }
    }

    #[test]
    fn stream_hooks_see_each_entry() {
        let p = plugin(
            r#"return { stream = function(req, entry)
                if type(entry) ~= 'table' then return { reject = 'not an object' } end
                if entry.level == 'debug' then return { reject = req.headers['x-app'] .. ': no debug' } end
                return 'accept'
            end }"#,
        )
        .unwrap();
        assert!(p.hooks.contains(&"stream"));
        let b = p.bind(serde_json::Value::Null).unwrap();
        let mut req = facts("x");
        req.headers.push(("x-app".into(), "web".into()));
        assert_eq!(
            b.stream(&req, r#"{"level":"info"}"#),
            Ok(StreamDecision::Accept)
        );
        assert_eq!(
            b.stream(&req, r#"{"level":"debug"}"#),
            Ok(StreamDecision::Reject("web: no debug".into()))
        );
        assert_eq!(
            b.stream(&req, "7"),
            Ok(StreamDecision::Reject("not an object".into()))
        );
        for bad in ["{ reject = true }", "{}", "42", "false"] {
            let src = format!("return {{ stream = function() return {bad} end }}");
            let b = plugin(&src).unwrap().bind(serde_json::Value::Null).unwrap();
            let err = b.stream(&req, "{}").unwrap_err();
            assert_eq!(err.kind(), "bad_output", "{bad}: {err}");
        }
    }

    #[test]
    fn example_plugins_load() {
        assert_eq!(example("quota/quota.lua").ops[0].name, "daily-quota");
        let t = example("tiered-limits-lua/tiered-limits-lua.lua");
        assert!(t.bind(serde_json::json!({"tiers": {}})).is_err());
    }
}
