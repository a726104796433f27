//! `cargo fuzz run sd_query`: see `lookout_fuzz::sd_query` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::sd_query(data));
