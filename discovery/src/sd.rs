//! Service-discovery encoders and request parsing for the proxy's discovery routes.
//!
//! Three wire formats, each byte-compatible with what an unmodified Prometheus 2.42 reads
//! (`reference/prometheus-discovery.md`):
//!
//! - Triton SD, role `container` (`GET /v1/discover[?groups=a,b]`): [`triton_containers`];
//! - Triton SD, role `cn` (`GET /v1/gz/discover`, operators only): [`triton_nodes`];
//! - HTTP SD (`GET /v1/sd`): [`http_sd`] for a tenant's instances and [`http_sd_nodes`] for
//!   operators, with the same `__meta_triton_*` label names Prometheus's triton SD produces,
//!   so relabel rules written for one work unchanged with the other.
//!
//! It also parses the `groups` query parameter ([`parse_groups`]) and fixes what a failed
//! Triton discovery reply must look like ([`triton_error_body`]).
//!
//! This module has no HTTP server, no authentication and no authorization: the proxy decides
//! who the tenant is and whether it may see nodes, then calls these pure functions.

mod http;
mod triton;

use serde::Serialize;

pub use self::http::{http_sd, http_sd_nodes, HTTP_SD_CONTENT_TYPE};
pub use self::triton::{triton_containers, triton_nodes, TRITON_CONTENT_TYPE};

/// Most groups one `?groups=` may list (joyent/node-triton-tags `triton.cmon.groups`).
pub const MAX_GROUPS: usize = 100;

/// Longest group name, in bytes (all valid names are ASCII).
pub const MAX_GROUP_LEN: usize = 100;

/// `Content-Type` of every non-success reply on the two Triton discover routes.
pub const TRITON_ERROR_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Why a discovery request's query was refused (the proxy answers 400).
///
/// On the Triton routes the 400 body must come from [`triton_error_body`], never be a JSON
/// object: see there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdError {
    /// `groups` appeared more than once in the query.
    #[error("invalid \"groups\": the parameter is given more than once")]
    RepeatedGroups,
    /// The value has a malformed `%XX` escape or does not decode to UTF-8.
    #[error("invalid \"groups\": malformed percent-encoding or not UTF-8")]
    BadEncoding,
    /// Not between 1 and [`MAX_GROUPS`] groups.
    #[error("invalid \"groups\": {0} groups, expected 1 to 100")]
    GroupCount(usize),
    /// A name that is empty, too long or has a character outside `[a-zA-Z0-9_-]`
    /// (truncated to [`MAX_GROUP_LEN`] characters).
    #[error("invalid \"groups\": {0:?} is not 1 to 100 characters of a-z, A-Z, 0-9, _ and -")]
    BadGroupName(String),
    /// The same group listed twice.
    #[error("invalid \"groups\": {0:?} is listed twice")]
    DuplicateGroup(String),
}

/// Parses the `groups` filter from a discovery request's query string.
///
/// `query` is the part after `?` (a leading `?` is tolerated), form-encoded as Go's
/// `url.QueryEscape` writes it: `+` is a space, `%2C` a comma. Prometheus sends
/// `groups=` + the escaped, comma-joined list, e.g. `groups=web%2Cdb`; a literal comma is
/// accepted too. Other parameters are ignored.
///
/// Returns `Ok(None)` when there is no `groups` parameter (no filter), otherwise the groups
/// in request order. The grammar is cmon's: 1 to [`MAX_GROUPS`] comma-separated names, each
/// 1 to [`MAX_GROUP_LEN`] characters of `[a-zA-Z0-9_-]`, no duplicates. A repeated
/// parameter is an error (cmon turns it into an array, which fails validation), and so is an
/// empty value, which the grammar does not allow (Prometheus omits the parameter instead).
pub fn parse_groups(query: Option<&str>) -> Result<Option<Vec<String>>, SdError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut raw = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // A key that does not decode cannot be `groups`; other parameters are ignored.
        if form_decode(key).as_deref() != Some("groups") {
            continue;
        }
        if raw.replace(value).is_some() {
            return Err(SdError::RepeatedGroups);
        }
    }
    let Some(raw) = raw else {
        return Ok(None);
    };
    let value = form_decode(raw).ok_or(SdError::BadEncoding)?;
    let groups: Vec<&str> = value.split(',').collect();
    if groups.len() > MAX_GROUPS {
        return Err(SdError::GroupCount(groups.len()));
    }
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !is_group_name(g) {
            return Err(SdError::BadGroupName(
                g.chars().take(MAX_GROUP_LEN).collect(),
            ));
        }
        if out.iter().any(|seen| seen == g) {
            return Err(SdError::DuplicateGroup(g.to_string()));
        }
        out.push(g.to_string());
    }
    Ok(Some(out))
}

/// True for a valid group name: 1 to [`MAX_GROUP_LEN`] characters of `[a-zA-Z0-9_-]`.
///
/// Sources should refuse other names: a comma inside a name would corrupt the
/// `,a,b,` form of `__meta_triton_groups`, and no `?groups=` could ever select it.
pub fn is_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_GROUP_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The body of every non-success reply (400, 401, 404, 429, 5xx) on the two Triton
/// discover routes: `error: <message>\n`, sent as [`TRITON_ERROR_CONTENT_TYPE`].
///
/// Prometheus's triton SD never looks at the status code or the content type: it decodes
/// whatever body comes back. A JSON object without a `containers` (or `cns`) key — restify's
/// `{"code":"UnauthorizedError",…}`, say — decodes cleanly into an empty list, and Prometheus
/// then **silently drops every target of the tenant**. So does the JSON literal `null`. A
/// body that is not JSON makes the refresh fail instead: Prometheus logs it, counts it in
/// `prometheus_sd_refresh_failures_total` and keeps the last good targets. No JSON text can
/// start with `e`, so whatever `message` says, this body never decodes.
///
/// Send a JSON object only when the list in it is authoritative; an empty fleet is 200
/// `{"containers":[]}`.
pub fn triton_error_body(message: &str) -> Vec<u8> {
    format!("error: {message}\n").into_bytes()
}

/// Form-decodes one query component: `+` → space, `%XX` → that byte; `None` on a malformed
/// escape or when the bytes are not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_digit(bytes.next()?)?;
                let lo = hex_digit(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `filter` is absent or `instance_groups` shares at least one group with it
/// (cmon's OR semantics).
fn selected(instance_groups: &[String], filter: Option<&[String]>) -> bool {
    filter.is_none_or(|wanted| instance_groups.iter().any(|g| wanted.contains(g)))
}

/// `__meta_triton_groups` as Prometheus's triton SD writes it: `,a,b,`, or `None` when
/// there are no groups (the label is then absent).
fn groups_label(groups: &[String]) -> Option<String> {
    (!groups.is_empty()).then(|| format!(",{},", groups.join(",")))
}

/// Serialises a discovery body.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: the bodies are structs, sequences and string-keyed maps of strings, which
    // serde_json always serialises, and writing into a Vec cannot fail.
    serde_json::to_vec(value).expect("discovery bodies always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%2Cc").as_deref(), Some("a b,c"));
        assert_eq!(form_decode("%e2%82%AC").as_deref(), Some("€"));
        assert_eq!(form_decode("%2"), None);
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%ff"), None);
    }

    #[test]
    fn groups_label_form() {
        assert_eq!(groups_label(&[]), None);
        let g = ["foo".to_string(), "bar".to_string()];
        assert_eq!(groups_label(&g).as_deref(), Some(",foo,bar,"));
    }
}
