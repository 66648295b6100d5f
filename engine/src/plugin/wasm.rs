//! The WebAssembly plugin host: wasmtime with the component model.
//!
//! A WASM plugin is a component for the world `patternd:plugin/plugin@0.1.0`
//! (`plugins/wit/plugin.wit`). One process-wide [`Engine`] compiles every component once, at
//! load; each plugin keeps an
//! [`InstancePre`](wasmtime::component::InstancePre) (imports resolved and type-checked once), and each
//! binding (plugin + one rule's config) keeps a small pool of warm instances on which `init`
//! already ran.
//!
//! Containment, per call: a fresh fuel budget (`Limits::instructions`) and an epoch deadline
//! (`Limits::call_timeout`, with a background thread ticking the engine's epoch), and for each
//! instance a memory cap (`Limits::memory_bytes` per linear memory). A call that traps, runs out
//! of fuel or time, hits the memory cap or returns an out-of-bounds decision fails alone with the
//! matching [`PluginError`], and its instance is dropped: an instance is never reused after a
//! failed call, because a trap can leave its memory in any state.
//!
//! Imports: the `host` interface (log, clock) and a deliberately small slice of WASI p2, written
//! in `super::wasi`: what a Rust guest built for `wasm32-wasip2` imports through its standard
//! library. Any non-WASI import other than the contract's own interfaces refuses the load, so a
//! component built against another version of the contract is refused up front.
//!
//! Optional hooks: the world `plugin` has four exports, and `plugin-queue` adds `queue`. The
//! bindings are generated for `plugin`, so every component built for it loads as before; a
//! `queue` export is looked up by name at load and type-checked there (one instantiation), and
//! each instance then holds it as a typed function whose argument and result types are the
//! generated WIT types. A queue rule naming a component without it is refused at compile
//! (`Plugin::hooks`). `plugin-pubsub`'s `pubsub`, `plugin-stream`'s `stream` and `plugin-leaderboard`'s `leaderboard` exports are handled the same way; the host looks
//! each optional export up by name, so a component may have any of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, HasSelf, Lift, Linker, Lower, TypedFunc,
};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap};

use super::decision::{
    CacheDecision, DynLimit, LeaderboardDecision, PubSubDecision, QueueChoice, QueueDecision,
    RateLimitDecision, RequestFacts, SessionDecision, SessionFacts, StreamDecision, Submission,
    validate_cache, validate_leaderboard, validate_pubsub, validate_queue, validate_rate_limit,
    validate_session, validate_stream,
};
use super::pool::WarmPool;
use super::wasi::{GuestOutput, STDERR, STDOUT, link_wasi};
use super::{Limits, PluginError};
use crate::policy::Algorithm;

mod bindings {
    wasmtime::component::bindgen!({ path: "../plugins/wit", world: "plugin" });
}

use bindings::patternd::plugin::{host, types as wit};
use bindings::{Plugin as Guest, PluginPre};

/// The `queue` export of `plugin-queue`: `func(req: request, payload: string) -> queue-decision`.
type QueueFunc = TypedFunc<(wit::Request, String), (wit::QueueDecision,)>;

/// The name of the optional export.
const QUEUE_EXPORT: &str = "queue";

/// The `pubsub` export of `plugin-pubsub`:
/// `func(req: request, channel: string, op: pubsub-op, message: option<string>) -> pubsub-decision`.
type PubSubFunc =
    TypedFunc<(wit::Request, String, wit::PubsubOp, Option<String>), (wit::PubsubDecision,)>;

const PUBSUB_EXPORT: &str = "pubsub";

/// The `stream` export of `plugin-stream`: `func(req: request, entry: string) -> stream-decision`.
type StreamFunc = TypedFunc<(wit::Request, String), (wit::StreamDecision,)>;

const STREAM_EXPORT: &str = "stream";

/// The `leaderboard` export of `plugin-leaderboard`:
/// `func(req: request, s: submission) -> leaderboard-decision`.
type LeaderboardFunc = TypedFunc<(wit::Request, wit::Submission), (wit::LeaderboardDecision,)>;

const LEADERBOARD_EXPORT: &str = "leaderboard";

/// Warm instances kept per binding. A call takes one out of the pool and puts it back after, so
/// this bounds idle instances, not concurrency: a burst beyond it instantiates more and drops
/// the extras afterwards.
///
/// Why a pool (measured in release with tiered-limits, see `tests::cost`): a warm `rate_limit`
/// call costs p50 1.6–2.7 µs, p99 3.5 µs all included; a new instance per call (instantiate,
/// `init`, call) p50 42 µs / p99 150 µs, and with wasmtime's pooling allocator p50 32–56 µs /
/// p99 105 µs. The pool wins by 20×, and since it instantiates only at bind, after failures
/// and in bursts, the pooling allocator is not used.
const POOL_MAX: usize = 8;

/// How often the epoch advances. A call's deadline is a whole number of ticks, so a runaway
/// call stops between `call_timeout` and `call_timeout` + one tick.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// `init` runs at load time, off the request path, and may do one-off work (parse a large
/// config, build tables): it gets this many times a hook's fuel and time.
const INIT_BUDGET_FACTOR: u64 = 10;

/// Log lines one call may write (host `log`, stdout, stderr), so a chatty or hostile plugin
/// cannot flood patternd's log.
const LOG_LINES_PER_CALL: u32 = 16;

/// Table elements one instance may have (function tables of ordinary guests hold hundreds).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The interfaces of the contract this host speaks (`types` holds only types, but a component
/// imports it too). A component importing them at another version is refused at load.
const CONTRACT_INTERFACES: [&str; 2] =
    ["patternd:plugin/host@0.1.0", "patternd:plugin/types@0.1.0"];

/// The engine every WASM plugin shares: one compiler configuration, one epoch counter. Built on
/// first use, with the thread that ticks its epoch.
fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            // Fuel bounds the work of a call deterministically (one unit per wasm operator,
            // roughly); the epoch bounds its wall time, which fuel cannot (a host call, a slow
            // machine). Both cost a little per loop iteration; a hook is short.
            config.consume_fuel(true);
            config.epoch_interruption(true);
            let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
            let weak = engine.weak();
            std::thread::Builder::new()
                .name("patternd-wasm-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(EPOCH_TICK);
                    }
                })
                .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Per-store state: what the host functions and the limiter need.
struct State {
    plugin: Arc<str>,
    memory: MemoryCap,
    logs_left: u32,
    max_log_bytes: usize,
    /// What the current call wrote to stderr (bounded), to explain a trap: a Rust guest's
    /// panic message.
    stderr: String,
    /// Partial lines of stdout and stderr, until a newline or the end of the call.
    out_line: String,
    err_line: String,
}

/// Caps each linear memory of an instance, and remembers that it refused growth, so a guest that
/// then aborts (Rust's allocator does) is reported as out of memory rather than as a trap.
struct MemoryCap {
    max_bytes: usize,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl State {
    fn line_buf(&mut self, which: u32) -> &mut String {
        if which == STDERR {
            &mut self.err_line
        } else {
            &mut self.out_line
        }
    }

    /// Logs one line of stdout (info) or stderr (warn). Stderr lines are also kept, on one
    /// line, to explain a trap; std's hint about RUST_BACKTRACE means nothing here.
    fn emit_line(&mut self, which: u32, line: &str) {
        let line = line.trim();
        if line.is_empty() || line.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        if which != STDERR {
            self.log(host::Level::Info, line);
            return;
        }
        if self.stderr.len() < self.max_log_bytes {
            if !self.stderr.is_empty() {
                self.stderr.push(' ');
            }
            self.stderr.push_str(line);
            truncate(&mut self.stderr, self.max_log_bytes);
        }
        self.log(host::Level::Warn, line);
    }

    /// Logs what the call wrote without a final newline.
    fn flush_output(&mut self) {
        for which in [STDOUT, STDERR] {
            let rest = std::mem::take(self.line_buf(which));
            self.emit_line(which, &rest);
        }
    }

    fn log(&mut self, level: host::Level, message: &str) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        let mut end = message.len().min(self.max_log_bytes);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let msg = message[..end].trim_end();
        let plugin = &*self.plugin;
        match level {
            host::Level::Debug => tracing::debug!(plugin, "{msg}"),
            host::Level::Info => tracing::info!(plugin, "{msg}"),
            host::Level::Warn => tracing::warn!(plugin, "{msg}"),
            host::Level::Error => tracing::error!(plugin, "{msg}"),
        }
    }
}

impl host::Host for State {
    fn log(&mut self, level: host::Level, message: String) {
        State::log(self, level, &message);
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

impl wit::Host for State {}

/// The guest's stdout and stderr (through the WASI shim) go to the log. Writes are buffered
/// into lines: std writes unbuffered stderr piecewise ("memory allocation of ", "1048576",
/// " bytes failed"), and one log event per line reads better. What is left without a newline
/// is flushed after the call.
impl GuestOutput for State {
    fn guest_output(&mut self, stream: u32, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut buf = std::mem::take(self.line_buf(stream));
        buf.push_str(&text);
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            self.emit_line(stream, &line);
        }
        if buf.len() > self.max_log_bytes {
            self.emit_line(stream, &buf);
            buf.clear();
        }
        *self.line_buf(stream) = buf;
    }
}

/// A loaded WASM plugin: its component compiled and its imports resolved.
pub struct WasmPlugin {
    pub name: String,
    pre: PluginPre<State>,
    /// The `queue` export, when the component has one (world `plugin-queue`).
    queue: Option<ComponentExportIndex>,
    /// The `pubsub` export, when the component has one (world `plugin-pubsub`).
    pubsub: Option<ComponentExportIndex>,
    /// The `stream` export, when the component has one (world `plugin-stream`).
    stream: Option<ComponentExportIndex>,
    /// The `leaderboard` export, when the component has one (world `plugin-leaderboard`).
    leaderboard: Option<ComponentExportIndex>,
    limits: Limits,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every export of the world `plugin`; a component that type-checks against it has all four.
pub const HOOKS: [&str; 4] = ["init", "rate_limit", "cache", "session"];

impl WasmPlugin {
    /// Compiles the component at `path` and resolves its imports. Fails when it is not a
    /// component of this contract (missing or mistyped exports, imports patternd does not
    /// provide).
    pub fn load(name: &str, path: &std::path::Path, limits: Limits) -> Result<Self, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let engine = engine().map_err(load_err)?;
        // Compiled in memory on each load, not cached on disk: loading a serialized component
        // is `unsafe` in wasmtime (it trusts the bytes as machine code), which this crate
        // forbids, and compiling an example plugin takes tens of milliseconds.
        let component = Component::from_file(engine, path)
            .map_err(|e| load_err(format!("not a WebAssembly component: {e:#}")))?;
        let mut linker: Linker<State> = Linker::new(engine);
        Guest::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| load_err(format!("{e:#}")))?;
        link_wasi(&mut linker, engine, &component, &CONTRACT_INTERFACES).map_err(load_err)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| {
            load_err(format!(
                "does not implement the world patternd:plugin/plugin@0.1.0: {e:#}"
            ))
        })?;
        let queue = component.get_export_index(None, QUEUE_EXPORT);
        let pubsub = component.get_export_index(None, PUBSUB_EXPORT);
        let stream = component.get_export_index(None, STREAM_EXPORT);
        let leaderboard = component.get_export_index(None, LEADERBOARD_EXPORT);
        let plugin = WasmPlugin {
            name: name.to_string(),
            pre,
            queue,
            pubsub,
            stream,
            leaderboard,
            limits,
        };
        plugin.check_optional_exports()?;
        Ok(plugin)
    }

    /// The hooks this component exports: the world's four, and `queue` when it has it.
    pub fn hooks(&self) -> Vec<&'static str> {
        let mut hooks = HOOKS.to_vec();
        if self.queue.is_some() {
            hooks.push("queue");
        }
        if self.pubsub.is_some() {
            hooks.push("pubsub");
        }
        if self.stream.is_some() {
            hooks.push("stream");
        }
        if self.leaderboard.is_some() {
            hooks.push("leaderboard");
        }
        hooks
    }

    /// A `queue` (`pubsub`) export must have the type of `plugin-queue`'s (`plugin-pubsub`'s),
    /// or the component is refused now rather than at its first call. Types are checked on an
    /// instance, so this makes one (no `init`: the check runs no hook).
    fn check_optional_exports(&self) -> Result<(), PluginError> {
        if self.queue.is_none()
            && self.pubsub.is_none()
            && self.stream.is_none()
            && self.leaderboard.is_none()
        {
            return Ok(());
        }
        let mut store = self.new_store();
        self.arm(&mut store, INIT_BUDGET_FACTOR)?;
        let instance = self
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| self.classify(&e, &store))?;
        let mistyped = |export: &str, world: &str, e: wasmtime::Error| PluginError::Load {
            plugin: self.name.clone(),
            message: format!(
                "its `{export}` export is not the one of the world \
                     patternd:plugin/{world}@0.1.0: {e:#}"
            ),
        };
        if let Some(index) = &self.queue {
            let checked: wasmtime::Result<QueueFunc> = instance.get_typed_func(&mut store, index);
            checked.map_err(|e| mistyped(QUEUE_EXPORT, "plugin-queue", e))?;
        }
        if let Some(index) = &self.pubsub {
            let checked: wasmtime::Result<PubSubFunc> = instance.get_typed_func(&mut store, index);
            checked.map_err(|e| mistyped(PUBSUB_EXPORT, "plugin-pubsub", e))?;
        }
        if let Some(index) = &self.stream {
            let checked: wasmtime::Result<StreamFunc> = instance.get_typed_func(&mut store, index);
            checked.map_err(|e| mistyped(STREAM_EXPORT, "plugin-stream", e))?;
        }
        if let Some(index) = &self.leaderboard {
            let checked: wasmtime::Result<LeaderboardFunc> =
                instance.get_typed_func(&mut store, index);
            checked.map_err(|e| mistyped(LEADERBOARD_EXPORT, "plugin-leaderboard", e))?;
        }
        Ok(())
    }

    /// Binds the plugin to a rule: one warm instance initialized with the rule's config now (so
    /// a config the plugin refuses fails the policy load), more on demand.
    pub fn bind(self: &Arc<Self>, config: serde_json::Value) -> Result<WasmBinding, PluginError> {
        let binding = WasmBinding {
            plugin: self.clone(),
            config: config.to_string(),
            pool: WarmPool::new(POOL_MAX),
            created: AtomicU64::new(0),
        };
        let inst = binding.new_instance()?;
        binding.release(inst);
        Ok(binding)
    }

    fn new_store(&self) -> Store<State> {
        let mut store = Store::new(
            self.pre.engine(),
            State {
                plugin: Arc::from(self.name.as_str()),
                memory: MemoryCap {
                    max_bytes: self.limits.memory_bytes,
                    refused: false,
                },
                logs_left: LOG_LINES_PER_CALL,
                max_log_bytes: self.limits.max_string_bytes,
                stderr: String::new(),
                out_line: String::new(),
                err_line: String::new(),
            },
        );
        store.limiter(|s| &mut s.memory);
        store
    }

    /// Gives the store a fresh budget for one call (`factor` times a hook's).
    fn arm(&self, store: &mut Store<State>, factor: u64) -> Result<(), PluginError> {
        let data = store.data_mut();
        data.memory.refused = false;
        data.logs_left = LOG_LINES_PER_CALL;
        data.stderr.clear();
        store
            .set_fuel(self.limits.instructions.saturating_mul(factor))
            .map_err(|e| self.trap(format!("{e:#}")))?;
        let tick = EPOCH_TICK.as_millis().max(1);
        let ticks = self.limits.call_timeout.as_millis().div_ceil(tick);
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX).max(1);
        // +1: the next tick may be due right now.
        store.set_epoch_deadline(ticks.saturating_mul(factor).saturating_add(1));
        Ok(())
    }

    fn trap(&self, message: String) -> PluginError {
        PluginError::Trap {
            plugin: self.name.clone(),
            message,
        }
    }

    /// Names a failed call: out of fuel or time, out of memory, or a trap.
    /// An optional hook export of a new instance, typed (its type was checked at load); looked
    /// up once per instance, not per call.
    fn export<P, R>(
        &self,
        instance: &wasmtime::component::Instance,
        store: &mut Store<State>,
        index: &Option<ComponentExportIndex>,
    ) -> Result<Option<TypedFunc<P, R>>, PluginError>
    where
        P: ComponentNamedList + Lower,
        R: ComponentNamedList + Lift,
    {
        let Some(index) = index else {
            return Ok(None);
        };
        match instance.get_typed_func(&mut *store, index) {
            Ok(f) => Ok(Some(f)),
            Err(e) => Err(self.classify(&e, store)),
        }
    }

    fn classify(&self, e: &wasmtime::Error, store: &Store<State>) -> PluginError {
        let plugin = self.name.clone();
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel | Trap::Interrupt) => PluginError::Budget { plugin },
            // Growth was refused and the guest gave up (Rust's allocator aborts): the cap, not
            // a bug in the guest, ended the call.
            _ if store.data().memory.refused => PluginError::Memory { plugin },
            trap => {
                let what = match trap {
                    Some(t) => t.to_string(),
                    // A host function's error (a WASI import patternd does not provide, exit):
                    // the root cause says which; the outer layers only say "wasm backtrace".
                    None => first_line(&e.root_cause().to_string()),
                };
                // A Rust guest's panic message went to stderr just before the abort.
                let said = &store.data().stderr;
                let message = if said.is_empty() {
                    what
                } else {
                    format!("{what}; the plugin wrote: {said}")
                };
                PluginError::Trap { plugin, message }
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

struct Instance {
    store: Store<State>,
    guest: Guest,
    /// The `queue` export, when the component has one.
    queue: Option<QueueFunc>,
    /// The `pubsub` export, when the component has one.
    pubsub: Option<PubSubFunc>,
    /// The `stream` export, when the component has one.
    stream: Option<StreamFunc>,
    /// The `leaderboard` export, when the component has one.
    leaderboard: Option<LeaderboardFunc>,
}

/// A WASM plugin bound to one rule's config: a pool of warm, initialized instances.
pub struct WasmBinding {
    plugin: Arc<WasmPlugin>,
    /// The rule's `plugin.config` as JSON text, passed to `init` of every new instance.
    config: String,
    pool: WarmPool<Instance>,
    /// Instances created so far (the first at bind, then one per failure or burst).
    created: AtomicU64,
}

impl WasmBinding {
    fn new_instance(&self) -> Result<Instance, PluginError> {
        self.created.fetch_add(1, Ordering::Relaxed);
        let p = &self.plugin;
        let mut store = p.new_store();
        p.arm(&mut store, INIT_BUDGET_FACTOR)?;
        let instance = p
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| p.classify(&e, &store))?;
        let guest = Guest::new(&mut store, &instance).map_err(|e| p.classify(&e, &store))?;
        let queue: Option<QueueFunc> = p.export(&instance, &mut store, &p.queue)?;
        let pubsub: Option<PubSubFunc> = p.export(&instance, &mut store, &p.pubsub)?;
        let stream: Option<StreamFunc> = p.export(&instance, &mut store, &p.stream)?;
        let leaderboard: Option<LeaderboardFunc> =
            p.export(&instance, &mut store, &p.leaderboard)?;
        let init_err = |message: String| PluginError::Init {
            plugin: p.name.clone(),
            message,
        };
        let result = guest.call_init(&mut store, &self.config);
        store.data_mut().flush_output();
        match result {
            Ok(Ok(())) => Ok(Instance {
                store,
                guest,
                queue,
                pubsub,
                stream,
                leaderboard,
            }),
            Ok(Err(message)) => {
                let mut message = message;
                truncate(&mut message, p.limits.max_string_bytes);
                Err(init_err(message))
            }
            Err(e) => Err(match p.classify(&e, &store) {
                PluginError::Trap { message, .. } => init_err(format!("init failed: {message}")),
                other => other,
            }),
        }
    }

    fn release(&self, inst: Instance) {
        self.pool.put(inst);
    }

    /// Runs `f` on a warm instance with a fresh budget. An instance whose call failed is
    /// dropped, never reused.
    fn with_instance<T>(
        &self,
        f: impl FnOnce(&mut Instance) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let popped = self.pool.take();
        let mut inst = match popped {
            Some(i) => i,
            None => self.new_instance()?,
        };
        self.plugin.arm(&mut inst.store, 1)?;
        let result = f(&mut inst);
        inst.store.data_mut().flush_output();
        match result {
            Ok(out) => {
                self.release(inst);
                Ok(out)
            }
            Err(e) => Err(self.plugin.classify(&e, &inst.store)),
        }
    }

    /// Calls an optional hook export (`plugin-queue`'s `queue`, …) on a warm instance;
    /// `MissingHook` when the component does not export it.
    fn call_hook<P, R>(
        &self,
        hook: &'static str,
        exported: bool,
        func: impl FnOnce(&Instance) -> Option<TypedFunc<P, (R,)>>,
        args: P,
    ) -> Result<R, PluginError>
    where
        P: ComponentNamedList + Lower,
        (R,): ComponentNamedList + Lift,
    {
        let missing = || PluginError::MissingHook {
            plugin: self.plugin.name.clone(),
            hook,
        };
        if !exported {
            return Err(missing());
        }
        let out = self.with_instance(|i| match func(i) {
            Some(f) => f.call(&mut i.store, args).map(|(d,)| Some(d)),
            None => Ok(None),
        })?;
        out.ok_or_else(missing)
    }

    pub fn rate_limit(&self, req: &RequestFacts) -> Result<RateLimitDecision, PluginError> {
        self.rate_limit_wit(&to_wit_request(req))
    }

    /// `rate_limit` for a caller done with the facts: they move into the call, not copied.
    pub fn rate_limit_owned(&self, req: RequestFacts) -> Result<RateLimitDecision, PluginError> {
        self.rate_limit_wit(&into_wit_request(req))
    }

    fn rate_limit_wit(&self, wreq: &wit::Request) -> Result<RateLimitDecision, PluginError> {
        let out = self.with_instance(|i| i.guest.call_rate_limit(&mut i.store, wreq))?;
        let d = match out {
            wit::RateLimitDecision::Skip => RateLimitDecision::Skip,
            wit::RateLimitDecision::Deny(reason) => RateLimitDecision::Deny(reason),
            wit::RateLimitDecision::Check(list) => RateLimitDecision::Check(
                list.into_iter()
                    .map(|l| DynLimit {
                        key_suffix: l.key_suffix,
                        cost: l.cost,
                        limit: l.limit,
                        window_ms: l.window_ms,
                        burst: l.burst.unwrap_or(l.limit),
                        algorithm: match l.algorithm {
                            wit::Algorithm::FixedWindow => Algorithm::FixedWindow,
                            wit::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
                            wit::Algorithm::SlidingLog => Algorithm::SlidingLog,
                            wit::Algorithm::TokenBucket => Algorithm::TokenBucket,
                            wit::Algorithm::Gcra => Algorithm::Gcra,
                        },
                    })
                    .collect(),
            ),
        };
        validate_rate_limit(&self.plugin.name, d, &self.plugin.limits)
    }

    pub fn cache(&self, req: &RequestFacts) -> Result<CacheDecision, PluginError> {
        let wreq = to_wit_request(req);
        let out = self.with_instance(|i| i.guest.call_cache(&mut i.store, &wreq))?;
        let d = CacheDecision {
            key: out.key,
            ttl_ms: out.ttl_ms,
            bypass: out.bypass,
            tags: out.tags,
        };
        validate_cache(&self.plugin.name, d, &self.plugin.limits)
    }

    pub fn session(
        &self,
        req: &RequestFacts,
        s: &SessionFacts<'_>,
    ) -> Result<SessionDecision, PluginError> {
        let wreq = to_wit_request(req);
        let session = wit::Session {
            user: s.user.to_string(),
            data: s.data.to_vec(),
            created_ms: s.created_ms,
            last_seen_ms: s.last_seen_ms,
        };
        let out = self.with_instance(|i| i.guest.call_session(&mut i.store, &wreq, &session))?;
        let d = match out {
            wit::SessionDecision::Allow => SessionDecision::Allow,
            wit::SessionDecision::Reject(reason) => SessionDecision::Reject(reason),
        };
        validate_session(&self.plugin.name, d, &self.plugin.limits)
    }

    /// The queue hook (`plugin-queue`'s `queue` export), with the job's payload as JSON text.
    pub fn queue(
        &self,
        req: &RequestFacts,
        payload: &str,
        max_delay_ms: u64,
    ) -> Result<QueueDecision, PluginError> {
        let args = (to_wit_request(req), payload.to_string());
        let out = self.call_hook("queue", self.plugin.queue.is_some(), |i| i.queue, args)?;
        let d = match out {
            wit::QueueDecision::Accept(c) => QueueDecision::Accept(QueueChoice {
                delay_ms: c.delay_ms,
                priority: c.priority,
                dedup_id: c.dedup_id,
            }),
            wit::QueueDecision::Reject(reason) => QueueDecision::Reject(reason),
        };
        validate_queue(&self.plugin.name, d, &self.plugin.limits, max_delay_ms)
    }

    /// The pubsub hook (`plugin-pubsub`'s `pubsub` export): may this request publish
    /// `message` to (or, without one, subscribe to) `channel`?
    pub fn pubsub(
        &self,
        req: &RequestFacts,
        channel: &str,
        message: Option<&str>,
    ) -> Result<PubSubDecision, PluginError> {
        let wreq = to_wit_request(req);
        let op = if message.is_some() {
            wit::PubsubOp::Publish
        } else {
            wit::PubsubOp::Subscribe
        };
        let args = (wreq, channel.to_string(), op, message.map(str::to_string));
        let out = self.call_hook("pubsub", self.plugin.pubsub.is_some(), |i| i.pubsub, args)?;
        let d = match out {
            wit::PubsubDecision::Allow => PubSubDecision::Allow,
            wit::PubsubDecision::Reject(reason) => PubSubDecision::Reject(reason),
        };
        validate_pubsub(&self.plugin.name, d, &self.plugin.limits)
    }

    /// The stream hook (`plugin-stream`'s `stream` export), for one entry's JSON text.
    pub fn stream(&self, req: &RequestFacts, entry: &str) -> Result<StreamDecision, PluginError> {
        let args = (to_wit_request(req), entry.to_string());
        let out = self.call_hook("stream", self.plugin.stream.is_some(), |i| i.stream, args)?;
        let d = match out {
            wit::StreamDecision::Accept => StreamDecision::Accept,
            wit::StreamDecision::Reject(reason) => StreamDecision::Reject(reason),
        };
        validate_stream(&self.plugin.name, d, &self.plugin.limits)
    }

    /// The leaderboard hook (`plugin-leaderboard`'s `leaderboard` export), for one submit.
    pub fn leaderboard(
        &self,
        req: &RequestFacts,
        s: &Submission,
    ) -> Result<LeaderboardDecision, PluginError> {
        let sub = wit::Submission {
            app: s.app.clone(),
            rule: s.rule.clone(),
            board: s.board.clone(),
            member: s.member.clone(),
            score: s.score,
        };
        let args = (to_wit_request(req), sub);
        let exported = self.plugin.leaderboard.is_some();
        let out = self.call_hook("leaderboard", exported, |i| i.leaderboard, args)?;
        let d = match out {
            wit::LeaderboardDecision::Accept => LeaderboardDecision::Accept,
            wit::LeaderboardDecision::Reject(reason) => LeaderboardDecision::Reject(reason),
            wit::LeaderboardDecision::Score(s) => LeaderboardDecision::Score(s),
        };
        validate_leaderboard(&self.plugin.name, d, &self.plugin.limits)
    }

    /// Warm instances now idle in the pool (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.pool.idle()
    }

    /// Instances created since the binding was made (for tests and metrics).
    pub fn instances_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

fn into_wit_request(req: RequestFacts) -> wit::Request {
    wit::Request {
        method: req.method,
        path: req.path,
        id: req.id,
        cost: req.cost,
        headers: req
            .headers
            .into_iter()
            .map(|(name, value)| wit::Header { name, value })
            .collect(),
        client_addr: req.client_addr,
        fields: req.fields,
    }
}

fn to_wit_request(req: &RequestFacts) -> wit::Request {
    wit::Request {
        method: req.method.clone(),
        path: req.path.clone(),
        id: req.id.clone(),
        cost: req.cost,
        headers: req
            .headers
            .iter()
            .map(|(name, value)| wit::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        client_addr: req.client_addr.clone(),
        fields: req.fields.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! These tests run the example guests of `plugins/examples/`, built once per test process by
    //! `plugins/build.sh` (which needs the wasm32-wasip2 target: without it they fail and say
    //! how to install it).

    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    fn dist() -> &'static Path {
        static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let built = BUILT.get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let out = std::process::Command::new("bash")
                .arg(root.join("plugins/build.sh"))
                .output()
                .map_err(|e| format!("cannot run plugins/build.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "plugins/build.sh failed (the WASM plugin tests need the example guests):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(root.join("plugins/dist"))
        });
        match built {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn load(name: &str, limits: Limits) -> Arc<WasmPlugin> {
        let path = dist().join(format!("{name}.wasm"));
        Arc::new(WasmPlugin::load(name, &path, limits).unwrap())
    }

    fn tiers_config() -> serde_json::Value {
        json!({ "header": "X-Tier", "default": "free",
                "tiers": { "free": { "limit": 2, "window": "1m" }, "pro": { "limit": 5, "window": "1m" } } })
    }

    fn facts(headers: &[(&str, &str)], cost: u64) -> RequestFacts {
        RequestFacts {
            method: "POST".into(),
            path: "/v1/ratelimit/a/r".into(),
            id: "u1".into(),
            cost,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..RequestFacts::default()
        }
    }

    fn session(user: &str) -> SessionFacts<'_> {
        SessionFacts {
            user,
            data: &[],
            created_ms: 1,
            last_seen_ms: 2,
        }
    }

    fn one_limit(d: RateLimitDecision) -> DynLimit {
        match d {
            RateLimitDecision::Check(mut l) if l.len() == 1 => l.remove(0),
            other => panic!("expected one limit, got {other:?}"),
        }
    }

    #[test]
    fn tiered_limits_decides_by_tier() {
        let b = load("tiered-limits", Limits::default())
            .bind(tiers_config())
            .unwrap();
        let pro = one_limit(b.rate_limit(&facts(&[("x-tier", "pro")], 1)).unwrap());
        assert_eq!(
            pro,
            DynLimit {
                key_suffix: "pro".into(),
                cost: 1,
                limit: 5,
                window_ms: 60_000,
                burst: 5,
                algorithm: Algorithm::FixedWindow,
            }
        );
        let free = one_limit(b.rate_limit(&facts(&[("x-tier", "free")], 3)).unwrap());
        assert_eq!(
            (free.key_suffix.as_str(), free.limit, free.cost),
            ("free", 2, 3)
        );
        // Missing or unknown tier: the default.
        for headers in [&[][..], &[("x-tier", "gold")][..], &[("other", "pro")][..]] {
            let l = one_limit(b.rate_limit(&facts(headers, 1)).unwrap());
            assert_eq!((l.key_suffix.as_str(), l.limit), ("free", 2), "{headers:?}");
        }
        // The other hooks are neutral.
        assert_eq!(b.cache(&facts(&[], 1)).unwrap(), CacheDecision::default());
        assert_eq!(
            b.session(&facts(&[], 1), &session("alice")).unwrap(),
            SessionDecision::Allow
        );
        // Warm: every call so far reused the instance made at bind.
        assert_eq!(b.instances_created(), 1);
    }

    #[test]
    fn tiered_limits_refuses_bad_configs() {
        let p = load("tiered-limits", Limits::default());
        let cases = [
            (
                json!({ "header": "X-Tier", "default": "free", "tiers": {} }),
                "at least one tier",
            ),
            (
                json!({ "header": "X-Tier", "default": "gold", "tiers": { "free": { "limit": 2, "window": "1m" } } }),
                "`default` is `gold`",
            ),
            (
                json!({ "header": "X-Tier", "default": "free", "tiers": { "free": { "limit": 2, "window": "soon" } } }),
                "window `soon`",
            ),
            (
                json!({ "header": "X-Tier", "default": "free", "tiers": { "free": { "limit": 0, "window": "1m" } } }),
                "at least 1",
            ),
            (json!({ "tiers": {} }), "missing field `header`"),
            (json!(null), "tiered-limits config"),
        ];
        for (config, expected) in cases {
            let err = p.bind(config.clone()).err().unwrap();
            assert!(
                matches!(&err, PluginError::Init { message, .. } if message.contains(expected)),
                "{config}: {err}"
            );
        }
    }

    /// The hostile guest misbehaves as its `x-mode` header says; every kind of misbehavior
    /// fails that call alone, quickly, and the next call gets a fresh instance that works.
    #[test]
    fn hostile_plugins_are_contained() {
        let b = load("hostile", Limits::default())
            .bind(json!({ "mode": "ok" }))
            .unwrap();
        let ok = || {
            let l = one_limit(b.rate_limit(&facts(&[], 1)).unwrap());
            assert_eq!(l.key_suffix, "ok");
        };
        ok();
        let cases = [
            ("loop", "budget"),
            ("alloc", "memory"),
            ("trap", "trap"),
            ("garbage", "bad_output"),
            ("escape", "bad_output"),
            ("flood", "bad_output"),
        ];
        for (mode, kind) in cases {
            let created = b.instances_created();
            let started = Instant::now();
            let err = b.rate_limit(&facts(&[("x-mode", mode)], 1)).unwrap_err();
            let took = started.elapsed();
            assert_eq!(err.kind(), kind, "{mode}: {err}");
            assert!(took < Duration::from_secs(2), "{mode} took {took:?}");
            if matches!(kind, "budget" | "memory" | "trap") {
                // The instance that failed was dropped, not put back.
                assert_eq!(b.idle(), 0, "{mode}");
            }
            ok();
            if matches!(kind, "budget" | "memory" | "trap") {
                assert_eq!(b.instances_created(), created + 1, "{mode}");
            }
        }
        // The other hooks are contained the same way.
        let loop_ = facts(&[("x-mode", "loop")], 1);
        assert_eq!(b.cache(&loop_).unwrap_err().kind(), "budget");
        assert_eq!(
            b.session(&loop_, &session("u")).unwrap_err().kind(),
            "budget"
        );
        let garbage = facts(&[("x-mode", "garbage")], 1);
        assert_eq!(b.cache(&garbage).unwrap_err().kind(), "bad_output");
        let flood = facts(&[("x-mode", "flood")], 1);
        assert_eq!(
            b.session(&flood, &session("u")).unwrap_err().kind(),
            "bad_output"
        );
        ok();
        // And the queue hook (`plugin-queue`), each misbehavior failing its call alone.
        for (mode, kind) in [
            ("loop", "budget"),
            ("alloc", "memory"),
            ("trap", "trap"),
            ("garbage", "bad_output"),
            ("escape", "bad_output"),
            ("flood", "bad_output"),
        ] {
            let err = b
                .queue(&facts(&[("x-mode", mode)], 0), "{}", 60_000)
                .unwrap_err();
            assert_eq!(err.kind(), kind, "queue {mode}: {err}");
        }
        assert_eq!(
            b.queue(&facts(&[("x-mode", "echo")], 0), r#"{"a":1}"#, 60_000),
            Ok(QueueDecision::Reject(r#"payload={"a":1}"#.into()))
        );
        ok();
    }

    #[test]
    fn job_gate_decides_each_push() {
        let p = load("job-gate", Limits::default());
        assert_eq!(
            p.hooks(),
            vec!["init", "rate_limit", "cache", "session", "queue"]
        );
        let b = p
            .bind(json!({ "require": ["to"], "delays": { "digest": "1m" },
                          "urgent_header": "X-Urgent", "dedup_field": "order" }))
            .unwrap();
        let accept = |delay_ms, priority, dedup_id: Option<&str>| {
            Ok(QueueDecision::Accept(QueueChoice {
                delay_ms,
                priority,
                dedup_id: dedup_id.map(str::to_string),
            }))
        };
        let day = 86_400_000;
        assert_eq!(
            b.queue(
                &facts(&[], 0),
                r#"{"to":"a","kind":"digest","order":42}"#,
                day
            ),
            accept(Some(60_000), None, Some("order-42"))
        );
        assert_eq!(
            b.queue(&facts(&[("x-urgent", "1")], 0), r#"{"to":"a"}"#, day),
            accept(None, Some(9), None)
        );
        assert_eq!(
            b.queue(&facts(&[], 0), r#"{"kind":"digest"}"#, day),
            Ok(QueueDecision::Reject("a job needs `to`".into()))
        );
        assert_eq!(
            b.queue(&facts(&[], 0), "[1]", day),
            Ok(QueueDecision::Reject("a job must be a JSON object".into()))
        );
        // A delay beyond the rule's `max_delay` is the plugin's failure, not a longer wait.
        let err = b
            .queue(&facts(&[], 0), r#"{"to":"a","kind":"digest"}"#, 1000)
            .unwrap_err();
        assert_eq!(err.kind(), "bad_output", "{err}");
        assert!(p.bind(json!({ "delays": { "x": "soon" } })).is_err());
    }

    /// A component built for the world `plugin` (before the queue hook existed) loads and
    /// serves its hooks; asking it for `queue` is a missing hook, not a trap.
    #[test]
    fn components_without_the_queue_hook_keep_working() {
        let p = load("tiered-limits", Limits::default());
        assert_eq!(p.hooks(), HOOKS.to_vec());
        let b = p.bind(tiers_config()).unwrap();
        let err = b.queue(&facts(&[], 0), "{}", 1000).unwrap_err();
        assert_eq!(err.kind(), "missing_hook", "{err}");
        let l = one_limit(b.rate_limit(&facts(&[("x-tier", "pro")], 1)).unwrap());
        assert_eq!(l.limit, 5);
    }

    /// Components built for `plugin` and `plugin-queue` (before the pubsub and stream hooks)
    /// load as before; asking them for those hooks is a missing hook, not a trap.
    #[test]
    fn components_without_the_pubsub_and_stream_hooks_keep_working() {
        for (name, hooks) in [
            ("tiered-limits", HOOKS.to_vec()),
            (
                "job-gate",
                vec!["init", "rate_limit", "cache", "session", "queue"],
            ),
        ] {
            let p = load(name, Limits::default());
            assert_eq!(p.hooks(), hooks, "{name}");
            let config = if name == "tiered-limits" {
                tiers_config()
            } else {
                json!(null)
            };
            let b = p.bind(config).unwrap();
            let err = b.pubsub(&facts(&[], 0), "c", None).unwrap_err();
            assert_eq!(err.kind(), "missing_hook", "{name}: {err}");
            let err = b.stream(&facts(&[], 0), "{}").unwrap_err();
            assert_eq!(err.kind(), "missing_hook", "{name}: {err}");
        }
    }

    #[test]
    fn channel_gate_decides_each_publish_and_subscribe() {
        let p = load("channel-gate", Limits::default());
        assert_eq!(
            p.hooks(),
            vec!["init", "rate_limit", "cache", "session", "pubsub"]
        );
        let b = p
            .bind(json!({ "open": ["lobby"], "publishers": ["ops"], "banned": ["spam"] }))
            .unwrap();
        let ann = facts(&[("x-user", "ann")], 0);
        let ops = facts(&[("x-user", "ops")], 0);
        let reject = |s: &str| Ok(PubSubDecision::Reject(s.into()));
        assert_eq!(b.pubsub(&ann, "lobby", None), Ok(PubSubDecision::Allow));
        assert_eq!(b.pubsub(&ann, "user.ann", None), Ok(PubSubDecision::Allow));
        assert_eq!(
            b.pubsub(&ann, "user.bob", None),
            reject("may not subscribe to `user.bob`")
        );
        assert_eq!(
            b.pubsub(&ann, "lobby", Some("hi")),
            reject("may not publish to `lobby`")
        );
        assert_eq!(
            b.pubsub(&ops, "lobby", Some("hi")),
            Ok(PubSubDecision::Allow)
        );
        assert_eq!(
            b.pubsub(&ops, "lobby", Some("spam!")),
            reject("the message holds `spam`")
        );
        assert!(p.bind(json!({ "nope": 1 })).is_err());
    }

    #[test]
    fn entry_gate_decides_each_entry() {
        let p = load("entry-gate", Limits::default());
        assert_eq!(
            p.hooks(),
            vec!["init", "rate_limit", "cache", "session", "stream"]
        );
        let b = p
            .bind(json!({ "require": ["type"], "types": ["click"] }))
            .unwrap();
        let req = facts(&[], 0);
        assert_eq!(
            b.stream(&req, r#"{"type":"click"}"#),
            Ok(StreamDecision::Accept)
        );
        assert_eq!(
            b.stream(&req, r#"{"type":"view"}"#),
            Ok(StreamDecision::Reject("unknown type `view`".into()))
        );
        assert_eq!(
            b.stream(&req, "{}"),
            Ok(StreamDecision::Reject("an entry needs `type`".into()))
        );
        assert_eq!(
            b.stream(&req, "[1]"),
            Ok(StreamDecision::Reject(
                "an entry must be a JSON object".into()
            ))
        );
    }

    /// With fuel to spare, the epoch deadline stops a runaway call near `call_timeout`.
    #[test]
    fn the_epoch_deadline_bounds_wall_time() {
        let limits = Limits {
            instructions: u64::MAX / 100,
            call_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let b = load("hostile", limits)
            .bind(json!({ "mode": "ok" }))
            .unwrap();
        let started = Instant::now();
        let err = b.rate_limit(&facts(&[("x-mode", "loop")], 1)).unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), "budget", "{err}");
        assert!(
            took >= Duration::from_millis(40) && took < Duration::from_secs(1),
            "took {took:?}"
        );
    }

    #[test]
    fn init_failures_refuse_the_binding() {
        let p = load("hostile", Limits::default());
        let err = p.bind(json!({ "mode": "init-fail" })).err().unwrap();
        assert!(
            matches!(&err, PluginError::Init { message, .. } if message.contains("as asked")),
            "{err}"
        );
        let started = Instant::now();
        let err = p.bind(json!({ "mode": "init-loop" })).err().unwrap();
        assert_eq!(err.kind(), "budget", "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = p.bind(json!({ "nothing": 1 })).err().unwrap();
        assert_eq!(err.kind(), "init", "{err}");
    }

    /// Hooks run on tokio worker threads in the server: printing (stdout, stderr, and so a
    /// panic message) must not touch the runtime.
    #[test]
    fn printing_works_on_a_tokio_worker() {
        let b = Arc::new(
            load("hostile", Limits::default())
                .bind(json!({ "mode": "ok" }))
                .unwrap(),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (print, trap) = rt.block_on(async move {
            tokio::spawn(async move {
                let print = b.rate_limit(&facts(&[("x-mode", "print")], 1));
                let trap = b.rate_limit(&facts(&[("x-mode", "trap")], 1));
                (print, trap)
            })
            .await
            .unwrap()
        });
        assert_eq!(one_limit(print.unwrap()).key_suffix, "ok");
        // The panic message reached stderr, and explains the trap.
        let trap = trap.unwrap_err();
        assert!(
            matches!(&trap, PluginError::Trap { message, .. } if message.contains("trapping, as asked")),
            "{trap}"
        );
    }

    /// No files, no environment, no arguments.
    #[test]
    fn no_ambient_capabilities() {
        let b = load("hostile", Limits::default())
            .bind(json!({ "mode": "ok" }))
            .unwrap();
        match b.rate_limit(&facts(&[("x-mode", "sneak")], 1)) {
            Ok(RateLimitDecision::Deny(seen)) => {
                assert!(
                    seen.contains("no file")
                        && seen.contains("env vars: 0")
                        && seen.contains("args: 0"),
                    "{seen}"
                );
            }
            // Reaching for a file may also trap (the filesystem interfaces are traps).
            Err(PluginError::Trap { message, .. }) => {
                assert!(message.contains("wasi:filesystem"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrent_calls_share_the_pool() {
        let b = Arc::new(
            load("tiered-limits", Limits::default())
                .bind(tiers_config())
                .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let l = one_limit(b.rate_limit(&facts(&[("x-tier", "pro")], 1)).unwrap());
                        assert_eq!(l.limit, 5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(b.instances_created() <= 4, "{}", b.instances_created());
        assert!(b.idle() <= POOL_MAX);
    }

    #[test]
    fn refuses_what_is_not_a_plugin_component() {
        let dir = std::env::temp_dir().join(format!("patternd-wasm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.wasm");
        std::fs::write(&junk, b"\0asm but not really").unwrap();
        let err = WasmPlugin::load("junk", &junk, Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "load");
        // A core module (the empty one) is not a component.
        let core = dir.join("core.wasm");
        std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
        let err = WasmPlugin::load("core", &core, Limits::default()).unwrap_err();
        assert_eq!(err.kind(), "load", "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_plugin_set_loads_wasm_and_lua() {
        let set = crate::plugin::PluginSet::load_dir(dist(), Limits::default()).unwrap();
        let p = set.get("tiered-limits").unwrap();
        assert_eq!(p.kind(), "wasm");
        assert_eq!(p.hooks(), HOOKS.to_vec());
        assert!(set.get("tiered-limits-lua").is_some());
        let b = p.bind(tiers_config()).unwrap();
        let l = one_limit(b.rate_limit(&facts(&[("x-tier", "pro")], 1)).unwrap());
        assert_eq!(l.limit, 5);
    }

    fn percentiles(mut ns: Vec<u128>) -> (u128, u128) {
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize];
        (at(0.50), at(0.99))
    }

    /// Prints what a hook call costs: warm (the pool) against a new instance per call. Run with
    /// `cargo test --release -p patternd --lib wasm::tests::cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn cost() {
        let n = 20_000;
        let req = facts(&[("x-tier", "pro")], 1);
        let b = load("tiered-limits", Limits::default())
            .bind(tiers_config())
            .unwrap();
        for _ in 0..1000 {
            b.rate_limit(&req).unwrap();
        }
        let warm: Vec<u128> = (0..n)
            .map(|_| {
                let t = Instant::now();
                b.rate_limit(&req).unwrap();
                t.elapsed().as_nanos()
            })
            .collect();
        let (p50, p99) = percentiles(warm);
        println!("warm pool:             p50 {p50} ns, p99 {p99} ns per rate_limit call");

        // A new instance (instantiate + init + call) per request: what the pool saves.
        let config_text = tiers_config().to_string();
        let wreq = to_wit_request(&req);
        let p = load("tiered-limits", Limits::default());
        let times: Vec<u128> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                let mut store = p.new_store();
                p.arm(&mut store, INIT_BUDGET_FACTOR).unwrap();
                let g = p.pre.instantiate(&mut store).unwrap();
                g.call_init(&mut store, &config_text).unwrap().unwrap();
                g.call_rate_limit(&mut store, &wreq).unwrap();
                t.elapsed().as_nanos()
            })
            .collect();
        let (p50, p99) = percentiles(times);
        println!("new instance per call: p50 {p50} ns, p99 {p99} ns");
        let started = Instant::now();
        let _ = load("tiered-limits", Limits::default());
        println!("load (compile) tiered-limits.wasm: {:?}", started.elapsed());
    }
}
