//! The proxy: tenants' authenticating front door.
//!
//! Built so far — the pieces that decide, with no I/O of their own:
//! - [`tenants`]: the tenants file (names, roles, rate limits, credentials), validated with
//!   every problem listed, indexed for lookups by certificate name, key and token hash;
//! - [`identity`]: peer certificate chain and/or bearer token → tenant identity, or a typed
//!   401 reason; [`tls`]: the rustls verifier that requests any client certificate and
//!   checks only proof of possession, leaving the decision to `identity`;
//! - [`host`]: Host/SNI → discovery host or `<id>.<suffix>` instance route (400/421/404);
//! - [`limit`]: per-tenant GCRA limits (this replica's share of a cluster-wide rate) and a
//!   per-source-address limit for before authentication;
//! - [`pki`]: the CA and certificates behind `lookout certs`;
//! - [`refusal`]: the one place that maps these refusals to HTTP statuses.
//!
//! **Not built yet**: the HTTPS server and its certificate reload, authorization against the
//! inventory, the upstream connection pool to agents, the discovery endpoints (`/v1/discover`,
//! `/v1/gz/discover`, `/v1/sd`), health endpoints and the proxy's own metrics. Nothing here
//! serves requests.

mod der;
pub mod host;
pub mod identity;
pub mod limit;
pub mod pki;
pub mod refusal;
pub mod tenants;
pub mod tls;
