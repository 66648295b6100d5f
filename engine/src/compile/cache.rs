//! `cache` rules → their Lua scripts and key layout. Pure.
//!
//! STUB (scaffolding): the pattern's owner adds the scripts.

use std::sync::Arc;

use super::{KeySpace, Script};
use crate::policy::Rule;
use crate::policy::cache::Cache;

#[derive(Debug, Clone)]
pub struct CompiledCache {
    pub scripts: Vec<Arc<Script>>,
}

pub fn compile(_rule: &Rule, _spec: &Cache) -> Result<CompiledCache, String> {
    Ok(CompiledCache {
        scripts: Vec::new(),
    })
}

impl CompiledCache {
    /// Key templates with what each holds.
    pub fn key_layout(&self, _keys: &KeySpace) -> Vec<(String, String)> {
        Vec::new()
    }
}
