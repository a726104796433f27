//! `cargo fuzz run http_inputs`: see `lookout_fuzz::http_inputs` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::http_inputs(data));
