//! Random tokens and numbers from the OS generator, with one failure policy.
//!
//! Everything unguessable or unique that patternd hands out is drawn here: lock tokens, session
//! ids, the cache's lease tokens, the lease members of concurrency limits, the write-behind
//! consumer name, and the random numbers drawn along with them (XFetch, backoff jitter).
//!
//! The failure policy: without the OS generator there is no token. getrandom fails only where
//! the OS has no entropy source at all (Linux waits for its pool at boot instead), and any
//! fallback (the clock, zeros) would hand out guessable tokens or ids that collide across
//! engines. So every function here returns [`NoEntropy`], and each caller maps it into its own
//! error: a 500 on a request, a refused start for the write-behind flusher.
//!
//! A WASM guest's `wasi:random` is the guest's own randomness, not a token patternd issues: it
//! is served in `plugin::wasi` (and a failure there traps the guest's call).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// The OS has no entropy source: no token can be made.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NoEntropy(#[from] getrandom::Error);

/// 128 bits: unguessable, and never the same twice in practice. Lock tokens, lease tokens and
/// lease members take this many bytes (22 characters as a token).
pub const TOKEN_BYTES: usize = 16;

/// `N` bytes from the OS CSPRNG.
pub fn bytes<const N: usize>() -> Result<[u8; N], NoEntropy> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)?;
    Ok(buf)
}

/// `N` random bytes, base64url without padding (`4N/3` characters, rounded up).
pub fn token<const N: usize>() -> Result<String, NoEntropy> {
    Ok(B64.encode(bytes::<N>()?))
}

/// Whether `s` has the shape of a [`TOKEN_BYTES`] token: 22 base64url characters. Tokens that
/// come back from clients (lock tokens, lease members) are checked with this before they
/// reach a script.
pub fn is_token(s: &str) -> bool {
    s.len() == TOKEN_CHARS
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The length of a [`TOKEN_BYTES`] token: 4 characters per 3 bytes, rounded up.
const TOKEN_CHARS: usize = (TOKEN_BYTES * 4).div_ceil(3);

/// A number in (0, 1] (never 0, since XFetch takes its logarithm) for draws nobody gains by
/// guessing: XFetch's early refresh and the jitter of waits. From a per-thread generator
/// (fastrand's wyrand, seeded once per thread) rather than the OS: a cache read then makes
/// no system call. Tokens and ids never come from here.
pub fn draw() -> f64 {
    1.0 - fastrand::f64()
}

/// A [`TOKEN_BYTES`] token and a number in (0, 1] from one OS call: the cache's read script
/// takes both on every call.
pub fn token_and_unit() -> Result<(String, f64), NoEntropy> {
    let buf = bytes::<{ TOKEN_BYTES + 8 }>()?;
    let (token, rest) = buf.split_at(TOKEN_BYTES);
    let mut unit = [0u8; 8];
    unit.copy_from_slice(rest);
    Ok((B64.encode(token), unit_of(unit)))
}

fn unit_of(bytes: [u8; 8]) -> f64 {
    let x = u64::from_le_bytes(bytes) >> 11; // 53 random bits
    (x as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_length_of_their_bytes_and_differ() {
        let a = token::<TOKEN_BYTES>().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, token::<TOKEN_BYTES>().unwrap());
        assert_eq!(token::<24>().unwrap().len(), 32);
        let (t, u) = token_and_unit().unwrap();
        assert_eq!(t.len(), 22);
        assert!(u > 0.0 && u <= 1.0);
    }

    #[test]
    fn token_shape() {
        assert!(is_token(&token::<TOKEN_BYTES>().unwrap()));
        assert!(is_token("AAAAAAAAAAAAAAAAAAAA-_"));
        assert!(!is_token("AAAAAAAAAAAAAAAAAAAA-"));
        assert!(!is_token("AAAAAAAAAAAAAAAAAAAA-_A"));
        assert!(!is_token("AAAAAAAAAAAAAAAAAAAA+/"));
        assert!(!is_token("AAAAAAAAAAAAAAAAAAAA=="));
        assert!(!is_token(""));
    }

    #[test]
    fn unit_is_in_range() {
        assert_eq!(unit_of([0; 8]), 1.0 / (1u64 << 53) as f64);
        assert_eq!(unit_of([0xff; 8]), 1.0);
        for _ in 0..1000 {
            let r = draw();
            assert!(r > 0.0 && r <= 1.0, "{r}");
        }
    }
}
