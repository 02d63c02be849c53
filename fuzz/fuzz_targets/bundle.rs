//! cargo-fuzz target `bundle`: see `adaptivenet_fuzz::bundle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| adaptivenet_fuzz::bundle(data));
