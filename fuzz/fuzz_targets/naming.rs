//! `cargo fuzz run naming`: see `lookout_fuzz::naming` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::naming(data));
