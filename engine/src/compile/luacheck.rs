//! Syntax check of generated scripts with Lua 5.1, the dialect Redis embeds.
//!
//! A script that Redis would refuse is caught at policy load, with the rule that produced it,
//! instead of as a runtime error on the first request.

use super::Script;
use mlua::Lua;
use mlua::chunk::ChunkMode;

/// Compiles `source` (without running it) as Lua 5.1 text. Redis strips a leading `#!lua`
/// shebang line (its flags syntax) before compiling, so that line is blanked here too; it is
/// replaced by an empty line so reported line numbers still match the source.
pub fn check(name: &str, source: &str) -> Result<(), String> {
    let body = if source.starts_with("#!") {
        match source.find('\n') {
            Some(nl) => &source[nl..],
            None => "",
        }
    } else {
        source
    };
    let lua = Lua::new();
    lua.load(body)
        .set_name(format!("={name}"))
        .set_mode(ChunkMode::Text)
        .into_function()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks the fixed scripts of a pattern (shipped in the binary, not written by users): a
/// failure is a bug in patternd, reported as an internal error at the rule.
pub fn check_builtin<'a>(scripts: impl IntoIterator<Item = &'a Script>) -> Result<(), String> {
    for s in scripts {
        check(&s.name, &s.source).map_err(|e| {
            format!(
                "internal error: the script `{}` fails the Lua 5.1 check: {e}",
                s.name
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_lua51_and_shebang() {
        assert!(check("ok", "local x = redis.call('GET', KEYS[1]) return x").is_ok());
        assert!(check("shebang", "#!lua flags=no-writes\nreturn 1").is_ok());
    }

    #[test]
    fn rejects_lua52_syntax() {
        // goto and labels are Lua 5.2+; Redis would refuse them.
        let err = check("goto", "goto done\n::done::\nreturn 1").unwrap_err();
        assert!(err.contains("goto"), "{err}");
        assert!(check("int-div", "return 7 // 2").is_err());
    }
}
