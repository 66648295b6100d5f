//! One recipe for every script: a declaration of what the script is made of, and one
//! function, [`assemble`], that makes it.
//!
//! A script is its header line `-- patternd <name>`, the recipe's constants as
//! `local NAME = value`, each included block followed by an empty line, then its body. Blocks
//! are Lua files under `compile/lua/` (`<pattern>/…`, and `shared/…` for blocks of several
//! patterns), compiled into the binary, or text generated at policy load (a rate limit's main
//! with its limits as literals, an op's script). A block defines `local` functions, which only
//! what comes after it can see: a block uses only the blocks before it (a test checks that no
//! script reads a global Redis does not give it). The `compile` module doc shows every recipe.

use std::fmt::Write as _;
use std::sync::Arc;

use super::Script;

/// A piece of Lua.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    #[cfg_attr(not(test), allow(dead_code))]
    pub source: Source<'a>,
    pub text: &'a str,
}

/// Where a block comes from (read by the test that keeps the `compile` module doc's table).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Source<'a> {
    /// A file under `compile/lua/`: its path there. Made by [`lua_file!`].
    File(&'static str),
    /// Generated at policy load: what the text is.
    Generated(&'a str),
}

impl<'a> Block<'a> {
    /// Generated text; the recipes declared as constants hold it empty, and the module that
    /// generates it fills it in (`Block { text, ..RECIPE.body }`).
    pub const fn generated(what: &'a str) -> Self {
        Self {
            source: Source::Generated(what),
            text: "",
        }
    }
}

/// `lua_file!("cache/read.lua")`: the block of a file under `compile/lua/`, in the binary.
macro_rules! lua_file {
    ($path:literal) => {
        $crate::compile::recipe::Block {
            source: $crate::compile::recipe::Source::File($path),
            text: include_str!(concat!("lua/", $path)),
        }
    };
}
pub(crate) use lua_file;

/// What a script is made of, in order.
#[derive(Debug, Clone, Copy)]
pub struct Recipe<'a> {
    /// The script's name (`cache read`), as `patternd compile` and the logs show it; also its
    /// header line. A recipe whose script is made per rule has a template here
    /// (`ratelimit <app>/<rule>`) and is assembled under the rule's name.
    pub name: &'a str,
    /// Numbers the blocks read, set first as `local NAME = value`.
    pub consts: &'a [(&'a str, usize)],
    /// Preludes and shared blocks: each may use those before it.
    pub includes: &'a [Block<'a>],
    /// What the script does, using everything above.
    pub body: Block<'a>,
}

impl<'a> Recipe<'a> {
    pub const fn new(name: &'a str, includes: &'a [Block<'a>], body: Block<'a>) -> Self {
        Self {
            name,
            consts: &[],
            includes,
            body,
        }
    }
}

impl Recipe<'_> {
    /// Makes the script of a recipe whose body is generated (per rule, or per set of
    /// algorithms): named `name`, with `body` as the body's text.
    pub fn assemble_as(&self, name: &str, body: &str) -> Arc<Script> {
        assemble(&Recipe {
            name,
            body: Block {
                text: body,
                ..self.body
            },
            ..*self
        })
    }
}

/// Makes the script of `recipe`.
pub fn assemble(recipe: &Recipe<'_>) -> Arc<Script> {
    let len = recipe
        .includes
        .iter()
        .map(|b| b.text.len() + 2)
        .sum::<usize>()
        + recipe.body.text.len()
        + 256;
    let mut s = String::with_capacity(len);
    let _ = writeln!(s, "-- patternd {}", recipe.name);
    for (name, value) in recipe.consts {
        let _ = writeln!(s, "local {name} = {value}");
    }
    for block in recipe.includes {
        s.push_str(block.text);
        if !block.text.ends_with('\n') {
            s.push('\n');
        }
        s.push('\n');
    }
    s.push_str(recipe.body.text);
    Arc::new(Script::new(recipe.name, s))
}

/// The table of the `compile` module doc: one row per recipe.
#[cfg(test)]
fn doc_table(recipes: &[Recipe<'_>]) -> String {
    let cell = |b: &Block<'_>| match b.source {
        Source::File(path) => format!("`{path}`"),
        Source::Generated(what) => format!("generated: {what}"),
    };
    let mut out = String::from("//! | script | includes, in order | body |\n//! |---|---|---|\n");
    for r in recipes {
        let mut includes: Vec<String> = r
            .consts
            .iter()
            .map(|(name, value)| format!("`{name} = {value}`"))
            .collect();
        includes.extend(r.includes.iter().map(cell));
        let includes = if includes.is_empty() {
            "—".to_string()
        } else {
            includes.join(", ")
        };
        let _ = writeln!(out, "//! | `{}` | {includes} | {} |", r.name, cell(&r.body));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::compile::{
        cache, compile, counter, leaderboard, lock, luacheck, ops, pubsub, queue, ratelimit,
        session, stream,
    };
    use crate::plugin::PluginSet;
    use crate::policy::load_sources;

    fn every_recipe() -> Vec<Recipe<'static>> {
        [
            ratelimit::RECIPES,
            cache::RECIPES,
            session::RECIPES,
            lock::RECIPES,
            ops::RECIPES,
            queue::RECIPES,
            stream::RECIPES,
            pubsub::RECIPES,
            counter::RECIPES,
            leaderboard::RECIPES,
        ]
        .concat()
    }

    #[test]
    fn the_module_doc_shows_every_recipe() {
        let want = doc_table(&every_recipe());
        let doc = include_str!("mod.rs");
        let got: String = doc
            .lines()
            .filter(|l| l.starts_with("//! |"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            got == want,
            "the recipe table in compile/mod.rs is not the recipes' own; replace it with:\n{want}"
        );
    }

    #[test]
    fn every_lua_file_is_in_a_recipe() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/compile/lua");
        let mut used: Vec<&str> = Vec::new();
        for r in every_recipe() {
            for b in r.includes.iter().chain([&r.body]) {
                if let Source::File(path) = b.source {
                    used.push(path);
                }
            }
        }
        // Blocks a generated body is made of.
        used.extend(
            ratelimit::GENERATED_FROM
                .iter()
                .filter_map(|b| match b.source {
                    Source::File(path) => Some(path),
                    Source::Generated(_) => None,
                }),
        );
        let mut files = Vec::new();
        for pattern in std::fs::read_dir(&dir).expect("compile/lua") {
            let pattern = pattern.expect("entry").path();
            for f in std::fs::read_dir(&pattern).expect("a pattern's folder") {
                let f = f.expect("entry").path();
                let rel = f.strip_prefix(&dir).expect("under lua/");
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        files.sort();
        let unused: Vec<&String> = files
            .iter()
            .filter(|f| !used.contains(&f.as_str()))
            .collect();
        assert!(unused.is_empty(), "Lua files no recipe uses: {unused:?}");
    }

    /// Every built script, as a policy with every pattern compiles them.
    fn every_script() -> Vec<Arc<Script>> {
        let policy = r#"
app: a
rules:
  fw: { rate_limit: { algorithm: fixed_window, limit: 5, window: 1m } }
  sw: { rate_limit: { algorithm: sliding_window, limit: 5, window: 1m } }
  sl: { rate_limit: { algorithm: sliding_log, limit: 5, window: 1m } }
  tb: { rate_limit: { algorithm: token_bucket, limit: 5, window: 1m } }
  gc: { rate_limit: { algorithm: gcra, limit: 5, window: 1m } }
  cc: { rate_limit: { algorithm: concurrency, limit: 5, lease: 1m } }
  through: { cache: { origin: "http://127.0.0.1:9000/p/{id}", ttl: 1m, write: through } }
  behind: { cache: { origin: "http://127.0.0.1:9000/p/{id}", ttl: 1m, write: behind } }
  s: { session: { idle_ttl: 30m, absolute_ttl: 24h } }
  l: { lock: { ttl: 30s } }
  q: { queue: {} }
  cu: { counter: { kind: unique, period: day, range_cache: 5s } }
  cc2: { counter: { kind: count, period: 1h, keep: 24 } }
  cb: { counter: { kind: bloom, capacity: 1000, period: week } }
  lb: { leaderboard: { period: day, ties: first } }
"#;
        let sources = vec![(PathBuf::from("all.yaml"), policy.to_string())];
        let loaded = load_sources(&sources).expect("a valid policy");
        let (compiled, _) = compile(&loaded.policy, &PluginSet::empty()).expect("compiles");
        let mut all = compiled.scripts();
        all.extend(ratelimit::dynamic_scripts().all().cloned());
        all
    }

    #[test]
    fn every_script_passes_the_lua51_check() {
        for s in every_script() {
            luacheck::check(&s.name, &s.source).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        }
    }

    #[test]
    fn every_script_is_built_and_named_by_its_recipe() {
        let all = every_script();
        // 6 rate limits + 5 batch variants (not concurrency) + release + 6 plugin-decided,
        // 16 cache (the hit batch included) + the read's batch variant, 8 session, 4 lock,
        // 7 queue, 8 counter, 7 leaderboard.
        assert_eq!(
            all.len(),
            69,
            "{:?}",
            all.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        for s in &all {
            assert!(
                s.source.starts_with(&format!("-- patternd {}\n", s.name)),
                "{}",
                s.name
            );
        }
    }

    /// A helper used before the block that defines it would be a global read, nil in Redis
    /// (which refuses to read an unknown global): the op checker, which refuses any global
    /// but Redis' own, finds those. Its other rules (literal keys, ...) are for plugins' ops.
    #[test]
    fn every_script_reads_only_the_globals_redis_gives() {
        for s in every_script() {
            let problems = match ops::check(&s.source, 16) {
                Ok(_) => continue,
                Err(p) => p,
            };
            let globals: Vec<String> = problems
                .iter()
                .filter(|p| p.message.contains("is not available to ops"))
                .map(|p| format!("line {}: {}", p.line, p.message))
                .collect();
            assert!(globals.is_empty(), "{}: {globals:#?}", s.name);
        }
    }
}
