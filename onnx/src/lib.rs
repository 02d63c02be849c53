//! `adaptivenet-onnx`: the model layer shared by the cloud tools and the
//! device daemon. It reads and writes ONNX protos, finds the oracle's cuts
//! and blocks, extracts spans as standalone graphs, compiles them into tract
//! plans, materialises subnets, and reads the datasets the tools use.

pub mod blocks;
pub mod branches;
pub mod bundle;
pub mod cuts;
pub mod dataset;
pub mod datasource;
pub mod error;
pub mod extract;
pub mod facts;
pub mod fsutil;
pub mod graph;
pub mod idx;
pub mod layout;
pub mod measure;
pub mod model_io;
pub mod npy;
pub mod oracle;
pub mod plan;
pub mod rng;
pub mod stats;
pub mod subnet;
pub mod supernet;
pub mod weights;

pub use blocks::{detect_blocks, BlockLayout, Span};
pub use error::{Error, Result};
pub use fsutil::write_atomically;
pub use graph::GraphIndex;
pub use layout::ImageLayout;
pub use model_io::{load_model, save_model};
pub use oracle::{LayoutSummary, Oracle};
pub use plan::{ChainedPlans, OpTime, Plan};
pub use rng::SplitMix;

/// The tract version this crate runs on (part of a device fingerprint).
pub const TRACT_VERSION: &str = "0.23";

/// Re-export so dependants use the same tract and proto types.
pub use tract_onnx;

/// Run a tract call, turning both its errors and any panic inside it into an
/// [`Error::Tract`] with `context`, so bad models never take a process down.
pub(crate) fn guard<T>(
    context: &str,
    f: impl FnOnce() -> tract_onnx::prelude::TractResult<T>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::tract(context, e)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::tract(context, format!("tract panicked: {msg}")))
        }
    }
}
