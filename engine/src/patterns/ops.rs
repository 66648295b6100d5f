//! Redis-side operations of Lua plugins at request time: keys from the id, one EVALSHA.

use std::sync::Arc;

use metrics::Counter;
use redis::Value;

use super::{InputError, check_id};
use crate::compile::{CompiledOps, KeySpace, Script};
use crate::store::{Store, StoreError};

/// Arguments per call, and bytes per argument: operations take a few small values.
pub const MAX_ARGS: usize = 32;
pub const MAX_ARG_BYTES: usize = 4096;

pub struct OpRunner {
    pub app: String,
    pub rule: String,
    pub plugin: String,
    pub op: String,
    keys: KeySpace,
    key_names: Vec<String>,
    script: Arc<Script>,
    ok: Counter,
    denied: Counter,
    failed: Counter,
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq)]
pub struct OpOutcome {
    pub result: serde_json::Value,
    /// The script's JSON object said `"denied": true`: answered 429.
    pub denied: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("too many arguments ({0}); at most {MAX_ARGS}")]
    TooManyArgs(usize),
    #[error("argument {0} is longer than {MAX_ARG_BYTES} bytes")]
    ArgTooLong(usize),
    /// The op refused its arguments, its documented way: `redis.error_reply('BADARG why')`.
    #[error("op `{op}`: {detail}")]
    BadArgs { op: String, detail: String },
    /// The op's script failed otherwise (a script error): not an outage, not the caller's.
    #[error("op `{op}` of plugin `{plugin}` ({app}/{rule}) failed: {source}")]
    Failed {
        op: String,
        plugin: String,
        app: String,
        rule: String,
        #[source]
        source: StoreError,
    },
    /// Redis unavailable, or a key of another type (see `StoreError`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OpRunner {
    pub fn new(app: &str, rule: &str, compiled: &CompiledOps, keys: &KeySpace) -> Self {
        let c = |outcome: &'static str| metrics::counter!("patternd_decisions_total", "app" => app.to_string(), "rule" => rule.to_string(), "pattern" => "ops", "outcome" => outcome);
        Self {
            app: app.to_string(),
            rule: rule.to_string(),
            plugin: compiled.plugin.clone(),
            op: compiled.op.clone(),
            keys: keys.clone(),
            key_names: compiled.keys.clone(),
            script: compiled.script.clone(),
            ok: c("ok"),
            denied: c("denied"),
            failed: c("failed"),
        }
    }

    pub async fn call(
        &self,
        store: &Store,
        id: &str,
        args: &[String],
    ) -> Result<OpOutcome, OpError> {
        check_id(id)?;
        if args.len() > MAX_ARGS {
            return Err(OpError::TooManyArgs(args.len()));
        }
        if let Some(i) = args.iter().position(|a| a.len() > MAX_ARG_BYTES) {
            return Err(OpError::ArgTooLong(i + 1));
        }
        let keys = self
            .keys
            .keys(id, self.key_names.iter().map(String::as_str));
        let argv: Vec<&[u8]> = args.iter().map(String::as_bytes).collect();
        let reply: Value = match store.eval(&self.script, &keys, &argv).await {
            Ok(v) => v,
            Err(e) => {
                self.failed.increment(1);
                return Err(self.failure(e));
            }
        };
        let result = super::reply::to_json(reply);
        let denied = result.get("denied").and_then(serde_json::Value::as_bool) == Some(true);
        if denied {
            self.denied.increment(1);
        } else {
            self.ok.increment(1);
        }
        Ok(OpOutcome { result, denied })
    }

    /// What a failed call says: the op's own refusal, an outage or WRONGTYPE as the store
    /// reports them, anything else as this op's failure.
    fn failure(&self, e: StoreError) -> OpError {
        match e {
            StoreError::Redis(r) if r.code() == Some("BADARG") => OpError::BadArgs {
                op: self.op.clone(),
                detail: r.detail().unwrap_or("bad arguments").to_string(),
            },
            e if e.is_unavailable() || matches!(e, StoreError::WrongType { .. }) => {
                OpError::Store(e)
            }
            source => OpError::Failed {
                op: self.op.clone(),
                plugin: self.plugin.clone(),
                app: self.app.clone(),
                rule: self.rule.clone(),
                source,
            },
        }
    }
}
