//! cargo-fuzz target `onnx_blocks`: see `adaptivenet_fuzz::onnx_blocks`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: adaptivenet_fuzz::count_only_escaped_panics(),
    |data: &[u8]| adaptivenet_fuzz::onnx_blocks(data)
);
