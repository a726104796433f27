//! `cargo fuzz run runtime_state`: see `lookout_fuzz::runtime_state` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::runtime_state(data));
