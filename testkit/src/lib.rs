//! `adaptivenet-testkit`: what the tests and benchmarks of every crate share,
//! defined once (a dev-dependency only; nothing here ships):
//! - [`fixtures`]: paths of the committed fixtures and data sets;
//! - [`bundles`]: signed test bundles built from the oracle fixture;
//! - [`daemon`]: a real `adaptived` process with its config, log and address;
//! - [`client`]: a blocking HTTP/1.1 client for the daemon's API;
//! - [`board`]: a fake board (sysfs/procfs) for the monitor;
//! - [`reference`](mod@reference): onnxruntime and zeroed-channel references;
//! - [`tempdir`]: temporary folders removed on drop.

pub mod board;
pub mod bundles;
pub mod client;
pub mod daemon;
pub mod fixtures;
pub mod reference;
pub mod tempdir;

pub use client::{Client, Response};
pub use daemon::{adaptived_bin, Daemon};
pub use tempdir::TempDir;

/// Everything a daemon end-to-end test uses, in one import.
pub mod prelude {
    pub use crate::bundles::{
        badly_signed_bundle, corrupt_bundle, demo_key, demo_public_key, demo_sign, drop_bundle,
        resigned_with_manifest, sign, signed_bundle, untrained_bundle, untrained_bundle_path,
    };
    pub use crate::client::{Client, Response};
    pub use crate::daemon::{
        holds_for, infer, infer_body, served_version, wait_until, write_all, Daemon, STARTUP,
    };
    pub use crate::fixtures::{demo_pub, repo};
    pub use crate::tempdir::TempDir;
}
