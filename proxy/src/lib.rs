//! The proxy: tenants' authenticating front door.
//!
//! [`server::Proxy`] runs it: [`config`] (the TOML file, every problem listed),
//! [`server`] (TLS listener with certificate and tenants hot reload, connection bounds,
//! the admin listener) and [`server::handler`] (per request: source limit → Host/SNI →
//! `/_ping`/health → authentication → tenant limit → discovery routes or a scrape streamed
//! from the node's agent; agent failures mapped in [`server::handler::map_upstream`]);
//! [`telemetry`] holds the proxy's own metrics.
//!
//! The pieces that decide, with no I/O of their own:
//! - [`tenants`]: the tenants file (names, roles, rate limits, credentials), validated with
//!   every problem listed, indexed for lookups by certificate name, key and token hash; the
//!   same records in etcd ([`tenants::etcd`]), merged with the file's through one validator
//!   and kept live by [`tenants::reload`] (`lookout tenants` edits them: [`tenants::admin`],
//!   the exception here, talks to etcd);
//! - [`identity`]: peer certificate chain and/or bearer token → tenant identity, or a typed
//!   401 reason; [`tls`]: the rustls verifier that requests any client certificate and
//!   checks only proof of possession, leaving the decision to `identity`;
//! - [`host`]: Host/SNI → discovery host or `<id>.<suffix>` instance route (400/421/404);
//! - [`limit`]: per-tenant GCRA limits (this replica's share of a cluster-wide rate) and a
//!   per-source-address limit for before authentication;
//! - [`pki`]: the CA and certificates behind `lookout certs`;
//! - [`refusal`]: the one place that maps these refusals to HTTP statuses;
//! - [`upstream`]: the pooled mTLS client to agents.
//!
//! The replica count that divides the tenant limits is configured, learned from DNS
//! ([`limit::follow_replicas_dns`]: A/AAAA addresses or SRV targets of one name; a failed
//! lookup keeps the last count), or — with the `etcd` inventory source — the number of
//! replicas registered in etcd ([`registration`], [`limit::follow_replicas_etcd`]).
//! Agent addresses come from the inventory; those that are names are resolved by the
//! upstream with hickory-resolver (TTL-cached), asking `[upstream] dns_server` when set.

pub mod config;
mod der;
pub mod host;
pub mod identity;
pub mod limit;
pub mod pki;
pub mod refusal;
pub mod registration;
pub mod server;
pub mod telemetry;
pub mod tenants;
pub mod tls;
pub mod upstream;
