//! What lookout's black-box tests share: a throw-away PKI ([`pki`]), rustls client and server
//! configurations ([`tls`]), one HTTPS GET over a fresh connection ([`https`]), loopback ports
//! ([`net`]), reading exposition text ([`exposition`]), the configuration files of an agent
//! ([`agent`]) and of a proxy ([`proxy`]), real runc containers and network namespaces
//! ([`containers`]) and Debian's Prometheus as a client ([`prometheus`]).
//!
//! A dev-dependency only, and free of lookout's own crates: it deals in files, text and
//! rustls/hyper types, so a crate's tests link one copy of the crate they test, and each test
//! parses the configurations with that crate. It panics on setup failures, naming what to
//! install where a tool is missing; it never skips a test.

pub mod agent;
pub mod containers;
pub mod dns;
pub mod exposition;
pub mod https;
pub mod net;
pub mod pki;
pub mod prometheus;
pub mod proxy;
pub mod tls;
