//! `cargo fuzz run host_sni`: see `lookout_fuzz::host_sni` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::host_sni(data));
