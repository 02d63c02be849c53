//! cargo-fuzz target `onnx_blocks`: see `adaptivenet_fuzz::onnx_blocks`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| adaptivenet_fuzz::onnx_blocks(data));
