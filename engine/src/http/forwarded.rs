//! The client address in `X-Forwarded-For`, read the way the trusted proxies wrote it.
//!
//! Every proxy appends the address it saw to the header, so the list reads
//! `<whatever the client sent>, <seen by proxy 1>, …, <seen by the proxy calling us>`. Only
//! the rightmost entries come from proxies we trust; the client can put anything to their
//! left. The id is therefore taken from the right: the `trusted_hops`-th entry (nginx
//! `realip` with a fixed chain, Envoy's `xff_num_trusted_hops`), or the rightmost entry that
//! is not a trusted proxy (nginx `set_real_ip_from` + `real_ip_recursive on`). Several header
//! lines are one list, joined in order (RFC 9110 §5.3).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderValue;

use crate::policy::ForwardedFor;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardedError {
    #[error("header `x-forwarded-for` is not valid text")]
    NotText,
    #[error("header `x-forwarded-for` lists no address")]
    Empty,
    #[error(
        "`{0}` in header `x-forwarded-for` is not an IP address (the rule's id_from reads the addresses its trusted proxies wrote)"
    )]
    NotAnAddress(String),
}

/// The client's address per the rule's `how`, from every `X-Forwarded-For` line in order.
pub fn client_address<'a>(
    lines: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    how: &ForwardedFor,
) -> Result<IpAddr, ForwardedError> {
    // Right to left: the last line's last entry first. Empty list elements are ignored
    // (RFC 9110 §5.6.1).
    let mut entries = Vec::new();
    for line in lines.rev() {
        let text = line.to_str().map_err(|_| ForwardedError::NotText)?;
        entries.extend(text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    let leftmost = entries.last().ok_or(ForwardedError::Empty)?;
    let chosen = match how {
        ForwardedFor::TrustedHops(n) => {
            let n = usize::try_from(*n).unwrap_or(usize::MAX).max(1);
            // Fewer entries than hops: the request entered the chain past its outer proxies,
            // and the leftmost entry is what the first trusted proxy on its way saw.
            entries.get(n - 1).unwrap_or(leftmost)
        }
        ForwardedFor::TrustedProxies(nets) => {
            for entry in &entries {
                let ip = parse(entry)?;
                if !nets.iter().any(|n| n.contains(&ip)) {
                    return Ok(ip);
                }
            }
            // Every entry is a trusted proxy: the outermost one is as far as we can see.
            leftmost
        }
    };
    parse(chosen)
}

/// An entry as an address: `192.0.2.1`, `2001:db8::1`, and the forms some proxies write with
/// a port (`192.0.2.1:443`, `[2001:db8::1]:443`) or brackets. IPv4-mapped IPv6 addresses are
/// the IPv4 address, so one client has one id however it was written down.
fn parse(entry: &str) -> Result<IpAddr, ForwardedError> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<IpAddr>().ok())
        })
        .ok_or_else(|| ForwardedError::NotAnAddress(shorten(entry)))?;
    Ok(ip.to_canonical())
}

/// An entry quoted back in an error, cut to a readable length.
fn shorten(entry: &str) -> String {
    match entry.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &entry[..i]),
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<HeaderValue> {
        v.iter()
            .map(|s| HeaderValue::from_str(s).expect("valid header"))
            .collect()
    }

    fn pick(v: &[&str], how: &ForwardedFor) -> Result<String, ForwardedError> {
        let l = lines(v);
        client_address(l.iter(), how).map(|ip| ip.to_string())
    }

    fn hops(n: u32) -> ForwardedFor {
        ForwardedFor::TrustedHops(n)
    }

    fn proxies(nets: &[&str]) -> ForwardedFor {
        ForwardedFor::TrustedProxies(nets.iter().map(|n| n.parse().expect("net")).collect())
    }

    #[test]
    fn hops_count_from_the_right_so_a_forged_prefix_changes_nothing() {
        for i in 0..30 {
            let forged = format!("spoof-{i}, 10.0.0.5");
            assert_eq!(pick(&[&forged], &hops(1)).as_deref(), Ok("10.0.0.5"));
        }
        let chain = ["198.51.100.9, 203.0.113.7, 10.0.0.2"];
        assert_eq!(pick(&chain, &hops(1)).as_deref(), Ok("10.0.0.2"));
        assert_eq!(pick(&chain, &hops(2)).as_deref(), Ok("203.0.113.7"));
        assert_eq!(pick(&chain, &hops(3)).as_deref(), Ok("198.51.100.9"));
        // Fewer entries than hops: the leftmost.
        assert_eq!(pick(&chain, &hops(5)).as_deref(), Ok("198.51.100.9"));
        // Only the chosen entry must be an address.
        assert_eq!(
            pick(&["not-an-ip, 203.0.113.7"], &hops(1)).as_deref(),
            Ok("203.0.113.7")
        );
    }

    #[test]
    fn several_lines_are_one_list_in_order() {
        let l = ["198.51.100.9", "203.0.113.7, 10.0.0.2", ""];
        assert_eq!(pick(&l, &hops(1)).as_deref(), Ok("10.0.0.2"));
        assert_eq!(pick(&l, &hops(3)).as_deref(), Ok("198.51.100.9"));
        // Empty elements are not entries.
        assert_eq!(
            pick(&["203.0.113.7,, 10.0.0.2 ,"], &hops(2)).as_deref(),
            Ok("203.0.113.7")
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let how = proxies(&["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(
            pick(&["spoof, 203.0.113.7, 10.1.2.3, 2001:db8::1"], &how).as_deref(),
            Ok("203.0.113.7")
        );
        // A client talking to the gateway directly: its own address is the rightmost.
        assert_eq!(
            pick(&["10.9.9.9, 198.51.100.4"], &how).as_deref(),
            Ok("198.51.100.4")
        );
        // All trusted: the leftmost.
        assert_eq!(
            pick(&["10.0.0.1, 10.0.0.2"], &how).as_deref(),
            Ok("10.0.0.1")
        );
        // An entry that is no address stops the walk: nothing left of it can be trusted.
        assert_eq!(
            pick(&["203.0.113.7, unknown, 10.0.0.2"], &how),
            Err(ForwardedError::NotAnAddress("unknown".into()))
        );
    }

    #[test]
    fn addresses_are_validated_and_written_one_way() {
        for (entry, want) in [
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:8443", "192.0.2.1"),
            ("2001:DB8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
        ] {
            assert_eq!(pick(&[entry], &hops(1)).as_deref(), Ok(want), "{entry}");
        }
        for bad in [
            "spoof-1",
            "unknown",
            "192.0.2.256",
            "192.0.2.1/24",
            "01.2.3.4",
        ] {
            assert!(
                matches!(pick(&[bad], &hops(1)), Err(ForwardedError::NotAnAddress(_))),
                "{bad}"
            );
        }
        assert_eq!(pick(&[" , "], &hops(1)), Err(ForwardedError::Empty));
        assert_eq!(pick(&[], &hops(1)), Err(ForwardedError::Empty));
        let long = "x".repeat(1000);
        let Err(ForwardedError::NotAnAddress(quoted)) = pick(&[&long], &hops(1)) else {
            panic!("an error");
        };
        assert!(quoted.len() < 80, "{quoted}");
    }

    #[test]
    fn bytes_that_are_not_text_are_refused() {
        let l = [HeaderValue::from_bytes(b"192.0.2.1, \xff").expect("opaque bytes are a value")];
        assert_eq!(
            client_address(l.iter(), &hops(1)),
            Err(ForwardedError::NotText)
        );
    }
}
