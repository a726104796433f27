//! Which request headers an agent may see, and which response headers belong to the hop
//! between the proxy and the agent rather than to the tenant.
//!
//! The rule is an **allow-list**: only the headers an agent acts on are forwarded
//! ([`ALLOWED_HEADERS`]). Everything else — credentials (`authorization`, `cookie`),
//! client-supplied forwarding claims (`x-forwarded-*`, `forwarded`, `x-real-ip`), and every
//! hop-by-hop header (`connection`, `keep-alive`, `te`, `trailer`, `transfer-encoding`,
//! `upgrade`, `proxy-*`) — is dropped by construction, not by a deny-list that could miss a
//! new name. An allowed header that the client's own `Connection` header names as
//! hop-by-hop (RFC 9110 §7.6.1) is dropped too.
//!
//! Compression is negotiated once, end to end: the client's `accept-encoding` passes
//! through, the agent picks (gzip or identity) and its `content-encoding` comes back
//! untouched with the body bytes as the agent wrote them. The proxy never compresses or
//! decompresses, so there is no `content-encoding: gzip, gzip`.

use http::header::{HeaderMap, HeaderName, CONNECTION};

/// The request headers forwarded to an agent (lower-case); all others are dropped.
///
/// - `accept`: the exposition format (Prometheus text 0.0.4 or OpenMetrics);
/// - `accept-encoding`: whether the agent may gzip (negotiated once, end to end);
/// - `x-prometheus-scrape-timeout-seconds`: the agent answers within 95 % of it;
/// - `user-agent`: for the agent's logs.
pub const ALLOWED_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "x-prometheus-scrape-timeout-seconds",
    "user-agent",
];

/// Response headers that describe the proxy↔agent connection, not the resource; removed
/// from agent responses (together with any header the agent's `Connection` names) before
/// they are relayed, since the proxy's own server frames its responses itself.
pub const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names listed in `Connection` headers of `headers`, lower-cased.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers of a client request that may be forwarded to an agent: those in
/// [`ALLOWED_HEADERS`] (every value, in order), minus any the client's `Connection` header
/// marks as hop-by-hop. `Host` is not among them; the upstream sets it to the agent.
pub fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let hop = connection_tokens(incoming);
    let mut out = HeaderMap::new();
    for name in ALLOWED_HEADERS {
        if hop.iter().any(|t| t == name) {
            continue;
        }
        let name = HeaderName::from_static(name);
        for value in incoming.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes hop-by-hop headers ([`HOP_BY_HOP_HEADERS`] and whatever the agent's
/// `Connection` header names) from an agent's response headers. `content-encoding`,
/// `content-type`, `content-length` and `vary` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for token in connection_tokens(headers) {
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP_HEADERS {
        headers.remove(*name);
    }
}
