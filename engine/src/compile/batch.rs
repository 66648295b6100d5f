//! Any script as a batch script (`store::batch`, layout `Counted`): its body becomes a function
//! of KEYS and ARGV, called once per call of the batch, in order.
//!
//! A script whose calls take varying numbers of keys and arguments (a cache read with or
//! without `fields`) is batched this way; rate-limit rules generate leaner batch scripts of
//! their own (`ratelimit::batch_script`), where every call has the same shape.
//!
//! The wrapped body keeps every semantic of the script: it runs as it did, with its own KEYS
//! and ARGV, and each call is under `pcall`, so a failing Redis command fails only its call.
//! Helpers the body defines are made once per call, as before (not once per batch).
//!
//! A cache read's fresh hit does not come here: the engine asks the leaner `cache hit batch`
//! script first (`lua/cache/hit_batch.lua`), and only a read it could not answer as a hit runs
//! this batch of the whole script.

use std::sync::Arc;

use super::Script;

/// The most calls one batch script call takes, whatever `--redis-batch` asks (the store holds
/// its batches to it). Batch scripts make their replies by pushing every value onto Lua's
/// stack at once (`unpack`, `string.byte`), which Lua 5.1 holds to 8000 values
/// (LUAI_MAXCSTACK): 256 calls of up to 6 values each fit, with room to spare.
pub const MAX_CALLS: usize = 256;

const _: () = assert!(MAX_CALLS * 6 < 8000);

/// The reply element of a call that failed under `pcall` (`r` its error: a table with `err`
/// from `redis.call`, or a Lua error string), as `store::batch` reads it. Every batch script
/// writes it with this expression (a flat reply: `-1`, then [`FAILED_MESSAGE`]).
pub(super) const FAILED_CALL: &str =
    "{ -1, type(r) == 'table' and tostring(r.err) or tostring(r) }";

/// The message of [`FAILED_CALL`], for batch scripts whose reply is flat.
pub(super) const FAILED_MESSAGE: &str = "type(r) == 'table' and tostring(r.err) or tostring(r)";

/// The batch script of `script`. Contract: KEYS are the calls' keys one after the other;
/// ARGV[1] is the number of calls n when every call has ARGV[2] keys and ARGV[3] arguments
/// (the common case: one head for the batch instead of two numbers per call), or -n when they
/// differ, then each call's key count ARGV[2 .. n+1] and argument count ARGV[n+2 .. 2n+1];
/// then the calls' arguments one after the other. The reply is one flat array: per call, its
/// reply's element count c and then its c elements, or -1 and its reply when that is not an
/// array (`false` for nil); a call whose Redis command failed is `2, -1, error`. One array
/// rather than an array per call, because Redis spends less on sending it
/// (docs/performance.md). A script whose reply may itself be `{-1, error}` cannot be wrapped.
pub fn wrap(script: &Script) -> Arc<Script> {
    let name = format!("{} batch", script.name);
    let mut s = String::with_capacity(script.source.len() + 2048);
    s.push_str(&format!("-- patternd {name}\n-- `{}`", script.name));
    s.push_str(
        " once per call of a batch (compile/batch.rs): ARGV[1] = n calls of ARGV[2] keys and\n\
         -- ARGV[3] arguments each, or -n calls with key counts ARGV[2..n+1] and argument counts\n\
         -- ARGV[n+2..2n+1]; then their arguments; KEYS: their keys. Replies one flat array: per\n\
         -- call, its reply's element count and elements, or -1 and a reply that is no array.\n\
         local function one(KEYS, ARGV)\n",
    );
    s.push_str(&script.source);
    if !script.source.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("end\n");
    s.push_str(
        "local n = tonumber(ARGV[1])\n\
         local same = n > 0\n\
         local nk, na, a\n\
         if same then\n\
         \x20 nk, na, a = tonumber(ARGV[2]), tonumber(ARGV[3]), 3\n\
         else\n\
         \x20 n = -n\n\
         \x20 a = 2 * n + 1\n\
         end\n\
         local out, o, k = {}, 0, 0\n\
         for i = 1, n do\n\
         \x20 if not same then nk, na = tonumber(ARGV[1 + i]), tonumber(ARGV[1 + n + i]) end\n\
         \x20 local keys, args = {}, {}\n\
         \x20 for j = 1, nk do keys[j] = KEYS[k + j] end\n\
         \x20 for j = 1, na do args[j] = ARGV[a + j] end\n\
         \x20 local ok, r = pcall(one, keys, args)\n",
    );
    s.push_str(&format!("  if not ok then r = {FAILED_CALL} end\n"));
    s.push_str(
        "\x20 if type(r) == 'table' and not (r.err or r.ok) then\n\
         \x20   -- An array ends at its first nil, as Redis reads a script's reply.\n\
         \x20   local c = 0\n\
         \x20   while r[c + 1] ~= nil do\n\
         \x20     c = c + 1\n\
         \x20     out[o + 1 + c] = r[c]\n\
         \x20   end\n\
         \x20   out[o + 1] = c\n\
         \x20   o = o + 1 + c\n\
         \x20 else\n\
         \x20   -- A nil would end the reply array here: false is Redis' nil reply, as for one call.\n\
         \x20   if r == nil then r = false end\n\
         \x20   out[o + 1], out[o + 2] = -1, r\n\
         \x20   o = o + 2\n\
         \x20 end\n\
         \x20 k, a = k + nk, a + na\n\
         end\n\
         return out\n",
    );
    Arc::new(Script::new(name, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::luacheck;

    #[test]
    fn a_failed_call_is_minus_one_and_the_message() {
        assert_eq!(FAILED_CALL, format!("{{ -1, {FAILED_MESSAGE} }}"));
    }

    #[test]
    fn a_wrapped_script_passes_the_lua_check_and_keeps_its_name() {
        let inner = Script::new(
            "demo read",
            "-- patternd demo read\nlocal function f(x) return x end\nreturn { f(KEYS[1]), ARGV[1] }\n"
                .to_string(),
        );
        let w = wrap(&inner);
        assert_eq!(w.name, "demo read batch");
        assert!(w.source.starts_with("-- patternd demo read batch\n"));
        luacheck::check(&w.name, &w.source).unwrap_or_else(|e| panic!("{e}\n{}", w.source));
    }
}
