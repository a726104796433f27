//! `cargo fuzz run config`: see `lookout_fuzz::config` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::config(data));
