//! ARCHITECTURE.md's code map names every file and folder of `engine/src`, and names nothing
//! that is gone: a newcomer can trust it.
//!
//! Paths in the code map are written in backticks relative to `engine/src`, e.g.
//! `policy/raw.rs`, `patterns/cache/`, `compile/lua/lock/`. Every `.rs` file must appear with
//! its full path; every folder with its path and a trailing `/`; other files (the `.lua`
//! scripts) are covered by their folder.

// A test: an unreadable tree or file should fail it loudly, helpers included.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

/// ARCHITECTURE.md's "## Code map" section.
fn code_map_section(text: &str) -> &str {
    let start = text
        .find("\n## Code map")
        .expect("ARCHITECTURE.md has a `## Code map` section");
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The backticked words of `section`.
fn backticked(section: &str) -> BTreeSet<String> {
    section
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The top-level files the section lists as entries: a bullet that starts with `name.rs`.
fn top_level_entries(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.ends_with(".rs") && !n.contains('/'))
        .map(str::to_string)
        .collect()
}

/// Every `.rs` file and every folder under `dir`, relative to `root`, folders ending in `/`.
fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("a readable source folder")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .expect("under engine/src")
            .to_string_lossy()
            .replace('\\', "/");
        if p.is_dir() {
            out.insert(format!("{rel}/"));
            walk(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.insert(rel);
        }
    }
}

#[test]
fn code_map_names_every_file_and_nothing_else() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = manifest.join("src");
    let text = std::fs::read_to_string(manifest.join("../ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md at the workspace root");
    let section = code_map_section(&text);
    let named = backticked(section);

    let mut present = BTreeSet::new();
    walk(&src, &src, &mut present);
    let missing: Vec<_> = present.iter().filter(|p| !named.contains(*p)).collect();

    // Names in the code map that are engine/src paths (under one of its folders, or a bullet
    // naming a top-level file) must exist.
    let top: BTreeSet<_> = present
        .iter()
        .filter(|p| p.ends_with('/') && p.matches('/').count() == 1)
        .cloned()
        .collect();
    let under_src = named.iter().filter(|n| {
        !n.contains(['<', '*', ' '])
            && (n.ends_with(".rs") || n.ends_with('/'))
            && top.iter().any(|t| n.starts_with(t.as_str()))
    });
    let entries = top_level_entries(section);
    let stale: Vec<_> = under_src
        .chain(entries.iter())
        .filter(|n| !present.contains(*n))
        .collect();

    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's code map is out of date.\nnot named (add a line saying what it is \
         for): {missing:#?}\nnamed but gone (remove or rename): {stale:#?}"
    );
}

/// Issue 11's shape: every pattern is reachable through the same five places, so a newcomer
/// finds any of them by name and a new pattern copies an existing one (ARCHITECTURE.md,
/// "Adding a pattern"). `ops` has no Lua folder: its scripts are the plugin's own.
#[test]
fn every_pattern_has_the_five_places() {
    let engine = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = engine.join("src");
    let tests = engine.join("../tests/tests");
    let test_files: Vec<String> = std::fs::read_dir(&tests)
        .expect("tests/tests is readable")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut missing = Vec::new();
    for (pattern, lua) in [
        ("ratelimit", true),
        ("cache", true),
        ("session", true),
        ("lock", true),
        ("ops", false),
    ] {
        let file_or_folder = |dir: &str| {
            src.join(format!("{dir}/{pattern}.rs")).is_file()
                || src.join(dir).join(pattern).is_dir()
        };
        for (place, ok) in [
            (
                "policy/<p>.rs",
                src.join(format!("policy/{pattern}.rs")).is_file(),
            ),
            (
                "compile/<p>.rs",
                src.join(format!("compile/{pattern}.rs")).is_file(),
            ),
            (
                "compile/lua/<p>/",
                !lua || src.join(format!("compile/lua/{pattern}")).is_dir(),
            ),
            ("patterns/<p>(.rs|/)", file_or_folder("patterns")),
            ("http/<p>(.rs|/)", file_or_folder("http")),
            (
                "tests/tests/<p>*.rs",
                test_files
                    .iter()
                    .any(|f| f.starts_with(pattern) && f.ends_with(".rs")),
            ),
        ] {
            if !ok {
                missing.push(format!("{pattern}: {place}"));
            }
        }
    }
    assert!(missing.is_empty(), "places missing: {missing:#?}");
}
