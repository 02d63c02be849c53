//! cargo-fuzz target `infer_request`: see `adaptivenet_fuzz::infer_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: adaptivenet_fuzz::count_only_escaped_panics(),
    |data: &[u8]| adaptivenet_fuzz::infer_request(data)
);
