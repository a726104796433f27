//! `cargo fuzz run procfs`: see `lookout_fuzz::procfs` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::procfs(data));
