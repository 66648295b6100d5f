//! `counter` rules → their Lua scripts and key layout. Pure.
//!
//! Every counter rule shares one checked set of fixed scripts; a rule's settings (its period,
//! the expiry, a Bloom filter's m and k) travel in ARGV, prepared once per snapshot. Every key
//! of a call is one id's (`{<id>}` is the hash tag), one per period, so a range of periods is
//! one slot and one script call.

use std::sync::{Arc, LazyLock};

use super::recipe::{Block, Recipe, assemble, lua_file};
use super::{KeySpace, Script, luacheck};
use crate::policy::Rule;
use crate::policy::counter::{BloomBackend, Counter, CounterKind};

const INCLUDES: &[Block] = &[
    lua_file!("shared/clock.lua"),
    lua_file!("shared/period.lua"),
    lua_file!("counter/prelude.lua"),
];
const BLOOM_INCLUDES: &[Block] = &[
    lua_file!("shared/clock.lua"),
    lua_file!("shared/period.lua"),
    lua_file!("counter/prelude.lua"),
    lua_file!("counter/bloom.lua"),
];

const UNIQUE_ADD: Recipe = Recipe::new(
    "counter unique-add",
    INCLUDES,
    lua_file!("counter/unique_add.lua"),
);
const UNIQUE_COUNT: Recipe = Recipe::new(
    "counter unique-count",
    INCLUDES,
    lua_file!("counter/unique_count.lua"),
);
const COUNT_ADD: Recipe = Recipe::new(
    "counter count-add",
    INCLUDES,
    lua_file!("counter/count_add.lua"),
);
const COUNT_READ: Recipe = Recipe::new(
    "counter count-read",
    INCLUDES,
    lua_file!("counter/count_read.lua"),
);
const BLOOM_ADD: Recipe = Recipe::new(
    "counter bloom-add",
    BLOOM_INCLUDES,
    lua_file!("counter/bloom_add.lua"),
);
const BLOOM_CHECK: Recipe = Recipe::new(
    "counter bloom-check",
    BLOOM_INCLUDES,
    lua_file!("counter/bloom_check.lua"),
);
const MODULE_ADD: Recipe = Recipe::new(
    "counter redisbloom-add",
    INCLUDES,
    lua_file!("counter/module_add.lua"),
);
const MODULE_CHECK: Recipe = Recipe::new(
    "counter redisbloom-check",
    INCLUDES,
    lua_file!("counter/module_check.lua"),
);

/// The recipes, for the `compile` module doc.
#[cfg(test)]
pub(super) const RECIPES: &[Recipe<'static>] = &[
    UNIQUE_ADD,
    UNIQUE_COUNT,
    COUNT_ADD,
    COUNT_READ,
    BLOOM_ADD,
    BLOOM_CHECK,
    MODULE_ADD,
    MODULE_CHECK,
];

/// The scripts of counter rules.
#[derive(Debug, Clone)]
pub struct CounterScripts {
    pub unique_add: Arc<Script>,
    pub unique_count: Arc<Script>,
    pub count_add: Arc<Script>,
    pub count_read: Arc<Script>,
    pub bloom_add: Arc<Script>,
    pub bloom_check: Arc<Script>,
    pub module_add: Arc<Script>,
    pub module_check: Arc<Script>,
}

static SCRIPTS: LazyLock<CounterScripts> = LazyLock::new(|| CounterScripts {
    unique_add: assemble(&UNIQUE_ADD),
    unique_count: assemble(&UNIQUE_COUNT),
    count_add: assemble(&COUNT_ADD),
    count_read: assemble(&COUNT_READ),
    bloom_add: assemble(&BLOOM_ADD),
    bloom_check: assemble(&BLOOM_CHECK),
    module_add: assemble(&MODULE_ADD),
    module_check: assemble(&MODULE_CHECK),
});

#[derive(Debug, Clone)]
pub struct CompiledCounter {
    pub scripts: CounterScripts,
    /// The scripts this rule's kind (and Bloom backend) calls.
    used: Vec<Arc<Script>>,
    kind: CounterKind,
}

pub fn compile(_rule: &Rule, spec: &Counter) -> Result<CompiledCounter, String> {
    let s = SCRIPTS.clone();
    let used = match &spec.kind {
        CounterKind::Unique { .. } => vec![s.unique_add.clone(), s.unique_count.clone()],
        CounterKind::Count => vec![s.count_add.clone(), s.count_read.clone()],
        CounterKind::Bloom { backend, .. } => {
            let lua = [s.bloom_add.clone(), s.bloom_check.clone()];
            let module = [s.module_add.clone(), s.module_check.clone()];
            match backend {
                BloomBackend::Lua => lua.to_vec(),
                BloomBackend::RedisBloom => module.to_vec(),
                // Loading a script that names BF.* is harmless where the module is missing:
                // Redis resolves commands when a script runs.
                BloomBackend::Auto => [lua, module].concat(),
            }
        }
    };
    luacheck::check_builtin(used.iter().map(|s| s.as_ref()))?;
    Ok(CompiledCounter {
        scripts: s,
        used,
        kind: spec.kind.clone(),
    })
}

impl CompiledCounter {
    pub fn scripts(&self) -> Vec<Arc<Script>> {
        self.used.clone()
    }

    /// Key templates with what each holds.
    pub fn key_layout(&self, keys: &KeySpace, spec: &Counter) -> Vec<(String, String)> {
        let t = |sub: &str| keys.template(sub);
        let expiry = if spec.keep > 0 {
            format!(
                "expires {} period(s) after its period closes (PEXPIREAT, set by every write)",
                spec.keep
            )
        } else {
            format!("expires {} ms after its last write", spec.ttl.as_millis())
        };
        match &self.kind {
            CounterKind::Unique { range_cache } => {
                let mut v = vec![(
                    t("p:<period index>"),
                    format!("HyperLogLog of the period's items (at most 12 KiB); {expiry}"),
                )];
                if let Some(c) = range_cache {
                    v.push((
                        t("r:<from>:<to>"),
                        format!(
                            "STRING: the count of a range of periods, kept {} ms",
                            c.as_millis()
                        ),
                    ));
                }
                v
            }
            CounterKind::Count => vec![(
                t("p:<period index>"),
                format!("STRING: the period's integer counter; {expiry}"),
            )],
            CounterKind::Bloom { size, backend } => {
                let mut v = Vec::new();
                if *backend != BloomBackend::RedisBloom {
                    v.push((
                        t("b:<period index>"),
                        format!(
                            "STRING bitmap of m = {} bits ({} KiB), k = {} positions per item (without RedisBloom); {expiry}",
                            size.bits,
                            size.bits.div_ceil(8 * 1024),
                            size.hashes
                        ),
                    ));
                }
                if *backend != BloomBackend::Lua {
                    v.push((
                        t("f:<period index>"),
                        format!(
                            "RedisBloom filter (BF.INSERT CAPACITY {} ERROR {}, scaling past capacity); {expiry}",
                            size.capacity, size.error_rate
                        ),
                    ));
                }
                v.push((
                    t("n:<period index>"),
                    format!(
                        "STRING: adds that were new to the filter (≈ distinct items); {expiry}"
                    ),
                ));
                v
            }
        }
    }
}
