//! cargo-fuzz target `config`: see `adaptivenet_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: adaptivenet_fuzz::count_only_escaped_panics(),
    |data: &[u8]| adaptivenet_fuzz::config(data)
);
