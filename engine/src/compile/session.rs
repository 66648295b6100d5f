//! `session` rules → their Lua scripts and key layout. Pure.
//!
//! STUB (scaffolding): the pattern's owner adds the scripts.

use std::sync::Arc;

use super::{KeySpace, Script};
use crate::policy::Rule;
use crate::policy::session::Session;

#[derive(Debug, Clone)]
pub struct CompiledSession {
    pub scripts: Vec<Arc<Script>>,
}

pub fn compile(_rule: &Rule, _spec: &Session) -> Result<CompiledSession, String> {
    Ok(CompiledSession {
        scripts: Vec::new(),
    })
}

impl CompiledSession {
    /// Key templates with what each holds.
    pub fn key_layout(&self, _keys: &KeySpace) -> Vec<(String, String)> {
        Vec::new()
    }
}
