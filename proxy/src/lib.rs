//! The proxy: tenants' authenticating front door (TLS identities, Host → instance → node
//! routing, authorization, per-tenant rate limits, Triton and HTTP service discovery).
//!
//! Not built yet: this crate only reserves its place in the workspace so the layout matches
//! `DESIGN.md`. It arrives with the proxy issue; nothing here is claimed to work.
