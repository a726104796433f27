//! Fuzz harnesses for the proxy's parsers of untrusted bytes: what a client sends (Host and
//! SNI, the `Authorization` header, its certificate chain, the discovery query string, the
//! scrape-timeout header) and what an operator writes (the tenants file, with its key
//! fingerprints and `authorized_keys` lines).
//!
//! One module per target, under `proxy/`; the `#[path]`s make those paths resolve the same
//! when this file is itself included, by `proxy/tests/parsers_never_panic.rs`, which runs the
//! same checks on stable Rust in CI — so the harnesses may use only crates `lookout-proxy`
//! depends on. Like `agent.rs`, each takes the raw bytes of one fuzz input and asserts what
//! the parsers promise.
//! Text parsers get the bytes through [`String::from_utf8_lossy`] (hyper hands the proxy
//! header values that `to_str` accepted, and the tenants file is read with
//! `read_to_string`); the `Authorization` header and certificates get the raw bytes.
//!
//! Everything here is pure: no filesystem (`Tenants::load`, `pki::Ca`, `pki::write_new` are
//! left out), no network, no wall clock — certificates are checked at [`NOW`], and the
//! fixtures they are checked against are seed files embedded at compile time. Not covered:
//! the request path routing (`Target::parse` in `server/handler.rs`), which is private.

use std::borrow::Cow;

use lookout_proxy::tenants::Sha256Hash;
use sha2::{Digest, Sha256};

#[path = "proxy/credentials.rs"]
mod credentials;
#[path = "proxy/host_sni.rs"]
mod host_sni;
#[path = "proxy/sd_query.rs"]
mod sd_query;
#[path = "proxy/tenants_file.rs"]
mod tenants_file;

pub use credentials::{credentials, fixture, NOW};
pub use host_sni::host_sni;
pub use sd_query::sd_query;
pub use tenants_file::tenants_file;

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn sha256(data: &[u8]) -> Sha256Hash {
    Sha256::digest(data).into()
}
