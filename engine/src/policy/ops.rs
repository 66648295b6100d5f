//! `ops:` rules: what the YAML may say, the validated model, and the checks between.
//!
//! An ops rule serves one Redis-side operation that a Lua plugin declares in its `ops` table,
//! at `POST /v1/ops/{app}/{rule}`. The loader only checks that both names are given: whether
//! the plugin exists and declares the operation is resolved against the plugins directory
//! when the policy is compiled.

use std::path::Path;

use marked_yaml::{Node, Spanned};
use schemars::JsonSchema;
use serde::Deserialize;

use super::diagnostic::Location;
use super::validate::{Validator, loc};

/// `ops: { plugin: NAME, op: OP }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    /// The Lua plugin (file name without `.lua`) that declares the operation.
    #[schemars(with = "String")]
    pub plugin: Spanned<String>,
    /// The operation's name in the plugin's `ops` table.
    #[schemars(with = "String")]
    pub op: Spanned<String>,
}

/// A validated `ops` rule: a Redis-side operation of a Lua plugin.
#[derive(Debug, Clone)]
pub struct Ops {
    pub plugin: String,
    pub op: String,
    pub location: Location,
}

impl Validator {
    pub(super) fn ops(
        &mut self,
        path: &Path,
        _rule: &str,
        raw: &Spanned<RawOps>,
        _body: &Node,
    ) -> Option<Ops> {
        let (plugin, op) = (raw.plugin.as_str(), raw.op.as_str());
        if plugin.is_empty() || op.is_empty() {
            self.err(&loc(path, raw.span()), "`ops` needs `plugin` and `op`");
            return None;
        }
        Some(Ops {
            plugin: plugin.to_string(),
            op: op.to_string(),
            location: loc(path, raw.plugin.span()),
        })
    }
}
