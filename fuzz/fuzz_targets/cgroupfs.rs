//! `cargo fuzz run cgroupfs`: see `lookout_fuzz::cgroupfs` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::cgroupfs(data));
