//! Every script call's keys in one cluster slot, checked before the call.
//!
//! Redis Cluster runs a script on the node that owns its keys' slot and refuses keys of
//! several slots (CROSSSLOT), but a standalone Redis accepts anything. So a script that breaks
//! the rule would pass every test on one node and fail only in production on a cluster. This
//! check makes it fail on one node too: in debug builds (every test runs one), or with
//! `PATTERND_CHECK_SLOTS=1` in a release build, a call whose declared keys span slots is
//! refused with [`StoreError::CrossSlot`] before it is sent (a 500 naming the script). Release
//! builds skip it by default: it costs a CRC per key on every call, for a property of the
//! code, not of the request.
//!
//! There are no exceptions: every script of every pattern is held to one slot. (The cache
//! keeps its per-rule state per slot group, beside the values of the group's ids:
//! `patterns/cache/keys.rs`.)

use std::sync::LazyLock;

use super::StoreError;
use crate::compile::Script;
use crate::compile::keys::key_slot;

/// Whether calls are checked: always in debug builds, on request in release builds.
pub fn enabled() -> bool {
    static ON: LazyLock<bool> = LazyLock::new(|| {
        cfg!(debug_assertions) || std::env::var_os("PATTERND_CHECK_SLOTS").is_some_and(|v| v == "1")
    });
    *ON
}

/// `Ok` when `keys` share one slot.
pub fn check(script: &Script, keys: &[String]) -> Result<(), StoreError> {
    let mut slots = keys.iter().map(|k| (key_slot(k), k));
    let Some((first, first_key)) = slots.next() else {
        return Ok(());
    };
    match slots.find(|(s, _)| *s != first) {
        None => Ok(()),
        Some((other, other_key)) => Err(StoreError::CrossSlot {
            script: script.name.clone(),
            detail: format!("`{first_key}` is in slot {first}, `{other_key}` in slot {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::keys::KeySpace;

    fn script(name: &str) -> Script {
        Script::new(name, "return 1".to_string())
    }

    #[test]
    fn one_id_passes_two_ids_fail() {
        let ks = KeySpace::new("shop", "lock", "order");
        let one = [ks.key("o-1", "l"), ks.key("o-1", "f")];
        assert!(check(&script("lock acquire"), &one).is_ok());
        // Two ids whose tags hash to different slots.
        let (a, b) = (ks.key("o-1", "l"), ks.key("o-2", "l"));
        assert_ne!(key_slot(&a), key_slot(&b));
        let err = check(&script("lock acquire"), &[a, b]).unwrap_err();
        assert!(
            matches!(err, StoreError::CrossSlot { ref script, .. } if script == "lock acquire")
        );
        assert!(check(&script("lock acquire"), &[]).is_ok());
    }

    #[test]
    fn no_script_is_exempt() {
        let ks = KeySpace::new("shop", "cache", "product");
        let journal = ks.rule_key("journal");
        let value = ks.key("42", "v");
        assert_ne!(key_slot(&journal), key_slot(&value));
        for name in [
            "cache put",
            "cache delete",
            "cache journal-replay",
            "lock acquire",
        ] {
            assert!(check(&script(name), &[value.clone(), journal.clone()]).is_err());
        }
    }
}
