//! The cloud side of adaptivenet as a library: the `adaptivenet` commands,
//! the differentiable ONNX interpreter on candle, and elastify's training.
//! `main.rs` is only the command line over it.

pub mod alloc;
pub mod cmd_blocks;
pub mod cmd_bundle;
pub mod cmd_subnet;
pub mod elastify;
pub mod interp;
pub mod table;
