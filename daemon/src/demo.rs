//! `adaptived --demo`: serve the committed demo bundle
//! (`demo/fmnist-resnet.bundle`, signed with the demo key) with the committed
//! Fashion-MNIST validation subset. Until that bundle is committed, an
//! unsigned oracle-only bundle is built from the oracle fixture into a temp
//! folder, and the log says so.

use std::path::{Path, PathBuf};

use adaptivenet_onnx::bundle::{
    oracle_manifest, BundleWriter, ModelDescription, Preprocess, SUPERNET_FILE,
};
use adaptivenet_onnx::Oracle;

use crate::config::{Config, Listen, ValidationData};

/// The committed demo bundle, relative to the repository root.
pub const DEMO_BUNDLE: &str = "demo/fmnist-resnet.bundle";
/// The demo public key (test/demo only).
pub const DEMO_PUBKEY: &str = "tests/fixtures/keys/demo.pub";
pub const ORACLE_FIXTURE: &str = "tests/fixtures/oracle/fmnist_resnet.onnx";
pub const VALIDATION_IMAGES: &str = "tests/fixtures/data/fmnist-test-1k-images-idx3-ubyte.gz";
pub const VALIDATION_LABELS: &str = "tests/fixtures/data/fmnist-test-1k-labels-idx1-ubyte.gz";

pub const FMNIST_LABELS: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The repository root: the current folder if it holds the fixtures, else
/// the source tree this binary was built from.
pub fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if cwd.join(ORACLE_FIXTURE).is_file() || cwd.join(DEMO_BUNDLE).is_file() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo setup: a config and the bundle file to install at start.
pub struct Demo {
    pub config: Config,
    pub bundle: PathBuf,
    pub workdir: PathBuf,
}

/// Build an unsigned oracle-only bundle of the fixture at `out` (version 1).
pub fn build_oracle_bundle(oracle_path: &Path, out: &Path, version: u64) -> Result<(), String> {
    let oracle = Oracle::load(oracle_path, None).map_err(|e| e.to_string())?;
    let desc = ModelDescription {
        name: "fmnist-resnet".into(),
        version,
        compatible: "generic-cpu".into(),
        preprocess: Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
        },
        labels: FMNIST_LABELS.iter().map(|s| s.to_string()).collect(),
    };
    let manifest = oracle_manifest(&oracle, &desc).map_err(|e| e.to_string())?;
    let bytes =
        std::fs::read(oracle_path).map_err(|e| format!("{}: {e}", oracle_path.display()))?;
    let mut w = BundleWriter::new(manifest);
    w.add_file(SUPERNET_FILE, bytes)
        .map_err(|e| e.to_string())?;
    w.write(out, None).map_err(|e| e.to_string())?;
    Ok(())
}

/// Prepare the demo: folders under the temp dir, the bundle, the config.
pub fn prepare(listen: Option<Listen>) -> Result<Demo, String> {
    let root = repo_root();
    let workdir = std::env::temp_dir().join(format!("adaptived-demo-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let mut config = Config {
        bundle_dir: workdir.join("bundles"),
        state_dir: workdir.join("state"),
        listen: listen.unwrap_or_default(),
        validation_data: Some(ValidationData {
            images: root.join(VALIDATION_IMAGES),
            labels: Some(root.join(VALIDATION_LABELS)),
            limit: 500,
        }),
        ..Config::default()
    };
    let committed = root.join(DEMO_BUNDLE);
    let bundle = if committed.is_file() {
        log::info!("demo: serving the committed bundle {}", committed.display());
        config.trusted_keys = vec![root.join(DEMO_PUBKEY)];
        committed
    } else {
        let out = workdir.join("fmnist-resnet-oracle.bundle");
        log::warn!(
            "demo: {} is not committed yet; building an UNSIGNED oracle-only bundle from {} into {} (allow_unsigned is on for the demo only)",
            committed.display(),
            root.join(ORACLE_FIXTURE).display(),
            out.display()
        );
        build_oracle_bundle(&root.join(ORACLE_FIXTURE), &out, 1)?;
        config.allow_unsigned = true;
        out
    };
    Ok(Demo {
        config,
        bundle,
        workdir,
    })
}

/// A request body with the first validation image as UINT8, for the curl
/// example; written next to the demo state.
pub fn write_example_request(demo: &Demo, input_name: &str) -> Result<(PathBuf, String), String> {
    let v = demo
        .config
        .validation_data
        .as_ref()
        .ok_or("no validation data")?;
    let img = adaptivenet_onnx::idx::read_idx(&v.images).map_err(|e| e.to_string())?;
    if img.is_empty() || img.dims.len() != 3 {
        return Err(format!("{}: expected [N, H, W] images", v.images.display()));
    }
    let label = v
        .labels
        .as_ref()
        .and_then(|l| adaptivenet_onnx::idx::read_idx(l).ok())
        .and_then(|l| l.data.first().copied())
        .map(|c| {
            FMNIST_LABELS
                .get(c as usize)
                .map(|s| s.to_string())
                .unwrap_or_else(|| c.to_string())
        })
        .unwrap_or_else(|| "?".into());
    let body = serde_json::json!({
        "id": "demo-1",
        "inputs": [{
            "name": input_name,
            "shape": [1, 1, img.dims[1], img.dims[2]],
            "datatype": "UINT8",
            "data": img.item(0),
        }]
    });
    let path = demo.workdir.join("request.json");
    std::fs::write(&path, body.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, label))
}
