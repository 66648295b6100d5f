//! `lock` rules → their Lua scripts and key layout. Pure.
//!
//! STUB (scaffolding): the pattern's owner adds the scripts.

use std::sync::Arc;

use super::{KeySpace, Script};
use crate::policy::Rule;
use crate::policy::lock::Lock;

#[derive(Debug, Clone)]
pub struct CompiledLock {
    pub scripts: Vec<Arc<Script>>,
}

pub fn compile(_rule: &Rule, _spec: &Lock) -> Result<CompiledLock, String> {
    Ok(CompiledLock {
        scripts: Vec::new(),
    })
}

impl CompiledLock {
    /// Key templates with what each holds.
    pub fn key_layout(&self, _keys: &KeySpace) -> Vec<(String, String)> {
        Vec::new()
    }
}
