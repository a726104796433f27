//! `cargo fuzz run tenants_file`: see `lookout_fuzz::tenants_file` for the parsers and invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lookout_fuzz::tenants_file(data));
