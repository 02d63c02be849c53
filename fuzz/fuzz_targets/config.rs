//! cargo-fuzz target `config`: see `adaptivenet_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| adaptivenet_fuzz::config(data));
