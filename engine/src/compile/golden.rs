//! Golden tests: policy in, Lua and diagnostics out.
//!
//! Each `testdata/golden/NAME.yaml` is loaded and compiled; the result (every diagnostic, and
//! for a valid policy each rule's key layout, and the generated script of a rate limit or op,
//! or the script names of a cache, session or lock rule) must equal `NAME.out`. Run with
//! `UPDATE_GOLDEN=1` to rewrite the `.out` files after an intended change, then review the diff.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::compile::{CompiledKind, compile};
use crate::plugin::PluginSet;
use crate::policy::load_sources;

fn render(name: &str, text: &str) -> String {
    let mut out = String::new();
    let sources = vec![(PathBuf::from(name), text.to_string())];
    match load_sources(&sources)
        .and_then(|l| compile(&l.policy, &PluginSet::empty()).map(|c| (l, c.0)))
    {
        Err(diags) => {
            for d in &diags.0 {
                let _ = writeln!(out, "{d}");
            }
        }
        Ok((loaded, compiled)) => {
            for d in &loaded.warnings {
                let _ = writeln!(out, "{d}");
            }
            for rule in compiled.rules() {
                let _ = writeln!(out, "==> {}/{}", rule.rule.app, rule.rule.name);
                for (k, what) in rule.key_layout() {
                    let _ = writeln!(out, "key {k}  -- {what}");
                }
                match &rule.kind {
                    CompiledKind::RateLimit(rl) => {
                        let Some(fixed) = &rl.fixed else { continue };
                        // Only the generated main: the algorithm bodies are the .lua files
                        // themselves, and repeating them would make every golden file churn.
                        let main = fixed
                            .script
                            .source
                            .rfind("\nlocal cost = ")
                            .map(|i| &fixed.script.source[i + 1..])
                            .unwrap_or(&fixed.script.source);
                        let _ = writeln!(out, "main:\n{main}");
                    }
                    CompiledKind::Ops(op) => {
                        let _ = writeln!(out, "op script:\n{}", op.script.source);
                    }
                    CompiledKind::Cache(_)
                    | CompiledKind::Session(_)
                    | CompiledKind::Lock(_)
                    | CompiledKind::Queue(_)
                    | CompiledKind::Stream(_)
                    | CompiledKind::PubSub(_)
                    | CompiledKind::Counter(_)
                    | CompiledKind::Leaderboard(_) => {
                        // Names only: these scripts are the .lua files with fixed ARGV, so
                        // their text (and SHA) would only make every golden file churn. What
                        // the policy decides shows in the key layout and the script set.
                        for s in rule.scripts() {
                            let _ = writeln!(out, "script {}", s.name);
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata/golden exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for case in cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("case")
            .to_string();
        let text = std::fs::read_to_string(&case).expect("readable case");
        let got = render(&name, &text);
        let out_path = case.with_extension("out");
        if update {
            std::fs::write(&out_path, &got).expect("writable golden");
            continue;
        }
        let want = std::fs::read_to_string(&out_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "--- {name}: expected ---\n{want}\n--- got ---\n{got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 rewrites):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_generated_script_passes_the_lua51_check() {
    use crate::policy::{Algorithm, Limit};
    // All algorithms in one rule is not a valid policy (concurrency stands alone), but the
    // generator must still produce syntactically valid Lua for any combination.
    let limits: Vec<Limit> = Algorithm::ALL
        .iter()
        .map(|&a| Limit {
            algorithm: a,
            limit: 10,
            window: std::time::Duration::from_secs(60),
            burst: 10,
        })
        .collect();
    let script = super::ratelimit::fixed_script("all", &limits);
    super::luacheck::check(&script.name, &script.source).expect("valid Lua 5.1");
}
