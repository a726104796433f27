//! `cargo fuzz run credentials`: see `lookout_fuzz::credentials` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::credentials(data));
