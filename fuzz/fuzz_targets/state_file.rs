//! `cargo fuzz run state_file`: see `lookout_fuzz::state_file` for the reader and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::state_file(data));
