//! Fuzz harnesses for lookout's parsers of untrusted and kernel-supplied bytes.
//!
//! Each harness is a `pub fn <target>(data: &[u8])` that hands the raw bytes of one fuzz
//! input to a group of parsers and asserts what those parsers promise; a panic — from a
//! parser or from an assertion — is a finding. The `fuzz_targets/*.rs` binaries are one-line
//! wrappers around them.
//!
//! The harnesses are split by the crate whose parsers they drive, because each module is also
//! compiled, on stable Rust, into that crate's `tests/parsers_never_panic.rs` (`#[path]`),
//! which runs it in every CI run over the seed corpora plus deterministic mutations. The
//! agent's tests cannot depend on the proxy, so one file could not serve both:
//! - [`agent`]: procfs, cgroupfs, runtime state and the state-file reader's limits, the
//!   agent's HTTP inputs and config, instance naming — shadowed by `agent/tests/parsers_never_panic.rs`;
//! - [`proxy`]: Host/SNI routing, the tenants file, credentials (bearer tokens, key
//!   fingerprints, SSH keys, certificates) and discovery queries — shadowed by
//!   `proxy/tests/parsers_never_panic.rs`.
//!
//! `src/shadow.rs` is not a module of this crate: it is the runner both tests share (inputs,
//! mutations, deadline, seed-list checks).

pub mod agent;
pub mod proxy;

pub use agent::{cgroupfs, config, http_inputs, naming, procfs, runtime_state, state_file};
pub use proxy::{credentials, host_sni, sd_query, tenants_file};
